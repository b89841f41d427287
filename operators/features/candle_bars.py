"""One symbol's finished bars from a candle input: order checks and grid progress.

Candles arrive complete, so a bar is closed as soon as it is accepted; what
is left to check is order. A bar at or before the newest accepted one of its
symbol is rejected: ``duplicate`` when its time was seen, ``late`` when it
falls behind (the bar at that time is final).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from operators.features.bar_builder import NO_WATERMARK
from schemas.records import DUPLICATE, LATE, Bar


@dataclass(frozen=True, slots=True)
class CandleUpdate:
    """What one batch of candles did: bars accepted, and (index, reason, message) rejected."""

    accepted: list[Bar]
    rejected: list[tuple[int, str, str]]


class CandleBars:
    """Accepts a symbol's bars in time order.

    Parameters
    ----------
    interval_ms
        The bar grid D; a bar's ``ts`` must be a multiple of it.
    symbol
        The symbol (for messages).

    >>> cb = CandleBars(60_000, "BTC/USDT")
    >>> bar = Bar("BTC/USDT", 120_000, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0)
    >>> up = cb.update([bar, bar])
    >>> len(up.accepted), up.rejected, cb.closed_through()
    (1, [(1, 'duplicate', 'bar at 120000 repeats an earlier bar')], 2)
    """

    def __init__(self, interval_ms: int, symbol: str) -> None:
        if interval_ms <= 0:
            msg = f"interval_ms must be > 0, got {interval_ms}"
            raise ValueError(msg)
        self.interval_ms = interval_ms
        self.symbol = symbol
        self.last_ts = NO_WATERMARK
        self.seen = 0

    def update(self, bars: list[Bar]) -> CandleUpdate:
        accepted: list[Bar] = []
        rejected: list[tuple[int, str, str]] = []
        interval = self.interval_ms // 1000
        for i, bar in enumerate(bars):
            if bar.ts % self.interval_ms:
                rejected.append((i, LATE, f"bar at {bar.ts} is not on the {self.interval_ms} ms grid"))
            elif bar.ts == self.last_ts:
                rejected.append((i, DUPLICATE, f"bar at {bar.ts} repeats an earlier bar"))
            elif bar.ts < self.last_ts:
                rejected.append((i, LATE, f"bar at {bar.ts} is behind the newest bar at {self.last_ts}"))
            else:
                self.last_ts = bar.ts
                accepted.append(bar if bar.interval == interval else replace(bar, interval=interval))
        self.seen += len(accepted)
        return CandleUpdate(accepted, rejected)

    def closed_through(self) -> int:
        """Newest grid index whose bar is final (NO_WATERMARK before the first bar)."""
        return NO_WATERMARK if self.last_ts == NO_WATERMARK else self.last_ts // self.interval_ms
