"""OHLCV candle files (CSV or ccxt/freqtrade JSON, optionally gzip) as bars in time order.

A file is read whole (parsed by :mod:`sources.candle_formats`), validated and
sorted stably by ``(ts, symbol)``, so a file sorted by symbol (as exchange
dumps are) replays in time order. A bar's ``ts`` is the candle's open time,
its ``vwap`` the typical price ``(high + low + close) / 3`` (a candle carries
no traded value; this is the usual stand-in), ``trades`` 0 (unknown).

A bad record becomes a :class:`DeadLetter` (source ``path:line`` with the
header as line 1, or ``path[index]`` in JSON, with the reader's ``origin``
in place of ``path`` when given; the raw row as payload), reason ``parse``
(field count, unreadable number or time), ``schema`` (a JSON element that is a
boolean, an array or an object), ``value`` (a price not finite
and > 0, volume not finite and >= 0, high < max(open, close), low >
min(open, close), open time off the grid or outside 1970..2200, a symbol
that is not ccxt-unified ``BASE/QUOTE[:SETTLE]`` or not in the settings'
allow-list) or ``duplicate`` (symbol and open time seen before: the first in
file order is kept). Each bar comes with the source of its first candle
(:attr:`CandleChunk.bar_sources`), so a bar rejected later has its own. A
candle whose open time is outside the settings' :class:`TimeSpan` is skipped
and counted, not a dead letter. A file that cannot be used at all raises
:class:`InputError`.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from schemas.records import DUPLICATE, PARSE, SCHEMA, VALUE, Bar, DeadLetter
from schemas.validation import MAX_TS, NO_SYMBOLS, symbol_problem
from sources.candle_formats import CsvHeader, ParsedCandles, parse_csv, parse_json, read_header
from sources.tick_files import InputError
from sources.time_span import TimeSpan


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
    span
        Candle open times to keep; candles outside are skipped and counted.
    symbols
        The symbols to accept (``input.symbols``); empty: any well-formed one.

    >>> CandleSettings(interval_ms=0)
    Traceback (most recent call last):
    ...
    ValueError: interval_ms must be > 0, got 0
    """

    interval_ms: int
    exchange: str = ""
    chunk_rows: int = 50_000
    span: TimeSpan = TimeSpan()
    symbols: frozenset[str] = NO_SYMBOLS

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
        Records consumed so far, skipped ones included: pass it as ``skip``
        to :meth:`CandleFileReader.chunks` to resume after this chunk.
    skipped
        Candles outside the span (all of them come in the first chunk).
    bar_sources
        The source of each bar's first candle (``path:line`` or ``path[index]``).
    """

    bars: list[Bar]
    dead: list[DeadLetter]
    records: int
    position: int
    resume_at: int
    skipped: int = 0
    bar_sources: tuple[str, ...] = ()


@dataclass(slots=True)
class _Loaded:
    """A file's output in the reader's order: skipped candles, dead letters, then bars."""

    skipped: int
    dead: list[DeadLetter]
    names: np.ndarray
    code: np.ndarray
    ts: np.ndarray
    ohlcv: np.ndarray  # (6, m): open, high, low, close, volume, vwap
    weight: np.ndarray  # candles per bar
    source_interval_ms: int | None
    first: np.ndarray  # record index of each bar's first candle
    source: Callable[[int], str]  # record index -> source


class CandleFileReader:
    """Reads one candle file as :class:`CandleChunk` s of bars in ``(ts, symbol)`` order.

    The reader's order of records is: the candles outside the span (one
    entry), dead letters in file order, then bars in ``(ts, symbol)`` order,
    each counting the candles it was made of; ``skip`` leaves out that many
    records (a ``skip`` inside an aggregated bar emits it again). Over a file,
    records + skipped = data lines (JSON elements) = candles kept + dead
    letters + candles skipped.

    The candle interval is the commonest positive step between a symbol's
    consecutive candles (``interval_ms`` if no symbol has two), found over the
    whole file whatever the span. Finer candles that divide ``interval_ms``
    are aggregated: first open, highest high, lowest low, last close, summed
    volume, as vwap the volume-weighted mean of typical prices (the bar's
    typical price at volume 0). Bars are made of the candles present (gaps,
    file ends and span ends give fewer). Candles must sit on their own grid.

    Parameters
    ----------
    path
        The file: ``.csv`` or ``.json``, optionally ``.gz``.
    settings
        Bar interval, chunk size and span.
    now_ms
        Clock for dead letters' ingest time.
    origin
        How sources name the file (default ``path``): ``path#2`` when the
        run reads the same path a second time.

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
    >>> [(c.records, c.resume_at, c.skipped) for c in chunks]
    [(3, 3, 0)]
    >>> [os.path.basename(s) for c in chunks for s in c.bar_sources]
    ['BTC_USDT-1m.json[1]', 'BTC_USDT-1m.json[0]']
    """

    def __init__(
        self, path: str, settings: CandleSettings, now_ms: Callable[[], int], origin: str | None = None
    ) -> None:
        self.path = path
        self.origin = path if origin is None else origin
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
        self._loaded: _Loaded | None = None
        self._header: CsvHeader | None = None
        if self.format == "csv":
            self._header = read_header(self._first_line(), self._name())

    @property
    def source_interval_ms(self) -> int | None:
        """The file's candle interval in ms (None when no symbol has two candles)."""
        return self._load().source_interval_ms

    @property
    def empty(self) -> bool:
        """True when the file holds no record (no bytes, a header only, or an empty JSON array)."""
        loaded = self._load()
        return not (loaded.skipped or loaded.dead or len(loaded.weight))

    def chunks(self, skip: int = 0) -> Iterator[CandleChunk]:
        """Yield the file's records from the ``skip``-th on, about ``chunk_rows`` per chunk."""
        if skip < 0:
            msg = f"skip must be >= 0, got {skip}"
            raise ValueError(msg)
        loaded = self._load()
        lead = 1 if loaded.skipped else 0  # the skipped candles, one entry
        first_bar = lead + len(loaded.dead)
        ends = np.cumsum(
            np.r_[np.full(lead, loaded.skipped, np.int64), np.ones(len(loaded.dead), np.int64), loaded.weight]
        )
        total = int(ends[-1]) if len(ends) else 0
        i, done = int(np.searchsorted(ends, skip, side="right")), min(skip, total)
        while i < len(ends):
            j = int(np.searchsorted(ends, done + self.settings.chunk_rows, side="left")) + 1
            j = min(max(j, i + 1), len(ends))
            upto = int(ends[j - 1])
            skipped = loaded.skipped - done if i < lead else 0
            a, b = max(i - first_bar, 0), max(j - first_bar, 0)
            bars, sources = self._bars(a, b), tuple(map(loaded.source, loaded.first[a:b].tolist()))
            dead = loaded.dead[max(i - lead, 0) : max(min(j, first_bar) - lead, 0)]
            position = self.size * upto // total
            yield CandleChunk(bars, dead, upto - done - skipped, position, upto, skipped, sources)
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

    def _load(self) -> _Loaded:
        if self._loaded is None:
            data = self._bytes()
            if self._header is not None:
                parsed = parse_csv(data, self._header, self.path, self.origin)
            else:
                parsed = parse_json(data, self.path, self._name(), self.origin)
            self._loaded = self._assemble(parsed)  # the parsed records (and the file's bytes) go
        return self._loaded

    # -- checking and ordering ---------------------------------------------------

    def _assemble(self, p: ParsedCandles) -> _Loaded:
        """Dead letters for the bad records; the good ones inside the span as bars in (ts, symbol) order."""
        issues = [(i, SCHEMA if i in p.wrong_type else PARSE, m) for i, m in p.problems.items()]
        ok = np.ones(p.n, dtype=bool)
        ok[list(p.problems)] = False
        inside = ~self.settings.span.outside(p.ts)
        symbols = self.settings.symbols
        good = _in_range(p, symbols)
        for i in np.flatnonzero(ok & inside & ~good).tolist():
            problem = _value_problem(int(p.ts[i]), p.names[p.code[i]], p.values[:, i], symbols)
            issues.append((i, VALUE, problem))
        skipped = int(np.count_nonzero(ok & ~inside))
        idx = np.flatnonzero(ok & good)
        idx = idx[np.lexsort((p.ts[idx], p.code[idx]))]  # by symbol, time, then file order (stable)
        found = _commonest_step(p.code[idx], p.ts[idx])
        grid = self._grid(found)
        if skipped:
            idx = idx[inside[idx]]
        code, ts = p.code[idx], p.ts[idx]
        keep = ts % grid == 0
        issues += [
            (int(idx[k]), VALUE, f"open time {ts[k]} is off the {grid} ms grid")
            for k in np.flatnonzero(~keep)
        ]
        idx, code, ts = idx[keep], code[keep], ts[keep]
        keep = np.r_[True, (code[1:] != code[:-1]) | (ts[1:] != ts[:-1])][: len(ts)]
        first = np.maximum.accumulate(np.where(keep, np.arange(len(ts)), 0))
        for k in np.flatnonzero(~keep).tolist():
            issues.append((int(idx[k]), DUPLICATE, f"same symbol and open time as {p.source(idx[first[k]])}"))
        idx, code, ts = idx[keep], code[keep], ts[keep]
        if grid < self.settings.interval_ms:
            interval = self.settings.interval_ms
            code, ts, ohlcv, weight, starts = _aggregate(code, ts, p.values[:, idx], interval)
            final = np.lexsort((code, ts))
            code, ts, ohlcv, weight = code[final], ts[final], ohlcv[:, final], weight[final]
            idx = idx[starts][final]  # each bar's first candle
        else:
            final = np.lexsort((code, ts))
            idx, code, ts = idx[final], code[final], ts[final]
            ohlcv, weight = np.empty((6, len(idx))), np.ones(len(idx), dtype=np.int64)
            np.take(p.values, idx, axis=1, out=ohlcv[:5])
            ohlcv[5] = (ohlcv[1] + ohlcv[2] + ohlcv[3]) / 3  # the typical price as vwap
        now = self.now_ms()
        dead = [DeadLetter(now, p.source(i), r, m, p.payload(i)) for i, r, m in sorted(issues)]
        names = np.array(p.names, dtype=object)
        return _Loaded(skipped, dead, names, code, ts, ohlcv, weight, found, idx, p.source)

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


