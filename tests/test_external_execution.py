"""The loop closed through Kafka: ``qbtc stream --trade --execution external`` + ``qbtc execute``.

The lockstep parity test: the same recorded topic through the in-process
backtest and through the loop and the paper service as two processes, step by
step, gives the same orders, fills and signals.
"""

from __future__ import annotations

import re
import signal
from functools import partial

import pytest
from kafka_helpers import (
    column,
    dump,
    kill_at,
    publish_sim,
    qbtc,
    read_topic,
    records_in,
    set_args,
    start_cli,
    unique,
)

from flows.paper_service import KILL_HOOK
from schemas.codec import decode
from schemas.records import Fill, Heartbeat, Order, OrderEvent, StepMark, VenueBar

pytestmark = pytest.mark.kafka

TABLES = ("orders", "fills", "signals", "risk_events")


def _backtest(stdout: str) -> str:
    return stdout[stdout.index("backtest ") :]


def _wait(proc, lines: list[str], timeout: float = 60.0) -> str:
    try:
        proc.wait(timeout=timeout)
    except Exception:
        proc.kill()
        raise
    return "".join(lines)


def _session(brokers: str, tmp_path, seconds: int, symbols: int) -> tuple[list[str], str, str, str]:
    """A recorded topic, its in-process backtest (store ``ref.chdb``) and a fresh prefix for the
    lockstep run: (the stream's common arguments, the backtest summary, the prefix, its service
    command)."""
    source = unique("in")
    publish_sim(brokers, source, tmp_path, seconds=seconds, rate=120, symbols=symbols)
    common = ["stream", "--trade", "--until-end", "--kafka", brokers, "--topic", f"{source}ticks", "--quiet"]
    reference = qbtc(*common, "--store", "chdb://ref.chdb", *set_args(unique("ref")), cwd=tmp_path)
    ext = unique("ext")
    service = ["execute", "--venue", "paper", "--lockstep", "--kafka", brokers, *set_args(ext)]
    return common, _backtest(reference.stdout), ext, service


def _same_as_in_process(tmp_path, why: str, extra: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """The lockstep run's store (``ext.chdb``) against the backtest's, table by table."""
    want = dump("chdb://ref.chdb", tmp_path, TABLES)
    got = dump("chdb://ext.chdb", tmp_path, (*TABLES, *extra))
    assert want["orders"]["rows"] and want["fills"]["rows"]
    for table in TABLES:
        assert got[table]["rows"] == want[table]["rows"], f"{table} differs {why}"
    return want, got


def test_lockstep_through_kafka_gives_the_in_process_backtests_orders_and_fills(kafka_bootstrap, tmp_path):
    common, reference, ext, service_args = _session(kafka_bootstrap, tmp_path, seconds=900, symbols=4)
    service, lines = start_cli([*service_args, "--idle-exit", "8"], tmp_path)
    try:
        looped = qbtc(
            *common, "--execution", "external", "--lockstep", "--store", "chdb://ext.chdb", *set_args(ext),
            cwd=tmp_path, check=False,
        )  # fmt: skip
        out = _wait(service, lines)
        assert looped.returncode == 0, f"{looped.stderr[-3000:]}\nservice:\n{out}"
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=30)
    assert service.returncode == 0, out
    assert "qbtc execute --venue paper:" in out
    want, got = _same_as_in_process(tmp_path, "between in-process and lockstep", ("order_events",))
    assert _backtest(looped.stdout) == reference

    # the loop's requests and the service's reports went through the topics
    requests = [decode(v) for _, v in read_topic(kafka_bootstrap, f"{ext}orders")]
    orders = [r for r in requests if isinstance(r, Order)]
    oid = want["orders"]["columns"].index("order_id")
    parent = want["orders"]["columns"].index("parent_id")
    # the loop's own orders (not the venue's TWAP children and protective exits)
    exits = ("stop:", "target:")
    loop_orders = [r[oid] for r in want["orders"]["rows"] if not r[parent] and not r[oid].startswith(exits)]
    assert sorted(o.order_id for o in orders) == sorted(loop_orders)
    assert any(isinstance(r, VenueBar) for r in requests)
    assert any(isinstance(r, StepMark) for r in requests)
    assert any(isinstance(r, Heartbeat) for r in requests)
    fills = [decode(v) for _, v in read_topic(kafka_bootstrap, f"{ext}fills")]
    assert len([f for f in fills if isinstance(f, Fill)]) == len(want["fills"]["rows"])
    events = [decode(v) for _, v in read_topic(kafka_bootstrap, f"{ext}order-events")]
    assert any(isinstance(e, OrderEvent) and e.kind == "filled" for e in events)
    assert got["order_events"]["rows"], "the loop stores the service's events about its orders"


