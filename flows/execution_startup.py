"""``qbtc execute`` before it consumes: our books from the topics, reconciled with the venue.

:func:`read_book` reads ``orders`` (orders and protections), ``order-events``,
``fills`` and the balance baselines on ``risk-events`` to their ends.
:func:`start_up` asks the venue for its open orders (every market when it has
at most :data:`MAX_SCAN_SYMBOLS`, else the symbols of our orders), each of our
orders with no event yet by client id, its recent trades in our symbols and
its balances, runs :func:`operators.execution.reconcile.reconcile` and emits
what it found: missing fills, the events of orders learnt or closed while we
were down, ``external`` events with ``reconcile`` risk events. The
:class:`~flows.executor.Executor` then follows the orders the venue still
works and keeps the protections whose exits were not sent.

**Expected balances.** The venue's balances are compared, per asset of the
symbols we trade, with a *baseline* plus the effect of every fill on the
``fills`` topic (base +/- qty, quote -/+ qty x price minus the fee) plus the
missing fills. The baseline of an asset is set the first time the asset is
ours at a start-up (the venue's balance minus those fills: nothing to compare
that time) and again when an operator resumes after a mismatch (``qbtc
control resume``: the venue's balances are taken as right); it is published as
a ``reconcile`` risk event (level 0, action ``baseline``, symbol = the asset,
value = the baseline), so it lives on the topics with the rest. A difference
beyond the tolerance (0.01 %, :class:`~operators.execution.reconcile.ReconcileSettings`)
fails closed: the guard's ``reconcile`` hold denies every order (a ``rejected``
event each) and a level-3 ``reconcile`` risk event says why, until ``resume``.
Deposits, withdrawals and trades by hand in our assets therefore fail closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flows.execution_venue import CcxtVenue, fill_key, venue_order, venue_trade
from flows.executor import UNREACHABLE, Executor, Working, protection_exit
from flows.worked_orders import KINDS
from operators.execution.reconcile import OurBook, VenueView, assets_of, reconcile
from schemas.errors import OutsideFailure
from schemas.records import (
    ACCEPTED,
    BUY,
    CANCELLED,
    FINAL_ORDER_EVENTS,
    REJECTED,
    Fill,
    Order,
    OrderEvent,
    Protection,
    RiskEvent,
)

MAX_SCAN_SYMBOLS = 50
"""Open orders are listed for every market of a venue with at most this many, else for our symbols."""
BASELINE = "baseline"
"""Action of the ``reconcile`` risk events that carry a balance baseline."""
SNAPSHOT_TRIES = 3
"""Trades, balances, trades: asked again (this many times at most) while trades arrive in between."""


def topic_records(
    conf: dict, topic: str, classes: tuple[type, ...], timeout_s: float, group: str, committed: bool = False
) -> list:
    """Every record of ``classes`` on ``topic`` up to its current end (read without committing);
    ``committed``: only up to the offsets ``group`` committed (what it has consumed)."""
    from confluent_kafka import Consumer, TopicPartition

    from sources.kafka_ticks import partition_records, watermarks

    consumer = Consumer({**conf, "group.id": f"{group}-scan", "enable.auto.commit": False})
    out: list = []
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        parts = meta.topics[topic].partitions if topic in meta.topics else {}
        ends = _committed(conf, group, topic, sorted(parts), timeout_s) if committed else {}
        for p in sorted(parts):
            low, high = watermarks(consumer, TopicPartition(topic, p), timeout_s)
            if committed:
                high = min(high, ends.get(p, low))
            for _offset, _value, record in partition_records(consumer, topic, p, low, high, timeout_s):
                if isinstance(record, classes):  # anything else is not ours to judge here
                    out.append(record)
    finally:
        consumer.close()
    return out


def _committed(conf: dict, group: str, topic: str, parts: list[int], timeout_s: float) -> dict[int, int]:
    """The offsets ``group`` committed on ``topic`` (partitions without one: absent)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=timeout_s)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in got if tp.offset >= 0}


@dataclass
class Book:
    """What the topics say at a start."""

    orders: list[Order] = field(default_factory=list)
    children: list[Order] = field(default_factory=list)  # TWAP and iceberg children (on order-events)
    protections: list[Protection] = field(default_factory=list)
    events: list[OrderEvent] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)


def read_book(conf: dict, topics: dict[str, str], timeout_s: float, group: str, venue: bool) -> Book:
    """The fills always; with a venue also orders, protections, order events and baselines."""
    book = Book(fills=topic_records(conf, topics["fills"], (Fill,), timeout_s, group))
    if not venue:
        return book
    book.orders = topic_records(conf, topics["orders"], (Order,), timeout_s, group)
    # protections the service took before it stopped (later ones arrive as messages)
    book.protections = topic_records(conf, topics["orders"], (Protection,), timeout_s, group, committed=True)
    for r in topic_records(conf, topics["order_events"], (OrderEvent, Order), timeout_s, group):
        (book.events if isinstance(r, OrderEvent) else book.children).append(r)
    for r in topic_records(conf, topics["risk_events"], (RiskEvent,), timeout_s, group):
        if r.kind == "reconcile" and r.action == BASELINE:
            book.baseline[r.symbol] = r.value
    return book


