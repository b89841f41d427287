"""Per-symbol strategy weights from paper performance, and the composite signal.

Paper tracking. A signal with direction d of strategy s on symbol x at bar
close t earns ``d * r_(t+1)``, x's next log return; the caller reports it with
``record(s, x, d, r_(t+1))`` once r_(t+1) is known (flat signals earn 0 and are
recorded too). Each (strategy, symbol) pair keeps, over its last ``window``
returns: the mean and the sample standard deviation (ddof=1), the rolling
Sharpe ratio ``mean / std`` (per bar, not annualised; 0 when std = 0), and the
drawdown of the cumulative return curve ``C_n = sum of returns`` from its peak
over the same span (the last ``window + 1`` curve points, C_0 = 0):
``dd = 1 - exp(C_n - max C)``, a fraction of paper equity.

Weights of symbol x in regime g at ts, over the registered strategies:

1. a strategy whose ``regimes`` exclude g gets 0;
2. an eligible strategy with at least ``min_obs`` returns on x ("warm") gets
   ``raw = max(0, sharpe) * max(0, 1 - dd / max_dd)``;
3. an eligible strategy with fewer ("cold") gets the prior
   ``raw = prior_weight * mean(raw of the warm eligible strategies)``, or
   ``prior_weight`` when none is warm: with the default 1.0, cold strategies
   count as an average peer, and before any history all eligible strategies
   share equally;
4. raws are normalised to sum 1 (all zero -> all zero);
5. drift: after ``on_drift(x, ts0)`` the weight of every strategy whose last
   recorded direction on x is not 0 (it holds a position in x) is multiplied by
   ``drift_penalty + (1 - drift_penalty) * min(1, (ts - ts0) / (drift_settle_bars
   * bar_interval_ms))``. This comes after the normalisation, so during a drift
   the weights sum to less than 1 and exposure shrinks instead of moving to
   the other strategies. A new flag restarts the recovery.

>>> sw = StrategyWeights({"a": {"range"}, "b": {"range", "trend_up"}},
...                      StrategyWeightsSettings(window=4, min_obs=2))
>>> sw.weights("X", "trend_up", 0), sw.weights("X", "range", 0)   # cold: equal prior
({'a': 0.0, 'b': 1.0}, {'a': 0.5, 'b': 0.5})
>>> for r in [0.01, 0.02, 0.01]:
...     sw.record("a", "X", 1, r)
...     sw.record("b", "X", -1, r)
>>> sw.weights("X", "range", 0)   # b loses: Sharpe < 0
{'a': 1.0, 'b': 0.0}
>>> sw.on_drift("X", 0)
>>> sw.weights("X", "range", 30_000)   # a holds X: 0.25 + 0.75 * 30 / 60
{'a': 0.625, 'b': 0.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from operators.features.rolling_variance import RollingVariance
from operators.signals.strategies import RollingExtreme
from operators.signals.strategy import Strategy
from schemas.records import FLAT, REGIMES, Signal
from schemas.settings import MAX_WINDOW, SettingsError, check_settings, setting

COMPOSITE = "composite"
"""Strategy name of the composite signal; it may be recorded but never gets a weight."""


@dataclass(frozen=True, slots=True)
class StrategyWeightsSettings:
    """Parameters of :class:`StrategyWeights` (see the module docstring).

    Parameters
    ----------
    window
        Returns per rolling Sharpe ratio and drawdown span (>= 2).
    min_obs
        Returns a strategy needs on a symbol before its own record counts, 2 <= min_obs <= window.
    max_dd
        Drawdown at which a strategy's weight reaches 0, in (0, 1].
    prior_weight
        Cold strategies' weight relative to the mean warm peer (>= 0).
    drift_penalty
        Weight factor right after a drift flag, in [0, 1].
    drift_settle_bars
        Bars for the factor to recover linearly to 1 (>= 1).
    bar_interval_ms
        Bar length, to turn event-time ms into bars (> 0).
    min_score
        Composite: smallest |score| that is not flat (>= 0).
    """

    window: int = setting(500, ge=2, le=MAX_WINDOW, fixed=True)
    min_obs: int = setting(50, ge=2)
    max_dd: float = setting(0.2, gt=0, le=1)
    prior_weight: float = setting(1.0, ge=0)
    drift_penalty: float = setting(0.25, ge=0, le=1)
    drift_settle_bars: int = setting(60, ge=1)
    bar_interval_ms: int = setting(1000, gt=0, fixed=True)
    min_score: float = setting(0.1, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.min_obs > self.window:
            raise SettingsError.of(self, "min_obs", f"<= window ({self.window})")


@dataclass(frozen=True, slots=True)
class TrackStats:
    """One (strategy, symbol) paper record, for sizing and logs.

    Parameters
    ----------
    n
        Returns in the rolling window.
    mean, var
        Their mean and sample variance (var None below 2 returns).
    sharpe
        mean / std, 0 when std = 0 or unknown.
    drawdown
        Current drawdown from the rolling peak, in [0, 1).
    direction
        The last recorded direction (the position held now).
    """

    n: int
    mean: float
    var: float | None
    sharpe: float
    drawdown: float
    direction: int


class _Track:
    """Rolling moments, cumulative curve and its rolling peak of one (strategy, symbol)."""

    __slots__ = ("cum", "direction", "i", "moments", "peak")

    def __init__(self, window: int) -> None:
        self.moments = RollingVariance(window)
        self.peak = RollingExtreme(window + 1, largest=True)
        self.cum = 0.0
        self.i = 0
        self.peak.push(0, 0.0)
        self.direction = FLAT

    def add(self, direction: int, ret: float) -> None:
        x = direction * ret
        self.moments.update(x)
        self.cum += x
        self.i += 1
        self.peak.push(self.i, self.cum)
        self.direction = direction

    def stats(self) -> TrackStats:
        m = self.moments
        var = m.var()
        mean = m.mean()
        std = 0.0 if var is None else math.sqrt(var)
        sharpe = mean / std if std > 0 else 0.0
        dd = max(0.0, -math.expm1(self.cum - self.peak.get()))
        return TrackStats(m.n, mean, var, sharpe, dd, self.direction)


class StrategyWeights:
    """Paper-tracks strategies per symbol and weighs them (see the module docstring).

    Parameters
    ----------
    regimes
        Strategy name -> the regimes it may trade in (see
        :meth:`for_strategies`); the order is the order of the weights.
    settings
        The parameters.
    """

    __slots__ = ("_drift", "_tracks", "regimes", "settings")

    def __init__(
        self, regimes: Mapping[str, Iterable[str]], settings: StrategyWeightsSettings | None = None
    ) -> None:
        self.settings = settings or StrategyWeightsSettings()
        self.regimes = {name: frozenset(rs) for name, rs in regimes.items()}
        for name, rs in self.regimes.items():
            if name == COMPOSITE:
                msg = f"{COMPOSITE!r} is reserved for the composite signal"
                raise ValueError(msg)
            unknown = sorted(rs - set(REGIMES))
            if unknown:
                msg = f"strategy {name!r}: unknown regimes {unknown}"
                raise ValueError(msg)
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._drift: dict[str, int] = {}

    @classmethod
    def for_strategies(
        cls, strategies: Iterable[Strategy], settings: StrategyWeightsSettings | None = None
    ) -> StrategyWeights:
        """Weights over these strategies' names and regimes."""
        return cls({s.name: s.regimes for s in strategies}, settings)

    def record(self, strategy: str, symbol: str, direction: int, next_ret: float) -> None:
        """Book ``direction * next_ret`` to the strategy's paper record on the symbol."""
        if strategy not in self.regimes and strategy != COMPOSITE:
            msg = f"unknown strategy {strategy!r}"
            raise KeyError(msg)
        if direction not in (-1, 0, 1):
            msg = f"direction must be -1, 0 or 1, got {direction!r}"
            raise ValueError(msg)
        key = (strategy, symbol)
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = _Track(self.settings.window)
        track.add(direction, next_ret)

    def stats(self, strategy: str, symbol: str) -> TrackStats | None:
        """The strategy's paper record on the symbol, None before its first return."""
        track = self._tracks.get((strategy, symbol))
        return None if track is None else track.stats()

    def moments(self, strategy: str, symbol: str) -> tuple[float, float] | None:
        """(mean, variance) of the strategy's per-bar returns once it has ``min_obs``, else None."""
        st = self.stats(strategy, symbol)
        if st is None or st.n < self.settings.min_obs or st.var is None:
            return None
        return st.mean, st.var

    def on_drift(self, symbol: str, ts: int) -> None:
        """A drift flag on the symbol at event time ts (ms): penalise the strategies holding it."""
        self._drift[symbol] = ts

    def drift_factor(self, symbol: str, ts: int) -> float:
        """The factor on the symbol's open strategies at ts: 1 without a drift flag."""
        t0 = self._drift.get(symbol)
        if t0 is None:
            return 1.0
        s = self.settings
        progress = min(1.0, max(0.0, (ts - t0) / (s.drift_settle_bars * s.bar_interval_ms)))
        return s.drift_penalty + (1.0 - s.drift_penalty) * progress

    def weights(self, symbol: str, regime: str | None, ts: int) -> dict[str, float]:
        """Weight per registered strategy for the symbol in this regime at ts (zeros for no regime)."""
        s = self.settings
        raw = dict.fromkeys(self.regimes, 0.0)
        if regime is None:
            return raw
        warm: list[float] = []
        cold: list[str] = []
        for name, regimes in self.regimes.items():
            if regime not in regimes:
                continue
            st = self.stats(name, symbol)
            if st is None or st.n < s.min_obs:
                cold.append(name)
                continue
            raw[name] = max(0.0, st.sharpe) * max(0.0, 1.0 - st.drawdown / s.max_dd)
            warm.append(raw[name])
        prior = s.prior_weight * (math.fsum(warm) / len(warm) if warm else 1.0)
        for name in cold:
            raw[name] = prior
        total = math.fsum(raw.values())
        if not total > 0:
            return dict.fromkeys(raw, 0.0)
        factor = self.drift_factor(symbol, ts)
        out = {}
        for name, w in raw.items():
            track = self._tracks.get((name, symbol))
            held = track is not None and track.direction != FLAT
            out[name] = w / total * (factor if held else 1.0)
        return out

    def compose(
        self, ts: int, symbol: str, regime: str, signals: Iterable[Signal], weights: Mapping[str, float]
    ) -> Signal:
        """:func:`compose` with this instance's ``min_score``."""
        return compose(ts, symbol, regime, signals, weights, self.settings.min_score)


