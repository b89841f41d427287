"""The dataflow's stateful steps: event time, bars and features, the correlation grid, the trading loop.

Each step wires pure operators of ``operators/`` and speaks the named
records of :mod:`flows.messages`. Their snapshots hold state only
(:mod:`flows.snapshots`): a resumed run applies today's settings, and stops
with a message when a changed setting would make the saved state meaningless.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from bytewax.operators import StatefulBatchLogic

from flows.external_venue import RemoteVenue, RemoteVenueConfig
from flows.messages import (
    BarBatch,
    GridOut,
    GridStep,
    Routed,
    StoreRows,
    SymbolInput,
    SymbolOut,
    SymbolProgress,
    TradeInput,
)
from flows.snapshots import ResumeError, dump_state, load_state, saved_values
from operators.features.bar_builder import BarBuilder, BarSettings
from operators.features.bar_rollup import BarRollup, RollupSettings
from operators.features.candle_bars import CandleBars
from operators.features.correlation_grid import CorrelationGrid, CorrelationSettings
from operators.features.event_time import PartitionMerge, SymbolCapacity, TimeBounds, TimeGuard
from operators.features.symbol_features import FeatureSettings, SymbolFeatures
from operators.trading_loop import TradingLoop, TradingSettings
from schemas.codec import encode
from schemas.correlation_rows import CorrelationRows
from schemas.records import CAPACITY, SCHEMA, Bar, DeadLetter, RiskEvent
from schemas.tick_columns import TickColumns
from sources.chunk_source import wall_ms
from sources.control_file import ControlReader, ControlScope
from sources.control_topic import ControlPosition, ControlTopicReader, ControlTopicSettings

BAR_INTERVAL = "features.bar_interval (in ms)"
FEATURE_KEYS = {
    "bars.interval_ms": BAR_INTERVAL,
    "bars.": "features.",
    "features.bar_interval_ms": BAR_INTERVAL,
    "grid.bar_interval_ms": BAR_INTERVAL,
    "grid.window": "features.corr_window",
    "grid.every": "features.corr_every",
    "features.var_backtest.": "var_backtest.",
}
"""Settings paths of the market steps, as config keys."""

FEATURE_FIXED = frozenset(
    {"bars.interval_ms", "features.bar_interval_ms", "features.window", "grid.bar_interval_ms", "grid.window"}
    | {"grid.every", "features.var_model"}
)
"""What a resume may not change: the grid, the windows the saved state holds and the VaR model."""

TRADING_KEYS = {
    "trading.bar_interval_ms": BAR_INTERVAL,
    "trading.risk.qvar.": "risk.qvar.",
    "trading.risk.": "risk.",
    "trading.broker.": "execution.",
    "trading.sizing.": "sizing.",
    "trading.portfolio.": "portfolio.",
    "trading.regime.": "regime.",
    "trading.weights.": "weights.",
    "trading.atr.": "atr.",
    "trading.levels.": "levels.",
    "trading.strategies.": "strategies.",
}
"""Settings paths of the trading step, as config keys."""


TRADING_FIXED = frozenset({"trading.bar_interval_ms"})


@dataclass(frozen=True, slots=True)
class Resolution:
    """A coarser resolution's settings: its bars (rolled up from the base's), features and grid.

    ``name`` (``"60s"``) names it in a snapshot's settings tree.
    """

    name: str
    rollup: RollupSettings
    features: FeatureSettings
    grid: CorrelationSettings


def _intervals(coarse: tuple[Resolution, ...]) -> tuple[int, ...]:
    return tuple(r.rollup.interval_ms for r in coarse)


def _same_resolutions(data: bytes, coarse: tuple[Resolution, ...], base_ms: int) -> None:
    """Refuse a resume whose coarser resolutions differ from those the saved state ``data`` holds
    (checked before the state is read: its settings must all exist today)."""
    saved = tuple(
        v
        for k, v in saved_values(data).items()
        if k.startswith("coarse.") and k.endswith(".rollup.interval_ms")
    )
    if saved != _intervals(coarse):
        seconds = [base_ms // 1000] + [ms // 1000 for ms in saved]
        now = [base_ms // 1000] + [ms // 1000 for ms in _intervals(coarse)]
        msg = (
            f"cannot resume: features.bar_intervals changed from {seconds} to {now} (the saved state "
            "holds the old resolutions); keep the old value or start with a fresh recovery directory"
        )
        raise ResumeError(msg)


def resume_checks(
    bounds: TimeBounds,
    bars: BarSettings,
    features: FeatureSettings,
    grid: CorrelationSettings,
    trading: TradingSettings | None,
    coarse: tuple[Resolution, ...] = (),
) -> dict[str, tuple[dict, dict, frozenset]]:
    """Each stateful step's settings tree, config keys and fixed paths, by step id."""
    checks = {
        "qbtc.event_time": ({"features": bounds}, FEATURE_KEYS, frozenset()),
        "qbtc.bars_features": (
            {"bars": bars, "features": features, "coarse": coarse},
            FEATURE_KEYS,
            FEATURE_FIXED,
        ),
        "qbtc.correlations": ({"grid": grid, "coarse": coarse}, FEATURE_KEYS, FEATURE_FIXED),
    }
    if trading is not None:
        checks["qbtc.trading"] = ({"trading": trading}, TRADING_KEYS, TRADING_FIXED)
    return checks


