"""Checks that turn raw tick fields into ticks or dead-letter reasons.

The same rules serve the vectorised fast paths (:func:`value_problems`, and
:func:`name_problem` once per distinct symbol and exchange) and the
per-record slow path (:func:`check_record`), so a record gets the same
reason and message whichever path read it.

Types are strict. JSON fields (``text=False``) have their JSON types: text
fields are strings, ``price`` and ``qty`` numbers, ``ts`` an integer of
epoch ms or ISO-8601 text, never a boolean. CSV fields (``text=True``) are
text: a number is ASCII (``-?[0-9]+`` for ``ts``; decimal or exponent
notation, ``nan`` or ``inf`` for ``price`` and ``qty``), never ``1_0`` or
other Unicode digits. A symbol is ccxt-unified ``BASE/QUOTE`` or
``BASE/QUOTE:SETTLE`` (see :data:`SYMBOL_PATTERN`), an exchange a short
plain id (:data:`EXCHANGE_PATTERN`); with an allow-list, only its symbols.

>>> csv_fields = {"ts": "1723161240000", "symbol": "BTC/USDT", "price": "1e-3", "qty": ".5"}
>>> check_record(csv_fields, "okx", text=True)
Tick(ts=1723161240000, symbol='BTC/USDT', price=0.001, qty=0.5, side='', trade_id='', exchange='okx')
>>> check_record({"ts": 1723161240000.0, "symbol": "BTC/USDT", "price": 1, "qty": 1})
Traceback (most recent call last):
...
schemas.validation.Rejected: ts must be a JSON integer (epoch ms) or ISO-8601 text, got float 1723161240000.0
>>> name_problem("DT", "binance")
"symbol 'DT' is not a ccxt-unified symbol BASE/QUOTE or BASE/QUOTE:SETTLE of letters, digits and ._-"
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

import numpy as np

from schemas.records import SCHEMA, VALUE, Tick

MAX_AMOUNT = 1e200
"""Largest qty and price*qty of a tick: a bar sums them, and 1.8e308 is where floats end."""
MAX_TS = 7_258_118_400_000
"""2200-01-01T00:00:00Z in ms: later (or negative) event times are values out of range."""
MAX_SYMBOL_LEN = 64
MAX_EXCHANGE_LEN = 32
SYMBOL_PATTERN = r"[A-Za-z0-9._-]+/[A-Za-z0-9._-]+(?::[A-Za-z0-9._-]+)?"
"""ccxt-unified symbols: ``BTC/USDT``, ``1000PEPE/USDT``, ``BTC/USDT:USDT``, ``BTC/USD:BTC-240329``."""
EXCHANGE_PATTERN = r"[A-Za-z0-9._-]+"
"""Exchange names: ccxt ids (``binance``, ``binanceusdm``, ``okx``) and the like."""
REQUIRED = ("ts", "symbol", "price", "qty")
OPTIONAL = ("side", "trade_id", "exchange")
FIELDS = REQUIRED + OPTIONAL
NO_SYMBOLS: frozenset[str] = frozenset()
"""The empty allow-list: every well-formed symbol."""

_SYMBOL = re.compile(SYMBOL_PATTERN)
_EXCHANGE = re.compile(EXCHANGE_PATTERN)
_INT_TEXT = re.compile(r"-?[0-9]+")
_FLOAT_TEXT = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)", re.IGNORECASE
)
_BLANKS = " \t"


class Rejected(Exception):  # noqa: N818 - a value, not an error
    """A record that becomes a dead letter with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_ts(value: Any) -> int:
    """Epoch ms from an integer or from text: ASCII digits or ISO-8601 with an offset.

    >>> parse_ts("1723161240000")
    1723161240000
    >>> parse_ts("2024-08-09T00:00:00Z")
    1723161600000
    >>> parse_ts("2024-08-09T02:00:00.5+02:00")
    1723161600500
    >>> parse_ts("1_723_161_240_000")
    Traceback (most recent call last):
    ...
    schemas.validation.Rejected: ts '1_723_161_240_000' is neither epoch ms nor ISO-8601
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _ts_text(value)
    raise Rejected(SCHEMA, f"ts must be epoch ms or ISO-8601, got {_kind(value)}")


def _ts_text(value: str) -> int:
    text = value.strip(_BLANKS)
    if _INT_TEXT.fullmatch(text):
        return int(text)
    try:
        if not text.isascii():
            raise ValueError(text)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise Rejected(SCHEMA, f"ts {value[:40]!r} is neither epoch ms nor ISO-8601") from None
    if when.tzinfo is None:
        raise Rejected(VALUE, f"ts {value[:40]!r} has no UTC offset")
    return round(when.timestamp() * 1000)


def json_ts(value: Any) -> int:
    """Epoch ms from a JSON ``ts``: an integer, or ISO-8601 text (not digits in a string)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and not _INT_TEXT.fullmatch(value.strip(_BLANKS)):
        return _ts_text(value)
    raise Rejected(SCHEMA, f"ts must be a JSON integer (epoch ms) or ISO-8601 text, got {_kind(value)}")


