"""The local exchange over HTTP with the real ccxt ``binance`` client (sync and async), its tick feeds
and the ``qbtc venue`` commands.

Expected fills are written out from the paper cost model: with a large tick
(no impact) a taker pays ``s = spread_bps * (1 + vol_slippage_coef)`` = 3 bps
over the last price, rounded up to the tick; fees 10 bps taker, 2 bps maker,
in USDT.
"""

from __future__ import annotations

import asyncio
import csv
import math
import os
import subprocess
import sys
import time

import ccxt
import ccxt.async_support as accxt
import pytest

from infra.exchange.api_keys import KEY_ENV, SECRET_ENV, ApiKeys
from infra.exchange.binance_api import ccxt_urls
from infra.exchange.markets import MarketSpec
from infra.exchange.server import RunningVenue, default_settings, start_venue
from operators.execution.cost_model import BP
from schemas.records import Tick

KEYS = ApiKeys.generate()
TAKER, MAKER, SPREAD = 10 / BP, 2 / BP, 3 / BP
MARKETS = (
    MarketSpec("BTC/USDT", tick_size=0.01, step_size=0.0001, min_qty=0.0001, min_notional=5),
    MarketSpec("ETH/USDT", tick_size=0.01, step_size=0.001, min_qty=0.001, min_notional=5),
)


def taker_buy(last: float) -> float:
    return math.ceil(round(last * (1 + SPREAD) / 0.01, 6)) * 0.01


@pytest.fixture
def venue(tmp_path):
    v = start_venue(default_settings(port=0, markets=MARKETS, balances={"USDT": 100_000.0}), KEYS)
    v.tick(Tick(0, "BTC/USDT", 60_000.0, 1000.0))
    yield v
    v.stop()


def client(url: str, keys: ApiKeys = KEYS, **options) -> ccxt.binance:
    ex = ccxt.binance({"apiKey": keys.key.reveal(), "secret": keys.secret.reveal(), "options": options})
    ex.urls["api"] = ccxt_urls(ex.urls["api"], url)
    return ex


@pytest.fixture
def ex(venue):
    return client(venue.url)


def test_load_markets_reads_precision_and_limits_from_the_filters(ex):
    markets = ex.load_markets()
    btc = markets["BTC/USDT"]
    assert sorted(markets) == ["BTC/USDT", "ETH/USDT"] and btc["spot"] and btc["active"]
    assert btc["precision"]["amount"] == 0.0001 and btc["precision"]["price"] == 0.01
    assert btc["limits"]["amount"]["min"] == 0.0001 and btc["limits"]["cost"]["min"] == 5
    lean = client(ex.urls["api"]["public"].removesuffix("/api/v3"), fetchCurrencies=False, fetchMargins=False)
    lean.options["fetchMarkets"] = {"types": ["spot"]}
    assert sorted(lean.load_markets()) == ["BTC/USDT", "ETH/USDT"]


def test_a_market_order_fills_with_the_cost_model_and_balances_agree_with_the_trades(ex):
    assert ex.fetch_balance()["total"]["USDT"] == 100_000
    order = ex.create_order("BTC/USDT", "market", "buy", 0.05, None, {"clientOrderId": "loop-1"})
    price = taker_buy(60_000.0)
    assert order["status"] == "closed" and order["clientOrderId"] == "loop-1"
    assert order["filled"] == pytest.approx(0.05) and order["average"] == pytest.approx(price)
    (trade,) = ex.fetch_my_trades("BTC/USDT")
    assert trade["order"] == order["id"] and trade["side"] == "buy" and trade["takerOrMaker"] == "taker"
    assert trade["price"] == pytest.approx(price) and trade["amount"] == pytest.approx(0.05)
    assert trade["fee"]["currency"] == "USDT" and trade["fee"]["cost"] == pytest.approx(TAKER * 0.05 * price)
    info = trade["info"]
    assert {"id", "orderId", "price", "qty", "quoteQty", "commission", "commissionAsset", "time"} <= set(info)
    assert info["isBuyer"] is True and info["isMaker"] is False
    balance = ex.fetch_balance()
    spent = trade["cost"] + trade["fee"]["cost"]
    assert balance["USDT"]["total"] == pytest.approx(100_000 - spent, abs=1e-6)
    assert balance["BTC"]["free"] == pytest.approx(0.05) and balance["USDT"]["used"] == 0


