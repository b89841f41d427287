"""PaperBroker against hand-computed fills along the OHLC path.

Every expected price, fee and slippage below is written out from the cost
model in the module docstring, not taken from the broker.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from operators.execution.cost_model import BP, BrokerSettings, impact_bps, taker_slippage_bps
from operators.execution.paper_broker import PaperBroker
from operators.execution.venue import (
    PROTECTION_STRATEGY,
    REJECTED,
    SUPERSEDED,
    TWAP,
    TWAP_SLIPPAGE,
    BarContext,
    BarResult,
    Cancellation,
    Venue,
)
from schemas.records import BUY, LIMIT, MARKET, SELL, STOP, Bar, Fill, Order

SYM = "BTC/USDT"
I = 60_000  # noqa: E741 - the bar interval
T0 = 1_699_999_980_000
MID = I // 2
S = BrokerSettings(bar_interval_ms=I)
TAKER = 10.0 / BP
MAKER = 2.0 / BP
BASE_SLIP = 2.0 * (1 + 0.5 * 1.0)  # spread term at normalised vol 1: 3 bps


def t(k: int) -> int:
    return T0 + k * I


def bar(k: int, o: float, h: float, lo: float, c: float, v: float = 1000.0, sym: str = SYM) -> Bar:
    return Bar(sym, t(k), o, h, lo, c, v, (h + lo) / 2, 10)


def flat(k: int, p: float, v: float = 1000.0, sym: str = SYM) -> Bar:
    return bar(k, p, p, p, p, v, sym)


def order(
    oid: str,
    side: str,
    qty: float,
    kind: str = MARKET,
    price: float = 0.0,
    k: int = 1,
    sym: str = SYM,
) -> Order:
    """An order decided at the end of bar k-1, i.e. dated t(k)."""
    return Order(t(k), oid, "", sym, side, qty, kind, price, "entry", "test")


def broker(settings: BrokerSettings = S, close: float = 100.0, volume: float = 1000.0) -> PaperBroker:
    """A broker that has seen bar 0 of SYM (closing at ``close``)."""
    b = PaperBroker(settings)
    assert b.on_bar(flat(0, close, volume)) == BarResult()
    return b


def one(result: BarResult) -> Fill:
    assert len(result.fills) == 1, result
    return result.fills[0]


# --------------------------------------------------------------------------- settings


def test_settings_validation() -> None:
    with pytest.raises(TypeError):
        BrokerSettings()  # type: ignore[call-arg]
    for bad in (
        {"bar_interval_ms": 0},
        {"bar_interval_ms": -5},
        {"bar_interval_ms": 1.5},
        {"bar_interval_ms": I, "participation": 0.0},
        {"bar_interval_ms": I, "participation": 1.5},
        {"bar_interval_ms": I, "taker_fee_bps": -1.0},
        {"bar_interval_ms": I, "spread_bps": math.nan},
        {"bar_interval_ms": I, "twap_threshold": 0.0},
        {"bar_interval_ms": I, "recent_volume_bars": 0},
    ):
        with pytest.raises(ValueError, match="must be"):
            BrokerSettings(**bad)
    assert BrokerSettings(bar_interval_ms=I, twap_threshold=math.inf).twap_threshold == math.inf


def test_paper_broker_is_a_venue() -> None:
    venue: Venue = PaperBroker(S)
    assert venue.open_orders() == []
    assert venue.take_cancelled() == []


def test_cost_model_functions() -> None:
    assert impact_bps(S, 1.0, 100.0) == 0.0  # 1% of recent volume: not above the share
    assert impact_bps(S, 1.01, 100.0) == pytest.approx(10.0 * math.sqrt(0.0101))
    assert impact_bps(S, 9.0, 100.0) == pytest.approx(3.0)
    assert impact_bps(S, 9.0, 0.0) == 0.0
    assert taker_slippage_bps(S, 1.0, 0.0, 100.0) == pytest.approx(2.0)
    assert taker_slippage_bps(S, 9.0, 3.0, 100.0) == pytest.approx(2.0 * 2.5 + 3.0)


# --------------------------------------------------------------------------- market


def test_market_fill_with_volatility_and_impact() -> None:
    b = broker(close=200.0)
    assert b.submit(order("b1", BUY, 4.0)) == [order("b1", BUY, 4.0)]
    b.submit(order("s1", SELL, 4.0))
    b.submit(order("s2", SELL, 0.5))
    r = b.on_bar(bar(1, 200.0, 210.0, 190.0, 205.0), BarContext(normalised_vol=2.0, recent_volume=100.0))
    # spread 2 * (1 + 0.5 * 2) = 4 bps; impact 10 * sqrt(4 / 100) = 2 bps (4% > 1% share)
    slip = 6.0
    buy, sell, small = r.fills
    assert (buy.ts, buy.order_id, buy.side, buy.qty) == (t(1), "b1", BUY, 4.0)
    assert buy.price == pytest.approx(200.0 * 1.0006)
    assert buy.fee == pytest.approx(TAKER * 4.0 * 200.12)
    assert buy.slippage_bps == pytest.approx(slip)
    assert sell.price == pytest.approx(200.0 * 0.9994)
    assert sell.fee == pytest.approx(TAKER * 4.0 * 199.88)
    assert sell.slippage_bps == pytest.approx(slip)
    # 0.5 / 100 = 0.5% of recent volume: no impact, only the 4 bps spread term
    assert small.price == pytest.approx(200.0 * (1 - 4.0 / BP))
    assert small.slippage_bps == pytest.approx(4.0)
    assert r.new_orders == () and r.cancelled == ()
    assert b.open_orders() == []


def test_market_fill_uses_own_rolling_volume() -> None:
    b = PaperBroker(BrokerSettings(bar_interval_ms=I, recent_volume_bars=2))
    for k, v in enumerate([100.0, 200.0, 300.0]):
        b.on_bar(flat(k, 100.0, v))
    b.submit(order("big", BUY, 10.0, k=3))
    b.submit(order("small", BUY, 2.0, k=3))
    # recent volume = mean(200, 300) = 250, the current bar's 5000 excluded
    big, small = b.on_bar(flat(3, 100.0, 5000.0)).fills
    assert big.slippage_bps == pytest.approx(BASE_SLIP + 10.0 * math.sqrt(10.0 / 250.0))
    assert big.price == pytest.approx(100.0 * (1 + big.slippage_bps / BP))
    assert small.slippage_bps == pytest.approx(BASE_SLIP)  # 2 / 250 = 0.8% < 1%


def test_recent_volume_falls_back_to_the_bar() -> None:
    b = broker(volume=0.0)  # no traded volume in the history
    b.submit(order("o", BUY, 4.0))
    f = one(b.on_bar(flat(1, 100.0, 100.0), BarContext(recent_volume=math.nan)))
    assert f.slippage_bps == pytest.approx(BASE_SLIP + 10.0 * math.sqrt(4.0 / 100.0))


def test_order_waits_for_a_bar_at_or_after_its_ts() -> None:
    b = broker()
    late = Order(t(1) + 1, "late", "", SYM, BUY, 1.0, MARKET, 0.0, "entry", "test")
    b.submit(late)
    assert b.on_bar(flat(1, 100.0)).fills == ()
    f = one(b.on_bar(flat(2, 101.0)))
    assert (f.ts, f.order_id, f.price) == (t(2), "late", pytest.approx(101.0 * (1 + BASE_SLIP / BP)))


def test_zero_volume_bar_fills_nothing() -> None:
    b = broker()
    b.submit(order("o", SELL, 1.0))
    b.set_protection(SYM, 1.0, 99.0, None, t(1))
    assert b.on_bar(bar(1, 98.0, 98.0, 98.0, 98.0, v=0.0)) == BarResult()
    assert [o.order_id for o in b.open_orders()] == ["o"]
    f = one(b.on_bar(bar(2, 102.0, 103.0, 101.0, 102.5)))  # protection: 101 > 99, no trigger
    assert (f.ts, f.order_id) == (t(2), "o")
    assert f.price == pytest.approx(102.0 * (1 - BASE_SLIP / BP))


def test_cancel() -> None:
    b = broker()
    b.submit(order("a", BUY, 1.0))
    b.submit(order("b", BUY, 1.0))
    assert b.cancel("a", t(1)) is True
    assert b.cancel("a", t(1)) is False
    assert b.cancel("nope", t(1)) is False
    assert [f.order_id for f in b.on_bar(flat(1, 100.0)).fills] == ["b"]


# --------------------------------------------------------------------------- limit and stop

UP = (100.0, 106.0, 95.0, 104.0)  # close >= open: open, low, high, close
DOWN = (100.0, 106.0, 95.0, 96.0)  # close < open: open, high, low, close


@pytest.mark.parametrize(("ohlc", "first"), [(UP, "buy97"), (DOWN, "sell105")])
def test_limit_fills_along_the_path(ohlc: tuple[float, ...], first: str) -> None:
    b = broker()
    b.submit(order("sell105", SELL, 2.0, LIMIT, 105.0))
    b.submit(order("buy97", BUY, 3.0, LIMIT, 97.0))
    b.submit(order("buy94", BUY, 1.0, LIMIT, 94.0))
    b.submit(order("sell107", SELL, 1.0, LIMIT, 107.0))
    fills = b.on_bar(bar(1, *ohlc)).fills
    assert fills[0].order_id == first  # the extreme met first fills first
    got = {f.order_id: f for f in fills}
    assert set(got) == {"buy97", "sell105"}
    assert got["buy97"].ts == got["sell105"].ts == t(1) + MID
    assert got["buy97"].price == 97.0 and got["sell105"].price == 105.0
    assert got["buy97"].fee == pytest.approx(MAKER * 3.0 * 97.0)
    assert got["sell105"].fee == pytest.approx(MAKER * 2.0 * 105.0)
    assert got["buy97"].slippage_bps == 0.0
    assert [o.order_id for o in b.open_orders()] == ["buy94", "sell107"]


def test_limit_marketable_at_the_open_is_a_capped_taker() -> None:
    b = broker()
    b.submit(order("wide", BUY, 1.0, LIMIT, 101.0))
    b.submit(order("tight", BUY, 1.0, LIMIT, 100.01))
    b.submit(order("sell", SELL, 1.0, LIMIT, 99.99))
    wide, tight, sell = b.on_bar(bar(1, *UP)).fills
    assert wide.ts == tight.ts == sell.ts == t(1)
    assert wide.price == pytest.approx(100.0 * (1 + BASE_SLIP / BP))  # 100.03 < 101
    assert wide.slippage_bps == pytest.approx(BASE_SLIP)
    assert tight.price == pytest.approx(100.01)  # capped at the limit
    assert tight.slippage_bps == pytest.approx(1.0)
    assert sell.price == pytest.approx(99.99)
    assert sell.slippage_bps == pytest.approx(1.0)
    assert sell.fee == pytest.approx(TAKER * 99.99)


@pytest.mark.parametrize(("ohlc", "first"), [(UP, "sell97"), (DOWN, "buy103")])
def test_stop_fills_along_the_path(ohlc: tuple[float, ...], first: str) -> None:
    b = broker()
    b.submit(order("buy103", BUY, 2.0, STOP, 103.0))
    b.submit(order("sell97", SELL, 1.0, STOP, 97.0))
    b.submit(order("sell94", SELL, 1.0, STOP, 94.0))
    fills = b.on_bar(bar(1, *ohlc)).fills
    assert [f.order_id for f in fills][0] == first
    got = {f.order_id: f for f in fills}
    assert set(got) == {"buy103", "sell97"}
    assert got["buy103"].ts == got["sell97"].ts == t(1) + MID
    assert got["buy103"].price == pytest.approx(103.0 * (1 + BASE_SLIP / BP))
    assert got["sell97"].price == pytest.approx(97.0 * (1 - BASE_SLIP / BP))
    assert got["buy103"].fee == pytest.approx(TAKER * 2.0 * got["buy103"].price)
    assert got["sell97"].slippage_bps == pytest.approx(BASE_SLIP)
    assert [o.order_id for o in b.open_orders()] == ["sell94"]


def test_gap_through_a_stop_fills_at_the_open() -> None:
    b = broker()
    b.submit(order("sell97", SELL, 1.0, STOP, 97.0))
    b.submit(order("buy103", BUY, 1.0, STOP, 103.0, k=2))
    f = one(b.on_bar(bar(1, 94.0, 95.0, 93.0, 94.5)))
    assert (f.ts, f.order_id) == (t(1), "sell97")
    assert f.price == pytest.approx(94.0 * (1 - BASE_SLIP / BP))  # worse than the stop
    f = one(b.on_bar(bar(2, 105.0, 106.0, 104.0, 105.5)))
    assert (f.ts, f.order_id) == (t(2), "buy103")
    assert f.price == pytest.approx(105.0 * (1 + BASE_SLIP / BP))


# --------------------------------------------------------------------------- TWAP


def test_twap_split_by_participation() -> None:
    b = broker(close=1000.0)
    parent = order("p", BUY, 100.0)  # 100 x 1000 = 100k quote > 50k
    assert b.submit(parent) == [parent]
    ctx = BarContext(recent_volume=1000.0)
    expect = []  # (bar, child id, qty)
    r1 = b.on_bar(bar(1, 1000.0, 1010.0, 990.0, 1005.0, v=300.0), ctx)
    expect.append((1, "p/1", 30.0))
    assert b.remaining("p") == pytest.approx(70.0)
    assert b.on_bar(flat(2, 1005.0, v=0.0), ctx) == BarResult()  # waits
    r3 = b.on_bar(bar(3, 1002.0, 1003.0, 1001.0, 1002.0, v=200.0), ctx)
    expect.append((3, "p/2", 20.0))
    r4 = b.on_bar(bar(4, 998.0, 999.0, 990.0, 991.0, v=800.0), ctx)
    expect.append((4, "p/3", 50.0))  # min(remaining 50, 10% of 800)
    assert b.open_orders() == [] and b.remaining("p") is None
    opens = {1: 1000.0, 3: 1002.0, 4: 998.0}
    for r, (k, cid, qty) in zip((r1, r3, r4), expect, strict=True):
        (child,) = r.new_orders
        assert child == Order(t(k), cid, "p", SYM, BUY, qty, MARKET, 0.0, TWAP, "test")
        f = one(r)
        slip = BASE_SLIP + 10.0 * math.sqrt(qty / 1000.0)
        assert (f.ts, f.order_id, f.qty) == (t(k), cid, pytest.approx(qty))
        assert f.slippage_bps == pytest.approx(slip)
        assert f.price == pytest.approx(opens[k] * (1 + slip / BP))
        assert f.fee == pytest.approx(TAKER * qty * f.price)


def test_at_threshold_is_not_split() -> None:
    b = broker(close=1000.0)
    b.submit(order("o", SELL, 50.0))  # exactly 50k: not above the threshold
    f = one(b.on_bar(flat(1, 1000.0, v=100.0)))
    assert (f.order_id, f.qty) == ("o", 50.0)


def test_twap_child_cancelled_above_max_slippage() -> None:
    b = broker(close=1000.0)
    b.submit(order("p", SELL, 100.0))
    # spread 2 * (1 + 0.5 * 12) = 14 bps + impact 10 * sqrt(30 / 1000) = 1.73 > 15
    r = b.on_bar(flat(1, 1000.0, v=300.0), BarContext(normalised_vol=12.0, recent_volume=1000.0))
    assert r.fills == ()
    (child,) = r.new_orders
    assert (child.order_id, child.parent_id, child.qty) == ("p/1", "p", pytest.approx(30.0))
    (c,) = r.cancelled
    assert (c.ts, c.order, c.reason) == (t(1), child, TWAP_SLIPPAGE)
    assert "15.732" in c.message
    assert b.remaining("p") == pytest.approx(100.0)
    # 12 + 1.73 = 13.73 bps is allowed: the parent carries on with child 2
    r = b.on_bar(flat(2, 1000.0, v=300.0), BarContext(normalised_vol=10.0, recent_volume=1000.0))
    f = one(r)
    assert (f.order_id, f.qty) == ("p/2", pytest.approx(30.0))
    assert f.slippage_bps == pytest.approx(12.0 + 10.0 * math.sqrt(0.03))
    assert r.cancelled == ()
    assert b.remaining("p") == pytest.approx(70.0)
    assert b.cancel("p", t(3)) is True
    assert b.on_bar(flat(3, 1000.0, v=300.0)) == BarResult()


# --------------------------------------------------------------------------- protection


def test_protective_stop_before_target_in_one_path_point() -> None:
    b = broker()
    b.set_protection(SYM, 2.0, 101.0, 99.0, t(1))  # both met by every point of a flat 100 bar
    r = b.on_bar(flat(1, 100.0))
    (exit_order,) = r.new_orders
    assert exit_order == Order(t(1), f"stop:{SYM}:{t(1)}:1", "", SYM, SELL, 2.0, MARKET, 0.0, "stop", "risk")
    f = one(r)
    assert f.price == pytest.approx(100.0 * (1 - BASE_SLIP / BP))  # gapped through 101: the open
    assert f.fee == pytest.approx(TAKER * 2.0 * f.price)
    assert b.on_bar(flat(2, 100.0)) == BarResult()  # the protection is gone
    b.set_protection(SYM, -3.0, 99.0, 101.0, t(3))  # short
    r = b.on_bar(flat(3, 100.0))
    assert r.new_orders[0].order_id == f"stop:{SYM}:{t(3)}:2"
    assert (r.new_orders[0].side, r.new_orders[0].reason, PROTECTION_STRATEGY) == (BUY, "stop", "risk")
    assert one(r).price == pytest.approx(100.0 * (1 + BASE_SLIP / BP))


@pytest.mark.parametrize(("ohlc", "kind", "ref"), [(UP, "stop", 96.0), (DOWN, "target", 105.0)])
def test_protection_follows_the_path(ohlc: tuple[float, ...], kind: str, ref: float) -> None:
    b = broker()
    assert b.set_protection(SYM, 1.5, 96.0, 105.0, t(1)) is True
    r = b.on_bar(bar(1, *ohlc))
    (exit_order,) = r.new_orders
    assert (exit_order.reason, exit_order.ts, exit_order.qty) == (kind, t(1) + MID, 1.5)
    f = one(r)
    assert f.price == pytest.approx(ref * (1 - BASE_SLIP / BP))
    assert f.slippage_bps == pytest.approx(BASE_SLIP)


def test_protective_target_fills_at_the_target_even_on_a_gap() -> None:
    b = broker()
    b.set_protection(SYM, 1.0, None, 105.0, t(1))
    f = one(b.on_bar(bar(1, 107.0, 108.0, 106.0, 107.0)))
    assert f.ts == t(1)
    assert f.price == pytest.approx(105.0 * (1 - BASE_SLIP / BP))


def test_protection_waits_for_its_ts() -> None:
    b = broker()
    b.set_protection(SYM, 1.0, 99.0, None, t(2))
    assert b.on_bar(flat(1, 98.0)).fills == ()
    assert one(b.on_bar(flat(2, 98.0))).order_id == f"stop:{SYM}:{t(2)}:1"


def test_fills_update_the_protected_qty() -> None:
    b = broker()
    b.set_protection(SYM, 2.0, 97.0, None, t(1))
    b.submit(order("exit", SELL, 2.0))  # the loop's own exit, same bar as a gap through the stop
    f = one(b.on_bar(bar(1, 94.0, 95.0, 93.0, 94.0)))
    assert f.order_id == "exit"  # no second close by the stop
    b.set_protection(SYM, 2.0, 97.0, None, t(2))
    b.submit(order("half", SELL, 0.5, k=2))
    r = b.on_bar(bar(2, 98.0, 99.0, 96.0, 96.5))
    assert [(f.order_id, f.qty) for f in r.fills] == [("half", 0.5), (f"stop:{SYM}:{t(2) + MID}:1", 1.5)]


def test_protective_exit_supersedes_working_orders_on_its_side() -> None:
    b = broker()
    b.set_protection(SYM, 2.0, 96.0, None, t(1))
    b.submit(order("tp", SELL, 2.0, LIMIT, 110.0))
    b.submit(order("add", BUY, 1.0, LIMIT, 90.0))
    r = b.on_bar(bar(1, *UP))
    assert [f.order_id for f in r.fills] == [f"stop:{SYM}:{t(1) + MID}:1"]
    (c,) = r.cancelled
    assert (c.ts, c.order.order_id, c.reason) == (t(1) + MID, "tp", SUPERSEDED)
    assert [o.order_id for o in b.open_orders()] == ["add"]


def test_bad_protection_inputs() -> None:
    b = broker()
    assert b.set_protection(SYM, 1.0, math.nan, 105.0, t(1)) is False  # the stop is dropped
    assert b.on_bar(flat(1, 90.0)).fills == ()
    assert one(b.on_bar(flat(2, 106.0))).order_id.startswith("target:")
    assert b.set_protection(SYM, math.inf, 99.0, None, t(3)) is False
    assert b.on_bar(flat(3, 90.0)).fills == ()
    assert b.set_protection(SYM, 0.0, 99.0, None, t(4)) is True
    assert b.on_bar(flat(4, 90.0)).fills == ()
    b.set_protection(SYM, 1.0, 99.0, None, t(5))
    b.clear_protection(SYM)
    b.clear_protection("ETH/USDT")
    assert b.on_bar(flat(5, 90.0)).fills == ()


# --------------------------------------------------------------------------- bad input


BAD_ORDERS = [
    (order("q0", BUY, 0.0), "qty"),
    (order("qneg", SELL, -1.0), "qty"),
    (order("qnan", BUY, math.nan), "qty"),
    (order("qinf", BUY, math.inf), "qty"),
    (order("side", "hold", 1.0), "side"),
    (order("type", BUY, 1.0, "iceberg"), "type"),
    (order("lnan", BUY, 1.0, LIMIT, math.nan), "limit price"),
    (order("lzero", BUY, 1.0, LIMIT, 0.0), "limit price"),
    (order("sneg", SELL, 1.0, STOP, -5.0), "stop price"),
    (order("sym", BUY, 1.0, sym="NOPE/USDT"), "unknown symbol"),
    (order("", BUY, 1.0), "empty"),
]


@pytest.mark.parametrize(("bad", "why"), BAD_ORDERS)
def test_bad_orders_are_rejected(bad: Order, why: str) -> None:
    b = broker()
    assert b.submit(bad) == []
    (c,) = b.take_cancelled()
    assert (c.ts, c.order, c.reason) == (bad.ts, bad, REJECTED)
    assert why in c.message
    assert b.take_cancelled() == []
    assert b.open_orders() == []
    assert b.on_bar(flat(1, 100.0)) == BarResult()


def test_duplicate_id_rejected_and_reported_with_the_next_bar() -> None:
    b = broker()
    b.submit(order("o", BUY, 1.0))
    assert b.submit(order("o", SELL, 2.0)) == []
    r = b.on_bar(flat(1, 100.0))
    assert [f.order_id for f in r.fills] == ["o"]
    (c,) = r.cancelled
    assert (c.reason, c.order.side) == (REJECTED, SELL)
    assert "duplicate" in c.message


def test_bad_bars_and_context_are_ignored() -> None:
    b = broker()
    b.submit(order("o", BUY, 1.0))
    for bad in (
        bar(1, math.nan, 101.0, 99.0, 100.0),
        bar(1, 100.0, 99.0, 101.0, 100.0),  # high < low
        bar(1, 100.0, 101.0, 99.0, 100.0, v=-1.0),
        bar(1, 0.0, 101.0, 0.0, 100.0),
        flat(0, 100.0),  # stale
        flat(-1, 100.0),
    ):
        assert b.on_bar(bad) == BarResult()
    assert b.ignored_bars == 6
    f = one(b.on_bar(flat(1, 100.0), BarContext(normalised_vol=math.nan, recent_volume=-5.0)))
    assert f.slippage_bps == pytest.approx(BASE_SLIP)
    b.submit(order("o2", BUY, 1.0, k=2))
    f = one(b.on_bar(flat(2, 100.0), BarContext(normalised_vol=-3.0)))
    assert f.slippage_bps == pytest.approx(2.0)  # negative volatility counts as 0


# --------------------------------------------------------------------------- determinism


def scenario_steps() -> list[tuple[int, list[Bar], list[Order], list[tuple]]]:
    """Per step: the bars, then the loop's orders and protections decided at the close."""
    eth = "ETH/USDT"
    steps = []
    for k in range(8):
        bars = [
            bar(k, 1000.0 + k, 1010.0 + k, 985.0 + k, 1002.0 + k, v=200.0 + 50 * k),
            bar(k, 50.0 - k, 51.0 - k, 48.0 - k, 49.0 - k, v=100.0 * (k % 3), sym=eth),
        ]
        orders: list[Order] = []
        prot: list[tuple] = []
        if k == 0:
            orders = [order("big", BUY, 120.0), order("lim", SELL, 5.0, LIMIT, 1009.5, sym=SYM)]
            prot = [(eth, -10.0, 48.5, 40.0, t(1))]
        if k == 3:
            orders = [order("e1", SELL, 3.0, STOP, 45.5, k=4, sym=eth), order("bad", BUY, -1.0, k=4)]
            prot = [(SYM, 50.0, 1003.0, 1020.0, t(4))]
        steps.append((k, bars, orders, prot))
    return steps