def dead_letters(cols: TickColumns, rejected: list[tuple[int, str, str]]) -> list[DeadLetter]:
    """Dead letters of a batch's rejected rows (ingest time: the record's Kafka time, else now)."""
    recv = cols.received
    now = wall_ms() if recv is None else None
    return [
        DeadLetter(now if recv is None else int(recv[i]), cols.source(i), r, m, cols.payload(i))
        for i, r, m in rejected
    ]


def _mixed(symbol: str, item, i: int = 0, source: str = "") -> DeadLetter:
    """A dead letter for ticks and candles mixed in one symbol (a run takes one kind per symbol)."""
    if isinstance(item, Bar):
        source, payload = source or f"candles:{symbol}@{item.ts}", encode(item)
    else:
        source, payload = item.source(i), item.payload(i)
    return DeadLetter(wall_ms(), source, SCHEMA, f"{symbol} has both ticks and candles in this run", payload)


class _Step(StatefulBatchLogic):
    """A step whose snapshot is its state without settings (:mod:`flows.snapshots`).

    The end of a bounded read (``--until-end``) releases held ticks, closes
    open bars, finishes the grid and lets the loop decide on them. With a
    recovery directory the input usually goes on later, so what is saved
    then is the state from *before* the end's first effect on the step (the
    first message marked ``final``, or its own end): a resumed run carries on
    as if it had never stopped, and the rows made at the end are made again,
    complete, replacing them in the store. A normal message that arrives
    after a final one (from another worker) goes into the saved state too.
    """

    keep_state = False
    _final: bytes | None = None

    def _tree(self) -> dict:
        raise NotImplementedError

    def _state(self):
        raise NotImplementedError

    def _keep_final(self) -> None:
        """Save the state as it is now, before the end of the input changes it (once)."""
        if self.keep_state and self._final is None:
            self._final = dump_state(self._state(), self._tree())

    def _also_saved(self, apply) -> None:
        """After the end began: ``apply(state)`` to the saved state as well (a late normal message)."""
        if self._final is None:
            return
        tree = self._tree()
        state = load_state(self._final, tree, report=lambda _lines: None)
        apply(state)
        self._final = dump_state(state, tree)

    def snapshot(self):
        # Bytewax snapshots every epoch; the pickled bytes are the immutable copy.
        if not self.keep_state:
            return None
        return self._final if self._final is not None else dump_state(self._state(), self._tree())


