"""The decision hierarchy's upper levels: L4 meta (capital between strategies) and L3 strategy
(regime, universe and exposure caps per symbol), each at its own cadence.

The trading loop decides at four speeds (``[levels]``):

* **L4 meta**, every ``meta_every_s`` (a day): each strategy's share of capital from its
  paper track over the last ``meta_days`` days, summed over symbols per day:
  ``raw = max(0, sharpe) * max(0, 1 - dd / meta_max_drawdown)`` with ``sharpe`` the mean
  over the standard deviation of its daily returns (ddof 1) and ``dd`` the drawdown of their
  cumulative sum from its peak (``1 - exp(C_n - max C)``); a strategy holding symbols that
  flagged drift that day keeps ``1 - drift_cut * (share of its symbols that drifted)`` of it.
  Shares are the raws normalised to sum 1 (all equal while fewer than ``meta_min_days`` days
  are known, or when every raw is 0). A strategy's *factor* is ``min(1, n * share)`` (n
  strategies): its composite weight is multiplied by it, so L4 can only take weight away,
  never give a strategy more than the lower levels would.
* **L3 strategy**, every ``strategy_every_s`` (an hour): per symbol the regime (its own: the
  regime classifier run on the bars and features of the resolution of that cadence when
  ``features.bar_intervals`` has it, e.g. 3600; else the finest bar's regime), the quote
  volume traded since the last L3 decision, whether it is in the universe (at least
  ``min_quote_volume`` and among the ``universe_size`` most traded; 0: no filter), and its
  exposure cap: ``risk.max_position_share`` times ``high_vol_exposure`` in ``high_vol``,
  ``crisis_exposure`` in ``crisis``, 1 otherwise, and 0 outside the universe. A cap is never
  above the hard limit L1 enforces.
* **L2 tactics** at the first finest step of every ``tactical_every_s`` window: signals,
  sizing, stops, entries and rebalances, each target clipped to its symbol's L3 cap.
* **L1 execution and hard risk** at every finest step: fills, stops, breakers, kill switch.

>>> lv = Levels(LevelsSettings(meta_min_days=2), ("a", "b"), max_position_share=0.2)
>>> lv.due("meta", 0), lv.due("meta", 3_600_000), lv.due("meta", 86_400_000)
(True, False, True)
>>> for day, (ra, rb) in enumerate([(0.01, -0.01), (0.02, -0.01), (0.01, 0.0)]):
...     lv.record("a", "X", day * 86_400_000, ra)
...     lv.record("b", "X", day * 86_400_000, rb)
>>> [(u.strategy, round(u.share, 3), u.factor) for u in lv.meta(3 * 86_400_000)]
[('a', 1.0, 1.0), ('b', 0.0, 0.0)]
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from operators.signals.regime import RegimeClassifier, RegimeSettings
from schemas.records import Bar, Feature, StrategyUpdate, Target
from schemas.settings import MAX_WINDOW, check_settings, setting

DAY_MS = 86_400_000
META = "meta"
STRATEGY = "strategy"
TACTICAL = "tactical"


@dataclass(frozen=True, slots=True)
class LevelsSettings:
    """``[levels]``: the cadences and rules of the decision levels (see the module docstring).

    ``enabled = false`` makes every finest step a decision of every level with no L4 or L3
    limit (the loop as it was before levels).
    """

    enabled: bool = setting(True)
    meta_every_s: int = setting(86_400, ge=1)
    strategy_every_s: int = setting(3_600, ge=1)
    tactical_every_s: int = setting(300, ge=1)
    meta_days: int = setting(30, ge=2, le=MAX_WINDOW, fixed=True)
    meta_min_days: int = setting(5, ge=2)
    meta_max_drawdown: float = setting(0.2, gt=0, le=1)
    drift_cut: float = setting(0.5, ge=0, le=1)
    universe_size: int = setting(0, ge=0)
    min_quote_volume: float = setting(0.0, ge=0)
    high_vol_exposure: float = setting(0.5, ge=0, le=1)
    crisis_exposure: float = setting(0.0, ge=0, le=1)

    def __post_init__(self) -> None:
        check_settings(self)


class _Track:
    """One strategy's paper returns summed per day, over the last ``days`` days."""

    __slots__ = ("day", "days", "today")

    def __init__(self, days: int) -> None:
        self.days: deque[float] = deque(maxlen=days)
        self.day: int | None = None
        self.today = 0.0

    def add(self, day: int, ret: float) -> None:
        if self.day is not None and day != self.day:
            self.days.append(self.today)
            self.today = 0.0
        self.day = day
        self.today += ret

    def closed(self, day: int) -> list[float]:
        """The daily returns of the days before ``day`` (the current day closes when it is over)."""
        if self.day is not None and self.day < day:
            self.days.append(self.today)
            self.today = 0.0
            self.day = None
        return list(self.days)


