"""The built-in strategies that turn closed bars into signals (four by default, and ``online_model``).

They follow the strategy protocol of ``operators.signals.strategy`` (as
subclasses of its :class:`~operators.signals.strategy.BarStrategy`); a run
loads them as ``builtin:NAME`` (:data:`BUILTINS`). Each instance follows one
symbol. ``update(ts, bar, feature, regime)`` must be called at every bar
close, in time order, whatever the regime: the indicators (EMAs, windows,
channels) advance on every bar. It returns

* None while the strategy is warming up or ``regime`` is None (no view);
* a flat signal (direction 0, strength 0) when ``regime`` is not one of the
  strategy's ``regimes`` (the strategy stands aside and drops any position);
* otherwise its signal: direction 1 / -1 / 0 and strength in [0, 1].

``Signal.ts`` is the ``ts`` given (the bar close time the caller uses), never
``bar.ts``. "Bars" are the bars as fed, one per update. Every per-bar step is
O(1) (amortised O(1) for the Donchian channels' monotonic deques).

>>> strategies = default_strategies()
>>> [s.name for s in strategies]
['entropy_scalping', 'trend_following', 'mean_reversion', 'breakout']
>>> sorted(strategies[1].regimes)
['trend_down', 'trend_up']
>>> [spec.name for spec in default_specs()] == list(DEFAULT)
True
>>> list(BUILTINS)[len(DEFAULT):]  # opt-in: builtin:online_model
['online_model']
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from operators.features.rolling_variance import RollingVariance
from operators.signals.online_model import OnlineModel
from operators.signals.strategy import BarStrategy, StrategySpec
from schemas.records import FLAT, REGIMES, Bar, Feature
from schemas.settings import MAX_WINDOW, SettingsError, check_settings, setting


def _check(settings) -> None:
    """The field checks of a strategy's settings, then its regimes."""
    check_settings(settings)
    if not settings.regimes <= set(REGIMES):
        raise SettingsError.of(settings, "regimes", f"among {REGIMES}")


def _sign(x: float) -> int:
    return 1 if x > 0 else -1 if x < 0 else 0


# --------------------------------------------------------------------------- entropy scalping


@dataclass(frozen=True, slots=True)
class EntropyScalpingSettings:
    """Parameters of :class:`EntropyScalping`.

    Parameters
    ----------
    entropy_threshold
        Acts only when the feature's normalised permutation entropy (order 3)
        is below this. i.i.d. returns give about 0.99 over 300 returns and real
        1-minute crypto returns 0.9-0.99, so the default 0.85 marks clearly
        ordered (predictable) stretches.
    entropy_full
        Strength rises linearly from 0 at ``entropy_threshold`` to 1 at this
        entropy and below (0 <= entropy_full < entropy_threshold <= 1).
    lookback
        Momentum bars: direction = sign of the sum of the last ``lookback``
        log returns = sign(C_t - C_(t-lookback)) (>= 1).
    regimes
        Regimes it may trade in.
    """

    entropy_threshold: float = setting(0.85, ge=0, le=1)
    entropy_full: float = setting(0.6, ge=0, le=1)
    lookback: int = setting(10, ge=1, le=MAX_WINDOW, fixed=True)
    regimes: frozenset[str] = setting(frozenset({"trend_up", "trend_down", "range"}))

    def __post_init__(self) -> None:
        _check(self)
        if not self.entropy_full < self.entropy_threshold:
            raise SettingsError.of(self, "entropy_full", f"< entropy_threshold ({self.entropy_threshold})")


