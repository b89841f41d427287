"""The trading loop inside the dataflow: determinism, worker counts, operator commands."""

from __future__ import annotations

from bytewax.testing import TestingSink

from flows.config import load_settings
from flows.inputs import simulator_inputs
from flows.pipeline import TradingReport, build_flow, run_flow
from flows.trading_settings import trading_settings
from sources.chunk_source import ChunkSource, Progress
from sources.control_file import append_command
from tests.flow_harness import SHORT_TRADING

TRADING_TABLES = ("signals", "risk_events", "orders", "fills", "portfolio", "var_backtests", "dead_letters")
SHORT = SHORT_TRADING


def _run(overrides: list[str], workers: int = 1) -> tuple[dict[str, list], dict]:
    settings = load_settings(None, overrides)
    inputs, total = simulator_inputs(settings)
    out: list = []
    report = TradingReport()
    flow = build_flow(
        ChunkSource(inputs, Progress(total_bytes=total)),
        settings,
        TestingSink(out),
        trading=trading_settings(settings),
        report=report,
    )
    run_flow(flow, workers)
    tables: dict[str, list] = {t: [] for t in TRADING_TABLES}
    for table, payload in out:
        if table in tables:
            tables[table].extend(payload)
    return tables, report.summary


def test_two_replays_give_identical_signals_orders_and_fills(tmp_path):
    sets = [*SHORT, f"trading.control_file={tmp_path / 'none.jsonl'}"]
    first, summary = _run(sets)
    second, again = _run(sets)
    assert first["orders"] and first["fills"] and first["signals"]
    for table in TRADING_TABLES:
        assert first[table] == second[table], table
    assert summary == again
    assert summary["orders"] == len(first["orders"]) and summary["fills"] == len(first["fills"])


def test_two_workers_trade_like_one(tmp_path):
    sets = [*SHORT, f"trading.control_file={tmp_path / 'none.jsonl'}"]
    one, _ = _run(sets, workers=1)
    two, _ = _run(sets, workers=2)
    for table in TRADING_TABLES:
        assert one[table] == two[table], table


def test_operator_commands_are_applied_at_their_time_and_recorded(tmp_path):
    path = tmp_path / "control.jsonl"
    start = 1_700_000_000_000  # the simulator's first tick
    append_command(str(path), "pause", "maintenance window", start + 300_000)
    append_command(str(path), "resume", "maintenance over", start + 600_000)
    path.open("ab").write(b"not json\n")
    tables, summary = _run([*SHORT, f"trading.control_file={path}"])
    applied = [
        (e.ts - start, e.kind, e.action, e.message)
        for e in tables["risk_events"]
        if e.kind in ("control", "mode")
    ]
    assert applied == [
        (300_000, "control", "pause", "pause: maintenance window"),
        (300_000, "mode", "pause", "normal -> pause: operator pause: maintenance window"),
        (600_000, "control", "resume", "resume: maintenance over"),
        (600_000, "mode", "normal", "pause -> normal: no trigger holds"),
    ]
    assert summary["mode_changes"] == 2
    entries = [o.ts - start for o in tables["orders"] if o.reason == "entry"]
    assert entries, "the run trades, so the pause below is not vacuous"
    assert not [t for t in entries if 300_000 < t < 600_000], "no entries while paused"
    dead = [d for d in tables["dead_letters"] if d.source == f"{path}:3"]
    assert [(d.reason, d.payload) for d in dead] == [("schema", b"not json")]
