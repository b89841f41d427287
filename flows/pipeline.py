"""The embedded dataflow: read, validate, bars, features, correlations, store.

One Bytewax dataflow wires the pure operators of ``operators/``:

    read (files | simulator | topic partitions) ─┬─ dead letters (parse, schema, value) ────────┐
         └─ event time (time, capacity; partitions merged) ─ dead letters ─────────────────────┤
              └─ per-symbol batches ─ bars (late, duplicate) ──────────────────────────────────┼─ store
                   ├─ features                                                                 │
                   └─ progress ─ correlation grid ─────────────────────────────────────────────┘
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import time
from dataclasses import dataclass
from datetime import timedelta

import bytewax.operators as op
from bytewax._bytewax import cli_main, run_main
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.recovery import RecoveryConfig

from flows.config import Settings
from flows.trading_settings import trading_settings
from operators.features.bar_builder import BarBuilder, BarSettings
from operators.features.candle_bars import CandleBars
from operators.features.correlation_grid import CorrelationGrid, CorrelationSettings
from operators.features.event_time import PartitionMerge, SymbolCapacity, TimeBounds, TimeGuard
from operators.features.symbol_features import FeatureSettings, SymbolFeatures
from operators.trading_loop import TradingLoop, TradingSettings
from schemas.codec import encode
from schemas.records import CAPACITY, SCHEMA, Bar, DeadLetter
from schemas.tick_columns import TickColumns
from sinks.store_sink import RowCounter, StoreSink
from sources.chunk_source import ChunkFactory, ChunkSource, Progress, wall_ms
from sources.control_file import ControlReader
from sources.tick_files import Chunk

# -- per-symbol and correlation logic -----------------------------------------


@dataclass(frozen=True, slots=True)
class BarBatch:
    """Finished bars of one symbol from a candle input, and the source of each (its first candle)."""

    bars: list[Bar]
    sources: list[str]


def dead_letters(cols: TickColumns, rejected: list[tuple[int, str, str]]) -> list[DeadLetter]:
    """Dead letters of a batch's rejected rows (ingest time: the record's Kafka time, else now)."""
    recv = cols.received
    now = wall_ms() if recv is None else None
    return [
        DeadLetter(now if recv is None else int(recv[i]), cols.source(i), r, m, cols.payload(i))
        for i, r, m in rejected
    ]


class EventTimeLogic(StatefulBatchLogic):
    """Every input partition's ticks through the time bounds, the symbol cap and the partition merge.

    One instance sees every chunk (its key is constant), so the merge can
    wait for every partition and the cap counts every symbol once.
    """

    def __init__(self, bounds: TimeBounds, resume, keep_state: bool = False, metrics=None) -> None:
        self.bounds = bounds
        self.keep_state = keep_state
        self.metrics = metrics
        if resume is not None:
            self.guards, self.merge, self.capacity = pickle.loads(resume)
        else:
            self.guards: dict[int, TimeGuard] = {}
            self.merge: PartitionMerge | None = None
            self.capacity = SymbolCapacity(bounds.max_symbols)

    def on_batch(self, chunks: list) -> tuple[list, bool]:
        out: list = []
        for chunk in chunks:
            part = chunk.part[0] if chunk.part is not None else 0
            guard = self.guards.get(part)
            if guard is None:
                guard = self.guards[part] = TimeGuard(self.bounds)
            dead: list[DeadLetter] = []
            batches, rejected = guard.check(chunk.batches)
            for cols, row, reason, message in rejected:
                dead.extend(dead_letters(cols, [(row, reason, message)]))
            if self.merge is None and chunk.part is not None and chunk.part[1] > 1:
                self.merge = PartitionMerge(chunk.part[1])
            if self.merge is not None:
                before = self.merge.stragglers
                batches = self.merge.add(part, batches, chunk.caught_up)
                if self.metrics is not None:
                    self.metrics.straggled(self.merge.stragglers - before)
            self._emit(out, batches, chunk.bars, dead, chunk.bar_sources)
        return out, StatefulBatchLogic.RETAIN

    def _emit(
        self,
        out: list,
        batches: list[TickColumns],
        bars: tuple,
        dead: list[DeadLetter],
        bar_sources: tuple[str, ...] = (),
    ) -> None:
        admit = self.capacity.admit
        kept = []
        for cols in batches:
            if admit(cols.symbol):
                kept.append(cols)
            else:
                message = self.capacity.message(cols.symbol)
                dead.extend(dead_letters(cols, [(i, CAPACITY, message) for i in range(len(cols))]))
        peers = tuple(dict.fromkeys(c.symbol for c in kept))
        out.extend((c.symbol, (c, peers)) for c in kept)
        if bars:
            sources = bar_sources or tuple(f"candles:{b.symbol}@{b.ts}" for b in bars)
            by_symbol: dict[str, BarBatch] = {}
            for bar, source in zip(bars, sources, strict=True):
                batch = by_symbol.get(bar.symbol)
                if batch is None:
                    batch = by_symbol[bar.symbol] = BarBatch([], [])
                batch.bars.append(bar)
                batch.sources.append(source)
            now = wall_ms()
            for symbol in list(by_symbol):
                if not admit(symbol):
                    message = self.capacity.message(symbol)
                    batch = by_symbol.pop(symbol)
                    dead.extend(
                        DeadLetter(now, source, CAPACITY, message, encode(b))
                        for b, source in zip(batch.bars, batch.sources, strict=True)
                    )
            peers = tuple(by_symbol)
            out.extend((symbol, (batch, peers)) for symbol, batch in by_symbol.items())
        if dead:
            out.append(("", dead))
            if self.metrics is not None:
                self.metrics.dead(dead)

    def on_eof(self) -> tuple[list, bool]:
        out: list = []
        dead = [
            letter
            for guard in self.guards.values()
            for cols, row, reason, message in guard.flush()
            for letter in dead_letters(cols, [(row, reason, message)])
        ]
        self._emit(out, self.merge.flush() if self.merge is not None else [], (), dead)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self):
        if not self.keep_state:
            return None
        return pickle.dumps((self.guards, self.merge, self.capacity), protocol=pickle.HIGHEST_PROTOCOL)


class SymbolLogic(StatefulBatchLogic):
    """Bars and features of one symbol; reports its progress to the grid.

    ``keep_state`` pickles the state at every epoch for recovery (Bytewax asks
    for a snapshot at every epoch even without a recovery store, so flows
    without one leave it off).
    """

    def __init__(
        self,
        bar_settings: BarSettings,
        feature_settings: FeatureSettings,
        resume,
        keep_state: bool = False,
        metrics=None,
        trading: bool = False,
    ) -> None:
        # Bytewax passes no key to the builder: the symbol comes with the first batch.
        self.bar_settings = bar_settings
        self.feature_settings = feature_settings
        self.keep_state = keep_state
        self.metrics = metrics
        self.trading = trading
        self.bars: BarBuilder | CandleBars | None = None
        self.features: SymbolFeatures | None = None
        if resume is not None:
            self.bars, self.features = pickle.loads(resume)
            self.symbol = self.bars.symbol

    def _emit(self, out: list, closed: list, peers: tuple) -> None:
        feats = []
        if closed:
            out.append(("bars", closed))
            update = self.features.update
            feats = [f for f in map(update, closed) if f is not None]
            if feats:
                out.append(("features", feats))
        d = self.bar_settings.interval_ms
        out.append(
            (
                "progress",
                (
                    self.symbol,
                    [(b.ts // d, b.close) for b in closed],
                    self.bars.closed_through(),
                    peers,
                    # the trading loop downstream needs the bars and features themselves
                    (closed, feats) if self.trading else None,
                ),
            )
        )

    def on_batch(self, values: list) -> tuple[list, bool]:
        started = time.perf_counter()
        out: list = []
        if self.bars is None:
            first = values[0][0]
            if isinstance(first, BarBatch):  # finished bars from a candle input
                self.symbol = first.bars[0].symbol
                self.bars = CandleBars(self.bar_settings.interval_ms, self.symbol)
            else:
                self.symbol = first.symbol
                self.bars = BarBuilder(self.bar_settings, self.symbol)
            self.features = SymbolFeatures(self.feature_settings, self.symbol)
        for cols, peers in values:
            if isinstance(cols, BarBatch):
                self._candles(out, cols, peers)
                continue
            if not isinstance(self.bars, BarBuilder):
                self._dead(out, [_mixed(self.symbol, cols, i) for i in range(len(cols))])
                continue
            up = self.bars.update(cols)
            if len(up.accepted):
                out.append(("ticks", (up.accepted, up.seq)))
            if up.rejected:
                self._dead(out, dead_letters(cols, up.rejected))
            if self.metrics is not None:
                self.metrics.accepted(len(up.accepted))
            self._emit(out, up.closed, peers)
        if self.metrics is not None:
            self.metrics.batch_seconds(time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def _candles(self, out: list, batch: BarBatch, peers: tuple) -> None:
        bars, sources = batch.bars, batch.sources
        if not isinstance(self.bars, CandleBars):
            mixed = [_mixed(self.symbol, bar, source=s) for bar, s in zip(bars, sources, strict=True)]
            self._dead(out, mixed)
            return
        up = self.bars.update(bars)
        if up.rejected:
            now = wall_ms()
            self._dead(out, [DeadLetter(now, sources[i], r, m, encode(bars[i])) for i, r, m in up.rejected])
        self._emit(out, up.accepted, peers)

    def _dead(self, out: list, dead: list[DeadLetter]) -> None:
        out.append(("dead_letters", dead))
        if self.metrics is not None:
            self.metrics.dead(dead)

    def on_eof(self) -> tuple[list, bool]:
        out: list = []
        closed = self.bars.flush() if isinstance(self.bars, BarBuilder) else []
        self._emit(out, closed, ())
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self):
        # Bytewax snapshots every epoch; the pickled bytes are the immutable copy.
        if not self.keep_state:
            return None
        return pickle.dumps((self.bars, self.features), protocol=pickle.HIGHEST_PROTOCOL)


@dataclass
class TradingReport:
    """Where the market step leaves the trading loop's summary at the end of the input."""

    summary: dict | None = None


