"""The risk gauges and counters of ``flows.metrics`` beside the pipeline's: set by a real trading flow,
compared with the rows it emitted; the kill switch, the event-time and progress stamps, store write errors."""

from __future__ import annotations

import math
import time
from collections import Counter as Tally
from types import SimpleNamespace

import numpy as np
import pytest
from bytewax.testing import TestingSink

from flows.config import load_settings
from flows.inputs import simulator_inputs
from flows.metrics import MODES, SLIPPAGE_BUCKETS_BPS, FlowMetrics
from flows.pipeline import TradingReport, build_flow, run_flow
from flows.trading_settings import trading_settings
from schemas.records import PortfolioState, RiskEvent
from sinks import failure
from sinks.store_sink import StoreWriter
from sources.chunk_source import ChunkSource, Progress
from tests.flow_harness import SHORT_TRADING


@pytest.fixture(scope="module")
def traded(tmp_path_factory) -> tuple[FlowMetrics, dict[str, list]]:
    """A short simulated market traded in a flow that reports to a :class:`FlowMetrics`."""
    control = tmp_path_factory.mktemp("control") / "none.jsonl"
    settings = load_settings(None, [*SHORT_TRADING, f"trading.control_file={control}"])
    inputs, total = simulator_inputs(settings)
    metrics = FlowMetrics()
    out: list = []
    flow = build_flow(
        ChunkSource(inputs, Progress(total_bytes=total)),
        settings,
        TestingSink(out),
        metrics=metrics,
        trading=trading_settings(settings),
        report=TradingReport(),
    )
    run_flow(flow, 1)
    tables: dict[str, list] = {}
    for table, payload in out:
        tables.setdefault(table, []).extend([payload] if table == "ticks" else payload)
    return metrics, tables


def test_portfolio_gauges_show_the_last_portfolio_row(traded):
    metrics, tables = traded
    last = tables["portfolio"][-1]
    assert len(tables["portfolio"]) > 10
    assert metrics.value("qbtc_equity") == pytest.approx(last.equity, rel=1e-12)
    assert metrics.value("qbtc_drawdown_ratio") == pytest.approx(last.drawdown, abs=1e-15)
    assert metrics.value("qbtc_leverage_ratio") == pytest.approx(last.leverage, abs=1e-15)
    assert metrics.value("qbtc_var95_equity_ratio") == pytest.approx(last.var95 / last.equity, rel=1e-12)
    assert metrics.value("qbtc_breaker_level") == pytest.approx(last.breaker_level)
    modes = {mode: metrics.value("qbtc_mode", mode=mode) for mode in MODES}
    assert modes == {mode: (1.0 if mode == last.mode else 0.0) for mode in MODES}


def test_order_fill_and_risk_event_counters_match_the_rows(traded):
    metrics, tables = traded
    orders, fills = tables["orders"], tables["fills"]
    assert orders and fills
    assert metrics.value("qbtc_orders_total") == pytest.approx(len(orders))
    assert metrics.value("qbtc_fills_total") == pytest.approx(len(fills))
    slip = np.array([f.slippage_bps for f in fills])
    assert metrics.value("qbtc_fill_slippage_bps_count") == pytest.approx(len(slip))
    # negative buckets: prometheus-client leaves out _sum (OpenMetrics: a sum that can fall is no counter)
    assert metrics.value("qbtc_fill_slippage_bps_sum") is None
    for le in SLIPPAGE_BUCKETS_BPS:
        got = metrics.value("qbtc_fill_slippage_bps_bucket", le=str(le))
        assert got == pytest.approx((slip <= le).sum()), le
    events = Tally((e.kind, str(e.level)) for e in tables.get("risk_events", []))
    assert events, "the short market makes risk events"
    for (kind, level), n in events.items():
        assert metrics.value("qbtc_risk_events_total", kind=kind, level=level) == pytest.approx(n)


