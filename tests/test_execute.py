"""``qbtc execute``: orders topic -> local exchange (real ccxt client over HTTP) -> order-events and fills.

The kafka-marked tests run the service as a subprocess against the
in-process local exchange (``infra.exchange.server.start_venue``) and a real
broker; ``--idle-exit`` ends each run once the orders are consumed.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import ccxt
import pytest
from confluent_kafka import KafkaException, Producer

from flows.cli import main
from flows.config import load_settings
from flows.execute import (
    KEY_ENV,
    KILL_HOOK,
    SECRET_ENV,
    CcxtVenue,
    ExecuteOptions,
    ExecuteUsage,
    Executor,
    execute_options,
    execution_keys,
    fill_key,
    fill_of,
    order_events,
)
from infra.exchange.api_keys import ApiKeys
from infra.exchange.binance_api import ccxt_urls
from infra.exchange.markets import MarketSpec
from infra.exchange.server import default_settings, start_venue
from operators.execution.cost_model import BrokerSettings
from operators.execution.limits import ExecutionGuard
from operators.execution.quality import SlippageMonitor, SlippageSettings
from schemas.codec import decode, encode
from schemas.records import (
    ACCEPTED,
    CANCELLED,
    EXTERNAL,
    FILLED,
    LIMIT,
    LOOP_END,
    LOOP_MARK,
    MARKET,
    REJECTED,
    VENUE_END,
    WOULD_SEND,
    CancelRequest,
    DeadLetter,
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
from tests.kafka_helpers import read_topic, unique

ROOT = Path(__file__).resolve().parents[1]
KEYS = ApiKeys.generate()
MARKETS = (MarketSpec("BTC/USDT", tick_size=0.01, step_size=0.0001, min_qty=0.0001, min_notional=5),)
START_USDT = 100_000.0


def order(i: int, side: str = "buy", qty: float = 0.01, symbol: str = "BTC/USDT") -> Order:
    return Order(1_700_000_000_000 + i, f"ord-{i}", "", symbol, side, qty, MARKET, 0.0, "entry", "demo")


# -- without a broker ---------------------------------------------------------------------


def test_dry_run_is_the_default_and_live_needs_both_limits():
    s = load_settings(None, env={})
    assert execute_options("dry-run", False, False, None, None, s).mode == "dry-run"
    assert execute_options("ccxt:binance", False, False, None, None, s).mode == "dry-run"
    assert execute_options("ccxt:binance", True, False, "http://x", None, s).mode == "sandbox"
    with pytest.raises(ExecuteUsage, match="execution_limits.max_daily_notional must be set"):
        execute_options(
            "ccxt:binance",
            False,
            True,
            None,
            None,
            load_settings(None, ["execution_limits.max_order_notional=10"], env={}),
        )
    limits = ["execution_limits.max_order_notional=10", "execution_limits.max_daily_notional=100"]
    assert (
        execute_options("ccxt:binance", False, True, None, None, load_settings(None, limits, env={})).mode
        == "live"
    )
    for bad in (("paper", False, None), ("dry-run", True, None), ("ccxt:binance", False, "http://x")):
        with pytest.raises(ExecuteUsage):
            execute_options(bad[0], bad[1], False, bad[2], None, s)


def test_live_without_limits_is_refused_with_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "key-abcdef-123")
    monkeypatch.setenv(SECRET_ENV, "secret-abcdef-456")
    assert main(["execute", "--venue", "ccxt:binance", "--live"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("qbtc execute: error: --live refused: execution_limits.max_order_notional")
    assert "key-abcdef-123" not in err and "secret-abcdef-456" not in err


def test_keys_come_from_the_environment_or_a_secret_file_as_secrets(tmp_path):
    key, secret = execution_keys({KEY_ENV: "k1", SECRET_ENV: "s1"}, None)
    assert (key.reveal(), secret.reveal()) == ("k1", "s1") and "s1" not in repr((key, secret))
    path = tmp_path / "keys.env"
    path.write_text(f"# keys\n{KEY_ENV}=k2\nexport {SECRET_ENV}='s2'\n")
    assert [s.reveal() for s in execution_keys({}, str(path))] == ["k2", "s2"]
    with pytest.raises(ExecuteUsage, match=f"set {KEY_ENV} and {SECRET_ENV}") as info:
        execution_keys({KEY_ENV: "only-the-key"}, None)
    assert "only-the-key" not in str(info.value)
    venue_file = tmp_path / "api-keys.env"  # as qbtc venue up writes it
    venue_file.write_text("QBTC_VENUE_API_KEY=k3\nQBTC_VENUE_API_SECRET=s3\n")
    assert [s.reveal() for s in execution_keys({}, str(venue_file))] == ["k3", "s3"]


def test_a_venue_order_becomes_accepted_then_its_state_and_trades_become_fills():
    o = order(1)
    got = {"id": "7", "timestamp": 5, "status": "closed", "filled": 0.01, "average": 60_018.0}
    events = order_events(o, got, "ccxt:binance", 9)
    assert [(e.kind, e.venue_order_id, e.filled_qty, e.venue_ts) for e in events] == [
        (ACCEPTED, "7", 0.0, 5),
        (FILLED, "7", 0.01, 5),
    ]
    assert events[1].price == pytest.approx(60_018.0)
    trade = {"price": 60_018.0, "amount": 0.01, "timestamp": 5, "fee": {"cost": 0.6, "currency": "USDT"}}
    assert fill_of(o, trade) == Fill(5, "ord-1", "BTC/USDT", "buy", 0.01, 60_018.0, 0.6, 0.0)
    resting = order_events(o, {"id": "8", "status": "open", "filled": 0.004, "average": 1.0}, "v", 9)
    assert [e.kind for e in resting] == [ACCEPTED, "partially_filled"]


# -- with a broker and the local exchange -----------------------------------------------------


@pytest.fixture
def venue():
    v = start_venue(default_settings(port=0, markets=MARKETS, balances={"USDT": START_USDT}), KEYS)
    v.tick(Tick(0, "BTC/USDT", 60_000.0, 1000.0))
    yield v
    v.stop()


def client(url: str) -> ccxt.binance:
    ex = ccxt.binance({"apiKey": KEYS.key.reveal(), "secret": KEYS.secret.reveal()})
    ex.urls["api"] = ccxt_urls(ex.urls["api"], url)
    return ex


def publish(brokers: str, topic: str, values: list[bytes]) -> None:
    """Keyed by symbol as the flows publish orders: one symbol's orders in order on one partition."""
    p = Producer({"bootstrap.servers": brokers})
    for v in values:
        p.produce(topic, v, b"BTC/USDT")
    assert p.flush(30) == 0