def compose(
    ts: int,
    symbol: str,
    regime: str,
    signals: Iterable[Signal],
    weights: Mapping[str, float],
    min_score: float = 0.1,
) -> Signal:
    """The weighted blend of the strategies' signals, named ``composite``.

    ``score = sum_s w_s * d_s * strength_s`` (strategies missing from
    ``weights`` weigh 0); direction = sign(score) when ``|score| >= min_score``,
    else 0; strength = min(1, |score|) for a direction, 0 when flat.

    >>> sigs = [Signal(5, "X", "a", 1, 0.8, "range"), Signal(5, "X", "b", -1, 0.5, "range")]
    >>> c = compose(5, "X", "range", sigs, {"a": 0.75, "b": 0.25})   # 0.6 - 0.125
    >>> c.strategy, c.direction, round(c.strength, 12)
    ('composite', 1, 0.475)
    >>> compose(5, "X", "range", sigs, {"a": 0.25, "b": 0.75}).direction   # 0.2 - 0.375
    -1
    >>> compose(5, "X", "range", sigs, {"a": 0.5, "b": 0.5}).direction   # 0.15
    1
    """
    score = math.fsum(weights.get(sig.strategy, 0.0) * sig.direction * sig.strength for sig in signals)
    if abs(score) >= min_score and score != 0:
        return Signal(ts, symbol, COMPOSITE, 1 if score > 0 else -1, min(1.0, abs(score)), regime)
    return Signal(ts, symbol, COMPOSITE, FLAT, 0.0, regime)