class EntropyScalping(BarStrategy):
    """Short momentum while returns are ordered (low permutation entropy).

    Warm after ``lookback + 1`` bars and a feature row. With ``H`` the entropy:
    ``H >= entropy_threshold`` -> flat; else direction = sign(C_t - C_(t-lookback))
    (flat on no move) and strength = min(1, (threshold - H) / (threshold - entropy_full)).

    >>> s = EntropyScalping(EntropyScalpingSettings(lookback=2))
    >>> f = Feature("X", 0, 0.0, 0.01, 0.7, 0.0, 0.0, 0.0, 0)
    >>> [s.update(i, Bar("X", i, c, c, c, c, 1, c, 1), f, "range") for i, c in enumerate([10.0, 11.0])]
    [None, None]
    >>> sig = s.update(2, Bar("X", 2, 9.0, 9.0, 9.0, 9.0, 1, 9.0, 1), f, "range")
    >>> sig.direction, round(sig.strength, 12)   # 9 < 10; (0.85 - 0.7) / 0.25
    (-1, 0.6)
    """

    __slots__ = ("_closes",)
    name = "entropy_scalping"
    settings_class = EntropyScalpingSettings
    settings: EntropyScalpingSettings

    def __init__(self, settings: EntropyScalpingSettings | None = None) -> None:
        super().__init__(settings)
        self._closes: deque[float] = deque(maxlen=self.settings.lookback + 1)

    def _step(self, bar: Bar, feature: Feature | None, active: bool) -> tuple[int, float] | None:
        closes = self._closes
        closes.append(bar.close)
        if feature is None or len(closes) < closes.maxlen:
            return None
        s = self.settings
        h = feature.entropy
        if h >= s.entropy_threshold:
            return FLAT, 0.0
        direction = _sign(closes[-1] - closes[0])
        if direction == FLAT:
            return FLAT, 0.0
        return direction, min(1.0, (s.entropy_threshold - h) / (s.entropy_threshold - s.entropy_full))


# --------------------------------------------------------------------------- trend following


@dataclass(frozen=True, slots=True)
class TrendFollowingSettings:
    """Parameters of :class:`TrendFollowing`.

    Parameters
    ----------
    fast, slow
        EMA spans in bars, 1 <= fast < slow (alpha = 2 / (span + 1)).
    regimes
        Regimes it may trade in.
    """

    fast: int = setting(20, ge=1, le=MAX_WINDOW, fixed=True)
    slow: int = setting(60, ge=2, le=MAX_WINDOW, fixed=True)
    regimes: frozenset[str] = setting(frozenset({"trend_up", "trend_down"}))

    def __post_init__(self) -> None:
        _check(self)
        if not self.fast < self.slow:
            raise SettingsError.of(self, "fast", f"< slow ({self.slow})")


class TrendFollowing(BarStrategy):
    """Fast/slow EMA crossover of the close.

    EMAs start at the first close (``pandas ewm(span=n, adjust=False)``); warm
    after ``slow`` bars and a feature row. direction = sign(F - S); strength =
    min(1, |F - S| / (C_t * sigma_t * sqrt(slow))), the EMA gap in units of the
    close's typical move over ``slow`` bars (1 for any gap when sigma_t = 0).

    >>> s = TrendFollowing(TrendFollowingSettings(fast=1, slow=2))
    >>> f = Feature("X", 0, 0.0, 0.1, 0.9, 0.0, 0.0, 0.0, 0)
    >>> s.update(0, Bar("X", 0, 10.0, 10.0, 10.0, 10.0, 1, 10.0, 1), f, "trend_up") is None
    True
    >>> sig = s.update(1, Bar("X", 1, 13.0, 13.0, 13.0, 13.0, 1, 13.0, 1), f, "trend_up")
    >>> sig.direction, round(sig.strength, 12)  # F = 13, S = 12; 1 / (13 * 0.1 * sqrt 2)
    (1, 0.54392829322)
    """

    __slots__ = ("_a_fast", "_a_slow", "_fast", "_n", "_slow")
    name = "trend_following"
    settings_class = TrendFollowingSettings
    settings: TrendFollowingSettings

    def __init__(self, settings: TrendFollowingSettings | None = None) -> None:
        super().__init__(settings)
        self._a_fast = 2.0 / (self.settings.fast + 1)
        self._a_slow = 2.0 / (self.settings.slow + 1)
        self._fast = 0.0
        self._slow = 0.0
        self._n = 0

    def emas(self) -> tuple[float, float] | None:
        """(fast, slow) EMAs of the closes seen, None before the first bar."""
        return (self._fast, self._slow) if self._n else None

    def _step(self, bar: Bar, feature: Feature | None, active: bool) -> tuple[int, float] | None:
        c = bar.close
        if self._n == 0:
            self._fast = self._slow = c
        else:
            self._fast += self._a_fast * (c - self._fast)
            self._slow += self._a_slow * (c - self._slow)
        self._n += 1
        if feature is None or self._n < self.settings.slow:
            return None
        gap = self._fast - self._slow
        direction = _sign(gap)
        if direction == FLAT:
            return FLAT, 0.0
        scale = c * feature.volatility * math.sqrt(self.settings.slow)
        return direction, (1.0 if scale <= 0 else min(1.0, abs(gap) / scale))


