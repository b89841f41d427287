"""Operator commands on the ``control`` topic (``qbtc control --kafka``), on a real broker.

A command reaches a running ``qbtc stream --trade`` (a ``control`` risk event
in its store) and a running ``qbtc execute`` (orders rejected while paused,
sent again after ``resume``); a bad message becomes a dead letter; neither a
restart nor a later run applies an old command again.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer

from flows.config import load_settings
from schemas.codec import decode, encode
from schemas.records import (
    MARKET,
    REJECTED,
    WOULD_SEND,
    Bar,
    DeadLetter,
    OperatorCommand,
    Order,
    OrderEvent,
    RiskEvent,
)
from sources.control_topic import (
    CONTROL_KEY,
    ControlPosition,
    ControlTopicReader,
    ControlTopicSettings,
)
from tests.kafka_helpers import dump, qbtc, read_topic, set_args, start_cli, unique, walk_ticks

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000
"""The first tick: event time far behind the wall clock, as in a replayed topic."""
SYMBOLS = ("BTC/USDT", "ETH/USDT")


def _ensure(brokers: str, prefix: str) -> None:
    from flows.kafka_flow import ensure

    ensure(load_settings(None, [f"kafka.brokers={brokers}", f"kafka.topic_prefix={prefix}"], env={}))


def _produce(brokers: str, topic: str, values: list[bytes], keys: list[bytes]) -> list[str]:
    """Produce in order; returns where each message went, ``topic[partition]@offset``."""
    p = Producer({"bootstrap.servers": brokers})
    where: list[str] = []

    def delivered(err, msg) -> None:
        assert err is None, err
        where.append(f"{msg.topic()}[{msg.partition()}]@{msg.offset()}")

    for v, k in zip(values, keys, strict=True):
        p.produce(topic, v, k, on_delivery=delivered)
    assert p.flush(30) == 0
    return where


def _ticks(brokers: str, topic: str, start_s: int, seconds: int, seed: int) -> None:
    """Ten ticks a second per symbol over [start_s, start_s + seconds) after T0 (random walks)."""
    _produce(brokers, topic, *walk_ticks(SYMBOLS, T0, start_s, seconds, seed))


def _records(brokers: str, topic: str, cls: type) -> list:
    """Every record of ``topic`` (asks again while a new topic's leaders settle)."""
    for attempt in range(20):
        try:
            return [decode(v, cls) for _, v in read_topic(brokers, topic)]
        except (KafkaException, AssertionError):
            if attempt == 19:
                raise
            time.sleep(0.25)
    return []


def _wait(what: str, check, proc: subprocess.Popen | None = None, lines=(), timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        alive = proc is None or proc.poll() is None
        assert alive and time.monotonic() < deadline, f"{what}: not seen\n{''.join(lines)}"
        time.sleep(0.2)
    return got


def _control(brokers: str, prefix: str, action: str, reason: str) -> str:
    out = qbtc(
        "control", action, "--reason", reason, "--kafka", brokers, "--set", f"kafka.topic_prefix={prefix}",
        cwd=ROOT,
    )  # fmt: skip
    return out.stdout


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- without a broker ----------------------------------------------------------------------


def test_an_unreachable_broker_is_one_line_and_exit_1_within_the_timeout(tmp_path):
    started = time.monotonic()
    out = qbtc(
        "control", "pause", "--reason", "venue down", "--kafka", "127.0.0.1:1", "--set", "kafka.timeout_s=1",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "qbtc control: failed: cannot reach the Kafka cluster at 127.0.0.1:1 in 1 s (kafka.timeout_s)"
    ]
    assert time.monotonic() - started < 15
    assert not (tmp_path / "var").exists()  # nothing went to the control file


def test_at_is_for_the_file_only(tmp_path):
    out = qbtc("control", "pause", "--reason", "x", "--kafka", "--at", "5", cwd=tmp_path, check=False)
    assert out.returncode == 2
    assert "--at is for the control file" in out.stderr


def test_a_reader_is_not_pickled_its_position_is():
    reader = ControlTopicReader(
        ControlTopicSettings({"sasl.password": "s3"}, "c", 0), ControlPosition({0: 4})
    )
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(reader)
    position = pickle.loads(pickle.dumps(reader.position))
    assert position.offsets == {0: 4} and b"s3" not in pickle.dumps(reader.position)


# -- on a broker -------------------------------------------------------------------------------


@pytest.mark.kafka
def test_the_reader_starts_after_its_start_keeps_order_and_resumes_at_its_position(kafka_bootstrap):
    prefix = unique("ctl")
    _ensure(kafka_bootstrap, prefix)
    topic = f"{prefix}control"
    old = OperatorCommand(1, "pause", "old", "a@b")
    _produce(kafka_bootstrap, topic, [encode(old)], [CONTROL_KEY])
    time.sleep(0.05)
    since = int(time.time() * 1000)
    conf = {"bootstrap.servers": kafka_bootstrap, "group.id": "qbtc"}
    settings = ControlTopicSettings(conf, topic, since, timeout_s=10)
    reader = ControlTopicReader(settings)
    assert reader.read().commands == []  # connects: the old command is before the start
    cmds = [OperatorCommand(since + i, a, f"r{i}", "ops@desk") for i, a in enumerate(("pause", "resume"))]
    where = _produce(
        kafka_bootstrap, topic, [encode(cmds[0]), b"{not json", encode(cmds[1])], [CONTROL_KEY] * 3
    )
    got, dead = [], []
    deadline = time.monotonic() + 20
    while len(got) + len(dead) < 3 and time.monotonic() < deadline:
        read = reader.read()
        got += read.commands
        dead += read.dead
        time.sleep(0.05)
    assert got == cmds
    assert [(d.source, d.reason, d.payload) for d in dead] == [(where[1], "parse", b"{not json")]
    assert where[1].endswith("@2")  # one partition for every command: the old one was @0
    saved = pickle.loads(pickle.dumps(reader.position))
    reader.close()
    assert max(saved.offsets.values()) == 4

    later = OperatorCommand(since + 9, "flatten", "later", "ops@desk")
    _produce(kafka_bootstrap, topic, [encode(later)], [CONTROL_KEY])
    # a restored reader (its start long past) resumes at the saved offset: only the new command
    again = ControlTopicReader(ControlTopicSettings(conf, topic, since + 10**9, timeout_s=10), saved)
    deadline = time.monotonic() + 20
    got = []
    while not got and time.monotonic() < deadline:
        got = again.read().commands
        time.sleep(0.05)
    again.close()
    assert got == [later]


@pytest.mark.kafka
def test_pause_reaches_a_running_stream_a_restart_neither_repeats_nor_loses_a_command(
    kafka_bootstrap, tmp_path
):
    prefix = unique("cs")
    _ensure(kafka_bootstrap, prefix)
    ticks = f"{prefix}ticks"
    _ticks(kafka_bootstrap, ticks, 0, 120, seed=1)
    args = [
        "stream", "--trade", "--kafka", kafka_bootstrap, "--topic", ticks, "--store", "chdb://live.chdb",
        "--recovery-dir", "recovery", "--snapshot-interval", "0.3", *set_args(prefix),
    ]  # fmt: skip
    proc, lines = start_cli(args, tmp_path)
    try:
        _wait("bars", lambda: len(_records(kafka_bootstrap, f"{prefix}bars", Bar)) > 100, proc, lines)
        said = _control(kafka_bootstrap, prefix, "pause", "checking the feed")
        assert f"-> {prefix}control[" in said and said.startswith("control: pause at ")
        (bad,) = _produce(kafka_bootstrap, f"{prefix}control", [b"pause please"], [CONTROL_KEY])
        _ticks(kafka_bootstrap, ticks, 120, 30, seed=2)  # the loop applies it at its next bar close

        def control_events() -> list[RiskEvent]:
            return [
                e for e in _records(kafka_bootstrap, f"{prefix}risk-events", RiskEvent) if e.kind == "control"
            ]

        (event,) = _wait("the control risk event", control_events, proc, lines)
        time.sleep(1.5)  # a few epochs: the position after the command is in the snapshot
    finally:
        _stop(proc)
    assert event.action == "pause" and "checking the feed" in event.message and "(by " in event.message
    assert T0 < event.ts < T0 + 200_000  # at a bar close of the data, not at the wall clock

    # a command issued while the stream is down is applied after its restart (from the saved
    # position, not from the restarted process's start); the pause is not applied again
    _control(kafka_bootstrap, prefix, "resume", "feed checked")
    proc, lines = start_cli(args, tmp_path)
    try:
        _ticks(kafka_bootstrap, ticks, 150, 30, seed=3)
        end = T0 + 170_000
        _wait(
            "the restarted stream's bars",
            lambda: any(decode(v).ts >= end for _, v in read_topic(kafka_bootstrap, f"{prefix}bars")),
            proc,
            lines,
            timeout_s=90,
        )
        time.sleep(1.0)
    finally:
        _stop(proc)
    store = dump("chdb://live.chdb", tmp_path, ("risk_events", "dead_letters"))
    events = store["risk_events"]
    kind, action = events["columns"].index("kind"), events["columns"].index("action")
    assert [r[action] for r in events["rows"] if r[kind] == "control"] == ["pause", "resume"]
    dead = store["dead_letters"]
    source = dead["columns"].index("source")
    assert [r[source] for r in dead["rows"] if "control" in r[source]] == [bad]

    # a later run (no saved state) over the same topics starts after the old command
    later = qbtc(
        "stream", "--trade", "--until-end", "--kafka", kafka_bootstrap, "--topic", ticks,
        "--store", "chdb://later.chdb", "--quiet", *set_args(prefix),
        cwd=tmp_path,
    )  # fmt: skip
    assert later.returncode == 0
    events = dump("chdb://later.chdb", tmp_path, ("risk_events",))["risk_events"]
    assert events["rows"] and not [r for r in events["rows"] if r[kind] == "control"]


def _order(i: int) -> bytes:
    return encode(Order(T0 + i, f"ord-{i}", "", "BTC/USDT", "buy", 0.01, MARKET, 0.0, "entry", "demo"))


def _execute(brokers: str, prefix: str, *extra: str) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QBTC_TEST_EXECUTE")}
    cmd = [sys.executable, "-m", "flows.cli", "execute", "--kafka", brokers]
    return [*cmd, "--set", f"kafka.topic_prefix={prefix}", *extra], env


@pytest.mark.kafka
def test_pause_and_resume_reach_a_running_execution_service_and_a_restart_does_not_repeat_them(
    kafka_bootstrap,
):
    prefix = unique("cx")
    _ensure(kafka_bootstrap, prefix)
    orders, events_topic = f"{prefix}orders", f"{prefix}order-events"

    def event_of(order_id: str) -> OrderEvent | None:
        got = [e for e in _records(kafka_bootstrap, events_topic, OrderEvent) if e.order_id == order_id]
        return got[-1] if got else None

    def controls() -> list[RiskEvent]:  # in time order (the topic's partitions are read one by one)
        events = _records(kafka_bootstrap, f"{prefix}risk-events", RiskEvent)
        return sorted((e for e in events if e.kind == "control"), key=lambda e: e.ts)

    cmd, env = _execute(kafka_bootstrap, prefix)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _produce(kafka_bootstrap, orders, [_order(1)], [b"BTC/USDT"])
        assert _wait("ord-1", lambda: event_of("ord-1"), proc).kind == WOULD_SEND
        _control(kafka_bootstrap, prefix, "pause", "venue maintenance")
        not_a_command = b'{"v": 1, "type": "control"}'
        (bad,) = _produce(kafka_bootstrap, f"{prefix}control", [not_a_command], [CONTROL_KEY])
        (paused,) = _wait("the pause", controls, proc)
        _produce(kafka_bootstrap, orders, [_order(2)], [b"BTC/USDT"])
        denied = _wait("ord-2", lambda: event_of("ord-2"), proc)
        _control(kafka_bootstrap, prefix, "resume", "maintenance over")
        _wait("the resume", lambda: len(controls()) == 2, proc)
        _produce(kafka_bootstrap, orders, [_order(3)], [b"BTC/USDT"])
        assert _wait("ord-3", lambda: event_of("ord-3"), proc).kind == WOULD_SEND
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert paused.action == "pause" and "venue maintenance" in paused.message
    assert denied.kind == REJECTED and "pause" in denied.reason and "venue maintenance" in denied.reason
    dead = [d for d in _records(kafka_bootstrap, f"{prefix}dead-letters", DeadLetter) if d.source == bad]
    assert [d.reason for d in dead] == ["schema"]

    # restarted from its committed offsets: the commands handled are not applied again, the one
    # issued while it was down is applied before the next order
    _control(kafka_bootstrap, prefix, "pause", "night")
    _produce(kafka_bootstrap, orders, [_order(4)], [b"BTC/USDT"])
    cmd, env = _execute(kafka_bootstrap, prefix, "--idle-exit", "3")
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    last = event_of("ord-4")
    assert last.kind == REJECTED and "night" in last.reason, last
    assert [e.action for e in controls()] == ["pause", "resume", "pause"], controls()
