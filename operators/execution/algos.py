"""Order working algorithms of the execution service: TWAP and iceberg, driven by events.

A worker holds one parent order and answers each event with an
:class:`AlgoOut`: children to send, children to cancel at the venue, and
children made but not sent (a TWAP child over the slippage cap). No clock is
read: every call carries its ``ts``. Children have deterministic ids,
``f"{parent_id}/{n}"`` with ``n`` = 1, 2, ... counting every child made (sent
or not), as the paper broker's TWAP does
(:func:`~operators.execution.venue.child_order`); at most one child of a
parent is open at a time.

The service's loop, per parent::

    worker = TwapWorker(parent, cost=settings.execution)   # or IcebergWorker(parent, display_qty)
    handle(worker.start(ts))
    on each market print of the symbol:  handle(worker.on_market(ts, price, qty))
    on each fill of the open child:      handle(worker.on_fill(ts, qty, price))
    when the venue closes the open child unfilled (cancelled, expired,
    rejected):                           handle(worker.on_child_closed(ts))
    to stop the parent:                  handle(worker.cancel(ts))
    drop the worker once ``worker.finished``
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from operators.execution.cost_model import BrokerSettings, taker_slippage_bps
from operators.execution.venue import (
    ICEBERG,
    QTY_EPS,
    TWAP,
    Cancellation,
    child_order,
    twap_child_qty,
    twap_slippage_cancellation,
)
from schemas.records import BUY, LIMIT, SELL, Order
from schemas.settings import SettingsError, check_settings, setting


@dataclass(frozen=True, slots=True)
class ChildOrder:
    """A child to send, with what the execution-quality row needs later.

    Parameters
    ----------
    order
        The child (``parent_id`` set, reason ``twap`` or ``iceberg``).
    reference_price
        The last trade price when it was made (an iceberg before any print:
        its limit price).
    expected_slippage_bps
        The cost model's taker slippage for a TWAP child; 0.0 for a resting
        iceberg child.
    """

    order: Order
    reference_price: float
    expected_slippage_bps: float


@dataclass(frozen=True, slots=True)
class AlgoOut:
    """What a worker asks of the service after one event.

    Parameters
    ----------
    send
        Children to send now.
    cancel
        Ids of open children to cancel at the venue.
    skipped
        Children made and not sent, with why (``twap_slippage``): record them
        as ``cancelled`` order events; the parent keeps working.
    """

    send: tuple[ChildOrder, ...] = ()
    cancel: tuple[str, ...] = ()
    skipped: tuple[Cancellation, ...] = ()


NOTHING = AlgoOut()


class AlgoWorker(Protocol):
    """What the service calls on a TWAP or iceberg worker."""

    @property
    def finished(self) -> bool: ...

    def start(self, ts: int) -> AlgoOut: ...

    def on_market(self, ts: int, price: float, volume: float) -> AlgoOut: ...

    def on_fill(self, ts: int, qty: float, price: float) -> AlgoOut: ...

    def on_child_closed(self, ts: int) -> AlgoOut: ...

    def cancel(self, ts: int) -> AlgoOut: ...


def _finite_positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_parent(parent: Order) -> None:
    if parent.side not in (BUY, SELL) or not _finite_positive(parent.qty) or not parent.order_id:
        msg = (
            f"cannot work order {parent.order_id!r}: side {parent.side!r}, qty {parent.qty!r} "
            "(check orders before making workers)"
        )
        raise ValueError(msg)


class _Fills:
    """A parent's fills and its one open child (shared by both workers)."""

    __slots__ = ("cancelled", "filled", "notional", "open_child", "outstanding", "parent")

    def __init__(self, parent: Order) -> None:
        self.parent = parent
        self.filled = 0.0
        self.notional = 0.0
        self.open_child: str | None = None
        self.outstanding = 0.0
        self.cancelled = False

    @property
    def remaining(self) -> float:
        return max(0.0, self.parent.qty - self.filled)

    @property
    def done(self) -> bool:
        return self.filled >= self.parent.qty * (1.0 - QTY_EPS)

    def open(self, child: Order) -> None:
        self.open_child = child.order_id
        self.outstanding = child.qty

    def fill(self, qty: float, price: float) -> bool:
        """Apply a fill; True when it closed the open child."""
        if not (_finite_positive(qty) and _finite_positive(price)):
            return False
        self.filled += qty
        self.notional += qty * price
        self.outstanding -= qty
        if self.open_child is not None and self.outstanding <= QTY_EPS * self.parent.qty:
            self.close()
            return True
        return False

    def close(self) -> None:
        self.open_child = None
        self.outstanding = 0.0

    def cancel(self) -> AlgoOut:
        self.cancelled = True
        return AlgoOut(cancel=(self.open_child,)) if self.open_child is not None else NOTHING