# --------------------------------------------------------------------------- mean reversion


@dataclass(frozen=True, slots=True)
class MeanReversionSettings:
    """Parameters of :class:`MeanReversion`.

    Parameters
    ----------
    window
        Bars of the rolling mean and standard deviation, current bar included (>= 2).
    entry_z
        Enter against the move beyond this |z|.
    exit_z
        Hold until |z| falls to this or below, 0 <= exit_z < entry_z.
    regimes
        Regimes it may trade in.
    """

    window: int = setting(60, ge=2, le=MAX_WINDOW, fixed=True)
    entry_z: float = setting(2.0, gt=0)
    exit_z: float = setting(0.5, ge=0)
    regimes: frozenset[str] = setting(frozenset({"range"}))

    def __post_init__(self) -> None:
        _check(self)
        if not self.exit_z < self.entry_z:
            raise SettingsError.of(self, "exit_z", f"< entry_z ({self.entry_z})")


class MeanReversion(BarStrategy):
    """Fade large z-scores of the close against its rolling mean, with hysteresis.

    ``z = (C_t - mean) / std`` over the last ``window`` closes (ddof=1; z = 0
    when std = 0); warm after ``window`` bars. Position rule, d the held
    direction: ``|z| > entry_z`` -> d = -sign(z); else d is kept while z stays
    on its side beyond ``exit_z`` (``-d * z > exit_z``); else d = 0. Strength of
    a held position is piecewise linear in |z|: 0 at ``exit_z``, 0.5 at
    ``entry_z``, 1 at ``2 * entry_z`` and beyond. Standing aside drops d.

    >>> s = MeanReversion(MeanReversionSettings(window=3, entry_z=1.0, exit_z=0.5))
    >>> bars = [Bar("X", i, c, c, c, c, 1, c, 1) for i, c in enumerate([10.0, 10.0, 13.0, 13.0, 11.0, 11.0])]
    >>> [(g.direction, round(g.strength, 6)) for g in
    ...     (s.update(b.ts, b, None, "range") for b in bars) if g is not None]
    [(-1, 0.57735), (-1, 0.07735), (1, 0.57735), (1, 0.07735)]
    """

    __slots__ = ("_held", "_moments", "z")
    name = "mean_reversion"
    settings_class = MeanReversionSettings
    settings: MeanReversionSettings

    def __init__(self, settings: MeanReversionSettings | None = None) -> None:
        super().__init__(settings)
        self._moments = RollingVariance(self.settings.window)
        self._held = FLAT
        self.z: float | None = None

    def _strength(self, az: float) -> float:
        s = self.settings
        if az <= s.entry_z:
            return max(0.0, 0.5 * (az - s.exit_z) / (s.entry_z - s.exit_z))
        return min(1.0, 0.5 + 0.5 * (az - s.entry_z) / s.entry_z)

    def _step(self, bar: Bar, feature: Feature | None, active: bool) -> tuple[int, float] | None:
        m = self._moments
        m.update(bar.close)
        if m.n < self.settings.window:
            return None
        std = math.sqrt(m.var())
        z = 0.0 if std <= 0 else (bar.close - m.mean()) / std
        self.z = z
        if not active:
            self._held = FLAT
            return FLAT, 0.0
        s = self.settings
        if abs(z) > s.entry_z:
            self._held = -_sign(z)
        elif not -self._held * z > s.exit_z:
            self._held = FLAT
        if self._held == FLAT:
            return FLAT, 0.0
        return self._held, self._strength(abs(z))


