"""The execution service's state machine: messages of the ``orders`` topic in, records out.

:class:`Executor` takes each decoded message (:meth:`Executor.handle`) and,
between messages, the passing of time (:meth:`Executor.poll`, every loop
turn). Its records go to ``emit(table, record)``; the loop in
:mod:`flows.execute` delivers them before it commits the message's offset.

- :class:`~schemas.records.Order`: guard, send with its id as the client
  order id, ``accepted`` and its state; an order not final after the send
  (a resting limit, a partly filled market order) is followed: each poll
  cycle (:data:`POLL_MS`) fetches its state, new trades become fills and
  ``partially_filled`` / final events. An id handled before a restart (its
  events are on the topic, or the start-up reconciliation learnt it) is not
  sent again.
- :class:`~schemas.records.CancelRequest`: cancel our working order by
  client id (an unknown or finished id: nothing); a dry run records it.
- :class:`~schemas.records.Protection`: kept per symbol; each poll cycle (at
  most once a second per symbol) the last trade is compared with its stop
  and target, and a crossed level sends a market exit of the protected
  quantity with the client id ``{stop|target}:{symbol}:{protection.ts}``
  (so a restart cannot send it twice); a denied exit is a ``rejected``
  event and the protection is dropped.
- :class:`~schemas.records.Heartbeat`: feeds the dead man's switch; when it
  trips every open order of ours is cancelled and nothing is sent until
  heartbeats return.
- A ``loop_end`` :class:`~schemas.records.StepMark` (a free-running loop's
  bounded run ends): every protection is checked at once, and the mark
  waits in :attr:`Executor.ended` for the service loop to answer it with
  ``venue_end`` marks once what came before is delivered.
  :class:`~schemas.records.VenueBar` and the other marks are for the paper
  venue's lockstep mode; ignored here.
- The dead man's switch is judged only when the service has read every
  message there is (``poll(now, caught_up=True)``): heartbeats that wait
  behind a backlog of orders are not silence.

An order over ``execution.twap_threshold`` is worked as a TWAP or iceberg
parent (:mod:`flows.worked_orders`); its children go through
:meth:`Executor.order` like any order. Ticks (:meth:`Executor.on_tick`) drive
the parents and the observed volume of the expected slippage's impact term.

Each fill carries its realised slippage against the last trade when its
order went (0.0 when unknown, e.g. an order sent before a restart), and an
:class:`~schemas.records.ExecutionQuality` row goes to ``execution_quality``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from flows.execution_venue import CcxtVenue, fill_key, fill_of, order_events, state_event
from flows.worked_orders import WorkedOrders
from operators.execution.algos import ChildOrder
from operators.execution.cost_model import BrokerSettings, taker_slippage_bps
from operators.execution.deadman import (
    STOP as VENUE_STOP,
)
from operators.execution.deadman import (
    DeadMansSwitch,
    DeadMansSwitchSettings,
    VenueHealth,
)
from operators.execution.limits import ExecutionGuard
from operators.execution.observed_volume import ObservedVolume, ObservedVolumeSettings
from operators.execution.quality import SlippageMonitor, execution_quality, realised_slippage_bps
from operators.execution.reconcile import assets_of
from schemas.codec import SchemaError, decode
from schemas.records import (
    ACCEPTED,
    BUY,
    CANCELLED,
    FINAL_ORDER_EVENTS,
    LOOP_END,
    MARKET,
    PARSE,
    REJECTED,
    SCHEMA,
    SELL,
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
    VenueBar,
)
from sources.chunk_source import wall_ms

KILL_HOOK = "QBTC_TEST_EXECUTE_KILL"
"""Test hook ``<point>:<n>``: the process ends (``os._exit(137)``) the n-th time it reaches ``point``
(:data:`KILL_POINTS`)."""
KILL_POINTS = (
    "decoded", "guarded", "sent", "events", "fills", "commit", "startup_listed", "missing_fills",
    "poll_trades", "cancel_sent", "protection_sent", "deadman_cancel", "twap_child_sent",
    "iceberg_refill",
)  # fmt: skip
POLL_MS = 1_000
"""Followed orders and protected symbols are looked at this often."""
RETRIES = (0.5, 1.0, 2.0)
"""Waits between attempts after a network error; then the order is rejected."""
UNREACHABLE = "venue unreachable"
"""How the reason of an order given up after network errors starts (it may have reached the venue)."""
HOLDS = ("reconcile", "deadman", "venue", "pause")
"""The guard's holds that ``resume`` releases."""

Emit = Callable[[str, object], None]


