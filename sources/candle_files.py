"""OHLCV candle files (CSV or ccxt/freqtrade JSON, optionally gzip) as bars in time order.

A file is read whole, validated and sorted stably by ``(ts, symbol)``, so a
file sorted by symbol (as exchange dumps are) replays in time order. CSV needs
a header; columns are mapped by name, case-insensitive, extra ones ignored:
``symbol`` or ``pair`` (else the file name gives the symbol), a time column
(:data:`TIME_COLUMNS`: integer epoch ms, integer epoch seconds below
:data:`SECONDS_BELOW`, or ISO-8601 with an offset), ``open, high, low, close,
volume``. JSON is what ccxt ``fetch_ohlcv`` returns and freqtrade stores, an
array of ``[ts_ms, open, high, low, close, volume]``, the symbol from the file
name (``BTC_USDT_USDT-1h-futures.json`` is ``BTC/USDT:USDT``). Symbols become
ccxt-unified (:func:`unify_symbol`). A bar's ``ts`` is the candle's open time,
its ``vwap`` the typical price ``(high + low + close) / 3`` (a candle carries
no traded value; this is the usual stand-in), ``trades`` 0 (unknown).

A bad record becomes a :class:`DeadLetter` (source ``path:line`` with the
header as line 1, or ``path[index]`` in JSON; the raw row as payload), reason
``parse`` (field count, unreadable number or time), ``value`` (a price not
finite and > 0, volume not finite and >= 0, high < max(open, close), low >
min(open, close), open time off the grid or outside 1970..2200, bad symbol) or
``duplicate`` (symbol and open time seen before: the first in file order is
kept). A file that cannot be used at all raises :class:`InputError`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from schemas.records import DUPLICATE, PARSE, VALUE, Bar, DeadLetter
from schemas.validation import MAX_SYMBOL_LEN, MAX_TS
from sources.tick_files import InputError

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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class CandleSettings:
    """Parameters of :class:`CandleFileReader`.

    Parameters
    ----------
    interval_ms
        The bar grid D in ms (``features.bar_interval`` * 1000).
    exchange
        Where the candles come from; only used in messages.
    chunk_rows
        Records per chunk, about (a chunk ends with the bar that reaches it).

    >>> CandleSettings(interval_ms=0)
    Traceback (most recent call last):
    ...
    ValueError: interval_ms must be > 0, got 0
    """

    interval_ms: int
    exchange: str = ""
    chunk_rows: int = 50_000

    def __post_init__(self) -> None:
        if self.interval_ms <= 0:
            msg = f"interval_ms must be > 0, got {self.interval_ms}"
            raise ValueError(msg)
        if self.chunk_rows < 1:
            msg = f"chunk_rows must be >= 1, got {self.chunk_rows}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class CandleChunk:
    """A run of a candle file's records in the reader's order.

    Parameters
    ----------
    bars
        Valid bars, in ``(ts, symbol)`` order.
    dead
        Rejected records (found while reading, so they come in the first chunks).
    records
        Source records consumed: dead letters plus the candles the bars were made of.
    position
        Bytes of the file consumed, in proportion to records.
    resume_at
        Records consumed so far: pass it as ``skip`` to
        :meth:`CandleFileReader.chunks` to resume after this chunk.
    """

    bars: list[Bar]
    dead: list[DeadLetter]
    records: int
    position: int
    resume_at: int


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
    """
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value.strip())
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            return parse_time(float(value))  # e.g. "1618951320000.0"
        try:
            when = datetime.fromisoformat(value.strip())
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


def _seconds_to_ms(ts: np.ndarray) -> np.ndarray:
    """Integer epoch times in ms, the seconds among them (0 <= t < 1e11) scaled."""
    return np.where((ts >= 0) & (ts < SECONDS_BELOW), ts * 1000, ts).astype(np.int64)


