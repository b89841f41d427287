"""Honest resumes on a real broker: today's settings apply to yesterday's state, or the run says why not."""

from __future__ import annotations

import pytest
from kafka_helpers import dump, qbtc, set_args, unique

pytestmark = pytest.mark.kafka

NO_FEES = ("execution.taker_fee_bps=0", "execution.maker_fee_bps=0")
"""A changed cost: the paper venue's fees (defaults 10 and 2 bps)."""
FEE_KEY = "execution.taker_fee_bps"


def _halves(tmp_path) -> None:
    """A simulated market, split in two tick files at its middle line (inside a bar: the
    first run's end closes a bar that the second half's first ticks belong to)."""
    qbtc(
        "simulate", "all.csv",
        "--set", "simulator.duration_s=900", "--set", "simulator.trades_per_s=200",
        "--set", "simulator.symbols=4",
        cwd=tmp_path,
    )  # fmt: skip
    header, *rows = (tmp_path / "all.csv").read_text().splitlines()
    half = len(rows) // 2
    (tmp_path / "first.csv").write_text("\n".join([header, *rows[:half]]) + "\n")
    (tmp_path / "second.csv").write_text("\n".join([header, *rows[half:]]) + "\n")


def _fills(tmp_path) -> list[tuple[str, float]]:
    """(time, fee) of every fill in the store (times as the store prints them: they sort)."""
    got = dump("chdb://live.chdb", tmp_path, ("fills",))["fills"]
    ts, fee = got["columns"].index("ts"), got["columns"].index("fee")
    return sorted((r[ts], r[fee]) for r in got["rows"])


def test_a_resumed_stream_applies_changed_trading_settings_and_refuses_a_changed_window(
    kafka_bootstrap, tmp_path
):
    """Run on the first half, then resume on the second half three ways.

    * ``features.window`` changed: the saved windows hold 60 returns, so the
      run stops at once with exit code 2, naming the key and both values;
    * the fees changed: the run resumes, says what changed, and every fill
      after the resume point pays the new fee (none) while the earlier fills
      kept theirs.
    """
    _halves(tmp_path)
    prefix = unique()
    publish = ["publish", "--kafka", kafka_bootstrap, "--quiet", "--set", f"kafka.topic_prefix={prefix}"]
    qbtc(*publish, "first.csv", cwd=tmp_path)
    control = f"trading.control_file={tmp_path / 'control.jsonl'}"
    stream = [
        "stream", "--trade", "--until-end", "--kafka", kafka_bootstrap, "--store", "chdb://live.chdb",
        "--quiet", "--recovery-dir", "rec", "--snapshot-interval", "0.5",
    ]  # fmt: skip
    qbtc(*stream, *set_args(prefix, control), cwd=tmp_path, timeout=240)
    before = _fills(tmp_path)
    assert before and all(fee > 0 for _, fee in before)
    resumed_at = before[-1][0]

    qbtc(*publish, "second.csv", cwd=tmp_path)
    refused = qbtc(*stream, *set_args(prefix, control, "features.window=30"), cwd=tmp_path, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "features.window changed from 60 to 30" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr  # one line, no traceback

    applied = qbtc(*stream, *set_args(prefix, control, *NO_FEES), cwd=tmp_path, timeout=240)
    assert f"{FEE_KEY} changed from 10.0 to 0.0, applied" in applied.stderr, applied.stderr
    after = [(ts, fee) for ts, fee in _fills(tmp_path) if ts > resumed_at]
    assert after, "the second half traded"
    assert all(fee == 0.0 for _, fee in after), after[:5]
    # the first run's fills keep their fees (the end of its input is decided again, on the new fees)
    early = before[: len(before) // 2]
    assert early and set(early) <= set(_fills(tmp_path))
