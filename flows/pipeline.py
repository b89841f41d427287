"""The embedded dataflow: read, validate, bars, features, correlations, store.

One Bytewax dataflow wires the pure operators of ``operators/``:

    read (files | simulator) ─┬─ dead letters (parse, schema, value) ──────────┐
                              └─ per-symbol batches ─ bars (late, duplicate) ─┼─ store
                                   ├─ features                                │
                                   └─ progress ─ correlation grid ────────────┘
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import bytewax.operators as op
from bytewax._bytewax import cli_main, run_main
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.recovery import RecoveryConfig

from flows.config import ConfigError, FeaturesConfig, Settings, TradingConfig
from flows.control import ControlReader
from operators.bar_builder import BarBuilder, BarSettings
from operators.candle_bars import CandleBars
from operators.correlation_grid import CorrelationGrid, CorrelationSettings
from operators.paper_broker import BrokerSettings
from operators.portfolio import PortfolioSettings
from operators.portfolio_risk import PortfolioRiskSettings
from operators.risk_settings import RiskSettings
from operators.sizing import SizingSettings
from operators.symbol_features import FeatureSettings, SymbolFeatures
from operators.trading_loop import TradingLoop, TradingSettings
from schemas.codec import encode
from schemas.records import SCHEMA, Bar, DeadLetter
from sinks.store_sink import RowCounter, StoreSink
from sources.tick_files import Chunk, TickFileReader
from sources.time_span import TimeSpan


def wall_ms() -> int:
    """Wall-clock epoch ms: the one place the flow reads the clock."""
    return time.time_ns() // 1_000_000


@dataclass
class Progress:
    """Shared progress of a run: records read, bytes consumed.

    ``skipped`` counts the records a replay's ``--from-ts``/``--to-ts`` left
    out (not in ``records``, not dead letters).
    """

    total_bytes: int = 0
    done_bytes: int = 0
    records: int = 0
    ticks_dead_on_read: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.perf_counter)
    report: Callable[[Progress], None] | None = None
    last_report: float = 0.0

    def tick(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.report is not None and (force or now - self.last_report >= 1.0):
            self.last_report = now
            self.report(self)


# -- source -------------------------------------------------------------------


ChunkFactory = Callable[[int], Iterator[Chunk]]
"""Makes an input's chunks, resuming at a chunk's ``resume_at``."""


class _ChunkPartition(StatefulSourcePartition):
    def __init__(self, inputs: list[ChunkFactory], progress: Progress, resume) -> None:
        self.inputs = inputs
        self.progress = progress
        self.index, self.skip = resume if resume is not None else (0, 0)
        self.offset_base = 0
        self.it: Iterator[Chunk] | None = None

    def next_batch(self) -> list[Chunk]:
        while self.index < len(self.inputs):
            if self.it is None:
                self.it = iter(self.inputs[self.index](self.skip))
            chunk = next(self.it, None)
            if chunk is None:
                self.offset_base = self.progress.done_bytes
                self.index += 1
                self.it = None
                self.skip = 0
                continue
            p = self.progress
            p.records += chunk.records
            p.done_bytes = self.offset_base + chunk.position
            p.ticks_dead_on_read += len(chunk.dead)
            p.skipped += chunk.skipped
            p.tick()
            self.skip = chunk.resume_at
            return [chunk]
        raise StopIteration

    def snapshot(self):
        return (self.index, self.skip)


class ChunkSource(FixedPartitionedSource):
    """All inputs, in order, as one partition (so replays are deterministic)."""

    def __init__(self, inputs: list[ChunkFactory], progress: Progress) -> None:
        self.inputs = inputs
        self.progress = progress

    def list_parts(self) -> list[str]:
        return ["inputs"]

    def build_part(self, step_id: str, for_part: str, resume_state) -> _ChunkPartition:
        return _ChunkPartition(self.inputs, self.progress, resume_state)


def is_candle_file(path: str) -> bool:
    """A candle (OHLCV) file rather than ticks: a JSON array, or a CSV header with open/high/low/close."""
    import gzip

    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4096)
    except (OSError, EOFError):
        return False  # the tick reader reports the problem
    first = head.lstrip()[:1]
    if first == b"[":
        return True
    header = {
        c.strip().strip('"').lower() for c in head.split(b"\n", 1)[0].decode("utf-8", "replace").split(",")
    }
    return {"open", "high", "low", "close"} <= header and "price" not in header


def _candle_chunks(reader) -> ChunkFactory:
    def chunks(skip: int) -> Iterator[Chunk]:
        for c in reader.chunks(skip):
            yield Chunk([], c.dead, c.records, c.position, c.resume_at, bars=tuple(c.bars), skipped=c.skipped)

    return chunks


def file_inputs(
    paths: list[str], settings: Settings, span: TimeSpan | None = None
) -> tuple[list[ChunkFactory], int]:
    """Chunk factories for tick or candle files, and their total size in bytes.

    Candle files (see ``sources.candle_files``) give finished bars on the
    ``features.bar_interval`` grid; tick files give ticks. Records whose time
    is outside ``span`` are skipped at the source (``Chunk.skipped``).
    """
    from sources.candle_files import CandleFileReader, CandleSettings

    span = span if span is not None else TimeSpan()
    factories: list[ChunkFactory] = []
    size = 0
    for p in paths:
        if is_candle_file(p):
            interval = settings.features.bar_interval * 1000
            candles = CandleSettings(interval, settings.input.exchange, span=span)
            reader = CandleFileReader(p, candles, wall_ms)
            _ = reader.source_interval_ms  # reads the file now: an unusable one fails before the flow starts
            factories.append(_candle_chunks(reader))
        else:
            block = settings.input.block_bytes
            reader = TickFileReader(p, settings.input.exchange, wall_ms, block, span)
            factories.append(reader.chunks)
        size += reader.size
    return factories, size


def simulator_settings(settings: Settings):
    """The simulator's settings from the ``[simulator]`` config section."""
    from sources.simulator import DEFAULT_SYMBOLS, SimulatorSettings

    sim = settings.simulator
    if sim.symbols > len(DEFAULT_SYMBOLS):
        msg = f"simulator.symbols must be <= {len(DEFAULT_SYMBOLS)}"
        raise ConfigError(msg)
    return SimulatorSettings(
        symbols=DEFAULT_SYMBOLS[: sim.symbols],
        seed=sim.seed,
        duration_s=sim.duration_s,
        trades_per_s=sim.trades_per_s,
    )


