"""A simulated execution venue: fills orders along each bar's price path with a cost model.

Orders decided at a bar close fill on the following bars of their symbol. A
bar is walked as four path points: the open at ``bar.ts``; the extremes (low
then high when ``close >= open``, else high then low) both at
``bar.ts + bar_interval_ms // 2`` (approximate: the true times are unknown);
the close at ``bar.ts + bar_interval_ms - 1``.

Fill prices and fees follow :mod:`operators.execution.cost_model`; the
broker implements :class:`~operators.execution.venue.Venue`.

>>> broker = PaperBroker(BrokerSettings(bar_interval_ms=60_000))
>>> broker.on_bar(Bar("X", 0, 100.0, 101.0, 99.0, 100.0, 1000.0, 100.0, 10)).fills
()
>>> [o.order_id for o in broker.submit(Order(60_000, "o1", "", "X", BUY, 1.0, MARKET, 0.0, "entry", "demo"))]
['o1']
>>> fill = broker.on_bar(Bar("X", 60_000, 100.0, 102.0, 99.5, 101.0, 900.0, 101.0, 9)).fills[0]
>>> (fill.ts, round(fill.price, 6), round(fill.fee, 6), round(fill.slippage_bps, 6))
(60000, 100.03, 0.10003, 3.0)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from operators.execution.cost_model import BP, BrokerSettings, effective_vol, taker_slippage_bps
from operators.execution.venue import (
    PROTECTION_STRATEGY,
    QTY_EPS,
    REJECTED,
    STOP_EXIT,
    SUPERSEDED,
    TARGET_EXIT,
    TWAP,
    BarContext,
    BarResult,
    Cancellation,
    child_order,
    twap_child_qty,
    twap_slippage_cancellation,
)
from schemas.records import BUY, LIMIT, MARKET, ORDER_TYPES, SELL, STOP, Bar, Fill, Order


@dataclass(slots=True)
class _Working:
    order: Order
    remaining: float
    twap: bool = False
    children: int = 0


@dataclass(slots=True)
class _Protection:
    qty: float
    stop: float | None
    target: float | None
    ts: int


@dataclass(slots=True)
class _Symbol:
    last_ts: int
    last_close: float
    volumes: deque


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _valid_bar(bar: Bar) -> bool:
    prices = (bar.open, bar.high, bar.low, bar.close)
    if not all(_positive(p) for p in prices):
        return False
    if not (isinstance(bar.volume, int | float) and math.isfinite(bar.volume) and bar.volume >= 0):
        return False
    return bar.low <= min(bar.open, bar.close) and bar.high >= max(bar.open, bar.close)


class PaperBroker:
    """Simulated venue: market, limit, stop, TWAP and protective exits on bars.

    - Market: whole, at the next bar's open, taker (``slippage_bps = s``).
    - Limit: whole, at the limit, maker, at the first path point at or through
      it; if already marketable at the open, a taker there, price capped at
      the limit (``slippage_bps`` = what was applied).
    - Stop: at the first path point at or through it, at ``stop`` (the open if
      the open gaps through it) with taker slippage and fee.
    - TWAP: a market order whose notional (qty x last close at submit) exceeds
      ``twap_threshold`` is a parent; at each later bar's open a child
      ``f"{parent_id}/{n}"`` (n = 1, 2, ...) of ``min(remaining,
      participation * bar.volume)`` fills like a market order, or is
      cancelled (``twap_slippage``; the parent tries again next bar) when its
      ``s`` exceeds ``twap_max_slippage_bps``. Parents get no fill of their own.
    - Protection: checked at every path point after the working orders, stop
      before target; a hit fills a market exit of the whole protected qty, id
      ``f"{kind}:{symbol}:{ts}:{seq}"`` (``seq``: a counter in the state;
      ``f"{kind}:{run_tag}:{symbol}:{ts}:{seq}"`` with a run tag),
      reason ``stop`` / ``target``, strategy ``risk``, at the stop (the open
      if gapped through) or the target with taker costs; it clears the
      protection and cancels the symbol's working orders on the exit's side
      (``superseded``). Other fills of the symbol update the protected qty
      (cleared at 0 or on a flip): an exit order and a stop never both fire.

    Orders and protections apply to bars with ``bar.ts >= ts``: date decisions
    at the bar's end (``bar.ts + bar_interval_ms``) or close point (dated at
    ``bar.ts``, they are safe only if every symbol's bar of the step went
    through ``on_bar`` before the first submit). Nothing fills in a zero-volume bar (orders wait). Stale bars
    (``ts`` not after the symbol's last) and invalid ones are ignored and
    counted in ``ignored_bars``. Bad orders are rejected, never raised. The
    state is plain insertion-ordered data: it pickles, and a resumed run
    makes the same ids and fills.
    """

    def __init__(self, settings: BrokerSettings, run_tag: str = "") -> None:
        self.settings = settings
        self.run_tag = run_tag  # the run the loop's orders belong to: its exits carry it too
        self._symbols: dict[str, _Symbol] = {}
        self._working: dict[str, _Working] = {}
        self._protection: dict[str, _Protection] = {}
        self._outbox: list[Cancellation] = []
        self._seq = 0
        self.ignored_bars = 0

    # -- steps ----------------------------------------------------------------------

    def begin_step(self, step: int, bars: dict[str, Bar], contexts: dict[str, BarContext]) -> None:
        """Nothing: the paper broker works bar by bar, in :meth:`on_bar`."""

    def end_step(self, step: int) -> None:
        """Nothing: orders work from the moment they are submitted."""

    # -- orders ---------------------------------------------------------------------

    def _reject(self, order: Order, message: str) -> list[Order]:
        self._outbox.append(Cancellation(order.ts, order, REJECTED, f"order {order.order_id!r}: {message}"))
        return []

    def submit(self, order: Order) -> list[Order]:
        """Accept ``order`` for the next bars of its symbol.

        Returns ``[order]`` when it is working (a TWAP parent included: its
        children are sized bar by bar and come out of :meth:`on_bar`), ``[]``
        when it was rejected: empty or duplicate id, unknown side or type,
        qty not finite and > 0, limit/stop price not finite and > 0, or a
        symbol with no bar seen yet.
        """
        if not isinstance(order.order_id, str) or not order.order_id:
            return self._reject(order, "empty order id")
        if order.order_id in self._working:
            return self._reject(order, "duplicate of a working order id")
        if order.side not in (BUY, SELL):
            return self._reject(order, f"unknown side {order.side!r}")
        if order.order_type not in ORDER_TYPES:
            return self._reject(order, f"unknown order type {order.order_type!r}")
        if not _positive(order.qty):
            return self._reject(order, f"qty must be finite and > 0, got {order.qty!r}")
        if order.order_type != MARKET and not _positive(order.limit_price):
            return self._reject(
                order, f"{order.order_type} price must be finite and > 0, got {order.limit_price!r}"
            )
        sym = self._symbols.get(order.symbol)
        if sym is None:
            return self._reject(order, f"unknown symbol {order.symbol!r} (no bar seen)")
        twap = order.order_type == MARKET and order.qty * sym.last_close > self.settings.twap_threshold
        self._working[order.order_id] = _Working(order, float(order.qty), twap)
        return [order]

    def cancel(self, order_id: str, ts: int) -> bool:
        """Cancel a working order or TWAP parent; False when ``order_id`` is not working.

        ``ts`` is the request's event time (the paper venue acts at once and
        keeps no record: the loop made the request and knows it).
        """
        return self._working.pop(order_id, None) is not None

    def open_orders(self) -> list[Order]:
        """Working orders and TWAP parents, as submitted, in submission order."""
        return [w.order for w in self._working.values()]

    def remaining(self, order_id: str) -> float | None:
        """Unfilled qty of a working order (a TWAP parent's remainder), None if not working."""
        w = self._working.get(order_id)
        return None if w is None else w.remaining

    def take_cancelled(self) -> list[Cancellation]:
        """Cancellations not yet reported (rejections, TWAP and superseded), emptying the list."""
        out, self._outbox = self._outbox, []
        return out

    # -- protection -----------------------------------------------------------------

    def set_protection(
        self, symbol: str, position_qty: float, stop: float | None, target: float | None, ts: int
    ) -> bool:
        """Protect ``position_qty`` (signed: > 0 long) of ``symbol`` from bars at ``ts`` on.

        ``position_qty`` is the position with every fill so far applied; later
        fills of the symbol here adjust it. Replaces the symbol's protection;
        ``position_qty == 0`` or both levels ``None`` clear it. Returns False
        on bad input: a non-finite qty clears, a level not finite and > 0 is dropped.
        """
        if not (isinstance(position_qty, int | float) and math.isfinite(position_qty)):
            self._protection.pop(symbol, None)
            return False
        ok = True
        if stop is not None and not _positive(stop):
            stop, ok = None, False
        if target is not None and not _positive(target):
            target, ok = None, False
        if position_qty == 0 or (stop is None and target is None):
            self._protection.pop(symbol, None)
        else:
            self._protection[symbol] = _Protection(float(position_qty), stop, target, ts)
        return ok

    def clear_protection(self, symbol: str) -> None:
        """Drop ``symbol``'s protection (no-op when none)."""
        self._protection.pop(symbol, None)

    # -- bars -----------------------------------------------------------------------

    def _path(self, bar: Bar) -> list[tuple[int, float]]:
        mid = bar.ts + self.settings.bar_interval_ms // 2
        first, second = (bar.low, bar.high) if bar.close >= bar.open else (bar.high, bar.low)
        return [
            (bar.ts, bar.open),
            (mid, first),
            (mid, second),
            (bar.ts + self.settings.bar_interval_ms - 1, bar.close),
        ]

    def on_bar(self, bar: Bar, context: BarContext | None = None) -> BarResult:
        """Walk ``bar``'s path: fill working orders, slice TWAPs, run protection.

        ``context`` defaults to ``BarContext()`` (normalised volatility 1,
        the broker's own recent volume).
        """
        sym = self._symbols.get(bar.symbol)
        if not _valid_bar(bar) or (sym is not None and bar.ts <= sym.last_ts):
            self.ignored_bars += 1
            return BarResult(cancelled=tuple(self.take_cancelled()))
        if sym is None:
            sym = self._symbols[bar.symbol] = _Symbol(
                bar.ts, bar.close, deque(maxlen=self.settings.recent_volume_bars)
            )
        run = _BarRun(self, bar, context or BarContext(), sym)
        if bar.volume > 0:
            run.walk()
        sym.last_ts = bar.ts
        sym.last_close = bar.close
        sym.volumes.append(float(bar.volume))
        return BarResult(tuple(run.fills), tuple(run.new_orders), tuple(self.take_cancelled()))


class _BarRun:
    """One bar of one symbol through the broker (scratch, never pickled)."""

    def __init__(self, broker: PaperBroker, bar: Bar, context: BarContext, sym: _Symbol) -> None:
        self.broker = broker
        self.settings = broker.settings
        self.bar = bar
        self.nv = effective_vol(context.normalised_vol)
        rv = context.recent_volume
        if rv is None or not _positive(rv):
            rv = sum(sym.volumes) / len(sym.volumes) if sym.volumes else 0.0
        self.recent_volume = rv if rv > 0 else float(bar.volume)
        self.fills: list[Fill] = []
        self.new_orders: list[Order] = []

    def slippage(self, qty: float) -> float:
        return taker_slippage_bps(self.settings, qty, self.nv, self.recent_volume)

    def walk(self) -> None:
        bar = self.bar
        broker = self.broker
        ids = [
            oid for oid, w in broker._working.items() if w.order.symbol == bar.symbol and w.order.ts <= bar.ts
        ]
        for i, (ts, price) in enumerate(broker._path(bar)):
            at_open = i == 0
            for oid in ids:
                w = broker._working.get(oid)
                if w is not None:
                    self.work(w, ts, price, at_open)
            self.protect(ts, price, at_open)

    def fill(self, order: Order, ts: int, qty: float, price: float, fee_bps: float, slip: float) -> None:
        fee = fee_bps / BP * qty * price
        self.fills.append(Fill(ts, order.order_id, order.symbol, order.side, qty, price, fee, slip))
        prot = self.broker._protection.get(order.symbol)
        if prot is not None:  # protective exits delete the protection before filling
            new_qty = prot.qty + (qty if order.side == BUY else -qty)
            if abs(new_qty) <= QTY_EPS * abs(prot.qty) or (new_qty > 0) != (prot.qty > 0):
                del self.broker._protection[order.symbol]
            else:
                prot.qty = new_qty

    def taker(self, order: Order, ts: int, qty: float, ref: float, slip: float) -> None:
        sign = 1.0 if order.side == BUY else -1.0
        self.fill(order, ts, qty, ref * (1.0 + sign * slip / BP), self.settings.taker_fee_bps, slip)

    def work(self, w: _Working, ts: int, price: float, at_open: bool) -> None:
        order = w.order
        working = self.broker._working
        buy = order.side == BUY
        if order.order_type == MARKET:
            if not at_open:
                return
            if w.twap:
                self.twap_child(w)
                return
            self.taker(order, ts, w.remaining, price, self.slippage(w.remaining))
        elif order.order_type == LIMIT:
            limit = order.limit_price
            if (price > limit) if buy else (price < limit):
                return
            if at_open:  # marketable at the first trade: a taker, capped at the limit
                slip = self.slippage(w.remaining)
                px = min(limit, price * (1 + slip / BP)) if buy else max(limit, price * (1 - slip / BP))
                applied = abs(px / price - 1.0) * BP
                self.fill(order, ts, w.remaining, px, self.settings.taker_fee_bps, applied)
            else:
                self.fill(order, ts, w.remaining, limit, self.settings.maker_fee_bps, 0.0)
        elif order.order_type == STOP:
            stop = order.limit_price
            if (price < stop) if buy else (price > stop):
                return
            ref = price if at_open else stop
            self.taker(order, ts, w.remaining, ref, self.slippage(w.remaining))
        working.pop(order.order_id, None)

    def twap_child(self, w: _Working) -> None:
        bar = self.bar
        parent = w.order
        qty = twap_child_qty(w.remaining, bar.volume, self.settings.participation)
        w.children += 1
        child = child_order(parent, w.children, bar.ts, qty, TWAP)
        self.new_orders.append(child)
        slip = self.slippage(qty)
        skipped = twap_slippage_cancellation(bar.ts, child, slip, self.settings.twap_max_slippage_bps)
        if skipped is not None:
            self.broker._outbox.append(skipped)
            return
        self.taker(child, bar.ts, qty, bar.open, slip)
        w.remaining -= qty
        if w.remaining <= QTY_EPS * parent.qty:
            del self.broker._working[parent.order_id]

    def protect(self, ts: int, price: float, at_open: bool) -> None:
        broker = self.broker
        symbol = self.bar.symbol
        prot = broker._protection.get(symbol)
        if prot is None or prot.ts > self.bar.ts:
            return
        long = prot.qty > 0
        if prot.stop is not None and ((price <= prot.stop) if long else (price >= prot.stop)):
            kind, ref = STOP_EXIT, (price if at_open else prot.stop)
        elif prot.target is not None and ((price >= prot.target) if long else (price <= prot.target)):
            kind, ref = TARGET_EXIT, prot.target
        else:
            return
        broker._seq += 1
        side = SELL if long else BUY
        qty = abs(prot.qty)
        exit_order = Order(
            ts,
            f"{kind}:{broker.run_tag}:{symbol}:{ts}:{broker._seq}"
            if getattr(broker, "run_tag", "")
            else f"{kind}:{symbol}:{ts}:{broker._seq}",
            "",
            symbol,
            side,
            qty,
            MARKET,
            0.0,
            kind,
            PROTECTION_STRATEGY,
        )
        del broker._protection[symbol]
        self.new_orders.append(exit_order)
        self.taker(exit_order, ts, qty, ref, self.slippage(qty))
        for oid, w in list(broker._working.items()):
            if w.order.symbol == symbol and w.order.side == side:
                del broker._working[oid]
                message = f"order {oid!r} cancelled: {kind} exit {exit_order.order_id!r} closed the position"
                broker._outbox.append(Cancellation(ts, w.order, SUPERSEDED, message))
