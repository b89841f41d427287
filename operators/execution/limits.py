"""Hard limits at the last step before a venue, independent of the risk engine.

:class:`ExecutionGuard` denies an order with a reason instead of raising (the
NautilusTrader risk engine's way): one check per limit, one gate for holds
(the dead man's switch, a venue down for too long, a failed reconciliation)
and one denial path. The clock is passed in; the day of the daily notional
is the UTC day of ``now_ms`` (event time).

The notional of an order is ``qty`` times the higher of the last trade price
and the order's limit or stop price (the worst case for the caps).

>>> guard = ExecutionGuard(ExecutionLimits(max_order_notional=1_000.0, price_band_bps=600.0))
>>> order = Order(0, "o1", "", "BTC/USDT", BUY, 0.5, LIMIT, 1_900.0, "entry", "demo")
>>> guard.check(order, last_price=2_000.0, now_ms=0) is None
True
>>> guard.on_sent(order, guard.notional(order, 2_000.0), now_ms=0)
>>> guard.check(Order(0, "o2", "", "BTC/USDT", BUY, 1.0, MARKET, 0.0, "entry", "demo"), 2_000.0, 0)
'order notional 2000 > max_order_notional 1000'
>>> guard.check(Order(0, "o3", "", "BTC/USDT", SELL, 0.1, LIMIT, 1_000.0, "exit", "demo"), 2_000.0, 0)
'limit price 1000 is 5000.0 bps from the last trade 2000 >= price_band_bps 600'
>>> guard.halt("deadman", "no heartbeat for 31.0 s")
>>> guard.check(order, 2_000.0, 0)
'halted (deadman): no heartbeat for 31.0 s'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.records import BUY, LIMIT, MARKET, ORDER_TYPES, SELL, STOP, Order
from schemas.settings import SettingsError, check_settings, setting

DAY_MS = 86_400_000
BP = 10_000.0

LIVE_REQUIRED = ("max_order_notional", "max_daily_notional")
"""Limits that must be set before real orders may be sent (``qbtc execute --live``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionLimits:
    """Caps of :class:`ExecutionGuard`; None: not checked (keyword-only).

    Parameters
    ----------
    max_order_notional
        One order's notional, in quote units.
    max_daily_notional
        Notional sent per UTC day, in quote units. Orders count when sent, not
        when filled: a cancelled order's notional stays counted that day.
    max_open_orders
        Orders sent and not yet closed (``on_closed``).
    price_band_bps
        A limit or stop price this far or farther from the last trade price
        is a fat finger (market orders have no price to check).
    deadman_s
        The dead man's switch: no heartbeat from the loop for this many
        seconds (on the service's clock) cancels every open order and holds
        new ones until heartbeats return.
    twap_horizon_s, twap_slice_s
        The schedule of the TWAP parents the service works (``TwapSettings``:
        spread over the horizon, one child at most per slice; slice <= horizon).
    iceberg_display_share
        An iceberg parent shows this share of its quantity at a time (floored
        to the market's amount step).

    ``max_order_notional`` and ``max_daily_notional`` have no default on
    purpose: :meth:`live_refusal` says why ``--live`` must refuse to start
    while either is unset.

    >>> ExecutionLimits().live_refusal()
    'execution.max_order_notional and execution.max_daily_notional must be set to send real orders'
    >>> ExecutionLimits(max_order_notional=1e3, max_daily_notional=1e4).live_refusal() is None
    True
    """

    max_order_notional: float | None = setting(None, gt=0)
    max_daily_notional: float | None = setting(None, gt=0)
    max_open_orders: int | None = setting(None, ge=1)
    price_band_bps: float | None = setting(None, gt=0)
    deadman_s: float = setting(30.0, gt=0)
    twap_horizon_s: float = setting(600.0, gt=0)
    twap_slice_s: float = setting(60.0, gt=0)
    iceberg_display_share: float = setting(0.1, gt=0, le=1)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.twap_slice_s > self.twap_horizon_s:
            raise SettingsError.of(self, "twap_slice_s", f"<= twap_horizon_s ({self.twap_horizon_s})")

    def live_refusal(self, section: str = "execution") -> str | None:
        """Why real orders may not be sent with these limits, None when they may.

        ``section`` is the config section the keys are named in.
        """
        unset = [f"{section}.{name}" for name in LIVE_REQUIRED if getattr(self, name) is None]
        if not unset:
            return None
        return f"{' and '.join(unset)} must be set to send real orders"


def _num(x: float) -> str:
    return f"{x:.10g}"


class ExecutionGuard:
    """Denies orders over the hard limits, or any order while a hold is on.

    Parameters
    ----------
    limits
        The caps (default: none set; holds still apply).

    Use: ``reason = guard.check(order, last_price, now_ms)``; None: send it and
    call ``guard.on_sent(order, guard.notional(order, last_price), now_ms)``;
    a text: do not send, emit a ``rejected`` order event with that reason.
    Call ``guard.on_closed(order_id)`` when the order is filled, cancelled,
    expired or rejected by the venue.
    """

    __slots__ = ("_day", "_daily", "_holds", "_open", "limits")

    def __init__(self, limits: ExecutionLimits | None = None) -> None:
        self.limits = limits or ExecutionLimits()
        self._day: int | None = None
        self._daily = 0.0
        self._open: dict[str, float] = {}
        self._holds: dict[str, str] = {}

    # -- reading ----------------------------------------------------------------

    @property
    def open_orders(self) -> int:
        """Orders sent and not closed."""
        return len(self._open)

    def daily_notional(self, now_ms: int) -> float:
        """Notional sent on the UTC day of ``now_ms`` (0.0 on a new day)."""
        return self._daily if self._day == now_ms // DAY_MS else 0.0

    @property
    def holds(self) -> dict[str, str]:
        """Holds on, by name: a copy."""
        return dict(self._holds)

    @staticmethod
    def notional(order: Order, last_price: float | None) -> float | None:
        """``qty`` x max(last trade price, limit/stop price); None without a positive price."""
        price = max(last_price or 0.0, order.limit_price if order.order_type != MARKET else 0.0)
        if not (math.isfinite(price) and price > 0):
            return None
        return order.qty * price

    # -- the checks -------------------------------------------------------------

    def check(self, order: Order, last_price: float | None, now_ms: int) -> str | None:
        """None when ``order`` may be sent now, else why not (the first failing check).

        ``last_price`` is the symbol's last trade price, None when none was seen.
        Nothing is recorded: call :meth:`on_sent` once the order is sent.
        """
        return (
            self._check_hold()
            or self._check_order(order)
            or self._check_open(order)
            or self._check_band(order, last_price)
            or self._check_notional(order, last_price, now_ms)
        )

    def _check_hold(self) -> str | None:
        if not self._holds:
            return None
        name, reason = next(iter(self._holds.items()))
        return f"halted ({name}): {reason}"

    def _check_order(self, order: Order) -> str | None:
        if order.side not in (BUY, SELL):
            return f"side {order.side!r} is not buy or sell"
        if order.order_type not in ORDER_TYPES:
            return f"order type {order.order_type!r} is not one of {', '.join(ORDER_TYPES)}"
        qty = order.qty
        if isinstance(qty, bool) or not (isinstance(qty, int | float) and math.isfinite(qty) and qty > 0):
            return f"quantity {order.qty!r} is not a finite number > 0"
        if order.order_type in (LIMIT, STOP) and not (
            math.isfinite(order.limit_price) and order.limit_price > 0
        ):
            return f"{order.order_type} price {order.limit_price!r} is not a finite number > 0"
        return None

    def _check_open(self, order: Order) -> str | None:
        if order.order_id in self._open:
            return f"order {order.order_id!r} is already open"
        cap = self.limits.max_open_orders
        if cap is not None and len(self._open) >= cap:
            return f"open orders {len(self._open)} >= max_open_orders {cap}"
        return None

    def _check_band(self, order: Order, last_price: float | None) -> str | None:
        band = self.limits.price_band_bps
        if band is None or order.order_type == MARKET:
            return None
        if last_price is None or not (math.isfinite(last_price) and last_price > 0):
            return f"no last trade price of {order.symbol}: cannot check price_band_bps"
        away = abs(order.limit_price / last_price - 1.0) * BP
        if away >= band:
            return (
                f"{order.order_type} price {_num(order.limit_price)} is {away:.1f} bps from the last "
                f"trade {_num(last_price)} >= price_band_bps {_num(band)}"
            )
        return None

    def _check_notional(self, order: Order, last_price: float | None, now_ms: int) -> str | None:
        per_order, per_day = self.limits.max_order_notional, self.limits.max_daily_notional
        if per_order is None and per_day is None:
            return None
        notional = self.notional(order, last_price)
        if notional is None:
            return f"no last trade price of {order.symbol}: cannot check the order's notional"
        if per_order is not None and notional > per_order:
            return f"order notional {_num(notional)} > max_order_notional {_num(per_order)}"
        if per_day is not None:
            total = self.daily_notional(now_ms) + notional
            if total > per_day:
                return f"daily notional {_num(total)} with this order > max_daily_notional {_num(per_day)}"
        return None

    # -- what happened ----------------------------------------------------------

    def on_sent(self, order: Order, notional: float | None, now_ms: int) -> None:
        """Record an order sent: it is open, and its notional counts for the UTC day of ``now_ms``.

        ``notional`` is :meth:`notional` of the order (None or non-finite: 0).
        """
        day = now_ms // DAY_MS
        if self._day != day:
            self._day, self._daily = day, 0.0
        n = notional if notional is not None and math.isfinite(notional) and notional > 0 else 0.0
        self._daily += n
        self._open[order.order_id] = n

    def on_closed(self, order_id: str) -> None:
        """The order is no longer working (filled, cancelled, expired, rejected); unknown ids are ignored."""
        self._open.pop(order_id, None)

    # -- the gate ---------------------------------------------------------------

    def halt(self, name: str, reason: str) -> None:
        """Deny every order while hold ``name`` is on (``deadman``, ``venue``, ``reconcile``, ...)."""
        self._holds[name] = reason

    def release(self, name: str) -> bool:
        """Lift hold ``name``; False when it was not on. Other holds stay."""
        return self._holds.pop(name, None) is not None