class CorrelationLogic(StatefulBatchLogic):
    """The one cross-symbol step: the correlation grid, and the trading loop when trading.

    The loop processes a grid step once the grid has made it final, so its
    signals, orders and fills do not depend on how symbols interleave.
    """

    def __init__(
        self,
        settings: CorrelationSettings,
        resume,
        keep_state: bool = False,
        trading: TradingSettings | None = None,
        report: TradingReport | None = None,
        control_path: str = "",
    ) -> None:
        if resume is not None:
            self.grid, self.loop, self.control = pickle.loads(resume)
        else:
            self.grid = CorrelationGrid(settings)
            self.loop = TradingLoop(trading) if trading is not None else None
            self.control = ControlReader(control_path) if trading is not None and control_path else None
        self.keep_state = keep_state
        self.report = report

    def _controls(self) -> list:
        """New operator commands into the loop; unreadable ones as dead letters."""
        if self.control is None:
            return []
        commands, bad = self.control.read_numbered()
        for cmd in commands:
            self.loop.add_control(cmd.ts, cmd.command, cmd.reason)
        if not bad:
            return []
        now, path = wall_ms(), self.control.path
        return [("dead_letters", [DeadLetter(now, b.source(path), SCHEMA, b.problem, b.raw) for b in bad])]

    def on_batch(self, values: list) -> tuple[list, bool]:
        out = []
        grid = self.grid
        loop = self.loop
        for symbol, bars, closed_through, peers, trade in values:
            if loop is not None and trade is not None:
                loop.add(symbol, *trade)
            out.extend(grid.update(symbol, bars, closed_through, peers))
        items = [("correlations", out)] if out else []
        if loop is not None:
            items.extend(self._controls())
            loop.add_correlations(out)
            if grid.done is not None:
                items.extend(loop.advance(grid.done))
        return items, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list, bool]:
        out = self.grid.finish()
        items = [("correlations", out)] if out else []
        loop = self.loop
        if loop is not None:
            items.extend(self._controls())
            loop.add_correlations(out)
            items.extend(loop.advance(max(loop.bars, default=-1)))
            if self.report is not None:
                self.report.summary = loop.summary()
        return items, StatefulBatchLogic.RETAIN

    def snapshot(self):
        if not self.keep_state:
            return None
        return pickle.dumps((self.grid, self.loop, self.control), protocol=pickle.HIGHEST_PROTOCOL)