def test_a_lockstep_service_killed_mid_step_and_restarted_publishes_nothing_twice(kafka_bootstrap, tmp_path):
    common, reference, ext, service_args = _session(kafka_bootstrap, tmp_path, seconds=300, symbols=3)
    first, first_lines = start_cli([*service_args, "--idle-exit", "60"], tmp_path, env={KILL_HOOK: "150"})
    loop, loop_lines = start_cli(
        [*common, "--execution", "external", "--lockstep", "--store", "chdb://ext.chdb", *set_args(ext)],
        tmp_path,
    )
    second = None
    try:
        assert first.wait(timeout=120) == 137, "".join(first_lines)
        second, second_lines = start_cli([*service_args, "--idle-exit", "8"], tmp_path)
        assert loop.wait(timeout=180) == 0, "".join(loop_lines)
        assert second.wait(timeout=60) == 0, "".join(second_lines)
    finally:
        for proc in (first, loop, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert "records already published" in "".join(second_lines)
    want, _got = _same_as_in_process(tmp_path, "after the service's restart")
    assert _backtest("".join(loop_lines)) == reference
    fills = [f for _, v in read_topic(kafka_bootstrap, f"{ext}fills") if isinstance(f := decode(v), Fill)]
    assert len(fills) == len(want["fills"]["rows"])  # none published twice
    events = [
        e
        for _, v in read_topic(kafka_bootstrap, f"{ext}order-events")
        if isinstance(e := decode(v), OrderEvent)
    ]
    keys = [(e.order_id, e.kind, e.filled_qty) for e in events]
    assert len(keys) == len(set(keys))


def test_a_lockstep_loop_killed_and_resumed_from_its_snapshot_keeps_the_in_process_results(
    kafka_bootstrap, tmp_path
):
    """SIGKILL ``stream --execution external --lockstep`` twice: the resumed loop repeats steps after its
    snapshot (the service ignores what it did already) and books each fill once."""
    common, reference, ext, service_args = _session(kafka_bootstrap, tmp_path, seconds=300, symbols=3)
    service, service_lines = start_cli([*service_args, "--idle-exit", "10"], tmp_path)
    args = [
        *common, "--execution", "external", "--lockstep", "--store", "chdb://ext.chdb",
        "--recovery-dir", "recovery", "--snapshot-interval", "0.3", *set_args(ext),
    ]  # fmt: skip
    try:
        for target in (300, 700):  # records on the fills topic: about 4 step marks per step
            loop, lines = start_cli(args, tmp_path)
            kill_at(loop, lines, partial(records_in, kafka_bootstrap, f"{ext}fills"), target)
        final = qbtc(*args, cwd=tmp_path)
        assert service.wait(timeout=90) == 0, "".join(service_lines)
    finally:
        if service.poll() is None:
            service.kill()
    resumed = re.search(r"stream: ([\d,]+) records", final.stdout)
    print(f"\nthe last run read {resumed.group(1) if resumed else '?'} ticks")
    _same_as_in_process(tmp_path, "after the loop's restarts")
    assert _backtest(final.stdout) == reference


def test_a_lockstep_loop_without_a_service_stops_with_one_line(kafka_bootstrap, tmp_path):
    source = unique("in")
    publish_sim(kafka_bootstrap, source, tmp_path, seconds=60, rate=50, symbols=2)
    proc = qbtc(
        "stream", "--trade", "--until-end", "--kafka", kafka_bootstrap, "--topic", f"{source}ticks",
        "--quiet", "--execution", "external", "--lockstep", "--null-sink",
        *set_args(unique("none"), "kafka.timeout_s=2"), cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "lockstep: no answer from the execution service" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_free_running_loop_whose_service_never_answers_its_end_says_what_it_left(kafka_bootstrap, tmp_path):
    source = unique("in")
    publish_sim(kafka_bootstrap, source, tmp_path, seconds=60, rate=50, symbols=2)
    proc = qbtc(
        "stream", "--trade", "--until-end", "--kafka", kafka_bootstrap, "--topic", f"{source}ticks",
        "--execution", "external", "--store", "chdb://alone.chdb", "--quiet",
        *set_args(unique("alone"), "kafka.timeout_s=3"), cwd=tmp_path,
    )  # fmt: skip
    line = next(x for x in proc.stdout.splitlines() if "not settled:" in x)
    assert "the execution service said nothing for 3 s at the end of the run" in line
    assert "no end mark back on" in line and "not in this run's portfolio" in line
    events = dump("chdb://alone.chdb", tmp_path, ("risk_events",))["risk_events"]
    unsettled = [m for a, m in zip(column(events, "action"), column(events, "message"), strict=True)
                 if a == "unsettled"]  # fmt: skip
    assert len(unsettled) == 1 and unsettled[0] in line