def kill_hook(env: dict | os._Environ = os.environ) -> Callable[[str], None]:
    """The test hook of :data:`KILL_HOOK` (a no-op without it)."""
    point, _, n = env.get(KILL_HOOK, "").partition(":")
    if not point:
        return lambda _name: None
    left = [int(n) if n.isdigit() else 1]

    def reached(name: str) -> None:
        if name == point:
            left[0] -= 1
            if left[0] <= 0:
                os._exit(137)

    return reached


@dataclass
class Summary:
    orders: int = 0
    would_send: int = 0
    accepted: int = 0
    rejected: int = 0
    fills: int = 0
    dead_letters: int = 0
    skipped: int = 0
    cancels: int = 0

    def line(self) -> str:
        return (
            f"qbtc execute: {self.orders} orders ({self.would_send} would_send, {self.accepted} accepted, "
            f"{self.rejected} rejected), {self.fills} fills, {self.dead_letters} dead letters"
        )


@dataclass
class Working:
    """An order sent and not final: what the poll compares the venue's answer with."""

    order: Order
    venue_id: str
    filled: float = 0.0
    reference: float | None = None
    expected_bps: float = 0.0


def protection_exit(p: Protection, kind: str, ts: int) -> Order:
    """The market exit of a protection's quantity, with its deterministic client id."""
    side = SELL if p.position_qty > 0 else BUY
    oid = f"{kind}:{p.symbol}:{p.ts}"
    return Order(ts, oid, "", p.symbol, side, abs(p.position_qty), MARKET, 0.0, kind, "protection")


def crossed(p: Protection, last: float) -> str | None:
    """``stop`` or ``target`` when ``last`` reached that level of ``p``, else None.

    >>> p = Protection(0, "BTC/USDT", 0.5, 90.0, 120.0)
    >>> crossed(p, 100.0), crossed(p, 89.0), crossed(p, 120.0)
    (None, 'stop', 'target')
    """
    long = p.position_qty > 0
    if p.stop > 0 and (last <= p.stop if long else last >= p.stop):
        return "stop"
    if p.target > 0 and (last >= p.target if long else last <= p.target):
        return "target"
    return None


