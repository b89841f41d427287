"""The execution service's building blocks: limits, switches, TWAP and iceberg, quality, reconciliation.

Expected values are written out by hand from each module's rules (or
recomputed with numpy), never taken from the operator under test.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.execution.algos import AlgoOut, IcebergWorker, TwapSettings, TwapWorker
from operators.execution.cost_model import BrokerSettings, taker_slippage_bps
from operators.execution.deadman import (
    ALERT,
    FINE,
    STOP,
    DeadMansSwitch,
    DeadMansSwitchSettings,
    VenueHealth,
    VenueHealthSettings,
)
from operators.execution.limits import DAY_MS, ExecutionGuard, ExecutionLimits
from operators.execution.paper_broker import PaperBroker
from operators.execution.quality import (
    SlippageMonitor,
    SlippageSettings,
    execution_quality,
    realised_slippage_bps,
)
from operators.execution.reconcile import (
    OurBook,
    ReconcileSettings,
    VenueOrder,
    VenueTrade,
    VenueView,
    assets_of,
    reconcile,
)
from operators.execution.venue import TWAP, TWAP_SLIPPAGE
from schemas.records import (
    ACCEPTED,
    BUY,
    CANCELLED,
    EXTERNAL,
    FILLED,
    LIMIT,
    MARKET,
    PARTIALLY_FILLED,
    SELL,
    Bar,
    Fill,
    Order,
)
from schemas.records import (
    STOP as STOP_ORDER,
)
from schemas.settings import SettingsError

SYM = "BTC/USDT"
T0 = 1_700_000_000_000 // DAY_MS * DAY_MS  # a UTC midnight
COST = BrokerSettings(bar_interval_ms=60_000)


def order(oid: str, qty: float = 1.0, kind: str = MARKET, price: float = 0.0, side: str = BUY, ts: int = T0):
    return Order(ts, oid, "", SYM, side, qty, kind, price, "entry", "t")


def round_trip(obj):
    return pickle.loads(pickle.dumps(obj))


# =========================================================================== limits


def test_limits_refuse_live_until_both_notional_caps_are_set():
    assert ExecutionLimits(max_order_notional=10.0).live_refusal() == (
        "execution.max_daily_notional must be set to send real orders"
    )
    assert ExecutionLimits(max_order_notional=10.0, max_daily_notional=100.0).live_refusal() is None


@pytest.mark.parametrize(
    ("field", "value"), [("max_order_notional", 0.0), ("max_open_orders", 0), ("price_band_bps", math.nan)]
)
def test_limits_name_a_bad_field(field, value):
    with pytest.raises(SettingsError, match=rf"ExecutionLimits\.{field} must be"):
        ExecutionLimits(**{field: value})


def test_without_limits_valid_orders_pass_and_bad_ones_are_denied_with_a_reason():
    guard = ExecutionGuard()
    assert guard.check(order("a", 1e9), None, T0) is None  # nothing set: nothing to check against
    assert guard.check(order("b", 0.0), 100.0, T0) == "quantity 0.0 is not a finite number > 0"
    assert guard.check(order("c", math.nan), 100.0, T0) == "quantity nan is not a finite number > 0"
    assert guard.check(order("d", 1.0, LIMIT, 0.0), 100.0, T0) == "limit price 0.0 is not a finite number > 0"
    bad_side = Order(T0, "e", "", SYM, "hold", 1.0, MARKET, 0.0, "entry", "t")
    assert guard.check(bad_side, 100.0, T0) == "side 'hold' is not buy or sell"
    bad_type = Order(T0, "f", "", SYM, BUY, 1.0, "iceberg", 0.0, "entry", "t")
    assert guard.check(bad_type, 100.0, T0) == "order type 'iceberg' is not one of market, limit, stop"


def test_each_limit_denies_with_its_own_reason():
    limits = ExecutionLimits(
        max_order_notional=1_000.0, max_daily_notional=1_500.0, max_open_orders=2, price_band_bps=100.0
    )
    guard = ExecutionGuard(limits)
    assert guard.check(order("big", 11.0), 100.0, T0) == "order notional 1100 > max_order_notional 1000"
    # a buy limit above the last trade counts at its limit
    assert guard.check(order("lim", 9.95, LIMIT, 100.9), 100.0, T0) == (
        "order notional 1003.955 > max_order_notional 1000"
    )
    assert guard.check(order("far", 1.0, STOP_ORDER, 98.0), 100.0, T0) == (
        "stop price 98 is 200.0 bps from the last trade 100 >= price_band_bps 100"
    )
    assert guard.check(order("blind", 1.0), None, T0) == (
        "no last trade price of BTC/USDT: cannot check the order's notional"
    )
    assert guard.check(order("blind", 1.0, LIMIT, 100.0), None, T0) == (
        "no last trade price of BTC/USDT: cannot check price_band_bps"
    )
    for oid in ("o1", "o2"):
        o = order(oid, 7.0)
        assert guard.check(o, 100.0, T0) is None
        guard.on_sent(o, guard.notional(o, 100.0), T0)
    assert guard.check(order("o1", 1.0), 100.0, T0) == "order 'o1' is already open"
    assert guard.check(order("o3", 1.0), 100.0, T0) == "open orders 2 >= max_open_orders 2"
    guard.on_closed("o1")
    guard.on_closed("never-sent")  # ignored
    assert guard.open_orders == 1
    assert guard.check(order("o3", 1.1), 100.0, T0) == (
        "daily notional 1510 with this order > max_daily_notional 1500"
    )
    assert guard.check(order("o3", 1.0), 100.0, T0) is None


def test_daily_notional_resets_at_utc_midnight_by_event_time():
    guard = ExecutionGuard(ExecutionLimits(max_daily_notional=1_000.0))
    late = T0 + DAY_MS - 1  # 23:59:59.999
    guard.on_sent(order("a", 9.0), 900.0, late)
    guard.on_closed("a")
    assert (
        guard.check(order("b", 2.0), 100.0, late)
        == "daily notional 1100 with this order > max_daily_notional 1000"
    )
    assert guard.daily_notional(late) == pytest.approx(900.0)
    assert guard.check(order("b", 2.0), 100.0, late + 1) is None  # the next UTC day
    assert guard.daily_notional(late + 1) == 0.0


def test_holds_deny_everything_until_each_is_released():
    guard = ExecutionGuard(ExecutionLimits(max_order_notional=1e6))
    guard.halt("deadman", "no heartbeat for 31.0 s")
    guard.halt("reconcile", "BTC: venue 1.5, ours 1")
    assert guard.check(order("a"), 100.0, T0) == "halted (deadman): no heartbeat for 31.0 s"
    assert guard.release("deadman") and not guard.release("deadman")
    assert guard.check(order("a"), 100.0, T0) == "halted (reconcile): BTC: venue 1.5, ours 1"
    assert guard.holds == {"reconcile": "BTC: venue 1.5, ours 1"}
    guard.release("reconcile")
    assert guard.check(order("a"), 100.0, T0) is None


_orders = st.lists(
    st.tuples(
        st.sampled_from((MARKET, LIMIT, STOP_ORDER)),
        st.sampled_from((BUY, SELL)),
        st.floats(0.001, 50.0),
        st.floats(0.5, 1.5),  # limit price over last
        st.floats(80.0, 120.0),  # last trade price
        st.integers(0, 4 * 3_600_000),  # time step
        st.booleans(),  # close the oldest open order first
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    _orders,
    st.floats(50.0, 2_000.0),
    st.floats(500.0, 20_000.0),
    st.integers(1, 6),
    st.floats(10.0, 3_000.0),
)
def test_the_guard_never_passes_an_order_over_a_cap(stream, per_order, per_day, max_open, band):
    guard = ExecutionGuard(
        ExecutionLimits(
            max_order_notional=per_order,
            max_daily_notional=per_day,
            max_open_orders=max_open,
            price_band_bps=band,
        )
    )
    now, sent_per_day, open_ids = T0, {}, []
    for k, (kind, side, qty, rel, last, step, close) in enumerate(stream):
        now += step
        if close and open_ids:
            guard.on_closed(open_ids.pop(0))
        o = Order(now, f"o{k}", "", SYM, side, qty, kind, 0.0 if kind == MARKET else last * rel, "entry", "t")
        reason = guard.check(o, last, now)
        if reason is not None:
            assert isinstance(reason, str) and reason
            continue
        notional = qty * max(last, o.limit_price)
        assert notional <= per_order
        if kind != MARKET:
            assert abs(o.limit_price / last - 1) * 10_000 < band
        assert len(open_ids) < max_open
        day = now // DAY_MS
        sent_per_day[day] = sent_per_day.get(day, 0.0) + notional
        assert sent_per_day[day] <= per_day * (1 + 1e-12)
        guard.on_sent(o, guard.notional(o, last), now)
        open_ids.append(o.order_id)
        assert guard.open_orders == len(open_ids)


def test_the_guard_pickles_mid_stream():
    guard = ExecutionGuard(ExecutionLimits(max_daily_notional=1_000.0, max_open_orders=3))
    guard.on_sent(order("a", 5.0), 500.0, T0)
    guard.halt("venue", "down 31 min")
    copy = round_trip(guard)
    assert copy.limits == guard.limits and copy.holds == guard.holds
    guard.release("venue")
    copy.release("venue")
    for g in (guard, copy):
        assert (
            g.check(order("b", 6.0), 100.0, T0)
            == "daily notional 1100 with this order > max_daily_notional 1000"
        )
        assert g.check(order("a", 1.0), 100.0, T0) == "order 'a' is already open"


# =========================================================================== dead man's switch


def test_the_switch_is_unarmed_until_the_first_heartbeat():
    switch = DeadMansSwitch()
    assert not switch.expired(T0 + 10**9) and not switch.tripped and switch.silence_ms(T0) is None


def test_the_switch_trips_after_the_timeout_once_and_clears_on_a_heartbeat():
    switch = DeadMansSwitch(DeadMansSwitchSettings(timeout_ms=30_000))
    assert switch.beat(T0) is False
    assert not switch.trip(T0 + 30_000)  # exactly the timeout: not yet
    assert switch.trip(T0 + 30_001)
    assert not switch.trip(T0 + 40_000) and switch.expired(T0 + 40_000) and switch.tripped
    assert switch.silence_ms(T0 + 40_000) == 40_000
    assert switch.beat(T0 + 45_000) is True  # heartbeats are back: cleared
    assert not switch.tripped and not switch.expired(T0 + 75_000)
    assert switch.beat(T0 + 1_000) is False and switch.last_beat == T0 + 45_000  # an old beat does not rewind
    assert switch.trip(T0 + 75_001)


def test_switch_settings_are_checked():
    with pytest.raises(SettingsError, match=r"DeadMansSwitchSettings\.timeout_ms must be an int > 0, got 0"):
        DeadMansSwitchSettings(timeout_ms=0)


def test_venue_health_alerts_stops_and_clears_once_each():
    health = VenueHealth()
    assert health.ok(T0) is None and health.state == FINE
    assert health.failed(T0 + 1_000) is None and health.down_since == T0 + 1_000
    assert health.check(T0 + 120_999) is None
    alert = health.check(T0 + 121_000)
    assert (alert.previous, alert.state, alert.down_ms) == (FINE, ALERT, 120_000)
    assert health.failed(T0 + 200_000) is None and health.may_send  # alert: still sending
    assert health.down_since == T0 + 1_000  # the outage started at the first failure
    stop = health.failed(T0 + 1_801_000)
    assert (stop.previous, stop.state) == (ALERT, STOP) and not health.may_send
    assert health.check(T0 + 1_000) is None  # a clock going back does not ease the state
    back = health.ok(T0 + 2_000_000)
    assert (back.previous, back.state, back.down_ms) == (STOP, FINE, 0) and health.may_send
    assert health.ok(T0 + 2_000_001) is None and health.down_since is None
    events = [c.risk_event("ccxt:binance") for c in (alert, stop, back)]
    assert [(e.kind, e.level, e.action) for e in events] == [
        ("venue", 2, "alert"),
        ("venue", 3, "stop_sending"),
        ("venue", 0, "resume"),
    ]
    assert events[1].message == "venue ccxt:binance unreachable for 1800 s: stop sending"


def test_a_long_first_failure_goes_straight_to_stop():
    health = VenueHealth(VenueHealthSettings(alert_after_ms=10, stop_after_ms=20))
    health.failed(0)
    change = health.check(25)
    assert (change.previous, change.state) == (FINE, STOP)


def test_venue_health_settings_keep_stop_after_alert():
    with pytest.raises(SettingsError, match=r"VenueHealthSettings\.stop_after_ms must be > alert_after_ms"):
        VenueHealthSettings(alert_after_ms=60_000, stop_after_ms=60_000)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("ok", "failed", "check")), st.integers(0, 900_000)), max_size=60))
def test_venue_health_reports_every_change_and_nothing_else(calls):
    health = VenueHealth()
    now, since = T0, None
    for name, step in calls:
        now += step
        before = health.state
        change = getattr(health, name)(now)
        if change is None:
            assert health.state == before
        else:
            assert (change.previous, change.state, change.ts) == (before, health.state, now)
            assert change.previous != change.state
        if name == "ok":
            since = None
            assert health.state == FINE
        elif name == "failed" and since is None:
            since = now
        if health.state == STOP:
            assert since is not None and now - since >= 1_800_000
        elif health.state == ALERT:
            assert since is not None and now - since >= 120_000


# =========================================================================== TWAP


def twap(qty: float = 30.0, horizon: int = 180_000, slice_ms: int = 60_000, cost: BrokerSettings = COST):
    return TwapWorker(order("p", qty, ts=T0), cost, TwapSettings(horizon_ms=horizon, slice_ms=slice_ms))


def test_twap_children_follow_the_schedule_under_the_participation_cap():
    w = twap()
    assert w.start(T0) == AlgoOut() and w.n_slices == 3
    assert w.on_market(T0 - 1, 100.0, 1e6) == AlgoOut()  # before the parent: ignored
    w.on_market(T0 + 10_000, 100.0, 400.0)
    w.on_market(T0 + 50_000, 100.0, 100.0)  # slice 1: 500
    out = w.on_market(T0 + 60_000, 100.0, 30.0)
    # due 30 x 1/3 = 10, cap 10% of 500 = 50 -> 10; impact 10 x sqrt(10 / 500)
    (child,) = out.send
    assert child.order.order_id == "p/1" and child.order.parent_id == "p" and child.order.reason == TWAP
    assert (child.order.qty, child.order.order_type, child.order.ts) == (10.0, MARKET, T0 + 60_000)
    assert child.expected_slippage_bps == pytest.approx(3.0 + 10.0 * math.sqrt(10 / 500))
    assert child.reference_price == 100.0 and w.open_child == "p/1"
    w.on_fill(T0 + 60_001, 4.0, 100.03)
    assert w.open_child == "p/1" and w.remaining == pytest.approx(26.0)
    assert w.on_market(T0 + 120_000, 101.0, 0.0) == AlgoOut()  # still open: no stacking
    w.on_fill(T0 + 120_001, 6.0, 100.05)
    assert w.open_child is None and w.avg_price == pytest.approx((4 * 100.03 + 6 * 100.05) / 10)
    w.on_market(T0 + 130_000, 101.0, 1_000.0)
    out = w.on_market(T0 + 180_000, 102.0, 5.0)  # slice 3 closed: due 30 - 10 = 20, cap 10% of 1000
    assert [(c.order.order_id, c.order.qty) for c in out.send] == [("p/2", 20.0)]
    recent = (500.0 + 30.0 + 1_000.0) / 3
    assert out.send[0].expected_slippage_bps == pytest.approx(taker_slippage_bps(COST, 20.0, 1.0, recent))
    w.on_fill(T0 + 180_001, 20.0, 102.1)
    assert w.finished and w.remaining == 0.0
    assert w.on_market(T0 + 240_000, 102.0, 1e6) == AlgoOut()


def test_twap_skips_a_child_over_the_slippage_cap_and_tries_again():
    w = twap(qty=1_000.0, horizon=60_000)
    w.on_market(T0 + 1, 100.0, 100.0)
    w.on_market(T0 + 60_000, 100.0, 10_000.0)  # child 10 of recent 100: impact 10 x sqrt(0.1) = 3.16 bps
    w.on_fill(T0 + 60_001, 10.0, 100.0)
    out = w.on_market(T0 + 120_000, 100.0, 1.0)  # 1000 of recent mean 5050: 3 + 10 x sqrt(0.198) = 7.45
    assert [c.order.qty for c in out.send] == [1_000.0 - 10.0]
    w2 = twap(
        qty=1_000.0, horizon=60_000, cost=BrokerSettings(bar_interval_ms=60_000, twap_max_slippage_bps=5.0)
    )
    w2.on_market(T0 + 1, 100.0, 100.0)
    w2.on_market(T0 + 60_000, 100.0, 10_000.0)
    w2.on_fill(T0 + 60_001, 10.0, 100.0)
    out = w2.on_market(T0 + 120_000, 100.0, 50.0)
    (skip,) = out.skipped
    assert out.send == () and skip.reason == TWAP_SLIPPAGE and skip.order.order_id == "p/2"
    expected = taker_slippage_bps(COST, 990.0, 1.0, 5_050.0)
    assert (
        skip.message
        == f"TWAP child 'p/2': expected slippage {expected:.3f} bps > 5.0 bps; parent keeps working"
    )
    out = w2.on_market(T0 + 180_000, 100.0, 0.0)  # 10% of 50 = 5: cheap enough
    assert [(c.order.order_id, c.order.qty) for c in out.send] == [("p/3", 5.0)]


def test_twap_rules_are_the_paper_brokers():
    """Same participation and cap keys; a skipped child reads as the paper broker's."""
    cost = BrokerSettings(
        bar_interval_ms=60_000, participation=0.05, twap_threshold=1.0, twap_max_slippage_bps=3.5
    )
    broker = PaperBroker(cost)
    broker.on_bar(Bar(SYM, T0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 1))
    broker.submit(Order(T0 + 60_000, "p", "", SYM, BUY, 30.0, MARKET, 0.0, "entry", "t"))
    result = broker.on_bar(Bar(SYM, T0 + 60_000, 100.0, 100.0, 100.0, 100.0, 400.0, 100.0, 1))
    (paper,) = result.cancelled  # 20 of recent 100: 3 + 10 x sqrt(0.2) > 3.5
    w = TwapWorker(order("p", 30.0, ts=T0), cost, TwapSettings(horizon_ms=60_000, slice_ms=60_000))
    w.on_market(T0, 100.0, 400.0)
    (ours,) = w.on_market(T0 + 60_000, 100.0, 0.0).skipped
    assert ours.order.qty == paper.order.qty == 20.0  # 5% of 400
    assert (ours.order.order_id, ours.reason) == (paper.order.order_id, paper.reason)
    assert ours.message.split(":")[0] == paper.message.split(":")[0]


