"""Checks that turn raw tick fields into ticks or dead-letter reasons.

The same rules serve the vectorised fast path (:func:`value_problems`) and
the per-record slow path (:func:`check_record`), so a record gets the same
reason and message whichever path read it.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np

from schemas.records import SCHEMA, VALUE, Tick

MAX_TS = 7_258_118_400_000
"""2200-01-01T00:00:00Z in ms: later (or negative) event times are values out of range."""
MAX_SYMBOL_LEN = 64
REQUIRED = ("ts", "symbol", "price", "qty")
OPTIONAL = ("side", "trade_id", "exchange")
FIELDS = REQUIRED + OPTIONAL


class Rejected(Exception):  # noqa: N818 - a value, not an error
    """A record that becomes a dead letter with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_ts(value: Any) -> int:
    """Epoch ms from an int, a digit string or an ISO-8601 string with offset.

    >>> parse_ts("1723161240000")
    1723161240000
    >>> parse_ts("2024-08-09T00:00:00Z")
    1723161600000
    >>> parse_ts("2024-08-09T02:00:00.5+02:00")
    1723161600500
    """
    if isinstance(value, bool):
        raise Rejected(SCHEMA, "ts must be epoch ms or ISO-8601, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)
        raise Rejected(VALUE, f"ts {value!r} is not a whole number of ms")
    if not isinstance(value, str):
        raise Rejected(SCHEMA, f"ts must be epoch ms or ISO-8601, got {type(value).__name__}")
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise Rejected(SCHEMA, f"ts {value[:40]!r} is neither epoch ms nor ISO-8601") from None
    if when.tzinfo is None:
        raise Rejected(VALUE, f"ts {value[:40]!r} has no UTC offset")
    return round(when.timestamp() * 1000)


def parse_number(name: str, value: Any) -> float:
    """A float from a JSON number or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Rejected(SCHEMA, f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise Rejected(SCHEMA, f"{name} {value[:40]!r} is not a number") from None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def value_problem(ts: int, symbol: str, price: float, qty: float, side: str) -> str | None:
    """What is out of range in a well-typed tick, or None."""
    if not 0 <= ts <= MAX_TS:
        return f"ts {ts} is outside 1970..2200"
    if not symbol or len(symbol) > MAX_SYMBOL_LEN or not symbol.isprintable():
        return f"symbol {symbol[:80]!r} is empty, too long or unprintable"
    if not (math.isfinite(price) and price > 0):
        return f"price {price!r} is not finite and > 0"
    if not (math.isfinite(qty) and qty > 0):
        return f"qty {qty!r} is not finite and > 0"
    if not math.isfinite(price * qty):
        return f"notional price*qty of {price!r} * {qty!r} overflows"
    if side not in ("", "buy", "sell"):
        return f"side {side[:40]!r} is not buy or sell"
    return None


def value_problems(ts: np.ndarray, price: np.ndarray, qty: np.ndarray) -> np.ndarray:
    """Boolean mask of rows whose ts, price or qty is out of range (vectorised)."""
    with np.errstate(invalid="ignore"):
        ok = (ts >= 0) & (ts <= MAX_TS)
        ok &= np.isfinite(price) & (price > 0)
        ok &= np.isfinite(qty) & (qty > 0)
    with np.errstate(over="ignore", invalid="ignore"):
        ok &= np.isfinite(price * qty)
    return ~ok


def _text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise Rejected(SCHEMA, f"{name} must be a string, got {type(value).__name__}")


def check_record(fields: dict[str, Any], default_exchange: str = "") -> Tick:
    """A :class:`Tick` from one record's named fields, or raise :class:`Rejected`.

    ``fields`` maps canonical names to JSON values or CSV strings; an empty
    string counts as absent.
    """
    for name in REQUIRED:
        if fields.get(name) in (None, ""):
            raise Rejected(SCHEMA, f"missing field {name!r}")
    ts = parse_ts(fields["ts"])
    symbol = _text("symbol", fields["symbol"])
    price = parse_number("price", fields["price"])
    qty = parse_number("qty", fields["qty"])
    side = _text("side", fields.get("side")).lower()
    trade_id = _text("trade_id", fields.get("trade_id"))
    exchange = _text("exchange", fields.get("exchange")) or default_exchange
    problem = value_problem(ts, symbol, price, qty, side)
    if problem is not None:
        raise Rejected(VALUE, problem)
    return Tick(ts, symbol, price, qty, side, trade_id, exchange)
