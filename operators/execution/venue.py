"""Where the trading loop sends orders: the :class:`Venue` protocol and what a venue reports.

The paper broker (:mod:`operators.execution.paper_broker`) is the in-process
venue; an adapter to a real exchange implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.records import MARKET, Bar, Fill, Order

QTY_EPS = 1e-12
"""Relative quantity below which a remainder or a position counts as zero."""

REJECTED = "rejected"
TWAP_SLIPPAGE = "twap_slippage"
SUPERSEDED = "superseded"
CANCEL_REASONS = (REJECTED, TWAP_SLIPPAGE, SUPERSEDED)
"""Why an order was cancelled by the venue (see :class:`Cancellation`)."""

STOP_EXIT = "stop"
TARGET_EXIT = "target"
TWAP = "twap"
ICEBERG = "iceberg"
PROTECTION_STRATEGY = "risk"
"""``Order.strategy`` of the protective exits the broker creates."""


@dataclass(frozen=True, slots=True)
class BarContext:
    """What the loop knows about a symbol at a bar, beyond the bar.

    Parameters
    ----------
    normalised_vol
        The symbol's volatility over its reference volatility; 1.0 when unknown.
        Non-finite values count as 1.0, negative ones as 0.0.
    recent_volume
        Mean volume per bar (base units) to use for the impact term. ``None``
        (the default) uses the broker's own rolling mean over the
        ``recent_volume_bars`` bars of the symbol before this one; when that is
        missing or 0 (or the value given is not finite and > 0), the bar's own
        volume is used.
    """

    normalised_vol: float = 1.0
    recent_volume: float | None = None


@dataclass(frozen=True, slots=True)
class Cancellation:
    """An order the venue refused or cancelled, with why.

    Parameters
    ----------
    ts
        When: the order's ts for a rejection, the path point's ts otherwise.
    order
        The order concerned (a TWAP child, the loop's order, ...).
    reason
        One of :data:`CANCEL_REASONS`: ``rejected`` (bad order at submit),
        ``twap_slippage`` (a TWAP child over ``twap_max_slippage_bps``; the
        parent keeps working), ``superseded`` (a working order on the closing
        side cancelled because a protective exit closed the position).
    message
        For a person.
    """

    ts: int
    order: Order
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class BarResult:
    """What one bar did at the venue.

    Parameters
    ----------
    fills
        Fills in path order (orders in submission order, then protection).
    new_orders
        Orders the venue created (TWAP children, cancelled ones included, and
        protective exits), for the ``orders`` table.
    cancelled
        Every cancellation since the previous :meth:`PaperBroker.on_bar` or
        :meth:`PaperBroker.take_cancelled`, submit-time rejections included.
    """

    fills: tuple[Fill, ...] = ()
    new_orders: tuple[Order, ...] = ()
    cancelled: tuple[Cancellation, ...] = ()


def child_order(
    parent: Order,
    n: int,
    ts: int,
    qty: float,
    reason: str,
    order_type: str = MARKET,
    limit_price: float = 0.0,
) -> Order:
    """The ``n``-th child (1, 2, ...) of ``parent``, id ``f"{parent.order_id}/{n}"`` (TWAP, iceberg).

    Symbol, side and strategy are the parent's; ``parent_id`` is its id.

    >>> parent = Order(0, "o7", "", "X", "buy", 9.0, MARKET, 0.0, "entry", "demo")
    >>> child_order(parent, 2, 60_000, 1.5, TWAP).order_id
    'o7/2'
    """
    return Order(
        ts,
        f"{parent.order_id}/{n}",
        parent.order_id,
        parent.symbol,
        parent.side,
        qty,
        order_type,
        limit_price,
        reason,
        parent.strategy,
    )


def twap_child_qty(remaining: float, volume: float, participation: float) -> float:
    """A TWAP child's size: at most ``participation`` of the volume it trades against.

    >>> twap_child_qty(50.0, 200.0, 0.1), twap_child_qty(5.0, 200.0, 0.1)
    (20.0, 5.0)
    """
    return min(remaining, participation * volume)


def twap_slippage_cancellation(
    ts: int, child: Order, slippage_bps: float, max_slippage_bps: float
) -> Cancellation | None:
    """The cancellation of a TWAP child whose expected slippage exceeds the cap, None when it may go."""
    if slippage_bps <= max_slippage_bps:
        return None
    message = (
        f"TWAP child {child.order_id!r}: expected slippage {slippage_bps:.3f} bps > "
        f"{max_slippage_bps} bps; parent keeps working"
    )
    return Cancellation(ts, child, TWAP_SLIPPAGE, message)


class Venue(Protocol):
    """Where the trading loop sends orders: the paper broker, later a ccxt adapter.

    Calls come in event time: for each bar, ``on_bar`` (fills of the orders
    working from before), then the loop's decisions (``submit``, ``cancel``,
    ``set_protection``) dated at or after the bar's close.
    """

    def begin_step(self, step: int, bars: dict[str, Bar], contexts: dict[str, BarContext]) -> None:
        """A grid step starts: its bars (and their contexts), before ``on_bar`` for each of them.

        An external venue in lockstep hands them over and waits for what they
        did; the paper broker has nothing to do.
        """
        ...

    def end_step(self, step: int) -> None:
        """The loop has made every decision of a step (an external venue sends them now)."""
        ...

    def submit(self, order: Order) -> list[Order]:
        """Accept an order; the orders now working for it, ``[]`` when rejected."""
        ...

    def cancel(self, order_id: str, ts: int) -> bool:
        """Cancel a working order (a TWAP parent stops slicing); False if none."""
        ...

    def on_bar(self, bar: Bar, context: BarContext | None = None) -> BarResult:
        """Fills, created orders and cancellations of one bar of one symbol."""
        ...

    def open_orders(self) -> list[Order]:
        """Working orders, in submission order."""
        ...

    def remaining(self, order_id: str) -> float | None:
        """Unfilled qty of a working order, None if it is not working."""
        ...

    def take_cancelled(self) -> list[Cancellation]:
        """Cancellations not yet reported, emptying the list."""
        ...

    def set_protection(
        self, symbol: str, position_qty: float, stop: float | None, target: float | None, ts: int
    ) -> bool:
        """Protect a position with a stop and/or a target; False if inputs were bad."""
        ...

    def clear_protection(self, symbol: str) -> None:
        """Drop a symbol's protection."""
        ...
