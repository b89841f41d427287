"""Binance spot REST JSON shapes of the local exchange's orders, fills, account and market data.

Amounts are strings with 8 decimals, times integer epoch ms, as Binance
writes them. Market data is what the venue knows from ticks: the last price,
and since the venue started (not a rolling 24 hours) the open, high, low,
volume and count; the book is synthetic: one level each side at the last
price -/+ half the cost model's spread proxy (on the tick grid), of the
recent volume per bar.
"""

from __future__ import annotations

from infra.exchange.markets import MarketSpec, amount, price_to_tick
from infra.exchange.matching_engine import STOPS, MatchingEngine, Tape, VenueOrder, VenueTrade
from operators.execution.cost_model import BP

ZERO = amount(0.0)


def _core(o: VenueOrder) -> dict:
    return {
        "symbol": o.symbol,
        "orderId": o.order_id,
        "orderListId": -1,
        "clientOrderId": o.client_id,
    }


def _amounts(o: VenueOrder) -> dict:
    out = {
        "price": amount(o.price),
        "origQty": amount(o.qty),
        "executedQty": amount(o.executed),
        "cummulativeQuoteQty": amount(o.quote_executed),
        "status": o.status,
        "timeInForce": o.time_in_force,
        "type": o.type,
        "side": o.side,
    }
    if o.type in STOPS:
        out["stopPrice"] = amount(o.stop_price)
    return out


def fill_json(t: VenueTrade) -> dict:
    """A fill inside a FULL order response."""
    return {
        "price": amount(t.price),
        "qty": amount(t.qty),
        "commission": amount(t.commission),
        "commissionAsset": t.commission_asset,
        "tradeId": t.trade_id,
    }


def new_order_json(o: VenueOrder, fills: tuple[VenueTrade, ...], resp_type: str) -> dict:
    """``POST /api/v3/order``'s answer: ``ACK``, ``RESULT`` or ``FULL`` (with the fills made at once)."""
    out = {**_core(o), "transactTime": o.time}
    if resp_type == "ACK":
        return out
    out |= _amounts(o)
    out |= {
        "origQuoteOrderQty": amount(o.quote_qty),
        "workingTime": o.working_time,
        "selfTradePreventionMode": "NONE",
    }
    if resp_type == "FULL":
        out["fills"] = [fill_json(t) for t in fills]
    return out


def order_json(o: VenueOrder) -> dict:
    """``GET /api/v3/order``, ``openOrders`` and ``allOrders`` entries."""
    return {
        **_core(o),
        **_amounts(o),
        "stopPrice": amount(o.stop_price),
        "icebergQty": ZERO,
        "time": o.time,
        "updateTime": o.update_time,
        "isWorking": o.working_time >= 0,
        "workingTime": o.working_time,
        "origQuoteOrderQty": amount(o.quote_qty),
        "selfTradePreventionMode": "NONE",
    }


def cancel_json(o: VenueOrder) -> dict:
    """``DELETE /api/v3/order`` (and each entry of ``DELETE openOrders``): ``clientOrderId`` is the
    cancel request's own id, the order's is ``origClientOrderId``."""
    return {
        "symbol": o.symbol,
        "origClientOrderId": o.client_id,
        "orderId": o.order_id,
        "orderListId": -1,
        "clientOrderId": o.cancel_client_id,
        "transactTime": o.update_time,
        **_amounts(o),
        "selfTradePreventionMode": "NONE",
    }


def trade_json(t: VenueTrade) -> dict:
    """``GET /api/v3/myTrades`` entries."""
    return {
        "symbol": t.symbol,
        "id": t.trade_id,
        "orderId": t.order_id,
        "orderListId": -1,
        "price": amount(t.price),
        "qty": amount(t.qty),
        "quoteQty": amount(t.quote_qty),
        "commission": amount(t.commission),
        "commissionAsset": t.commission_asset,
        "time": t.time,
        "isBuyer": t.is_buyer,
        "isMaker": t.is_maker,
        "isBestMatch": True,
    }


