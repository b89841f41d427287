"""Reconciliation at start-up: our records against what the venue reports, matched by client id.

Before it consumes anything the execution service asks the venue for its
open orders (and each order of ours it is unsure of, by client id), its
recent own trades and its balances, and :func:`reconcile` compares them with
our books. It is pure: the answer says what to emit and whether to fail
closed, the service does it.

- **Missing fills**: venue trades of our orders beyond the fills we
  recorded, oldest first (a trade missed while down) -> ``fills``.
- **Orders learnt**: an order we sent without recording an answer (a crash
  between send and ack) that the venue has -> ``accepted`` (or its final
  event); one the venue never saw -> :attr:`Reconciliation.unsent` (safe to
  send again: same client id, and the venue refuses a duplicate).
- **Closed at the venue**: orders we think working that the venue no longer
  works -> ``filled`` / ``cancelled`` / ``expired`` / ``rejected`` events.
- **External**: open orders at the venue that are not ours (placed by hand)
  -> ``external`` events and a ``reconcile`` risk event each; trades not of
  our orders are listed too.
- **Balances**: ours plus the missing fills against the venue's, per asset;
  a difference beyond the tolerance fails closed (no new orders until
  ``qbtc control resume``).

Symbols are ccxt-unified (``BASE/QUOTE``, ``BASE/QUOTE:SETTLE``). Trades
are matched to orders by the trade's client id, else by its venue order id
through the venue's orders and our ``accepted`` events (Binance's trade list
has no client id). Pass our fills since before the oldest trade asked for:
a trade of one of our orders with no fill of ours in the list is a missing
fill, and a trade of an order id we do not know at all is external.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from operators.execution.venue import QTY_EPS
from schemas.records import (
    ACCEPTED,
    BUY,
    CANCELLED,
    EXPIRED,
    EXTERNAL,
    FILLED,
    FINAL_ORDER_EVENTS,
    PARTIALLY_FILLED,
    REJECTED,
    Fill,
    Order,
    OrderEvent,
    RiskEvent,
)
from schemas.settings import check_settings, setting

VENUE_OPEN = "open"
VENUE_FINAL = {
    "closed": FILLED,
    "canceled": CANCELLED,
    "cancelled": CANCELLED,
    "expired": EXPIRED,
    "rejected": REJECTED,
}
"""ccxt order statuses after which an order is not working, and the order event of each."""


def assets_of(symbol: str) -> tuple[str, str]:
    """(base, quote) of a ccxt-unified symbol.

    >>> assets_of("BTC/USDT"), assets_of("ETH/USDT:USDT")
    (('BTC', 'USDT'), ('ETH', 'USDT'))
    """
    base, _, rest = symbol.partition("/")
    return base, rest.partition(":")[0]


@dataclass(frozen=True, slots=True)
class VenueOrder:
    """An order as the venue reports it (ccxt's order structure, the fields used).

    Parameters
    ----------
    venue_order_id
        ccxt ``id``.
    client_order_id
        ccxt ``clientOrderId``; ``""`` when it has none.
    symbol, side
        As ours.
    qty, filled_qty
        ccxt ``amount`` and ``filled``.
    price
        Limit price, 0.0 for market orders.
    status
        ccxt ``status``: ``open``, ``closed`` (filled), ``canceled``,
        ``expired`` or ``rejected``.
    ts
        ccxt ``timestamp``, epoch ms (0 when unknown).
    """

    venue_order_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    filled_qty: float
    price: float
    status: str
    ts: int


@dataclass(frozen=True, slots=True)
class VenueTrade:
    """One of our account's trades as the venue reports it (ccxt's trade structure).

    Parameters
    ----------
    trade_id, venue_order_id
        ccxt ``id`` and ``order``.
    client_order_id
        The order's client id when the venue gives it, else ``""``.
    symbol, side, qty, price
        ccxt ``symbol``, ``side``, ``amount``, ``price``.
    fee, fee_asset
        ccxt ``fee.cost`` and ``fee.currency`` (0.0 and ``""`` when none).
    ts
        ccxt ``timestamp``, epoch ms.
    """

    trade_id: str
    venue_order_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    fee_asset: str
    ts: int


@dataclass(frozen=True, slots=True)
class OurBook:
    """What our records say at the restart.

    Parameters
    ----------
    pending
        Orders sent (or about to be) with no answer of the venue recorded.
    working
        Orders the venue accepted that have no final event yet.
    fills
        Our recorded fills, from before the oldest trade asked of the venue.
    venue_ids
        Client id -> venue id, from our ``accepted`` events.
    balances
        Per asset, what our books say we hold.
    """

    pending: tuple[Order, ...] = ()
    working: tuple[Order, ...] = ()
    fills: tuple[Fill, ...] = ()
    venue_ids: Mapping[str, str] = field(default_factory=dict)
    balances: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VenueView:
    """What the venue says at the restart.

    Parameters
    ----------
    venue
        Its name in order events (``paper``, ``ccxt:binance``).
    orders
        Its open orders, plus every order of ours it was asked about by client id.
    trades
        Its recent trades of our account.
    balances
        Total per asset.
    """

    venue: str
    orders: tuple[VenueOrder, ...] = ()
    trades: tuple[VenueTrade, ...] = ()
    balances: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    """Parameters of :func:`reconcile`.

    Parameters
    ----------
    abs_tolerance, rel_tolerance
        A balance differs when ``|venue - ours| > max(abs_tolerance,
        rel_tolerance * max(|venue|, |ours|))``.
    """

    abs_tolerance: float = setting(1e-8, ge=0)
    rel_tolerance: float = setting(1e-4, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class BalanceMismatch:
    """One asset whose venue balance is not ours (plus the missing fills) within the tolerance."""

    asset: str
    ours: float
    venue: float
    tolerance: float

    @property
    def difference(self) -> float:
        """Venue minus ours."""
        return self.venue - self.ours


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What :func:`reconcile` found; emit it, then send :attr:`unsent` unless :attr:`fail_closed`.

    Parameters
    ----------
    missing_fills
        Fills to emit, oldest first (``slippage_bps`` 0.0: the reference
        price is unknown; ``fee`` in quote units, 0.0 when paid in a third asset).
    events
        Order events to emit: orders learnt, closed at the venue, external.
    working
        Ids of our orders the venue still works (accepted ones included).
    closed
        Ids of our orders the venue no longer works.
    unsent
        Pending orders the venue never saw.
    external_trades
        Trades not of our orders (manual ones).
    mismatches
        Assets beyond the tolerance: fail closed.
    expected_balances
        Ours plus the missing fills, per asset compared.
    """

    missing_fills: tuple[Fill, ...]
    events: tuple[OrderEvent, ...]
    working: tuple[str, ...]
    closed: tuple[str, ...]
    unsent: tuple[Order, ...]
    external_trades: tuple[VenueTrade, ...]
    mismatches: tuple[BalanceMismatch, ...]
    expected_balances: dict[str, float]

    @property
    def fail_closed(self) -> bool:
        """True when balances disagree: send nothing until an operator resumes."""
        return bool(self.mismatches)

    @property
    def external(self) -> tuple[OrderEvent, ...]:
        """The ``external`` order events."""
        return tuple(e for e in self.events if e.kind == EXTERNAL)

    def risk_events(self, ts: int) -> list[RiskEvent]:
        """``reconcile`` risk events: external orders and trades (2), missing fills (1), mismatches (3)."""
        out = [
            RiskEvent(
                ts, "reconcile", 1, f.symbol, f.qty, 0.0, "missing_fill", f"missing fill of {f.order_id!r}"
            )
            for f in self.missing_fills
        ]
        for e in self.external:
            message = f"external order {e.venue_order_id!r} ({e.order_id or 'no client id'}): {e.reason}"
            out.append(RiskEvent(ts, "reconcile", 2, e.symbol, e.qty, 0.0, "external", message))
        for t in self.external_trades:
            message = f"external trade {t.trade_id!r} of venue order {t.venue_order_id!r}"
            out.append(RiskEvent(ts, "reconcile", 2, t.symbol, t.qty, 0.0, "external", message))
        for m in self.mismatches:
            message = (
                f"{m.asset}: venue {m.venue:.10g}, ours {m.ours:.10g} (difference {m.difference:.10g} "
                f"> {m.tolerance:.3g}): no new orders until `qbtc control resume`"
            )
            out.append(RiskEvent(ts, "reconcile", 3, "", m.difference, m.tolerance, "fail_closed", message))
        return out


