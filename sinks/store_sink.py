"""A batched, idempotent Bytewax sink into the ClickHouse store (or nowhere).

Items are ``(table, payload)``: ``("ticks", (TickColumns, seq))`` or a list
of records for ``bars``, ``features``, ``correlations``, ``dead_letters``.
Rows are buffered per table and written in column batches; idempotence
comes from the tables' ReplacingMergeTree keys. A write the store refuses is
reported at once, from the writer thread, to ``sinks.failure`` (the command
line ends there); a partition that failed never raises again, not even on
``close`` (see ``sinks.failure`` for why).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields

import numpy as np
import pyarrow as pa
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.correlation_rows import CorrelationBlock, CorrelationRows, block_columns
from schemas.ddl import RUN_TABLES, TABLES
from schemas.records import (
    Bar,
    Correlation,
    DeadLetter,
    ExecutionQuality,
    Feature,
    Fill,
    ModelMetrics,
    Order,
    OrderEvent,
    PortfolioState,
    RiskEvent,
    Signal,
    StrategyUpdate,
    StressResult,
    Target,
    VarBacktestRow,
)
from schemas.tick_columns import SIDES
from sinks import failure
from sinks.clickhouse_store import Store

_RECORD_FIELDS = {
    table: [f.name for f in fields(cls)]
    for table, cls in (
        ("bars", Bar),
        ("features", Feature),
        ("correlations", Correlation),
        ("dead_letters", DeadLetter),
        ("signals", Signal),
        ("risk_events", RiskEvent),
        ("orders", Order),
        ("fills", Fill),
        ("order_events", OrderEvent),
        ("execution_quality", ExecutionQuality),
        ("var_backtests", VarBacktestRow),
        ("portfolio", PortfolioState),
        ("model_metrics", ModelMetrics),
        ("strategy_updates", StrategyUpdate),
        ("targets", Target),
        ("stress", StressResult),
    )
}


class RowCounter:
    """Thread-safe rows-written counters per table, plus store write time and refused writes."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = defaultdict(int)
        self.write_seconds = 0.0
        self.write_errors: dict[str, int] = defaultdict(int)
        self.writes_here = False  # this process built the (single) store writer
        self._lock = threading.Lock()

    def add(self, table: str, n: int, seconds: float = 0.0) -> None:
        with self._lock:
            self.rows[table] += n
            self.write_seconds += seconds

    def write_failed(self, table: str) -> None:
        """A write of ``table`` the store refused (counted before the failure is reported)."""
        with self._lock:
            self.write_errors[table] += 1


def _dictionary(values: np.ndarray) -> pa.Array:
    """An object array of str as an Arrow dictionary array (LowCardinality)."""
    if len(values) and values[0] == values[-1] and (values == values[0]).all():
        return pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(len(values), np.int32)), pa.array([values[0]])
        )
    return pa.array(values, pa.string()).dictionary_encode()


def tick_columns(parts: list) -> dict:
    """Columns of the ``ticks`` table from (TickColumns, seq) parts."""
    cat = np.concatenate
    names = sorted({c.symbol for c, _ in parts})
    code = {name: i for i, name in enumerate(names)}
    symbol_idx = cat([np.full(len(c), code[c.symbol], np.int32) for c, _ in parts])
    return {
        "exchange": _dictionary(cat([c.exchange for c, _ in parts])),
        "symbol": pa.DictionaryArray.from_arrays(pa.array(symbol_idx), pa.array(names)),
        "trade_id": pa.array(cat([c.trade_id for c, _ in parts]), pa.string()),
        "ts": cat([c.ts for c, _ in parts]),
        "price": cat([c.price for c, _ in parts]),
        "qty": cat([c.qty for c, _ in parts]),
        "side": pa.DictionaryArray.from_arrays(
            pa.array(cat([c.side for c, _ in parts]).astype(np.int32)), pa.array(list(SIDES))
        ),
        "seq": cat([s for _, s in parts]),
    }


def record_columns(table: str, records: list, run_id: str = "") -> dict:
    """Columns of a record table from its records; a trading table's rows carry ``run_id``."""
    cols = {name: [getattr(r, name) for r in records] for name in _RECORD_FIELDS[table]}
    if table in _RUN_TABLES:
        cols["run_id"] = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(len(records), np.int32)), pa.array([run_id])
        )
    return cols


_RUN_TABLES = frozenset(RUN_TABLES)


def correlation_columns(parts: list) -> dict:
    """Columns of the ``correlations`` table from :class:`CorrelationRows` (and any single records)."""
    blocks: list[CorrelationBlock] = []
    for part in parts:
        if isinstance(part, CorrelationRows):
            blocks.extend(part.blocks)
        else:
            blocks.append(
                CorrelationBlock(
                    part.ts, (part.symbol_a, part.symbol_b), np.array([part.corr]), part.interval
                )
            )
    return block_columns(blocks)