def _number(name: str, value: object) -> float:
    """A float from a JSON number or numeric text; else ValueError saying what is wrong."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(name)
        return float(value)
    except OverflowError:
        return math.inf
    except (TypeError, ValueError):
        what = "empty" if value is None or value == "" else f"{str(value)[:40]!r}, not a number"
        msg = f"{name} is {what}"
        raise ValueError(msg) from None


@dataclass(slots=True)
class _Parsed:
    """Every record of a file as columns; ``problems`` holds the unparsable ones' messages."""

    n: int
    code: np.ndarray  # index into names, -1 where the record did not parse
    names: list[str]  # sorted unified symbols
    ts: np.ndarray
    values: np.ndarray  # (5, n): open, high, low, close, volume
    problems: dict[int, str]


@dataclass(slots=True)
class _Loaded:
    """A file's output in the reader's order: dead letters, then bars."""

    dead: list[DeadLetter]
    names: np.ndarray
    code: np.ndarray
    ts: np.ndarray
    ohlcv: np.ndarray  # (6, m): open, high, low, close, volume, vwap
    weight: np.ndarray  # candles per bar
    source_interval_ms: int | None


class CandleFileReader:
    """Reads one candle file as :class:`CandleChunk` s of bars in ``(ts, symbol)`` order.

    The reader's order of records is: dead letters in file order, then bars in
    ``(ts, symbol)`` order, each counting the candles it was made of; ``skip``
    leaves out that many records (a ``skip`` inside an aggregated bar emits it
    again). Over a file, records = data lines (JSON elements) = candles kept +
    dead letters.

    The candle interval is the commonest positive step between a symbol's
    consecutive candles (``interval_ms`` if no symbol has two). Finer candles
    that divide ``interval_ms`` are aggregated: first open, highest high,
    lowest low, last close, summed volume, as vwap the volume-weighted mean of
    typical prices (the bar's typical price at volume 0). Bars are made of the
    candles present (gaps and file ends give fewer). Candles must sit on their
    own grid.

    Parameters
    ----------
    path
        The file: ``.csv`` or ``.json``, optionally ``.gz``.
    settings
        Bar interval and chunk size.
    now_ms
        Clock for dead letters' ingest time.

    Raises
    ------
    InputError
        At construction: no such file, an unknown type, a CSV header without
        a required column. When chunks are first read: unreadable gzip or
        JSON, or candles coarser than ``interval_ms`` or not dividing it.

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d, "BTC_USDT-1m.json")
    ...     _ = path.write_text("[[1618951380, 2, 3, 1, 2.5, 4], [1618951320000, 1, 2, 1, 2, 0],"
    ...                         " [1618951320000, 9, 9, 9, 9, 9]]")
    ...     reader = CandleFileReader(str(path), CandleSettings(interval_ms=60_000), now_ms=lambda: 7)
    ...     chunks = list(reader.chunks())
    >>> [(b.symbol, b.ts, b.open, b.close, round(b.vwap, 4)) for c in chunks for b in c.bars]
    [('BTC/USDT', 1618951320000, 1.0, 2.0, 1.6667), ('BTC/USDT', 1618951380000, 2.0, 2.5, 2.1667)]
    >>> [(os.path.basename(d.source), d.reason, os.path.basename(d.message)) for c in chunks for d in c.dead]
    [('BTC_USDT-1m.json[2]', 'duplicate', 'BTC_USDT-1m.json[1]')]
    >>> [(c.records, c.resume_at) for c in chunks]
    [(3, 3)]
    """

    def __init__(self, path: str, settings: CandleSettings, now_ms: Callable[[], int]) -> None:
        self.path = path
        self.settings = settings
        self.now_ms = now_ms
        name = path.lower().removesuffix(".gz")
        if not name.endswith((".json", ".csv", ".txt")):
            msg = f"{path}: unknown candle file type (expected .csv or .json, optionally .gz)"
            raise InputError(msg)
        self.format = "json" if name.endswith(".json") else "csv"
        if not os.path.isfile(path):
            msg = f"{self._name()}: no such file"
            raise InputError(msg)
        self.size = os.path.getsize(path)
        self._columns: dict[str, int] = {}
        self._ncols = 0
        self._loaded: _Loaded | None = None
        self._payloads: Callable[[int], bytes] = lambda i: b""
        self._sources: Callable[[int], str] = lambda i: f"{self.path}[{i}]"
        if self.format == "csv":
            self._read_header(self._first_line())

    @property
    def source_interval_ms(self) -> int | None:
        """The file's candle interval in ms (None when no symbol has two candles)."""
        return self._load().source_interval_ms

    def chunks(self, skip: int = 0) -> Iterator[CandleChunk]:
        """Yield the file's records from the ``skip``-th on, about ``chunk_rows`` per chunk."""
        if skip < 0:
            msg = f"skip must be >= 0, got {skip}"
            raise ValueError(msg)
        loaded = self._load()
        n_dead = len(loaded.dead)
        ends = np.cumsum(np.r_[np.ones(n_dead, dtype=np.int64), loaded.weight])
        total = int(ends[-1]) if len(ends) else 0
        i, done = int(np.searchsorted(ends, skip, side="right")), min(skip, total)
        while i < len(ends):
            j = int(np.searchsorted(ends, done + self.settings.chunk_rows, side="left")) + 1
            j = min(max(j, i + 1), len(ends))
            upto = int(ends[j - 1])
            bars = self._bars(max(i - n_dead, 0), max(j - n_dead, 0))
            yield CandleChunk(
                bars, loaded.dead[i : min(j, n_dead)], upto - done, self.size * upto // total, upto
            )
            i, done = j, upto

    # -- reading -----------------------------------------------------------------

    def _name(self) -> str:
        return f"{self.path} ({self.settings.exchange})" if self.settings.exchange else self.path

    def _bytes(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
            return gzip.decompress(data) if self.path.lower().endswith(".gz") else data
        except (OSError, EOFError) as exc:
            msg = f"{self._name()}: cannot read: {exc}"
            raise InputError(msg) from None

    def _first_line(self) -> bytes:
        try:
            with (gzip.open if self.path.lower().endswith(".gz") else open)(self.path, "rb") as f:
                return f.readline(1 << 20).rstrip(b"\r\n")
        except (OSError, EOFError) as exc:
            msg = f"{self._name()}: cannot read: {exc}"
            raise InputError(msg) from None

    def _read_header(self, first: bytes) -> None:
        """Map the roles time, symbol and the values to CSV column indices."""
        text = first.decode("utf-8", errors="replace").lstrip("\ufeff")
        names = [n.strip().lower() for n in next(csv.reader([text]), [])]
        if not any(names) or any(n.lstrip("+-").replace(".", "", 1).isdigit() for n in names):
            msg = f"{self._name()}: no header line (expected columns time, open, high, low, close, volume)"
            raise InputError(msg)
        roles = {"time": TIME_COLUMNS, "symbol": SYMBOL_COLUMNS} | {n: (n,) for n in VALUE_COLUMNS}
        for role, choices in roles.items():
            name = next((n for n in choices if n in names), None)
            if name is None and role != "symbol":
                what = (
                    f"time column (one of {', '.join(TIME_COLUMNS)})"
                    if role == "time"
                    else f"column {role!r}"
                )
                msg = f"{self._name()}: header has no {what}; found {', '.join(names)[:300]}"
                raise InputError(msg)
            if name is not None and names.count(name) > 1:
                msg = f"{self._name()}: header names column {name!r} more than once"
                raise InputError(msg)
            if name is not None:
                self._columns[role] = names.index(name)
        self._ncols = len(names)

    def _load(self) -> _Loaded:
        if self._loaded is None:
            parsed = self._read_csv() if self.format == "csv" else self._read_json()
            self._loaded = self._assemble(parsed)
            self._payloads = lambda i: b""  # lets the file's bytes go
        return self._loaded

    def _read_csv(self) -> _Parsed:
        data = self._bytes()
        starts, ends = _line_bounds(data)
        keep = ends[1:] > starts[1:]
        starts, ends, lines = starts[1:][keep], ends[1:][keep], np.flatnonzero(keep) + 2
        self._payloads = lambda i: data[starts[i] : ends[i]]
        self._sources = lambda i: f"{self.path}:{lines[i]}"
        n, problems = len(starts), {}
        table, skipped = self._arrow(data, typed=True)
        if table is None:
            table, skipped = self._arrow(data, typed=False)
        rows: slice | np.ndarray = slice(None)
        if table is None or skipped or table.num_rows != n:
            counts = _field_counts(data, starts, ends)
            fits = counts == self._ncols
            problems = {
                i: f"{counts[i]} fields, the header has {self._ncols}" for i in np.flatnonzero(~fits).tolist()
            }
            if table is None or int(fits.sum()) != table.num_rows:
                table, fits = self._python_table(data, starts, ends, fits, problems)
            rows = np.flatnonzero(fits)
        at = np.arange(n)[rows]  # record of each table row
        ts, values = np.zeros(n, dtype=np.int64), np.zeros((5, n))
        ts[rows], bad = _times(table.column("time"))
        problems |= {int(at[k]): m for k, m in bad.items()}
        for k, name in enumerate(VALUE_COLUMNS):
            values[k, rows], bad = _floats(name, table.column(name))
            problems = {int(at[r]): m for r, m in bad.items()} | problems
        if "symbol" not in self._columns:
            return _Parsed(
                n, np.zeros(n, dtype=np.int64), [symbol_from_path(self.path)], ts, values, problems
            )
        sym = table.column("symbol").combine_chunks().dictionary_encode()
        unified = [unify_symbol(s) for s in sym.dictionary.to_pylist()]
        names = sorted(set(unified))
        where = {u: k for k, u in enumerate(names)}
        lut = np.array([where[u] for u in unified] + [-1], dtype=np.int64)
        code = np.full(n, -1, dtype=np.int64)
        code[rows] = lut[sym.indices.to_numpy(zero_copy_only=False)]
        return _Parsed(n, code, names, ts, values, problems)

    def _arrow(self, data: bytes, typed: bool) -> tuple[pa.Table | None, int]:
        """The used columns by pyarrow (typed, or as text); rows of a wrong field count skipped."""
        skipped = [0]

        def on_invalid(row: object) -> str:
            skipped[0] += 1
            return "skip"

        roles = {f"c{i}": role for role, i in self._columns.items()}
        kinds = {"time": pa.int64(), "symbol": pa.string()}
        types = {c: kinds.get(r, pa.float64()) if typed else pa.string() for c, r in roles.items()}
        try:
            table = pacsv.read_csv(
                pa.BufferReader(data),
                read_options=pacsv.ReadOptions(
                    column_names=[f"c{i}" for i in range(self._ncols)], skip_rows=1, use_threads=False
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=False, invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types=types, include_columns=list(types), null_values=[""]
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None, 0
        return table.rename_columns([roles[c] for c in table.column_names]), skipped[0]

    def _python_table(self, data, starts, ends, fits, problems) -> tuple[pa.Table, np.ndarray]:
        """The used columns as text, line by line: for lines pyarrow reads otherwise (or not at all)."""
        fits = fits.copy()
        cols: dict[str, list[str]] = {role: [] for role in self._columns}
        for i in np.flatnonzero(fits).tolist():
            try:
                fields = next(csv.reader([data[starts[i] : ends[i]].decode("utf-8")], strict=True), [])
            except (UnicodeDecodeError, csv.Error) as exc:
                fields, problems[i] = [], f"unreadable line: {exc}"[:200]
            if len(fields) != self._ncols:
                fits[i] = False
                problems.setdefault(i, f"{len(fields)} fields, the header has {self._ncols}")
                continue
            for role, k in self._columns.items():
                cols[role].append(fields[k])
        return pa.table({r: pa.array(v, pa.string()) for r, v in cols.items()}), fits

    def _read_json(self) -> _Parsed:
        data = self._bytes()
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            msg = f"{self._name()}: not valid JSON: {exc}"
            raise InputError(msg) from None
        if not isinstance(items, list):
            msg = f"{self._name()}: expected a JSON array of [ts, open, high, low, close, volume] arrays"
            raise InputError(msg)
        self._payloads = lambda i: orjson.dumps(items[i])
        n = len(items)
        try:
            table = np.array(items, dtype=np.float64) if n else np.zeros((0, 6))
        except (ValueError, TypeError, OverflowError):
            table = np.zeros(0)
        if table.ndim != 2 or table.shape[1] != 6:
            table, slow = np.full((n, 6), np.nan), range(n)
        else:
            slow = np.flatnonzero(np.isnan(table).any(axis=1)).tolist()  # a null in it: say which
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(table[:, 0]) & (table[:, 0] == np.floor(table[:, 0]))
            ts = _seconds_to_ms(
                np.where(whole & (np.abs(table[:, 0]) < 2**62), table[:, 0], -1).astype(np.int64)
            )
        problems = {
            i: f"time {float(table[i, 0])!r} is not a whole number" for i in np.flatnonzero(~whole).tolist()
        }
        for i in slow:
            problems.pop(i, None)
            row = _json_row(items[i])
            if isinstance(row, str):
                problems[i] = row
            else:
                ts[i], table[i, 1:] = row[0], row[1:]
        values = np.ascontiguousarray(table[:, 1:].T)
        return _Parsed(n, np.zeros(n, dtype=np.int64), [symbol_from_path(self.path)], ts, values, problems)

    # -- checking and ordering ---------------------------------------------------

    def _assemble(self, p: _Parsed) -> _Loaded:
        """Dead letters for the bad records; the good ones as bars in (ts, symbol) order."""
        issues: list[tuple[int, str, str]] = [(i, PARSE, m) for i, m in p.problems.items()]
        ok = np.ones(p.n, dtype=bool)
        ok[list(p.problems)] = False
        o, h, lo, c, v = p.values
        bad_name = np.array([not _symbol_ok(s) for s in p.names] + [True])
        with np.errstate(invalid="ignore"):
            good = (p.ts >= 0) & (p.ts <= MAX_TS) & ~bad_name[p.code] & np.isfinite(v) & (v >= 0)
            for x in (o, h, lo, c):
                good &= np.isfinite(x) & (x > 0)
            good &= (h >= np.maximum(o, c)) & (lo <= np.minimum(o, c))
        for i in np.flatnonzero(ok & ~good).tolist():
            issues.append((i, VALUE, _value_problem(int(p.ts[i]), p.names[p.code[i]], p.values[:, i])))
        idx = np.flatnonzero(ok & good)
        idx = idx[np.lexsort((p.ts[idx], p.code[idx]))]  # by symbol, time, then file order (stable)
        code, ts = p.code[idx], p.ts[idx]
        step = np.diff(ts)
        steps, counts = np.unique(step[(code[1:] == code[:-1]) & (step > 0)], return_counts=True)
        found = int(steps[np.argmax(counts)]) if len(steps) else None
        grid = self._grid(found)
        keep = ts % grid == 0
        issues += [
            (int(idx[k]), VALUE, f"open time {ts[k]} is off the {grid} ms grid")
            for k in np.flatnonzero(~keep)
        ]
        idx, code, ts = idx[keep], code[keep], ts[keep]
        keep = np.r_[True, (code[1:] != code[:-1]) | (ts[1:] != ts[:-1])][: len(ts)]
        first = np.maximum.accumulate(np.where(keep, np.arange(len(ts)), 0))
        for k in np.flatnonzero(~keep).tolist():
            issues.append(
                (int(idx[k]), DUPLICATE, f"same symbol and open time as {self._sources(idx[first[k]])}")
            )
        idx, code, ts = idx[keep], code[keep], ts[keep]
        if grid < self.settings.interval_ms:
            code, ts, ohlcv, weight = _aggregate(code, ts, p.values[:, idx], self.settings.interval_ms)
            final = np.lexsort((code, ts))
            code, ts, ohlcv, weight = code[final], ts[final], ohlcv[:, final], weight[final]
        else:
            final = np.lexsort((code, ts))
            idx, code, ts = idx[final], code[final], ts[final]
            ohlcv, weight = np.empty((6, len(idx))), np.ones(len(idx), dtype=np.int64)
            np.take(p.values, idx, axis=1, out=ohlcv[:5])
            ohlcv[5] = (ohlcv[1] + ohlcv[2] + ohlcv[3]) / 3  # the typical price as vwap
        now = self.now_ms()
        dead = [DeadLetter(now, self._sources(i), r, m, self._payloads(i)) for i, r, m in sorted(issues)]
        return _Loaded(dead, np.array(p.names, dtype=object), code, ts, ohlcv, weight, found)

    def _grid(self, found: int | None) -> int:
        """The grid candles sit on; InputError when they cannot make ``interval_ms`` bars."""
        want = self.settings.interval_ms
        if found is None or want % found == 0:
            return want if found is None else found
        how = "is coarser than" if found > want else "does not divide"
        msg = (
            f"{self._name()}: the candle interval of {found} ms {how} the bar interval of {want} ms; "
            f"set features.bar_interval (seconds) to a multiple of {found / 1000:g}"
        )
        raise InputError(msg)

    def _bars(self, a: int, b: int) -> list[Bar]:
        loaded = self._load()
        cols = [x.tolist() for x in loaded.ohlcv[:, a:b]]
        symbols = loaded.names[loaded.code[a:b]].tolist()
        return list(map(Bar, symbols, loaded.ts[a:b].tolist(), *cols, repeat(0, b - a)))


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
            col = pc.cast(pc.utf8_trim_whitespace(col), pa.float64())
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


def _json_row(item: object) -> tuple[int, float, float, float, float, float] | str:
    """One JSON candle, or what is wrong with it."""
    if not isinstance(item, list):
        return f"expected an array [ts, open, high, low, close, volume], got {type(item).__name__}"
    if len(item) != 6:
        return f"{len(item)} fields, expected 6 (ts, open, high, low, close, volume)"
    try:
        return (parse_time(item[0]), *(_number(n, x) for n, x in zip(VALUE_COLUMNS, item[1:], strict=True)))
    except ValueError as exc:
        return str(exc)


def _symbol_ok(symbol: str) -> bool:
    return bool(symbol) and len(symbol) <= MAX_SYMBOL_LEN and symbol.isprintable()


def _value_problem(ts: int, symbol: str, values: np.ndarray) -> str:
    """What is out of range in a parsed candle (the reasons of the vectorised checks)."""
    o, h, lo, c, v = (float(x) for x in values)
    if not 0 <= ts <= MAX_TS:
        return f"open time {ts} is outside 1970..2200"
    if not _symbol_ok(symbol):
        return f"symbol {symbol[:80]!r} is empty, too long or unprintable"
    for name, x in (("open", o), ("high", h), ("low", lo), ("close", c)):
        if not (math.isfinite(x) and x > 0):
            return f"{name} {x!r} is not finite and > 0"
    if not (math.isfinite(v) and v >= 0):
        return f"volume {v!r} is not finite and >= 0"
    if h < max(o, c):
        return f"high {h!r} is below max(open, close) = {max(o, c)!r}"
    return f"low {lo!r} is above min(open, close) = {min(o, c)!r}"


def _aggregate(code, ts, cols, interval):
    """Bars of ``interval`` from candles sorted by (symbol, time): codes, times, OHLCV+vwap, candle counts."""
    n = len(ts)
    bucket = ts - ts % interval
    starts = np.flatnonzero(np.r_[True, (code[1:] != code[:-1]) | (bucket[1:] != bucket[:-1])])
    o, h, lo, c, v = cols
    high, low = np.maximum.reduceat(h, starts), np.minimum.reduceat(lo, starts)
    close, volume = c[np.r_[starts[1:] - 1, n - 1]], np.add.reduceat(v, starts)
    vwap = (high + low + close) / 3
    np.divide(np.add.reduceat(v * (h + lo + c) / 3, starts), volume, out=vwap, where=volume > 0)
    weight = np.diff(np.r_[starts, n]).astype(np.int64)
    return code[starts], bucket[starts], np.vstack([o[starts], high, low, close, volume, vwap]), weight