def test_twap_cancel_asks_to_cancel_the_open_child_and_stops():
    w = twap()
    w.on_market(T0 + 1, 100.0, 500.0)
    w.on_market(T0 + 60_000, 100.0, 1.0)
    assert w.cancel(T0 + 60_500) == AlgoOut(cancel=("p/1",))
    assert not w.finished  # the child is still open at the venue
    w.on_fill(T0 + 60_600, 2.0, 100.0)  # its fills still count
    assert w.on_child_closed(T0 + 60_700) == AlgoOut() and w.finished and w.filled_qty == 2.0
    assert w.on_market(T0 + 120_000, 100.0, 1e6) == AlgoOut()


def test_twap_after_a_child_closed_unfilled_tries_again_next_slice_and_skips_gaps():
    w = twap(qty=30.0)
    w.on_market(T0 + 1, 100.0, 500.0)
    w.on_market(T0 + 60_000, 100.0, 100.0)
    w.on_child_closed(T0 + 60_100)  # the venue expired it
    out = w.on_market(T0 + 300_000, 100.0, 7.0)  # slices 2..5 closed: the last was empty
    assert out == AlgoOut() and w.slices == 5
    out = w.on_market(T0 + 360_000, 100.0, 0.0)
    assert [(c.order.order_id, c.order.qty) for c in out.send] == [("p/2", pytest.approx(0.7))]