def test_the_event_time_stamp_is_the_newest_tick_read(traded):
    metrics, tables = traded
    newest = max(int(cols.ts.max()) for cols, _seq in tables["ticks"])
    assert metrics.value("qbtc_last_event_timestamp_seconds") == pytest.approx(newest / 1000)
    assert metrics.value("qbtc_last_progress_timestamp_seconds") > time.time() - 600


def _state(equity: float, var95: float, mode: str, level: int = 0) -> PortfolioState:
    return PortfolioState(0, equity, equity, 0.0, 0.0, 0.0, 0.0, var95, 0.0, 0.0, 0.0, 0.0, 0.0, level, mode)


def test_the_kill_switch_engages_on_its_event_and_a_resume_clears_it():
    m = FlowMetrics()
    assert m.value("qbtc_kill_switch") == 0.0
    m.trading("risk_events", [RiskEvent(1, "kill_switch", 3, "", 0.3, 0.2, "flatten", "drawdown")])
    assert m.value("qbtc_kill_switch") == 1.0
    m.trading("risk_events", [RiskEvent(2, "control", 0, "", 0.0, 0.0, "pause", "pause: x")])
    assert m.value("qbtc_kill_switch") == 1.0
    m.trading("risk_events", [RiskEvent(3, "control", 0, "", 0.0, 0.0, "resume", "resume: ok")])
    assert m.value("qbtc_kill_switch") == 0.0
    assert m.value("qbtc_risk_events_total", kind="control", level="0") == 2.0


def test_mode_is_one_hot_and_var_share_is_nan_without_equity():
    m = FlowMetrics()
    m.trading("portfolio", [_state(1000.0, 10.0, "emergency", 3)])
    assert m.value("qbtc_mode", mode="emergency") == 1.0 and m.value("qbtc_breaker_level") == 3.0
    m.trading("portfolio", [_state(0.0, 10.0, "normal")])
    assert sum(m.value("qbtc_mode", mode=mode) for mode in MODES) == 1.0
    assert m.value("qbtc_mode", mode="normal") == 1.0
    assert math.isnan(m.value("qbtc_var95_equity_ratio"))  # not 0: "no risk" would be a lie


def test_progress_stamp_starts_at_start_and_event_time_never_goes_back():
    m = FlowMetrics(now=100.0)
    assert m.value("qbtc_last_progress_timestamp_seconds") == 100.0
    assert m.value("qbtc_last_event_timestamp_seconds") == 0.0

    def chunk(ts: list[int], records: int) -> SimpleNamespace:
        batch = type("B", (), {"ts": np.array(ts), "__len__": lambda self: len(self.ts)})()
        return SimpleNamespace(records=records, dead=[], batches=[batch], bars=())

    before = time.time()
    m.read(chunk([5_000, 9_000], 2))
    assert m.value("qbtc_last_progress_timestamp_seconds") >= before
    assert m.value("qbtc_last_event_timestamp_seconds") == 9.0
    m.read(chunk([7_000], 1))  # a late tick: the newest stays
    assert m.value("qbtc_last_event_timestamp_seconds") == 9.0
    assert m.value("qbtc_ticks_in_total") == 3.0


class _RefusingStore:
    def insert(self, table, cols) -> None:
        msg = "disk full"
        raise OSError(msg)


def test_a_refused_store_write_is_counted_before_the_failure_is_reported():
    m = FlowMetrics()
    seen: list[float | None] = []
    previous = failure.set_handler(
        lambda exc: seen.append(m.value("qbtc_store_write_errors_total", table="bars"))
    )
    try:
        writer = StoreWriter(_RefusingStore(), m, batch_rows=10)
        writer._columns = lambda table, parts: {"n": len(parts)}  # the store refuses any columns
        writer.add("bars", [object()])
        with pytest.raises(OSError, match="disk full"):
            writer.flush()
        writer.pool.shutdown()
    finally:
        failure.set_handler(previous)
    assert seen == [1.0]
    assert m.write_errors == {"bars": 1}
    assert m.value("qbtc_rows_out_total", table="bars") is None  # nothing written


def test_var_share_is_nan_before_the_first_step():
    assert math.isnan(FlowMetrics().value("qbtc_var95_equity_ratio"))
