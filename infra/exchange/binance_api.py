"""The part of Binance's spot REST API that ccxt's ``binance`` class uses, answered by the matching engine.

:meth:`BinanceApi.handle` takes one request (method, path, raw query string,
raw form body, headers) and gives a :class:`Reply` (HTTP status and JSON);
the HTTP server only moves bytes. Signed endpoints check, in Binance's order:
the ``X-MBX-APIKEY`` header (missing: -2014, another key: -2015, HTTP 401),
the HMAC-SHA256 ``signature`` of the query string followed by the body, less
the signature itself (-1022), and ``timestamp`` within ``recvWindow`` (at
most ``recv_window_max_ms``; default 5000 ms) of the venue's clock, at most
1 s ahead (-1021). Errors are ``{"code": -XXXX, "msg": "..."}`` with HTTP
400 (401 for the key), as Binance sends them; ccxt maps them to its
exceptions (-2010 InvalidOrder, its balance message InsufficientFunds,
-2011/-2013 OrderNotFound, -1022/-2014/-2015 AuthenticationError, ...).

Endpoints (spot, ``/api/v3``): ``ping``, ``time``, ``exchangeInfo``,
``ticker/price``, ``ticker/24hr``, ``ticker/bookTicker``, ``depth``; signed:
``account``, ``order`` (POST, GET, DELETE), ``order/test``, ``openOrders``
(GET, DELETE), ``allOrders``, ``myTrades``. For ccxt's default options also:
``/sapi/v1/capital/config/getall`` (the assets), ``/sapi/v1/margin/allPairs``
and ``/sapi/v1/margin/isolated/allPairs`` (none), ``/sapi/v1/system/status``,
``/sapi/v1/asset/tradeFee``, and ``/fapi/v1/exchangeInfo`` and
``/dapi/v1/exchangeInfo`` (no markets). Anything else: HTTP 404, code -1.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

from infra.exchange import binance_json as js
from infra.exchange.api_keys import ApiKeys
from infra.exchange.markets import ORDER_TYPES, PRECISION, MarketSpec, amount
from infra.exchange.matching_engine import BUY, LIMITS, SELL, STOPS, MatchingEngine, NewOrder, Refusal
from operators.execution.cost_model import BP

_NUMBER = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
_CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")  # Binance's own rule (its -1100 message)
_INT = re.compile(r"^[0-9]{1,20}$")
TIME_IN_FORCE = ("GTC", "IOC", "FOK")
MAX_AHEAD_MS = 1000


def ccxt_urls(urls: Mapping[str, object], base_url: str) -> dict[str, object]:
    """ccxt's ``binance().urls['api']`` moved onto ``base_url``: each entry keeps its path.

    >>> ccxt_urls({"public": "https://api.binance.com/api/v3", "sapi": "https://api.binance.com/sapi/v1"},
    ...           "http://127.0.0.1:8765/")
    {'public': 'http://127.0.0.1:8765/api/v3', 'sapi': 'http://127.0.0.1:8765/sapi/v1'}
    """
    base = base_url.rstrip("/")
    return {k: base + urlsplit(v).path if isinstance(v, str) else v for k, v in urls.items()}


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP status and the JSON value to send."""

    status: int
    body: object


class _Refused(Exception):
    """A request refused while reading it; becomes its :class:`Reply` in :meth:`BinanceApi.handle`."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.reply = Reply(status, {"code": code, "msg": msg})


def _error(refusal: Refusal) -> Reply:
    return Reply(400, {"code": refusal.code, "msg": refusal.msg})


def _illegal(name: str, pattern: re.Pattern) -> _Refused:
    return _Refused(
        -1100, f"Illegal characters found in parameter '{name}'; legal range is '{pattern.pattern}'."
    )


def _without_signature(raw: str) -> str:
    return "&".join(p for p in raw.split("&") if p and not p.startswith("signature="))


class _Params:
    """A request's parameters, read with Binance's errors."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def text(self, name: str, required: bool = False) -> str | None:
        value = self.values.get(name)
        if value in (None, ""):
            if required:
                msg = f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
                raise _Refused(-1102, msg)
            return None
        return value

    def number(self, name: str, required: bool = False) -> Decimal | None:
        value = self.text(name, required)
        if value is None:
            return None
        if not _NUMBER.match(value):
            raise _illegal(name, _NUMBER)
        if "." in value and len(value.split(".")[1].rstrip("0")) > PRECISION:
            raise _Refused(-1111, f"Parameter '{name}' has too much precision.")
        return Decimal(value)

    def integer(self, name: str, required: bool = False) -> int | None:
        value = self.text(name, required)
        if value is None:
            return None
        if not _INT.match(value):
            raise _illegal(name, _INT)
        return int(value)

    def absent(self, name: str) -> None:
        if self.text(name) is not None:
            raise _Refused(-1106, f"Parameter '{name}' sent when not required.")


