"""Tick files (CSV or JSON Lines, optionally gzip) as columnar chunks.

CSV columns are mapped by header name (``ts,symbol,price,qty`` required,
``side,trade_id,exchange`` optional, others ignored); a file without a
header must use that canonical order. ``ts`` is epoch ms or ISO-8601 with
an offset. Blocks of lines are parsed by pyarrow when they are clean; a
block that pyarrow refuses is read again line by line, so each bad record
becomes a dead letter with its own reason, line number and raw bytes.

With a :class:`~sources.time_span.TimeSpan`, records whose ``ts`` reads
but falls outside it are skipped and counted (``Chunk.skipped``), on the
fast path by one mask over the block; a record that cannot be read is a
dead letter wherever its time lies.

The line-by-line path (:func:`schemas.validation.check_record`) is the
reference: the fast path checks symbols and exchanges once per distinct
name, sends a block whose ``ts`` column might hold a hex number (which
Arrow reads as int64) the slow way, and gives each row it flags the
reference's dead letter.

A dead letter's source is ``path:line``, or ``origin:line`` with the
reader's ``origin`` (``path#2`` when the run reads the same path a second
time), so every record read has its own source.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from schemas.errors import UsageProblem
from schemas.records import PARSE, SCHEMA, Bar, DeadLetter, Tick
from schemas.tick_columns import SIDE_CODES, RawSlices, TickColumns
from schemas.validation import (
    FIELDS,
    NO_SYMBOLS,
    REQUIRED,
    Rejected,
    check_record,
    exchange_problem,
    json_ts,
    parse_ts,
    symbol_problem,
    value_problems,
)
from sources.time_span import TimeSpan

ALIASES = {
    "timestamp": "ts",
    "time": "ts",
    "amount": "qty",
    "quantity": "qty",
    "size": "qty",
    "id": "trade_id",
    "tradeid": "trade_id",
}
_ARROW_TYPES = {
    "ts": pa.int64(),
    "symbol": pa.string(),
    "price": pa.float64(),
    "qty": pa.float64(),
    "side": pa.string(),
    "trade_id": pa.string(),
    "exchange": pa.string(),
}

# The fast path reads the few-valued text columns as dictionaries: half the parse time of plain strings
_TEXT_CODES = pa.dictionary(pa.int32(), pa.string())
_FAST_TYPES = {**_ARROW_TYPES, "symbol": _TEXT_CODES, "side": _TEXT_CODES, "exchange": _TEXT_CODES}


def _codes(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """A text column (plain or dictionary, any chunks) as one dictionary array."""
    if pa.types.is_dictionary(column.type):
        column = column.unify_dictionaries() if column.num_chunks > 1 else column
    arr = column.combine_chunks()
    return arr if pa.types.is_dictionary(arr.type) else arr.dictionary_encode()


class InputError(UsageProblem):
    """An input that cannot be read at all (missing file, no usable header)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One block of an input: per-symbol tick batches plus dead letters.

    Parameters
    ----------
    batches
        One :class:`TickColumns` per symbol present, rows in arrival order.
    dead
        Records rejected while reading (parse, schema, value).
    records
        Records read in this block (blank lines are not records), the
        skipped ones not included.
    position
        Bytes of the (compressed) file consumed so far.
    resume_at
        Lines consumed so far, header included: pass it to
        :meth:`TickFileReader.chunks` to resume after this chunk (for a
        topic partition: the next offset).
    part
        ``(partition, partitions)`` when the input is one of several
        partitions read in parallel, else None.
    bars
        Finished bars from a candle input, in (ts, symbol) order.
    skipped
        Records left out because their time is outside the replay's
        :class:`~sources.time_span.TimeSpan` (not dead letters).
    caught_up
        The partition has delivered everything there is for now (the end
        of a bounded read, or a live partition with nothing more on the
        broker): it holds no other partition back in event time.
    bar_sources
        Where each of ``bars`` came from: its first candle's source
        (``path:line`` or ``path[index]``), unique in a run.
    """

    batches: list[TickColumns]
    dead: list[DeadLetter]
    records: int
    position: int
    resume_at: int
    part: tuple[int, int] | None = None
    bars: tuple[Bar, ...] = ()
    skipped: int = 0
    caught_up: bool = False
    bar_sources: tuple[str, ...] = ()


def file_format(path: str) -> str:
    """``csv`` or ``jsonl`` from the file name."""
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".txt")):
        return "csv"
    msg = f"{path}: unknown tick file type (expected .csv, .jsonl or .ndjson, optionally .gz)"
    raise InputError(msg)


def may_hold_hex(block: bytes) -> bool:
    """True when ``0x`` or ``0X`` occurs in a block (a memchr when no ``x`` does, as usual).

    Arrow parses such a field as a hex integer where it reads an int64 column.
    """
    if b"x" not in block and b"X" not in block:
        return False
    buf = np.frombuffer(block, dtype=np.uint8)
    at = np.flatnonzero((buf | 0x20) == ord("x"))
    return bool(np.any(buf[at[at > 0] - 1] == ord("0")))


_PLAIN_VALUES = {
    "ts": r"^[0-9]{1,18}$",
    "symbol": r".",
    "price": r"^(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][-+]?[0-9]{1,2})?$",
    "qty": r"^(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][-+]?[0-9]{1,2})?$",
}
"""Forms of ts, price and qty that Arrow converts as the line reader does (others go line by line)."""


def _gather(block: bytes, starts: np.ndarray, ends: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The lines ``block[starts[i]:ends[i]]`` as one block, and their places in it."""
    view = memoryview(block)
    sub = b"\n".join([view[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]) + b"\n"
    lengths = ends - starts
    new_starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    return sub, new_starts, new_starts + lengths


def _split_lines(block: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the lines of a block (no trailing newline kept)."""
    nl = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
    starts = np.r_[0, nl + 1][: len(nl) + (0 if block.endswith(b"\n") else 1)]
    ends = np.r_[nl, len(block)][: len(starts)]
    if len(ends):
        # drop a carriage return before the newline
        cr = np.zeros(len(ends), dtype=bool)
        nonempty = ends > starts
        cr[nonempty] = np.frombuffer(block, dtype=np.uint8)[ends[nonempty] - 1] == 13
        ends = ends - cr
    return starts.astype(np.int64), ends.astype(np.int64)


class TickFileReader:
    """Reads one tick file as :class:`Chunk` s.

    Parameters
    ----------
    path
        The file; ``.gz`` is decompressed.
    default_exchange
        Exchange of ticks whose record names none.
    block_bytes
        Size of the blocks parsed at once.
    now_ms
        Clock for dead letters' ingest time.
    span
        Event times to keep (None: all); the others are skipped and counted.
    symbols
        The symbols to accept (``input.symbols``); empty: any well-formed one.
    origin
        How sources name the file (default ``path``): ``path#2`` when the
        run reads the same path a second time.
    """

    def __init__(
        self,
        path: str,
        default_exchange: str,
        now_ms: Callable[[], int],
        block_bytes: int = 4 << 20,
        span: TimeSpan | None = None,
        symbols: frozenset[str] = NO_SYMBOLS,
        origin: str | None = None,
    ) -> None:
        self.path = path
        self.origin = path if origin is None else origin
        self.symbols = frozenset(symbols)
        self.format = file_format(path)
        if not os.path.isfile(path):
            msg = f"{path}: no such file"
            raise InputError(msg)
        self.default_exchange = default_exchange
        self.block_bytes = block_bytes
        self.now_ms = now_ms
        self.span = span if span is not None else TimeSpan()
        self.size = os.path.getsize(path)
        self.columns: list[str] | None = None
        self.has_header = False
        if self.format == "csv":
            self.has_header = self._read_header(self._first_line())

    @property
    def empty(self) -> bool:
        """True when the file holds no record: no bytes, or only empty lines (after a header).

        An unreadable file is not empty: reading it reports the problem.
        """
        try:
            raw, stream = self._open()
            with raw, stream:
                if self.has_header:
                    stream.readline(1 << 20)
                while line := stream.readline(1 << 20):
                    if line.removesuffix(b"\n").removesuffix(b"\r"):  # as the reader splits lines
                        return False
        except (OSError, EOFError):
            return False
        return True

    def _first_line(self) -> bytes:
        try:
            raw, stream = self._open()
            with raw, stream:
                return stream.readline(1 << 20).rstrip(b"\r\n")
        except (OSError, EOFError) as exc:
            msg = f"{self.path}: cannot read: {exc}"
            raise InputError(msg) from None

    def _open(self) -> tuple[io.BufferedIOBase, io.BufferedIOBase]:
        raw = open(self.path, "rb")  # noqa: SIM115 - closed by chunks()
        if self.path.lower().endswith(".gz"):
            return raw, gzip.GzipFile(fileobj=raw, mode="rb")
        return raw, raw

    def chunks(self, skip_lines: int = 0) -> Iterator[Chunk]:
        """Yield the file's chunks; ``skip_lines`` resumes after that many lines."""
        raw, stream = self._open()
        try:
            yield from self._chunks(raw, stream, skip_lines)
        finally:
            stream.close()
            raw.close()

    def _chunks(self, raw, stream, skip_lines: int) -> Iterator[Chunk]:
        line_no = 0  # lines consumed before the current block
        rest = b""
        header_done = self.format == "jsonl"
        while True:
            data = stream.read(self.block_bytes)
            eof = not data
            block = rest + data
            if not eof:
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    rest = block
                    continue
                block, rest = block[:cut], block[cut:]
            else:
                rest = b""
            if not block:
                if eof:
                    return
                continue
            if not header_done:
                header_done = True
                if self.has_header:
                    first_end = block.find(b"\n")
                    line_no += 1
                    block = b"" if first_end < 0 else block[first_end + 1 :]
            starts, ends = _split_lines(block)
            n_lines = len(starts)
            if skip_lines > line_no:
                drop = min(skip_lines - line_no, n_lines)
                starts, ends = starts[drop:], ends[drop:]
                first_line = line_no + drop + 1
            else:
                first_line = line_no + 1
            keep = ends > starts
            numbers = np.arange(first_line, first_line + len(starts), dtype=np.int64)[keep]
            starts, ends = starts[keep], ends[keep]
            line_no += n_lines
            if len(starts):
                yield self._parse(block, starts, ends, numbers, raw.tell(), line_no)
            if eof:
                return

    def _read_header(self, first: bytes) -> bool:
        """Set the CSV columns; True when ``first`` was a header line.

        A first line that is not text (invalid UTF-8, control characters, malformed quoting) or
        starts with a number is a record, as is every line of a file with only blank lines: the
        columns are then ``FIELDS``, and such lines become dead letters.
        """
        try:
            text = first.decode("utf-8").strip().lstrip("\ufeff")
            fields = next(csv.reader([text], strict=True), [])
        except (UnicodeDecodeError, csv.Error):
            text, fields = "\0", []
        if any(not c.isprintable() and c != "\t" for c in text) or (not text and self.empty):
            self.columns = list(FIELDS)
            return False
        names = [ALIASES.get(n.strip().lower(), n.strip().lower()) for n in fields]
        if names and names[0] and names[0].lstrip("-").replace(".", "", 1).isdigit():
            self.columns = list(FIELDS)
            return False
        repeated = sorted({n for n in names if n in FIELDS and names.count(n) > 1})
        if repeated:
            msg = f"{self.path}: header names column {', '.join(repeated)} more than once"
            raise InputError(msg)
        missing = [n for n in REQUIRED if n not in names]
        if missing:
            msg = f"{self.path}: header has no column {', '.join(missing)} (found {', '.join(names)})"
            raise InputError(msg)
        self.columns = names
        return True

    def _parse(self, block, starts, ends, numbers, position, resume_at) -> Chunk:
        parsed = self._fast_csv(block, starts, ends, numbers) if self.format == "csv" else None
        if parsed is None and self.format == "csv":
            parsed = self._mixed(block, starts, ends, numbers)
        if parsed is None:
            parsed = self._slow(block, starts, ends, numbers)
        batches, dead, skipped = parsed
        return Chunk(batches, dead, len(starts) - skipped, position, resume_at, skipped=skipped)

    # -- fast path ----------------------------------------------------------

    def _fast_csv(self, block, starts, ends, numbers):
        """Batches, dead letters and the skipped count of a clean block; None when pyarrow refuses it."""
        table = self._arrow_block(block, len(starts))
        if table is None:
            return None
        return self._typed(table, block, starts, ends, numbers)

    def _typed(self, table: pa.Table, block, starts, ends, numbers):
        """Batches, dead letters and the skipped count of a typed table of the block's lines."""
        skipped = 0
        if self.span.bounded:
            keep = ~self.span.outside(table.column("ts").to_numpy())
            skipped = len(keep) - int(np.count_nonzero(keep))
            if skipped:
                table = table.filter(pa.array(keep))
                starts, ends, numbers = starts[keep], ends[keep], numbers[keep]
        if table.num_rows == 0:
            return [], [], skipped
        parsed = self._fast_columns(table, block, starts, ends, numbers)
        return None if parsed is None else (*parsed, skipped)

    def _arrow_block(self, block: bytes, n: int) -> pa.Table | None:
        """The block as a typed table of ``n`` rows, or None when a line does not fit."""
        cols = self.columns
        wanted = {c: _FAST_TYPES[c] for c in cols if c in _FAST_TYPES}
        try:
            table = pacsv.read_csv(
                io.BytesIO(block),
                # one chunk: one dictionary per text column
                read_options=pacsv.ReadOptions(
                    column_names=cols, use_threads=False, block_size=len(block) + 1
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=wanted,
                    include_columns=list(wanted),
                    null_values=[""],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        if table.num_rows != n:
            return None
        for name in REQUIRED:
            if table.column(name).null_count:
                return None
        if may_hold_hex(block) and not self._decimal_ts(block):
            return None  # Arrow reads hex as int64; the reference does not
        return table

    def _decimal_ts(self, block: bytes) -> bool:
        """True when every ``ts`` of a block Arrow read as int64 is decimal digits."""
        as_text = pacsv.ConvertOptions(column_types={"ts": pa.string()}, include_columns=["ts"])
        try:
            ts = pacsv.read_csv(
                io.BytesIO(block),
                read_options=pacsv.ReadOptions(column_names=self.columns, use_threads=False),
                parse_options=pacsv.ParseOptions(newlines_in_values=False),
                convert_options=as_text,
            ).column("ts")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return False
        return pc.all(pc.match_substring_regex(ts, r"^[ \t]*-?[0-9]+[ \t]*$")).as_py() is not False

    def _fast_columns(self, table: pa.Table, block, starts, ends, numbers):
        """Per-symbol batches and dead letters of a typed table (None: a line needs the slow path)."""
        wanted = set(table.column_names)
        ts = table.column("ts").to_numpy()
        price = table.column("price").to_numpy()
        qty = table.column("qty").to_numpy()
        bad = value_problems(ts, price, qty)
        sym = _codes(table.column("symbol"))
        sym_names = sym.dictionary.to_pylist()
        if "" in sym_names:
            return None  # a missing symbol: the slow path says which line
        sym_codes = sym.indices.to_numpy()
        bad_syms = [i for i, s in enumerate(sym_names) if symbol_problem(s, self.symbols) is not None]
        if bad_syms:
            bad |= np.isin(sym_codes, bad_syms)
        if "side" in wanted:
            side_arr = _codes(table.column("side"))
            names = pc.utf8_lower(side_arr.dictionary).to_pylist()
            lut = np.array([SIDE_CODES.get(s, -1) for s in names] or [0], dtype=np.int8)
            side_idx = side_arr.indices.to_numpy()
            side = lut[side_idx]
            bad |= side < 0
        else:
            side = np.zeros(len(ts), dtype=np.int8)
            names = side_idx = None
        n = len(ts)
        if "trade_id" in wanted:
            trade_id = table.column("trade_id").to_numpy(zero_copy_only=False).astype(object)
        else:
            trade_id = np.full(n, "", dtype=object)
        if "exchange" in wanted:
            ex = _codes(table.column("exchange"))
            ex_list = [e or self.default_exchange for e in ex.dictionary.to_pylist()]
            ex_names = np.array(ex_list, dtype=object)
            ex_idx = ex.indices.to_numpy()
            exchange = ex_names[ex_idx] if len(ex_names) else np.full(n, "", dtype=object)
            bad_ex = [i for i, e in enumerate(ex_list) if exchange_problem(e) is not None]
            if bad_ex:
                bad |= np.isin(ex_idx, bad_ex)
        else:
            exchange = np.full(n, self.default_exchange, dtype=object)
            if exchange_problem(self.default_exchange) is not None:
                bad[:] = True
        dead: list[DeadLetter] = []
        if bad.any():
            now = self.now_ms()
            for i in np.flatnonzero(bad).tolist():
                line = block[starts[i] : ends[i]]
                try:
                    self._record(line)
                except Rejected as rej:  # the reference's reason and message
                    dead.append(self._dead(now, numbers[i], rej.reason, rej.message, line))
                    continue
                return None  # the reference takes a line the fast path flagged: read the block its way
        raw = RawSlices(block, starts, ends)
        good = ~bad
        codes = np.where(good, sym_codes, -1)
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        bounds = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1], True])
        batches = []
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            code = int(sorted_codes[a])
            if code < 0:
                continue
            idx = order[a:b]
            batches.append(
                TickColumns(
                    sym_names[code],
                    ts[idx],
                    price[idx],
                    qty[idx],
                    side[idx],
                    trade_id[idx],
                    exchange[idx],
                    self.origin,
                    numbers[idx],
                    raw.take(idx),
                )
            )
        return batches, dead

    # -- a block with bad lines ------------------------------------------------

    def _mixed(self, block, starts, ends, numbers):
        """A block Arrow refused: its plain, well-formed lines by columns, the rest line by line.

        A line is plain when it is printable ASCII without quotes and has
        the header's field count; plain lines are read as text columns and a
        row whose ``ts``, ``price`` and ``qty`` have the plainest forms
        (digits; decimals with an optional short exponent) is converted by
        Arrow, exactly as the line reader would convert it. Every other line
        goes through the line reader, so each bad one gets its own reason.
        None when too few lines are plain to be worth it.
        """
        n = len(starts)
        plain = self._plain(block, starts, ends)
        if np.count_nonzero(plain) < max(64, n // 4):
            return None
        idx = np.flatnonzero(plain)
        sub, s2, e2 = _gather(block, starts[idx], ends[idx])
        table = self._text_table(sub, len(idx))
        if table is None:
            return None
        ok = np.ones(len(idx), dtype=bool)
        for name, pattern in _PLAIN_VALUES.items():
            ok &= pc.match_substring_regex(table.column(name), pattern).to_numpy(zero_copy_only=False)
        table = table.filter(pa.array(ok))
        try:
            table = table.cast(pa.schema([(c, _ARROW_TYPES[c]) for c in table.column_names]))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        fast = self._typed(table, sub, s2[ok], e2[ok], numbers[idx[ok]])
        if fast is None:
            return None
        rest = np.ones(n, dtype=bool)
        rest[idx[ok]] = False
        rest = np.flatnonzero(rest)
        slow = self._slow(block, starts[rest], ends[rest], numbers[rest])
        by_symbol: dict[str, list[TickColumns]] = {}
        for cols in fast[0] + slow[0]:
            by_symbol.setdefault(cols.symbol, []).append(cols)
        batches = []
        for parts in by_symbol.values():
            if len(parts) == 1:
                batches.append(parts[0])
                continue
            cols = TickColumns.concat(parts)
            batches.append(cols.take(np.argsort(cols.arrival, kind="stable")))
        return batches, fast[1] + slow[1], fast[2] + slow[2]

    def _plain(self, block: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Per line: printable ASCII, no quote, the header's number of fields."""
        data = np.frombuffer(block, dtype=np.uint8)
        if not len(starts) or not len(data):
            return np.zeros(len(starts), dtype=bool)
        odd = (data < 0x20) | (data > 0x7E) | (data == 0x22)
        odd[data == 0x0A] = False  # line ends
        # sums from each start to the next: the line, its line end and blank lines after it
        odd_count = np.add.reduceat(odd, starts).astype(np.int64)
        comma_count = np.add.reduceat(data == 0x2C, starts)
        at_end = np.minimum(ends, len(data) - 1)
        odd_count -= (ends < len(data)) & (data[at_end] == 0x0D)  # the CR of a CRLF line end
        return (odd_count == 0) & (comma_count == len(self.columns) - 1) & (ends > starts)

    def _text_table(self, block: bytes, n: int) -> pa.Table | None:
        """The block's wanted columns as text, or None when Arrow does not get ``n`` rows."""
        cols = self.columns
        wanted = [c for c in cols if c in _ARROW_TYPES]
        try:
            table = pacsv.read_csv(
                io.BytesIO(block),
                read_options=pacsv.ReadOptions(column_names=cols, use_threads=False),
                parse_options=pacsv.ParseOptions(newlines_in_values=False, quote_char=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(wanted, pa.string()),
                    include_columns=wanted,
                    strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        return table if table.num_rows == n else None

    # -- slow path ----------------------------------------------------------

    def _slow(self, block, starts, ends, numbers):
        now = self.now_ms()
        dead: list[DeadLetter] = []
        rows: dict[str, list] = {}
        skipped = 0
        for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            line = block[s:e]
            try:
                fields = self._fields(line)
                if self._outside(fields):
                    skipped += 1
                    continue
                tick = self._check(fields)
            except Rejected as rej:
                dead.append(self._dead(now, numbers[i], rej.reason, rej.message, line))
                continue
            rows.setdefault(tick.symbol, []).append((i, tick))
        batches = []
        for symbol, items in rows.items():
            idx = np.fromiter((i for i, _ in items), np.int64, len(items))
            ticks = [t for _, t in items]
            cols = TickColumns.from_ticks(ticks, self.origin)
            batches.append(
                TickColumns(
                    symbol,
                    cols.ts,
                    cols.price,
                    cols.qty,
                    cols.side,
                    cols.trade_id,
                    cols.exchange,
                    self.origin,
                    numbers[idx],
                    RawSlices(block, starts[idx], ends[idx]),
                )
            )
        return batches, dead, skipped

    def _check(self, fields: dict) -> Tick:
        text = self.format == "csv"
        return check_record(fields, self.default_exchange, text=text, allowed=self.symbols)

    def _record(self, line: bytes) -> Tick:
        """The tick of one line, or raise :class:`Rejected` (the reference check)."""
        return self._check(self._fields(line))

    def _outside(self, fields: dict) -> bool:
        """True when the record's ``ts`` reads and is outside the span (then it is skipped)."""
        if not self.span.bounded:
            return False
        try:
            return self.span.excludes((json_ts if self.format == "jsonl" else parse_ts)(fields.get("ts")))
        except Rejected:
            return False  # an unreadable time: check_record says why

    def _fields(self, line: bytes) -> dict:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Rejected(PARSE, f"invalid UTF-8 at byte {exc.start}") from None
        if self.format == "jsonl":
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise Rejected(PARSE, f"malformed JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise Rejected(PARSE, f"expected a JSON object, got {type(obj).__name__}")
            unknown = obj.keys() - set(FIELDS)
            if unknown:
                raise Rejected(SCHEMA, f"unknown field(s) {', '.join(sorted(unknown))[:200]}")
            return obj
        try:
            values = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            raise Rejected(PARSE, f"malformed CSV: {exc}") from None
        cols = self.columns
        if len(values) != len(cols):
            raise Rejected(SCHEMA, f"{len(values)} fields, the header has {len(cols)}")
        return {c: v for c, v in zip(cols, values, strict=True) if c in _ARROW_TYPES}

    def _dead(self, now: int, line: int, reason: str, message: str, payload: bytes) -> DeadLetter:
        return DeadLetter(now, f"{self.origin}:{line}", reason, message, payload)