def test_twap_rejects_a_bad_parent():
    with pytest.raises(ValueError, match="cannot work order 'p'"):
        TwapWorker(order("p", -1.0), COST)
    with pytest.raises(SettingsError, match=r"TwapSettings\.slice_ms must be <= horizon_ms"):
        TwapSettings(horizon_ms=1_000, slice_ms=2_000)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(1.0, 1_000.0),
    st.lists(st.tuples(st.integers(0, 90_000), st.floats(0.0, 500.0), st.floats(0.0, 1.0)), max_size=80),
)
def test_twap_children_never_exceed_participation_schedule_or_parent(qty, prints):
    w = twap(qty=qty, horizon=300_000)
    ts, slice_vol, prev_slice_vol, slice_end, sent = T0, 0.0, 0.0, T0 + 60_000, 0.0
    for step, vol, share in prints:
        ts += step
        if ts >= slice_end:
            jumped = (ts - slice_end) // 60_000 + 1
            prev_slice_vol = slice_vol if jumped == 1 else 0.0
            slice_end += jumped * 60_000
            slice_vol = 0.0
        slice_vol += vol
        out = w.on_market(ts, 100.0, vol)
        for child in out.send:
            assert child.order.qty <= 0.10 * prev_slice_vol * (1 + 1e-12)
            sent += child.order.qty
            assert sent <= qty * min(1.0, w.slices / w.n_slices) * (1 + 1e-9)
            assert child.expected_slippage_bps <= COST.twap_max_slippage_bps
            part = child.order.qty * share
            if part > 0:
                w.on_fill(ts, part, 100.0)
            w.on_child_closed(ts)  # the rest expires
            sent -= child.order.qty - part
        for skip in out.skipped:
            assert skip.reason == TWAP_SLIPPAGE
    assert w.filled_qty <= qty * (1 + 1e-9)