# --------------------------------------------------------------------------- breakout


class RollingExtreme:
    """Max (or min) of the last ``window`` values pushed with increasing indices.

    A monotonic deque of (index, value): amortised O(1) per push.

    >>> m = RollingExtreme(2, largest=True)
    >>> for i, x in enumerate([3.0, 1.0, 2.0]):
    ...     m.push(i, x)
    >>> m.get()   # max of (1, 2)
    2.0
    """

    __slots__ = ("_q", "_sign", "window")

    def __init__(self, window: int, largest: bool) -> None:
        self.window = window
        self._sign = 1.0 if largest else -1.0
        self._q: deque[tuple[int, float]] = deque()

    def push(self, i: int, x: float) -> None:
        q, key = self._q, self._sign * x
        while q and self._sign * q[-1][1] <= key:
            q.pop()
        q.append((i, x))
        while q[0][0] <= i - self.window:
            q.popleft()

    def get(self) -> float:
        """The extreme of the values in the window (at least one value must have been pushed)."""
        return self._q[0][1]


@dataclass(frozen=True, slots=True)
class BreakoutSettings:
    """Parameters of :class:`Breakout`.

    Parameters
    ----------
    window
        Bars of the entry Donchian channel, current bar excluded (>= 1).
    exit_window
        Bars of the exit channel (Turtle-style), 1 <= exit_window <= window.
    full_strength_sigmas
        Breakout size, in per-bar volatilities, that gives strength 1 (> 0).
    regimes
        Regimes it may trade in.
    """

    window: int = setting(60, ge=1, le=MAX_WINDOW, fixed=True)
    exit_window: int = setting(30, ge=1, le=MAX_WINDOW, fixed=True)
    full_strength_sigmas: float = setting(1.0, gt=0)
    regimes: frozenset[str] = setting(frozenset({"trend_up", "trend_down", "high_vol"}))

    def __post_init__(self) -> None:
        _check(self)
        if not self.exit_window <= self.window:
            raise SettingsError.of(self, "exit_window", f"<= window ({self.window})")