def fill_effect(fills: list[Fill]) -> dict[str, float]:
    """Per asset, what ``fills`` moved (quote net of fees).

    >>> fill_effect([Fill(0, "o", "BTC/USDT", "buy", 0.5, 100.0, 0.1, 0.0)])
    {'BTC': 0.5, 'USDT': -50.1}
    """
    out: dict[str, float] = {}
    for f in fills:
        base, quote = assets_of(f.symbol)
        sign = 1.0 if f.side == BUY else -1.0
        out[base] = out.get(base, 0.0) + sign * f.qty
        out[quote] = out.get(quote, 0.0) - sign * f.qty * f.price - f.fee
    return out


def _protections(items: list[Protection]) -> dict[str, Protection]:
    out: dict[str, Protection] = {}
    for p in items:
        if p.position_qty == 0 or (p.stop == 0.0 and p.target == 0.0):
            out.pop(p.symbol, None)
        else:
            out[p.symbol] = p
    return out


def _snapshot(venue: CcxtVenue, symbols: list[str]) -> tuple[list, dict[str, float]]:
    def trades() -> list:
        return [venue_trade(t, s) for s in symbols for t in venue.ex.fetch_my_trades(s)]

    before = trades()
    for _ in range(SNAPSHOT_TRIES):
        balances = venue.balances()
        after = trades()
        if after == before:
            break
        before = after
    return after, balances


def baseline_events(values: dict[str, float], now_ms: int) -> list[RiskEvent]:
    """The ``reconcile`` risk events that carry balance baselines."""
    return [
        RiskEvent(now_ms, "reconcile", 0, a, v, 0.0, BASELINE, f"{a} balance baseline {v:.10g}")
        for a, v in sorted(values.items())
    ]


def start_up(venue: CcxtVenue, name: str, book: Book, ex: Executor, now_ms: int) -> None:
    """Reconcile ``book`` with the venue, emit what was found and hand ``ex`` its state."""
    orders = {o.order_id: o for o in (*book.orders, *book.children)}
    evented: dict[str, list[OrderEvent]] = {}
    for e in book.events:
        evented.setdefault(e.order_id, []).append(e)
    venue_ids = {oid: e.venue_order_id for oid, es in evented.items() for e in es if e.venue_order_id}
    protections = _protections(book.protections)
    exits = {}
    for symbol, p in list(protections.items()):
        pair = [protection_exit(p, kind, p.ts) for kind in ("stop", "target")]
        exits.update({x.order_id: x for x in pair})
        if any(x.order_id in evented for x in pair):
            del protections[symbol]  # its exit went before the restart
    markets = venue.ex.symbols or []
    pending = [
        o
        for oid, o in {**orders, **exits}.items()
        if (oid not in evented or _given_up(evented[oid])) and o.symbol in markets and _sendable(o.qty)
    ]  # the others cannot have reached the venue: the guard or the venue rejects them when consumed
    recorded: dict[str, float] = {}
    for f in book.fills:
        recorded[f.order_id] = recorded.get(f.order_id, 0.0) + f.qty
    working = [
        orders[oid]
        for oid, es in evented.items()
        if oid in orders
        and any(e.venue_order_id for e in es)
        and (
            not any(e.kind in FINAL_ORDER_EVENTS for e in es)
            or max(e.filled_qty for e in es) > recorded.get(oid, 0.0) * (1 + 1e-9) + 1e-12
        )
    ]  # still working, or finished with fills not on the topic (the process died in between)
    symbols = sorted(
        ({o.symbol for o in orders.values()} | set(protections) | {f.symbol for f in book.fills})
        & set(markets)
    )
    scan = sorted(set(symbols) | (set(markets) if len(markets) <= MAX_SCAN_SYMBOLS else set()))
    ccxt = venue.ccxt
    try:
        listed = [venue_order(o, s) for s in scan for o in venue.ex.fetch_open_orders(s)]
        ex.kill("startup_listed")
        asked = []
        for o in [*pending, *working]:
            if o.symbol not in markets:
                continue
            try:
                asked.append(venue_order(venue.fetch(o.order_id, o.symbol), o.symbol))
            except ccxt.OrderNotFound:
                continue
        trades, balances = _snapshot(venue, symbols)
    except ccxt.BaseError as exc:
        msg = f"venue {name}: start-up reconciliation: {type(exc).__name__}: {str(exc)[:200]}"
        raise OutsideFailure(msg) from None
    seen_ids = {vo.venue_order_id for vo in asked}
    view_orders = tuple(asked + [vo for vo in listed if vo.venue_order_id not in seen_ids])
    effect = fill_effect(book.fills)
    assets = {a for s in symbols for a in assets_of(s)}
    view = VenueView(name, view_orders, tuple(trades), balances)
    ours = OurBook(tuple(pending), tuple(working), tuple(book.fills), venue_ids)
    first = reconcile(ours, view, now_ms)  # what the missing fills move (no balances of ours)
    fresh = {a: balances.get(a, 0.0) - effect.get(a, 0.0) - first.expected_balances.get(a, 0.0)
             for a in assets if a not in book.baseline}  # fmt: skip
    base = {**book.baseline, **fresh}
    expected = {a: base[a] + effect.get(a, 0.0) for a in assets}
    found = reconcile(OurBook(ours.pending, ours.working, ours.fills, venue_ids, expected), view, now_ms)

    for table, record in [("risk_events", r) for r in baseline_events(fresh, now_ms)]:
        ex.emit(table, record)
    ex.fill_effect = effect
    ex.seen_fills.update(fill_key(f) for f in book.fills)
    for f in found.missing_fills:
        if fill_key(f) not in ex.seen_fills:
            ex.publish_fill(f, None, 0.0)
    if found.missing_fills:
        ex.kill("missing_fills")
    said = {(e.order_id, e.kind) for e in book.events}
    for e in found.events:
        if (e.order_id, e.kind) not in said:
            ex.emit("order_events", e)
    for r in found.risk_events(now_ms):
        ex.emit("risk_events", r)
    if found.fail_closed:
        m = found.mismatches[0]
        ex.guard.halt("reconcile", f"{m.asset} balance: venue {m.venue:.10g}, ours {m.ours:.10g}")

    by_client = {vo.client_order_id: vo for vo in view_orders if vo.client_order_id}
    everything = {**orders, **exits}
    for oid in found.working:
        vo = by_client.get(oid)
        o = everything[oid]
        ex.working[oid] = Working(
            o, vo.venue_order_id if vo else venue_ids.get(oid, ""), vo.filled_qty if vo else 0.0
        )
        ex.guard.on_sent(o, None, now_ms)
    ex.done.update(evented, (e.order_id for e in found.events), found.working, found.closed)
    ex.ours.update(everything)
    ex.symbols.update(symbols)
    ex.protections.update(protections)
    _parents(book, ex, evented, found)

    def rebaseline() -> None:
        try:
            now_balances = venue.balances()
        except ccxt.BaseError:
            return
        values = {
            a: now_balances.get(a, 0.0) - ex.fill_effect.get(a, 0.0) for a in sorted(assets | _assets(ex))
        }
        for r in baseline_events(values, ex.now_ms()):
            ex.emit("risk_events", r)

    ex.rebaseline = rebaseline


