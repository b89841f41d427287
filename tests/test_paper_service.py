"""``qbtc execute --venue paper``: the paper broker as a service (flows/paper_service.py)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer
from kafka_helpers import read_topic, set_args, start_cli, unique

from flows.config import load_settings
from flows.paper_service import Lockstep, PaperDesk
from schemas.codec import decode, encode
from schemas.records import (
    LIMIT,
    LOOP_MARK,
    MARKET,
    CancelRequest,
    Fill,
    Heartbeat,
    Order,
    OrderEvent,
    Protection,
    RiskEvent,
    StepMark,
    Tick,
    VenueBar,
)

D = 1000
SETTINGS = load_settings(None, ["features.bar_interval=1"], env={})


def _order(oid: str, ts: int, qty: float = 1.0, side: str = "buy", kind: str = MARKET, price: float = 0.0):
    return Order(ts, oid, "", "X/USDT", side, qty, kind, price, "entry", "trend")


def _vbar(step: int, close: float, volume: float = 1000.0) -> VenueBar:
    return VenueBar(
        step, "X/USDT", step * D, close, close * 1.001, close * 0.999, close, volume, close, 5, 1.0
    )


def _desk() -> tuple[PaperDesk, list]:
    out: list = []
    return PaperDesk(SETTINGS, lambda table, record, key: out.append((table, record))), out


def _kinds(out: list) -> list[tuple[str, str]]:
    return [(t, r.kind if isinstance(r, OrderEvent) else type(r).__name__) for t, r in out]


def test_a_market_order_is_accepted_then_fills_at_the_next_bar_with_a_filled_event():
    desk, out = _desk()
    barrier = Lockstep(1)
    barrier.add(0, _vbar(0, 100.0))
    barrier.add(0, StepMark(0, "loop", LOOP_MARK, 0))
    barrier.add(0, _order("o1", D))
    barrier.add(0, _vbar(1, 101.0))
    barrier.add(0, StepMark(D, "loop", LOOP_MARK, 1))
    steps: list[int] = []
    barrier.run(desk, steps.append)
    assert steps == [0, 1]
    assert _kinds(out) == [("order_events", "accepted"), ("fills", "Fill"), ("order_events", "filled")]
    fill = out[1][1]
    assert (fill.order_id, fill.qty) == ("o1", 1.0) and fill.price > 101.0 * 0.999  # at the open, plus costs
    assert out[2][1].leaves_qty == 0.0


def test_lockstep_waits_for_every_partition_and_ignores_repeated_steps_and_requests():
    desk, out = _desk()
    barrier = Lockstep(2)
    barrier.add(0, _vbar(0, 100.0))
    barrier.add(0, StepMark(0, "loop", LOOP_MARK, 0))
    steps: list[int] = []
    barrier.run(desk, steps.append)
    assert steps == []  # partition 1 has not reached the mark
    barrier.add(1, StepMark(0, "loop", LOOP_MARK, 0))
    barrier.add(1, _order("o1", D))  # decided at step 0: belongs to step 1, applied at its mark
    barrier.run(desk, steps.append)
    assert steps == [0] and out == []
    barrier.add(0, _vbar(1, 101.0))
    for p in (0, 1):
        barrier.add(p, StepMark(D, "loop", LOOP_MARK, 1))
    barrier.run(desk, steps.append)
    assert steps == [0, 1]
    assert _kinds(out) == [("order_events", "accepted"), ("fills", "Fill"), ("order_events", "filled")]
    # a loop resumed from a snapshot sends step 1 and what it decided before it again: dropped
    barrier.add(1, Protection(D, "X/USDT", 1.0, 200.0, 0.0))  # would fire at once at the next bar
    barrier.add(1, _order("o1", D))
    for p in (0, 1):
        barrier.add(p, StepMark(D, "loop", LOOP_MARK, 1))
    barrier.add(0, _vbar(2, 101.0))
    for p in (0, 1):
        barrier.add(p, StepMark(2 * D, "loop", LOOP_MARK, 2))
    barrier.run(desk, steps.append)
    assert steps == [0, 1, 2] and len(out) == 3  # no second fill, no protective exit


def test_cancel_requests_protections_and_rejections_become_order_events():
    desk, out = _desk()
    desk.bar(_vbar_as_bar(0, 100.0))
    desk.request(_order("lim", D, kind=LIMIT, price=90.0))
    desk.request(CancelRequest(D, "lim", "X/USDT"))
    desk.request(_order("bad", D, qty=-1.0))
    desk.request(_order("o2", D))
    desk.bar(_vbar_as_bar(1, 100.0))
    desk.request(Protection(2 * D, "X/USDT", 1.0, 95.0, 0.0))
    desk.bar(_vbar_as_bar(2, 90.0))  # through the stop: a protective exit
    kinds = _kinds(out)
    assert kinds[:3] == [
        ("order_events", "accepted"),
        ("order_events", "cancelled"),
        ("order_events", "rejected"),
    ]
    rejected = out[2][1]
    assert rejected.reason.startswith("rejected: ") and "qty" in rejected.reason
    exits = [r for t, r in out if isinstance(r, Order)]
    assert [o.order_id.split(":")[0] for o in exits] == ["stop"]
    assert any(isinstance(r, Fill) and r.order_id == exits[0].order_id for _, r in out)
    # the dead man's switch: every working order cancelled with the reason
    desk.request(_order("lim2", 3 * D, kind=LIMIT, price=50.0))
    assert desk.cancel_all(4 * D, "dead man's switch") == 1
    assert out[-1][1].kind == "cancelled" and desk.broker.open_orders() == []


def _vbar_as_bar(step: int, close: float):
    from schemas.records import Bar

    v = _vbar(step, close)
    return Bar(v.symbol, v.ts, v.open, v.high, v.low, v.close, v.volume, v.vwap, v.trades)


# -- against a broker ------------------------------------------------------------------------


def _publish(brokers: str, topic: str, records: list, key: bytes | None = b"X/USDT") -> None:
    p = Producer({"bootstrap.servers": brokers})
    for r in records:
        p.produce(topic, encode(r), key)
    assert p.flush(30) == 0


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.3)
    msg = f"timed out waiting for {what}"
    raise AssertionError(msg)


@pytest.mark.kafka
def test_free_running_it_fills_on_its_own_bars_from_the_ticks_topic_and_the_dead_mans_switch_cancels(
    kafka_bootstrap, tmp_path
):
    prefix = unique("paper")
    args = ["execute", "--venue", "paper", "--kafka", kafka_bootstrap, "--idle-exit", "20"]
    proc, lines = start_cli([*args, *set_args(prefix, "execution_limits.deadman_s=3")], tmp_path)
    try:
        _wait_for(lambda: any("ready (free-running)" in line for line in lines), 60, "the ready line")
        t0 = 1_700_000_000_000
        ticks = f"{prefix}ticks"
        _publish(
            kafka_bootstrap,
            ticks,
            [Tick(t0 + i * 100, "X/USDT", 100.0 + i * 0.01, 5.0, "buy", f"a{i}", "test") for i in range(15)],
        )
        _publish(kafka_bootstrap, f"{prefix}orders", [Heartbeat(1, "test", 1, 0)], None)
        time.sleep(1.0)  # the bar of the first second has closed at the service
        _publish(
            kafka_bootstrap,
            f"{prefix}orders",
            [_order("m1", t0 + 1500), _order("l1", t0 + 1500, kind=LIMIT, price=50.0)],
        )
        _publish(kafka_bootstrap, f"{prefix}orders", [Heartbeat(2, "test", 2, t0 + 1500)], None)
        time.sleep(1.0)
        _publish(
            kafka_bootstrap,
            ticks,
            [Tick(t0 + 2500 + i * 100, "X/USDT", 101.0, 5.0, "buy", f"b{i}", "test") for i in range(10)],
        )
        fills = _wait_for(
            lambda: [decode(v) for _, v in read_topic(kafka_bootstrap, f"{prefix}fills")],
            30,
            "the market order's fill",
        )
        assert [(f.order_id, f.qty) for f in fills] == [("m1", 1.0)]
        # no heartbeat since: within deadman_s + 5 s the resting limit order is cancelled
        start = time.monotonic()

        def cancelled():
            events = [decode(v) for _, v in read_topic(kafka_bootstrap, f"{prefix}order-events")]
            return [
                e
                for e in events
                if isinstance(e, OrderEvent) and e.order_id == "l1" and e.kind == "cancelled"
            ]

        (event,) = _wait_for(cancelled, 3 + 5 + 5, "the dead man's cancel")
        assert "dead man's switch" in event.reason
        assert time.monotonic() - start <= 3 + 5
        risks = [decode(v) for _, v in read_topic(kafka_bootstrap, f"{prefix}risk-events")]
        assert any(isinstance(r, RiskEvent) and r.kind == "deadman" and r.level == 3 for r in risks)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, "".join(lines)
    assert "qbtc execute --venue paper: 2 orders (2 accepted, 0 rejected), 1 fills" in "".join(lines)
