"""Candle file formats (OHLCV CSV, ccxt/freqtrade JSON) parsed into columns.

CSV needs a header; columns are mapped by name, case-insensitive, extra ones
ignored: ``symbol`` or ``pair`` (else the file name gives the symbol), a time
column (:data:`TIME_COLUMNS`: integer epoch ms, integer epoch seconds below
:data:`SECONDS_BELOW`, or ISO-8601 with an offset), ``open, high, low, close,
volume``. JSON is what ccxt ``fetch_ohlcv`` returns and freqtrade stores, an
array of ``[ts_ms, open, high, low, close, volume]`` (numbers, or strings of
ASCII numbers; a boolean is not a number), the symbol from the file
name (``BTC_USDT_USDT-1h-futures.json`` is ``BTC/USDT:USDT``). Symbols become
ccxt-unified (:func:`unify_symbol`). Numbers in text are ASCII
(:func:`schemas.validation.is_number_text`): ``1_0``, full-width digits and
hex are not numbers, on Arrow's typed path as on the per-value path.

Parsing only reads: :class:`ParsedCandles` holds every record, with the
message of each one that did not parse; checking values, ordering and
aggregating is :class:`sources.candle_files.CandleFileReader`'s work.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from schemas.validation import is_number_text
from sources.tick_files import InputError, may_hold_hex

QUOTES = tuple(
    sorted(
        ("FDUSD", "USDT", "BUSD", "USDC", "TUSD", "USDP", "BIDR", "IDRT", "DAI", "UST", "BTC", "ETH", "BNB")
        + ("EUR", "USD", "TRY", "GBP", "JPY", "AUD", "BRL", "RUB", "UAH", "ZAR", "PLN", "RON", "ARS", "MXN"),
        key=len,
        reverse=True,
    )
)
"""Quote currencies that split a concatenated exchange symbol, longest first."""
TIME_COLUMNS = ("open_time_ms", "open_time", "timestamp", "ts", "date", "time")
"""Names of the candle open-time column, in order of preference."""
SYMBOL_COLUMNS = ("symbol", "pair")
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
SECONDS_BELOW = 10**11
"""Integer times in [0, 1e11) are epoch seconds (1e11 s is the year 5138, 1e11 ms 1973)."""
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def unify_symbol(raw: str) -> str:
    """The ccxt-unified form of an exchange or file-name symbol; one that cannot be split as it is.

    >>> [unify_symbol(s) for s in ("BTC/USDT", "BTC_USDT", "BTC_USDT_USDT", "AAVEUSDT", "ethbtc")]
    ['BTC/USDT', 'BTC/USDT', 'BTC/USDT:USDT', 'AAVE/USDT', 'ETH/BTC']
    >>> [unify_symbol(s) for s in ("SOLBUSD", "BTCFDUSD", "USDTTRY", "USDT", "XYZ")]
    ['SOL/BUSD', 'BTC/FDUSD', 'USDT/TRY', 'USDT', 'XYZ']
    """
    text = raw.strip()
    parts = text.split("_")
    if "/" in text or not all(parts) or len(parts) > 3:
        return text
    if len(parts) > 1:
        return f"{parts[0]}/{parts[1]}" + (f":{parts[2]}" if len(parts) == 3 else "")
    upper = text.upper()
    if upper.isascii() and upper.isalnum():
        for quote in QUOTES:
            if len(upper) > len(quote) and upper.endswith(quote):
                return f"{upper[: -len(quote)]}/{quote}"
    return text


def symbol_from_path(path: str) -> str:
    """The symbol a file name stands for: its part before the first ``-``, unified.

    >>> [symbol_from_path(p) for p in ("d/BTC_USDT-1m.json.gz", "BTC_USDT_USDT-1h-futures.json")]
    ['BTC/USDT', 'BTC/USDT:USDT']
    >>> symbol_from_path("/x/ETHBTC-5m-2021-04.csv")
    'ETH/BTC'
    """
    name = os.path.basename(path)
    name = name[:-3] if name.lower().endswith(".gz") else name
    return unify_symbol(name.rsplit(".", 1)[0].split("-", 1)[0])


def parse_time(value: object) -> int:
    """Epoch ms from a whole number (ms, or seconds below 1e11) or ISO-8601 text with offset; else ValueError.

    >>> [parse_time(v) for v in (1618951320000, "1618951320", "2021-04-20T20:42:00Z", 1618951320.0)]
    [1618951320000, 1618951320000, 1618951320000, 1618951320000]
    >>> parse_time("2021-04-20 20:42:00")
    Traceback (most recent call last):
    ...
    ValueError: time '2021-04-20 20:42:00' has no UTC offset
    >>> parse_time("1_618_951_320")
    Traceback (most recent call last):
    ...
    ValueError: time '1_618_951_320' is neither an epoch integer nor ISO-8601
    """
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value.strip(" \t")):
        value = int(value.strip(" \t"))
    elif isinstance(value, str):
        if is_number_text(value):
            return parse_time(float(value))  # e.g. "1618951320000.0"
        try:
            when = datetime.fromisoformat(value.strip(" \t")) if value.isascii() else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            why = "is neither an epoch integer nor ISO-8601" if when is None else "has no UTC offset"
            msg = f"time {value[:40]!r} {why}"
            raise ValueError(msg)
        return (when - _EPOCH) // _MS
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 1 << 62:
        msg = f"time {value!r} is not a whole epoch number or ISO-8601 text"[:120]
        raise ValueError(msg)
    return value * 1000 if 0 <= value < SECONDS_BELOW else value


@dataclass(slots=True)
class ParsedCandles:
    """Every record of a file as columns, and where each came from.

    Parameters
    ----------
    n
        Records (data lines, or JSON elements).
    code
        Index into ``names`` per record, -1 where the record did not parse.
    names
        Sorted unified symbols.
    ts
        Open times in epoch ms (meaningless where ``problems`` has the record).
    values
        ``(5, n)``: open, high, low, close, volume.
    problems
        Record index -> why it did not parse.
    payload
        Record index -> its raw bytes (a dead letter's payload).
    source
        Record index -> ``path:line`` or ``path[index]``.
    wrong_type
        The records of ``problems`` with an element of the wrong JSON type (a boolean, an array or
        an object where a number or text belongs): ``schema`` dead letters, the others ``parse``.
    """

    n: int
    code: np.ndarray
    names: list[str]
    ts: np.ndarray
    values: np.ndarray
    problems: dict[int, str]
    payload: Callable[[int], bytes]
    source: Callable[[int], str]
    wrong_type: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class CsvHeader:
    """Where the roles time, symbol (optional) and the values sit in a CSV's columns.

    >>> header = read_header(b"Symbol,open_time_ms,open,high,low,close,volume,x", "c.csv")
    >>> header.columns, header.ncols
    ({'time': 1, 'symbol': 0, 'open': 2, 'high': 3, 'low': 4, 'close': 5, 'volume': 6}, 8)
    """

    columns: dict[str, int]
    ncols: int


def read_header(first: bytes, name: str) -> CsvHeader:
    """The :class:`CsvHeader` of a first line; InputError (naming ``name``) when it is unusable."""
    text = first.decode("utf-8", errors="replace").lstrip("\ufeff")
    names = [n.strip().lower() for n in next(csv.reader([text]), [])]
    if not any(names) or any(n.lstrip("+-").replace(".", "", 1).isdigit() for n in names):
        msg = f"{name}: no header line (expected columns time, open, high, low, close, volume)"
        raise InputError(msg)
    roles = {"time": TIME_COLUMNS, "symbol": SYMBOL_COLUMNS} | {n: (n,) for n in VALUE_COLUMNS}
    columns: dict[str, int] = {}
    for role, choices in roles.items():
        found = next((n for n in choices if n in names), None)
        if found is None and role != "symbol":
            what = f"time column (one of {', '.join(TIME_COLUMNS)})" if role == "time" else f"column {role!r}"
            msg = f"{name}: header has no {what}; found {', '.join(names)[:300]}"
            raise InputError(msg)
        if found is not None and names.count(found) > 1:
            msg = f"{name}: header names column {found!r} more than once"
            raise InputError(msg)
        if found is not None:
            columns[role] = names.index(found)
    return CsvHeader(columns, len(names))


# -- CSV ---------------------------------------------------------------------------


def parse_csv(data: bytes, header: CsvHeader, path: str, origin: str | None = None) -> ParsedCandles:
    """Every data line of a CSV (``data`` includes the header line) as columns; sources name ``origin``."""
    origin = path if origin is None else origin
    starts, ends = _line_bounds(data)
    keep = ends[1:] > starts[1:]
    starts, ends, lines = starts[1:][keep], ends[1:][keep], np.flatnonzero(keep) + 2
    n, problems = len(starts), {}
    table, skipped = None, 0
    if not may_hold_hex(data):  # Arrow would read a hex time as int64
        table, skipped = _arrow(data, header, typed=True)
    if table is None:
        table, skipped = _arrow(data, header, typed=False)
    rows: slice | np.ndarray = slice(None)
    if table is None or skipped or table.num_rows != n:
        counts = _field_counts(data, starts, ends)
        fits = counts == header.ncols
        problems = {
            i: f"{counts[i]} fields, the header has {header.ncols}" for i in np.flatnonzero(~fits).tolist()
        }
        if table is None or int(fits.sum()) != table.num_rows:
            table, fits = _python_table(data, header, starts, ends, fits, problems)
        rows = np.flatnonzero(fits)
    at = np.arange(n)[rows]  # record of each table row
    ts, values = np.zeros(n, dtype=np.int64), np.zeros((5, n))
    ts[rows], bad = _times(table.column("time"))
    problems |= {int(at[k]): m for k, m in bad.items()}
    for k, name in enumerate(VALUE_COLUMNS):
        values[k, rows], bad = _floats(name, table.column(name))
        problems = {int(at[r]): m for r, m in bad.items()} | problems
    code, names = _symbol_codes(table, header, path, n, rows)
    return ParsedCandles(
        n,
        code,
        names,
        ts,
        values,
        problems,
        lambda i: data[starts[i] : ends[i]],
        lambda i: f"{origin}:{lines[i]}",
    )


def _symbol_codes(table: pa.Table, header: CsvHeader, path: str, n: int, rows) -> tuple[np.ndarray, list]:
    """Each record's index into the sorted unified symbols (the file name's when no column names one)."""
    if "symbol" not in header.columns:
        return np.zeros(n, dtype=np.int64), [symbol_from_path(path)]
    sym = table.column("symbol").combine_chunks().dictionary_encode()
    unified = [unify_symbol(s) for s in sym.dictionary.to_pylist()]
    names = sorted(set(unified))
    where = {u: k for k, u in enumerate(names)}
    lut = np.array([where[u] for u in unified] + [-1], dtype=np.int64)
    code = np.full(n, -1, dtype=np.int64)
    code[rows] = lut[sym.indices.to_numpy(zero_copy_only=False)]
    return code, names


def _arrow(data: bytes, header: CsvHeader, typed: bool) -> tuple[pa.Table | None, int]:
    """The used columns by pyarrow (typed, or as text); rows of a wrong field count skipped."""
    skipped = [0]

    def on_invalid(row: object) -> str:
        skipped[0] += 1
        return "skip"

    roles = {f"c{i}": role for role, i in header.columns.items()}
    kinds = {"time": pa.int64(), "symbol": pa.string()}
    types = {c: kinds.get(r, pa.float64()) if typed else pa.string() for c, r in roles.items()}
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(
                column_names=[f"c{i}" for i in range(header.ncols)], skip_rows=1, use_threads=False
            ),
            parse_options=pacsv.ParseOptions(newlines_in_values=False, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=list(types), null_values=[""]
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None, 0
    return table.rename_columns([roles[c] for c in table.column_names]), skipped[0]


def _python_table(data, header: CsvHeader, starts, ends, fits, problems) -> tuple[pa.Table, np.ndarray]:
    """The used columns as text, line by line: for lines pyarrow reads otherwise (or not at all)."""
    fits = fits.copy()
    cols: dict[str, list[str]] = {role: [] for role in header.columns}
    for i in np.flatnonzero(fits).tolist():
        try:
            fields = next(csv.reader([data[starts[i] : ends[i]].decode("utf-8")], strict=True), [])
        except (UnicodeDecodeError, csv.Error) as exc:
            fields, problems[i] = [], f"unreadable line: {exc}"[:200]
        if len(fields) != header.ncols:
            fits[i] = False
            problems.setdefault(i, f"{len(fields)} fields, the header has {header.ncols}")
            continue
        for role, k in header.columns.items():
            cols[role].append(fields[k])
    return pa.table({r: pa.array(v, pa.string()) for r, v in cols.items()}), fits


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the lines of ``data`` (newline and a carriage return before it excluded)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    starts, ends = np.r_[0, nl + 1], np.r_[nl, len(data)]
    if data.endswith(b"\n") or not data:
        starts, ends = starts[:-1], ends[:-1]
    cr = np.zeros(len(ends), dtype=bool)
    cr[ends > starts] = buf[ends[ends > starts] - 1] == 13
    return starts.astype(np.int64), (ends - cr).astype(np.int64)


def _field_counts(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Fields per line: commas counted, or the csv module's count when a quote is in the file."""
    if b'"' not in data:
        commas = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 44)
        return np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    lines = (data[s:e].decode("utf-8", errors="replace") for s, e in zip(starts, ends, strict=True))
    return np.array([len(next(csv.reader([t]), [])) for t in lines], dtype=np.int64)