def test_a_reused_client_order_id_is_refused_with_binances_duplicate_error(ex):
    ex.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": "same"})
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent."):
        ex.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": "same"})
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent."):
        ex.create_order("BTC/USDT", "limit", "buy", 0.01, 50_000, {"clientOrderId": "same"})
    assert len(ex.fetch_my_trades("BTC/USDT")) == 1 and ex.fetch_open_orders("BTC/USDT") == []


def test_a_limit_order_rests_fills_partly_on_a_smaller_tick_and_is_cancelled(venue, ex):
    order = ex.create_order("BTC/USDT", "limit", "buy", 0.3, 59_000, {"clientOrderId": "lim-1"})
    assert order["status"] == "open" and order["filled"] == 0
    (listed,) = ex.fetch_open_orders("BTC/USDT")
    assert listed["id"] == order["id"] and listed["clientOrderId"] == "lim-1" and listed["price"] == 59_000
    assert ex.fetch_order(order["id"], "BTC/USDT")["status"] == "open"
    assert ex.fetch_order(None, "BTC/USDT", {"clientOrderId": "lim-1"})["id"] == order["id"]
    assert ex.fetch_balance()["USDT"]["used"] == pytest.approx(0.3 * 59_000 * (1 + TAKER))
    venue.tick(Tick(1000, "BTC/USDT", 59_000.0, 0.1))  # at the limit, a tenth of the order
    part = ex.fetch_order(order["id"], "BTC/USDT")
    assert (
        part["status"] == "open"
        and part["filled"] == pytest.approx(0.1)
        and part["remaining"] == pytest.approx(0.2)
    )
    cancelled = ex.cancel_order(order["id"], "BTC/USDT")
    assert cancelled["status"] == "canceled" and cancelled["info"]["origClientOrderId"] == "lim-1"
    assert ex.fetch_open_orders("BTC/USDT") == []
    with pytest.raises(ccxt.OrderNotFound):
        ex.cancel_order(order["id"], "BTC/USDT")
    (trade,) = ex.fetch_my_trades("BTC/USDT")
    assert trade["takerOrMaker"] == "maker" and trade["price"] == 59_000
    assert trade["fee"]["cost"] == pytest.approx(MAKER * 0.1 * 59_000)
    balance = ex.fetch_balance()
    assert balance["USDT"]["used"] == 0
    assert balance["USDT"]["free"] == pytest.approx(100_000 - 0.1 * 59_000 * (1 + MAKER), abs=1e-6)


def test_stop_loss_orders_wait_for_their_trigger_and_cancel_all_clears_a_symbol(venue, ex):
    ex.create_order("BTC/USDT", "market", "buy", 0.2, None, {"clientOrderId": "entry"})
    stop = ex.create_order(
        "BTC/USDT", "market", "sell", 0.1, None, {"triggerPrice": 58_000, "clientOrderId": "stop"}
    )
    assert stop["status"] == "open" and stop["triggerPrice"] == 58_000 and stop["info"]["type"] == "STOP_LOSS"
    target = ex.create_order("BTC/USDT", "limit", "sell", 0.1, 62_000, {"clientOrderId": "target"})
    assert ex.fetch_balance()["BTC"]["used"] == pytest.approx(0.2)
    venue.tick(Tick(1000, "BTC/USDT", 57_900.0, 1000.0))
    done = ex.fetch_order(stop["id"], "BTC/USDT")
    assert done["status"] == "closed" and done["average"] == pytest.approx(57_900 * (1 - SPREAD), abs=0.01)
    with pytest.raises(ccxt.OrderImmediatelyFillable):
        ex.create_order("BTC/USDT", "market", "sell", 0.05, None, {"triggerPrice": 58_000})
    cancelled = ex.cancel_all_orders("BTC/USDT")
    assert [o["info"]["origClientOrderId"] for o in cancelled] == ["target"]
    assert ex.fetch_order(target["id"], "BTC/USDT")["status"] == "canceled"
    assert [o["clientOrderId"] for o in ex.fetch_orders("BTC/USDT")] == ["entry", "stop", "target"]