class BinanceApi:
    """Binance's spot REST endpoints over a :class:`MatchingEngine`.

    Parameters
    ----------
    engine
        The venue's state; every request holds ``lock`` while it reads or changes it.
    keys
        The API key accepted and the secret signatures are checked with.
    now_ms
        The venue's clock (``serverTime``, the ``recvWindow`` check).
    lock
        Shared with whatever else feeds the engine (the tick feeds).
    recv_window_max_ms
        Largest ``recvWindow`` accepted (Binance: 60000).
    """

    def __init__(
        self,
        engine: MatchingEngine,
        keys: ApiKeys,
        now_ms: Callable[[], int],
        lock: threading.Lock,
        recv_window_max_ms: int = 60_000,
    ) -> None:
        self.engine, self.keys, self.now_ms, self.lock = engine, keys, now_ms, lock
        self.recv_window_max_ms = recv_window_max_ms
        m = {
            "/api/v3/ping": lambda p: {},
            "/api/v3/time": lambda p: {"serverTime": self.now_ms()},
            "/api/v3/exchangeInfo": self._exchange_info,
            "/api/v3/ticker/price": lambda p: self._market_data(p, lambda s, t: js.price_json(s, t)),
            "/api/v3/ticker/24hr": lambda p: self._market_data(
                p, lambda s, t: js.ticker_24hr_json(self.engine, s, t, self.now_ms())
            ),
            "/api/v3/ticker/bookTicker": lambda p: self._market_data(
                p, lambda s, t: js.book_ticker_json(self.engine, s, t)
            ),
            "/api/v3/depth": self._depth,
            "/sapi/v1/system/status": lambda p: {"status": 0, "msg": "normal"},
            "/fapi/v1/exchangeInfo": lambda p: js.exchange_info_json([], self.now_ms()),
            "/dapi/v1/exchangeInfo": lambda p: js.exchange_info_json([], self.now_ms()),
        }
        self.public: dict[tuple[str, str], Callable[[_Params], object]] = {
            ("GET", k): v for k, v in m.items()
        }
        self.signed: dict[tuple[str, str], Callable[[_Params], object]] = {
            ("GET", "/api/v3/account"): self._account,
            ("POST", "/api/v3/order"): self._new_order,
            ("POST", "/api/v3/order/test"): self._test_order,
            ("GET", "/api/v3/order"): self._query_order,
            ("DELETE", "/api/v3/order"): self._cancel_order,
            ("GET", "/api/v3/openOrders"): self._open_orders,
            ("DELETE", "/api/v3/openOrders"): self._cancel_open_orders,
            ("GET", "/api/v3/allOrders"): self._all_orders,
            ("GET", "/api/v3/myTrades"): self._my_trades,
            ("GET", "/sapi/v1/capital/config/getall"): lambda p: js.coins_json(self._markets()),
            ("GET", "/sapi/v1/margin/allPairs"): lambda p: [],
            ("GET", "/sapi/v1/margin/isolated/allPairs"): lambda p: [],
            ("GET", "/sapi/v1/asset/tradeFee"): self._trade_fee,
        }

    def handle(self, method: str, path: str, query: str, body: str, headers: Mapping[str, str]) -> Reply:
        """Answer one request. ``headers`` keys are matched case-insensitively."""
        route = (method.upper(), path.rstrip("/") or "/")
        values = dict(parse_qsl(query, keep_blank_values=True))
        values.update(parse_qsl(body, keep_blank_values=True))
        params = _Params(values)
        try:
            handler = self.public.get(route)
            if handler is None:
                handler = self.signed.get(route)
                if handler is None:
                    msg = f"No such endpoint: {route[0]} {route[1]} (the local exchange serves Binance spot)"
                    return Reply(404, {"code": -1, "msg": msg})
                self._authenticate(params, query, body, headers)
            with self.lock:
                result = handler(params)
        except _Refused as refused:
            return refused.reply
        return result if isinstance(result, Reply) else Reply(200, result)

    # -- authentication -----------------------------------------------------------------------------

    def _authenticate(self, params: _Params, query: str, body: str, headers: Mapping[str, str]) -> None:
        key = next((v for k, v in headers.items() if k.lower() == "x-mbx-apikey"), "").strip()
        if not key:
            raise _Refused(-2014, "API-key format invalid.", 401)
        if not hmac.compare_digest(key.encode(), self.keys.key.reveal().encode()):
            raise _Refused(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        signature = params.text("signature", required=True) or ""
        total = (_without_signature(query) + _without_signature(body)).encode()
        expected = hmac.new(self.keys.secret.reveal().encode(), total, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.lower().encode(), expected.encode()):
            raise _Refused(-1022, "Signature for this request is not valid.")
        timestamp = params.integer("timestamp", required=True) or 0
        window = params.integer("recvWindow")
        window = 5000 if window is None else window
        if window > self.recv_window_max_ms:
            raise _Refused(-1131, f"recvWindow must be less than {self.recv_window_max_ms}")
        now = self.now_ms()
        if timestamp < now - window or timestamp > now + MAX_AHEAD_MS:
            raise _Refused(-1021, "Timestamp for this request is outside of the recvWindow.")

    # -- market data --------------------------------------------------------------------------------

    def _markets(self) -> list[MarketSpec]:
        return list(self.engine.markets.values())

    def _spec(self, params: _Params) -> MarketSpec:
        """The market of the required ``symbol``."""
        spec = self.engine.markets.get(params.text("symbol", required=True) or "")
        if spec is None:
            raise _Refused(-1121, "Invalid symbol.")
        return spec

    def _maybe_spec(self, symbol: str | None) -> MarketSpec | None:
        """The market of an optional ``symbol`` (None when not sent); -1121 for an unknown one."""
        if symbol is None:
            return None
        spec = self.engine.markets.get(symbol)
        if spec is None:
            raise _Refused(-1121, "Invalid symbol.")
        return spec

    def _exchange_info(self, params: _Params) -> object:
        spec = self._maybe_spec(params.text("symbol"))
        return js.exchange_info_json(self._markets(), self.now_ms(), None if spec is None else [spec])

    def _market_data(self, params: _Params, shape: Callable) -> object:
        spec = self._maybe_spec(params.text("symbol"))
        tapes = self.engine.state.tapes
        if spec is None:
            return [shape(m, tapes[m.market_id]) for m in self._markets() if m.market_id in tapes]
        if spec.market_id not in tapes:
            raise _Refused(-1013, "Market is closed.")
        return shape(spec, tapes[spec.market_id])

    def _depth(self, params: _Params) -> object:
        return self._market_data(params, lambda s, t: js.depth_json(self.engine, s, t))

    def _trade_fee(self, params: _Params) -> object:
        costs = self.engine.settings.costs
        maker, taker = amount(costs.maker_fee_bps / BP), amount(costs.taker_fee_bps / BP)
        return [
            {"symbol": m.market_id, "makerCommission": maker, "takerCommission": taker}
            for m in self._markets()
        ]

    # -- account and orders -------------------------------------------------------------------------

    def _account(self, params: _Params) -> object:
        omit = (params.text("omitZeroBalances") or "false").lower() == "true"
        return js.account_json(self.engine, self.now_ms(), omit)

    def _read_order(self, params: _Params) -> tuple[NewOrder, str]:
        spec = self._spec(params)
        side = params.text("side", required=True)
        if side not in (BUY, SELL):
            raise _Refused(-1117, "Invalid side.")
        kind = params.text("type", required=True) or ""
        if kind not in ORDER_TYPES:
            raise _Refused(-1116, "Invalid orderType.")
        tif = ""
        if kind in LIMITS and kind != "LIMIT_MAKER":
            tif = params.text("timeInForce", required=True) or ""
            if tif not in TIME_IN_FORCE:
                raise _Refused(-1115, "Invalid timeInForce.")
        else:
            params.absent("timeInForce")
        qty = quote_qty = None
        if kind == "MARKET" and params.text("quantity") is None:
            if params.text("quoteOrderQty") is None:
                raise _Refused(
                    -1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty!"
                )
            quote_qty = params.number("quoteOrderQty")
        else:
            qty = params.number("quantity", required=True)
            params.absent("quoteOrderQty")
        price = params.number("price", required=True) if kind in LIMITS else params.absent("price")
        stop = params.number("stopPrice", required=True) if kind in STOPS else params.absent("stopPrice")
        name = "newClientOrderId"
        client_id = params.text(name) or uuid.uuid4().hex[:22]
        if not _CLIENT_ID.match(client_id):
            raise _illegal(name, _CLIENT_ID)
        resp = params.text("newOrderRespType") or ("FULL" if kind in ("MARKET", "LIMIT") else "ACK")
        if resp not in ("ACK", "RESULT", "FULL"):
            raise _Refused(-1100, "Illegal characters found in parameter 'newOrderRespType'.")
        new = NewOrder(spec.market_id, side, kind, client_id, qty, quote_qty, price, stop, tif)
        return new, resp

    def _new_order(self, params: _Params) -> object:
        new, resp = self._read_order(params)
        placed = self.engine.place(new)
        if isinstance(placed, Refusal):
            return _error(placed)
        return js.new_order_json(placed.order, placed.fills, resp)

    def _test_order(self, params: _Params) -> object:
        self._read_order(params)
        return {}

    def _which(self, params: _Params) -> tuple[MarketSpec, int | None, str | None]:
        spec = self._spec(params)
        order_id, client_id = params.integer("orderId"), params.text("origClientOrderId")
        if order_id is None and client_id is None:
            raise _Refused(
                -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
            )
        return spec, order_id, client_id

    def _query_order(self, params: _Params) -> object:
        spec, order_id, client_id = self._which(params)
        order = self.engine.find(spec.market_id, order_id, client_id)
        if order is None:
            return Reply(400, {"code": -2013, "msg": "Order does not exist."})
        return js.order_json(order)

    def _cancel_order(self, params: _Params) -> object:
        spec, order_id, client_id = self._which(params)
        order = self.engine.cancel(spec.market_id, order_id, client_id)
        return _error(order) if isinstance(order, Refusal) else js.cancel_json(order)

    def _cancel_open_orders(self, params: _Params) -> object:
        spec = self._spec(params)
        orders = self.engine.cancel_all(spec.market_id)
        return _error(orders) if isinstance(orders, Refusal) else [js.cancel_json(o) for o in orders]

    def _open_orders(self, params: _Params) -> object:
        spec = self._maybe_spec(params.text("symbol"))
        return [js.order_json(o) for o in self.engine.open_orders(None if spec is None else spec.market_id)]

    def _all_orders(self, params: _Params) -> object:
        spec = self._spec(params)
        orders = self.engine.orders_of(spec.market_id)
        picked = _page(params, orders, "orderId", lambda o: o.order_id, lambda o: o.time)
        return [js.order_json(o) for o in picked]

    def _my_trades(self, params: _Params) -> object:
        spec = self._spec(params)
        trades = self.engine.trades_of(spec.market_id)
        order_id = params.integer("orderId")
        if order_id is not None:
            trades = [t for t in trades if t.order_id == order_id]
        picked = _page(params, trades, "fromId", lambda t: t.trade_id, lambda t: t.time)
        return [js.trade_json(t) for t in picked]


def _page(params: _Params, items: list, cursor: str, ident: Callable, time: Callable) -> list:
    """Binance's paging: ids from ``cursor`` on, or times in [startTime, endTime], oldest first, at most
    ``limit`` (default 500, at most 1000); without a cursor or a start, the newest ``limit``."""
    start, end, first = params.integer("startTime"), params.integer("endTime"), params.integer(cursor)
    limit = min(params.integer("limit") or 500, 1000)
    items = [
        x
        for x in items
        if (first is None or ident(x) >= first)
        and (start is None or time(x) >= start)
        and (end is None or time(x) <= end)
    ]
    return items[:limit] if first is not None or start is not None else items[-limit:]
