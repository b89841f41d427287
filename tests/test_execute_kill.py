"""``qbtc execute`` killed (SIGKILL: ``os._exit(137)``) at each of its kill points, then restarted.

One broker and one local exchange serve every case; each case trades its
own market (``K01/Q01``, ``K02/Q02``, ...: its own assets, so balances are
its own) under its own topic prefix, and the cases run side by side. A case
publishes a scenario (market orders, a resting limit order that fills in two
trades against the exchange's ticks, a limit order and its cancel request, a
heartbeat, a protection whose stop is already crossed), runs the executor
with ``QBTC_TEST_EXECUTE_KILL=<point>:<n>`` (after a first kill for the
start-up points), checks it died there, runs it again without the hook and
checks the invariants at the exchange's own state:

- every client order id reached the exchange at most once;
- every exchange trade of the market is on ``fills`` exactly once;
- the exchange's balances equal the starting balances plus the fills
  (quote minus fees).

The parents' test (``ALGO_CASES``) works a TWAP parent and an iceberg parent
(``execution.twap_threshold`` 1000, 16 s in slices of 1 s) against ticks published
both to the exchange and to ``<prefix>ticks``, kills the executor while they
work (``twap_child_sent``, ``iceberg_refill``), restarts it until both are
finished and checks the same invariants plus: each parent's filled quantity
equals the sum of its children's fills, and no child id reached the exchange
twice.

The dead man's switch test runs the service with ``deadman_s`` 3, stops the
heartbeats and times the cancellation of every open order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flows.execute import KEY_ENV, KILL_HOOK, KILL_POINTS, SECRET_ENV
from infra.exchange.api_keys import ApiKeys
from infra.exchange.markets import MarketSpec
from infra.exchange.server import default_settings, start_venue
from schemas.codec import decode, encode
from schemas.records import (
    LIMIT,
    MARKET,
    CancelRequest,
    Fill,
    Heartbeat,
    Order,
    OrderEvent,
    Protection,
    RiskEvent,
    Tick,
)
from tests.kafka_helpers import read_topic, unique

pytestmark = pytest.mark.heavy

ROOT = Path(__file__).resolve().parents[1]
KEYS = ApiKeys.generate()
START_QUOTE = 100_000.0
T0 = 1_700_000_000_000
CASES = [
    (("decoded:3",), True),
    (("guarded:2",), True),
    (("sent:2",), True),
    (("events:2",), True),
    (("fills:1",), True),
    (("commit:3",), True),
    (("sent:3", "startup_listed:1"), True),
    (("sent:1", "missing_fills:1"), True),
    (("poll_trades:1",), True),
    (("cancel_sent:1",), True),
    (("protection_sent:1",), True),
    (("deadman_cancel:1",), False),  # the resting order is left resting: the switch cancels it
]
"""(kill hooks in turn, then a clean run; whether the resting order gets its ticks)."""
DEADMAN_MARKET = "KDM/QDM"
ALGO_CASES = [("twap_child_sent:2",), ("iceberg_refill:2",), ("iceberg_refill:3", "twap_child_sent:1")]
"""Kill hooks in turn while a TWAP and an iceberg parent work; then clean runs until both are done.