# -- the dataflow ---------------------------------------------------------------


def _mixed(symbol: str, item, i: int = 0, source: str = "") -> DeadLetter:
    """A dead letter for ticks and candles mixed in one symbol (a run takes one kind per symbol)."""
    if isinstance(item, Bar):
        source, payload = source or f"candles:{symbol}@{item.ts}", encode(item)
    else:
        source, payload = item.source(i), item.payload(i)
    return DeadLetter(wall_ms(), source, SCHEMA, f"{symbol} has both ticks and candles in this run", payload)


def build_flow(
    source,
    settings: Settings,
    sink,
    keep_state: bool = False,
    metrics=None,
    keyed_sink: bool = False,
    trading: TradingSettings | None = None,
    report: TradingReport | None = None,
) -> Dataflow:
    """The dataflow from ``source`` (Chunks) to ``sink`` ((table, payload) items).

    ``keep_state`` snapshots operator state (for recovery); ``metrics`` gets
    the flow's counts (see ``flows.metrics``); ``keyed_sink`` sends items as
    ``("out", item)`` to a partitioned sink; ``trading`` runs the trading
    loop after the correlation grid, leaving its summary in ``report``.
    """
    f = settings.features
    d = f.bar_interval * 1000
    bar_settings = BarSettings(d, f.allowed_lateness_ms, f.dedup_horizon_ms)
    feature_settings = FeatureSettings(d, f.window, f.qvar_entropy_coef)
    corr_settings = CorrelationSettings(d, f.corr_window, f.corr_every)

    flow = Dataflow("qbtc")
    chunks = op.input("read", flow, source)

    def dead_on_read(chunk: Chunk):
        if metrics is not None:
            metrics.read(chunk)
        return ("dead_letters", chunk.dead) if chunk.dead else None

    dead = op.filter_map("dead_on_read", chunks, dead_on_read)
    bounds = TimeBounds(f.max_ahead_ms, f.max_behind_ms, f.max_symbols, f.confirm_ticks)
    timed = op.stateful_batch(
        "event_time",
        op.key_on("one_clock", chunks, lambda _chunk: "clock"),
        lambda resume: EventTimeLogic(bounds, resume, keep_state, metrics),
    )
    timed = op.key_rm("unkey_clock", timed)
    timed = op.branch("route_time_dead", timed, lambda item: item[0] == "")
    dead_timed = op.map("time_dead_letters", timed.trues, lambda item: ("dead_letters", item[1]))
    per_symbol = timed.falses
    symbol_out = op.stateful_batch(
        "bars_features",
        per_symbol,
        lambda resume: SymbolLogic(
            bar_settings, feature_settings, resume, keep_state, metrics, trading is not None
        ),
    )
    symbol_out = op.key_rm("unkey_symbols", symbol_out)
    routed = op.branch("route_progress", symbol_out, lambda item: item[0] == "progress")
    progress = op.map("key_progress", routed.trues, lambda item: ("grid", item[1]))
    corr_out = op.stateful_batch(
        "correlations",
        progress,
        lambda resume: CorrelationLogic(
            corr_settings, resume, keep_state, trading, report, settings.trading.control_file
        ),
    )
    corr_out = op.key_rm("unkey_grid", corr_out)
    store_items = op.merge("store_items", dead, dead_timed, routed.falses, corr_out)
    if keyed_sink:
        store_items = op.map("key_out", store_items, lambda item: ("out", item))
    op.output("store", store_items, sink)
    return flow


