"""The record types that flow between qbtc's steps, topics and tables.

Times are integer epoch milliseconds UTC everywhere inside messages.
"""

from __future__ import annotations

from dataclasses import dataclass

PARSE = "parse"
SCHEMA = "schema"
VALUE = "value"
LATE = "late"
DUPLICATE = "duplicate"
REASONS = (PARSE, SCHEMA, VALUE, LATE, DUPLICATE)
"""Dead-letter reasons, in the order the checks run."""

PAYLOAD_LIMIT = 64 * 1024
"""Dead-letter payloads are truncated to this many bytes."""


@dataclass(frozen=True, slots=True)
class Tick:
    """One trade print.

    Parameters
    ----------
    ts
        Event time, epoch milliseconds UTC.
    symbol
        ccxt-unified symbol, e.g. ``BTC/USDT``.
    price, qty
        Finite and > 0.
    side
        ``buy``, ``sell`` (the taker side) or ``""`` when unknown.
    trade_id
        The exchange's trade id, ``""`` when unknown.
    exchange
        Exchange id, e.g. ``binance``.
    """

    ts: int
    symbol: str
    price: float
    qty: float
    side: str = ""
    trade_id: str = ""
    exchange: str = ""


@dataclass(frozen=True, slots=True)
class Bar:
    """OHLCV bar of one symbol over [ts, ts + interval)."""

    symbol: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    trades: int


@dataclass(frozen=True, slots=True)
class Feature:
    """Per-symbol risk features at one actual bar (see the metric spec)."""

    symbol: str
    ts: int
    ret: float
    volatility: float
    entropy: float
    var95: float
    es95: float
    qvar95: float
    drift: int


@dataclass(frozen=True, slots=True)
class Correlation:
    """Pearson correlation of two symbols' grid returns over the last window."""

    ts: int
    symbol_a: str
    symbol_b: str
    corr: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input record, kept with why and where it came from.

    Parameters
    ----------
    ingest_ts
        When qbtc rejected it, epoch milliseconds UTC.
    source
        ``path:line`` for files, ``topic[partition]@offset`` for Kafka.
    reason
        One of :data:`REASONS`.
    message
        What was wrong, for a person.
    payload
        The raw record, truncated to 64 KiB.
    """

    ingest_ts: int
    source: str
    reason: str
    message: str
    payload: bytes

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            msg = f"unknown dead-letter reason {self.reason!r}"
            raise ValueError(msg)
        if len(self.payload) > PAYLOAD_LIMIT:
            object.__setattr__(self, "payload", self.payload[:PAYLOAD_LIMIT])