class Executor:
    """Messages of the ``orders`` topic -> venue calls -> records (``emit(table, record)``).

    ``venue`` is None for a dry run. ``seen_fills``: identities (:func:`fill_key`) of the fills
    already on the ``fills`` topic: a trade is published once. :meth:`restore` takes the start-up
    reconciliation's results before the first message.
    """

    def __init__(
        self,
        options,
        guard: ExecutionGuard,
        venue: CcxtVenue | None,
        emit: Emit,
        seen_fills: set[tuple],
        now_ms: Callable[[], int] = wall_ms,
        sleep: Callable[[float], None] = time.sleep,
        broker: BrokerSettings | None = None,
        kill: Callable[[str], None] | None = None,
        deliver: Callable[[], None] | None = None,
    ) -> None:
        self.options, self.guard, self.venue, self.emit = options, guard, venue, emit
        self.seen_fills, self.now_ms, self.sleep = seen_fills, now_ms, sleep
        self.broker = broker or BrokerSettings(bar_interval_ms=1000)
        self.kill = kill or kill_hook()
        self.health = VenueHealth()
        timeout = int(round(guard.limits.deadman_s * 1000))
        self.deadman = DeadMansSwitch(DeadMansSwitchSettings(timeout_ms=max(timeout, 1)))
        self.monitor = SlippageMonitor()
        self.summary = Summary()
        self.working: dict[str, Working] = {}
        self.done: set[str] = set()  # order ids handled before (not sent again)
        self.ours: set[str] = set()  # every client id of ours
        self.symbols: set[str] = set()
        self.protections: dict[str, Protection] = {}
        self.checked: dict[str, int] = {}  # protected symbol -> last check
        self.deliver = deliver or (lambda: None)  # what was emitted is on the topics when it returns
        self.volume = ObservedVolume(
            ObservedVolumeSettings(
                slice_ms=self.broker.bar_interval_ms, slices=self.broker.recent_volume_bars
            )
        )
        self.worked = WorkedOrders(self)
        self.fill_effect: dict[str, float] = {}  # per asset, what our published fills moved
        self.last_poll = 0
        self.rebaseline: Callable[[], None] | None = None  # after a resume of a failed reconciliation
        self.ended: list[StepMark] = []  # loops' end marks to answer once what came before is out

    # -- messages -------------------------------------------------------------------

    def handle(self, value: bytes | None, source: str) -> None:
        """One message of the orders topic."""
        now = self.now_ms()
        try:
            record = decode(value or b"")
        except SchemaError as exc:
            reason = PARSE if str(exc).startswith("not JSON") else SCHEMA
            self._dead(now, source, reason, f"{source}: {exc}", value or b"")
            return
        self.kill("decoded")
        if isinstance(record, Order):
            self.order(record, now)
        elif isinstance(record, Heartbeat):
            self.beat(now)
        elif isinstance(record, CancelRequest):
            self.cancel(record, now)
        elif isinstance(record, Protection):
            self.protect(record)
        elif isinstance(record, StepMark) and record.kind == LOOP_END:
            self.check_protections(now, every=True)
            self.ended.append(record)
        elif not isinstance(record, VenueBar | StepMark):
            got = type(record).__name__
            self._dead(now, source, SCHEMA, f"{source}: expected an order, got {got}", value or b"")
        self.worked.settle()

    def on_tick(self, symbol: str, ts: int, price: float, qty: float) -> None:
        """A market print of ``<prefix>ticks``: observed volume, and the parents of the symbol."""
        self.volume.update(symbol, ts, qty)
        self.worked.on_tick(symbol, ts, price, qty)
        self.worked.settle()

    def _dead(self, now: int, source: str, reason: str, message: str, payload: bytes) -> None:
        self.summary.dead_letters += 1
        self.emit("dead_letters", DeadLetter(now, source, reason, message, payload))

    def _event(self, order: Order, kind: str, reason: str = "") -> OrderEvent:
        price = order.limit_price if order.order_type != MARKET else 0.0
        return OrderEvent(
            self.now_ms(), order.order_id, "", order.symbol, order.side, kind,
            order.qty, 0.0, price, reason, self.options.venue, 0,
            0.0 if kind in FINAL_ORDER_EVENTS else order.qty,
        )  # fmt: skip

    def _report(self, event: OrderEvent) -> None:
        if event.kind == ACCEPTED:
            self.summary.accepted += 1
        elif event.kind == REJECTED:
            self.summary.rejected += 1
        elif event.kind == WOULD_SEND:
            self.summary.would_send += 1
        self.emit("order_events", event)
        if event.kind in FINAL_ORDER_EVENTS:
            self.worked.noticed(event)

    def _risk(self, kind: str, level: int, action: str, message: str, symbol: str = "") -> None:
        self.emit("risk_events", RiskEvent(self.now_ms(), kind, level, symbol, 0.0, 0.0, action, message))

    def order(self, order: Order, now: int, point: str = "sent", child: ChildOrder | None = None) -> None:
        """Guard, send, report; follow it when it is not final.

        An order of the loop over the TWAP threshold becomes a parent (:mod:`flows.worked_orders`);
        ``child``: one of a parent's children, with its expected slippage.
        """
        self.summary.orders += 1
        self.ours.add(order.order_id)
        self.symbols.add(order.symbol)
        if order.order_id in self.done:
            self.summary.skipped += 1  # handled before a restart: its records are out
            return
        last = self._last_price(order.symbol)
        denied = self.guard.check(order, last, now)
        self.kill("guarded")
        if denied is not None:
            self.done.add(order.order_id)
            self._report(self._event(order, REJECTED, denied))
            return
        if self.venue is None:
            self.done.add(order.order_id)
            self._report(self._event(order, WOULD_SEND))
            return
        kind = self.worked.kind_of(order, last) if point == "sent" and child is None else None
        if kind is not None:
            self.done.add(order.order_id)
            self.worked.start(order, kind, last, now)
            return
        if child is not None:
            expected = child.expected_slippage_bps
        else:
            volume = self.volume.get(order.symbol) or 0.0  # the impact term: 0 without ticks
            expected = taker_slippage_bps(self.broker, order.qty, 1.0, volume)
        got = self._send(order, point)
        self.done.add(order.order_id)
        if got is None:
            return
        self.guard.on_sent(order, self.guard.notional(order, last), now)
        events = order_events(order, got, self.options.venue, self.now_ms())
        for event in events:
            self._report(event)
        self.kill("events")
        w = Working(order, str(got.get("id") or ""), 0.0, last, expected)
        if events[-1].kind in FINAL_ORDER_EVENTS:
            self.guard.on_closed(order.order_id)
        else:
            self.working[order.order_id] = w
        if events[-1].filled_qty > 0:
            self._fills(w)
            self.kill("fills")
        w.filled = events[-1].filled_qty

    def last_price(self, symbol: str) -> float | None:
        """The venue's last trade price of ``symbol`` (None: none, an error, or a dry run)."""
        return self._last_price(symbol)

    def _last_price(self, symbol: str) -> float | None:
        if self.venue is None:
            return None
        try:
            return self.venue.last_price(symbol)
        except self.venue.ccxt.BaseError:
            return None

    def _send(self, order: Order, point: str) -> dict | None:
        ccxt = self.venue.ccxt
        for attempt in range(len(RETRIES) + 1):
            try:
                got = self.venue.send(order)
            except ccxt.NetworkError as exc:
                self._health(self.health.failed(self.now_ms()))
                if attempt == len(RETRIES):
                    self._report(self._event(order, REJECTED, f"{UNREACHABLE}: {type(exc).__name__}"))
                    return None
                self.sleep(RETRIES[attempt])
                continue
            except ccxt.BaseError as exc:
                self._health(self.health.ok(self.now_ms()))
                text = str(exc).replace("\n", " ")[:300]
                self._report(self._event(order, REJECTED, f"venue refused: {type(exc).__name__}: {text}"))
                return None
            self._health(self.health.ok(self.now_ms()))
            self.kill(point)
            return got
        return None

    def _health(self, change) -> None:
        if change is None:
            return
        self.emit("risk_events", change.risk_event(self.options.venue))
        if change.state == VENUE_STOP:
            self.guard.halt(
                "venue", f"venue {self.options.venue} unreachable for {change.down_ms / 1000:.0f} s"
            )
        elif change.previous == VENUE_STOP:
            self.guard.release("venue")

    def _fills(self, w: Working) -> None:
        """Publish the order's trades not published yet (one fill per trade)."""
        for trade in self.venue.trades(w.order.symbol, w.venue_id):
            fill = fill_of(w.order, trade)
            if fill_key(fill) in self.seen_fills:
                continue
            self.publish_fill(fill, w.reference, w.expected_bps)

    def publish_fill(self, fill: Fill, reference: float | None, expected_bps: float) -> None:
        """A new fill: with its slippage and execution quality when the reference price is known."""
        if reference:
            realised = realised_slippage_bps(fill.side, reference, fill.price)
            fill = dataclasses.replace(fill, slippage_bps=realised)
        self.seen_fills.add(fill_key(fill))
        self.summary.fills += 1
        self.emit("fills", fill)
        self.worked.noticed(fill)
        base, quote = assets_of(fill.symbol)
        sign = 1.0 if fill.side == BUY else -1.0
        self.fill_effect[base] = self.fill_effect.get(base, 0.0) + sign * fill.qty
        self.fill_effect[quote] = self.fill_effect.get(quote, 0.0) - sign * fill.qty * fill.price - fill.fee
        if reference:
            row = execution_quality(fill, reference, expected_bps)
            self.emit("execution_quality", row)
            change = self.monitor.update(fill.ts, expected_bps, row.realised_slippage_bps)
            if change is not None:
                self.emit("risk_events", change.risk_event(fill.symbol))

    # -- cancel requests, protections, heartbeats ---------------------------------------

    def cancel(self, req: CancelRequest, now: int) -> None:
        """Cancel our working order ``req.order_id``; unknown or finished ids: nothing."""
        self.summary.cancels += 1
        if self.venue is None:
            order = Order(req.ts, req.order_id, "", req.symbol, "", 0.0, MARKET, 0.0, "cancel", "")
            event = self._event(order, CANCELLED, "dry run: cancel request recorded, nothing sent")
            self._report(event)
            return
        if not self.worked.cancel(req.order_id, "requested"):
            self.cancel_working(req.order_id)

    def cancel_working(self, order_id: str) -> None:
        """Cancel a followed order at the venue and report its final state (not followed: nothing)."""
        w = self.working.get(order_id)
        if w is None:
            return
        try:
            got = self.venue.cancel(order_id, w.order.symbol)
        except self.venue.ccxt.BaseError as exc:
            self._risk("execution", 1, "none", f"cancel of {order_id!r} failed: {type(exc).__name__}")
            return
        self.kill("cancel_sent")
        self._update(w, got)

    def protect(self, p: Protection) -> None:
        """Remember (or clear) the protection of ``p.symbol``."""
        if p.position_qty == 0 or (p.stop == 0.0 and p.target == 0.0):
            self.protections.pop(p.symbol, None)
            return
        self.protections[p.symbol] = p
        self.symbols.add(p.symbol)

    def beat(self, now: int) -> None:
        """A heartbeat arrived: arms the switch, clears a trip."""
        if self.deadman.beat(now):
            self.guard.release("deadman")
            self._risk("execution", 0, "resume", "heartbeats are back: sending again")

    # -- between messages ---------------------------------------------------------------

    def poll(self, now: int, caught_up: bool = True) -> None:
        """Time passed: the dead man's switch (``caught_up``: nothing left to read), venue health,
        followed orders and protections."""
        if caught_up and self.deadman.trip(now):
            silence = (self.deadman.silence_ms(now) or 0) / 1000
            reason = f"no heartbeat for {silence:.1f} s"
            self.guard.halt("deadman", reason)
            self._risk("execution", 3, "cancel_all", f"dead man's switch: {reason}: cancel every open order")
            self.cancel_all()
        if self.venue is None:
            return
        self._health(self.health.check(now))
        self.worked.settle()  # a hold stops the parents
        if now - self.last_poll < POLL_MS:
            return
        self.last_poll = now
        for w in list(self.working.values()):
            try:
                got = self.venue.fetch(w.order.order_id, w.order.symbol)
            except self.venue.ccxt.NetworkError:
                self._health(self.health.failed(now))
                return
            except self.venue.ccxt.BaseError:
                continue
            self._health(self.health.ok(now))
            self._update(w, got, point="poll_trades")
        self.check_protections(now)
        self.worked.settle()

    def check_protections(self, now: int, every: bool = False) -> None:
        """Compare each protected symbol's last trade with its levels (at most once per
        :data:`POLL_MS`, unless ``every``); a crossed level sends the exit."""
        if self.venue is None:
            return
        for symbol, p in list(self.protections.items()):
            if not every and now - self.checked.get(symbol, -POLL_MS) < POLL_MS:
                continue
            self.checked[symbol] = now
            last = self._last_price(symbol)
            kind = None if last is None else crossed(p, last)
            if kind is not None:
                del self.protections[symbol]
                self.order(protection_exit(p, kind, now), now, point="protection_sent")

    def _update(self, w: Working, got: dict, point: str = "") -> None:
        """The venue's answer about a followed order: new fills, then its state when it changed."""
        filled = float(got.get("filled") or 0.0)
        event = state_event(w.order, got, self.options.venue, self.now_ms())
        if filled > w.filled or (event is not None and event.kind in FINAL_ORDER_EVENTS):
            self._fills(w)
            if point:
                self.kill(point)
        if event is None:
            return
        final = event.kind in FINAL_ORDER_EVENTS
        if final or filled > w.filled:
            self._report(event)
            w.filled = filled
        if final:
            self.working.pop(w.order.order_id, None)
            self.guard.on_closed(w.order.order_id)

    def cancel_all(self) -> int:
        """Cancel every open order of ours at the venue (listed per symbol we trade); how many."""
        if self.venue is None:
            return 0
        n = 0
        for symbol in sorted(self.symbols | {w.order.symbol for w in self.working.values()}):
            try:
                listed = self.venue.ex.fetch_open_orders(symbol)
            except self.venue.ccxt.BaseError as exc:
                self._risk("execution", 3, "cancel_all", f"cannot list open orders of {symbol}: {exc!s:.200}")
                continue
            for o in listed:
                cid = str(o.get("clientOrderId") or "")
                if cid not in self.ours:
                    continue
                try:
                    got = self.venue.cancel(cid, symbol)
                except self.venue.ccxt.BaseError:
                    continue
                n += 1
                self.kill("deadman_cancel")
                w = self.working.get(cid)
                if w is not None:
                    self._update(w, got)
        return n

    # -- operator commands ----------------------------------------------------------------

    def control(self, command: str, reason: str, now_ms: int) -> None:
        """An operator command from the ``control`` topic.

        ``resume`` releases the reconcile, dead man's, venue and pause holds; ``pause`` holds new
        orders; ``flatten`` cancels every open order of ours and drops the protections (the loop
        closes its positions itself). Other commands concern the loop, not the service: ignored.
        """
        if command == "resume":
            released = [name for name in HOLDS if self.guard.release(name)]
            if "reconcile" in released and self.rebaseline is not None:
                self.rebaseline()  # the operator accepted the venue's balances
            if released:
                self._risk(
                    "control", 0, "resume", f"resume ({reason or 'operator'}): released {', '.join(released)}"
                )
        elif command == "pause":
            self.guard.halt("pause", reason or "paused by the operator")
            self._risk("control", 1, "pause", f"pause: no new orders ({reason or 'operator'})")
            self.worked.settle()
        elif command == "flatten":
            self.protections.clear()
            self.worked.stop_all(f"flatten ({reason or 'operator'})")
            n = self.cancel_all()
            self._risk(
                "control", 2, "flatten", f"flatten: {n} open orders cancelled ({reason or 'operator'})"
            )