def test_twap_pickles_mid_stream():
    w = twap(qty=100.0)
    w.on_market(T0 + 1, 100.0, 300.0)
    w.on_market(T0 + 60_000, 100.0, 40.0)
    copy = round_trip(w)
    for x in (w, copy):
        x.on_fill(T0 + 60_001, 5.0, 100.1)
    assert [c.order for c in w.on_market(T0 + 120_000, 100.0, 0.0).send] == [
        c.order for c in copy.on_market(T0 + 120_000, 100.0, 0.0).send
    ]


# =========================================================================== iceberg


def iceberg(qty: float = 2.5, display: float = 1.0) -> IcebergWorker:
    return IcebergWorker(order("ice", qty, LIMIT, 101.0, SELL), display)


def test_iceberg_refills_when_the_visible_part_fills():
    w = iceberg()
    (first,) = w.start(T0).send
    assert (first.order.order_id, first.order.qty, first.order.order_type, first.order.limit_price) == (
        "ice/1",
        1.0,
        LIMIT,
        101.0,
    )
    assert (first.order.side, first.order.reason, first.expected_slippage_bps) == (SELL, "iceberg", 0.0)
    assert w.on_market(T0 + 1, 100.5, 3.0) == AlgoOut()  # open child: nothing to do
    assert w.on_fill(T0 + 2, 0.3, 101.0) == AlgoOut()
    (second,) = w.on_fill(T0 + 3, 0.7, 101.0).send
    assert (second.order.order_id, second.order.qty, second.reference_price) == ("ice/2", 1.0, 100.5)
    (third,) = w.on_fill(T0 + 4, 1.0, 101.2).send
    assert third.order.qty == pytest.approx(0.5)
    assert w.on_fill(T0 + 5, 0.5, 101.0) == AlgoOut() and w.finished
    assert w.avg_price == pytest.approx((1.5 * 101.0 + 1.0 * 101.2) / 2.5)


