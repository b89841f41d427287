"""The execution service's side of a ccxt venue: calls by client order id, and their answers as records.

:class:`CcxtVenue` wraps one ccxt exchange (sync client): send, fetch and
cancel an order by its client id, list open orders, own trades, the last
trade price and balances. The functions turn ccxt's unified dicts into our
records (:func:`order_events`, :func:`state_event`, :func:`fill_of`) and into
the reconciliation's views (:func:`venue_order`, :func:`venue_trade`).

>>> o = Order(0, "o1", "", "BTC/USDT", "buy", 0.01, "limit", 59_000.0, "entry", "demo")
>>> state_event(o, {"id": "7", "status": "open", "filled": 0.004, "average": 59_000.0}, "v", 5).leaves_qty
0.006
>>> state_event(o, {"id": "7", "status": "open", "filled": 0.0}, "v", 5) is None
True
"""

from __future__ import annotations

from flows.config_values import Secret
from operators.execution.reconcile import VenueOrder, VenueTrade
from schemas.errors import UsageProblem
from schemas.records import (
    ACCEPTED,
    CANCELLED,
    EXPIRED,
    FILLED,
    FINAL_ORDER_EVENTS,
    LIMIT,
    MARKET,
    PARTIALLY_FILLED,
    REJECTED,
    STOP,
    Fill,
    Order,
    OrderEvent,
)

_STATUS = {"canceled": CANCELLED, "cancelled": CANCELLED, "expired": EXPIRED, "rejected": REJECTED}


class VenueUsage(UsageProblem):
    """A venue that ccxt does not have."""


class CcxtVenue:
    """A ccxt exchange (sync client): every call about our orders goes by client order id."""

    def __init__(self, exchange: str, keys: tuple[Secret, Secret], url: str, sandbox: bool) -> None:
        import ccxt

        cls = getattr(ccxt, exchange, None)
        if not isinstance(cls, type):
            msg = f"ccxt has no exchange {exchange!r}"
            raise VenueUsage(msg)
        self.ccxt = ccxt
        self.ex = cls({"apiKey": keys[0].reveal(), "secret": keys[1].reveal(), "enableRateLimit": False})
        if url:
            from infra.exchange.binance_api import ccxt_urls

            api = self.ex.urls["api"]
            self.ex.urls["api"] = ccxt_urls(api, url) if isinstance(api, dict) else url
        elif sandbox:
            self.ex.set_sandbox_mode(True)

    def send(self, order: Order) -> dict:
        """The venue's order (ccxt's unified dict); a reused client id fetches the order sent before."""
        params: dict = {"clientOrderId": order.order_id}
        kind, price = "market", None
        if order.order_type == LIMIT:
            kind, price = "limit", order.limit_price
        elif order.order_type == STOP:
            params["triggerPrice"] = order.limit_price
        try:
            return self.ex.create_order(order.symbol, kind, order.side, order.qty, price, params)
        except self.ccxt.InvalidOrder as exc:
            if "duplicate" not in str(exc).lower():
                raise
        return self.fetch(order.order_id, order.symbol)

    def fetch(self, client_id: str, symbol: str) -> dict:
        """One of our orders by client id (``OrderNotFound`` when the venue never saw it)."""
        return self.ex.fetch_order(None, symbol, {"clientOrderId": client_id})

    def cancel(self, client_id: str, symbol: str) -> dict:
        """Cancel one of our orders by client id; the order's state after it."""
        try:
            self.ex.cancel_order("", symbol, {"clientOrderId": client_id})
        except self.ccxt.OrderNotFound:
            pass  # finished meanwhile (or never seen: fetch says which)
        return self.fetch(client_id, symbol)

    def trades(self, symbol: str, venue_order_id: str) -> list[dict]:
        """The venue's trades of one order (ccxt's unified dicts), oldest first."""
        return [t for t in self.ex.fetch_my_trades(symbol) if str(t.get("order")) == venue_order_id]

    def last_price(self, symbol: str) -> float | None:
        """The last trade price, None when the venue has none."""
        last = self.ex.fetch_ticker(symbol).get("last")
        return float(last) if last else None

    def lot(self, symbol: str, price: float | None) -> tuple[float, float]:
        """The market's amount step and its smallest sendable amount (the amount minimum, or the
        cost minimum at ``price``); 0.0 when unknown."""
        market = (self.ex.markets or {}).get(symbol) or {}
        precision = (market.get("precision") or {}).get("amount")
        step = 0.0
        if precision:
            step = (
                float(precision)
                if self.ex.precisionMode == self.ccxt.TICK_SIZE
                else 10.0 ** -float(precision)
            )
        limits = market.get("limits") or {}
        least = float((limits.get("amount") or {}).get("min") or 0.0)
        cost = float((limits.get("cost") or {}).get("min") or 0.0)
        if cost > 0 and price:
            least = max(least, cost / price)
        return step, least

    def balances(self) -> dict[str, float]:
        """Total per asset."""
        total = self.ex.fetch_balance().get("total") or {}
        return {a: float(v) for a, v in total.items() if v is not None}


