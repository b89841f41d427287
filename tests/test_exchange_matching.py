"""The local exchange's matching rules and Binance API layer, without HTTP.

Expected prices and fees are written out from the cost model
(``operators/execution/cost_model.py``): taker slippage ``s = spread_bps *
(1 + vol_slippage_coef * nv) + impact``, a buy at ``last * (1 + s / BP)``
rounded up to the tick, a sell rounded down; fees on the notional.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from flows.config_values import Secret
from infra.exchange.api_keys import ApiKeyProblem, ApiKeys, read_secret_file, resolve_keys
from infra.exchange.binance_api import BinanceApi
from infra.exchange.markets import MarketSpec
from infra.exchange.matching_engine import (
    BUY,
    CANCELED,
    EXPIRED,
    FILLED,
    NEW,
    PARTIALLY_FILLED,
    SELL,
    EngineSettings,
    MatchingEngine,
    NewOrder,
    Placed,
    Refusal,
)
from infra.exchange.state_file import encode_state, load_state, save_state, state_from_json, state_to_json
from operators.execution.cost_model import BP, BrokerSettings, impact_bps
from schemas.records import Tick

COSTS = BrokerSettings(bar_interval_ms=1000)
BTC = MarketSpec("BTC/USDT", tick_size=0.01, step_size=0.0001, min_qty=0.0001, min_notional=5.0)
TAKER, MAKER = COSTS.taker_fee_bps / BP, COSTS.maker_fee_bps / BP
SPREAD = COSTS.spread_bps * (1 + COSTS.vol_slippage_coef * 1.0)  # 3 bps at normalised vol 1
NOW = 1_700_000_000_000


def engine(**changes) -> MatchingEngine:
    settings = EngineSettings(COSTS, **changes)
    return MatchingEngine(settings, (BTC,), {"USDT": 100_000.0, "BTC": 1.0}, now_ms=lambda: NOW)


def order(side: str, kind: str, client: str, qty: str, price: str | None = None, **kw) -> NewOrder:
    tif = kw.pop("tif", "GTC" if kind in ("LIMIT", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT") else "")
    price_d = None if price is None else Decimal(price)
    stop = kw.pop("stop", None)
    return NewOrder("BTCUSDT", side, kind, client, Decimal(qty), None, price_d, stop and Decimal(stop), tif)


def tick(ts: int, price: float, qty: float = 1000.0) -> Tick:
    return Tick(ts, "BTC/USDT", price, qty)


def placed(result: Placed | Refusal) -> Placed:
    assert isinstance(result, Placed), result
    return result


def test_market_buy_fills_at_the_slipped_price_rounded_up_with_the_taker_fee():
    e = engine()
    e.on_tick(tick(0, 60_000.0))  # a big tick: the recent volume makes impact 0
    p = placed(e.place(order(BUY, "MARKET", "m1", "0.5")))
    price = math.ceil(round(60_000.0 * (1 + SPREAD / BP) / 0.01, 6)) * 0.01
    (fill,) = p.fills
    assert (
        p.order.status == FILLED
        and fill.price == pytest.approx(price)
        and fill.price == pytest.approx(60_018.0)
    )
    assert fill.commission == pytest.approx(TAKER * 0.5 * price)
    assert not fill.is_maker and fill.is_buyer and fill.commission_asset == "USDT"
    usdt, btc = e.state.balances["USDT"], e.state.balances["BTC"]
    assert usdt.free == pytest.approx(100_000.0 - 0.5 * price - TAKER * 0.5 * price) and usdt.locked == 0
    assert btc.free == pytest.approx(1.5) and btc.locked == 0


def test_market_sell_rounds_down_and_impact_uses_the_mean_volume_of_completed_bars():
    e = engine()
    for k, qty in enumerate([2.0, 4.0, 6.0]):  # three 1 s bars of volume 2, 4, 6; the fourth has 0.5
        e.on_tick(tick(k * 1000, 50_000.0, qty))
    e.on_tick(tick(3000, 50_000.0, 0.5))
    assert e.recent_volume("BTCUSDT") == pytest.approx(4.0)
    p = placed(e.place(order(SELL, "MARKET", "s1", "0.2")))
    s = SPREAD + impact_bps(COSTS, 0.2, 4.0)
    assert impact_bps(COSTS, 0.2, 4.0) == pytest.approx(10 * math.sqrt(0.05))
    expected = math.floor(round(50_000.0 * (1 - s / BP) / 0.01, 6)) * 0.01
    assert p.fills[0].price == pytest.approx(expected)
    assert e.state.balances["USDT"].free == pytest.approx(100_000.0 + 0.2 * expected * (1 - TAKER))


def test_a_market_order_before_any_tick_is_refused_as_market_closed():
    assert engine().place(order(BUY, "MARKET", "m", "0.1")) == Refusal(-1013, "Market is closed.")


def test_quote_order_qty_buys_what_the_quote_pays_for_fee_included():
    e = engine()
    e.on_tick(tick(0, 100.0, 1e6))
    new = NewOrder("BTCUSDT", BUY, "MARKET", "q", None, Decimal("1000"))
    p = placed(e.place(new))
    fill = p.fills[0]
    assert fill.qty == pytest.approx(math.floor(1000 / (fill.price * (1 + TAKER)) / 0.0001) * 0.0001)
    assert fill.quote_qty + fill.commission <= 1000 + 1e-9
    assert p.order.quote_qty == 1000


def test_resting_limits_fill_at_their_limit_as_maker_best_price_then_oldest_sharing_the_tick_qty():
    e = engine()
    e.on_tick(tick(0, 100.0))
    a = placed(e.place(order(BUY, "LIMIT", "a", "3", "99"))).order
    b = placed(e.place(order(BUY, "LIMIT", "b", "3", "98"))).order
    c = placed(e.place(order(BUY, "LIMIT", "c", "3", "99"))).order
    assert e.state.balances["USDT"].locked == pytest.approx(3 * (99 + 98 + 99) * (1 + TAKER))
    fills = e.on_tick(tick(1, 98.5, qty=4.0))  # reaches a and c (99), not b (98); 4 to share
    assert [(f.order_id, f.qty, f.price, f.is_maker) for f in fills] == [
        (a.order_id, 3, 99, True),
        (c.order_id, 1, 99, True),
    ]
    assert (a.status, c.status, b.status) == (FILLED, PARTIALLY_FILLED, NEW)
    assert fills[1].commission == pytest.approx(MAKER * 99)
    assert e.state.balances["USDT"].locked == pytest.approx((2 * 99 + 3 * 98) * (1 + TAKER))
    cancelled = e.cancel("BTCUSDT", client_id="c")
    assert not isinstance(cancelled, Refusal) and cancelled.status == CANCELED
    assert e.cancel("BTCUSDT", client_id="c") == Refusal(-2011, "Unknown order sent.")
    assert e.state.balances["USDT"].locked == pytest.approx(3 * 98 * (1 + TAKER))
    spent = sum(f.quote_qty + f.commission for f in fills)
    assert e.state.balances["USDT"].free + e.state.balances["USDT"].locked == pytest.approx(100_000 - spent)


def test_without_partial_fills_a_tick_fills_every_order_it_reaches_whole():
    e = engine(partial_fills=False)
    e.on_tick(tick(0, 100.0))
    placed(e.place(order(SELL, "LIMIT", "a", "0.7", "101")))
    fills = e.on_tick(tick(1, 101.0, qty=0.001))
    assert [f.qty for f in fills] == [pytest.approx(0.7)]
    assert e.state.balances["BTC"].free == pytest.approx(0.3) and e.state.balances["BTC"].locked == 0


def test_a_marketable_limit_takes_at_once_at_the_taker_price_capped_at_its_limit():
    e = engine()
    e.on_tick(tick(0, 100.0))
    p = placed(e.place(order(BUY, "LIMIT", "l", "1", "100.01")))  # taker price 100.03 > limit
    assert p.order.status == FILLED and p.fills[0].price == pytest.approx(100.01) and not p.fills[0].is_maker
    q = placed(e.place(order(BUY, "LIMIT", "l2", "1", "101")))
    assert q.fills[0].price == pytest.approx(100.03)


def test_ioc_and_fok_expire_when_not_marketable_and_limit_maker_is_refused_when_it_would_take():
    e = engine()
    e.on_tick(tick(0, 100.0))
    for tif in ("IOC", "FOK"):
        p = placed(e.place(order(BUY, "LIMIT", tif, "1", "99", tif=tif)))
        assert p.order.status == EXPIRED and not p.fills
    assert e.state.balances["USDT"].locked == 0
    refused = e.place(order(BUY, "LIMIT_MAKER", "mk", "1", "100", tif=""))
    assert refused == Refusal(-2010, "Order would immediately match and take.")
    assert placed(e.place(order(BUY, "LIMIT_MAKER", "mk2", "1", "99.5", tif=""))).order.status == NEW


@pytest.mark.parametrize(
    ("kind", "side", "stop", "later", "fires"),
    [
        ("STOP_LOSS", SELL, "95", 95.0, True),
        ("STOP_LOSS", SELL, "95", 96.0, False),
        ("STOP_LOSS", BUY, "105", 105.5, True),
        ("TAKE_PROFIT", SELL, "105", 105.0, True),
        ("TAKE_PROFIT", BUY, "95", 96.0, False),
        ("TAKE_PROFIT", BUY, "95", 94.0, True),
    ],
)
def test_stops_fire_on_a_tick_at_or_through_their_stop_price_as_market_orders(kind, side, stop, later, fires):
    e = engine()
    e.on_tick(tick(0, 100.0))
    p = placed(e.place(order(side, kind, "st", "0.1", stop=stop)))
    assert p.order.status == NEW and not p.order.working and not p.fills
    fills = e.on_tick(tick(1, later))
    assert bool(fills) == fires
    if fires:
        s = SPREAD / BP
        expected = later * (1 + s) if side == BUY else later * (1 - s)
        assert fills[0].price == pytest.approx(expected, abs=0.01) and not fills[0].is_maker
        assert p.order.status == FILLED and p.order.working_time == NOW


def test_a_stop_limit_works_as_a_limit_once_triggered_and_a_stop_that_would_fire_now_is_refused():
    e = engine()
    e.on_tick(tick(0, 100.0))
    assert e.place(order(SELL, "STOP_LOSS", "x", "0.1", stop="100")) == Refusal(
        -2010, "Stop price would trigger immediately."
    )
    takes = placed(e.place(order(SELL, "STOP_LOSS_LIMIT", "sl1", "0.1", "96", stop="97"))).order
    rests = placed(e.place(order(SELL, "STOP_LOSS_LIMIT", "sl2", "0.1", "98", stop="97"))).order
    (taken,) = e.on_tick(tick(1, 96.5))  # both trigger; 96 is marketable at 96.5, 98 is not
    assert taken.order_id == takes.order_id and not taken.is_maker
    assert taken.price == pytest.approx(max(96.0, math.floor(96.5 * (1 - SPREAD / BP) / 0.01) * 0.01))
    assert rests.working and rests.status == NEW
    (fill,) = e.on_tick(tick(2, 98.2))
    assert fill.order_id == rests.order_id and fill.price == 98 and fill.is_maker


def test_duplicate_client_ids_all_orders_or_open_orders_only():
    strict, binance = engine(), engine(unique_client_ids="open")
    for e in (strict, binance):
        e.on_tick(tick(0, 100.0))
        placed(e.place(order(BUY, "MARKET", "dup", "0.1")))
        placed(e.place(order(BUY, "LIMIT", "rest", "0.1", "90")))
        assert e.place(order(BUY, "LIMIT", "rest", "0.1", "90")) == Refusal(-2010, "Duplicate order sent.")
    assert strict.place(order(BUY, "MARKET", "dup", "0.1")) == Refusal(-2010, "Duplicate order sent.")
    assert isinstance(binance.place(order(BUY, "MARKET", "dup", "0.1")), Placed)  # the first one is done


@pytest.mark.parametrize(
    ("qty", "price", "failure"),
    [
        ("0.00015", "100", "LOT_SIZE"),
        ("10000", "100", "LOT_SIZE"),
        ("0.01", "100.001", "PRICE_FILTER"),
        ("0.01", "100", "NOTIONAL"),
    ],
)
def test_filters_refuse_with_binance_messages(qty, price, failure):
    e = engine()
    assert e.place(order(BUY, "LIMIT", "f", qty, price)) == Refusal(-1013, f"Filter failure: {failure}")


def test_insufficient_balance_is_refused_and_nothing_changes():
    e = engine()
    e.on_tick(tick(0, 100.0))
    before = encode_state(e.state)
    refused = e.place(order(SELL, "LIMIT", "big", "2", "150"))
    assert refused == Refusal(-2010, "Account has insufficient balance for requested action.")
    assert e.place(order(BUY, "LIMIT", "big2", "1000", "100")) == refused
    assert encode_state(e.state) == before


def test_balances_stay_consistent_over_a_random_session_and_a_saved_state_continues_identically(tmp_path):
    """Oracle: each asset's free + locked equals the start plus the trades' flows; locked equals what
    the open orders hold; nothing is negative. Halfway the state goes through the file and back."""
    rng = random.Random(7)
    a = engine()
    price, clients = 100.0, 0
    ops = []
    for step in range(600):
        price = round(price * (1 + rng.gauss(0, 0.002)), 2)
        ops.append(("tick", tick(step, price, rng.choice([0.05, 0.3, 2.0]))))
        if rng.random() < 0.4:
            clients += 1
            side, kind = (
                rng.choice([BUY, SELL]),
                rng.choice(["MARKET", "LIMIT", "LIMIT", "STOP_LOSS", "TAKE_PROFIT"]),
            )
            qty = f"{rng.choice([0.05, 0.1, 0.3]):.4f}"
            off = rng.choice([-0.01, -0.003, 0.003, 0.01])
            args = {"price": f"{price * (1 + off):.2f}"} if kind == "LIMIT" else {}
            if kind in ("STOP_LOSS", "TAKE_PROFIT"):
                args["stop"] = f"{price * (1 + off):.2f}"
            ops.append(("place", order(side, kind, f"c{clients}", qty, **args)))
        if rng.random() < 0.1:
            ops.append(("cancel", rng.randrange(1, clients + 2)))

    def run(e: MatchingEngine, todo) -> list:
        out = []
        for op, arg in todo:
            if op == "tick":
                out += e.on_tick(arg)
            elif op == "place":
                out.append(e.place(arg))
            else:
                out.append(e.cancel("BTCUSDT", order_id=arg))
        return out

    half = len(ops) // 2
    first = run(a, ops[:half])
    save_state(str(tmp_path / "s.json"), encode_state(a.state))
    b = MatchingEngine(a.settings, (BTC,), {}, lambda: NOW, load_state(str(tmp_path / "s.json")))
    assert run(a, ops[half:]) == run(b, ops[half:])
    assert encode_state(a.state) == encode_state(b.state)
    assert any(isinstance(x, Placed) for x in first)

    flows = {"USDT": 100_000.0, "BTC": 1.0}
    for t in a.state.trades:
        sign = 1 if t.is_buyer else -1
        flows["BTC"] += sign * t.qty
        flows["USDT"] -= sign * t.quote_qty + t.commission
    open_quote = sum(o.locked for o in a.open_orders() if o.side == BUY)
    open_base = sum(o.locked for o in a.open_orders() if o.side == SELL)
    for asset, held in (("USDT", open_quote), ("BTC", open_base)):
        bal = a.state.balances[asset]
        assert bal.free + bal.locked == pytest.approx(flows[asset], abs=1e-6)
        assert bal.locked == pytest.approx(held, abs=1e-6) and bal.free >= -1e-9 and bal.locked >= -1e-9
    assert len(a.state.trades) > 20 and {t.is_maker for t in a.state.trades} == {True, False}


def test_state_json_round_trip_is_exact():
    e = engine()
    e.on_tick(tick(0, 100.0))
    e.place(order(BUY, "LIMIT", "a", "1", "99"))
    e.place(order(BUY, "MARKET", "b", "0.5"))
    assert state_to_json(state_from_json(state_to_json(e.state))) == state_to_json(e.state)


# -- the API layer --------------------------------------------------------------------------------


KEYS = ApiKeys(Secret("key-" + "a" * 60), Secret("secret-" + "b" * 57))


def api(now: int = NOW) -> BinanceApi:
    import threading

    e = engine()
    e.on_tick(tick(0, 100.0))
    return BinanceApi(e, KEYS, lambda: now, threading.Lock())


def signed(params: dict, secret: str = KEYS.secret.reveal(), ts: int = NOW) -> str:
    query = urlencode({**params, "timestamp": ts})
    sig = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    return f"{query}&signature={sig}"


HEADERS = {"X-MBX-APIKEY": KEYS.key.reveal()}


def test_signed_requests_check_key_signature_and_time_in_binance_order():
    a = api()
    ok = a.handle("GET", "/api/v3/account", signed({}), "", HEADERS)
    assert ok.status == 200 and {b["asset"] for b in ok.body["balances"]} == {"USDT", "BTC"}
    cases = [
        ({}, signed({}), 401, -2014),
        ({"x-mbx-apikey": "other"}, signed({}), 401, -2015),
        (HEADERS, signed({}, secret="wrong"), 400, -1022),
        (HEADERS, signed({}, ts=NOW - 5001), 400, -1021),
        (HEADERS, signed({}, ts=NOW + 1001), 400, -1021),
        (HEADERS, signed({"recvWindow": 60001}), 400, -1131),
        (HEADERS, urlencode({"timestamp": NOW}), 400, -1102),
    ]
    for headers, query, status, code in cases:
        reply = a.handle("GET", "/api/v3/account", query, "", headers)
        assert (reply.status, reply.body["code"]) == (status, code), (headers, query)
    assert (
        a.handle("GET", "/api/v3/account", signed({"recvWindow": 10_000}, ts=NOW - 9000), "", HEADERS).status
        == 200
    )


def test_a_signed_body_is_checked_like_a_query_and_order_parameters_get_binance_errors():
    a = api()
    body = signed(
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.1", "newClientOrderId": "z1"}
    )
    reply = a.handle("POST", "/api/v3/order", "", body, HEADERS)
    assert reply.status == 200 and reply.body["status"] == "FILLED" and reply.body["clientOrderId"] == "z1"
    assert len(reply.body["fills"]) == 1
    again = a.handle("POST", "/api/v3/order", "", body, HEADERS)
    assert again.body == {"code": -2010, "msg": "Duplicate order sent."}
    base = {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "quantity": "1",
        "price": "99",
    }
    cases = [
        ({"symbol": "NOPE"}, -1121),
        ({"side": "UP"}, -1117),
        ({"type": "OCO"}, -1116),
        ({"timeInForce": "GTD"}, -1115),
        ({"quantity": "1e3"}, -1100),
        ({"quantity": "0.000000001"}, -1111),
        ({"quantity": "1.00005"}, -1013),
        ({"price": ""}, -1102),
        ({"newClientOrderId": "has space"}, -1100),
        ({"type": "MARKET", "timeInForce": ""}, -1106),  # a MARKET order with a price
    ]
    for change, code in cases:
        reply = a.handle("POST", "/api/v3/order", "", signed({**base, **change}), HEADERS)
        assert reply.status == 400 and reply.body["code"] == code, change
    assert a.handle("GET", "/api/v3/nothing", "", "", {}).status == 404


def test_queries_page_like_binance_and_cancel_answers_carry_the_original_client_id():
    a = api()
    for i in range(5):
        params = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
        a.handle(
            "POST",
            "/api/v3/order",
            "",
            signed({**params, "quantity": "1", "price": f"9{i}", "newClientOrderId": f"o{i}"}),
            HEADERS,
        )
    everything = a.handle("GET", "/api/v3/allOrders", signed({"symbol": "BTCUSDT"}), "", HEADERS).body
    assert [o["clientOrderId"] for o in everything] == [f"o{i}" for i in range(5)]
    newest = a.handle("GET", "/api/v3/allOrders", signed({"symbol": "BTCUSDT", "limit": 2}), "", HEADERS).body
    assert [o["orderId"] for o in newest] == [4, 5]
    after = a.handle(
        "GET", "/api/v3/allOrders", signed({"symbol": "BTCUSDT", "orderId": 2, "limit": 2}), "", HEADERS
    ).body
    assert [o["orderId"] for o in after] == [2, 3]
    got = a.handle(
        "GET", "/api/v3/order", signed({"symbol": "BTCUSDT", "origClientOrderId": "o3"}), "", HEADERS
    )
    assert got.body["orderId"] == 4 and got.body["status"] == "NEW" and got.body["isWorking"] is True
    gone = a.handle("GET", "/api/v3/order", signed({"symbol": "BTCUSDT", "orderId": 99}), "", HEADERS)
    assert gone.body == {"code": -2013, "msg": "Order does not exist."}
    cancel = a.handle(
        "DELETE", "/api/v3/order", signed({"symbol": "BTCUSDT", "orderId": 1}), "", HEADERS
    ).body
    assert (
        cancel["origClientOrderId"] == "o0"
        and cancel["status"] == "CANCELED"
        and cancel["clientOrderId"] != "o0"
    )
    rest = a.handle("DELETE", "/api/v3/openOrders", signed({"symbol": "BTCUSDT"}), "", HEADERS).body
    assert sorted(o["origClientOrderId"] for o in rest) == ["o1", "o2", "o3", "o4"]
    none = a.handle("DELETE", "/api/v3/openOrders", signed({"symbol": "BTCUSDT"}), "", HEADERS)
    assert none.body == {"code": -2011, "msg": "Unknown order sent."}


def test_keys_come_from_the_environment_or_a_file_and_never_show(tmp_path):
    env = {"QBTC_VENUE_API_KEY": "kkk", "QBTC_VENUE_API_SECRET": "sss"}
    keys = resolve_keys(env, None, None)
    assert "sss" not in repr(keys) and "sss" not in str(keys.secret) and keys.secret.reveal() == "sss"
    made = resolve_keys({}, None, str(tmp_path / "keys.env"))
    assert (tmp_path / "keys.env").stat().st_mode & 0o777 == 0o600
    assert read_secret_file(str(tmp_path / "keys.env")) == made and made.key.reveal() != made.secret.reveal()
    with pytest.raises(ApiKeyProblem, match="QBTC_VENUE_API_KEY"):
        resolve_keys({}, None, None)