def _parents(book: Book, ex: Executor, evented: dict[str, list[OrderEvent]], found) -> None:
    """Take back the TWAP and iceberg parents not finished: their children from ``order-events``
    (each child is there before it is sent), their fills from ``fills`` plus the missing ones."""
    children: dict[str, list[Order]] = {}
    for c in book.children:
        children.setdefault(c.parent_id, []).append(c)
    now = ex.now_ms()
    for c in found.unsent:  # a child on the topic that never reached the venue: it is not sent again
        if c.parent_id:
            ex.done.add(c.order_id)
            ex.emit("order_events", OrderEvent(
                now, c.order_id, "", c.symbol, c.side, CANCELLED, c.qty, 0.0, 0.0,
                "not sent before the restart", ex.options.venue, 0, 0.0,
            ))  # fmt: skip
    filled: dict[str, tuple[float, float]] = {}
    for f in (*book.fills, *found.missing_fills):
        q, n = filled.get(f.order_id, (0.0, 0.0))
        filled[f.order_id] = (q + f.qty, n + f.qty * f.price)
    for o in book.orders:
        es = evented.get(o.order_id, [])
        kind = next(
            (e.reason.partition(":")[0] for e in es if e.kind == ACCEPTED and not e.venue_order_id), ""
        )
        if kind not in KINDS or any(e.kind in FINAL_ORDER_EVENTS for e in es):
            continue
        kids = sorted(children.get(o.order_id, []), key=lambda c: int(c.order_id.rpartition("/")[2]))
        working = [c.order_id for c in kids if c.order_id in ex.working]
        reported = max((e.filled_qty for e in es), default=0.0)
        ex.worked.restore(o, kind, kids, filled, working[-1] if working else None, reported)
    ex.worked.settle()


def _given_up(events: list[OrderEvent]) -> bool:
    """Rejected after network errors: the order may still have reached the venue."""
    last = events[-1]
    return last.kind == REJECTED and last.reason.startswith(UNREACHABLE)


def _sendable(qty: object) -> bool:
    return isinstance(qty, int | float) and not isinstance(qty, bool) and math.isfinite(qty) and qty > 0


def _assets(ex: Executor) -> set[str]:
    return {a for s in ex.symbols for a in assets_of(s)}