def lot_qty(qty: float, lot: float) -> float:
    """``qty`` floored to a multiple of ``lot`` (``lot`` 0: unchanged).

    >>> lot_qty(0.12345, 0.001), lot_qty(0.3, 0.1), lot_qty(2.5, 0.0)
    (0.123, 0.3, 2.5)
    """
    if lot <= 0:
        return qty
    return round(math.floor(qty / lot + 1e-9) * lot, 12)


class _WorkerBase:
    """Fill bookkeeping and the read-only view common to both workers.

    ``lot`` (the market's amount step, 0: none) floors every child's
    quantity; a child under ``min_qty`` is not made.
    """

    __slots__ = ("_book", "_lot", "_min_qty", "_n")

    _book: _Fills

    def _lots(self, lot: float, min_qty: float) -> None:
        if not (math.isfinite(lot) and lot >= 0 and math.isfinite(min_qty) and min_qty >= 0):
            msg = f"lot and min_qty must be finite numbers >= 0, got {lot!r}, {min_qty!r}"
            raise ValueError(msg)
        self._lot, self._min_qty, self._n = float(lot), float(min_qty), 0

    def _sendable(self, qty: float) -> float:
        """``qty`` floored to the lot; 0.0 when under the minimum (or nothing)."""
        qty = lot_qty(qty, self._lot)
        return qty if qty > QTY_EPS * self._book.parent.qty and qty >= self._min_qty else 0.0

    @property
    def children(self) -> int:
        """Children made so far (the last child id is ``f"{parent_id}/{children}"``)."""
        return self._n

    @property
    def exhausted(self) -> bool:
        """Not filled, no child open, and the rest under the lot or the minimum: nothing more can go."""
        b = self._book
        return not b.done and b.open_child is None and self._sendable(b.remaining) == 0.0

    def restore(
        self, children: int, filled: float, notional: float, open_child: str | None, left: float
    ) -> None:
        """Take back a parent's state after a restart: ``children`` made, ``filled`` qty for
        ``notional`` (qty x price), the child still open (None: none) with ``left`` unfilled."""
        b = self._book
        self._n = max(self._n, int(children))
        b.filled, b.notional = float(filled), float(notional)
        b.open_child, b.outstanding = (open_child, float(left)) if open_child is not None else (None, 0.0)

    @property
    def parent(self) -> Order:
        """The order being worked."""
        return self._book.parent

    @property
    def filled_qty(self) -> float:
        """Quantity filled so far over every child."""
        return self._book.filled

    @property
    def avg_price(self) -> float | None:
        """Quantity-weighted fill price, None before the first fill."""
        b = self._book
        return b.notional / b.filled if b.filled > 0 else None

    @property
    def remaining(self) -> float:
        """Parent quantity not filled yet (the open child's unfilled part included)."""
        return self._book.remaining

    @property
    def open_child(self) -> str | None:
        """Id of the child open at the venue, None when none."""
        return self._book.open_child

    @property
    def finished(self) -> bool:
        """Filled, or cancelled with no child left open."""
        b = self._book
        return b.done or (b.cancelled and b.open_child is None)

    def on_child_closed(self, ts: int) -> AlgoOut:
        """The venue closed the open child with part of it unfilled; the parent goes on at the next event."""
        self._book.close()
        return NOTHING

    def cancel(self, ts: int) -> AlgoOut:
        """Stop working the parent: no new children; the open child (if any) is to be cancelled."""
        return self._book.cancel()


# --------------------------------------------------------------------------- TWAP


