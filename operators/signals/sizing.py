"""Position size, risk adjustments, golden-ratio ladders and ATR stops.

Target fraction of equity (position value / equity) of a signal, with sigma
the symbol's per-bar volatility, ``B = 86_400_000 / bar_interval_ms`` bars per
day and (mu, var) the strategy's rolling per-bar mean and variance of paper
returns when known::

    f_vol   = target_daily_vol / (sigma * sqrt(B))        (inf when sigma = 0)
    f_kelly = kelly_fraction * mu / var                   (only when mu, var known, var > 0)
    base    = strength * min(f_vol, f_kelly, max_fraction), floored at 0

The cap applies before the strength, so a half-strength signal gets half of
what a full one would. A non-positive Kelly edge (mu <= 0) sizes to 0. Then the
risk adjustments, each a factor applied in this order when its condition holds:

====================  =====================================================  ======
name                  condition                                              factor
====================  =====================================================  ======
``qvar_budget``       portfolio QVaR / budget > ``qvar_share_limit`` (0.8)  0.85
``entropy``           the symbol's entropy > ``entropy_limit`` (0.6)         0.80
``correlation``       max |corr| with held symbols > ``corr_limit`` (0.28)   0.90
``defensive``         the risk engine is in defensive mode                   0.50
====================  =====================================================  ======

>>> sizer = PositionSizer(SizingSettings(bar_interval_ms=60_000))   # 1440 bars a day
>>> r = sizer.size(1.0, 0.001, qvar_share=0.9, entropy=0.95, max_corr=0.1)
>>> round(r.f_vol, 6), round(r.base, 6), round(r.fraction, 6)   # 0.02 / (0.001 * sqrt 1440)
(0.527046, 0.2, 0.136)
>>> [(a.name, a.factor) for a in r.adjustments]
[('qvar_budget', 0.85), ('entropy', 0.8)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.settings import check_settings, setting

PHI = (1.0 + math.sqrt(5.0)) / 2.0
"""The golden ratio."""

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class SizingSettings:
    """Parameters of :class:`PositionSizer` (see the module docstring).

    Parameters
    ----------
    bar_interval_ms
        Bar length; bars per day = 86_400_000 / bar_interval_ms (> 0).
    target_daily_vol
        Daily volatility of the position value as a fraction of equity (> 0).
    kelly_fraction
        Share of the full Kelly fraction mu / var (>= 0).
    max_fraction
        Cap on the base fraction of equity (> 0).
    qvar_budget
        Portfolio QVaR budget as a fraction of equity (the level-3 threshold).
    qvar_share_limit, qvar_factor
        Factor when portfolio QVaR exceeds this share of its budget.
    entropy_limit, entropy_factor
        Factor when the symbol's permutation entropy exceeds the limit.
    corr_limit, corr_factor
        Factor when the max |correlation| with held symbols exceeds the limit.
    defensive_factor
        Factor in defensive mode.
    stop_atr, target_atr
        Stop and target distances in ATRs before the entropy widening (> 0).
    entropy_widen
        Distances are multiplied by ``1 + entropy_widen * entropy`` (>= 0).
    """

    bar_interval_ms: int = setting(1000, gt=0, fixed=True)
    target_daily_vol: float = setting(0.02, gt=0)
    kelly_fraction: float = setting(0.25, ge=0)
    max_fraction: float = setting(0.2, gt=0)
    qvar_budget: float = setting(0.02, gt=0)
    qvar_share_limit: float = setting(0.8, ge=0, le=1)
    qvar_factor: float = setting(0.85, ge=0, le=1)
    entropy_limit: float = setting(0.6, ge=0, le=1)
    entropy_factor: float = setting(0.80, ge=0, le=1)
    corr_limit: float = setting(0.28, ge=0, le=1)
    corr_factor: float = setting(0.90, ge=0, le=1)
    defensive_factor: float = setting(0.5, ge=0, le=1)
    stop_atr: float = setting(2.0, gt=0)
    target_atr: float = setting(3.0, gt=0)
    entropy_widen: float = setting(0.5, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def bars_per_day(self) -> float:
        """86_400_000 / bar_interval_ms."""
        return DAY_MS / self.bar_interval_ms


@dataclass(frozen=True, slots=True)
class Adjustment:
    """One applied risk adjustment: its name and factor."""

    name: str
    factor: float


@dataclass(frozen=True, slots=True)
class SizeResult:
    """What :meth:`PositionSizer.size` decided.

    Parameters
    ----------
    fraction
        The final target position value as a fraction of equity, >= 0.
    base
        The fraction before the risk adjustments.
    f_vol, f_kelly
        The volatility-target and fractional-Kelly fractions (f_kelly None when unknown).
    adjustments
        The adjustments applied, in order.
    """

    fraction: float
    base: float
    f_vol: float
    f_kelly: float | None
    adjustments: tuple[Adjustment, ...]


class PositionSizer:
    """Sizes positions and places stops, targets and ladders; stateless.

    Parameters
    ----------
    settings
        The parameters.
    """

    __slots__ = ("settings",)

    def __init__(self, settings: SizingSettings | None = None) -> None:
        self.settings = settings or SizingSettings()

    def qvar_share(self, portfolio_qvar: float) -> float:
        """Share of the QVaR budget used by a portfolio QVaR given as a fraction of equity."""
        return portfolio_qvar / self.settings.qvar_budget

    def base_fraction(
        self, strength: float, sigma: float, mu: float | None = None, var: float | None = None
    ) -> tuple[float, float, float | None]:
        """(base, f_vol, f_kelly) for a signal strength in [0, 1] and per-bar volatility sigma."""
        s = self.settings
        if not 0.0 <= strength <= 1.0 or not sigma >= 0:
            msg = f"need strength in [0, 1] and sigma >= 0, got {strength} and {sigma}"
            raise ValueError(msg)
        f_vol = math.inf if sigma == 0 else s.target_daily_vol / (sigma * math.sqrt(s.bars_per_day))
        f_kelly = None if mu is None or var is None or not var > 0 else s.kelly_fraction * mu / var
        f = min(f_vol, s.max_fraction) if f_kelly is None else min(f_vol, f_kelly, s.max_fraction)
        return max(0.0, strength * f), f_vol, f_kelly

    def adjustments(
        self,
        qvar_share: float | None = None,
        entropy: float | None = None,
        max_corr: float | None = None,
        defensive: bool = False,
    ) -> tuple[Adjustment, ...]:
        """The risk adjustments that apply, in order (None inputs never trigger)."""
        s = self.settings
        out = []
        if qvar_share is not None and qvar_share > s.qvar_share_limit:
            out.append(Adjustment("qvar_budget", s.qvar_factor))
        if entropy is not None and entropy > s.entropy_limit:
            out.append(Adjustment("entropy", s.entropy_factor))
        if max_corr is not None and abs(max_corr) > s.corr_limit:
            out.append(Adjustment("correlation", s.corr_factor))
        if defensive:
            out.append(Adjustment("defensive", s.defensive_factor))
        return tuple(out)

    def size(
        self,
        strength: float,
        sigma: float,
        *,
        mu: float | None = None,
        var: float | None = None,
        qvar_share: float | None = None,
        entropy: float | None = None,
        max_corr: float | None = None,
        defensive: bool = False,
    ) -> SizeResult:
        """Base fraction times the applicable adjustments.

        Parameters
        ----------
        strength
            The signal's strength, in [0, 1].
        sigma
            The symbol's per-bar volatility (``Feature.volatility``), >= 0.
        mu, var
            The strategy's rolling per-bar mean and variance of returns, None when unknown.
        qvar_share
            Portfolio QVaR / its budget (:meth:`qvar_share`), None when unknown.
        entropy
            The symbol's permutation entropy.
        max_corr
            Max |correlation| of the symbol with the held symbols, None when none is held.
        defensive
            True in the risk engine's defensive mode.
        """
        base, f_vol, f_kelly = self.base_fraction(strength, sigma, mu, var)
        adj = self.adjustments(qvar_share, entropy, max_corr, defensive)
        fraction = base
        for a in adj:
            fraction *= a.factor
        return SizeResult(fraction, base, f_vol, f_kelly, adj)

    def stop_target(
        self, entry: float, atr: float, direction: int, entropy: float, stop_multiplier: float = 1.0
    ) -> tuple[float, float]:
        """(stop, target) of a position.

        ``stop = entry - d * stop_atr * ATR * (1 + entropy_widen * H) * stop_multiplier`` and
        ``target = entry + d * target_atr * ATR * (1 + entropy_widen * H)``, d = +1 long,
        -1 short; ``stop_multiplier`` < 1 tightens the stop (e.g. 0.75 from the risk engine).

        >>> PositionSizer().stop_target(100.0, 2.0, 1, 0.8)      # widen 1.4
        (94.4, 108.4)
        >>> PositionSizer().stop_target(100.0, 2.0, -1, 0.8, stop_multiplier=0.75)
        (104.2, 91.6)
        """
        if direction not in (1, -1):
            msg = f"direction must be 1 or -1, got {direction!r}"
            raise ValueError(msg)
        if not atr >= 0 or not stop_multiplier > 0:
            msg = f"need atr >= 0 and stop_multiplier > 0, got {atr} and {stop_multiplier}"
            raise ValueError(msg)
        s = self.settings
        widen = 1.0 + s.entropy_widen * entropy
        stop = entry - direction * s.stop_atr * atr * widen * stop_multiplier
        target = entry + direction * s.target_atr * atr * widen
        return stop, target


def fib_ladder(total_qty: float, levels: int, step: float | None = None) -> list[float]:
    """Split ``total_qty`` into ``levels`` tranches with relative sizes phi**k, k = 0..levels-1.

    Tranche k is ``total_qty * phi**k / sum_j phi**j`` (rounded down to a
    multiple of ``step``, a lot size, when given); the last tranche is what is
    left, so ``sum(ladder) == total_qty`` exactly (Python's left-to-right sum).
    Consecutive tranches grow by phi: the smallest goes first (at the entry
    price when scaling in), the largest at the deepest level.

    >>> [round(q, 6) for q in fib_ladder(1.0, 3)]
    [0.190983, 0.309017, 0.5]
    >>> sum(fib_ladder(0.7, 5)) == 0.7
    True
    >>> fib_ladder(10.0, 3, step=1.0)
    [1.0, 3.0, 6.0]
    """
    if levels < 1:
        msg = f"levels must be >= 1, got {levels}"
        raise ValueError(msg)
    if not total_qty >= 0 or (step is not None and not step > 0):
        msg = f"need total_qty >= 0 and step > 0, got {total_qty} and {step}"
        raise ValueError(msg)
    weights = [PHI**k for k in range(levels)]
    norm = math.fsum(weights)
    out = [total_qty * w / norm for w in weights[:-1]]
    if step is not None:
        out = [math.floor(q / step) * step for q in out]
    out.append(_remainder(out, total_qty))
    return out


def _remainder(head: list[float], total: float) -> float:
    """The last tranche r with ``sum(head) + r == total`` exactly, nudging ``head`` if need be.

    ``total - done`` is rounded, and with round-half-even neither it nor its
    float neighbours may add back to ``total``; then the largest tranche of
    ``head`` is lowered by one ulp and the search repeats.
    """
    for _ in range(64):
        done = sum(head)
        last = total - done
        for r in (last, math.nextafter(last, math.inf), math.nextafter(last, -math.inf)):
            if done + r == total:
                return r
        k = max(range(len(head)), key=head.__getitem__)
        head[k] = math.nextafter(head[k], 0.0)
    msg = f"cannot split {total!r} exactly"  # pragma: no cover - not reachable for finite input
    raise ArithmeticError(msg)


def ladder_prices(
    entry: float, atr: float, levels: int, direction: int, spacing: float = 1.0, scale_out: bool = False
) -> list[float]:
    """Prices of a golden-ratio ladder around ``entry``, one per tranche of :func:`fib_ladder`.

    Scaling in (d = +1 long, -1 short), level k lies against the position:
    ``entry - d * spacing * ATR * g_k`` with g_0 = 0 (the first tranche at entry)
    and g_k = phi**(k-1) for k >= 1 (1, phi, phi**2, ... ATRs). Scaling out
    mirrors it in the position's favour, first level one step away:
    ``entry + d * spacing * ATR * phi**k`` for k = 0..levels-1.

    >>> [round(p, 6) for p in ladder_prices(100.0, 2.0, 3, 1)]
    [100.0, 98.0, 96.763932]
    >>> [round(p, 6) for p in ladder_prices(100.0, 2.0, 3, -1, scale_out=True)]
    [98.0, 96.763932, 94.763932]
    """
    if levels < 1 or direction not in (1, -1):
        msg = f"need levels >= 1 and direction 1 or -1, got {levels} and {direction!r}"
        raise ValueError(msg)
    if not atr >= 0 or not spacing > 0:
        msg = f"need atr >= 0 and spacing > 0, got {atr} and {spacing}"
        raise ValueError(msg)
    unit = spacing * atr
    if scale_out:
        return [entry + direction * unit * PHI**k for k in range(levels)]
    return [entry] + [entry - direction * unit * PHI ** (k - 1) for k in range(1, levels)]