def test_refusals_map_to_ccxt_exceptions(venue, ex):
    with pytest.raises(ccxt.InsufficientFunds):
        ex.create_order("BTC/USDT", "market", "buy", 2.0, None)
    with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):
        ex.create_order("BTC/USDT", "limit", "buy", 9001, 1)
    with pytest.raises(ccxt.BadRequest, match="NOTIONAL"):
        ex.create_order("BTC/USDT", "limit", "buy", 0.0001, 100)
    with pytest.raises(ccxt.MarketClosed):
        ex.create_order("ETH/USDT", "market", "buy", 0.1, None)  # no ETH tick yet
    wrong_secret = client(venue.url, ApiKeys(KEYS.key, ApiKeys.generate().secret))
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        wrong_secret.load_markets()  # its first signed call: the assets (sapi capital/config/getall)
    public_only = client(
        venue.url, ApiKeys(KEYS.key, ApiKeys.generate().secret), fetchCurrencies=False, fetchMargins=False
    )
    public_only.load_markets()  # no signed call without currencies and margins: public ones answer anyone
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        public_only.fetch_balance()
    wrong_key = client(venue.url, ApiKeys.generate())
    with pytest.raises(ccxt.AuthenticationError, match="-2015"):
        wrong_key.fetch_balance()


def test_market_data_endpoints_show_the_last_tick(venue, ex):
    venue.tick(Tick(1000, "BTC/USDT", 60_100.0, 2.0))
    ticker = ex.fetch_ticker("BTC/USDT")
    assert ticker["last"] == 60_100 and ticker["high"] == 60_100 and ticker["low"] == 60_000
    book = ex.fetch_order_book("BTC/USDT")
    assert book["bids"][0][0] < 60_100 < book["asks"][0][0]
    assert ex.fetch_time() > 0 and ex.fetch_status()["status"] == "ok"


def test_a_restarted_venue_keeps_orders_balances_trades_and_used_client_ids(tmp_path):
    settings = default_settings(port=0, markets=MARKETS, state_file=str(tmp_path / "state.json"))
    with start_venue(settings, KEYS) as v:
        v.tick(Tick(0, "BTC/USDT", 60_000.0, 1000.0))
        ex = client(v.url)
        ex.create_order("BTC/USDT", "market", "buy", 0.1, None, {"clientOrderId": "before"})
        resting = ex.create_order("BTC/USDT", "limit", "buy", 0.1, 55_000, {"clientOrderId": "resting"})
        balance = ex.fetch_balance()["total"]
    with start_venue(settings, KEYS) as v:
        ex = client(v.url)
        assert ex.fetch_balance()["total"] == balance
        assert [o["id"] for o in ex.fetch_open_orders("BTC/USDT")] == [resting["id"]]
        assert len(ex.fetch_my_trades("BTC/USDT")) == 1
        with pytest.raises(ccxt.InvalidOrder, match="Duplicate"):
            ex.create_order("BTC/USDT", "market", "buy", 0.1, None, {"clientOrderId": "before"})
        later = ex.create_order("BTC/USDT", "market", "buy", 0.1, None, {"clientOrderId": "after"})
        assert int(later["id"]) == int(resting["id"]) + 1


def test_the_async_ccxt_client_works_too(venue):
    async def session() -> tuple[dict, dict]:
        ex = accxt.binance({"apiKey": KEYS.key.reveal(), "secret": KEYS.secret.reveal()})
        ex.urls["api"] = ccxt_urls(ex.urls["api"], venue.url)
        try:
            await ex.load_markets()
            order = await ex.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": "a-1"})
            return order, await ex.fetch_order(order["id"], "BTC/USDT")
        finally:
            await ex.close()

    order, fetched = asyncio.run(session())
    assert order["status"] == fetched["status"] == "closed" and fetched["clientOrderId"] == "a-1"


def _ticks_file(path) -> list[Tick]:
    ticks = [
        Tick(1_700_000_000_000 + 250 * i, "BTC/USDT" if i % 3 else "ETH/USDT", 100.0 + i, 0.5)
        for i in range(40)
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "symbol", "price", "qty"])
        w.writerows([[t.ts, t.symbol, t.price, t.qty] for t in ticks])
    return ticks