@dataclass(frozen=True, slots=True, kw_only=True)
class TwapSettings:
    """Schedule of :class:`TwapWorker` (keyword-only); its caps are the paper venue's.

    Parameters
    ----------
    horizon_ms
        The parent is spread evenly over this long from its ``ts``.
    slice_ms
        One child at most per slice (<= ``horizon_ms``).

    Participation (``BrokerSettings.participation``, 10%) and the slippage cap
    (``BrokerSettings.twap_max_slippage_bps``, 15 bps) come from the cost
    settings given to the worker, so the service's TWAP and the paper
    broker's follow the same keys.
    """

    horizon_ms: int = setting(600_000, gt=0)
    slice_ms: int = setting(60_000, gt=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.slice_ms > self.horizon_ms:
            raise SettingsError.of(self, "slice_ms", f"<= horizon_ms ({self.horizon_ms})")


class TwapWorker(_WorkerBase):
    """Works a parent as market children: on schedule, at most ``participation`` of the volume.

    Parameters
    ----------
    parent
        The order (side, qty finite > 0; its ``ts`` starts the schedule).
    cost
        The cost model (``taker_slippage_bps``), ``participation`` and
        ``twap_max_slippage_bps``.
    settings
        Horizon and slice length.

    Slices are ``[parent.ts + k * slice_ms, parent.ts + (k + 1) * slice_ms)``;
    market prints before ``parent.ts`` are ignored. When a print falls in a
    new slice, the slice before it is closed and one child may go, sized

        ``min(parent.qty * min(1, k / n_slices) - filled, participation * V)``

    with ``k`` the slices closed, ``n_slices = ceil(horizon_ms / slice_ms)``
    and ``V`` the volume printed in the slice just closed (a live TWAP cannot
    see the volume of the slice it trades in, as the paper broker sees its
    bar's). Behind schedule it catches up later, still under the
    participation cap; past the horizon it goes on until filled or
    cancelled. A child goes only while no other child is open and a price
    was seen. Its expected slippage is the paper cost model's taker
    slippage with ``V`` the mean volume of the last ``recent_volume_bars``
    closed slices; above ``twap_max_slippage_bps`` the child is skipped
    (``twap_slippage``) and the parent tries again next slice.

    >>> cost = BrokerSettings(bar_interval_ms=60_000)
    >>> parent = Order(0, "p1", "", "BTC/USDT", BUY, 30.0, "market", 0.0, "entry", "demo")
    >>> twap = TwapWorker(parent, cost, TwapSettings(horizon_ms=180_000, slice_ms=60_000))
    >>> twap.start(0), twap.on_market(30_000, 100.0, 500.0)
    (AlgoOut(send=(), cancel=(), skipped=()), AlgoOut(send=(), cancel=(), skipped=()))
    >>> child = twap.on_market(60_000, 100.0, 10.0).send[0]  # slice 1 closed: 500 printed
    >>> child.order.order_id, child.order.qty, round(child.expected_slippage_bps, 3)
    ('p1/1', 10.0, 4.414)
    >>> twap.on_fill(60_100, 10.0, 100.05)
    AlgoOut(send=(), cancel=(), skipped=())
    >>> [c.order.qty for c in twap.on_market(120_000, 100.0, 1.0).send]  # 10% of the 10 printed
    [1.0]
    """

    __slots__ = (
        "_last_price",
        "_slice_end",
        "_slice_volume",
        "_slices",
        "_volumes",
        "cost",
        "settings",
    )

    def __init__(
        self,
        parent: Order,
        cost: BrokerSettings,
        settings: TwapSettings | None = None,
        *,
        lot: float = 0.0,
        min_qty: float = 0.0,
    ) -> None:
        _check_parent(parent)
        self._lots(lot, min_qty)
        self.settings = settings or TwapSettings()
        self.cost = cost
        self._book = _Fills(parent)
        self._slice_end = parent.ts + self.settings.slice_ms
        self._slices = 0
        self._slice_volume = 0.0
        self._volumes: deque[float] = deque(maxlen=cost.recent_volume_bars)
        self._last_price: float | None = None

    @property
    def slices(self) -> int:
        """Slices closed so far."""
        return self._slices

    @property
    def n_slices(self) -> int:
        """Slices in the horizon."""
        return math.ceil(self.settings.horizon_ms / self.settings.slice_ms)

    def start(self, ts: int) -> AlgoOut:
        """Nothing to send yet: the first child goes once the first slice's volume is known."""
        return NOTHING

    def on_fill(self, ts: int, qty: float, price: float) -> AlgoOut:
        """A fill of the open child (non-finite or non-positive values are ignored)."""
        self._book.fill(qty, price)
        return NOTHING

    def on_market(self, ts: int, price: float, volume: float, normalised_vol: float = 1.0) -> AlgoOut:
        """A market print (or a bar: its close and volume) at ``ts``; may send one child.

        ``normalised_vol`` is the symbol's volatility over its reference (1.0
        when unknown), for the cost model. A non-finite or negative volume
        counts as 0; a price not finite and > 0 is not remembered.
        """
        book = self._book
        if book.cancelled or book.done or ts < book.parent.ts:
            return NOTHING
        if _finite_positive(price):
            self._last_price = float(price)
        vol = float(volume) if _finite_positive(volume) else 0.0
        if ts < self._slice_end:
            self._slice_volume += vol
            return NOTHING
        step = self.settings.slice_ms
        jumped = (
            ts - self._slice_end
        ) // step + 1  # slices closed by this print (empty ones after the first)
        last = self._slice_volume if jumped == 1 else 0.0
        self._volumes.append(self._slice_volume)
        for _ in range(min(jumped - 1, self.cost.recent_volume_bars)):
            self._volumes.append(0.0)
        self._slices += jumped
        self._slice_end += jumped * step
        self._slice_volume = vol
        nv = 1.0 if not math.isfinite(normalised_vol) else max(normalised_vol, 0.0)
        return self._child(ts, last, nv)

    def _child(self, ts: int, volume: float, nv: float) -> AlgoOut:
        book = self._book
        if book.open_child is not None or self._last_price is None:
            return NOTHING
        parent = book.parent
        due = parent.qty * min(1.0, self._slices / self.n_slices) - book.filled
        qty = self._sendable(twap_child_qty(min(due, book.remaining), volume, self.cost.participation))
        if qty == 0.0:
            return NOTHING
        self._n += 1
        child = child_order(parent, self._n, ts, qty, TWAP)
        recent = sum(self._volumes) / len(self._volumes)
        slip = taker_slippage_bps(self.cost, qty, nv, recent if recent > 0 else volume)
        skipped = twap_slippage_cancellation(ts, child, slip, self.cost.twap_max_slippage_bps)
        if skipped is not None:
            return AlgoOut(skipped=(skipped,))
        book.open(child)
        return AlgoOut(send=(ChildOrder(child, self._last_price, slip),))


# --------------------------------------------------------------------------- iceberg


class IcebergWorker(_WorkerBase):
    """Shows ``display_qty`` of a limit parent at a time; refills when the visible part fills.

    Parameters
    ----------
    parent
        A limit order (side, qty and limit price finite > 0).
    display_qty
        The visible size (finite > 0); the last child shows what is left.

    Children are limit orders at the parent's price, reason ``iceberg``. The
    next child goes as soon as the open one is fully filled; after the venue
    closes a child unfilled (:meth:`on_child_closed`) the next goes at the
    next market print, so a venue that keeps refusing is not hammered.

    >>> parent = Order(0, "p2", "", "BTC/USDT", SELL, 2.5, "limit", 101.0, "exit", "demo")
    >>> ice = IcebergWorker(parent, display_qty=1.0)
    >>> [(c.order.order_id, c.order.qty, c.order.limit_price) for c in ice.start(0).send]
    [('p2/1', 1.0, 101.0)]
    >>> ice.on_fill(10, 0.4, 101.0).send
    ()
    >>> [(c.order.order_id, c.order.qty) for c in ice.on_fill(20, 0.6, 101.0).send]
    [('p2/2', 1.0)]
    >>> ice.on_fill(30, 1.0, 101.0).send[0].order.qty  # what is left
    0.5
    """

    __slots__ = ("_last_price", "display_qty")

    def __init__(self, parent: Order, display_qty: float, *, lot: float = 0.0, min_qty: float = 0.0) -> None:
        _check_parent(parent)
        self._lots(lot, min_qty)
        if parent.order_type != LIMIT or not _finite_positive(parent.limit_price):
            msg = (
                "an iceberg works a limit order with a price > 0, "
                f"got {parent.order_type} {parent.limit_price!r}"
            )
            raise ValueError(msg)
        if not _finite_positive(display_qty):
            msg = f"display_qty must be a finite number > 0, got {display_qty!r}"
            raise ValueError(msg)
        self.display_qty = float(display_qty)
        self._book = _Fills(parent)
        self._last_price: float | None = None

    def start(self, ts: int) -> AlgoOut:
        """The first visible child."""
        return self._refill(ts)

    def on_market(self, ts: int, price: float, volume: float) -> AlgoOut:
        """A market print; sends the next child when none is open (after a child closed unfilled)."""
        if _finite_positive(price):
            self._last_price = float(price)
        return self._refill(ts)

    def on_fill(self, ts: int, qty: float, price: float) -> AlgoOut:
        """A fill of the open child; the next child when it filled the visible part."""
        return self._refill(ts) if self._book.fill(qty, price) else NOTHING

    def _refill(self, ts: int) -> AlgoOut:
        book = self._book
        if book.cancelled or book.done or book.open_child is not None:
            return NOTHING
        qty = self._sendable(min(self.display_qty, book.remaining))
        if qty == 0.0:
            return NOTHING
        parent = book.parent
        self._n += 1
        child = child_order(parent, self._n, ts, qty, ICEBERG, LIMIT, parent.limit_price)
        book.open(child)
        ref = self._last_price if self._last_price is not None else parent.limit_price
        return AlgoOut(send=(ChildOrder(child, ref, 0.0),))