Each hook must be reached in its run. The iceberg's third refill needs nine fills (ticks through its
limit come every 0.5 s: 4.5 s at least), and the TWAP works for 16 s, so it still has children to send
after that kill however loaded the machine is. (With a 4 s TWAP the two raced: on a loaded machine
every TWAP child could go out before the third refill, leaving none for the next run to die at.)
"""
ALGO_SETTINGS = (
    "execution.twap_threshold=1000",
    "execution_limits.twap_horizon_s=16",
    "execution_limits.twap_slice_s=1",
    "execution_limits.iceberg_display_share=0.25",
)


def algo_market(i: int) -> str:
    return f"KA{i}/QA{i}"


def market(i: int) -> str:
    return f"K{i:02d}/Q{i:02d}"


def spec(symbol: str) -> MarketSpec:
    return MarketSpec(symbol, tick_size=0.01, step_size=0.001, min_qty=0.001, min_notional=1)


@pytest.fixture(scope="module")
def venue():
    symbols = [market(i) for i in range(len(CASES))] + [DEADMAN_MARKET]
    symbols += [algo_market(i) for i in range(len(ALGO_CASES))]
    balances = {s.split("/")[1]: START_QUOTE for s in symbols}
    v = start_venue(default_settings(port=0, markets=tuple(map(spec, symbols)), balances=balances), KEYS)
    for s in symbols:
        v.tick(Tick(T0, s, 100.0, 1000.0))
    yield v
    v.stop()


def order(i: int, symbol: str, side: str, qty: float, kind: str = MARKET, price: float = 0.0) -> Order:
    return Order(T0 + i, f"{symbol}-o{i}", "", symbol, side, qty, kind, price, "entry", "demo")


def scenario(symbol: str) -> list:
    return [
        order(1, symbol, "buy", 8.0),
        order(2, symbol, "buy", 2.0, LIMIT, 99.0),  # rests; fills in two trades
        order(3, symbol, "buy", 1.0, LIMIT, 95.0),  # rests; cancelled by the request below
        Heartbeat(T0 + 4, "loop", 1, T0 + 3),
        CancelRequest(T0 + 5, f"{symbol}-o3", symbol),
        Protection(T0 + 6, symbol, 5.0, 100.5, 0.0),  # long 5, stop above the last trade: exit at once
        order(7, symbol, "sell", 1.0),
        order(8, symbol, "buy", 1.0),
    ]


def make_topics(brokers: str, prefix: str) -> None:
    """The case's topics (twelve cases create theirs at once on one broker: leaders may take a while)."""
    from flows.config import load_settings
    from flows.kafka_flow import ensure

    keys = [f"kafka.brokers={brokers}", f"kafka.topic_prefix={prefix}", "kafka.timeout_s=120"]
    ensure(load_settings(None, keys, env={}))


def publish(brokers: str, topic: str, records: list, key: bytes) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": brokers})
    for r in records:
        p.produce(topic, encode(r), key)
    assert p.flush(30) == 0


def run(brokers: str, prefix: str, url: str, hook: str, deadman_s: float, idle: float = 4.0, extra=()):
    env = {**os.environ, KEY_ENV: KEYS.key.reveal(), SECRET_ENV: KEYS.secret.reveal()}
    env.pop(KILL_HOOK, None)
    if hook:
        env[KILL_HOOK] = hook
    cmd = [sys.executable, "-m", "flows.cli", "execute", "--kafka", brokers, "--idle-exit", str(idle)]
    cmd += ["--venue", "ccxt:binance", "--sandbox", "--venue-url", url]
    cmd += ["--set", f"kafka.topic_prefix={prefix}", "--set", f"execution_limits.deadman_s={deadman_s}"]
    for key in extra:
        cmd += ["--set", key]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert KEYS.secret.reveal() not in proc.stdout + proc.stderr
    return proc


def feeder(v, symbol: str, stop: threading.Event) -> None:
    """Ticks the resting buy at 99 through in two trades once it is open at the exchange."""
    mid = spec(symbol).market_id
    step = 0
    while not stop.wait(0.25):
        with v.lock:
            resting = [o for o in v.engine.open_orders(mid) if o.client_id == f"{symbol}-o2"]
        if not resting:
            continue
        v.tick(Tick(int(time.time() * 1000), symbol, 98.9, 0.8 if step == 0 else 10.0))
        step += 1


def check_invariants(v, brokers: str, prefix: str, symbol: str) -> dict:
    mid = spec(symbol).market_id
    with v.lock:
        orders = list(v.engine.orders_of(mid))
        trades = list(v.engine.trades_of(mid))
        bal = {a: b.free + b.locked for a, b in v.engine.state.balances.items()}
    ids = Counter(o.client_id for o in orders)
    assert ids and max(ids.values()) == 1, ids  # each client order id reached the exchange once
    client_of = {o.order_id: o.client_id for o in orders}
    fills = [decode(val, Fill) for _k, val in read_topic(brokers, f"{prefix}fills")]
    ours = Counter((client_of[t.order_id], round(t.price, 8), round(t.qty, 8)) for t in trades)
    published = Counter((f.order_id, round(f.price, 8), round(f.qty, 8)) for f in fills)
    assert published == ours  # every trade once on fills, nothing else
    base, quote = symbol.split("/")
    want_base = sum((1 if f.side == "buy" else -1) * f.qty for f in fills)
    want_quote = START_QUOTE + sum((-1 if f.side == "buy" else 1) * f.qty * f.price - f.fee for f in fills)
    assert bal.get(base, 0.0) == pytest.approx(want_base, abs=1e-9)
    assert bal.get(quote, 0.0) == pytest.approx(want_quote, abs=1e-6)
    return {"orders": len(orders), "trades": len(trades), "ids": sorted(ids)}