def run(b: PaperBroker, steps: list) -> list:
    out = []
    for k, bars, orders, prot in steps:
        for x in bars:
            out.append(b.on_bar(x, BarContext(normalised_vol=1.0 + 0.25 * k)))
        out.extend(b.submit(o) for o in orders)
        out.extend(b.set_protection(*p) for p in prot)
        out.append(b.take_cancelled())
    return out


def test_replay_and_resume_from_pickle_are_identical() -> None:
    steps = scenario_steps()
    full = run(PaperBroker(S), steps)
    assert full == run(PaperBroker(S), steps)
    made = [o.order_id for r in full if isinstance(r, BarResult) for o in r.new_orders]
    eth_stop, btc_stop = f"stop:ETH/USDT:{t(1)}:1", f"stop:{SYM}:{t(4) + MID}:2"
    assert made == ["big/1", eth_stop, "big/2", "big/3", "big/4", btc_stop]
    assert any(isinstance(r, list) and r and isinstance(r[0], Cancellation) for r in full)
    for cut in range(1, len(steps)):
        b = PaperBroker(S)
        head = run(b, steps[:cut])
        resumed = pickle.loads(pickle.dumps(b))
        assert head + run(resumed, steps[cut:]) == full


def test_random_stream_invariants() -> None:
    rng = np.random.default_rng(7)
    settings = BrokerSettings(bar_interval_ms=I, twap_threshold=20_000.0)
    syms = ["A/USDT", "B/USDT"]
    price = {"A/USDT": 100.0, "B/USDT": 20.0}
    steps = []
    n = 0
    for k in range(300):
        bars = []
        for s in syms:
            path = price[s] * np.exp(np.cumsum(rng.normal(0, 0.004, 4)))
            o, c = path[0], path[-1]
            v = float(rng.choice([0.0, rng.uniform(50, 2000)], p=[0.1, 0.9]))
            bars.append(Bar(s, t(k), o, max(path), min(path), c, v, c, 5))
            price[s] = c
        orders = []
        for s in syms:
            if rng.random() < 0.3:
                n += 1
                kind = [MARKET, LIMIT, STOP][int(rng.integers(3))]
                side = [BUY, SELL][int(rng.integers(2))]
                px = price[s] * (1 + rng.normal(0, 0.01)) if kind != MARKET else 0.0
                qty = float(rng.uniform(0.1, 400.0))
                orders.append(Order(t(k + 1), f"o{n}", "", s, side, qty, kind, px, "entry", "rnd"))
        prot = [(syms[0], float(rng.normal(0, 5)), price[syms[0]] * 0.99, price[syms[0]] * 1.01, t(k + 1))]
        steps.append((k, bars, orders, prot))
    full = run(PaperBroker(settings), steps)
    b = PaperBroker(settings)
    head = run(b, steps[:150])
    assert head + run(pickle.loads(pickle.dumps(b)), steps[150:]) == full

    bars_at = {(x.symbol, x.ts): x for _, bars, _, _ in steps for x in bars}
    submitted = {o.order_id: o for _, _, orders, _ in steps for o in orders}
    results = [r for r in full if isinstance(r, BarResult)]
    fills = [f for r in results for f in r.fills]
    created = {o.order_id: o for r in results for o in r.new_orders}
    assert len(fills) > 100 and any(o.reason == TWAP for o in created.values())
    assert len({f.order_id for f in fills}) == len(fills)  # one fill per order
    child_qty: dict[str, float] = {}
    for f in fills:
        x = bars_at[(f.symbol, f.ts - f.ts % I)]
        assert x.volume > 0
        assert f.slippage_bps >= 0
        assert f.fee == pytest.approx(f.qty * f.price * (MAKER if f.slippage_bps == 0 else TAKER))
        o = submitted.get(f.order_id) or created[f.order_id]
        assert (f.side, f.qty) == (o.side, pytest.approx(o.qty))
        assert f.ts >= o.ts
        if o.parent_id:
            assert o.qty <= 0.1 * x.volume + 1e-9
            child_qty[o.parent_id] = child_qty.get(o.parent_id, 0.0) + f.qty
        if o.order_type == MARKET and f.ts % I == 0:  # filled at an open, taker
            sign = 1 if f.side == BUY else -1
            if o.reason not in ("stop", "target"):
                assert f.price == pytest.approx(x.open * (1 + sign * f.slippage_bps / BP))
        elif o.order_type == LIMIT:
            assert (f.price <= o.limit_price) if f.side == BUY else (f.price >= o.limit_price)
    for pid, q in child_qty.items():
        assert q <= submitted[pid].qty * (1 + 1e-12)