class EventTimeLogic(_Step):
    """Every input partition's ticks through the time bounds, the symbol cap and the partition merge.

    One instance sees every chunk (its key is constant), so the merge can
    wait for every partition and the cap counts every symbol once. Emits one
    :class:`~flows.messages.Routed` per symbol batch, and one with the dead letters.
    """

    def __init__(self, bounds: TimeBounds, resume, keep_state: bool = False, metrics=None) -> None:
        self.bounds = bounds
        self.keep_state = keep_state
        self.metrics = metrics
        if resume is not None:
            self.guards, self.merge, self.capacity = load_state(resume, self._tree(), FEATURE_KEYS)
        else:
            self.guards: dict[int, TimeGuard] = {}
            self.merge: PartitionMerge | None = None
            self.capacity = SymbolCapacity(bounds.max_symbols)

    def _tree(self) -> dict:
        return {"features": self.bounds}

    def on_batch(self, chunks: list) -> tuple[list, bool]:
        out: list[Routed] = []
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
        out: list[Routed],
        batches: list[TickColumns],
        bars: tuple,
        dead: list[DeadLetter],
        bar_sources: tuple[str, ...] = (),
        final: bool = False,
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
        out.extend(Routed(c.symbol, SymbolInput(c, peers, final)) for c in kept)
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
            out.extend(Routed(symbol, SymbolInput(batch, peers)) for symbol, batch in by_symbol.items())
        if dead:
            out.append(Routed("", dead=dead))
            if self.metrics is not None:
                self.metrics.dead(dead)

    def on_eof(self) -> tuple[list, bool]:
        self._keep_final()
        out: list[Routed] = []
        dead = [
            letter
            for guard in self.guards.values()
            for cols, row, reason, message in guard.flush()
            for letter in dead_letters(cols, [(row, reason, message)])
        ]
        self._emit(out, self.merge.flush() if self.merge is not None else [], (), dead, final=True)
        return out, StatefulBatchLogic.RETAIN

    def _state(self):
        return (self.guards, self.merge, self.capacity)