def _seconds_to_ms(ts: np.ndarray) -> np.ndarray:
    """Integer epoch times in ms, the seconds among them (0 <= t < 1e11) scaled."""
    return np.where((ts >= 0) & (ts < SECONDS_BELOW), ts * 1000, ts).astype(np.int64)


def _times(col: pa.ChunkedArray) -> tuple[np.ndarray, dict[int, str]]:
    """Epoch ms of a time column (int64 or text) and the messages of unreadable entries."""
    if pa.types.is_integer(col.type) and col.null_count == 0:
        return _seconds_to_ms(col.to_numpy()), {}
    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    is_int = pc.fill_null(pc.match_substring_regex(text, r"^[+-]?[0-9]{1,18}$"), False)
    mask = is_int.to_numpy(zero_copy_only=False)
    out = np.zeros(len(col), dtype=np.int64)
    out[mask] = pc.cast(text.filter(is_int), pa.int64()).to_numpy(zero_copy_only=False)
    out, rest, bad = _seconds_to_ms(out), np.flatnonzero(~mask), {}
    others, when = text.take(pa.array(rest, pa.int64())), None
    if others.null_count == 0:
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            when = pc.cast(others, pa.timestamp("ms", "UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    if when is not None:
        out[rest] = when
    else:
        for k, value in zip(rest.tolist(), others.to_pylist(), strict=True):
            try:
                out[k] = parse_time(value if value else None)
            except ValueError as exc:
                bad[k] = str(exc) if value else "time is empty"
    return out, bad


def _floats(name: str, col: pa.ChunkedArray) -> tuple[np.ndarray, dict[int, str]]:
    """A float column (float64 or text) and the messages of unreadable entries."""
    if not pa.types.is_floating(col.type):
        try:
            col = pc.cast(pc.utf8_trim(col, characters=" \t"), pa.float64())
        except pa.ArrowInvalid:
            out, bad = np.full(len(col), np.nan), {}
            for k, value in enumerate(col.to_pylist()):
                try:
                    out[k] = _number(name, value)
                except ValueError as exc:
                    bad[k] = str(exc)
            return out, bad
    nulls = np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False)) if col.null_count else []
    return col.to_numpy(zero_copy_only=False), dict.fromkeys(list(nulls), f"{name} is empty")


