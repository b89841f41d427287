"""TWAP and iceberg parents worked by the execution service (``qbtc execute --venue ccxt:...``).

An order whose notional (:meth:`~operators.execution.limits.ExecutionGuard.notional`:
qty x the venue's last trade price, or its limit price when higher) exceeds
``execution.twap_threshold`` is not sent: a market order becomes a TWAP
parent (:class:`~operators.execution.algos.TwapWorker`: participation and
slippage cap from ``[execution]``, schedule from ``execution_limits.twap_horizon_s``
and ``twap_slice_s``), a limit order an iceberg parent
(:class:`~operators.execution.algos.IcebergWorker`, display
``execution_limits.iceberg_display_share`` of its qty floored to the market's
amount step). Stops and protective exits are never worked.

What the loop sees, as the paper service publishes it: the parent's
``accepted`` (reason ``twap: ...`` / ``iceberg: ...``, no venue id), each child
as an :class:`~schemas.records.Order` on ``order-events`` (delivered before the
child is sent), the child's own events and fills, the parent's
``partially_filled`` with ``leaves_qty`` after each child fill and its final
``filled`` (or ``cancelled``). A TWAP child over the slippage cap is a
``cancelled`` event ``twap_slippage: ...`` and the parent goes on. A child
denied by the guard or refused by the venue stops its parent (``cancelled``,
``child ... rejected: ...``), as do a cancel request for the parent, ``flatten``
and any hold of the guard (dead man's switch, pause, venue, reconcile): the
open child is cancelled at the venue first.

Market prints come from ``<prefix>ticks`` (:meth:`WorkedOrders.on_tick`):
without ticks of its symbol a TWAP parent sends nothing (its slices never
close); an iceberg re-shows after a child closed unfilled at the next tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.execution.algos import AlgoOut, ChildOrder, IcebergWorker, TwapSettings, TwapWorker, lot_qty
from operators.execution.venue import ICEBERG, TWAP
from schemas.records import (
    ACCEPTED,
    CANCELLED,
    FILLED,
    LIMIT,
    MARKET,
    PARTIALLY_FILLED,
    REJECTED,
    Fill,
    Order,
    OrderEvent,
)

KINDS = (TWAP, ICEBERG)
"""How the ``accepted`` event of a parent's reason starts (``twap: ...``)."""


@dataclass
class Parent:
    """One parent being worked: its worker and what was reported of it."""

    order: Order
    kind: str
    worker: TwapWorker | IcebergWorker
    reported: float = 0.0  # filled qty of the parent's last event
    stop_reason: str = ""
    children: list[str] = field(default_factory=list)