def _event(
    now_ms: int, order: Order, venue: str, kind: str, venue_id: str, filled: float, reason: str, venue_ts: int
) -> OrderEvent:
    return OrderEvent(
        now_ms,
        order.order_id,
        venue_id,
        order.symbol,
        order.side,
        kind,
        order.qty,
        filled,
        order.limit_price,
        reason,
        venue,
        venue_ts,
        0.0 if kind in FINAL_ORDER_EVENTS else max(order.qty - filled, 0.0),
    )


def _missing_fills(
    trades: list[VenueTrade], recorded: float, client_id: str
) -> list[tuple[Fill, VenueTrade]]:
    """Parts of ``trades`` (one order's, oldest first) beyond ``recorded`` filled qty, with their trade."""
    out = []
    covered = recorded
    for t in trades:
        if covered >= t.qty * (1.0 - QTY_EPS):
            covered -= t.qty
            continue
        qty = t.qty - max(covered, 0.0)
        covered = 0.0
        base, quote = assets_of(t.symbol)
        share = qty / t.qty
        if t.fee_asset in (quote, ""):
            fee = t.fee * share
        elif t.fee_asset == base:
            fee = t.fee * share * t.price
        else:
            fee = 0.0  # paid in a third asset: it shows in that asset's balance only
        out.append((Fill(t.ts, client_id, t.symbol, t.side, qty, t.price, fee, 0.0), t))
    return out


