"""Coarser bars of one symbol from its finest bars (several resolutions from one tick stream).

A bar of interval D' = m * D (D the finest bar interval) covers the D bars
``j * m .. j * m + m - 1`` of its window [j * D', (j + 1) * D'): open is the
first of them that exists, high the highest, low the lowest, close the last,
volume and trades their sums, vwap the sum of ``vwap * volume`` over the
volume (the typical price ``(high + low + close) / 3`` when a candle input
gave no volume, as the candle reader does). That is the metric spec's bar at interval D' built from the same
ticks (first tick, highest, lowest, last tick, sum of qty, sum of price * qty
over sum of qty, count), without looking at a tick twice.

A coarse bar is final once the finest bars behind it are: when a finest bar
of a later window arrives, or when the finest grid is closed through the
window's last index (``advance``), or at the end of the input (``flush``).
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.features.bar_builder import NO_WATERMARK
from schemas.records import Bar
from schemas.settings import check_settings, setting


@dataclass(frozen=True, slots=True)
class RollupSettings:
    """A coarse resolution over a finer one.

    Parameters
    ----------
    interval_ms
        The coarse bar interval D', a multiple of ``base_ms``.
    base_ms
        The finest bar interval D the bars arrive at.
    """

    interval_ms: int = setting(60_000, gt=0, fixed=True)
    base_ms: int = setting(1000, gt=0, fixed=True)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.interval_ms % self.base_ms or self.interval_ms <= self.base_ms:
            msg = (
                f"interval_ms must be a multiple of base_ms above it, got {self.interval_ms} / {self.base_ms}"
            )
            raise ValueError(msg)


class BarRollup:
    """Rolls one symbol's finest bars up into bars of a coarser interval.

    >>> r = BarRollup(RollupSettings(interval_ms=3000, base_ms=1000), "X")
    >>> closes = [(0, 10.0), (2, 12.0), (4, 11.0)]
    >>> bars = [Bar("X", t * 1000, c, c + 1, c - 1, c, 2.0, c, 1) for t, c in closes]
    >>> [b] = r.update(bars)  # the bar at 4 s opens the second window: the first is final
    >>> (b.ts, b.open, b.high, b.low, b.close, b.volume, b.vwap, b.trades, b.interval)
    (0, 10.0, 13.0, 9.0, 12.0, 4.0, 11.0, 2, 3)
    >>> r.advance(4), r.closed_through()  # finest grid final through index 4: the window 3..5 is not
    ([], 0)
    >>> [(b.ts, b.close) for b in r.advance(5)], r.closed_through()
    ([(3000, 11.0)], 1)
    """

    def __init__(self, settings: RollupSettings, symbol: str) -> None:
        self.settings = settings
        self.symbol = symbol
        self.window = NO_WATERMARK  # the open coarse window's index, NO_WATERMARK when none is open
        self.parts: list[float] = []  # open, high, low, close, volume, notional
        self.trades = 0
        self.through = NO_WATERMARK  # the newest coarse index that is final

    def update(self, bars: list[Bar]) -> list[Bar]:
        """Add finest bars (in time order); the coarse bars they finished."""
        d = self.settings.interval_ms
        out: list[Bar] = []
        for bar in bars:
            j = bar.ts // d
            if j != self.window:
                if self.window != NO_WATERMARK:
                    out.append(self._close())
                if j - 1 > self.through:  # the windows before this bar's are final
                    self.through = j - 1
                self.window = j
                self.parts = [bar.open, bar.high, bar.low, bar.close, bar.volume, bar.vwap * bar.volume]
                self.trades = bar.trades
                continue
            p = self.parts
            if bar.high > p[1]:
                p[1] = bar.high
            if bar.low < p[2]:
                p[2] = bar.low
            p[3] = bar.close
            p[4] += bar.volume
            p[5] += bar.vwap * bar.volume
            self.trades += bar.trades
        return out

    def advance(self, base_through: int) -> list[Bar]:
        """The finest grid is final through index ``base_through``: the coarse bar it finished, if any."""
        m = self.settings.interval_ms // self.settings.base_ms
        through = (base_through + 1) // m - 1 if base_through != NO_WATERMARK else NO_WATERMARK
        if through > self.through:
            self.through = through
        if self.window != NO_WATERMARK and self.window <= self.through:
            return [self._close()]
        return []

    def closed_through(self) -> int:
        """The newest coarse grid index whose bar is final (NO_WATERMARK before any)."""
        return self.through

    def flush(self) -> list[Bar]:
        """The end of the input: the open coarse bar, finished."""
        return [self._close()] if self.window != NO_WATERMARK else []

    def _close(self) -> Bar:
        o, h, low, c, volume, notional = self.parts
        j = self.window
        if j > self.through:
            self.through = j
        self.window = NO_WATERMARK
        d = self.settings.interval_ms
        vwap = (
            notional / volume if volume > 0 else (h + low + c) / 3
        )  # candles of no volume: the typical price
        return Bar(self.symbol, j * d, o, h, low, c, volume, vwap, self.trades, d // 1000)