def _number(name: str, value: object) -> float:
    """A float from a JSON number or numeric text; else ValueError saying what is wrong."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(name)
        if isinstance(value, str) and not is_number_text(value):
            raise ValueError(name)
        return float(value)
    except OverflowError:
        return math.inf
    except (TypeError, ValueError):
        what = "empty" if value is None or value == "" else f"{str(value)[:40]!r}, not a number"
        msg = f"{name} is {what}"
        raise ValueError(msg) from None


# -- JSON --------------------------------------------------------------------------


def parse_json(data: bytes, path: str, name: str, origin: str | None = None) -> ParsedCandles:
    """Every element of a ccxt/freqtrade JSON array as columns; InputError (naming ``name``) if unusable.

    Sources name ``origin`` (default ``path``).
    """
    origin = path if origin is None else origin
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = f"{name}: not valid JSON: {exc}"
        raise InputError(msg) from None
    if not isinstance(items, list):
        msg = f"{name}: expected a JSON array of [ts, open, high, low, close, volume] arrays"
        raise InputError(msg)
    n = len(items)
    try:
        # numpy takes true as 1 and "1_0" as 10: text or booleans in the file go element by element
        loose = b'"' in data or b"true" in data or b"false" in data
        table = np.zeros(0) if loose else np.array(items, dtype=np.float64) if n else np.zeros((0, 6))
    except (ValueError, TypeError, OverflowError):
        table = np.zeros(0)
    if table.ndim != 2 or table.shape[1] != 6:
        table, slow = np.full((n, 6), np.nan), range(n)
    else:
        slow = np.flatnonzero(np.isnan(table).any(axis=1)).tolist()  # a null in it: say which
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(table[:, 0]) & (table[:, 0] == np.floor(table[:, 0]))
        ts = _seconds_to_ms(np.where(whole & (np.abs(table[:, 0]) < 2**62), table[:, 0], -1).astype(np.int64))
    problems = {
        i: f"time {float(table[i, 0])!r} is not a whole number" for i in np.flatnonzero(~whole).tolist()
    }
    wrong_type = set()
    for i in slow:
        problems.pop(i, None)
        row = _json_row(items[i])
        if isinstance(row, str):
            problems[i] = row
        elif isinstance(row, _WrongType):
            problems[i] = row.message
            wrong_type.add(i)
        else:
            ts[i], table[i, 1:] = row[0], row[1:]
    return ParsedCandles(
        n,
        np.zeros(n, dtype=np.int64),
        [symbol_from_path(path)],
        ts,
        np.ascontiguousarray(table[:, 1:].T),
        problems,
        lambda i: orjson.dumps(items[i]),
        lambda i: f"{origin}[{i}]",
        frozenset(wrong_type),
    )


@dataclass(frozen=True, slots=True)
class _WrongType:
    """A JSON candle with an element of the wrong JSON type (a ``schema`` dead letter)."""

    message: str


def _json_row(item: object) -> tuple[int, float, float, float, float, float] | _WrongType | str:
    """One JSON candle, or what is wrong with it (a wrong JSON type apart).

    >>> _json_row([1618951320000, 1, 2, 0.5, "1.5", 3])
    (1618951320000, 1.0, 2.0, 0.5, 1.5, 3.0)
    >>> _json_row([1618951320000, True, 2, 0.5, 1.5, 3])
    _WrongType(message='open must be a JSON number or text, got bool True')
    """
    if not isinstance(item, list):
        return f"expected an array [ts, open, high, low, close, volume], got {type(item).__name__}"
    if len(item) != 6:
        return f"{len(item)} fields, expected 6 (ts, open, high, low, close, volume)"
    for name, x in zip(("time", *VALUE_COLUMNS), item, strict=True):
        if isinstance(x, bool | list | dict):
            return _WrongType(f"{name} must be a JSON number or text, got {type(x).__name__} {x!r:.40}")
    try:
        return (parse_time(item[0]), *(_number(n, x) for n, x in zip(VALUE_COLUMNS, item[1:], strict=True)))
    except ValueError as exc:
        return str(exc)