class SymbolLogic(_Step):
    """Bars and features of one symbol; reports its progress to the grid.

    ``keep_state`` snapshots the state at every epoch for recovery (Bytewax asks
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
        coarse: tuple[Resolution, ...] = (),
    ) -> None:
        # Bytewax passes no key to the builder: the symbol comes with the first batch.
        self.bar_settings = bar_settings
        self.feature_settings = feature_settings
        self.coarse = coarse
        self.keep_state = keep_state
        self.metrics = metrics
        self.trading = trading
        self.bars: BarBuilder | CandleBars | None = None
        self.features: SymbolFeatures | None = None
        self.rollups: list[tuple[BarRollup, SymbolFeatures]] = []
        if resume is not None:
            _same_resolutions(resume, coarse, bar_settings.interval_ms)
            state = load_state(resume, self._tree(), FEATURE_KEYS, fixed=FEATURE_FIXED)
            self.bars, self.features = state[:2]
            self.rollups = state[2] if len(state) > 2 else []  # saved before resolutions: none
            self.symbol = self.bars.symbol

    def _tree(self) -> dict:
        return {"bars": self.bar_settings, "features": self.feature_settings, "coarse": self.coarse}

    def _features(
        self, rows: list[StoreRows], features: SymbolFeatures, closed: list, base: bool
    ) -> tuple[list, list]:
        """Bars, their features and VaR backtests into ``rows``; the feature and backtest rows."""
        if not closed:
            return [], []
        rows.append(StoreRows("bars", closed))
        feats = [f for f in map(features.update, closed) if f is not None]
        if feats:
            rows.append(StoreRows("features", feats))
        backtests = features.take_backtests()
        if backtests:
            rows.append(StoreRows("var_backtests", backtests))
            if base and self.metrics is not None:
                self.metrics.var_backtests(backtests)
        return feats, backtests

    def _emit(
        self,
        out: list[SymbolOut],
        rows: list[StoreRows],
        closed: list,
        peers: tuple,
        final: bool = False,
        end: bool = False,
    ) -> None:
        feats, backtests = self._features(rows, self.features, closed, base=True)
        coarse = []
        informative: list = []  # the coarser bars and features, for the trading loop
        if self.rollups:
            through = self.bars.closed_through()
            for rollup, features in self.rollups:
                done = rollup.update(closed)
                done += rollup.flush() if end else rollup.advance(through)
                coarse_feats, _ = self._features(rows, features, done, base=False)
                d = rollup.settings.interval_ms
                coarse.append(([(b.ts // d, b.close) for b in done], rollup.closed_through()))
                if self.trading:
                    informative += done
                    informative += coarse_feats
        d = self.bar_settings.interval_ms
        progress = SymbolProgress(
            self.symbol,
            [(b.ts // d, b.close) for b in closed],
            self.bars.closed_through(),
            peers,
            # the trading loop downstream needs the bars and features themselves
            TradeInput(closed, feats, tuple(backtests), tuple(informative)) if self.trading else None,
            final,
            tuple(coarse),
        )
        out.append(SymbolOut(tuple(rows), progress))

    def on_batch(self, values: list[SymbolInput]) -> tuple[list, bool]:
        started = time.perf_counter()
        out: list[SymbolOut] = []
        if self.bars is None:
            first = values[0].batch
            if isinstance(first, BarBatch):  # finished bars from a candle input
                self.symbol = first.bars[0].symbol
                self.bars = CandleBars(self.bar_settings.interval_ms, self.symbol)
            else:
                self.symbol = first.symbol
                self.bars = BarBuilder(self.bar_settings, self.symbol)
            self.features = SymbolFeatures(self.feature_settings, self.symbol)
            self.rollups = [
                (BarRollup(r.rollup, self.symbol), SymbolFeatures(r.features, self.symbol))
                for r in self.coarse
            ]
        for item in values:
            cols, peers = item.batch, item.peers
            if item.final:  # ticks the end of the input released (one event-time step: in order)
                self._keep_final()
            if isinstance(cols, BarBatch):
                self._candles(out, cols, peers)
                continue
            if not isinstance(self.bars, BarBuilder):
                out.append(self._dead([_mixed(self.symbol, cols, i) for i in range(len(cols))]))
                continue
            up = self.bars.update(cols)
            rows: list[StoreRows] = []
            if len(up.accepted):
                rows.append(StoreRows("ticks", (up.accepted, up.seq)))
            if up.rejected:
                rows.append(self._dead(dead_letters(cols, up.rejected)).rows[0])
            if self.metrics is not None:
                self.metrics.accepted(len(up.accepted))
            self._emit(out, rows, up.closed, peers, item.final)
        if self.metrics is not None:
            self.metrics.batch_seconds(time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def _candles(self, out: list[SymbolOut], batch: BarBatch, peers: tuple) -> None:
        bars, sources = batch.bars, batch.sources
        if not isinstance(self.bars, CandleBars):
            out.append(
                self._dead([_mixed(self.symbol, bar, source=s) for bar, s in zip(bars, sources, strict=True)])
            )
            return
        up = self.bars.update(bars)
        rows: list[StoreRows] = []
        if up.rejected:
            now = wall_ms()
            dead = [DeadLetter(now, sources[i], r, m, encode(bars[i])) for i, r, m in up.rejected]
            rows.append(self._dead(dead).rows[0])
        self._emit(out, rows, up.accepted, peers)

    def _dead(self, dead: list[DeadLetter]) -> SymbolOut:
        if self.metrics is not None:
            self.metrics.dead(dead)
        return SymbolOut((StoreRows("dead_letters", dead),))

    def on_eof(self) -> tuple[list, bool]:
        self._keep_final()
        out: list[SymbolOut] = []
        if self.bars is None:  # no input reached this symbol's step
            return out, StatefulBatchLogic.RETAIN
        closed = self.bars.flush() if isinstance(self.bars, BarBuilder) else []
        self._emit(out, [], closed, (), final=True, end=True)
        last = self.features.flush_backtests()
        if last:  # the backtest's figures at the end of the input
            out.append(SymbolOut((StoreRows("var_backtests", last),)))
            if self.metrics is not None:
                self.metrics.var_backtests(last)
        coarse_last = [row for _rollup, features in self.rollups for row in features.flush_backtests()]
        if coarse_last:
            out.append(SymbolOut((StoreRows("var_backtests", coarse_last),)))
        return out, StatefulBatchLogic.RETAIN

    def _state(self):
        return (self.bars, self.features, self.rollups)


def _grid_args(p: SymbolProgress) -> tuple:
    return (p.symbol, p.closes, p.closed_through, p.peers)


class GridLogic(_Step):
    """The correlation grid over every symbol's progress (one instance, key ``grid``).

    Emits the correlation rows and, when the run trades, a
    :class:`~flows.messages.GridStep` per batch for the trading step.
    """

    def __init__(
        self,
        settings: CorrelationSettings,
        resume,
        keep_state: bool = False,
        trading: bool = False,
        coarse: tuple[Resolution, ...] = (),
    ) -> None:
        self.settings = settings
        self.coarse = coarse
        self.keep_state = keep_state
        self.trading = trading
        if resume is not None:
            _same_resolutions(resume, coarse, settings.bar_interval_ms)
            state = load_state(resume, self._tree(), FEATURE_KEYS, fixed=FEATURE_FIXED)
            # saved before resolutions: the grid alone
            self.grid, self.grids = state if isinstance(state, tuple) else (state, [])
        else:
            self.grid = CorrelationGrid(settings)
            self.grids = [CorrelationGrid(r.grid) for r in coarse]

    def _tree(self) -> dict:
        return {"grid": self.settings, "coarse": self.coarse}

    def _out(
        self, out: list, blocks: list, trades: tuple, done: int | None, final: bool, coarse: list = ()
    ) -> None:
        correlations = CorrelationRows(tuple(blocks))  # columns: no object per pair unless read so
        rows = StoreRows("correlations", CorrelationRows((*blocks, *coarse))) if blocks or coarse else None
        step = GridStep(trades, correlations, done, final) if self.trading else None  # the base's rows
        if rows is not None or step is not None:
            out.append(GridOut(rows, step))

    def _coarse(self, grids: list[CorrelationGrid], part: list[SymbolProgress]) -> list:
        """The coarser grids' blocks from a run of progress reports."""
        blocks: list = []
        for i, grid in enumerate(grids):
            for p in part:
                if i < len(p.coarse):
                    closes, through = p.coarse[i]
                    blocks.extend(grid.update_blocks(p.symbol, closes, through, p.peers))
        return blocks

    def on_batch(self, values: list[SymbolProgress]) -> tuple[list, bool]:
        out: list[GridOut] = []
        grid = self.grid
        # one output per run of normal or of final messages, so the trading step can tell them apart
        start = 0
        while start < len(values):
            final = values[start].final
            end = start
            while end < len(values) and values[end].final == final:
                end += 1
            part = values[start:end]
            if final:
                self._keep_final()
            elif self._final is not None:
                self._also_saved(lambda state, part=part: self._update(state, part))
            rows: list = []
            for p in part:
                rows.extend(grid.update_blocks(*_grid_args(p)))
            coarse = self._coarse(self.grids, part)
            trades = tuple((p.symbol, p.trade) for p in part if p.trade is not None)
            self._out(out, rows, trades, grid.done, final, coarse)
            start = end
        return out, StatefulBatchLogic.RETAIN

    def _update(self, state: tuple, part: list[SymbolProgress]) -> None:
        """A run of progress reports into a saved state's grids, their rows dropped."""
        grid, grids = state
        for p in part:
            grid.update_blocks(*_grid_args(p))
        self._coarse(grids, part)

    def on_eof(self) -> tuple[list, bool]:
        self._keep_final()
        out: list[GridOut] = []
        coarse = [block for grid in self.grids for block in grid.finish_blocks()]
        self._out(out, self.grid.finish_blocks(), (), None, True, coarse)
        return out, StatefulBatchLogic.RETAIN

    def _state(self):
        return (self.grid, self.grids)