def one_case(v, brokers: str, i: int) -> dict:
    hooks, fill_resting = CASES[i]
    symbol, prefix = market(i), unique(f"kill{i}")
    make_topics(brokers, prefix)
    publish(brokers, f"{prefix}orders", scenario(symbol), symbol.encode())
    stop = threading.Event()
    feed = threading.Thread(target=feeder, args=(v, symbol, stop), daemon=True)
    if fill_resting:
        feed.start()
    deadman = 2.0 if not fill_resting else 600.0
    try:
        for hook in hooks:
            proc = run(brokers, prefix, v.url, hook, deadman)
            assert proc.returncode == 137, f"{hook}: not reached ({proc.returncode}): {proc.stderr[-500:]}"
        proc = run(brokers, prefix, v.url, "", deadman)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        stop.set()
    found = check_invariants(v, brokers, prefix, symbol)
    events = [decode(val, OrderEvent) for _k, val in read_topic(brokers, f"{prefix}order-events")]
    said = [(e.ts, e.order_id, e.kind, e.filled_qty, e.reason[:120]) for e in events]
    assert f"stop:{symbol}:{T0 + 6}" in found["ids"] or not fill_resting, (hooks, said, proc.stdout)
    return found


@pytest.mark.kafka
def test_killed_at_each_point_and_restarted_nothing_is_sent_twice_and_every_trade_is_one_fill(
    kafka_bootstrap, venue
):
    points = {h.partition(":")[0] for hooks, _ in CASES for h in hooks}
    assert len(points) >= 10 and points <= set(KILL_POINTS)
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        only = os.environ.get("QBTC_TEST_KILL_CASES")  # e.g. "0,8": a subset while debugging
        picked = [int(x) for x in only.split(",")] if only else range(len(CASES))
        futures = [pool.submit(one_case, venue, kafka_bootstrap, i) for i in picked]
        failed = {CASES[i][0]: f.exception() for i, f in zip(picked, futures, strict=True) if f.exception()}
    assert not failed, "\n".join(
        f"{hooks}: {type(e).__name__}: {str(e)[:1500]}" for hooks, e in failed.items()
    )
    assert all(f.result()["trades"] >= 3 for f in futures)