def test_iceberg_waits_for_the_next_print_after_a_child_closed_and_cancels():
    w = iceberg(qty=5.0, display=2.0)
    w.start(T0)
    w.on_fill(T0 + 1, 0.5, 101.0)
    assert w.on_child_closed(T0 + 2) == AlgoOut()  # not hammering a refusing venue
    (again,) = w.on_market(T0 + 3, 100.0, 1.0).send
    assert (again.order.order_id, again.order.qty) == ("ice/2", 2.0)
    assert w.cancel(T0 + 4) == AlgoOut(cancel=("ice/2",)) and not w.finished
    w.on_child_closed(T0 + 5)
    assert w.finished and w.on_market(T0 + 6, 100.0, 1.0) == AlgoOut()


def test_iceberg_needs_a_limit_parent_and_a_display_size():
    with pytest.raises(ValueError, match="an iceberg works a limit order"):
        IcebergWorker(order("m", 1.0), 0.5)
    with pytest.raises(ValueError, match="display_qty must be a finite number > 0"):
        iceberg(display=math.inf)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0.01, 100.0), st.floats(0.01, 10.0), st.lists(st.floats(0.01, 1.0), min_size=1, max_size=200)
)
def test_iceberg_shows_at_most_its_display_and_children_add_up_to_the_parent(qty, display, shares):
    w = iceberg(qty, display)
    children = list(w.start(T0).send)
    visible = children[-1].order.qty
    for k, share in enumerate(shares):
        part = visible * share
        out = w.on_fill(T0 + k, part, 101.0)
        visible -= part
        for c in out.send:
            assert c.order.qty <= display and c.order.order_id == f"ice/{len(children) + 1}"
            children.append(c)
            visible = c.order.qty
        if w.finished:
            break
    assert w.filled_qty <= qty * (1 + 1e-9)
    total = sum(c.order.qty for c in children)
    assert total <= qty * (1 + 1e-9)
    if w.finished:
        assert total == pytest.approx(qty)