def _apply(balances: dict[str, float], fill: Fill, trade: VenueTrade) -> None:
    base, quote = assets_of(fill.symbol)
    sign = 1.0 if fill.side == BUY else -1.0
    balances[base] = balances.get(base, 0.0) + sign * fill.qty
    balances[quote] = balances.get(quote, 0.0) - sign * fill.qty * fill.price
    if trade.fee and trade.fee_asset:
        balances[trade.fee_asset] = balances.get(trade.fee_asset, 0.0) - trade.fee * fill.qty / trade.qty


def reconcile(
    ours: OurBook, venue: VenueView, now_ms: int, settings: ReconcileSettings | None = None
) -> Reconciliation:
    """Compare our books with the venue's; see the module docstring for the rules.

    Parameters
    ----------
    ours, venue
        Both sides' orders, trades and balances.
    now_ms
        Dates the order events (the service's clock).
    settings
        The balance tolerance.

    A restart after a crash between sending ``o1`` and recording the
    venue's answer, while ``o1`` filled:

    >>> o1 = Order(0, "o1", "", "BTC/USDT", "buy", 0.5, "market", 0.0, "entry", "demo")
    >>> venue = VenueView(
    ...     "ccxt:binance",
    ...     trades=(VenueTrade("t1", "v1", "o1", "BTC/USDT", "buy", 0.5, 100.0, 0.05, "USDT", 7),),
    ...     balances={"BTC": 0.5, "USDT": 949.95},
    ... )
    >>> r = reconcile(OurBook(pending=(o1,), balances={"USDT": 1_000.0}), venue, now_ms=60_000)
    >>> [(f.order_id, f.qty, f.price, f.fee) for f in r.missing_fills]
    [('o1', 0.5, 100.0, 0.05)]
    >>> [(e.kind, e.venue_order_id) for e in r.events], r.unsent, r.fail_closed
    ([('filled', 'v1')], (), False)
    """
    s = settings or ReconcileSettings()
    ours_by_id = {o.order_id: o for o in (*ours.pending, *ours.working)}
    pending_ids = {o.order_id for o in ours.pending}
    by_client = {vo.client_order_id: vo for vo in venue.orders if vo.client_order_id}
    by_venue_id = {vo.venue_order_id: vo for vo in venue.orders}
    client_of = {v: c for c, v in ours.venue_ids.items()}
    client_of.update({vo.venue_order_id: vo.client_order_id for vo in venue.orders if vo.client_order_id})
    recorded: dict[str, float] = {}
    for f in ours.fills:
        recorded[f.order_id] = recorded.get(f.order_id, 0.0) + f.qty
    known = ours_by_id.keys() | recorded.keys()

    # trades: ours (by client id) or external
    trades_of: dict[str, list[VenueTrade]] = {}
    external_trades = []
    for t in sorted(venue.trades, key=lambda t: (t.ts, t.trade_id)):
        cid = t.client_order_id or client_of.get(t.venue_order_id, "")
        if cid in known:
            trades_of.setdefault(cid, []).append(t)
        else:
            external_trades.append(t)
    missing: list[tuple[Fill, VenueTrade]] = []
    for cid, trades in trades_of.items():
        missing += _missing_fills(trades, recorded.get(cid, 0.0), cid)
    missing.sort(key=lambda ft: (ft[0].ts, ft[0].order_id))
    traded = {cid: sum(t.qty for t in trades) for cid, trades in trades_of.items()}
    missing_of = {f.order_id for f, _ in missing}

    # our pending and working orders against the venue's
    events: list[OrderEvent] = []
    working, closed, unsent = [], [], []
    for oid, order in ours_by_id.items():
        vo = by_client.get(oid) or by_venue_id.get(ours.venue_ids.get(oid, ""))
        done = traded.get(oid, 0.0)
        if vo is not None:
            filled = max(vo.filled_qty, done)
            if vo.status == VENUE_OPEN:
                working.append(oid)
                if oid in pending_ids:
                    events.append(
                        _event(now_ms, order, venue.venue, ACCEPTED, vo.venue_order_id, 0.0, "", vo.ts)
                    )
                if oid in missing_of:
                    events.append(
                        _event(
                            now_ms, order, venue.venue, PARTIALLY_FILLED, vo.venue_order_id, filled, "", vo.ts
                        )
                    )
                continue
            kind = VENUE_FINAL.get(vo.status, CANCELLED)
            reason = "" if kind == FILLED else f"{vo.status} at the venue (reconciliation)"
            events.append(_event(now_ms, order, venue.venue, kind, vo.venue_order_id, filled, reason, vo.ts))
            closed.append(oid)
            continue
        last = trades_of.get(oid, [])
        venue_id = last[-1].venue_order_id if last else ours.venue_ids.get(oid, "")
        venue_ts = last[-1].ts if last else 0
        if done >= order.qty * (1.0 - QTY_EPS):
            events.append(_event(now_ms, order, venue.venue, FILLED, venue_id, done, "", venue_ts))
            closed.append(oid)
        elif oid in pending_ids and not last:
            unsent.append(order)
        else:
            reason = f"not open at the venue (reconciliation); filled {done:.10g} of {order.qty:.10g}"
            events.append(_event(now_ms, order, venue.venue, CANCELLED, venue_id, done, reason, venue_ts))
            closed.append(oid)

    # open at the venue, not ours
    ours_venue_ids = set(ours.venue_ids.values())
    for vo in sorted(venue.orders, key=lambda vo: (vo.ts, vo.venue_order_id)):
        if vo.status != VENUE_OPEN or vo.client_order_id in ours_by_id or vo.venue_order_id in ours_venue_ids:
            continue
        reason = "open at the venue, " + (
            "finished in our books" if vo.client_order_id in recorded else "not in our books"
        )
        events.append(
            OrderEvent(
                now_ms,
                vo.client_order_id,
                vo.venue_order_id,
                vo.symbol,
                vo.side,
                EXTERNAL,
                vo.qty,
                vo.filled_qty,
                vo.price,
                reason,
                venue.venue,
                vo.ts,
                max(vo.qty - vo.filled_qty, 0.0),
            )
        )

    # balances
    expected = {a: float(v) for a, v in ours.balances.items()}
    for f, t in missing:
        _apply(expected, f, t)
    assets = set(expected)
    for symbol in {o.symbol for o in ours_by_id.values()} | {f.symbol for f in ours.fills}:
        assets.update(assets_of(symbol))
    for t in venue.trades:
        assets.update(assets_of(t.symbol))
    assets.discard("")
    mismatches = []
    for asset in sorted(assets):
        mine, theirs = expected.get(asset, 0.0), float(venue.balances.get(asset, 0.0))
        tol = max(s.abs_tolerance, s.rel_tolerance * max(abs(mine), abs(theirs)))
        if not (math.isfinite(theirs) and abs(theirs - mine) <= tol):
            mismatches.append(BalanceMismatch(asset, mine, theirs, tol))
        expected.setdefault(asset, mine)

    return Reconciliation(
        tuple(f for f, _ in missing),
        tuple(events),
        tuple(working),
        tuple(closed),
        tuple(unsent),
        tuple(external_trades),
        tuple(mismatches),
        expected,
    )