def ensure_topics(brokers: str, prefix: str) -> None:
    from flows.kafka_flow import ensure

    ensure(load_settings(None, [f"kafka.brokers={brokers}", f"kafka.topic_prefix={prefix}"], env={}))


def execute(brokers: str, prefix: str, *args: str, env: dict | None = None, check: bool = True):
    full = {**os.environ, KEY_ENV: KEYS.key.reveal(), SECRET_ENV: KEYS.secret.reveal(), **(env or {})}
    if KILL_HOOK not in (env or {}):
        full.pop(KILL_HOOK, None)
    cmd = [sys.executable, "-m", "flows.cli", "execute", "--kafka", brokers, "--idle-exit", "6"]
    cmd += ["--set", f"kafka.topic_prefix={prefix}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=180)
    for secret in (KEYS.key.reveal(), KEYS.secret.reveal()):
        assert secret not in proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def records(brokers: str, topic: str, cls: type) -> list:
    return [decode(v, cls) for _k, v in read_topic(brokers, topic)]


@pytest.mark.kafka
def test_a_dry_run_records_would_send_and_nothing_reaches_the_exchange(kafka_bootstrap, venue, tmp_path):
    prefix = unique("ex")
    ensure_topics(kafka_bootstrap, prefix)
    publish(kafka_bootstrap, f"{prefix}orders", [encode(order(i)) for i in range(3)])
    proc = execute(kafka_bootstrap, prefix, "--venue", "ccxt:binance", "--venue-url", venue.url, check=False)
    assert proc.returncode == 2 and "--venue-url needs --sandbox" in proc.stderr  # a URL alone sends nothing
    dsn = f"chdb://{tmp_path / 'store.chdb'}"
    proc = execute(kafka_bootstrap, prefix, "--venue", "ccxt:binance", "--store", dsn)
    assert proc.stdout.strip().endswith("0 dead letters") and "3 would_send" in proc.stdout
    count = (
        "import sys; from sinks.clickhouse_store import Store; "
        "print(Store(sys.argv[1]).counts()[sys.argv[2]])"
    )
    stored = subprocess.run(
        [sys.executable, "-c", count, dsn, "order_events"], cwd=ROOT, capture_output=True, text=True
    )
    assert stored.stdout.strip() == "3", stored.stderr  # --store: the records also went to the store
    events = records(kafka_bootstrap, f"{prefix}order-events", OrderEvent)
    assert [(e.order_id, e.kind, e.venue) for e in events] == [
        (f"ord-{i}", WOULD_SEND, "ccxt:binance") for i in range(3)
    ]
    ex = client(venue.url)
    assert ex.fetch_my_trades("BTC/USDT") == [] and ex.fetch_orders("BTC/USDT") == []
    assert read_topic(kafka_bootstrap, f"{prefix}fills") == []


def _balances_agree(ex: ccxt.binance, fills: list[Fill]) -> None:
    usdt = START_USDT + sum((-1 if f.side == "buy" else 1) * f.qty * f.price - f.fee for f in fills)
    btc = sum((1 if f.side == "buy" else -1) * f.qty for f in fills)
    total = ex.fetch_balance()["total"]
    assert total["USDT"] == pytest.approx(usdt, abs=1e-6)
    assert total.get("BTC", 0.0) == pytest.approx(btc, abs=1e-9)


@pytest.mark.kafka
def test_sandbox_orders_fill_on_the_local_exchange_and_balances_match_the_fills(kafka_bootstrap, venue):
    prefix = unique("ex")
    ensure_topics(kafka_bootstrap, prefix)
    orders = [order(0, qty=0.02), order(1, qty=0.01), order(2, side="sell", qty=0.015)]
    beat = encode(Heartbeat(1_700_000_000_000, "stream", 1, 0))
    publish(kafka_bootstrap, f"{prefix}orders", [encode(orders[0]), beat, *map(encode, orders[1:])])
    ex = client(venue.url)
    by_hand = ex.create_order("BTC/USDT", "limit", "buy", 0.001, 50_000, {"clientOrderId": "by-hand"})
    proc = execute(kafka_bootstrap, prefix, "--venue", "ccxt:binance", "--sandbox", "--venue-url", venue.url)
    assert "3 accepted" in proc.stdout and "3 fills" in proc.stdout
    external, *events = records(kafka_bootstrap, f"{prefix}order-events", OrderEvent)
    assert (external.kind, external.order_id, external.venue_order_id) == (EXTERNAL, "by-hand", by_hand["id"])
    risks = records(kafka_bootstrap, f"{prefix}risk-events", RiskEvent)
    baselines = {r.symbol: r.value for r in risks if r.action == "baseline"}
    assert baselines == pytest.approx({"BTC": 0.0, "USDT": START_USDT})  # nothing filled before
    (risk,) = [r for r in risks if r.action != "baseline"]
    assert (risk.kind, risk.level, risk.action, risk.symbol) == ("reconcile", 2, "external", "BTC/USDT")
    assert [(e.order_id, e.kind) for e in events] == [
        (f"ord-{i}", kind) for i in range(3) for kind in (ACCEPTED, FILLED)
    ]
    assert all(e.venue_order_id and e.venue_ts > 0 for e in events)
    fills = records(kafka_bootstrap, f"{prefix}fills", Fill)
    assert [(f.order_id, f.side, f.qty) for f in fills] == [(o.order_id, o.side, o.qty) for o in orders]
    trades = ex.fetch_my_trades("BTC/USDT")
    assert sorted(f.price for f in fills) == pytest.approx(sorted(t["price"] for t in trades))
    _balances_agree(ex, fills)


@pytest.mark.kafka
def test_killed_after_sending_or_before_committing_no_order_is_sent_twice_and_each_trade_is_one_fill(
    kafka_bootstrap, venue
):
    prefix = unique("ex")
    ensure_topics(kafka_bootstrap, prefix)
    orders = [order(i, side="buy" if i % 3 else "sell", qty=0.01 + 0.001 * i) for i in range(8)]
    orders[0] = order(0, qty=0.05)  # something to sell first
    publish(kafka_bootstrap, f"{prefix}orders", [encode(o) for o in orders])
    args = ("--venue", "ccxt:binance", "--sandbox", "--venue-url", venue.url)
    # SIGKILL points: right after the 2nd order reached the venue (nothing reported for it), after the
    # 1st re-sent order (the duplicate) and one more, after a message's records were delivered but before
    # its offset was committed; then a clean run to the end
    for point in ("sent:2", "sent:2", "commit:2", "sent:1", ""):
        hook = {KILL_HOOK: point} if point else {}
        proc = execute(kafka_bootstrap, prefix, *args, env=hook, check=not hook)
        if hook:
            assert proc.returncode == 137, proc.stderr
    ex = client(venue.url)
    venue_orders = ex.fetch_orders("BTC/USDT")
    ids = [o["clientOrderId"] for o in venue_orders]
    assert sorted(ids) == sorted(o.order_id for o in orders)  # each client id reached it once
    trades = ex.fetch_my_trades("BTC/USDT")
    fills = records(kafka_bootstrap, f"{prefix}fills", Fill)
    assert len(trades) == len(orders) and len(fills) == len(trades)
    assert Counter(f.order_id for f in fills) == Counter(o.order_id for o in orders)
    by_venue_id = {o["id"]: o["clientOrderId"] for o in venue_orders}
    assert sorted((by_venue_id[t["order"]], t["price"]) for t in trades) == sorted(
        (f.order_id, f.price) for f in fills
    )
    events = records(kafka_bootstrap, f"{prefix}order-events", OrderEvent)
    assert {e.order_id for e in events if e.kind == FILLED} == {o.order_id for o in orders}
    _balances_agree(ex, fills)


@pytest.mark.kafka
def test_bad_messages_become_dead_letters_and_bad_orders_rejected_events(kafka_bootstrap, venue):
    prefix = unique("ex")
    ensure_topics(kafka_bootstrap, prefix)
    values = [
        b"{not json",
        encode(Tick(0, "BTC/USDT", 1.0, 1.0)),
        b'{"v": 1, "type": "order", "order_id": "x"}',
        encode(order(1, qty=-1.0)),
        encode(order(2, symbol="XXX/USDT")),
        encode(order(3, qty=1e-7)),
        encode(order(4)),
    ]
    publish(kafka_bootstrap, f"{prefix}orders", values)
    limits = ("--set", "execution_limits.max_order_notional=50000")
    args = ("--venue", "ccxt:binance", "--sandbox", "--venue-url", venue.url, *limits)
    proc = execute(kafka_bootstrap, prefix, *args)
    assert "3 dead letters" in proc.stdout
    dead = records(kafka_bootstrap, f"{prefix}dead-letters", DeadLetter)
    dead.sort(key=lambda d: int(d.source.rpartition("@")[2]))  # keyed by source: partitions differ
    assert [d.reason for d in dead] == ["parse", "schema", "schema"]
    assert dead[0].payload == b"{not json" and re.fullmatch(rf"{prefix}orders\[\d+\]@1", dead[1].source)
    assert "expected an order, got Tick" in dead[1].message
    events = records(kafka_bootstrap, f"{prefix}order-events", OrderEvent)
    events.sort(key=lambda e: e.order_id)  # keyed by symbol: XXX/USDT's may be on another partition
    kinds = [(e.order_id, e.kind) for e in events]
    assert kinds == [
        ("ord-1", REJECTED),
        ("ord-2", REJECTED),
        ("ord-3", REJECTED),
        ("ord-4", ACCEPTED),
        ("ord-4", FILLED),
    ]
    reasons = [e.reason for e in events[:3]]
    assert "quantity -1.0 is not a finite number > 0" in reasons[0]
    assert reasons[1].startswith("no last trade price of XXX/USDT")  # the notional cap needs a price
    assert reasons[2].startswith("venue refused: InvalidOrder") and "minimum amount" in reasons[2]
    assert math.isclose(records(kafka_bootstrap, f"{prefix}fills", Fill)[0].qty, 0.01)


def _events_so_far(brokers: str, topic: str) -> list:
    try:
        return read_topic(brokers, topic)
    except KafkaException:  # a broker still settling its partitions' leaders: ask again
        return []


@pytest.mark.kafka
def test_sigterm_finishes_the_current_order_commits_and_exits_0_with_one_line(kafka_bootstrap):
    prefix = unique("ex")
    ensure_topics(kafka_bootstrap, prefix)
    publish(kafka_bootstrap, f"{prefix}orders", [encode(order(i)) for i in range(2)])
    env = {k: v for k, v in os.environ.items() if k != KILL_HOOK}
    cmd = [sys.executable, "-m", "flows.cli", "execute", "--kafka", kafka_bootstrap]
    cmd += ["--set", f"kafka.topic_prefix={prefix}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_events_so_far(kafka_bootstrap, f"{prefix}order-events")) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "no order events"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == [
        "qbtc execute: 2 orders (2 would_send, 0 accepted, 0 rejected), 0 fills, 0 dead letters"
    ]
    # committed: a second run reads nothing more
    again = execute(kafka_bootstrap, prefix)
    assert again.stdout.startswith("qbtc execute: 0 orders")


# -- the executor's steps against the local exchange, without a broker -----------------------


class Clock:
    """The service's clock, moved by hand."""

    def __init__(self) -> None:
        self.t = 1_800_000_000_000

    def __call__(self) -> int:
        return self.t


def executor_at(url: str, *limits: str, dry: bool = False, **kw) -> tuple[Executor, list, Clock]:
    settings = load_settings(None, list(limits), env={})
    out: list = []
    clock = Clock()
    venue = None
    if not dry:
        venue = CcxtVenue("binance", (KEYS.key, KEYS.secret), url, True)
        venue.ex.load_markets()
    options = ExecuteOptions("ccxt:binance", "dry-run" if dry else "sandbox", url)
    guard = ExecutionGuard(settings.execution_limits)
    ex = Executor(options, guard, venue, lambda t, r: out.append((t, r)), set(), now_ms=clock, **kw)
    return ex, out, clock


def limit(i: int, price: float, side: str = "buy", qty: float = 0.01) -> Order:
    return Order(1_700_000_000_000 + i, f"lim-{i}", "", "BTC/USDT", side, qty, LIMIT, price, "entry", "demo")


def of(out: list, table: str) -> list:
    return [r for t, r in out if t == table]


def test_cancel_requests_protections_and_lockstep_records(venue):
    ex, out, clock = executor_at(venue.url)
    ex.handle(encode(limit(1, 59_000.0)), "o@0")
    ex.handle(encode(CancelRequest(5, "lim-1", "BTC/USDT")), "o@1")
    assert [(e.order_id, e.kind) for e in of(out, "order_events")] == [
        ("lim-1", ACCEPTED),
        ("lim-1", CANCELLED),
    ]
    assert client(venue.url).fetch_order(None, "BTC/USDT", {"clientOrderId": "lim-1"})["status"] == "canceled"
    n = len(out)
    ex.handle(encode(CancelRequest(6, "lim-1", "BTC/USDT")), "o@2")  # finished: nothing
    ex.handle(encode(CancelRequest(6, "nobody", "BTC/USDT")), "o@3")  # unknown: nothing
    ex.handle(encode(VenueBar(1, "BTC/USDT", 0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1, 1.0)), "o@4")
    ex.handle(encode(StepMark(0, "loop", LOOP_MARK, 1)), "o@5")
    assert len(out) == n  # no dead letter, no event
    ex.handle(encode(order(2, qty=0.02)), "o@6")
    ex.handle(encode(Protection(7, "BTC/USDT", 0.02, 59_000.0, 61_000.0)), "o@7")
    clock.t += 2_000
    ex.poll(clock.t)
    assert "stop:BTC/USDT:7" not in ex.ours  # 60 000 is between the levels
    venue.tick(Tick(1, "BTC/USDT", 61_500.0, 1.0))
    for _ in range(3):
        clock.t += 1_000
        ex.poll(clock.t)
    sent = [o["clientOrderId"] for o in client(venue.url).fetch_orders("BTC/USDT")]
    assert sent.count("target:BTC/USDT:7") == 1 and "stop:BTC/USDT:7" not in sent
    exit_fill = of(out, "fills")[-1]
    assert (exit_fill.order_id, exit_fill.side, exit_fill.qty) == ("target:BTC/USDT:7", "sell", 0.02)
    ex.handle(encode(Protection(8, "BTC/USDT", 0.01, 70_000.0, 0.0)), "o@8")
    ex.handle(encode(Protection(9, "BTC/USDT", 0.0, 0.0, 0.0)), "o@9")  # cleared
    clock.t += 1_000
    ex.poll(clock.t)
    assert not ex.protections and "stop:BTC/USDT:8" not in ex.ours
    dry, dry_out, _ = executor_at(venue.url, dry=True)
    dry.handle(encode(CancelRequest(5, "lim-9", "BTC/USDT")), "o@0")
    (event,) = of(dry_out, "order_events")
    assert (event.order_id, event.kind) == ("lim-9", CANCELLED) and "dry run" in event.reason


def test_a_loops_end_mark_checks_every_protection_at_once_and_waits_to_be_answered(venue):
    ex, out, clock = executor_at(venue.url)
    ex.handle(encode(order(1, qty=0.02)), "o@0")
    ex.handle(encode(Protection(7, "BTC/USDT", 0.02, 59_000.0, 61_000.0)), "o@1")
    clock.t += 2_000
    ex.poll(clock.t)  # checked now: 60 000 is between the levels
    venue.tick(Tick(1, "BTC/USDT", 61_500.0, 1.0))
    clock.t += 10
    ex.poll(clock.t)  # within the poll interval: not looked at
    assert "target:BTC/USDT:7" not in ex.ours and ex.ended == []
    mark = StepMark(5, "stream@here:1", LOOP_END, 2)
    ex.handle(encode(mark), "o@2")
    assert ex.ended == [mark]  # answered by the service loop once delivered (flows.execute)
    exit_fill = of(out, "fills")[-1]
    assert (exit_fill.order_id, exit_fill.side, exit_fill.qty) == ("target:BTC/USDT:7", "sell", 0.02)
    assert not [r for r in of(out, "dead_letters")]


def test_the_loops_venue_counts_fills_against_final_events_and_its_own_end_marks():
    from flows.external_venue import RemoteVenue

    parent = order(1, qty=0.05)
    loop = RemoteVenue.__new__(RemoteVenue)
    loop.__setstate__(  # a snapshot from before the end-of-run accounting: no _filled, _owed, _ended
        {"_config": None, "_working": {parent.order_id: [parent, parent.qty]}, "_ours": {parent.order_id},
         "_created": {}, "_asked": set(), "_fills": {}, "_new": {}, "_cancelled": [], "_events": [],
         "_positions": None, "_marks": {}, "_last_order_ts": 0, "_step_ts": 0, "_seq": 0, "_clients": None}
    )  # fmt: skip
    assert loop._left() == "1 order(s) still working"

    def event(kind: str, filled: float) -> OrderEvent:
        leaves = 0.0 if kind == FILLED else parent.qty - filled
        return OrderEvent(2, parent.order_id, "v1", "BTC/USDT", "buy", kind, parent.qty, filled, 0.0, "",
                          "ccxt:binance", 0, leaves)  # fmt: skip

    def fill(i: int, qty: float) -> Fill:
        return Fill(3 + i, f"{parent.order_id}/{i}", "BTC/USDT", "buy", qty, 60_000.0, 0.1, 0.0)

    loop._take("fills", 0, fill(1, 0.02))  # a child's fill counts for its parent
    loop._take("order_events", 0, event(FILLED, 0.05))
    assert loop._left() == "fills missing for 1 finished order(s)"
    loop._take("fills", 0, fill(2, 0.03))
    assert loop._left() == "" and loop._owed == {} and parent.order_id not in loop._filled
    loop._take("order_events", 0, event(FILLED, 0.05))  # repeated after a service restart: not owed again
    assert loop._left() == ""
    # an exit the service made: its fill (fills topic) may be read before its order (order-events)
    exit_order = Order(5, "stop:BTC/USDT:5", "", "BTC/USDT", "sell", 0.05, MARKET, 0.0, "stop", "protection")
    loop._take("fills", 0, Fill(6, exit_order.order_id, "BTC/USDT", "sell", 0.05, 59_000.0, 0.1, 0.0))
    loop._take("order_events", 0, exit_order)
    assert loop._left() == "1 order(s) still working"
    done = OrderEvent(7, exit_order.order_id, "v2", "BTC/USDT", "sell", FILLED, 0.05, 0.05, 0.0, "",
                      "ccxt:binance", 0, 0.0)  # fmt: skip
    loop._take("order_events", 0, done)
    assert loop._left() == "" and exit_order.order_id not in loop._filled
    loop._take("fills", 0, StepMark(4, "stream@elsewhere:2", VENUE_END, 0))
    assert loop._ended == set()  # another loop's answer
    left = loop._left({("fills", 0, 0)}, 30.0)
    assert left.startswith("the execution service said nothing for 30 s") and "1 partition(s)" in left


def test_a_resting_order_is_followed_each_poll_and_each_trade_is_one_fill(venue):
    ex, out, clock = executor_at(venue.url)
    ex.handle(encode(limit(1, 59_900.0)), "o@0")
    assert "lim-1" in ex.working and of(out, "fills") == []
    venue.tick(Tick(1, "BTC/USDT", 59_800.0, 0.004))  # a partial fill at the limit
    clock.t += 1_000
    ex.poll(clock.t)
    venue.tick(Tick(2, "BTC/USDT", 59_800.0, 1.0))
    clock.t += 500
    ex.poll(clock.t)  # within the poll interval: not asked yet
    assert len(of(out, "fills")) == 1
    clock.t += 500
    ex.poll(clock.t)
    clock.t += 1_000
    ex.poll(clock.t)  # nothing new
    events = [(e.kind, e.filled_qty, e.leaves_qty) for e in of(out, "order_events")]
    assert events == [
        (ACCEPTED, 0.0, 0.01),
        ("partially_filled", 0.004, pytest.approx(0.006)),
        (FILLED, 0.01, 0.0),
    ]
    fills = of(out, "fills")
    assert [f.qty for f in fills] == pytest.approx([0.004, 0.006]) and {f.price for f in fills} == {59_900.0}
    assert len({fill_key(f) for f in fills}) == 2 and ex.working == {}


def test_start_up_publishes_missing_fills_and_a_balance_mismatch_holds_until_resume(venue):
    from flows.execution_startup import Book, start_up

    lost = order(1, qty=0.02)  # sent, then the process died before it recorded anything
    client(venue.url).create_order("BTC/USDT", "market", "buy", 0.02, None, {"clientOrderId": lost.order_id})
    ex, out, _ = executor_at(venue.url)
    start_up(ex.venue, "ccxt:binance", Book(orders=[lost]), ex, 5)
    (fill,) = of(out, "fills")
    assert (fill.order_id, fill.qty) == (lost.order_id, 0.02) and not ex.guard.holds
    assert [(e.order_id, e.kind) for e in of(out, "order_events")] == [(lost.order_id, FILLED)]
    baselines = {r.symbol: r.value for r in of(out, "risk_events") if r.action == "baseline"}
    assert baselines == pytest.approx({"BTC": 0.0, "USDT": START_USDT})
    # a restart that knows the fill and a baseline 1000 USDT off: fail closed
    again, out2, _ = executor_at(venue.url)
    book = Book(orders=[lost], fills=[fill], baseline={"BTC": 0.0, "USDT": START_USDT - 1_000.0})
    start_up(again.venue, "ccxt:binance", book, again, 6)
    assert of(out2, "fills") == [] and "reconcile" in again.guard.holds
    (risk,) = [r for r in of(out2, "risk_events") if r.action == "fail_closed"]
    assert (risk.kind, risk.level) == ("reconcile", 3) and "USDT" in risk.message
    again.handle(encode(order(2)), "o@0")
    assert of(out2, "order_events")[-1].kind == REJECTED
    assert of(out2, "order_events")[-1].reason.startswith("halted (reconcile)")
    again.control("resume", "checked by hand", 7)
    assert not again.guard.holds
    rebased = {r.symbol: r.value for r in of(out2, "risk_events") if r.action == "baseline"}
    assert rebased == pytest.approx({"BTC": 0.0, "USDT": START_USDT})  # the venue's, before our fills
    again.handle(encode(order(3)), "o@1")
    assert [e.kind for e in of(out2, "order_events")[-2:]] == [ACCEPTED, FILLED]


def test_the_dead_mans_switch_cancels_open_orders_and_holds_until_heartbeats_return(venue):
    ex, out, clock = executor_at(venue.url, "execution_limits.deadman_s=3")
    ex.handle(encode(limit(1, 59_000.0)), "o@0")
    ex.handle(encode(limit(2, 61_000.0, side="sell", qty=0.001)), "o@1")  # refused (no BTC): not open
    ex.handle(encode(limit(3, 58_000.0)), "o@2")
    clock.t += 10_000
    ex.poll(clock.t)  # not armed before the first heartbeat
    assert not ex.guard.holds
    ex.handle(encode(Heartbeat(0, "loop", 1, 0)), "o@3")
    clock.t += 3_000
    ex.poll(clock.t)
    assert not ex.guard.holds
    clock.t += 1
    ex.poll(clock.t, caught_up=False)  # messages wait to be read: heartbeats may be among them
    assert not ex.guard.holds
    ex.poll(clock.t)
    assert "deadman" in ex.guard.holds
    assert client(venue.url).fetch_open_orders("BTC/USDT") == []
    assert any(r.action == "cancel_all" and r.level == 3 for r in of(out, "risk_events"))
    ex.handle(encode(order(4)), "o@4")
    assert of(out, "order_events")[-1].reason.startswith("halted (deadman): no heartbeat for 3.0 s")
    ex.handle(encode(Heartbeat(1, "loop", 2, 0)), "o@5")
    assert not ex.guard.holds
    ex.handle(encode(order(5)), "o@6")
    assert of(out, "order_events")[-1].kind == FILLED


def test_each_fill_carries_its_realised_slippage_and_a_quality_row(venue):
    broker = BrokerSettings(bar_interval_ms=1000, spread_bps=0.0)
    ex, out, _ = executor_at(venue.url, broker=broker)
    ex.monitor = SlippageMonitor(SlippageSettings(window=2, min_fills=1))
    ex.handle(encode(order(1, qty=0.05)), "o@0")
    (fill,) = of(out, "fills")
    (row,) = of(out, "execution_quality")
    realised = (fill.price / 60_000.0 - 1.0) * 10_000.0
    assert realised > 0 and fill.slippage_bps == pytest.approx(realised)
    assert (row.order_id, row.reference_price, row.fill_price) == ("ord-1", 60_000.0, fill.price)
    assert row.expected_slippage_bps == pytest.approx(0.0) and row.realised_slippage_bps == pytest.approx(
        realised
    )
    (risk,) = of(out, "risk_events")  # realised > 2 x max(expected, floor 1 bps)
    assert (risk.kind, risk.level) == ("slippage", 2)


def test_a_venue_down_2_minutes_raises_an_alert_and_30_minutes_stops_sending(venue):
    ex, out, clock = executor_at(venue.url, sleep=lambda _s: None)
    ex.handle(encode(limit(1, 59_000.0)), "o@0")  # followed: the poll asks the venue about it
    ex.venue.ex.urls["api"] = ccxt_urls(ex.venue.ex.urls["api"], "http://127.0.0.1:9")  # nobody there
    clock.t += 1_000
    ex.poll(clock.t)  # the first failure
    clock.t += 120_000
    ex.poll(clock.t)
    (alert,) = of(out, "risk_events")
    assert (alert.kind, alert.level, alert.action) == ("venue", 2, "alert")
    clock.t += 1_680_000
    ex.poll(clock.t)
    assert of(out, "risk_events")[-1].action == "stop_sending" and "venue" in ex.guard.holds
    ex.handle(encode(order(2)), "o@1")
    assert of(out, "order_events")[-1].reason.startswith("halted (venue): venue ccxt:binance unreachable")


def test_an_order_given_up_after_network_errors_is_looked_up_at_start(venue):
    from flows.execution_startup import Book, start_up

    given_up = order(1, qty=0.01)  # it reached the venue, the answer did not come back
    params = {"clientOrderId": given_up.order_id}
    client(venue.url).create_order("BTC/USDT", "market", "buy", 0.01, None, params)
    rejected = OrderEvent(
        1, given_up.order_id, "", "BTC/USDT", "buy", REJECTED, 0.01, 0.0, 0.0,
        "venue unreachable: RequestTimeout", "ccxt:binance", 0, 0.0,
    )  # fmt: skip
    ex, out, _ = executor_at(venue.url)
    start_up(ex.venue, "ccxt:binance", Book(orders=[given_up], events=[rejected]), ex, 5)
    assert [(f.order_id, f.qty) for f in of(out, "fills")] == [(given_up.order_id, 0.01)]
    assert [(e.order_id, e.kind) for e in of(out, "order_events")] == [(given_up.order_id, FILLED)]
    assert not [r for r in of(out, "risk_events") if r.action == "external"]
    ex.handle(encode(given_up), "o@0")  # consumed again: not sent again
    assert len(client(venue.url).fetch_orders("BTC/USDT")) == 1


# -- TWAP and iceberg parents worked by the service ---------------------------------------------

ALGO = ("execution_limits.twap_horizon_s=4", "execution_limits.twap_slice_s=1")


def algo_executor(url: str, **broker) -> tuple[Executor, list, Clock]:
    cost = BrokerSettings(bar_interval_ms=1000, twap_threshold=1_000.0, **broker)
    return executor_at(url, *ALGO, broker=cost)


def parent_events(out: list, parent_id: str) -> list:
    return [(e.kind, e.filled_qty, e.leaves_qty) for e in of(out, "order_events") if isinstance(e, OrderEvent)
            and e.order_id == parent_id]  # fmt: skip


def children(out: list, parent_id: str) -> list[Order]:
    return [r for r in of(out, "order_events") if isinstance(r, Order) and r.parent_id == parent_id]


def test_a_twap_parent_is_cut_into_children_of_at_most_10_percent_of_the_slice_before(venue):
    ex, out, clock = algo_executor(venue.url)
    parent = order(1, qty=0.05)  # 3 000 USDT > the threshold: a TWAP parent, nothing sent yet
    ex.handle(encode(parent), "o@0")
    assert client(venue.url).fetch_orders("BTC/USDT") == []
    assert parent_events(out, "ord-1") == [(ACCEPTED, 0.0, 0.05)]
    volumes = [0.03, 0.2, 0.08, 0.3, 0.5, 0.01, 0.4, 0.6, 0.9]  # per 1 s slice from the parent's ts
    sizes = []
    for k, v in enumerate(volumes):
        for j in range(4):  # 4 prints per slice; the first of a slice closes the one before
            before = len(children(out, "ord-1"))
            clock.t += 250
            ex.on_tick("BTC/USDT", parent.ts + k * 1000 + j * 250, 60_000.0, v / 4)
            made = children(out, "ord-1")[before:]
            if made:
                assert j == 0 and k > 0
                (child,) = made
                assert child.qty <= 0.1 * volumes[k - 1] + 1e-12  # participation
                sizes.append(child.qty)
        if not ex.worked.parents:
            break
    kids = children(out, "ord-1")
    assert [c.order_id for c in kids] == [f"ord-1/{n}" for n in range(1, len(kids) + 1)]
    assert all(c.reason == "twap" and c.order_type == MARKET for c in kids)
    fills = of(out, "fills")
    assert sum(f.qty for f in fills) == pytest.approx(0.05) and {f.order_id for f in fills} == {
        c.order_id for c in kids
    }
    events = parent_events(out, "ord-1")
    assert events[0] == (ACCEPTED, 0.0, 0.05) and events[-1][:2] == (FILLED, pytest.approx(0.05))
    for kind, filled, leaves in events[1:-1]:
        assert kind == "partially_filled" and leaves == pytest.approx(0.05 - filled)
    # each child's record is on order-events before its own events (the loop learns it first)
    ids = [r.order_id for r in of(out, "order_events")]
    for c in kids:
        assert ids.index(c.order_id) < max(i for i, x in enumerate(ids) if x == c.order_id)
    sent = [o["clientOrderId"] for o in client(venue.url).fetch_orders("BTC/USDT")]
    assert sorted(sent) == sorted(c.order_id for c in kids) and "ord-1" not in sent


def loop_mirror(out: list, parent: Order):
    """The trading loop's external venue (not connected) after reading the records of ``out``."""
    from flows.external_venue import RemoteVenue

    loop = RemoteVenue.__new__(RemoteVenue)
    loop.__setstate__(
        {"_config": None, "_working": {parent.order_id: [parent, parent.qty]}, "_ours": {parent.order_id},
         "_created": {}, "_asked": set(), "_fills": {}, "_new": {}, "_cancelled": [], "_events": [],
         "_positions": None, "_marks": {}, "_last_order_ts": 0, "_step_ts": 0, "_seq": 0, "_clients": None}
    )  # fmt: skip
    remaining = []
    for table, record in out:
        if table in ("fills", "order_events"):
            loop._take(table, 0, record)
            remaining.append(loop.remaining(parent.order_id))
    return loop, remaining


def test_a_twap_child_over_15_bps_is_skipped_and_the_parent_goes_on(venue):
    from operators.execution.cost_model import taker_slippage_bps

    ex, out, clock = algo_executor(venue.url, impact_coef_bps=30.0)
    parent = order(1, qty=0.05)
    ex.handle(encode(parent), "o@0")
    volumes = [0.01, 0.01, 0.1] + [0.2] * 12  # a spike in slice 2: its 10% is big against the mean
    for k, v in enumerate(volumes):
        clock.t += 1000
        ex.on_tick("BTC/USDT", parent.ts + k * 1000, 60_000.0, v)
    events = [e for e in of(out, "order_events") if isinstance(e, OrderEvent)]
    skipped = [e for e in events if e.kind == CANCELLED]
    assert skipped[0].order_id == "ord-1/3" and all(e.reason.startswith("twap_slippage: ") for e in skipped)
    child = next(c for c in children(out, "ord-1") if c.order_id == "ord-1/3")
    assert child.qty == pytest.approx(0.01)  # 10% of the spike
    assert taker_slippage_bps(ex.broker, child.qty, 1.0, sum(volumes[:3]) / 3) > 15.0
    sent = [o["clientOrderId"] for o in client(venue.url).fetch_orders("BTC/USDT")]
    assert not {e.order_id for e in skipped} & set(sent)
    last_skipped = max(int(e.order_id.rpartition("/")[2]) for e in skipped)
    assert f"ord-1/{last_skipped + 1}" in sent  # the parent went on
    # the trading loop's external venue reads these records as it reads the paper service's
    loop, remaining = loop_mirror(out, parent)
    cancelled = loop.take_cancelled()
    assert {c.order.order_id for c in cancelled} == {e.order_id for e in skipped}
    assert {c.reason for c in cancelled} == {"twap_slippage"}
    assert {o.order_id for o in loop._new["BTC/USDT"]} == {c.order_id for c in children(out, "ord-1")}
    booked = sum(f.qty for f in loop._fills["BTC/USDT"])
    assert booked == pytest.approx(sum(f.qty for f in of(out, "fills")))
    left = [r for r in remaining if r is not None]
    assert left == sorted(left, reverse=True) and left[0] == 0.05  # leaves_qty after each child fill
    assert booked == pytest.approx(0.05) and remaining[-1] is None and loop.open_orders() == []  # filled
    assert loop._left() == ""  # every child final, every final event's quantity in fills: settled
    assert all(r.expected_slippage_bps <= 15.0 for r in of(out, "execution_quality"))
    assert any(r.expected_slippage_bps > 3.0 for r in of(out, "execution_quality"))  # the impact term


def test_an_iceberg_shows_its_display_size_and_refills_when_it_fills(venue):
    ex, out, clock = algo_executor(venue.url)
    parent = limit(1, 59_900.0, qty=0.05)  # 0.05 x 60 000 > the threshold: an iceberg, display 0.005
    ex.handle(encode(parent), "o@0")
    ex_client = client(venue.url)
    shown = []
    for step in range(40):
        opened = ex_client.fetch_open_orders("BTC/USDT")
        assert len(opened) <= 1  # one child at a time
        if opened:
            shown.append(opened[0]["amount"] - opened[0]["filled"])
            assert opened[0]["amount"] <= 0.005 + 1e-12
        if not ex.worked.parents:
            break
        venue.tick(Tick(step, "BTC/USDT", 59_800.0, 0.003))  # fills at most 0.003 of the child
        clock.t += 1_000
        ex.poll(clock.t)
    kids = children(out, "lim-1")
    assert len(kids) == 10 and all(c.qty == pytest.approx(0.005) and c.limit_price == 59_900.0 for c in kids)
    assert max(shown) <= 0.005 + 1e-12 and min(shown) < 0.005  # partly filled children were seen
    fills = of(out, "fills")
    assert sum(f.qty for f in fills) == pytest.approx(0.05) and all(f.price <= 59_900.0 for f in fills)
    events = parent_events(out, "lim-1")
    assert events[-1][:2] == (FILLED, pytest.approx(0.05))
    assert [k for k, _, _ in events[1:-1]] == ["partially_filled"] * (len(events) - 2)


def test_a_cancel_request_and_a_hold_stop_parents_and_their_open_child(venue):
    ex, out, clock = algo_executor(venue.url)
    ex.handle(encode(limit(1, 59_000.0, qty=0.05)), "o@0")
    ex.handle(encode(limit(2, 59_100.0, qty=0.05)), "o@1")
    assert len(client(venue.url).fetch_open_orders("BTC/USDT")) == 2  # lim-1/1 and lim-2/1
    ex.handle(encode(CancelRequest(5, "lim-1", "BTC/USDT")), "o@2")
    assert parent_events(out, "lim-1")[-1] == (CANCELLED, 0.0, 0.0)
    assert [o["clientOrderId"] for o in client(venue.url).fetch_open_orders("BTC/USDT")] == ["lim-2/1"]
    ex.control("pause", "test", clock.t)
    (last,) = [e for e in of(out, "order_events") if isinstance(e, OrderEvent) and e.order_id == "lim-2"][-1:]
    assert last.kind == CANCELLED and last.reason.startswith("halted (pause)")
    assert client(venue.url).fetch_open_orders("BTC/USDT") == [] and not ex.worked.parents


def test_a_parent_killed_after_a_child_was_sent_is_taken_back_at_start_without_reusing_a_child_id(venue):
    from flows.execution_startup import Book, start_up

    first, out, _ = algo_executor(venue.url)
    parent = order(1, qty=0.05)
    first.handle(encode(parent), "o@0")
    for k in range(3):  # slices 0 and 1 close: children ord-1/1 and ord-1/2 go
        first.on_tick("BTC/USDT", parent.ts + k * 1000, 60_000.0, 0.2)
    assert [c.order_id for c in children(out, "ord-1")] == ["ord-1/1", "ord-1/2"]
    # killed right after ord-1/2 reached the venue: its record is on the topic, nothing after it
    cut = next(i for i, (_t, r) in enumerate(out) if isinstance(r, Order) and r.order_id == "ord-1/2") + 1
    on_topics = out[:cut]
    book = Book(
        orders=[parent],
        children=[r for t, r in on_topics if isinstance(r, Order)],
        events=[r for t, r in on_topics if isinstance(r, OrderEvent)],
        fills=[r for t, r in on_topics if isinstance(r, Fill)],
    )
    again, out2, clock = algo_executor(venue.url)
    start_up(again.venue, "ccxt:binance", book, again, clock.t)
    assert [(f.order_id, f.qty) for f in of(out2, "fills")] == [("ord-1/2", pytest.approx(0.0125))]
    assert parent_events(out2, "ord-1") == [("partially_filled", pytest.approx(0.025), pytest.approx(0.025))]
    assert again.worked.parents["ord-1"].worker.children == 2 and not again.guard.holds
    for k in range(3, 8):
        clock.t += 1000
        again.on_tick("BTC/USDT", parent.ts + k * 1000, 60_000.0, 0.2)
    assert [c.order_id for c in children(out2, "ord-1")] == ["ord-1/3", "ord-1/4"]
    assert parent_events(out2, "ord-1")[-1] == (FILLED, pytest.approx(0.05), 0.0)
    sent = Counter(o["clientOrderId"] for o in client(venue.url).fetch_orders("BTC/USDT"))
    assert sent == Counter({f"ord-1/{n}": 1 for n in range(1, 5)})


def test_observed_volume_is_the_mean_volume_of_the_last_closed_slices():
    import numpy as np

    from operators.execution.observed_volume import ObservedVolume, ObservedVolumeSettings

    rng = np.random.default_rng(7)
    ts = np.sort(rng.integers(0, 60_000, 500))
    qty = rng.exponential(2.0, 500)
    v = ObservedVolume(ObservedVolumeSettings(slice_ms=1_000, slices=5))
    for i, (t, q) in enumerate(zip(ts.tolist(), qty.tolist(), strict=True)):
        got = v.update("A/B", t, q)
        current = t // 1000
        first = ts[0] // 1000
        closed = np.arange(max(first, current - 5), current)
        if len(closed) == 0:
            assert got is None
            continue
        sums = [qty[: i + 1][ts[: i + 1] // 1000 == k].sum() for k in closed]
        assert got == pytest.approx(np.mean(sums), rel=1e-12, abs=1e-12)