def test_iceberg_pickles_mid_stream():
    w = iceberg(qty=10.0, display=3.0)
    w.start(T0)
    w.on_fill(T0 + 1, 1.0, 101.0)
    copy = round_trip(w)
    assert w.on_fill(T0 + 2, 2.0, 101.0) == copy.on_fill(T0 + 2, 2.0, 101.0)
    assert copy.open_child == "ice/2"


# =========================================================================== execution quality


def test_realised_slippage_is_positive_when_it_costs_us():
    assert realised_slippage_bps(BUY, 100.0, 100.1) == pytest.approx(10.0)
    assert realised_slippage_bps(SELL, 100.0, 100.1) == pytest.approx(-10.0)
    assert realised_slippage_bps(SELL, 100.0, 99.9) == pytest.approx(10.0)
    row = execution_quality(Fill(T0, "o1", SYM, BUY, 2.0, 100.05, 0.2, 5.0), 100.0, 3.0)
    assert (row.ts, row.order_id, row.symbol, row.side, row.qty) == (T0, "o1", SYM, BUY, 2.0)
    assert (row.expected_slippage_bps, row.reference_price, row.fill_price) == (3.0, 100.0, 100.05)
    assert row.realised_slippage_bps == pytest.approx(5.0)


def test_slippage_monitor_means_match_numpy_over_a_long_stream():
    rng = np.random.default_rng(3)
    n, window = 100_000, 50
    exp = rng.uniform(1.0, 5.0, n)
    real = exp + rng.normal(0.0, 3.0, n) + 1e6 * (np.arange(n) == 10)  # one wild value early on
    mon = SlippageMonitor(SlippageSettings(window=window, min_fills=10))
    for k in range(n):
        mon.update(T0 + k, float(exp[k]), float(real[k]))
        if k + 1 < 10:
            assert mon.get() is None
        elif k % 997 == 0 or k == n - 1:
            lo = max(0, k + 1 - window)
            got = mon.get()
            assert got[0] == pytest.approx(exp[lo : k + 1].mean(), rel=1e-12, abs=1e-9)
            assert got[1] == pytest.approx(real[lo : k + 1].mean(), rel=1e-12, abs=1e-9)


def test_slippage_breaches_once_and_clears_with_hysteresis_at_pinned_fills():
    mon = SlippageMonitor(SlippageSettings(window=4, min_fills=4))
    realised = [3.0, 3.0, 3.0, 3.0, 9.0, 9.0, 9.0, 3.0, 3.0, 3.0, 3.0, 9.0, 20.0]
    changes = {k: mon.update(k, 3.0, r) for k, r in enumerate(realised)}
    said = {k: c.breached for k, c in changes.items() if c is not None}
    # window means: k=5 (3,3,9,9)=6 not > 6; k=6 (3,9,9,9)=7.5 > 6 -> breach
    # k=8 (9,9,3,3)=6 > 4.5 stays; k=9 (9,3,3,3)=4.5 <= 4.5 -> clear; k=12 (3,3,9,20)=8.75 -> breach
    assert said == {6: True, 9: False, 12: True}
    event = changes[6].risk_event(SYM)
    assert (event.kind, event.level, event.action, event.symbol) == ("slippage", 2, "alert", SYM)
    assert changes[9].risk_event().level == 0


def test_slippage_floor_keeps_limit_fills_from_breaching_on_noise():
    mon = SlippageMonitor(SlippageSettings(window=5, min_fills=5, floor_bps=1.0))
    assert [mon.update(k, 0.0, 1.5) for k in range(5)] == [None] * 5  # 1.5 <= 2 x max(0, 1)
    assert mon.update(5, 0.0, 10.0).threshold_bps == 2.0


def test_slippage_settings_cross_field_rules():
    with pytest.raises(SettingsError, match=r"SlippageSettings\.clear_ratio must be < ratio"):
        SlippageSettings(ratio=2.0, clear_ratio=2.0)
    with pytest.raises(SettingsError, match=r"SlippageSettings\.min_fills must be <= window"):
        SlippageSettings(window=5, min_fills=6)


def test_slippage_monitor_ignores_non_finite_input_and_pickles():
    mon = SlippageMonitor(SlippageSettings(window=3, min_fills=1))
    assert mon.update(0, math.nan, 1.0) is None and mon.get() is None
    mon.update(1, 2.0, 2.0)
    copy = round_trip(mon)
    assert mon.update(2, 2.0, 20.0) == copy.update(2, 2.0, 20.0)
    assert copy.breached


# =========================================================================== reconciliation


def vorder(cid: str, vid: str, qty: float, filled: float = 0.0, status: str = "open", price: float = 100.0):
    return VenueOrder(vid, cid, SYM, BUY, qty, filled, price, status, T0 + 5)


def vtrade(
    tid: str, vid: str, qty: float, price: float = 100.0, cid: str = "", fee: float = 0.0, ts: int = T0 + 10
):
    return VenueTrade(tid, vid, cid, SYM, BUY, qty, price, fee, "USDT" if fee else "", ts)


NOW = T0 + 3_600_000


