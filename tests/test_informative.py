"""Coarser resolutions reach the trading loop's strategies as informative timeframes, never early."""

from __future__ import annotations

import sys

from bytewax.testing import TestingSink

from flows.config import load_settings
from flows.inputs import simulator_inputs
from flows.pipeline import TradingReport, build_flow, run_flow
from flows.trading_settings import trading_settings
from operators.signals.strategy import BarStrategy
from sources.chunk_source import ChunkSource, Progress
from tests.flow_harness import SHORT_TRADING


class Probe(BarStrategy):
    """Flat; notes what ``informative`` handed it before each bar (class-level, for the test)."""

    name = "probe"
    settings_class = None
    CALLS: list = []

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self.coarse: dict = {}

    def informative(self, coarse) -> None:
        self.coarse = dict(coarse)

    def _step(self, bar, feature, active):
        Probe.CALLS.append((bar.symbol, bar.ts, self.coarse))
        return (0, 0.0)


def test_a_strategy_sees_each_coarser_bar_and_feature_from_the_step_that_closes_its_window(tmp_path):
    """15 minutes of a simulated market at 1 s with 60 s and 120 s resolutions: before each 1 s bar
    the probe holds, per coarser interval, the newest bar and feature row the flow made whose window
    has closed by then (bar.ts + interval <= the step's close), and exactly that one."""
    for name in ("tests.test_informative", __name__):
        if name in sys.modules:
            sys.modules[name].Probe.CALLS.clear()
    sets = [
        *SHORT_TRADING,
        "features.bar_intervals=60,120",
        "features.interval_windows=60,5,3",
        "strategies.use=tests.test_informative:Probe",
        f"trading.control_file={tmp_path / 'none.jsonl'}",
    ]
    settings = load_settings(None, sets)
    inputs, total = simulator_inputs(settings)
    out: list = []
    flow = build_flow(
        ChunkSource(inputs, Progress(total_bytes=total)),
        settings,
        TestingSink(out),
        trading=trading_settings(settings),
        report=TradingReport(),
    )
    run_flow(flow, 1)
    # the loader imported this file as tests.test_informative (pytest may know it by another name)
    calls = sys.modules["tests.test_informative"].Probe.CALLS
    made = {"bars": {}, "features": {}}
    for table, rows in out:
        if table in made:
            for r in rows:
                if r.interval in (60, 120):
                    made[table].setdefault((r.symbol, r.interval), []).append(r)
    assert made["bars"] and made["features"]
    seen = {60: 0, 120: 0}
    for symbol, ts, coarse in calls:
        close = ts + 1000  # the 1 s bar's close: what the loop has seen at this step
        for interval in (60, 120):
            for i, table in enumerate(("bars", "features")):
                due = [r for r in made[table].get((symbol, interval), []) if r.ts + interval * 1000 <= close]
                got = coarse.get(interval, (None, None))[i]
                assert got == (due[-1] if due else None), (symbol, ts, interval, table)
            seen[interval] += coarse.get(interval, (None, None))[1] is not None
    assert seen[60] > 0 and seen[120] > 0
