"""Record types, the message codec, tick validation and the ClickHouse DDL.

This package imports nothing else of qbtc: every other package may import it.
"""

from __future__ import annotations

from schemas.codec import SCHEMA_VERSION, SchemaError, decode, encode
from schemas.records import (
    REASONS,
    Bar,
    Correlation,
    DeadLetter,
    ExecutionQuality,
    Feature,
    Fill,
    Heartbeat,
    Order,
    OrderEvent,
    RiskEvent,
    Signal,
    Tick,
)
from schemas.tick_columns import TickColumns

__all__ = [
    "REASONS",
    "SCHEMA_VERSION",
    "Bar",
    "Correlation",
    "DeadLetter",
    "ExecutionQuality",
    "Feature",
    "Fill",
    "Heartbeat",
    "Order",
    "OrderEvent",
    "RiskEvent",
    "SchemaError",
    "Signal",
    "Tick",
    "TickColumns",
    "decode",
    "encode",
]
