"""Issue 14 point 3: a run applies only the control file's commands that are its own (dated inside
its event-time span, or, in a live run, issued after it started) and says which it applied."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from bytewax.testing import TestingSink

from flows.config import load_settings
from flows.inputs import simulator_inputs
from flows.pipeline import TradingReport, build_flow, run_flow
from flows.trading_settings import trading_settings
from sources.chunk_source import ChunkSource, Progress
from sources.control_file import ControlCommand, ControlReader, ControlScope, append_command
from tests.flow_harness import SHORT_TRADING

ROOT = Path(__file__).resolve().parent.parent
START = 1_700_000_000_000  # the simulator's first tick
SHORT = SHORT_TRADING


def qbtc(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QBTC_")} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


# --- the rule -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("live_since", "cmd", "due"),
    [
        (None, ControlCommand(START + 5, "pause", "x"), START + 5),  # inside the span
        (None, ControlCommand(START, "pause", "x"), START),  # at its first bar
        (None, ControlCommand(START - 1, "pause", "x"), None),  # an earlier run's
        (None, ControlCommand(START - 1, "pause", "x", issued=START + 10**9), None),  # a replay is not live
        (9_000, ControlCommand(9_500, "pause", "x", issued=9_500), START + 60_000),  # live: next close
        (9_000, ControlCommand(START + 7, "pause", "x", issued=9_500), START + 7),  # live with --at
        (9_000, ControlCommand(8_000, "pause", "x", issued=8_000), None),  # issued before it started
        (9_000, ControlCommand(START + 7, "pause", "x", issued=8_000), START + 7),  # but dated inside
    ],
)
def test_which_commands_are_a_runs_own(live_since, cmd, due):
    assert ControlScope(live_since).due(cmd, span_start=START, now=START + 60_000) == due


def test_the_file_keeps_when_a_command_was_issued(tmp_path):
    path = str(tmp_path / "c.jsonl")
    append_command(path, "pause", "live", START, issued=START + 3)
    append_command(path, "resume", "old style", START + 1)
    with open(path, "ab") as fh:
        fh.write(orjson.dumps({"ts": 1, "command": "pause", "reason": "r", "issued": True}) + b"\n")
    commands, bad = ControlReader(path).read_numbered()
    assert [(c.ts, c.issued) for c in commands] == [(START, START + 3), (START + 1, None)]
    assert [b.line for b in bad] == [3] and "issued must be an integer" in bad[0].problem


# --- in the flow ----------------------------------------------------------------------------------------


def _run(control: Path, live_since: int | None = None) -> tuple[list, TradingReport]:
    settings = load_settings(None, [*SHORT, f"trading.control_file={control}"])
    inputs, total = simulator_inputs(settings)
    out: list = []
    report = TradingReport()
    flow = build_flow(
        ChunkSource(inputs, Progress(total_bytes=total)),
        settings,
        TestingSink(out),
        trading=trading_settings(settings),
        report=report,
        control_scope=ControlScope(live_since),
    )
    run_flow(flow, 1)
    events = [e for table, rows in out if table == "risk_events" for e in rows if e.kind == "control"]
    return events, report


def test_a_replay_applies_only_the_commands_dated_inside_its_span(tmp_path):
    path = tmp_path / "control.jsonl"
    append_command(str(path), "flatten", "an earlier run's", START - 86_400_000, issued=START - 86_400_000)
    append_command(str(path), "pause", "inside", START + 300_000)
    append_command(str(path), "resume", "after the data", START + 10 * 86_400_000)
    events, report = _run(path)
    assert [(e.ts - START, e.action, e.message) for e in events] == [(300_000, "pause", "pause: inside")]
    assert [e.message for e in report.controls] == ["pause: inside"]
    assert report.controls_not_applied == 2


def test_a_live_run_applies_the_commands_issued_after_it_started(tmp_path):
    path = tmp_path / "control.jsonl"
    wall = 1_800_000_000_000  # the wall clock, far after the simulated market's time
    append_command(str(path), "pause", "before it started", wall - 60_000, issued=wall - 60_000)
    append_command(str(path), "flatten", "while it runs", wall + 5_000, issued=wall + 5_000)
    events, report = _run(path, live_since=wall)
    assert [(e.action, e.message) for e in events] == [("flatten", "flatten: while it runs")]
    first_close = min(e.ts for e in events)
    assert START < first_close <= START + 60_000  # at the loop's next bar close, not at the wall time
    assert report.controls_not_applied == 1


# --- through the command line -------------------------------------------------------------------------


def test_replays_say_which_commands_they_applied_and_leave_other_runs_alone(tmp_path):
    sets = [x for s in SHORT for x in ("--set", s)] + ["--set", "trading.control_file=control.jsonl"]
    sim = qbtc("simulate", "day1.csv", *sets, cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    later = [*sets, "--set", "simulator.seed=8"]
    # a second day: the same market an hour later (the simulator starts at START)
    sim2 = qbtc("simulate", "day2.csv", *later, cwd=tmp_path)
    assert sim2.returncode == 0, sim2.stderr
    lines = (tmp_path / "day2.csv").read_text().splitlines()
    shifted = [lines[0]] + [f"{int(x.split(',', 1)[0]) + 3_600_000},{x.split(',', 1)[1]}" for x in lines[1:]]
    (tmp_path / "day2.csv").write_text("\n".join(shifted) + "\n")

    at = str(START + 300_000)
    ctl = qbtc("control", "pause", "--reason", "day one maintenance", "--at", at, *sets, cwd=tmp_path)
    assert ctl.returncode == 0, ctl.stderr
    first = qbtc("replay", "day1.csv", "--trade", "--null-sink", "--quiet", *sets, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "qbtc: control: applied at 2023-11-14 22:18:20 UTC: pause: day one maintenance\n" in first.stderr
    assert "not applied" not in first.stderr

    second = qbtc("replay", "day2.csv", "--trade", "--null-sink", "--quiet", *sets, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "applied" not in second.stderr.replace("not applied", "")
    assert (
        "qbtc: control: 1 command of control.jsonl not applied: not this run's "
        "(dated outside its span, or issued before it started)\n" in second.stderr
    )
    assert "mode changes: 0" in second.stdout  # the first day's pause did not reach the second


def test_qbtc_run_leaves_commands_given_before_it_alone(tmp_path):
    sets = ["--set", "simulator.duration_s=120", "--set", "simulator.symbols=2"]
    sets += ["--set", "trading.control_file=control.jsonl"]
    ctl = qbtc("control", "flatten", "--reason", "for yesterday's run", *sets, cwd=tmp_path)
    assert ctl.returncode == 0, ctl.stderr
    line = orjson.loads((tmp_path / "control.jsonl").read_bytes().splitlines()[0])
    assert line["issued"] == line["ts"]  # no --at: it applies now
    run = qbtc("run", "--store", "chdb://s", "--quiet", *sets, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "qbtc: control: 1 command of control.jsonl not applied" in run.stderr
    assert "applied at" not in run.stderr