def state_event(order: Order, got: dict, venue: str, now_ms: int) -> OrderEvent | None:
    """The order's current state as an event (filled, partially filled, cancelled, ...), None while
    it works unfilled."""
    vid, vts = str(got.get("id") or ""), int(got.get("timestamp") or 0)
    filled = float(got.get("filled") or 0.0)
    avg = float(got.get("average") or 0.0)
    price = order.limit_price if order.order_type != MARKET else 0.0
    status = got.get("status")
    if status == "closed" or (filled > 0 and filled >= order.qty * (1 - 1e-9)):
        kind, px, reason = FILLED, avg, ""
    elif status in _STATUS:
        kind, px, reason = _STATUS[status], avg or price, f"venue status {status}"
    elif filled > 0:
        kind, px, reason = PARTIALLY_FILLED, avg, ""
    else:
        return None
    leaves = 0.0 if kind in FINAL_ORDER_EVENTS else max(order.qty - filled, 0.0)
    return OrderEvent(
        now_ms, order.order_id, vid, order.symbol, order.side, kind,
        order.qty, filled, px, reason, venue, vts, leaves,
    )  # fmt: skip


def order_events(order: Order, got: dict, venue: str, now_ms: int) -> list[OrderEvent]:
    """``accepted`` plus the order's current state (filled, partially filled, cancelled, ...)."""
    vid, vts = str(got.get("id") or ""), int(got.get("timestamp") or 0)
    price = order.limit_price if order.order_type != MARKET else 0.0
    accepted = OrderEvent(
        now_ms, order.order_id, vid, order.symbol, order.side, ACCEPTED,
        order.qty, 0.0, price, "", venue, vts, order.qty,
    )  # fmt: skip
    state = state_event(order, got, venue, now_ms)
    return [accepted] if state is None else [accepted, state]


def fill_of(order: Order, trade: dict, slippage_bps: float = 0.0) -> Fill:
    """One venue trade as a :class:`Fill` (fee in quote units)."""
    price, qty = float(trade["price"]), float(trade["amount"])
    fee = trade.get("fee") or {}
    cost = float(fee.get("cost") or 0.0)
    base = order.symbol.split("/")[0]
    if fee.get("currency") == base:
        cost *= price
    ts = int(trade.get("timestamp") or 0)
    return Fill(ts, order.order_id, order.symbol, order.side, qty, price, cost, slippage_bps)


def fill_key(fill: Fill) -> tuple[str, int, float, float]:
    """A fill's identity (the store's key): one per venue trade."""
    return (fill.order_id, fill.ts, fill.price, fill.qty)


def venue_order(o: dict, symbol: str) -> VenueOrder:
    """ccxt's order dict as the reconciliation's :class:`VenueOrder`."""
    return VenueOrder(
        str(o.get("id") or ""),
        str(o.get("clientOrderId") or ""),
        str(o.get("symbol") or symbol),
        str(o.get("side") or ""),
        float(o.get("amount") or 0.0),
        float(o.get("filled") or 0.0),
        float(o.get("price") or 0.0),
        str(o.get("status") or ""),
        int(o.get("timestamp") or 0),
    )


def venue_trade(t: dict, symbol: str) -> VenueTrade:
    """ccxt's trade dict as the reconciliation's :class:`VenueTrade`."""
    fee = t.get("fee") or {}
    return VenueTrade(
        str(t.get("id") or ""),
        str(t.get("order") or ""),
        str((t.get("info") or {}).get("clientOrderId") or ""),
        str(t.get("symbol") or symbol),
        str(t.get("side") or ""),
        float(t.get("amount") or 0.0),
        float(t.get("price") or 0.0),
        float(fee.get("cost") or 0.0),
        str(fee.get("currency") or ""),
        int(t.get("timestamp") or 0),
    )