class Breakout(BarStrategy):
    """Donchian channel breakout, held until the exit channel breaks.

    With ``H``/``L`` the highest high / lowest low of the previous ``window``
    bars and ``h``/``l`` those of the previous ``exit_window`` bars (warm after
    ``window`` bars before the current one and a feature row):
    ``C_t > H`` -> long with strength min(1, ln(C_t / H) / (full_strength_sigmas
    * sigma_t)); ``C_t < L`` -> short with min(1, ln(L / C_t) / (...)) (strength 1
    when sigma_t = 0); a long is dropped when ``C_t < l``, a short when
    ``C_t > h``; otherwise the held direction and its entry strength carry on.
    Standing aside drops the position.

    >>> s = Breakout(BreakoutSettings(window=3, exit_window=1))
    >>> f = Feature("X", 0, 0.0, 0.01, 0.9, 0.0, 0.0, 0.0, 0)
    >>> hl = [(10.0, 9.0, 9.5)] * 3 + [(10.3, 10.0, 10.2), (10.2, 9.9, 10.0), (10.0, 9.8, 9.85)]
    >>> [None if g is None else (g.direction, round(g.strength, 6)) for g in
    ...     (s.update(i, Bar("X", i, c, h, l, c, 1, c, 1), f, "trend_up") for i, (h, l, c) in enumerate(hl))]
    [None, None, None, (1, 1.0), (1, 1.0), (0, 0.0)]
    """

    __slots__ = ("_exit_hi", "_exit_lo", "_held", "_hi", "_i", "_lo", "_strength")
    name = "breakout"
    settings_class = BreakoutSettings
    settings: BreakoutSettings

    def __init__(self, settings: BreakoutSettings | None = None) -> None:
        super().__init__(settings)
        w, e = self.settings.window, self.settings.exit_window
        self._hi, self._lo = RollingExtreme(w, largest=True), RollingExtreme(w, largest=False)
        self._exit_hi, self._exit_lo = RollingExtreme(e, largest=True), RollingExtreme(e, largest=False)
        self._i = 0
        self._held = FLAT
        self._strength = 0.0

    def channel(self) -> tuple[float, float] | None:
        """(highest high, lowest low) of the last ``window`` bars fed, None before any."""
        return (self._hi.get(), self._lo.get()) if self._i else None

    def _push(self, bar: Bar) -> None:
        i = self._i
        self._hi.push(i, bar.high)
        self._lo.push(i, bar.low)
        self._exit_hi.push(i, bar.high)
        self._exit_lo.push(i, bar.low)
        self._i = i + 1

    def _step(self, bar: Bar, feature: Feature | None, active: bool) -> tuple[int, float] | None:
        if self._i < self.settings.window or feature is None:
            self._push(bar)
            return None
        hi, lo = self._hi.get(), self._lo.get()
        exit_hi, exit_lo = self._exit_hi.get(), self._exit_lo.get()
        self._push(bar)
        if not active:
            self._held, self._strength = FLAT, 0.0
            return FLAT, 0.0
        c = bar.close
        unit = self.settings.full_strength_sigmas * feature.volatility
        if c > hi or c < lo:
            size = math.log(c / hi) if c > hi else math.log(lo / c)
            self._held = 1 if c > hi else -1
            self._strength = 1.0 if unit <= 0 else min(1.0, size / unit)
        elif (self._held == 1 and c < exit_lo) or (self._held == -1 and c > exit_hi):
            self._held, self._strength = FLAT, 0.0
        return self._held, self._strength


# --------------------------------------------------------------------------- the set


@dataclass(frozen=True, slots=True)
class StrategiesSettings:
    """The settings of the four strategies."""

    entropy_scalping: EntropyScalpingSettings = setting(EntropyScalpingSettings())
    trend_following: TrendFollowingSettings = setting(TrendFollowingSettings())
    mean_reversion: MeanReversionSettings = setting(MeanReversionSettings())
    breakout: BreakoutSettings = setting(BreakoutSettings())

    def __post_init__(self) -> None:
        check_settings(self)


DEFAULT: dict[str, type[BarStrategy]] = {
    cls.name: cls for cls in (EntropyScalping, TrendFollowing, MeanReversion, Breakout)
}
"""The strategies a run uses by default, in order."""
BUILTINS: dict[str, type[BarStrategy]] = {**DEFAULT, OnlineModel.name: OnlineModel}
"""The built-in strategies by name (``builtin:NAME`` specs): the default ones, then the opt-in
``online_model`` (a River model per symbol, :mod:`operators.signals.online_model`)."""


def default_specs(settings: StrategiesSettings | None = None) -> tuple[StrategySpec, ...]:
    """The four built-in strategies of a run, in the default order (the loop's default)."""
    s = settings or StrategiesSettings()
    return tuple(StrategySpec(name, cls, getattr(s, name)) for name, cls in DEFAULT.items())


def default_strategies(settings: StrategiesSettings | None = None) -> list[BarStrategy]:
    """Fresh instances of the four strategies for one symbol, in a fixed order."""
    return [spec.build() for spec in default_specs(settings)]