class StoreWriter:
    """Buffers rows per table and writes every table once the buffers hold ``batch_rows`` rows together.

    A bound on the rows held in all, not per table: a table that fills slowly
    (bars, features, signals: a few rows per second against a thousand ticks)
    is written with the ticks instead of holding its objects for hours.

    Parameters
    ----------
    store
        Where to write; None counts rows as they come and keeps nothing (the null sink).
    counter
        Counts what was written.
    batch_rows
        Rows buffered (all tables together) before a write.
    run_id
        The run the trading tables' rows belong to (their ``run_id`` column).
    """

    def __init__(
        self, store: Store | None, counter: RowCounter, batch_rows: int = 250_000, run_id: str = ""
    ) -> None:
        self.store = store
        self.counter = counter
        self.batch_rows = batch_rows
        self.run_id = run_id
        self.buffers: dict[str, list] = defaultdict(list)
        self.sizes: dict[str, int] = defaultdict(int)
        self.buffered = 0
        # One background writer: the store's insert releases the GIL, so it
        # overlaps with the dataflow's Python work; at most 2 batches wait.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qbtc-store")
        self.pending: deque[Future] = deque()

    def add(self, table: str, payload) -> None:
        if self.store is None:  # the null sink counts at once: nothing to batch, nothing kept
            n = len(payload[0]) if table == "ticks" else len(payload)
            if n:
                self.counter.add(table, n)
            return
        if table == "ticks":
            n = len(payload[0])
            if n == 0:
                return
            self.buffers[table].append(payload)
        elif isinstance(payload, CorrelationRows):  # kept as columns: no object per pair
            n = len(payload)
            if n == 0:
                return
            self.buffers[table].append(payload)
        else:
            n = len(payload)
            if n == 0:
                return
            self.buffers[table].extend(payload)
        self.sizes[table] += n
        self.buffered += n
        if self.buffered >= self.batch_rows:
            self.write_all()

    def write_all(self) -> None:
        """Hand every table's buffered rows to the background writer, as one batch.

        The writer thread also turns the rows into columns: the dataflow only
        swaps its buffers, so a batch of a quarter million ticks does not hold
        up the records behind it (a stall of a fifth of a second, every few
        seconds, in a live stream's latency).
        """
        batch = [(table, parts, self.sizes.pop(table, 0)) for table, parts in self.buffers.items() if parts]
        self.buffers = defaultdict(list)
        self.sizes.clear()
        self.buffered = 0
        if not batch or self.store is None:
            return
        while len(self.pending) >= 2:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._write_tables, batch))

    def _columns(self, table: str, parts: list) -> dict:
        """A table's buffered rows as columns."""
        if table == "ticks":
            return tick_columns(parts)
        if table == "correlations":
            return correlation_columns(parts)
        return record_columns(table, parts, self.run_id)

    def _write_tables(self, batch: list[tuple[str, list, int]]) -> None:
        for table, parts, n in batch:
            self._write(table, self._columns(table, parts), n)

    def _write(self, table: str, cols: dict, n: int) -> None:
        start = time.perf_counter()
        try:
            self.store.insert(TABLES[table], cols)
        except Exception as exc:
            self.counter.write_failed(table)  # first: the report may end the process
            failure.report(exc)  # at once: the worker sees it only at its next write or flush
            raise
        self.counter.add(table, n, time.perf_counter() - start)

    def flush(self) -> None:
        """Write everything buffered and wait until it is stored."""
        self.write_all()
        while self.pending:
            self.pending.popleft().result()

    def discard(self) -> None:
        """Drop what is buffered and queued; wait only for a write already under way."""
        self.buffers.clear()
        self.sizes.clear()
        self.buffered = 0
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


class FailOnce:
    """A sink partition's first failure: reported to ``sinks.failure`` and remembered.

    ``run(fn, ...)`` calls ``fn``; its first exception is reported and
    re-raised. After that the partition is broken: its ``close`` must only
    release resources (Bytewax calls it while unwinding from the first
    exception, and a second exception there aborts the process).
    """

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def run(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:
            if self.error is None:
                self.error = exc
            failure.report(exc)
            raise


class _Partition(StatelessSinkPartition):
    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self.failed = FailOnce()

    def write_batch(self, items: list) -> None:
        self.failed.run(self._write_batch, items)

    def _write_batch(self, items: list) -> None:
        add = self.writer.add
        for table, payload in items:
            add(table, payload)

    def close(self) -> None:
        if self.failed.error is None:
            try:
                self.failed.run(self.writer.flush)
            except Exception:
                self.writer.discard()
                raise
            self.writer.pool.shutdown()
            return
        self.writer.discard()


class StoreSink(DynamicSink):
    """Bytewax sink writing ``(table, payload)`` items; ``dsn=None`` is the null sink."""

    def __init__(
        self, dsn: str | None, counter: RowCounter, batch_rows: int = 250_000, run_id: str = ""
    ) -> None:
        self.dsn = dsn
        self.counter = counter
        self.batch_rows = batch_rows
        self.run_id = run_id

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        store = None if self.dsn is None else Store(self.dsn)
        return _Partition(StoreWriter(store, self.counter, self.batch_rows, self.run_id))