def test_restart_after_a_crash_between_send_and_ack():
    """o1 reached the venue and rests; o2 never left; o3 reached it and filled while we were down."""
    o1, o2, o3 = order("o1", 1.0, LIMIT, 99.0), order("o2", 1.0), order("o3", 0.5)
    ours = OurBook(pending=(o1, o2, o3), balances={"BTC": 0.0, "USDT": 1_000.0})
    venue = VenueView(
        "ccxt:binance",
        orders=(vorder("o1", "v1", 1.0, price=99.0), vorder("o3", "v3", 0.5, 0.5, status="closed")),
        trades=(vtrade("t1", "v3", 0.5, 100.0, fee=0.05),),
        balances={"BTC": 0.5, "USDT": 1_000.0 - 50.0 - 0.05},
    )
    r = reconcile(ours, venue, NOW)
    assert r.missing_fills == (Fill(T0 + 10, "o3", SYM, BUY, 0.5, 100.0, 0.05, 0.0),)
    assert [(e.order_id, e.kind, e.venue_order_id, e.filled_qty, e.ts) for e in r.events] == [
        ("o1", ACCEPTED, "v1", 0.0, NOW),
        ("o3", FILLED, "v3", 0.5, NOW),
    ]
    assert all(e.venue == "ccxt:binance" for e in r.events)
    assert r.working == ("o1",) and r.closed == ("o3",) and r.unsent == (o2,)
    assert not r.fail_closed and r.mismatches == ()
    assert r.expected_balances == pytest.approx({"BTC": 0.5, "USDT": 949.95})
    assert [(e.action, e.level) for e in r.risk_events(NOW)] == [("missing_fill", 1)]


def test_a_trade_missed_while_down_is_found_through_the_venue_order_id():
    """Binance lists trades without the client id: they are matched through our accepted events."""
    o4, o5 = order("o4", 1.0), order("o5", 2.0, LIMIT, 100.0)
    recorded = Fill(T0 + 8, "o5", SYM, BUY, 0.25, 100.0, 0.0, 0.0)
    ours = OurBook(
        working=(o4, o5),
        fills=(recorded,),
        venue_ids={"o4": "v4", "o5": "v5"},
        balances={"BTC": 0.25, "USDT": 975.0},
    )
    venue = VenueView(
        "paper",
        orders=(vorder("o5", "v5", 2.0, 1.0),),  # o4 is no longer open: it filled
        trades=(
            vtrade("t4", "v4", 1.0, 101.0, ts=T0 + 20),
            vtrade("t5a", "v5", 0.5, 100.0, ts=T0 + 8),  # the first half of it we recorded
            vtrade("t5b", "v5", 0.5, 100.0, ts=T0 + 30),
        ),
        balances={"BTC": 0.25 + 1.0 + 0.75, "USDT": 975.0 - 101.0 - 75.0},
    )
    r = reconcile(ours, venue, NOW)
    assert [(f.order_id, f.qty, f.ts) for f in r.missing_fills] == [
        ("o5", 0.25, T0 + 8),  # the uncovered rest of t5a, oldest first
        ("o4", 1.0, T0 + 20),
        ("o5", 0.5, T0 + 30),
    ]
    kinds = {(e.order_id, e.kind) for e in r.events}
    assert kinds == {("o4", FILLED), ("o5", PARTIALLY_FILLED)}
    assert r.closed == ("o4",) and r.working == ("o5",) and not r.fail_closed


def test_a_manual_order_on_the_venue_is_external_and_its_trade_fails_closed():
    o6 = order("o6", 1.0, LIMIT, 95.0)
    ours = OurBook(working=(o6,), venue_ids={"o6": "v6"}, balances={"BTC": 0.0, "USDT": 1_000.0})
    manual = VenueOrder("v900", "web_1", SYM, SELL, 3.0, 0.0, 120.0, "open", T0 + 50)
    venue = VenueView(
        "ccxt:binance",
        orders=(vorder("o6", "v6", 1.0, price=95.0), manual),
        trades=(VenueTrade("t9", "v901", "", SYM, BUY, 0.2, 100.0, 0.0, "", T0 + 60),),  # a manual buy
        balances={"BTC": 0.2, "USDT": 980.0},
    )
    r = reconcile(ours, venue, NOW)
    (ext,) = r.external
    assert (ext.order_id, ext.venue_order_id, ext.kind, ext.side, ext.qty, ext.price) == (
        "web_1",
        "v900",
        EXTERNAL,
        SELL,
        3.0,
        120.0,
    )
    assert ext.reason == "open at the venue, not in our books"
    assert (
        r.working == ("o6",) and r.missing_fills == () and [t.trade_id for t in r.external_trades] == ["t9"]
    )
    assert r.fail_closed
    assert [(m.asset, m.ours, m.venue) for m in r.mismatches] == [("BTC", 0.0, 0.2), ("USDT", 1_000.0, 980.0)]
    events = r.risk_events(NOW)
    assert [(e.kind, e.level, e.action) for e in events] == [
        ("reconcile", 2, "external"),
        ("reconcile", 2, "external"),
        ("reconcile", 3, "fail_closed"),
        ("reconcile", 3, "fail_closed"),
    ]
    assert "no new orders until `qbtc control resume`" in events[-1].message


