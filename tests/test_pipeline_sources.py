"""Candle bars and control lines rejected inside the flow have sources of their own."""

from __future__ import annotations

from flow_harness import run_files
from test_trading_flow import SHORT, _run

D = 60_000
T0 = 1_620_000_000_000 // D * D


def test_a_candle_file_given_three_times_keeps_every_rejected_bar(tmp_path):
    path = tmp_path / "BTC_USDT-1m.json"
    path.write_text("[" + ", ".join(f"[{T0 + k * D}, 1, 2, 1, 2, 5]" for k in range(5)) + "]")
    tables, records = run_files([str(path)] * 3, ["features.bar_interval=60", "features.window=3"])
    dead = tables["dead_letters"]
    assert len(tables["bars"]) == 5 and len(dead) == 10 == records - 5
    assert sorted(dead.source) == sorted(f"{path}#{i}[{k}]" for i in (2, 3) for k in range(5))
    assert dead.source.is_unique


def test_unreadable_control_lines_have_their_line_numbers(tmp_path):
    path = tmp_path / "control.jsonl"
    path.write_bytes(b"not json\n{}\n")
    tables, _ = _run([*SHORT, f"trading.control_file={path}"])
    assert sorted(d.source for d in tables["dead_letters"]) == [f"{path}:1", f"{path}:2"]