def sharpe_drawdown(daily: list[float]) -> tuple[float, float]:
    """(mean / sample std, drawdown of the cumulative sum from its peak as a fraction of equity).

    >>> sharpe_drawdown([0.01, 0.03])[0] == 0.02 / 0.014142135623730951
    True
    >>> round(sharpe_drawdown([0.02, -0.01, -0.01])[1], 6)  # exp(0) / exp(0.02) below the peak
    0.019801
    """
    n = len(daily)
    mean = sum(daily) / n
    var = sum((x - mean) ** 2 for x in daily) / (n - 1) if n > 1 else 0.0
    sharpe = mean / math.sqrt(var) if var > 0 else 0.0
    curve, peak, c = [0.0], 0.0, 0.0
    for x in daily:
        c += x
        curve.append(c)
        peak = max(peak, c)
    return sharpe, 1.0 - math.exp(c - peak)


class Levels:
    """The L4 and L3 decisions and the cadence of every level (see the module docstring).

    Parameters
    ----------
    settings
        ``[levels]``.
    strategies
        The run's strategy names.
    max_position_share
        The hard per-symbol limit of L1 (``risk.max_position_share``): no L3 cap exceeds it.
    regime
        The regime classifier's thresholds (``[regime]``), for L3's own regime on its resolution.
    """

    def __init__(
        self,
        settings: LevelsSettings,
        strategies: tuple[str, ...],
        max_position_share: float,
        regime: RegimeSettings | None = None,
    ) -> None:
        self.settings = settings
        self.regime_settings = regime or RegimeSettings()
        self.classifiers: dict[str, RegimeClassifier] = {}  # symbol -> L3's classifier on its resolution
        self.regimes: dict[str, str | None] = {}  # symbol -> L3's own regime (None while warming up)
        self.strategies = strategies
        self.max_position_share = max_position_share
        self.last: dict[str, int] = {}  # level -> the window index of its last decision
        self.tracks = {name: _Track(settings.meta_days) for name in strategies}
        self.held: dict[str, set[str]] = {name: set() for name in strategies}  # symbols it was in today
        self.drifted: set[str] = set()  # symbols that flagged drift since the last L4 decision
        self.factors: dict[str, float] = dict.fromkeys(strategies, 1.0)
        self.caps: dict[str, float] = {}  # symbol -> L3 exposure cap (share of equity)
        self.quote_volume: dict[str, float] = {}  # symbol -> quote volume since the last L3 decision

    def __setstate__(self, state: dict) -> None:
        state.setdefault("regime_settings", RegimeSettings())  # saved before L3 had its own regime
        state.setdefault("classifiers", {})
        state.setdefault("regimes", {})
        self.__dict__.update(state)

    def observe(self, bar: Bar, feature: Feature | None, avg_corr: float | None) -> None:
        """A closed bar (with its feature row, None while unknown) of L3's own resolution, the one
        of ``strategy_every_s``: the symbol's regime at that resolution, for the next L3 decision."""
        c = self.classifiers.get(bar.symbol)
        if c is None:
            c = self.classifiers[bar.symbol] = RegimeClassifier(self.regime_settings)
        self.regimes[bar.symbol] = c.update(bar, feature, avg_corr)

    def regime(self, symbol: str, finest: str | None) -> str | None:
        """The regime L3 decides on: its own resolution's when known, else the finest bar's."""
        own = self.regimes.get(symbol)
        return finest if own is None else own

    def _every_ms(self, level: str) -> int:
        s = self.settings
        every = {META: s.meta_every_s, STRATEGY: s.strategy_every_s, TACTICAL: s.tactical_every_s}[level]
        return every * 1000

    def due(self, level: str, ts: int) -> bool:
        """Whether ``level`` decides at the step closing at ``ts``: the first step of each of its
        windows (and every step when levels are off); then it is marked done for that window."""
        if not self.settings.enabled:
            return True
        window = ts // self._every_ms(level)
        if self.last.get(level) == window:
            return False
        self.last[level] = window
        return True

    # -- L4 ---------------------------------------------------------------------------------

    def record(self, strategy: str, symbol: str, ts: int, ret: float, direction: int = 1) -> None:
        """A strategy's paper return on a symbol for the bar closing at ``ts`` (direction * next return)."""
        track = self.tracks.get(strategy)
        if track is None:
            return
        track.add(ts // DAY_MS, ret)
        if direction:
            self.held[strategy].add(symbol)

    def on_drift(self, symbol: str) -> None:
        self.drifted.add(symbol)

    def meta(self, ts: int) -> list[StrategyUpdate]:
        """The L4 decision at ``ts``: every strategy's share and factor, as records."""
        s = self.settings
        day = ts // DAY_MS
        figures = {}
        for name, track in self.tracks.items():
            daily = track.closed(day)
            sharpe, dd = sharpe_drawdown(daily) if daily else (0.0, 0.0)
            held = self.held[name]
            drift = len(held & self.drifted) / len(held) if held else 0.0
            raw = max(0.0, sharpe) * max(0.0, 1.0 - dd / s.meta_max_drawdown) * (1.0 - s.drift_cut * drift)
            figures[name] = (len(daily), sharpe, dd, drift, raw)
        n = len(self.tracks)
        known = min((f[0] for f in figures.values()), default=0)
        total = sum(f[4] for f in figures.values())
        warm = known >= s.meta_min_days and total > 0
        out = []
        for name, (days, sharpe, dd, drift, raw) in figures.items():
            share = raw / total if warm else 1.0 / n
            factor = min(1.0, n * share)
            self.factors[name] = factor
            reason = "track" if warm else ("warming up" if known < s.meta_min_days else "no strategy earns")
            out.append(StrategyUpdate(ts, name, share, factor, sharpe, dd, drift, days, reason))
        for held in self.held.values():
            held.clear()
        self.drifted.clear()
        return out

    def weights(self, weights: dict[str, float]) -> dict[str, float]:
        """The lower levels' composite weights with L4's factors applied (never larger)."""
        if not self.settings.enabled:
            return weights
        return {name: w * self.factors.get(name, 1.0) for name, w in weights.items()}

    # -- L3 ---------------------------------------------------------------------------------

    def traded(self, symbol: str, quote_volume: float) -> None:
        """A finest bar's quote volume (close * volume), for the universe filter."""
        self.quote_volume[symbol] = self.quote_volume.get(symbol, 0.0) + quote_volume

    def strategy(self, ts: int, regimes: dict[str, str | None]) -> list[Target]:
        """The L3 decision at ``ts`` over the symbols' regimes: each symbol's cap, as records."""
        s = self.settings
        volume = {symbol: self.quote_volume.get(symbol, 0.0) for symbol in regimes}
        ranked = sorted(volume, key=lambda x: (-volume[x], x))
        top = set(ranked[: s.universe_size]) if s.universe_size else set(ranked)
        out = []
        for symbol in sorted(regimes):
            regime = regimes[symbol]
            inside = symbol in top and volume[symbol] >= s.min_quote_volume
            scale = {"high_vol": s.high_vol_exposure, "crisis": s.crisis_exposure}.get(regime or "", 1.0)
            cap = self.max_position_share * scale if inside else 0.0
            self.caps[symbol] = cap
            if not inside:
                reason = "below min_quote_volume" if symbol in top else "outside the universe"
            else:
                reason = f"regime {regime}" if regime in ("high_vol", "crisis") else "in the universe"
            out.append(Target(ts, symbol, regime or "", int(inside), volume[symbol], cap, reason))
        self.quote_volume.clear()
        return out

    def cap(self, symbol: str) -> float:
        """The L3 exposure cap of ``symbol`` (share of equity); the hard limit before any L3 decision
        (no cap at all with levels off: L1 alone limits)."""
        if not self.settings.enabled:
            return math.inf
        return min(self.caps.get(symbol, self.max_position_share), self.max_position_share)
