"""The local exchange's matching engine: spot orders against a tape of ticks, priced by the paper cost model.

Prices come only from ticks: each market keeps its last tick's price and a
rolling mean of its volume per bar (``costs.bar_interval_ms`` buckets of tick
time, over ``costs.recent_volume_bars`` completed bars: the ``V`` of the impact
term; the bar under way counts until one completes). There is no order book:

- MARKET: fills whole at once, at the last price moved by the taker slippage
  ``s`` of :func:`~operators.execution.cost_model.taker_slippage_bps` (with
  ``normalised_vol`` for the volatility term) and rounded to the tick grid
  against the taker; taker fee. Refused (``Market is closed.``) before the
  market's first tick. ``quoteOrderQty`` buys as much as the quote amount pays
  for, fee included (sells: as much as it fetches), floored to the step.
- LIMIT: marketable against the last price (buy: limit >= last) it takes at
  once, whole, at the taker price capped at the limit, taker fee; otherwise it
  rests (GTC; IOC and FOK expire). A resting order fills at its limit, maker
  fee, on each tick at or through it, best price then oldest first; with
  ``partial_fills`` a tick fills at most its own quantity across the orders it
  reaches, else whole. LIMIT_MAKER is refused when it would take.
- STOP_LOSS / TAKE_PROFIT (and their _LIMIT forms) wait for a tick at or
  through ``stopPrice`` (STOP_LOSS: buy at >= stop, sell at <= stop;
  TAKE_PROFIT the other way), checked after the resting limits of that tick;
  then a STOP_LOSS/TAKE_PROFIT fills as a market order from that tick's price
  and a _LIMIT form works as a LIMIT from it. Refused when the last price
  would trigger it at once. A triggered buy that costs more than its lock
  plus the free quote expires unfilled.

Balances: fees are charged in the quote asset (Binance charges the asset
received), so a buy costs ``price * qty + fee`` of quote and a sell brings
``price * qty - fee``. Placing locks what the order may spend (a buy: ``qty``
x limit (a MARKET: its cost; a stop: the stop) x (1 + taker fee); a sell:
``qty`` of base); fills and cancels release it. Client order ids are unique
over every order ever placed (``unique_client_ids="all"``, stricter than
Binance) or among open orders (``"open"``, as Binance). Bad requests are
refused with a :class:`Refusal` (Binance's code and message), never raised.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from infra.exchange.markets import MarketSpec, dec, filter_failure, floor_to_step, price_to_tick
from operators.execution.cost_model import BP, BrokerSettings, taker_slippage_bps
from schemas.records import Tick
from schemas.settings import SettingsError, check_settings, setting

QTY_EPS = 1e-12
BUY, SELL = "BUY", "SELL"
NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED = "NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "EXPIRED"
OPEN_STATUSES = (NEW, PARTIALLY_FILLED)
STOPS = {
    "STOP_LOSS": "MARKET",
    "TAKE_PROFIT": "MARKET",
    "STOP_LOSS_LIMIT": "LIMIT",
    "TAKE_PROFIT_LIMIT": "LIMIT",
}
"""Stop order types and the order type each works as once triggered."""
LIMITS = ("LIMIT", "LIMIT_MAKER", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT")
"""Order types with a limit price."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Rules of the matching engine.

    Parameters
    ----------
    costs
        The paper cost model's fees, spread proxy, impact and bar interval.
    partial_fills
        A tick fills resting limits up to its own quantity (else whole).
    unique_client_ids
        ``"all"``: a client order id is refused when any earlier order used
        it; ``"open"``: only while that order is open (Binance's rule).
    normalised_vol
        The volatility term's normalised volatility (the venue estimates none;
        1.0 is the paper broker's "unknown").

    >>> EngineSettings(BrokerSettings(bar_interval_ms=1000), unique_client_ids="some")
    Traceback (most recent call last):
    ...
    schemas.settings.SettingsError: EngineSettings.unique_client_ids must be 'all' or 'open', got 'some'
    """

    costs: BrokerSettings = setting()
    partial_fills: bool = setting(True)
    unique_client_ids: str = setting("all")
    normalised_vol: float = setting(1.0, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.unique_client_ids not in ("all", "open"):
            raise SettingsError.of(self, "unique_client_ids", "'all' or 'open'")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the venue refuses: Binance's error ``code`` and ``msg``."""

    code: int
    msg: str


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A well-formed order request (the API layer has checked types and required fields).

    ``qty`` or (MARKET only) ``quote_qty``; ``price`` for the limit types;
    ``stop_price`` for the stop types; ``time_in_force`` for the limit types
    but LIMIT_MAKER (``""`` otherwise).
    """

    symbol: str
    side: str
    type: str
    client_id: str
    qty: Decimal | None = None
    quote_qty: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str = ""


@dataclass(slots=True)
class VenueOrder:
    """An order as the venue keeps it (Binance's fields, floats)."""

    order_id: int
    client_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: float
    price: float
    stop_price: float
    time: int
    status: str = NEW
    executed: float = 0.0
    quote_executed: float = 0.0
    quote_qty: float = 0.0
    update_time: int = 0
    working_time: int = -1
    locked: float = 0.0
    cancel_client_id: str = ""

    @property
    def remaining(self) -> float:
        return max(self.qty - self.executed, 0.0)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def working(self) -> bool:
        """Open and not an untriggered stop."""
        return self.is_open and self.working_time >= 0


@dataclass(frozen=True, slots=True)
class VenueTrade:
    """One fill, as ``myTrades`` reports it."""

    trade_id: int
    order_id: int
    symbol: str
    price: float
    qty: float
    quote_qty: float
    commission: float
    commission_asset: str
    time: int
    is_buyer: bool
    is_maker: bool


@dataclass(slots=True)
class Balance:
    free: float = 0.0
    locked: float = 0.0


@dataclass(slots=True)
class Tape:
    """A market's prices and volumes from ticks."""

    last_price: float = 0.0
    last_ts: int = 0
    ticks: int = 0
    volume: float = 0.0
    high: float = 0.0
    low: float = 0.0
    first_price: float = 0.0
    bar: int = -1
    bar_volume: float = 0.0
    volumes: deque = field(default_factory=deque)


@dataclass(slots=True)
class EngineState:
    """Everything the engine changes (plain data: it round-trips through :meth:`MatchingEngine.snapshot`)."""

    balances: dict[str, Balance] = field(default_factory=dict)
    orders: dict[int, VenueOrder] = field(default_factory=dict)
    trades: list[VenueTrade] = field(default_factory=list)
    tapes: dict[str, Tape] = field(default_factory=dict)
    client_ids: dict[str, int] = field(default_factory=dict)
    next_order_id: int = 1
    next_trade_id: int = 1
    ignored_ticks: int = 0


@dataclass(frozen=True, slots=True)
class Placed:
    """An accepted order and the fills it made at once."""

    order: VenueOrder
    fills: tuple[VenueTrade, ...] = ()


class MatchingEngine:
    """Spot accounts, orders and fills of one user, matched against ticks (rules: the module's doc).

    ``now_ms`` dates orders and fills (the venue's clock). Not thread-safe:
    the server holds one lock around every call.

    >>> engine = MatchingEngine(
    ...     EngineSettings(BrokerSettings(bar_interval_ms=1000)), (MarketSpec("BTC/USDT"),),
    ...     {"USDT": 10_000.0}, now_ms=lambda: 5)
    >>> engine.on_tick(Tick(0, "BTC/USDT", 100.0, 500.0))
    []
    >>> placed = engine.place(NewOrder("BTCUSDT", BUY, "MARKET", "c1", qty=Decimal("1")))
    >>> fill = placed.fills[0]
    >>> placed.order.status, fill.price, round(fill.commission, 6)
    ('FILLED', 100.03, 0.10003)
    >>> engine.place(NewOrder("BTCUSDT", BUY, "MARKET", "c1", qty=Decimal("1")))
    Refusal(code=-2010, msg='Duplicate order sent.')
    """

    def __init__(
        self,
        settings: EngineSettings,
        markets: tuple[MarketSpec, ...],
        balances: dict[str, float],
        now_ms: Callable[[], int],
        state: EngineState | None = None,
    ) -> None:
        self.settings = settings
        self.markets = {m.market_id: m for m in markets}
        self._by_symbol = {m.symbol: m for m in markets}
        self._now = now_ms
        if state is None:
            state = EngineState(balances={a: Balance(float(v)) for a, v in balances.items()})
        self.state = state
        for m in markets:
            for asset in (m.base, m.quote):
                self.state.balances.setdefault(asset, Balance())

    # -- ticks --------------------------------------------------------------------------------------

    def on_tick(self, tick: Tick) -> list[VenueTrade]:
        """Move the market's tape; fill resting limits, then trigger stops. Returns the fills made."""
        spec = self._by_symbol.get(tick.symbol)
        if spec is None or not (_positive(tick.price) and _positive(tick.qty)):
            self.state.ignored_ticks += 1
            return []
        self._tape(spec.market_id, tick)
        fills = self._fill_resting(spec, tick)
        fills += self._trigger_stops(spec, tick.price)
        return fills

    def _tape(self, market_id: str, tick: Tick) -> Tape:
        tape = self.state.tapes.get(market_id)
        if tape is None:
            tape = self.state.tapes[market_id] = Tape(high=tick.price, low=tick.price, first_price=tick.price)
        tape.last_price, tape.last_ts = tick.price, tick.ts
        tape.ticks += 1
        tape.volume += tick.qty
        tape.high, tape.low = max(tape.high, tick.price), min(tape.low, tick.price)
        bar = tick.ts // self.settings.costs.bar_interval_ms
        if bar > tape.bar:
            if tape.bar >= 0:
                tape.volumes.append(tape.bar_volume)
                while len(tape.volumes) > self.settings.costs.recent_volume_bars:
                    tape.volumes.popleft()
            tape.bar, tape.bar_volume = bar, 0.0
        tape.bar_volume += tick.qty
        return tape

    def recent_volume(self, market_id: str) -> float:
        """The impact term's ``V``: mean volume of the completed bars kept, else the bar under way."""
        tape = self.state.tapes.get(market_id)
        if tape is None:
            return 0.0
        mean = sum(tape.volumes) / len(tape.volumes) if tape.volumes else 0.0
        return mean if mean > 0 else tape.bar_volume

    def last_price(self, market_id: str) -> float | None:
        tape = self.state.tapes.get(market_id)
        return None if tape is None else tape.last_price

    def _fill_resting(self, spec: MarketSpec, tick: Tick) -> list[VenueTrade]:
        p = tick.price
        reached = [
            o
            for o in self.state.orders.values()
            if o.symbol == spec.market_id
            and o.working
            and o.type in LIMITS
            and (p <= o.price if o.side == BUY else p >= o.price)
        ]
        reached.sort(key=lambda o: (-o.price if o.side == BUY else o.price, o.working_time, o.order_id))
        left = tick.qty if self.settings.partial_fills else math.inf
        fills = []
        for order in reached:
            if left <= QTY_EPS:
                break
            qty = min(order.remaining, left)
            left -= qty
            fills.append(self._fill(spec, order, qty, order.price, maker=True))
        return fills

    def _trigger_stops(self, spec: MarketSpec, price: float) -> list[VenueTrade]:
        hit = [
            o
            for o in self.state.orders.values()
            if o.symbol == spec.market_id and o.is_open and not o.working and _triggers(o, price)
        ]
        fills: list[VenueTrade] = []
        for order in sorted(hit, key=lambda o: o.order_id):
            order.working_time = order.update_time = self._now()
            fills += self._take(spec, order, price)
        return fills

    # -- orders -------------------------------------------------------------------------------------

    def place(self, new: NewOrder) -> Placed | Refusal:
        """Check and accept an order; fill it at once where the rules say so."""
        spec = self.markets.get(new.symbol)
        if spec is None:
            return Refusal(-1121, "Invalid symbol.")
        if self._duplicate(new.client_id):
            return Refusal(-2010, "Duplicate order sent.")
        last = self.last_price(spec.market_id)
        if new.type == "MARKET" and last is None:
            return Refusal(-1013, "Market is closed.")
        qty = new.qty if new.qty is not None else self._qty_for_quote(spec, new, last or 0.0)
        failed = filter_failure(spec, qty, new.price, new.stop_price, None if last is None else dec(last))
        if failed is not None:
            return Refusal(-1013, f"Filter failure: {failed}")
        order = VenueOrder(
            order_id=self.state.next_order_id,
            client_id=new.client_id,
            symbol=spec.market_id,
            side=new.side,
            type=new.type,
            time_in_force=new.time_in_force or "GTC",
            qty=float(qty),
            price=float(new.price or 0),
            stop_price=float(new.stop_price or 0),
            time=self._now(),
            quote_qty=float(new.quote_qty or 0),
        )
        order.update_time = order.time
        order.working_time = -1 if new.type in STOPS else order.time
        if new.type in STOPS and last is not None and _triggers(order, last):
            return Refusal(-2010, "Stop price would trigger immediately.")
        if new.type == "LIMIT_MAKER" and last is not None and _marketable(order, last):
            return Refusal(-2010, "Order would immediately match and take.")
        lock = self._lock_for(spec, order, last)
        asset = spec.quote if order.side == BUY else spec.base
        if lock > self.state.balances[asset].free + QTY_EPS:
            return Refusal(-2010, "Account has insufficient balance for requested action.")
        self._lock(asset, order, min(lock, self.state.balances[asset].free))
        self.state.next_order_id += 1
        self.state.orders[order.order_id] = order
        self.state.client_ids[order.client_id] = order.order_id
        if new.type in STOPS:
            return Placed(order)
        if last is None:  # a limit with nothing to trade against yet: it rests (IOC and FOK expire)
            if order.time_in_force in ("IOC", "FOK"):
                self._end(spec, order, EXPIRED)
            return Placed(order)
        return Placed(order, tuple(self._take(spec, order, last)))

    def _duplicate(self, client_id: str) -> bool:
        earlier = self.state.client_ids.get(client_id)
        if earlier is None:
            return False
        return self.settings.unique_client_ids == "all" or self.state.orders[earlier].is_open

    def _qty_for_quote(self, spec: MarketSpec, new: NewOrder, last: float) -> Decimal:
        """The quantity a ``quoteOrderQty`` MARKET order trades (fee included for a buy)."""
        quote = float(new.quote_qty or 0)
        price = self._taker_price(spec, new.side, quote / last, last)
        fee = self.settings.costs.taker_fee_bps / BP
        return floor_to_step(spec, quote / (price * (1 + fee)) if new.side == BUY else quote / price)

    def _taker_price(self, spec: MarketSpec, side: str, qty: float, ref: float) -> float:
        s = taker_slippage_bps(
            self.settings.costs, qty, self.settings.normalised_vol, self.recent_volume(spec.market_id)
        )
        raw = ref * (1 + s / BP) if side == BUY else ref * (1 - s / BP)
        return price_to_tick(spec, raw, up=side == BUY)

    def _lock_for(self, spec: MarketSpec, order: VenueOrder, last: float | None) -> float:
        if order.side == SELL:
            return order.qty
        fee = 1 + self.settings.costs.taker_fee_bps / BP
        if order.type == "MARKET":
            return order.qty * self._taker_price(spec, BUY, order.qty, last or 0.0) * fee
        return order.qty * (order.price or order.stop_price) * fee

    def _lock(self, asset: str, order: VenueOrder, value: float) -> None:
        balance = self.state.balances[asset]
        balance.free -= value
        balance.locked += value
        order.locked += value

    def _unlock(self, spec: MarketSpec, order: VenueOrder) -> None:
        balance = self.state.balances[spec.quote if order.side == BUY else spec.base]
        balance.locked -= order.locked
        balance.free += order.locked
        order.locked = 0.0

    def _take(self, spec: MarketSpec, order: VenueOrder, ref: float) -> list[VenueTrade]:
        """A working order meets price ``ref``: take whole, rest, or expire (IOC/FOK; a short stop buy)."""
        kind = STOPS.get(order.type, order.type)
        if kind == "MARKET":
            price = self._taker_price(spec, order.side, order.remaining, ref)
        elif _marketable(order, ref):
            taker = self._taker_price(spec, order.side, order.remaining, ref)
            price = min(taker, order.price) if order.side == BUY else max(taker, order.price)
        else:
            if order.time_in_force in ("IOC", "FOK"):
                self._end(spec, order, EXPIRED)
            return []
        if order.side == BUY:
            cost = order.remaining * price * (1 + self.settings.costs.taker_fee_bps / BP)
            short = cost - order.locked
            if short > self.state.balances[spec.quote].free + QTY_EPS:
                self._end(spec, order, EXPIRED)
                return []
            if short > 0:
                self._lock(spec.quote, order, short)
        return [self._fill(spec, order, order.remaining, price, maker=False)]

    def _fill(self, spec: MarketSpec, order: VenueOrder, qty: float, price: float, maker: bool) -> VenueTrade:
        costs = self.settings.costs
        quote = qty * price
        fee = (costs.maker_fee_bps if maker else costs.taker_fee_bps) / BP * quote
        last = qty >= order.remaining - QTY_EPS * max(1.0, order.qty)
        release = order.locked if last else order.locked * qty / order.remaining
        base_bal, quote_bal = self.state.balances[spec.base], self.state.balances[spec.quote]
        if order.side == BUY:
            quote_bal.locked -= release
            quote_bal.free += release - quote - fee
            base_bal.free += qty
        else:
            base_bal.locked -= release
            base_bal.free += release - qty
            quote_bal.free += quote - fee
        order.locked -= release
        order.executed = order.qty if last else order.executed + qty
        order.quote_executed += quote
        order.status = FILLED if last else PARTIALLY_FILLED
        order.update_time = self._now()
        trade = VenueTrade(
            trade_id=self.state.next_trade_id,
            order_id=order.order_id,
            symbol=order.symbol,
            price=price,
            qty=qty,
            quote_qty=quote,
            commission=fee,
            commission_asset=spec.quote,
            time=order.update_time,
            is_buyer=order.side == BUY,
            is_maker=maker,
        )
        self.state.next_trade_id += 1
        self.state.trades.append(trade)
        return trade

    def _end(self, spec: MarketSpec, order: VenueOrder, status: str) -> None:
        self._unlock(spec, order)
        order.status = status
        order.update_time = self._now()

    # -- queries and cancels ------------------------------------------------------------------------

    def find(
        self, symbol: str, order_id: int | None = None, client_id: str | None = None
    ) -> VenueOrder | None:
        """The order of ``symbol`` with that id (or the latest with that client id)."""
        if order_id is None:
            order_id = self.state.client_ids.get(client_id or "")
        order = self.state.orders.get(order_id) if order_id is not None else None
        if (
            order is None
            or order.symbol != symbol
            or (client_id is not None and order.client_id != client_id)
        ):
            return None
        return order

    def cancel(
        self, symbol: str, order_id: int | None = None, client_id: str | None = None
    ) -> VenueOrder | Refusal:
        """Cancel an open order; ``Unknown order sent.`` when there is none (or it is done)."""
        if symbol not in self.markets:
            return Refusal(-1121, "Invalid symbol.")
        order = self.find(symbol, order_id, client_id)
        if order is None or not order.is_open:
            return Refusal(-2011, "Unknown order sent.")
        self._end(self.markets[symbol], order, CANCELED)
        order.cancel_client_id = f"cancel-{order.order_id}"
        return order

    def cancel_all(self, symbol: str) -> list[VenueOrder] | Refusal:
        """Cancel every open order of ``symbol``; ``Unknown order sent.`` when none is open."""
        if symbol not in self.markets:
            return Refusal(-1121, "Invalid symbol.")
        cancelled = [self.cancel(symbol, o.order_id) for o in self.open_orders(symbol)]
        done = [o for o in cancelled if isinstance(o, VenueOrder)]
        return done or Refusal(-2011, "Unknown order sent.")

    def open_orders(self, symbol: str | None = None) -> list[VenueOrder]:
        return [o for o in self.state.orders.values() if o.is_open and symbol in (None, o.symbol)]

    def orders_of(self, symbol: str) -> list[VenueOrder]:
        return [o for o in self.state.orders.values() if o.symbol == symbol]

    def trades_of(self, symbol: str) -> list[VenueTrade]:
        return [t for t in self.state.trades if t.symbol == symbol]


def _positive(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _marketable(order: VenueOrder, price: float) -> bool:
    """A limit order would take against ``price``."""
    return price <= order.price if order.side == BUY else price >= order.price


def _triggers(order: VenueOrder, price: float) -> bool:
    """``price`` reaches a stop order's ``stop_price`` (a buy STOP_LOSS from below, a buy TAKE_PROFIT
    from above; sells the other way)."""
    rising = order.type.startswith("STOP_LOSS") == (order.side == BUY)
    return price >= order.stop_price if rising else price <= order.stop_price