def _feed(loop: TradingLoop, step: GridStep) -> None:
    """A grid step into a loop, its outputs dropped (the saved state's copy of a late normal step)."""
    for symbol, trade in step.trades:
        loop.add(symbol, trade.bars, trade.features, trade.backtests, trade.coarse)
    loop.add_correlations(step.correlations)
    if step.done is not None:
        loop.advance(step.done)


SETTLE_QUIET_S = 3.0
"""At the end of a bounded read, once the service has answered everything, how long an external loop
still waits without a report (:meth:`~flows.external_venue.RemoteVenue.settle`; it stops waiting
after ``kafka.timeout_s`` without any report and says what it left)."""


def _attach_venue(loop: TradingLoop, external: RemoteVenueConfig | None) -> None:
    """A resumed loop's venue must be the one asked for: an external one gets its connection back."""
    remote = isinstance(loop.broker, RemoteVenue)
    if remote != (external is not None):
        saved, now = ("external", "internal") if remote else ("internal", "external")
        msg = (
            f"the saved trading loop used --execution {saved}, this run asks for {now}: "
            "run with the same --execution, or start with an empty recovery directory"
        )
        raise ResumeError(msg)
    if external is not None:
        loop.broker.attach(external)


class TradingReport:
    """Where the trading step leaves the loop's summary at the end of the input, the operator
    commands it applied (their ``control`` risk events) and those of the control file it left
    alone (not this run's, see :class:`~sources.control_file.ControlScope`)."""

    def __init__(self) -> None:
        self.summary: dict | None = None
        self.controls: list = []
        self.controls_not_applied = 0
        self.control_file = ""


