"""The embedded dataflow: read, validate, bars, features, correlations, store.

One Bytewax dataflow wires the pure operators of ``operators/``:

    read (files | simulator | topic partitions) ─┬─ dead letters (parse, schema, value) ────────┐
         └─ event time (time, capacity; partitions merged) ─ dead letters ─────────────────────┤
              └─ per-symbol batches ─ bars (late, duplicate) ──────────────────────────────────┼─ store
                   ├─ features                                                                 │
                   └─ progress ─ correlation grid ─────────────────────────────────────────────┤
                                      └─ grid steps ─ trading loop (when trading) ─────────────┘
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from datetime import timedelta

import bytewax.operators as op
from bytewax._bytewax import cli_main, run_main
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig

from flows.config import Settings
from flows.external_venue import RemoteVenueConfig
from flows.messages import StoreRows
from flows.snapshots import check_saved
from flows.steps import (
    EventTimeLogic,
    GridLogic,
    Resolution,
    SymbolLogic,
    TradingLogic,
    TradingReport,
    resume_checks,
)
from flows.trading_settings import trading_settings
from operators.features.bar_builder import BarSettings
from operators.features.bar_rollup import RollupSettings
from operators.features.correlation_grid import CorrelationSettings
from operators.features.event_time import TimeBounds
from operators.features.symbol_features import FeatureSettings
from operators.trading_loop import TradingSettings
from sinks.store_sink import RowCounter, StoreSink
from sources.chunk_source import ChunkFactory, ChunkSource, Progress
from sources.control_file import ControlScope
from sources.control_topic import ControlTopicSettings
from sources.tick_files import Chunk

# -- the dataflow ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarketSettings:
    """The market steps' operator settings, from ``[features]``."""

    bounds: TimeBounds
    bars: BarSettings
    features: FeatureSettings
    grid: CorrelationSettings
    coarse: tuple[Resolution, ...] = ()
    """The coarser resolutions (``features.bar_intervals``), finest first."""

    @classmethod
    def of(cls, settings: Settings) -> MarketSettings:
        f = settings.features
        d = f.bar_interval * 1000
        (_, window, corr_window, corr_every), *rest = f.resolutions()
        coarse = tuple(
            Resolution(
                f"{s}s",
                RollupSettings(s * 1000, d),
                FeatureSettings(s * 1000, w, f.qvar_entropy_coef, f.var_model, settings.var_backtest),
                CorrelationSettings(s * 1000, cw, ce),
            )
            for s, w, cw, ce in rest
        )
        return cls(
            TimeBounds(f.max_ahead_ms, f.max_behind_ms, f.max_symbols, f.confirm_ticks),
            BarSettings(d, f.allowed_lateness_ms, f.dedup_horizon_ms),
            FeatureSettings(d, window, f.qvar_entropy_coef, f.var_model, settings.var_backtest),
            CorrelationSettings(d, corr_window, corr_every),
            coarse,
        )


def check_resume(recovery_dir: str, settings: Settings, trading: TradingSettings | None) -> None:
    """Before a flow resumes from ``recovery_dir``: stop with a :class:`~flows.snapshots.ResumeError`
    if today's settings would make the saved state meaningless, else say what changed."""
    m = MarketSettings.of(settings)
    check_saved(recovery_dir, resume_checks(m.bounds, m.bars, m.features, m.grid, trading, m.coarse))