def _wait(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_tick_file_feeds_the_prices_and_fills_resting_orders(tmp_path):
    ticks = _ticks_file(tmp_path / "ticks.csv")
    settings = default_settings(port=0, markets=MARKETS, ticks=(str(tmp_path / "ticks.csv"),), rate=math.inf)
    v: RunningVenue = start_venue(settings, KEYS)
    try:
        (feed,) = v.feeds
        _wait(feed.finished.is_set)
        assert feed.ticks == len(ticks) and feed.skipped == 0
        ex = client(v.url)
        last = {t.symbol: t.price for t in ticks}
        assert ex.fetch_ticker("BTC/USDT")["last"] == last["BTC/USDT"]
        assert ex.fetch_ticker("ETH/USDT")["last"] == last["ETH/USDT"]
    finally:
        v.stop()


@pytest.mark.kafka
def test_the_ticks_topic_feeds_the_prices_from_its_end_or_its_beginning(kafka_bootstrap, tmp_path):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from schemas.codec import encode

    topic = f"venue-{os.getpid()}-{time.monotonic_ns()}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept: the future needs its handle
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def publish(prices) -> None:
        for i, price in enumerate(prices):
            tick = Tick(1000 * i, "BTC/USDT", price, 1.0, "buy", f"{price}", "test")
            producer.produce(topic, key=b"BTC/USDT", value=encode(tick))
        assert producer.flush(30) == 0

    publish([100.0, 101.0, 102.0])  # before the venue: only a read from the beginning sees them
    source = (f"kafka://{kafka_bootstrap}/{topic}",)
    live = start_venue(default_settings(port=0, markets=MARKETS, ticks=source), KEYS)
    replay = start_venue(default_settings(port=0, markets=MARKETS, ticks=source, from_beginning=True), KEYS)
    try:
        (feed,), (all_feed,) = live.feeds, replay.feeds
        _wait(feed.assigned.is_set)
        publish([200.0 + i for i in range(20)])
        producer.produce(topic, key=b"BTC/USDT", value=b"{not a tick")
        assert producer.flush(30) == 0
        _wait(lambda: feed.ticks == 20 and feed.skipped == 1)
        _wait(lambda: all_feed.ticks == 23 and all_feed.skipped == 1)
        assert client(live.url).fetch_ticker("BTC/USDT")["last"] == 219.0
        assert (
            live.engine.state.tapes["BTCUSDT"].low == 200.0
            and replay.engine.state.tapes["BTCUSDT"].low == 100.0
        )
    finally:
        live.stop()
        replay.stop()


def test_qbtc_venue_up_status_down_in_the_background(tmp_path):
    data = tmp_path / "venue"
    ticks = _ticks_file(tmp_path / "ticks.csv")
    env = {**os.environ, KEY_ENV: KEYS.key.reveal(), SECRET_ENV: KEYS.secret.reveal()}

    def qbtc(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "flows.cli", "venue", *args, "--data-dir", str(data)]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    started = qbtc(
        "up", "--port", "0", "--ticks", str(tmp_path / "ticks.csv"), "--rate", "inf", "--market", "BTC/USDT"
    )
    assert started.returncode == 0, started.stderr
    assert "venue: up at http://127.0.0.1:" in started.stdout and "the environment" in started.stdout
    url = started.stdout.split("up at ")[1].split()[0]
    try:
        assert qbtc("status").returncode == 0
        assert qbtc("up").stdout.startswith("venue: already up")
        ex = client(url)
        _wait(
            lambda: (
                ex.fetch_ticker("BTC/USDT")["last"] == [t for t in ticks if t.symbol == "BTC/USDT"][-1].price
            )
        )
        ex.create_order("BTC/USDT", "market", "buy", 0.5, None, {"clientOrderId": "cli-1"})
    finally:
        stopped = qbtc("down")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert qbtc("status").returncode == 1
    shown = started.stdout + started.stderr + stopped.stdout + (data / "venue.log").read_text()
    assert KEYS.secret.reveal() not in shown and KEYS.key.reveal() not in shown
    assert "POST /api/v3/order -> 200" in (data / "venue.log").read_text()


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--market", "BTC/USDT:lot=1"], "unknown key 'lot'"),
        (["--ticks", "missing.csv"], "no such file"),
        (["--balance", "USDT"], "ASSET=AMOUNT"),
        (["--set", "execution.taker_fee_bps=-1"], "execution.taker_fee_bps"),
    ],
)
def test_qbtc_venue_refuses_bad_options_with_one_line(tmp_path, option, words):
    cmd = [sys.executable, "-m", "flows.cli", "venue", "up", "--data-dir", str(tmp_path), *option]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and words in bad.stderr
    assert not (tmp_path / "venue.pid").exists()