class TradingLogic(_Step):
    """The trading loop over the grid's final steps, with the operator commands of the control file
    and, with ``control_topic``, of the control topic.

    The loop processes a grid step once the grid has made it final, so its
    signals, orders and fills do not depend on how symbols interleave. A
    file command applies at the first bar close at or after its ``ts``; a
    topic command at the loop's next bar close (:mod:`sources.control_topic`).
    Both readers' positions are part of the saved state.
    """

    def __init__(
        self,
        settings: TradingSettings,
        resume,
        keep_state: bool = False,
        report: TradingReport | None = None,
        control_path: str = "",
        control_topic: ControlTopicSettings | None = None,
        external: RemoteVenueConfig | None = None,
        metrics=None,
        control_scope: ControlScope | None = None,
    ) -> None:
        self.settings = settings
        self.keep_state = keep_state
        self.report = report
        self.metrics = metrics
        self.scope = control_scope if control_scope is not None else ControlScope()
        if report is not None:
            report.control_file = control_path
        position: ControlPosition | None = None
        if resume is not None:
            state = load_state(resume, self._tree(), TRADING_KEYS, fixed=TRADING_FIXED)
            self.loop, self.control = state[:2]
            position = state[2] if len(state) > 2 else None  # saved before the control topic: none
            _attach_venue(self.loop, external)
        else:
            self.loop = TradingLoop(settings, venue=None if external is None else RemoteVenue(external))
            self.control = ControlReader(control_path) if control_path else None
        self.position = position if position is not None else ControlPosition()
        self.topic = ControlTopicReader(control_topic, self.position) if control_topic is not None else None

    def _tree(self) -> dict:
        return {"trading": self.settings}

    def _span_start(self) -> int | None:
        """The event time the run's data begins at (its first bar's open), None before any bar."""
        loop, d = self.loop, self.settings.bar_interval_ms
        if loop.stats.first_ts is not None:
            return loop.stats.first_ts - d
        return min(loop.bars) * d if loop.bars else None

    def _controls(self) -> list[StoreRows]:
        """New operator commands of this run into the loop (:class:`ControlScope`); the others are
        counted in the report; unreadable ones become dead letters."""
        dead: list[DeadLetter] = []
        start = self._span_start()
        if self.control is not None and start is not None:  # before the first bar the span is unknown
            commands, bad = self.control.read_numbered()
            now = self.loop.stats.last_ts if self.loop.stats.last_ts is not None else start
            for cmd in commands:
                due = self.scope.due(cmd, start, now)
                if due is None:
                    self._not_applied(1)
                else:
                    self.loop.add_control(due, cmd.command, cmd.reason)
            now, path = wall_ms(), self.control.path
            dead.extend(DeadLetter(now, b.source(path), SCHEMA, b.problem, b.raw) for b in bad)
        if self.topic is not None:
            got = self.topic.read()
            now = self.loop.stats.last_ts or 0  # the loop's event time: due at its next close
            for cmd in got.commands:
                self.loop.add_control(now, cmd.command, f"{cmd.reason} (by {cmd.source})")
            dead.extend(got.dead)
        return [StoreRows("dead_letters", dead)] if dead else []

    def _keep_final(self) -> None:
        # an external venue has seen the steps after the end: the saved state is the one after them
        if not isinstance(self.loop.broker, RemoteVenue):
            super()._keep_final()

    def _venue_events(self) -> list[StoreRows]:
        """The external venue's events about our orders, for the store."""
        venue = self.loop.broker
        events = venue.take_events() if isinstance(venue, RemoteVenue) else []
        return [StoreRows("order_events", events)] if events else []

    def _not_applied(self, n: int) -> None:
        if self.report is not None:
            self.report.controls_not_applied += n

    def _rows(self, pairs: list[tuple[str, list]]) -> list[StoreRows]:
        """The loop's (table, rows) for the store; the portfolio's ``var_backtests`` rows stamped with
        the loop's bar interval (it steps at the finest resolution)."""
        interval = self.settings.bar_interval_ms // 1000
        return [
            StoreRows(
                table, [replace(r, interval=interval) for r in rows] if table == "var_backtests" else rows
            )
            for table, rows in pairs
        ]

    def _observe(self, out: list[StoreRows]) -> list[StoreRows]:
        """The loop's rows into the metrics (risk gauges, the portfolio's ``var_backtests``), the
        applied operator commands into the report; ``out`` as it is."""
        for item in out:
            if self.metrics is not None:
                self.metrics.trading(item.table, item.rows)
            if item.table == "risk_events" and self.report is not None:
                self.report.controls.extend(e for e in item.rows if e.kind == "control")
        return out

    def on_batch(self, steps: list[GridStep]) -> tuple[list, bool]:
        loop = self.loop
        out: list[StoreRows] = []
        for step in steps:
            if step.final:
                self._keep_final()
            elif self._final is not None:
                self._also_saved(lambda state, step=step: _feed(state[0], step))
            for symbol, trade in step.trades:
                loop.add(symbol, trade.bars, trade.features, trade.backtests, trade.coarse)
            out.extend(self._controls())
            loop.add_correlations(step.correlations)
            if step.done is not None:
                out.extend(self._rows(loop.advance(step.done)))
                out.extend(self._venue_events())
        return self._observe(out), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list, bool]:
        self._keep_final()
        loop = self.loop
        out = self._controls()
        out.extend(self._rows(loop.advance(max(loop.bars, default=-1))))
        venue = loop.broker
        left = ""
        if isinstance(venue, RemoteVenue):
            if not venue.lockstep:  # free-running: the last orders' fills come after the last step
                late, left = venue.settle(SETTLE_QUIET_S)
                out.extend(self._rows(loop.settle(late)))
                if left:
                    ts = loop.stats.last_ts or 0
                    event = RiskEvent(ts, "execution", 2, "", 0.0, venue.timeout_s, "unsettled", left)
                    out.append(StoreRows("risk_events", [event]))
            out.extend(self._venue_events())
            venue.close()
        out.extend(self._rows(loop.flush_backtests()))
        self._not_applied(len(loop.controls))  # dated after the data's end: never due
        if self.report is not None:
            self.report.summary = loop.summary()
            if left:
                self.report.summary["unsettled"] = left
        return self._observe(out), StatefulBatchLogic.RETAIN

    def _state(self):
        return (self.loop, self.control, self.position)