def simulator_inputs(settings: Settings) -> tuple[list[ChunkFactory], int]:
    """The simulator as one input, and its expected tick count (for progress)."""
    from sources.simulator import simulate

    sim = simulator_settings(settings)

    def chunks(skip: int) -> Iterator[Chunk]:
        done = 0
        for batches in simulate(sim):
            n = sum(len(b) for b in batches)
            done += n
            if done <= skip:
                continue
            yield Chunk(batches, [], n, done, done)

    return [chunks], int(sim.trades_per_s * sim.duration_s)


# -- per-symbol and correlation logic -----------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionSeen:
    """An input partition's report to the correlation grid (see ``CorrelationGrid.announce``)."""

    part: int
    parts: int
    known: tuple[str, ...]


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

    def _emit(self, out: list, closed: list, peers: tuple, part: tuple[int, int] | None) -> None:
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
                    part,
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
            if isinstance(first, list):  # finished bars from a candle input
                self.symbol = first[0].symbol
                self.bars = CandleBars(self.bar_settings.interval_ms, self.symbol)
            else:
                self.symbol = first.symbol
                self.bars = BarBuilder(self.bar_settings, self.symbol)
            self.features = SymbolFeatures(self.feature_settings, self.symbol)
        for cols, peers, part in values:
            if isinstance(cols, list):
                self._candles(out, cols, peers, part)
                continue
            if not isinstance(self.bars, BarBuilder):
                self._dead(out, [_mixed(self.symbol, cols, i) for i in range(len(cols))])
                continue
            up = self.bars.update(cols)
            if len(up.accepted):
                out.append(("ticks", (up.accepted, up.seq)))
            if up.rejected:
                now = wall_ms() if cols.received is None else None
                recv = cols.received
                dead = [
                    DeadLetter(now if recv is None else int(recv[i]), cols.source(i), r, m, cols.payload(i))
                    for i, r, m in up.rejected
                ]
                self._dead(out, dead)
            if self.metrics is not None:
                self.metrics.accepted(len(up.accepted))
            self._emit(out, up.closed, peers, part)
        if self.metrics is not None:
            self.metrics.batch_seconds(time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def _candles(self, out: list, bars: list, peers: tuple, part) -> None:
        if not isinstance(self.bars, CandleBars):
            self._dead(out, [_mixed(self.symbol, bar) for bar in bars])
            return
        up = self.bars.update(bars)
        if up.rejected:
            now = wall_ms()
            source = f"candles:{self.symbol}@"
            self._dead(
                out,
                [DeadLetter(now, f"{source}{bars[i].ts}", r, m, encode(bars[i])) for i, r, m in up.rejected],
            )
        self._emit(out, up.accepted, peers, part)

    def _dead(self, out: list, dead: list[DeadLetter]) -> None:
        out.append(("dead_letters", dead))
        if self.metrics is not None:
            self.metrics.dead(dead)

    def on_eof(self) -> tuple[list, bool]:
        out: list = []
        closed = self.bars.flush() if isinstance(self.bars, BarBuilder) else []
        self._emit(out, closed, (), None)
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
        commands, bad = self.control.read()
        for cmd in commands:
            self.loop.add_control(cmd.ts, cmd.command, cmd.reason)
        if not bad:
            return []
        now = wall_ms()
        return [("dead_letters", [DeadLetter(now, self.control.path, SCHEMA, m, line) for line, m in bad])]

    def on_batch(self, values: list) -> tuple[list, bool]:
        out = []
        grid = self.grid
        loop = self.loop
        for value in values:
            if isinstance(value, PartitionSeen):
                out.extend(grid.announce(value.part, value.parts, value.known))
            else:
                symbol, bars, closed_through, peers, part, trade = value
                if part is not None:
                    grid.expect_sources(part[1])
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


def _split(chunk: Chunk) -> list:
    peers = tuple(b.symbol for b in chunk.batches)
    out = [(b.symbol, (b, peers, chunk.part)) for b in chunk.batches]
    if chunk.bars:
        by_symbol: dict[str, list] = {}
        for bar in chunk.bars:
            by_symbol.setdefault(bar.symbol, []).append(bar)
        peers = tuple(by_symbol)
        out.extend((symbol, (bars, peers, chunk.part)) for symbol, bars in by_symbol.items())
    return out


def _mixed(symbol: str, item, i: int = 0) -> DeadLetter:
    """A dead letter for ticks and candles mixed in one symbol (a run takes one kind per symbol)."""
    if isinstance(item, Bar):
        source, payload = f"candles:{symbol}@{item.ts}", encode(item)
    else:
        source, payload = item.source(i), item.payload(i)
    return DeadLetter(wall_ms(), source, SCHEMA, f"{symbol} has both ticks and candles in this run", payload)


def _announce(chunk: Chunk):
    if chunk.part is None:
        return None
    return ("grid", PartitionSeen(chunk.part[0], chunk.part[1], chunk.known))


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
    per_symbol = op.flat_map("split_symbols", chunks, _split)
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
    seen = op.filter_map("announce_partitions", chunks, _announce)
    grid_in = op.merge("grid_in", progress, seen)
    corr_out = op.stateful_batch(
        "correlations",
        grid_in,
        lambda resume: CorrelationLogic(
            corr_settings, resume, keep_state, trading, report, settings.trading.control_file
        ),
    )
    corr_out = op.key_rm("unkey_grid", corr_out)
    store_items = op.merge("store_items", dead, routed.falses, corr_out)
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


def stderr_progress(p: Progress) -> None:
    """Print a one-line progress report to stderr."""
    secs = max(time.perf_counter() - p.started, 1e-9)
    pct = f"{min(100.0, 100.0 * p.done_bytes / p.total_bytes):5.1f}% " if p.total_bytes else ""
    end = "\r" if sys.stderr.isatty() else "\n"
    skipped = f", {p.skipped:,} outside --from-ts/--to-ts skipped" if p.skipped else ""
    sys.stderr.write(f"qbtc: {pct}{p.records:,} records, {p.records / secs:,.0f} rec/s{skipped}{end}")
    sys.stderr.flush()


def trading_settings(settings: Settings) -> TradingSettings:
    """The trading loop's settings from ``[trading]`` (the operators' defaults elsewhere)."""
    try:
        return _trading_settings(settings.trading, settings.features)
    except ValueError as exc:
        msg = f"[trading]: {exc}"
        raise ConfigError(msg) from None


def _trading_settings(t: TradingConfig, features: FeaturesConfig) -> TradingSettings:
    d = features.bar_interval * 1000
    risk = RiskSettings(
        enabled=t.risk_engine,
        risk=PortfolioRiskSettings(
            entropy_coef=features.qvar_entropy_coef,
            horizon_bars=max(1.0, t.qvar_horizon_s / features.bar_interval),
        ),
        max_leverage=t.max_leverage,
        max_position_share=t.max_position_share,
        max_order_notional=t.max_order_notional,
        ers_threshold=t.ers_threshold,
    )
    broker = BrokerSettings(
        bar_interval_ms=d,
        taker_fee_bps=t.taker_fee_bps,
        maker_fee_bps=t.maker_fee_bps,
        spread_bps=t.spread_bps,
        twap_threshold=t.twap_threshold,
    )
    sizing = SizingSettings(
        bar_interval_ms=d,
        target_daily_vol=t.target_daily_vol,
        max_fraction=t.max_position_share,
        entropy_limit=t.entropy_size_limit,
    )
    return TradingSettings(
        bar_interval_ms=d,
        portfolio=PortfolioSettings(initial_cash=t.initial_cash),
        risk=risk,
        broker=broker,
        sizing=sizing,
        allow_short=t.allow_short,
        min_trade_share=t.min_trade_share,
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