@dataclass(frozen=True, slots=True)
class Execution:
    """How a flow runs: workers, epochs, recovery and the process cluster.

    Parameters
    ----------
    workers
        Worker threads in this process.
    epoch_s
        Epoch length in seconds: state snapshots (and sink flushes) happen
        at every epoch end.
    recovery_dir
        Directory of Bytewax's SQLite recovery partitions ("" = no recovery).
    process_id, addresses
        This process's index and every process's ``host:port`` when the flow
        runs as a cluster of processes (None / () = a single process).
    """

    workers: int = 1
    epoch_s: float = 10.0
    recovery_dir: str = ""
    process_id: int | None = None
    addresses: tuple[str, ...] = ()

    def recovery(self) -> RecoveryConfig | None:
        return RecoveryConfig(self.recovery_dir) if self.recovery_dir else None


@contextlib.contextmanager
def few_collections(gen0: int = 100_000):
    """Let the cyclic garbage collector run rarely while a flow runs.

    The flow allocates many short-lived objects (decoded messages) while its
    state holds large sets (the duplicate check's trade ids); with the default
    thresholds a full collection walks those sets every few batches and finds
    nothing to free (a third of a topic replay's time). Reference counting
    still frees everything acyclic at once.
    """
    before = gc.get_threshold()
    gc.set_threshold(gen0, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_flow(flow: Dataflow, workers: int = 1, execution: Execution | None = None) -> None:
    """Run in this process with ``workers`` worker threads (or as ``execution`` says)."""
    with few_collections():
        _run_flow(flow, execution or Execution(workers=workers))


def _run_flow(flow: Dataflow, ex: Execution) -> None:
    interval = timedelta(seconds=ex.epoch_s)
    recovery = ex.recovery()
    if ex.workers == 1 and ex.process_id is None:
        run_main(flow, epoch_interval=interval, recovery_config=recovery)
    elif ex.process_id is None:
        cli_main(flow, workers_per_process=ex.workers, epoch_interval=interval, recovery_config=recovery)
    else:
        cli_main(
            flow,
            workers_per_process=ex.workers,
            process_id=ex.process_id,
            addresses=list(ex.addresses),
            epoch_interval=interval,
            recovery_config=recovery,
        )


def replay(
    source_inputs: list[ChunkFactory],
    settings: Settings,
    dsn: str | None,
    progress: Progress,
    trade: bool = False,
    report: TradingReport | None = None,
) -> RowCounter:
    """Run the flow over inputs into the store at ``dsn`` (None: the null sink).

    ``trade`` runs the trading loop too; its summary lands in ``report``.
    """
    counter = RowCounter()
    sink = StoreSink(dsn, counter, settings.store.batch_rows)
    trading = trading_settings(settings) if trade else None
    flow = build_flow(ChunkSource(source_inputs, progress), settings, sink, trading=trading, report=report)
    run_flow(flow, settings.run.workers)
    progress.tick(force=True)
    return counter