def _in_range(p: ParsedCandles, symbols: frozenset[str]) -> np.ndarray:
    """Mask of the records whose time, symbol and values are in range (the vectorised checks)."""
    o, h, lo, c, v = p.values
    bad_name = np.array([symbol_problem(s, symbols) is not None for s in p.names] + [True])
    with np.errstate(invalid="ignore"):
        good = (p.ts >= 0) & (p.ts <= MAX_TS) & ~bad_name[p.code] & np.isfinite(v) & (v >= 0)
        for x in (o, h, lo, c):
            good &= np.isfinite(x) & (x > 0)
        good &= (h >= np.maximum(o, c)) & (lo <= np.minimum(o, c))
    return good


def _commonest_step(code: np.ndarray, ts: np.ndarray) -> int | None:
    """The commonest positive step between consecutive candles of a symbol (sorted by symbol, time)."""
    step = np.diff(ts)
    steps, counts = np.unique(step[(code[1:] == code[:-1]) & (step > 0)], return_counts=True)
    return int(steps[np.argmax(counts)]) if len(steps) else None


def _value_problem(ts: int, symbol: str, values: np.ndarray, symbols: frozenset[str]) -> str:
    """What is out of range in a parsed candle (the reasons of the vectorised checks)."""
    o, h, lo, c, v = (float(x) for x in values)
    if not 0 <= ts <= MAX_TS:
        return f"open time {ts} is outside 1970..2200"
    problem = symbol_problem(symbol, symbols)
    if problem is not None:
        return problem
    for name, x in (("open", o), ("high", h), ("low", lo), ("close", c)):
        if not (math.isfinite(x) and x > 0):
            return f"{name} {x!r} is not finite and > 0"
    if not (math.isfinite(v) and v >= 0):
        return f"volume {v!r} is not finite and >= 0"
    if h < max(o, c):
        return f"high {h!r} is below max(open, close) = {max(o, c)!r}"
    return f"low {lo!r} is above min(open, close) = {min(o, c)!r}"


def _aggregate(code, ts, cols, interval):
    """Bars of ``interval`` from candles sorted by (symbol, time): codes, times, OHLCV+vwap, candle counts,
    and the position of each bar's first candle."""
    n = len(ts)
    bucket = ts - ts % interval
    starts = np.flatnonzero(np.r_[True, (code[1:] != code[:-1]) | (bucket[1:] != bucket[:-1])])
    o, h, lo, c, v = cols
    high, low = np.maximum.reduceat(h, starts), np.minimum.reduceat(lo, starts)
    close, volume = c[np.r_[starts[1:] - 1, n - 1]], np.add.reduceat(v, starts)
    vwap = (high + low + close) / 3
    np.divide(np.add.reduceat(v * (h + lo + c) / 3, starts), volume, out=vwap, where=volume > 0)
    weight = np.diff(np.r_[starts, n]).astype(np.int64)
    ohlcv = np.vstack([o[starts], high, low, close, volume, vwap])
    return code[starts], bucket[starts], ohlcv, weight, starts