def account_json(engine: MatchingEngine, now: int, omit_zero: bool) -> dict:
    """``GET /api/v3/account``: commissions (in bps, as Binance) and every asset's free and locked."""
    costs = engine.settings.costs
    balances = [
        {"asset": asset, "free": amount(b.free), "locked": amount(b.locked)}
        for asset, b in sorted(engine.state.balances.items())
        if not omit_zero or amount(b.free) != ZERO or amount(b.locked) != ZERO
    ]
    return {
        "makerCommission": round(costs.maker_fee_bps),
        "takerCommission": round(costs.taker_fee_bps),
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {
            "maker": amount(costs.maker_fee_bps / BP),
            "taker": amount(costs.taker_fee_bps / BP),
            "buyer": ZERO,
            "seller": ZERO,
        },
        "canTrade": True,
        "canWithdraw": False,
        "canDeposit": False,
        "brokered": False,
        "requireSelfTradePrevention": False,
        "preventSor": False,
        "updateTime": now,
        "accountType": "SPOT",
        "balances": balances,
        "permissions": ["SPOT"],
        "uid": 1,
    }


def _book(engine: MatchingEngine, spec: MarketSpec, tape: Tape) -> tuple[str, str, str]:
    half = engine.settings.costs.spread_bps / 2 / BP
    bid = price_to_tick(spec, tape.last_price * (1 - half), up=False)
    ask = price_to_tick(spec, tape.last_price * (1 + half), up=True)
    return amount(bid), amount(max(ask, bid)), amount(engine.recent_volume(spec.market_id))


def price_json(spec: MarketSpec, tape: Tape) -> dict:
    """``GET /api/v3/ticker/price``."""
    return {"symbol": spec.market_id, "price": amount(tape.last_price)}


def book_ticker_json(engine: MatchingEngine, spec: MarketSpec, tape: Tape) -> dict:
    """``GET /api/v3/ticker/bookTicker``: the synthetic book's best levels."""
    bid, ask, qty = _book(engine, spec, tape)
    return {"symbol": spec.market_id, "bidPrice": bid, "bidQty": qty, "askPrice": ask, "askQty": qty}


def depth_json(engine: MatchingEngine, spec: MarketSpec, tape: Tape) -> dict:
    """``GET /api/v3/depth``: the synthetic book, one level each side."""
    bid, ask, qty = _book(engine, spec, tape)
    return {"lastUpdateId": tape.ticks, "bids": [[bid, qty]], "asks": [[ask, qty]]}


def ticker_24hr_json(engine: MatchingEngine, spec: MarketSpec, tape: Tape, now: int) -> dict:
    """``GET /api/v3/ticker/24hr``, over the ticks since the venue started."""
    bid, ask, qty = _book(engine, spec, tape)
    change = tape.last_price - tape.first_price
    return {
        "symbol": spec.market_id,
        "priceChange": amount(change),
        "priceChangePercent": f"{100 * change / tape.first_price:.3f}",
        "weightedAvgPrice": amount(tape.last_price),
        "prevClosePrice": amount(tape.first_price),
        "lastPrice": amount(tape.last_price),
        "lastQty": ZERO,
        "bidPrice": bid,
        "bidQty": qty,
        "askPrice": ask,
        "askQty": qty,
        "openPrice": amount(tape.first_price),
        "highPrice": amount(tape.high),
        "lowPrice": amount(tape.low),
        "volume": amount(tape.volume),
        "quoteVolume": amount(tape.volume * tape.last_price),
        "openTime": now - 86_400_000,
        "closeTime": now,
        "firstId": 0,
        "lastId": tape.ticks - 1,
        "count": tape.ticks,
    }


def exchange_info_json(markets: list[MarketSpec], now: int, symbols: list[MarketSpec] | None = None) -> dict:
    """``GET /api/v3/exchangeInfo`` (of ``symbols`` when asked for some)."""
    return {
        "timezone": "UTC",
        "serverTime": now,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
        ],
        "exchangeFilters": [],
        "symbols": [m.info() for m in (markets if symbols is None else symbols)],
    }


def coins_json(markets: list[MarketSpec]) -> list[dict]:
    """``GET /sapi/v1/capital/config/getall`` (ccxt's ``fetch_currencies``): every asset, no networks."""
    assets = sorted({a for m in markets for a in (m.base, m.quote)})
    return [
        {
            "coin": a,
            "name": a,
            "depositAllEnable": False,
            "withdrawAllEnable": False,
            "free": ZERO,
            "locked": ZERO,
            "isLegalMoney": False,
            "trading": True,
            "networkList": [],
        }
        for a in assets
    ]