def parse_number(name: str, value: Any) -> float:
    """A float from a JSON number (not a boolean, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(SCHEMA, f"{name} must be a JSON number, got {_kind(value)}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def is_number_text(value: str) -> bool:
    """True for ASCII decimal or exponent notation, ``nan`` or ``inf``, blanks around allowed.

    >>> [is_number_text(x) for x in ("1e-3", " .5", "+100", "1_0", "１", "0x10")]
    [True, True, True, False, False, False]
    """
    return _FLOAT_TEXT.fullmatch(value.strip(_BLANKS)) is not None


def number_text(name: str, value: str) -> float:
    """A float from CSV text: ASCII decimal or exponent notation, ``nan``, ``inf``.

    >>> number_text("price", " .5"), number_text("qty", "1E-3")
    (0.5, 0.001)
    >>> number_text("price", "1_0")
    Traceback (most recent call last):
    ...
    schemas.validation.Rejected: price '1_0' is not a number
    """
    if not is_number_text(value):
        raise Rejected(SCHEMA, f"{name} {value[:40]!r} is not a number")
    return float(value)


def _kind(value: Any) -> str:
    """How a wrong-typed value is named in a message."""
    if isinstance(value, (bool, int, float)):
        return f"{type(value).__name__} {value!r}"[:60]
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return type(value).__name__


def symbol_problem(symbol: str, allowed: frozenset[str] = NO_SYMBOLS) -> str | None:
    """What is wrong with a symbol (its shape, or not in a non-empty ``allowed``), or None.

    >>> symbol_problem("BTC/USDT:USDT"), symbol_problem("1000PEPE/USDT")
    (None, None)
    >>> symbol_problem("ETH/USDT", frozenset({"BTC/USDT"}))
    "symbol 'ETH/USDT' is not in input.symbols"
    """
    if len(symbol) > MAX_SYMBOL_LEN:
        return f"symbol {symbol[:80]!r} is longer than {MAX_SYMBOL_LEN} characters"
    if not _SYMBOL.fullmatch(symbol):
        return (
            f"symbol {symbol!r} is not a ccxt-unified symbol BASE/QUOTE or BASE/QUOTE:SETTLE"
            " of letters, digits and ._-"
        )
    if allowed and symbol not in allowed:
        return f"symbol {symbol!r} is not in input.symbols"
    return None


def exchange_problem(exchange: str) -> str | None:
    """What is wrong with an exchange name, or None.

    >>> exchange_problem("binanceusdm"), exchange_problem("bin ance")
    (None, "exchange 'bin ance' is not 1..32 letters, digits and ._-")
    """
    if len(exchange) > MAX_EXCHANGE_LEN or not _EXCHANGE.fullmatch(exchange):
        return f"exchange {exchange[:80]!r} is not 1..{MAX_EXCHANGE_LEN} letters, digits and ._-"
    return None


def name_problem(symbol: str, exchange: str, allowed: frozenset[str] = NO_SYMBOLS) -> str | None:
    """What is wrong with a tick's symbol or exchange, or None."""
    return symbol_problem(symbol, allowed) or exchange_problem(exchange)


def value_problem(
    ts: int,
    symbol: str,
    price: float,
    qty: float,
    side: str,
    exchange: str = "unknown",
    allowed: frozenset[str] = NO_SYMBOLS,
) -> str | None:
    """What is out of range in a well-typed tick, or None."""
    if not 0 <= ts <= MAX_TS:
        return f"ts {ts} is outside 1970..2200"
    problem = symbol_problem(symbol, allowed)
    if problem is not None:
        return problem
    if not (math.isfinite(price) and price > 0):
        return f"price {price!r} is not finite and > 0"
    if not (math.isfinite(qty) and qty > 0):
        return f"qty {qty!r} is not finite and > 0"
    if not qty <= MAX_AMOUNT:
        return f"qty {qty!r} is above {MAX_AMOUNT:g} (a bar sums it)"
    if not price * qty <= MAX_AMOUNT:
        return f"notional price*qty of {price!r} * {qty!r} is above {MAX_AMOUNT:g} (a bar sums it)"
    if side not in ("", "buy", "sell"):
        return f"side {side[:40]!r} is not buy or sell"
    return exchange_problem(exchange)


def value_problems(ts: np.ndarray, price: np.ndarray, qty: np.ndarray) -> np.ndarray:
    """Boolean mask of rows whose ts, price or qty is out of range (vectorised)."""
    with np.errstate(invalid="ignore"):
        ok = (ts >= 0) & (ts <= MAX_TS)
        ok &= np.isfinite(price) & (price > 0)
        ok &= np.isfinite(qty) & (qty > 0)
    with np.errstate(over="ignore", invalid="ignore"):
        ok &= (qty <= MAX_AMOUNT) & (price * qty <= MAX_AMOUNT)
    return ~ok


def _text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise Rejected(SCHEMA, f"{name} must be a string, got {_kind(value)}")


def check_record(
    fields: dict[str, Any],
    default_exchange: str = "",
    *,
    text: bool = False,
    allowed: frozenset[str] = NO_SYMBOLS,
) -> Tick:
    """A :class:`Tick` from one record's named fields, or raise :class:`Rejected`.

    ``fields`` maps canonical names to JSON values, or with ``text`` to CSV
    strings; an empty string or a JSON null counts as absent. ``allowed``
    is the symbol allow-list (empty: any well-formed symbol).
    """
    for name in REQUIRED:
        if fields.get(name) in (None, ""):
            raise Rejected(SCHEMA, f"missing field {name!r}")
    if text:
        ts = _ts_text(fields["ts"])
        price = number_text("price", fields["price"])
        qty = number_text("qty", fields["qty"])
    else:
        ts = json_ts(fields["ts"])
        price = parse_number("price", fields["price"])
        qty = parse_number("qty", fields["qty"])
    symbol = _text("symbol", fields["symbol"])
    side = _text("side", fields.get("side")).lower()
    trade_id = _text("trade_id", fields.get("trade_id"))
    exchange = _text("exchange", fields.get("exchange")) or default_exchange
    problem = value_problem(ts, symbol, price, qty, side, exchange, allowed)
    if problem is not None:
        raise Rejected(VALUE, problem)
    return Tick(ts, symbol, price, qty, side, trade_id, exchange)
