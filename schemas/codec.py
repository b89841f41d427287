"""One encode/decode pair for qbtc's own messages, on orjson.

A message is a JSON object holding the record's fields plus ``"v"``, the
schema version, and ``"type"``, the record type's name. Decoding is strict:
a missing or unknown field, a wrong type (a boolean is not a number, a float
not an int, bytes are strict base64) or another version (only the integer 1
is version 1, not ``true`` or ``1.0``) is a :class:`SchemaError`. A ``null`` float
is NaN: orjson writes NaN (a forecast not yet warm) as ``null``.

>>> from schemas.records import Bar
>>> bar = Bar("BTC/USDT", 60_000, 1.0, 2.0, 0.5, 1.5, 3.0, 1.25, 4)
>>> decode(encode(bar)) == bar
True
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from typing import Any

import orjson

from schemas.records import (
    Bar,
    CancelRequest,
    Correlation,
    DeadLetter,
    ExecutionQuality,
    Feature,
    Fill,
    Heartbeat,
    ModelMetrics,
    OperatorCommand,
    Order,
    OrderEvent,
    PortfolioState,
    Protection,
    RiskEvent,
    Signal,
    StepMark,
    StrategyUpdate,
    Target,
    Tick,
    VarBacktestRow,
    VenueBar,
)

SCHEMA_VERSION = 1

RECORD_TYPES: dict[str, type] = {
    "tick": Tick,
    "bar": Bar,
    "feature": Feature,
    "correlation": Correlation,
    "dead_letter": DeadLetter,
    "signal": Signal,
    "risk_event": RiskEvent,
    "order": Order,
    "fill": Fill,
    "order_event": OrderEvent,
    "heartbeat": Heartbeat,
    "execution_quality": ExecutionQuality,
    "cancel_request": CancelRequest,
    "protection": Protection,
    "venue_bar": VenueBar,
    "step_mark": StepMark,
    "control": OperatorCommand,
    "var_backtest": VarBacktestRow,
    "portfolio_state": PortfolioState,
    "model_metrics": ModelMetrics,
    "strategy_update": StrategyUpdate,
    "target": Target,
}
_NAMES = {cls: name for name, cls in RECORD_TYPES.items()}
_FIELDS = {cls: tuple((f.name, f.type) for f in dataclasses.fields(cls)) for cls in RECORD_TYPES.values()}
_PY_TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bytes": (str,)}


class SchemaError(ValueError):
    """A message that is not a valid qbtc record."""


def encode(record: Any) -> bytes:
    """Encode a record as orjson bytes with its type and schema version."""
    cls = type(record)
    name = _NAMES.get(cls)
    if name is None:
        msg = f"cannot encode {cls.__name__}: not a qbtc record type"
        raise TypeError(msg)
    out: dict[str, Any] = {"v": SCHEMA_VERSION, "type": name}
    for field, ftype in _FIELDS[cls]:
        value = getattr(record, field)
        if ftype == "bytes":
            value = base64.b64encode(value).decode("ascii")
        out[field] = value
    return orjson.dumps(out)


def decode(data: bytes | str, expect: type | None = None) -> Any:
    """Decode bytes made by :func:`encode`; ``expect`` pins the record type."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = f"not JSON: {exc}"
        raise SchemaError(msg) from None
    if not isinstance(obj, dict):
        msg = f"expected a JSON object, got {type(obj).__name__}"
        raise SchemaError(msg)
    version = obj.pop("v", None)
    if type(version) is not int or version != SCHEMA_VERSION:  # not True, not 1.0
        msg = f"schema version {version!r} is not {SCHEMA_VERSION}"
        raise SchemaError(msg)
    name = obj.pop("type", None)
    cls = RECORD_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        msg = f"unknown record type {name!r}"
        raise SchemaError(msg)
    if expect is not None and cls is not expect:
        msg = f"expected a {_NAMES.get(expect, expect)} record, got {name}"
        raise SchemaError(msg)
    fields = _FIELDS[cls]
    unknown = obj.keys() - {f for f, _ in fields}
    if unknown:
        msg = f"unknown field(s) {', '.join(sorted(unknown))} in {name}"
        raise SchemaError(msg)
    kwargs = {}
    for field, ftype in fields:
        if field not in obj:
            msg = f"missing field {field!r} in {name}"
            raise SchemaError(msg)
        value = obj[field]
        if value is None and ftype == "float":
            value = math.nan  # orjson writes NaN and the infinities as null
        if isinstance(value, bool) or not isinstance(value, _PY_TYPES[ftype]):
            msg = f"field {field!r} of {name} must be {ftype}, got {type(value).__name__}"
            raise SchemaError(msg)
        if ftype == "float":
            value = float(value)
        elif ftype == "bytes":
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                msg = f"field {field!r} of {name} is not base64"
                raise SchemaError(msg) from None
        kwargs[field] = value
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise SchemaError(str(exc)) from None