def test_orders_closed_at_the_venue_get_their_final_event():
    o7, o8, o9 = order("o7"), order("o8"), order("o9")
    ours = OurBook(
        working=(o7, o8, o9), venue_ids={"o7": "v7", "o8": "v8"}, balances={"BTC": 0.0, "USDT": 0.0}
    )
    venue = VenueView(
        "paper",
        orders=(vorder("o7", "v7", 1.0, status="canceled"), vorder("o8", "v8", 1.0, status="expired")),
        balances={"BTC": 0.0, "USDT": 0.0},
    )
    r = reconcile(ours, venue, NOW)
    assert [(e.order_id, e.kind, e.reason) for e in r.events] == [
        ("o7", CANCELLED, "canceled at the venue (reconciliation)"),
        ("o8", "expired", "expired at the venue (reconciliation)"),
        ("o9", CANCELLED, "not open at the venue (reconciliation); filled 0 of 1"),
    ]
    assert r.closed == ("o7", "o8", "o9") and r.unsent == ()


def test_balances_within_tolerance_pass_and_unknown_venue_assets_are_not_compared():
    ours = OurBook(
        fills=(Fill(T0, "old", SYM, BUY, 1.0, 100.0, 0.0, 0.0),), balances={"BTC": 1.0, "USDT": 900.0}
    )
    venue = VenueView("paper", balances={"BTC": 1.00005, "USDT": 900.0, "BNB": 3.0})
    r = reconcile(ours, venue, NOW, ReconcileSettings(rel_tolerance=1e-4))
    assert not r.fail_closed and set(r.expected_balances) == {"BTC", "USDT"}
    r = reconcile(ours, venue, NOW, ReconcileSettings(rel_tolerance=1e-6))
    assert [m.asset for m in r.mismatches] == ["BTC"]
    assert r.mismatches[0].difference == pytest.approx(5e-5)


def test_a_second_reconciliation_after_applying_the_first_finds_nothing_new():
    o1, o2, o3 = order("o1", 1.0, LIMIT, 99.0), order("o2", 1.0), order("o3", 0.5)
    ours = OurBook(pending=(o1, o2, o3), balances={"BTC": 0.0, "USDT": 1_000.0})
    venue = VenueView(
        "paper",
        orders=(vorder("o1", "v1", 1.0, price=99.0),),
        trades=(vtrade("t1", "v3", 0.5, 100.0, cid="o3"),),
        balances={"BTC": 0.5, "USDT": 950.0},
    )
    first = reconcile(ours, venue, NOW)
    accepted = {e.order_id: e.venue_order_id for e in first.events if e.kind == ACCEPTED}
    after = OurBook(
        pending=first.unsent,
        working=tuple(o for o in (o1, o2, o3) if o.order_id in first.working),
        fills=first.missing_fills,
        venue_ids=accepted,
        balances=first.expected_balances,
    )
    second = reconcile(after, venue, NOW + 1)
    assert second.missing_fills == () and second.events == () and not second.fail_closed
    assert second.unsent == first.unsent and second.working == first.working


def test_assets_of_unified_symbols():
    assert assets_of("ETH/BTC") == ("ETH", "BTC") and assets_of("BTC/USDT:USDT") == ("BTC", "USDT")


def test_workers_floor_children_to_the_lot_skip_those_under_the_minimum_and_take_back_their_state():
    parent = Order(0, "p", "", "A/USDT", BUY, 1.0, LIMIT, 100.0, "entry", "t")
    ice = IcebergWorker(parent, 0.3337, lot=0.01, min_qty=0.05)
    (child,) = ice.start(0).send
    assert child.order.qty == pytest.approx(0.33)
    for _ in range(2):
        (child,) = ice.on_fill(1, ice._book.outstanding, 100.0).send
    assert child.order.qty == pytest.approx(0.33) and child.order.order_id == "p/3"
    assert ice.on_fill(2, 0.33, 100.0).send == ()  # the rest 0.01 is under the minimum
    assert ice.exhausted and not ice.finished and ice.filled_qty == pytest.approx(0.99)
    again = IcebergWorker(parent, 0.3337, lot=0.01, min_qty=0.05)
    again.restore(2, 0.5, 50.0, "p/2", 0.16)
    assert again.children == 2 and again.open_child == "p/2" and again.remaining == pytest.approx(0.5)
    (nxt,) = again.on_fill(3, 0.16, 100.0).send
    assert nxt.order.order_id == "p/3" and nxt.order.qty == pytest.approx(0.33)
    twap = TwapWorker(
        Order(0, "q", "", "A/USDT", BUY, 5.0, MARKET, 0.0, "entry", "t"),
        BrokerSettings(bar_interval_ms=1000),
        TwapSettings(horizon_ms=2_000, slice_ms=1_000),
        lot=0.1,
        min_qty=0.2,
    )
    twap.on_market(0, 100.0, 1.5)
    assert twap.on_market(1_000, 100.0, 3.37).send == ()  # 10% of 1.5 = 0.15, floored 0.1: under 0.2
    (c,) = twap.on_market(2_000, 100.0, 1.0).send  # 10% of 3.37 floored to 0.3; no id was used before
    assert c.order.order_id == "q/1" and c.order.qty == pytest.approx(0.3)
