"""Crash recovery of the trading loop on a real Kafka broker: ``qbtc stream --trade`` killed with SIGKILL."""

from __future__ import annotations

import re
from functools import partial

import pytest
from kafka_helpers import (
    assert_topics_match,
    dump,
    kill_at,
    latest_records,
    publish_sim,
    qbtc,
    read_topic,
    set_args,
    start_cli,
    topic_records,
    unique,
)

from schemas.codec import decode
from sources.control_file import append_command

pytestmark = [pytest.mark.kafka, pytest.mark.heavy]

TRADING_KEYS = {
    "signals": lambda r: (r.symbol, r.strategy, r.ts),
    "risk-events": lambda r: (r.ts, r.kind, r.symbol, r.action, r.message),
    "orders": lambda r: r.order_id,
    "fills": lambda r: r.order_id,
    "portfolio": lambda r: r.ts,
}
"""Natural key of each trading topic's records (the store tables' sorting keys)."""

TRADING_TABLES = ("signals", "risk_events", "orders", "fills", "portfolio")
MARKET_TABLES = ("bars", "features", "correlations", "dead_letters", "var_backtests")
START_MS = 1_700_000_000_000
"""The simulator's first tick."""
COMMANDS = (("pause", 420_000), ("resume", 600_000))
"""Operator commands (action, ms after the start): the second kill falls while the loop is paused."""
KILL_AT = (0.15, 0.4, 0.65, 0.85)
"""Kill points: shares of the stream's event time the recovered run's bars have reached."""


def _order_ids(brokers: str, topic: str) -> set[str]:
    return {decode(v).order_id for _, v in read_topic(brokers, topic)}


def _bars_through(brokers: str, topic: str) -> int:
    """Event time the flow's output has reached: the oldest of each bars partition's newest bar.

    Unlike a record count this ignores the bars a restart writes again, and
    the slowest partition is the one that gates the trading loop's steps.
    """
    return min((decode(v).ts for v in latest_records(brokers, topic)), default=0)


def _backtest(stdout: str) -> str:
    """The backtest summary the run printed at the end of its input (from the loop's restored state)."""
    start = stdout.index("backtest ")
    return stdout[start:]


def test_sigkill_of_a_trading_stream_loses_and_duplicates_no_signal_order_or_fill(kafka_bootstrap, tmp_path):
    """Kill -9 ``qbtc stream --trade`` at four points while it trades, restart it each time.

    The signals, risk events, orders and fills in the store and on their
    topics must equal an uninterrupted run's: the trading loop's state
    (portfolio, working orders, risk engine, order-id counter) resumes with
    the committed epoch, so a replayed epoch makes the same records again.
    """
    source = unique("in")
    ticks = publish_sim(kafka_bootstrap, source, tmp_path, seconds=1200, rate=250, symbols=6)
    for action, after_ms in COMMANDS:
        append_command(str(tmp_path / "control.jsonl"), action, f"test {action}", START_MS + after_ms)
    control = f"trading.control_file={tmp_path / 'control.jsonl'}"
    common = ["stream", "--trade", "--until-end", "--kafka", kafka_bootstrap, "--topic", f"{source}ticks"]
    ref, rec = unique("ref"), unique("rec")
    reference = qbtc(*common, "--store", "chdb://ref.chdb", "--quiet", *set_args(ref, control), cwd=tmp_path)
    want_orders = _order_ids(kafka_bootstrap, f"{ref}orders")
    bar_ts = [decode(v).ts for _, v in read_topic(kafka_bootstrap, f"{ref}bars")]
    first, last = min(bar_ts), max(bar_ts)

    args = [
        *common, "--store", "chdb://rec.chdb", "--recovery-dir", "recovery",
        "--snapshot-interval", "0.3", *set_args(rec, control),
    ]  # fmt: skip
    kills: list[int] = []
    orders_before: list[int] = []
    for share in KILL_AT:
        proc, lines = start_cli(args, tmp_path)
        progress = partial(_bars_through, kafka_bootstrap, f"{rec}bars")
        kills.append(kill_at(proc, lines, progress, first + int(share * (last - first))))
        orders_before.append(len(_order_ids(kafka_bootstrap, f"{rec}orders") & want_orders))
    final = qbtc(*args, "--quiet", cwd=tmp_path)
    resumed = int(re.search(r"stream: ([\d,]+) records", final.stdout).group(1).replace(",", ""))
    shares = [round((k - first) / (last - first), 3) for k in kills]
    print(
        f"\nreference: {ticks} ticks, {len(bar_ts)} bars, {len(want_orders)} orders; killed at {shares} "
        f"of the event time with {orders_before} of its orders out; the last run read {resumed} ticks"
    )
    # the last run resumed after the last kill's committed epoch rather than from the start
    assert 0 < resumed < ticks // 2
    # every kill fell while the loop traded: the reference's orders went out before it and after it
    assert all(0 < n < len(want_orders) for n in orders_before), orders_before

    want = dump("chdb://ref.chdb", tmp_path, (*MARKET_TABLES, *TRADING_TABLES))
    got = dump("chdb://rec.chdb", tmp_path, (*MARKET_TABLES, *TRADING_TABLES))
    assert want["orders"]["rows"] and want["fills"]["rows"] and want["signals"]["rows"]
    events = want["risk_events"]
    kind, action = events["columns"].index("kind"), events["columns"].index("action")
    applied = [r[action] for r in events["rows"] if r[kind] == "control"]
    assert applied == [a for a, _ in COMMANDS], applied
    assert len(want["orders"]["rows"]) == len(want_orders)
    for table in want:
        assert got[table]["rows"] == want[table]["rows"], f"{table} differs after kills at {shares}"
    # the rows as written (unless a background merge collapsed them already): no key was ever
    # written with other values, which FINAL would hide by keeping one of them
    written_rows = dump("chdb://rec.chdb", tmp_path, TRADING_TABLES, final=False)
    for table in TRADING_TABLES:
        assert written_rows[table]["rows"] == want[table]["rows"], f"{table}: a key was written twice"
    assert _backtest(final.stdout) == _backtest(reference.stdout)
    # one run through the kills and restarts: every trading row carries its id, its runs row is finished
    ids = dump("chdb://rec.chdb", tmp_path, ("runs", *TRADING_TABLES), run_ids=True)
    (run_row,) = ids["runs"]["rows"]
    run_id = run_row[ids["runs"]["columns"].index("run_id")]
    assert run_row[ids["runs"]["columns"].index("status")] == "finished"
    assert f"run: {run_id}" in final.stdout.splitlines()
    for table in TRADING_TABLES:
        at = ids[table]["columns"].index("run_id")
        assert {r[at] for r in ids[table]["rows"]} == {run_id}, table

    # the topics are at-least-once: repeats must be identical copies (see assert_topics_match)
    ref_topics = topic_records(kafka_bootstrap, ref, list(TRADING_KEYS))
    rec_topics = topic_records(kafka_bootstrap, rec, list(TRADING_KEYS))
    assert_topics_match(ref_topics, rec_topics, TRADING_KEYS)
    print(
        "records repeated on the topics:", {t: len(rec_topics[t]) - len(ref_topics[t]) for t in TRADING_KEYS}
    )
    assert {r.order_id for r in rec_topics["orders"]} == want_orders
