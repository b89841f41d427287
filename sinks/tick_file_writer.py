"""Appends ticks to a tick file that :class:`sources.tick_files.TickFileReader` reads back.

The format follows the file name, as for the reader: ``.csv`` (header
``ts,symbol,price,qty,side,trade_id,exchange``, written when the file is new
or empty) or ``.jsonl`` / ``.ndjson`` (one JSON object of the tick's fields
per line), each optionally ``.gz`` (gzip append mode: one gzip member per
writer, which gzip readers read as one stream). Dead letters go, in the
codec's encoding (:func:`schemas.codec.encode`), to the sibling file
``<path>.dead.jsonl``.

JSON Lines tick records hold exactly the :class:`~schemas.records.Tick`
fields, without the codec's ``v`` and ``type``: the reader takes a tick file
as an outside format and turns unknown fields into dead letters.

>>> import os, tempfile
>>> from sources.tick_files import TickFileReader
>>> path = os.path.join(tempfile.mkdtemp(), "ticks.csv")
>>> with TickFileWriter(path) as writer:
...     writer.write([Tick(1_700_000_000_000, "BTC/USDT", 37000.5, 0.25, "buy", "42", "binance")])
>>> open(path).read()
'ts,symbol,price,qty,side,trade_id,exchange\\n1700000000000,BTC/USDT,37000.5,0.25,buy,42,binance\\n'
>>> [batch] = [b for chunk in TickFileReader(path, "", lambda: 0).chunks() for b in chunk.batches]
>>> batch.tick(0) == Tick(1_700_000_000_000, "BTC/USDT", 37000.5, 0.25, "buy", "42", "binance")
True
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from typing import IO

import orjson

from schemas.codec import encode
from schemas.records import DeadLetter, Tick
from schemas.validation import FIELDS
from sources.tick_files import InputError, file_format

CSV_HEADER = ",".join(FIELDS)
"""The header line of the CSV files written (without the newline)."""
DEAD_SUFFIX = ".dead.jsonl"
"""Dead letters of ``path`` go to ``path + DEAD_SUFFIX``."""


class TickFileWriter:
    """Appends ticks to one CSV or JSON Lines file, optionally gzip.

    Parameters
    ----------
    path
        The tick file; ``.csv``, ``.jsonl`` or ``.ndjson``, optionally ``.gz``.
        An existing CSV file must have this writer's header; an existing file
        is appended to, never truncated.

    Attributes
    ----------
    written, dead_written
        Ticks and dead letters written so far.
    dead_path
        Where :meth:`write_dead` appends.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self.format = file_format(self.path)
        except InputError as exc:
            raise ValueError(str(exc)) from None
        self.gzip = self.path.lower().endswith(".gz")
        self.dead_path = self.path + DEAD_SUFFIX
        self.written = 0
        self.dead_written = 0
        self._dead_file: IO[bytes] | None = None
        self._closed = False
        first = self._existing_first_line()
        if self.format == "csv" and first not in (None, b"") and first != CSV_HEADER.encode():
            msg = (
                f"{self.path}: exists with header {first[:200].decode('utf-8', 'replace')!r}, "
                f"not {CSV_HEADER!r}; write to another file"
            )
            raise ValueError(msg)
        self._file: IO[bytes] = gzip.open(self.path, "ab") if self.gzip else open(self.path, "ab")  # noqa: SIM115
        if not self.gzip and first is not None and not self._ends_with_newline():
            self._file.write(b"\n")  # an earlier run ended mid-line: keep the next record apart
        if self.format == "csv" and first in (None, b""):
            self._file.write(CSV_HEADER.encode() + b"\n")

    def _existing_first_line(self) -> bytes | None:
        """The first (decompressed) line of the existing file; None when it is missing or empty."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return None
        opener = gzip.open if self.gzip else open
        try:
            with opener(self.path, "rb") as stream:
                return stream.readline(1 << 16).rstrip(b"\r\n").removeprefix(b"\xef\xbb\xbf")
        except (OSError, EOFError) as exc:
            msg = f"{self.path}: exists but cannot be read to append to: {exc}"
            raise ValueError(msg) from None

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as stream:
            stream.seek(-1, os.SEEK_END)
            return stream.read(1) == b"\n"

    def _check_open(self) -> None:
        if self._closed:
            msg = f"{self.path}: writer is closed"
            raise ValueError(msg)

    def write(self, ticks: list[Tick]) -> None:
        """Append a batch of ticks."""
        self._check_open()
        if not ticks:
            return
        if self.format == "csv":
            buffer = io.StringIO()
            rows = csv.writer(buffer, lineterminator="\n")
            rows.writerows(
                (t.ts, t.symbol, repr(float(t.price)), repr(float(t.qty)), t.side, t.trade_id, t.exchange)
                for t in ticks
            )
            data = buffer.getvalue().encode("utf-8")
        else:
            data = b"".join(
                orjson.dumps(
                    {
                        "ts": t.ts,
                        "symbol": t.symbol,
                        "price": t.price,
                        "qty": t.qty,
                        "side": t.side,
                        "trade_id": t.trade_id,
                        "exchange": t.exchange,
                    }
                )
                + b"\n"
                for t in ticks
            )
        self._file.write(data)
        self.written += len(ticks)

    def write_dead(self, dead: list[DeadLetter]) -> None:
        """Append dead letters to :attr:`dead_path`, one codec-encoded record per line."""
        self._check_open()
        if not dead:
            return
        if self._dead_file is None:
            self._dead_file = open(self.dead_path, "ab")  # noqa: SIM115 - closed by close()
        self._dead_file.write(b"".join(encode(d) + b"\n" for d in dead))
        self.dead_written += len(dead)

    def flush(self) -> None:
        """Push what was written to the operating system (a gzip sync point for ``.gz``)."""
        self._check_open()
        self._file.flush()
        if self._dead_file is not None:
            self._dead_file.flush()

    def close(self) -> None:
        """Flush and close the files; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.close()
        finally:
            if self._dead_file is not None:
                self._dead_file.close()

    def __enter__(self) -> TickFileWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