@pytest.mark.kafka
def test_the_dead_mans_switch_cancels_every_open_order_within_deadman_s_plus_5(kafka_bootstrap, venue):
    symbol, prefix = DEADMAN_MARKET, unique("deadman")
    make_topics(kafka_bootstrap, prefix)
    env = {**os.environ, KEY_ENV: KEYS.key.reveal(), SECRET_ENV: KEYS.secret.reveal()}
    env.pop(KILL_HOOK, None)
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "execute",
        "--kafka",
        kafka_bootstrap,
        "--venue",
        "ccxt:binance",
    ]
    cmd += ["--sandbox", "--venue-url", venue.url, "--set", f"kafka.topic_prefix={prefix}"]
    cmd += ["--set", "execution_limits.deadman_s=3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mid = spec(symbol).market_id
    try:
        resting = [order(i, symbol, "buy", 1.0, LIMIT, 90.0 + i) for i in range(1, 4)]
        publish(kafka_bootstrap, f"{prefix}orders", [*resting, Heartbeat(T0, "loop", 1, T0 + 3)], b"k")
        deadline = time.monotonic() + 60
        while True:
            with venue.lock:
                open_ids = {o.client_id for o in venue.engine.open_orders(mid)}
            if open_ids == {o.order_id for o in resting}:
                break
            assert time.monotonic() < deadline and proc.poll() is None, "orders never rested"
            time.sleep(0.2)
        for seq in range(2, 5):  # the loop lives a little longer, then stops
            publish(kafka_bootstrap, f"{prefix}orders", [Heartbeat(T0 + seq, "loop", seq, T0 + 3)], b"k")
            time.sleep(0.5)
        stopped = time.monotonic()
        while True:
            with venue.lock:
                still = [o.client_id for o in venue.engine.open_orders(mid)]
            if not still:
                break
            assert time.monotonic() - stopped < 3 + 5, f"still open after deadman_s + 5 s: {still}"
            time.sleep(0.1)
        publish(kafka_bootstrap, f"{prefix}orders", [order(9, symbol, "buy", 1.0)], b"k")
        time.sleep(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    risks = [decode(v, RiskEvent) for _k, v in read_topic(kafka_bootstrap, f"{prefix}risk-events")]
    assert any(r.action == "cancel_all" and r.level == 3 for r in risks)
    with venue.lock:
        sent = {o.client_id for o in venue.engine.orders_of(mid)}
    assert f"{symbol}-o9" not in sent  # nothing is sent while the switch is tripped
    assert "1 rejected" in out


def algo_feeder(v, brokers: str, prefix: str, symbol: str, stop: threading.Event) -> None:
    """Ticks every 0.25 s to the exchange and to ``<prefix>ticks``: 99.5 x 10 (the iceberg rests),
    then 98.9 x 1 (through its limit)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": brokers})
    step = 0
    while not stop.wait(0.25):
        price, qty = (99.5, 10.0) if step % 2 == 0 else (98.9, 1.0)
        tick = Tick(int(time.time() * 1000), symbol, price, qty, "buy", str(step), "test")
        v.tick(tick)
        p.produce(f"{prefix}ticks", encode(tick), symbol.encode())
        p.poll(0)
        step += 1
    p.flush(10)


def one_algo_case(v, brokers: str, i: int) -> dict:
    hooks, symbol, prefix = ALGO_CASES[i], algo_market(i), unique(f"algo{i}")
    make_topics(brokers, prefix)
    now = int(time.time() * 1000)
    twap = Order(now, f"{symbol}-twap", "", symbol, "buy", 12.0, MARKET, 0.0, "entry", "demo")
    ice = Order(now + 1, f"{symbol}-ice", "", symbol, "buy", 12.0, LIMIT, 99.0, "entry", "demo")
    stop = threading.Event()
    feed = threading.Thread(target=algo_feeder, args=(v, brokers, prefix, symbol, stop), daemon=True)
    feed.start()
    time.sleep(1.0)
    publish(brokers, f"{prefix}orders", [twap, ice], symbol.encode())
    finals: dict[str, OrderEvent] = {}
    try:
        for hook in hooks:
            proc = run(brokers, prefix, v.url, hook, 600.0, idle=30.0, extra=ALGO_SETTINGS)
            assert proc.returncode == 137, f"{hook}: not reached ({proc.returncode}): {proc.stderr[-500:]}"
        for _ in range(4):  # clean runs until both parents are finished
            proc = run(brokers, prefix, v.url, "", 600.0, idle=12.0, extra=ALGO_SETTINGS)
            assert proc.returncode == 0, proc.stderr[-2000:]
            records = [decode(val) for _k, val in read_topic(brokers, f"{prefix}order-events")]
            events = [r for r in records if isinstance(r, OrderEvent)]
            finals = {e.order_id: e for e in events if e.order_id in (twap.order_id, ice.order_id)
                      and e.kind in ("filled", "cancelled")}  # fmt: skip
            if len(finals) == 2:
                break
    finally:
        stop.set()
        feed.join(5)
    found = check_invariants(v, brokers, prefix, symbol)
    fills = [decode(val, Fill) for _k, val in read_topic(brokers, f"{prefix}fills")]
    for parent in (twap, ice):
        final = finals.get(parent.order_id)
        assert final is not None and final.kind == "filled", (hooks, parent.order_id, final)
        of_children = [f for f in fills if f.order_id.startswith(parent.order_id + "/")]
        assert final.filled_qty == pytest.approx(sum(f.qty for f in of_children))
        assert final.filled_qty == pytest.approx(parent.qty)
    assert not {twap.order_id, ice.order_id} & set(found["ids"])  # parents are never sent themselves
    return found


@pytest.mark.kafka
def test_twap_and_iceberg_parents_killed_while_working_finish_and_no_child_is_sent_twice(
    kafka_bootstrap, venue
):
    assert {h.partition(":")[0] for hooks in ALGO_CASES for h in hooks} <= set(KILL_POINTS)
    with ThreadPoolExecutor(max_workers=len(ALGO_CASES)) as pool:
        futures = [pool.submit(one_algo_case, venue, kafka_bootstrap, i) for i in range(len(ALGO_CASES))]
        failed = {ALGO_CASES[i]: f.exception() for i, f in enumerate(futures) if f.exception()}
    assert not failed, "\n".join(f"{h}: {type(e).__name__}: {str(e)[:1500]}" for h, e in failed.items())