def build_flow(
    source,
    settings: Settings,
    sink,
    keep_state: bool = False,
    metrics=None,
    keyed_sink: bool = False,
    trading: TradingSettings | None = None,
    report: TradingReport | None = None,
    control_topic: ControlTopicSettings | None = None,
    external: RemoteVenueConfig | None = None,
    control_scope: ControlScope | None = None,
) -> Dataflow:
    """The dataflow from ``source`` (Chunks) to ``sink`` ((table, payload) items).

    The steps and the records between them are in :mod:`flows.steps` and
    :mod:`flows.messages`. ``keep_state`` snapshots operator state (for
    recovery); ``metrics`` gets the flow's counts (see ``flows.metrics``);
    ``keyed_sink`` sends items as ``("out", item)`` to a partitioned sink;
    ``trading`` runs the trading loop after the correlation grid (its own
    step), leaving its summary in ``report``, with the operator commands of
    ``trading.control_file`` and of ``control_topic`` (streams on Kafka);
    ``external`` gives it a :class:`~flows.external_venue.RemoteVenue` (orders
    to the execution service, fills from it) instead of the paper broker.
    ``control_scope`` says which commands of the control file are this run's
    (default: those dated inside its event-time span).
    """
    m = MarketSettings.of(settings)
    bounds, bar_settings, feature_settings, corr_settings = m.bounds, m.bars, m.features, m.grid

    flow = Dataflow("qbtc")
    chunks = op.input("read", flow, source)

    def dead_on_read(chunk: Chunk) -> StoreRows | None:
        if metrics is not None:
            metrics.read(chunk)
        return StoreRows("dead_letters", chunk.dead) if chunk.dead else None

    dead = op.filter_map("dead_on_read", chunks, dead_on_read)
    routed = op.stateful_batch(
        "event_time",
        op.key_on("one_clock", chunks, lambda _chunk: "clock"),
        lambda resume: EventTimeLogic(bounds, resume, keep_state, metrics),
    )
    routed = op.key_rm("unkey_clock", routed)
    dead_timed = op.filter_map(
        "time_dead_letters", routed, lambda r: StoreRows("dead_letters", r.dead) if r.dead else None
    )
    per_symbol = op.filter_map("symbol_inputs", routed, lambda r: (r.symbol, r.input) if r.input else None)
    symbol_out = op.stateful_batch(
        "bars_features",
        per_symbol,
        lambda resume: SymbolLogic(
            bar_settings, feature_settings, resume, keep_state, metrics, trading is not None, m.coarse
        ),
    )
    symbol_out = op.key_rm("unkey_symbols", symbol_out)
    symbol_rows = op.flat_map("symbol_rows", symbol_out, lambda o: o.rows)
    progress = op.filter_map(
        "symbol_progress", symbol_out, lambda o: ("grid", o.progress) if o.progress else None
    )
    grid_out = op.stateful_batch(
        "correlations",
        progress,
        lambda resume: GridLogic(corr_settings, resume, keep_state, trading is not None, m.coarse),
    )
    grid_out = op.key_rm("unkey_grid", grid_out)
    corr_rows = op.filter_map("correlation_rows", grid_out, lambda o: o.rows)
    store_items = [dead, dead_timed, symbol_rows, corr_rows]
    if trading is not None:
        steps = op.filter_map("grid_steps", grid_out, lambda o: ("loop", o.step) if o.step else None)
        trading_rows = op.stateful_batch(
            "trading",
            steps,
            lambda resume: TradingLogic(
                trading,
                resume,
                keep_state,
                report,
                settings.trading.control_file,
                control_topic,
                external,
                metrics,
                control_scope,
            ),
        )
        store_items.append(op.key_rm("unkey_loop", trading_rows))
    items = op.merge("store_items", *store_items)
    if keyed_sink:
        items = op.map("key_out", items, lambda item: ("out", item))
    op.output("store", items, sink)
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
    run_input: str = "",
    live_since: int | None = None,
    run_id: str = "",
) -> RowCounter:
    """Run the flow over inputs into the store at ``dsn`` (None: the null sink).

    ``trade`` runs the trading loop too; its summary lands in ``report``;
    ``run_input`` (the span read) goes into the run tag of its order ids.
    ``live_since`` (wall-clock ms) makes it a live run: the loop also applies
    the control file's commands issued from then on (``qbtc run``).
    ``run_id`` goes into the trading tables' rows (see :mod:`flows.runs`).
    The counter has the rows this run wrote, per table.
    """
    counter = RowCounter()
    sink = StoreSink(dsn, counter, settings.store.batch_rows, run_id)
    trading = trading_settings(settings, run_input) if trade else None
    flow = build_flow(
        ChunkSource(source_inputs, progress),
        settings,
        sink,
        trading=trading,
        report=report,
        control_scope=ControlScope(live_since),
    )
    run_flow(flow, settings.run.workers)
    progress.tick(force=True)
    return counter