class WorkedOrders:
    """The parents of one :class:`~flows.executor.Executor`; it sends their children through it."""

    def __init__(self, ex) -> None:
        self.ex = ex
        self.parents: dict[str, Parent] = {}
        self.parent_of: dict[str, str] = {}  # child id -> parent id
        self._fills: list[Fill] = []
        self._closed: list[OrderEvent] = []

    # -- which orders, and their workers ---------------------------------------------------

    def kind_of(self, order: Order, last: float | None) -> str | None:
        """``twap`` or ``iceberg`` when ``order`` is to be worked, else None."""
        if order.order_type not in (MARKET, LIMIT) or self.ex.venue is None:
            return None
        notional = self.ex.guard.notional(order, last)
        if notional is None or not notional > self.ex.broker.twap_threshold:
            return None
        return TWAP if order.order_type == MARKET else ICEBERG

    def _worker(self, order: Order, kind: str, last: float | None) -> TwapWorker | IcebergWorker:
        lot, min_qty = self.ex.venue.lot(order.symbol, last or order.limit_price)
        limits = self.ex.guard.limits
        if kind == TWAP:
            schedule = TwapSettings(
                horizon_ms=round(limits.twap_horizon_s * 1000), slice_ms=round(limits.twap_slice_s * 1000)
            )
            return TwapWorker(order, self.ex.broker, schedule, lot=lot, min_qty=min_qty)
        display = max(lot_qty(order.qty * limits.iceberg_display_share, lot), min_qty, lot)
        return IcebergWorker(order, display, lot=lot, min_qty=min_qty)

    def start(self, order: Order, kind: str, last: float | None, now: int) -> None:
        """Take ``order`` as a parent: its ``accepted`` event, then its first child (iceberg)."""
        worker = self._worker(order, kind, last)
        p = self.parents[order.order_id] = Parent(order, kind, worker)
        if kind == TWAP:
            s = worker.settings
            what = f"twap: worked by the service, {s.horizon_ms / 1000:g} s in {s.slice_ms / 1000:g} s slices"
        else:
            what = f"iceberg: worked by the service, display {worker.display_qty:.10g}"
        self._parent_event(p, ACCEPTED, what)
        self._apply(p, worker.start(order.ts), now)

    def restore(self, order: Order, kind: str, children: list[Order], filled: dict[str, tuple[float, float]],
                open_child: str | None, reported: float) -> None:  # fmt: skip
        """Take back a parent after a restart: its children (from the topic), their fills (qty,
        notional by child id) and the child the venue still works."""
        worker = self._worker(order, kind, self.ex.last_price(order.symbol))
        made = max((int(c.order_id.rpartition("/")[2]) for c in children), default=0)
        qty = sum(filled.get(c.order_id, (0.0, 0.0))[0] for c in children)
        notional = sum(filled.get(c.order_id, (0.0, 0.0))[1] for c in children)
        left = 0.0
        if open_child is not None:
            child = next(c for c in children if c.order_id == open_child)
            left = max(child.qty - filled.get(open_child, (0.0, 0.0))[0], 0.0)
        worker.restore(made, qty, notional, open_child, left)
        p = self.parents[order.order_id] = Parent(order, kind, worker, reported)
        for c in children:
            self.parent_of[c.order_id] = order.order_id
            p.children.append(c.order_id)
        if qty > reported * (1 + 1e-9) and not worker.finished:  # child fills not reported yet
            p.reported = qty
            self._parent_event(p, PARTIALLY_FILLED)

    # -- what happened (called by the executor) ---------------------------------------------

    def noticed(self, record: Fill | OrderEvent) -> None:
        """A fill or a final event of one of our children (handled at :meth:`settle`)."""
        if record.order_id in self.parent_of:
            (self._fills if isinstance(record, Fill) else self._closed).append(record)

    def on_tick(self, symbol: str, ts: int, price: float, qty: float) -> None:
        """A market print of ``symbol``: the parents of the symbol may send a child."""
        for p in list(self.parents.values()):
            if p.order.symbol == symbol and not p.stop_reason:
                self._apply(p, p.worker.on_market(ts, price, qty), self.ex.now_ms())

    def cancel(self, parent_id: str, reason: str) -> bool:
        """Stop working ``parent_id`` (its open child is cancelled at the venue); False when not ours."""
        p = self.parents.get(parent_id)
        if p is None:
            return False
        self._stop(p, reason)
        self.settle()
        return True

    def stop_all(self, reason: str) -> None:
        """Stop every parent (flatten, holds)."""
        for p in list(self.parents.values()):
            self._stop(p, reason)
        self.settle()

    def settle(self) -> None:
        """Apply the fills and closes noticed, report the parents' progress, finish the parents done."""
        holds = self.ex.guard.holds
        if holds and any(not p.stop_reason for p in self.parents.values()):
            name, why = next(iter(holds.items()))
            for p in list(self.parents.values()):
                self._stop(p, f"halted ({name}): {why}")
        while self._fills or self._closed:
            now = self.ex.now_ms()
            fills, closed = self._fills, self._closed  # a child's fills before its close
            self._fills, self._closed = [], []
            touched: dict[str, Parent] = {}
            for f in fills:
                p = self.parents.get(self.parent_of[f.order_id])
                if p is not None:
                    touched[p.order.order_id] = p
                    self._apply(p, p.worker.on_fill(f.ts, f.qty, f.price), now)
            for p in touched.values():
                w = p.worker
                if w.filled_qty > p.reported and not w.finished:
                    p.reported = w.filled_qty
                    self._parent_event(p, PARTIALLY_FILLED)
            for e in closed:
                p = self.parents.get(self.parent_of[e.order_id])
                if p is None:
                    continue
                if p.worker.open_child == e.order_id:
                    self._apply(p, p.worker.on_child_closed(now), now)
                if e.kind == REJECTED:
                    self._stop(p, f"child {e.order_id} rejected: {e.reason}")
        for p in list(self.parents.values()):
            w = p.worker
            if w.finished or w.exhausted:
                del self.parents[p.order.order_id]
                whole = w.remaining <= 1e-9 * p.order.qty
                if whole or (w.exhausted and w.filled_qty > 0 and not p.stop_reason):
                    rest = (
                        "" if whole else f"the rest {w.remaining:.10g} is under the market's lot or minimum"
                    )
                    self._parent_event(p, FILLED, rest)
                else:
                    self._parent_event(p, CANCELLED, p.stop_reason or "nothing could be sent")

    # -- the children -----------------------------------------------------------------------

    def _stop(self, p: Parent, reason: str) -> None:
        if p.stop_reason:
            return
        p.stop_reason = reason
        self._apply(p, p.worker.cancel(self.ex.now_ms()), self.ex.now_ms())

    def _apply(self, p: Parent, out: AlgoOut, now: int) -> None:
        ex = self.ex
        for c in out.skipped:
            self._publish_child(p, c.order)
            child = c.order
            ex._report(
                OrderEvent(
                    now,
                    child.order_id,
                    "",
                    child.symbol,
                    child.side,
                    CANCELLED,
                    child.qty,
                    0.0,
                    0.0,
                    f"{c.reason}: {c.message}",
                    ex.options.venue,
                    0,
                    0.0,
                )  # fmt: skip
            )
        for child_id in out.cancel:
            ex.cancel_working(child_id)
        for c in out.send:
            self._send(p, c, now)

    def _publish_child(self, p: Parent, child: Order) -> None:
        self.parent_of[child.order_id] = p.order.order_id
        p.children.append(child.order_id)
        self.ex.ours.add(child.order_id)
        self.ex.emit("order_events", child)
        self.ex.deliver()  # on the topic before it is sent: a restart knows every child id used

    def _send(self, p: Parent, c: ChildOrder, now: int) -> None:
        self._publish_child(p, c.order)
        n = p.worker.children
        point = "twap_child_sent" if p.kind == TWAP else "iceberg_refill" if n > 1 else "sent"
        self.ex.order(c.order, now, point=point, child=c)

    def _parent_event(self, p: Parent, kind: str, reason: str = "") -> None:
        o, w = p.order, p.worker
        final = kind in (FILLED, CANCELLED)
        price = w.avg_price or (o.limit_price if o.order_type == LIMIT else 0.0)
        self.ex._report(
            OrderEvent(
                self.ex.now_ms(),
                o.order_id,
                "",
                o.symbol,
                o.side,
                kind,
                o.qty,
                w.filled_qty,
                price,
                reason,
                self.ex.options.venue,
                0,
                0.0 if final else w.remaining,
            )  # fmt: skip
        )
