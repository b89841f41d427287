"""A user strategy outside the package: a moving-average crossover of the close.

Load it with ``--strategy examples/strategies/ma_crossover.py:MovingAverageCrossover``
(or in ``[strategies] use``); its settings are the ``[strategies.ma_crossover]``
table. It is a complete example of the strategy protocol of
``operators.signals.strategy``: a frozen settings dataclass, a ``name``, and
a :class:`~operators.signals.strategy.BarStrategy` subclass whose ``_step``
turns each closed bar into (direction, strength).

>>> s = MovingAverageCrossover(MovingAverageCrossoverSettings(fast=1, slow=2, full_gap=0.1))
>>> bars = [Bar("X", i, c, c, c, c, 1.0, c, 1) for i, c in enumerate([10.0, 11.0, 10.0])]
>>> [s.update(b.ts, b, None, "range") for b in bars[:1]]
[None]
>>> sig = s.update(1, bars[1], None, "range")   # fast 11, slow 10.5: gap 0.5 / 10.5 over 0.1
>>> sig.direction, round(sig.strength, 6)
(1, 0.47619)
>>> s.update(2, bars[2], None, "range").direction   # fast 10 < slow 10.5
-1
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from operators.signals.strategy import BarStrategy
from schemas.records import Bar, Feature
from schemas.settings import SettingsError, check_settings, setting


@dataclass(frozen=True, slots=True)
class MovingAverageCrossoverSettings:
    """Parameters of :class:`MovingAverageCrossover` (``[strategies.ma_crossover]``).

    Parameters
    ----------
    fast, slow
        Bars of the two simple moving averages of the close, 1 <= fast < slow.
    full_gap
        The gap between them, as a share of the slow average, that gives
        strength 1 (> 0); smaller gaps give proportionally less.
    regimes
        The regimes it may trade in.
    """

    # setting(): types and ranges checked like qbtc's own settings; fixed=True because the
    # windows size the saved state (a resume with other windows stops instead of mixing them)
    fast: int = setting(10, ge=1, fixed=True)
    slow: int = setting(30, ge=2, fixed=True)
    full_gap: float = setting(0.002, gt=0)
    regimes: frozenset[str] = setting(frozenset({"trend_up", "trend_down", "range"}))

    def __post_init__(self) -> None:
        check_settings(self)
        if self.fast >= self.slow:
            raise SettingsError.of(self, "fast", f"< slow ({self.slow})")


class MovingAverageCrossover(BarStrategy):
    """Long while the fast average of the close is above the slow one, short while below.

    Warm after ``slow`` bars. With F and S the fast and slow simple moving
    averages (current bar included): direction = sign(F - S), strength =
    min(1, |F - S| / S / full_gap). O(1) per bar: running sums, recomputed
    exactly from the window every ``slow`` bars so rounding cannot build up.
    """

    name = "ma_crossover"
    settings_class = MovingAverageCrossoverSettings
    settings: MovingAverageCrossoverSettings

    def __init__(self, settings: MovingAverageCrossoverSettings | None = None) -> None:
        super().__init__(settings)
        self.closes: deque[float] = deque(maxlen=self.settings.slow)
        self.fast_sum = 0.0
        self.slow_sum = 0.0
        self.seen = 0

    def _push(self, close: float) -> None:
        fast, slow, closes = self.settings.fast, self.settings.slow, self.closes
        if len(closes) == slow:
            self.slow_sum -= closes[0]
        if len(closes) >= fast:
            self.fast_sum -= closes[-fast]
        closes.append(close)
        self.slow_sum += close
        self.fast_sum += close
        self.seen += 1
        if self.seen % slow == 0:  # drift guard
            self.slow_sum = math.fsum(closes)
            self.fast_sum = math.fsum(list(closes)[-fast:])

    def _step(self, bar: Bar, feature: Feature | None, active: bool) -> tuple[int, float] | None:
        self._push(bar.close)
        s = self.settings
        if len(self.closes) < s.slow:
            return None
        fast, slow = self.fast_sum / s.fast, self.slow_sum / s.slow
        gap = fast - slow
        if gap == 0 or slow <= 0:
            return 0, 0.0
        return (1 if gap > 0 else -1), min(1.0, abs(gap) / slow / s.full_gap)
