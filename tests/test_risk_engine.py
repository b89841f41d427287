"""Scenario tests of the risk engine: Portfolio + RiskEngine driven step by step.

Each scenario builds a book, moves prices or features, and pins the exact
events (kind, level, action) and actions at known steps. A hypothesis test
checks that no approved quantity ever breaks a pre-trade limit.
"""

from __future__ import annotations

import copy
import math
import pickle
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from operators.risk.engine import RiskEngine
from operators.risk.portfolio import DAY_MS, Portfolio, PortfolioSettings
from operators.risk.settings import (
    PERMISSIVE,
    MarketView,
    OrderIntent,
    RiskActions,
    RiskSettings,
    hysteresis_level,
)
from schemas.records import BUY, SELL, Fill

Z = 1.6448536269514722
TINY_VOL = 1e-6
NO_KILL = {"kill_drawdown": 1.0, "kill_daily_loss": 1.0, "kill_weekly_loss": 1.0, "kill_monthly_loss": 1.0}
NO_DEFENSIVE = {"defensive_drawdown": 1.0, "defensive_weekly_loss": 1.0}


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


T0 = ms(2024, 4, 3, 12)  # a Wednesday noon: mid-week, mid-month


def mv(ts, *, vols=None, ents=None, regimes=None, last=None, corr=None, bar_close=True) -> MarketView:
    return MarketView(
        ts, vols or {}, ents or {}, regimes or {}, last or {}, corr or (lambda a, b: 0.0), bar_close
    )


def book(cash: float = 100_000.0, **positions: tuple[float, float]) -> Portfolio:
    """A portfolio holding {symbol: (signed qty, price)}, bought without fees."""
    p = Portfolio(PortfolioSettings(initial_cash=cash))
    for sym, (qty, price) in positions.items():
        trade(p, sym, qty, price)
    return p


def trade(p: Portfolio, sym: str, qty: float, price: float) -> None:
    side = BUY if qty > 0 else SELL
    p.apply_fill(Fill(0, f"{sym}-{qty}", sym, side, abs(qty), price, 0.0, 0.0))
    p.mark(sym, price)


def flatten(p: Portfolio) -> None:
    for sym, qty in list(p.positions.items()):
        trade(p, sym, -qty, p.marks[sym])


def kinds(events) -> list[tuple]:
    return [(e.kind, e.level, e.action) for e in events]


def entry(sym="X", side=BUY, qty=0.01, price=50_000.0, strategy="s", reduces_only=False) -> OrderIntent:
    return OrderIntent(sym, side, qty, price, "entry", strategy, reduces_only)


# -- QVaR breaker --------------------------------------------------------------------


def test_a_breaker_level_is_held_after_a_flatten_empties_the_book():
    # level 3 at t=0; the flatten empties the book (share 0) at t=1 min; the level,
    # and with it emergency (no entries), holds until 30 min after the share last exceeded 2%
    eng = RiskEngine()
    held, flat = book(X=(1.0, 20_000.0)), book()
    vol = {"X": 0.025 / (0.2 * Z)}
    events, _ = eng.assess(held, mv(T0, vols=vol))
    assert kinds(events) == [("qvar_breaker", 3, "flatten"), ("mode", 3, "emergency")]
    for minute in (1, 10, 29):
        events, actions = eng.assess(flat, mv(T0 + minute * 60_000, vols=vol))
        assert events == [] and not actions.entries_allowed and eng.breaker_level == 3, minute
    events, actions = eng.assess(flat, mv(T0 + 30 * 60_000, vols=vol))
    assert kinds(events) == [("qvar_breaker", 0, "clear"), ("mode", 0, "normal")]
    assert actions == PERMISSIVE


def test_qvar_breaker_levels_up_and_down_without_flapping():
    pf = book(X=(1.0, 20_000.0))  # weight 0.2: share = 0.2 * vol * z
    eng = RiskEngine(RiskSettings(breaker_hold_ms=0))  # hysteresis in value only; the hold is tested below
    shares = [0.0100, 0.0121, 0.0119, 0.0121, 0.0110, 0.0125, 0.0151, 0.0149, 0.0152, 0.0121, 0.0201]
    shares += [0.0199, 0.0161, 0.0159, 0.0119, 0.0097, 0.0095]
    expected = {
        1: [("qvar_breaker", 1, "warn")],
        6: [("qvar_breaker", 2, "caution"), ("mode", 1, "defensive")],
        10: [("qvar_breaker", 3, "flatten"), ("mode", 3, "emergency")],
        13: [("qvar_breaker", 2, "caution"), ("mode", 1, "defensive")],
        14: [("qvar_breaker", 1, "warn"), ("mode", 0, "normal")],
        16: [("qvar_breaker", 0, "clear")],
    }
    thresholds = {1: 0.012, 6: 0.015, 10: 0.020, 13: 0.016, 14: 0.012, 16: 0.0096}
    acts = []
    for i, share in enumerate(shares):
        events, actions = eng.assess(pf, mv(T0 + i * 1000, vols={"X": share / (0.2 * Z)}))
        assert kinds(events) == expected.get(i, []), i
        if i in thresholds:
            assert events[0].threshold == pytest.approx(thresholds[i])
            assert events[0].value == pytest.approx(share)
        acts.append(actions)
    assert eng.last_risk.qvar == pytest.approx(0.0095 * 100_000)
    assert acts[5] == PERMISSIVE
    caution = acts[6]
    assert caution.blocked_regimes == frozenset({"high_vol", "crisis"})
    assert (caution.size_multiplier, caution.min_strength, caution.entries_allowed) == (0.5, 0.6, True)
    assert all(a.flatten and not a.entries_allowed for a in acts[10:13])
    assert not acts[13].flatten and acts[13].blocked_regimes
    assert acts[14].blocked_regimes == frozenset() and acts[16] == PERMISSIVE


def test_caution_blocks_entries_in_high_vol_and_crisis_only():
    pf = book(X=(1.0, 20_000.0))
    eng = RiskEngine()
    m = mv(T0, vols={"X": 0.016 / (0.2 * Z)}, regimes={"Y": "high_vol", "W": "crisis", "V": "range"})
    assert kinds(eng.assess(pf, m)[0]) == [("qvar_breaker", 2, "caution"), ("mode", 1, "defensive")]
    for sym in ("Y", "W"):
        qty, events = eng.check_order(entry(sym, qty=0.1, price=100.0), pf, m)
        assert qty == 0.0 and kinds(events) == [("pre_trade", 2, "deny")]
        assert "no entries in regime" in events[0].message
    assert eng.check_order(entry("V", qty=0.1, price=100.0), pf, m) == (0.1, [])
    # reducing X is always fine
    assert eng.check_order(entry("X", SELL, 0.5, 20_000.0), pf, m) == (0.5, [])


# -- DLRI ------------------------------------------------------------------------------


def test_dlri_cut_once_then_deleverage_then_clear():
    pf = book(X=(2.0, 100_000.0))  # leverage 2: DLRI = 2/3 * vol multiplier
    eng = RiskEngine()
    v0 = 1e-5
    ratios = [1.0, 1.25, 1.25, 1.19, 1.25, 1.21, 1.4, 1.4]
    expected = {1: [("dlri", 1, "cut_25pct")], 6: [("dlri", 2, "deleverage")]}
    cuts = []
    for i, r in enumerate(ratios):
        events, actions = eng.assess(pf, mv(T0 + i * 1000, vols={"X": r * v0}))
        assert kinds(events) == expected.get(i, []), i
        cuts.append(actions.cut_fraction)
        if i >= 6:
            multiplier = eng.last_dlri / (2 / 3)
            assert actions.deleverage_to == pytest.approx(1.5 / multiplier)
            assert multiplier == pytest.approx(1.4, rel=1e-3)
        else:
            assert actions.deleverage_to is None
    assert cuts == [0.0, 0.25, 0, 0, 0, 0, 0, 0]
    assert eng.dlri_level == 2
    # the loop deleverages to the target: DLRI lands at 0.5, below both exits
    target = actions.deleverage_to
    trade(pf, "X", target - 2.0, 100_000.0)
    events, actions = eng.assess(pf, mv(T0 + 9000, vols={"X": 1.4 * v0}))
    assert kinds(events) == [("dlri", 0, "clear")]
    assert eng.last_dlri == pytest.approx(0.5, rel=1e-3)
    assert events[0].threshold == pytest.approx(0.8 * 0.8)


def test_dlri_straight_to_deleverage_and_down_to_level_1():
    pf = book(X=(2.85, 100_000.0))  # leverage 2.85: DLRI 0.95
    eng = RiskEngine()
    events, actions = eng.assess(pf, mv(T0, vols={"X": TINY_VOL}))
    assert kinds(events) == [("dlri", 2, "deleverage")]
    assert (actions.cut_fraction, actions.deleverage_to) == (0.0, pytest.approx(1.5))
    assert events[0].value == pytest.approx(0.95)
    trade(pf, "X", -0.75, 100_000.0)  # leverage 2.1: DLRI 0.7 < 0.72 but >= 0.64
    events, actions = eng.assess(pf, mv(T0 + 1, vols={"X": TINY_VOL}))
    assert kinds(events) == [("dlri", 1, "none")]
    assert (actions.cut_fraction, actions.deleverage_to) == (0.0, None)


# -- ERS ---------------------------------------------------------------------------------


def test_ers_defers_entries_tightens_stops_and_clears_with_hysteresis():
    eng = RiskEngine()
    flat = book()
    ents = {"X": 1.0, "Y": 1.0}
    events, actions = eng.assess(flat, mv(T0, ents=ents))  # flat: ERS = 0.4
    assert events == [] and eng.last_ers == pytest.approx(0.4)
    pf = book(X=(1.0, 20_000.0))
    expected = {0: [("ers", 1, "defer_entries")], 3: [("ers", 0, "clear")]}
    for i, h in enumerate([0.9, 0.5, 0.65, 0.45]):  # ERS = 0.4 h + 0.6 h
        events, actions = eng.assess(pf, mv(T0 + i, vols={"X": TINY_VOL}, ents={"X": h, "Y": h}))
        assert kinds(events) == expected.get(i, []), i
        assert eng.last_ers == pytest.approx(h)
        if i < 3:
            assert not actions.entries_allowed
            assert (actions.size_multiplier, actions.stop_multiplier) == (0.7, 0.75)
            qty, denied = eng.check_order(entry("Y", qty=0.1, price=100.0), pf, mv(T0 + i))
            assert qty == 0.0 and "ERS" in denied[0].message
        else:
            assert actions == PERMISSIVE
    assert eng.mode == "normal"


# -- defensive mode ------------------------------------------------------------------


def test_defensive_on_drawdown_with_hysteresis():
    eng = RiskEngine(RiskSettings(**NO_KILL, defensive_weekly_loss=1.0))
    pf = book(X=(1.0, 50_000.0))
    expected = {
        2: [("defensive", 1, "defensive"), ("mode", 1, "defensive")],
        4: [("defensive", 0, "clear"), ("mode", 0, "normal")],
    }
    for i, price in enumerate([50_000.0, 44_500.0, 38_900.0, 41_000.0, 42_100.0]):
        pf.mark("X", price)
        events, actions = eng.assess(pf, mv(T0 + i, vols={"X": TINY_VOL}))
        assert kinds(events) == expected.get(i, []), i
        if i in (2, 3):
            assert (actions.size_multiplier, actions.min_strength) == (0.5, 0.6) and actions.entries_allowed
    assert "defensive -> normal" in events[-1].message


def test_defensive_on_weekly_loss_clears_at_the_monday_boundary():
    eng = RiskEngine(RiskSettings(**NO_KILL, defensive_drawdown=1.0))
    pf = book(X=(1.0, 50_000.0))
    sunday_end = ms(2024, 4, 7) + DAY_MS - 1
    steps = [(T0, 48_200.0), (T0 + DAY_MS, 46_800.0), (T0 + 2 * DAY_MS, 47_400.0), (sunday_end, 47_500.0)]
    steps.append((ms(2024, 4, 8), 47_500.0))  # Monday 00:00:00.000
    expected = {
        1: [("defensive", 1, "defensive"), ("mode", 1, "defensive")],
        4: [("defensive", 0, "clear"), ("mode", 0, "normal")],
    }
    for i, (ts, price) in enumerate(steps):
        pf.advance(ts)
        pf.mark("X", price)
        events, _ = eng.assess(pf, mv(ts, vols={"X": TINY_VOL}))
        assert kinds(events) == expected.get(i, []), i
    assert eng.mode == "normal"


def test_defensive_on_sharpe_only_once_warm():
    eng = RiskEngine(RiskSettings(**NO_KILL, **NO_DEFENSIVE))
    pf = book(X=(1.0, 50_000.0))
    price, seen, expected, state = 50_000.0, [], [], False
    for day in range(120):
        ts = T0 + day * DAY_MS
        pf.advance(ts)
        events, _ = eng.assess(pf, mv(ts, vols={"X": TINY_VOL}))
        sharpe = pf.sharpe(30)  # checked against numpy in test_portfolio
        seen += [(day, e.level, e.value) for e in events if e.kind == "defensive"]
        if (sharpe is not None and sharpe < 0.5) != state:
            state = not state
            expected.append((day, int(state), pytest.approx(sharpe)))
        # losing first, winning from day 60
        price *= (0.99 if day % 2 else 1.005) if day < 60 else (1.01 if day % 2 else 0.999)
        pf.mark("X", price)
    assert seen == expected
    assert [x[:2] for x in seen[:2]] == [(30, 1), (72, 0)]  # on with the 30th daily return


# -- kill switch ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "price", "value", "retrips"),
    [
        ("drawdown", 34_000.0, 0.16, True),
        ("daily_loss", 46_500.0, 0.035, False),
        ("weekly_loss", 44_500.0, 0.055, False),
        ("monthly_loss", 41_500.0, 0.085, False),
    ],
)
def test_kill_switch_flattens_then_pauses_until_resume(trigger, price, value, retrips):
    only = {k: v for k, v in NO_KILL.items() if k != f"kill_{trigger}"}
    eng = RiskEngine(RiskSettings(**only, **NO_DEFENSIVE))
    pf = book(X=(1.0, 50_000.0))
    pf.advance(T0)
    assert eng.assess(pf, mv(T0, vols={"X": TINY_VOL}))[0] == []
    pf.mark("X", price)
    events, actions = eng.assess(pf, mv(T0 + 1, vols={"X": TINY_VOL}))
    assert kinds(events) == [("kill_switch", 3, "flatten"), ("mode", 3, "emergency")]
    limit = getattr(eng.settings, f"kill_{trigger}")
    assert (events[0].value, events[0].threshold) == (pytest.approx(value), limit)
    assert trigger in events[0].message and "normal -> emergency" in events[1].message
    assert actions.flatten and not actions.entries_allowed and actions.orders_allowed
    assert eng.check_order(entry("Y", qty=0.01, price=100.0), pf, mv(T0 + 1))[0] == 0.0
    assert eng.check_order(entry("X", SELL, 1.0, price), pf, mv(T0 + 1)) == (1.0, [])  # closing is fine
    events, actions = eng.assess(pf, mv(T0 + 2, vols={"X": TINY_VOL}))  # not flat yet: still flattening
    assert events == [] and actions.flatten
    flatten(pf)
    events, actions = eng.assess(pf, mv(T0 + 3))
    assert kinds(events) == [("mode", 2, "pause")]
    assert not actions.flatten and not actions.entries_allowed
    later = ms(2024, 5, 2)  # next day, week and month
    pf.advance(later)
    assert eng.assess(pf, mv(later))[0] == []  # paused until resumed, even with no condition left
    _, denied = eng.check_order(entry("Y", qty=0.01, price=100.0), pf, mv(later))
    assert denied[0].message == "mode pause: no new entries"
    events = eng.control(later, "resume", "checked by ops")
    assert kinds(events) == [("control", 0, "resume"), ("mode", 0, "normal")]
    assert events[0].message == "resume: checked by ops"
    events, actions = eng.assess(pf, mv(later + 1))
    if retrips:  # the drawdown is still 16%: the kill switch trips again
        assert kinds(events) == [("kill_switch", 3, "flatten"), ("mode", 3, "emergency")]
    else:
        assert events == [] and actions.entries_allowed


def test_a_crash_trips_every_kill_condition_at_once():
    eng = RiskEngine()
    pf = book(X=(1.0, 50_000.0))
    pf.advance(T0)
    pf.mark("X", 30_000.0)  # -20%
    events, _ = eng.assess(pf, mv(T0, vols={"X": TINY_VOL}))
    assert [e.kind for e in events] == ["kill_switch", "defensive", "defensive", "mode"]
    msg = events[0].message
    assert "drawdown 0.200000 > 0.150000" in msg
    assert all(n in msg for n in ("daily_loss", "weekly_loss", "monthly_loss"))
    assert [e.message.split()[0] for e in events[1:3]] == ["drawdown", "weekly_loss"]


def test_error_trips_the_kill_switch():
    eng = RiskEngine()
    pf = book()
    events = eng.on_error(T0, "exchange feed lost")
    assert kinds(events) == [("kill_switch", 3, "flatten"), ("mode", 3, "emergency")]
    assert "unrecoverable error: exchange feed lost" in events[0].message
    assert kinds(eng.assess(pf, mv(T0 + 1))[0]) == [("mode", 2, "pause")]
    assert kinds(eng.control(T0 + 2, "resume", "fixed")) == [("control", 0, "resume"), ("mode", 0, "normal")]
    assert eng.assess(pf, mv(T0 + 3)) == ([], PERMISSIVE)


def test_operator_pause_flatten_and_unknown_command():
    eng = RiskEngine()
    pf = book(X=(0.2, 50_000.0))
    m = mv(T0, vols={"X": TINY_VOL})
    assert kinds(eng.control(T0, "pause", "maintenance")) == [("control", 0, "pause"), ("mode", 2, "pause")]
    assert eng.check_order(entry("Y", qty=0.1, price=10.0), pf, m)[0] == 0.0
    assert eng.check_order(entry("X", SELL, 0.1, 50_000.0), pf, m) == (0.1, [])
    events = eng.control(T0 + 1, "flatten", "risk desk")
    assert kinds(events) == [("control", 0, "flatten"), ("mode", 3, "emergency")]
    assert eng.assess(pf, m)[1].flatten
    flatten(pf)
    events, actions = eng.assess(pf, mv(T0 + 2))
    assert kinds(events) == [("mode", 2, "pause")] and "operator pause: maintenance" in events[0].message
    assert kinds(eng.control(T0 + 3, "halt", "?")) == [("control", 1, "reject")]
    assert kinds(eng.control(T0 + 3, "resume", "done")) == [("control", 0, "resume"), ("mode", 0, "normal")]


def test_kill_switch_still_flattens_an_operator_paused_book():
    eng, pf = RiskEngine(), book(X=(1.0, 50_000.0))
    eng.control(T0, "pause", "ops")
    pf.mark("X", 30_000.0)
    events, actions = eng.assess(pf, mv(T0 + 1, vols={"X": TINY_VOL}))
    assert [e.kind for e in events][0::3] == ["kill_switch", "mode"] and actions.flatten
    assert events[-1].message.startswith("pause -> emergency: kill switch: drawdown")


# -- stale data ----------------------------------------------------------------------


def test_stale_symbols_block_entries_and_all_stale_is_observation():
    eng = RiskEngine()
    pf = book(X=(0.05, 50_000.0))
    vols = {"X": TINY_VOL}
    m = mv(T0 + 299_999, vols=vols, last={"X": T0 + 200_000, "Y": T0})
    assert eng.assess(pf, m)[0] == []
    m = mv(T0 + 300_000, vols=vols, last={"X": T0 + 200_000, "Y": T0})
    events, actions = eng.assess(pf, m)
    assert kinds(events) == [("stale_data", 1, "block_entries")]
    assert (events[0].symbol, events[0].value, events[0].threshold) == ("Y", 300_000.0, 300_000.0)
    assert actions.blocked_symbols == frozenset({"Y"}) and actions.entries_allowed
    qty, denied = eng.check_order(entry("Y", qty=1.0, price=10.0), pf, m)
    assert qty == 0.0 and denied[0].message == "Y is stale: no entries"
    assert eng.check_order(entry("X", qty=0.01), pf, m) == (0.01, [])
    m = mv(T0 + 500_000, vols=vols, last={"X": T0 + 200_000, "Y": T0})
    events, actions = eng.assess(pf, m)
    assert kinds(events) == [("stale_data", 1, "block_entries"), ("mode", 1, "observation")]
    assert not actions.orders_allowed and not actions.entries_allowed
    assert eng.check_order(entry("X", qty=0.01), pf, m)[0] == 0.0
    assert eng.check_order(entry("X", SELL, 0.05), pf, m) == (0.05, [])  # protective exits pass
    m = mv(T0 + 510_000, vols=vols, last={"X": T0 + 510_000, "Y": T0})
    events, actions = eng.assess(pf, m)
    assert kinds(events) == [("stale_data", 0, "clear"), ("mode", 0, "normal")]
    assert events[0].symbol == "X" and actions.blocked_symbols == frozenset({"Y"})


# -- pre-trade checks ---------------------------------------------------------------


def test_position_limit_reduces_or_denies():
    eng, pf = RiskEngine(), book()
    qty, events = eng.check_order(entry(qty=1.0), pf, mv(T0))
    assert qty == pytest.approx(0.4)
    assert kinds(events) == [("pre_trade", 1, "reduce")]
    assert (events[0].value, events[0].threshold) == (pytest.approx(0.5), 0.2)
    full = book(X=(0.4, 50_000.0))
    qty, events = eng.check_order(entry(qty=0.1), full, mv(T0))
    assert qty == 0.0 and kinds(events) == [("pre_trade", 2, "deny")]


def test_flip_keeps_the_closing_part_and_caps_the_new_side():
    eng, pf = RiskEngine(), book(X=(0.1, 50_000.0))
    qty, events = eng.check_order(entry(side=SELL, qty=1.0), pf, mv(T0))
    assert qty == pytest.approx(0.1 + 0.4)  # close 0.1, open 0.4 short (20% of 100k)
    assert [e.action for e in events] == ["reduce"]


def test_leverage_limit():
    eng = RiskEngine(RiskSettings(max_position_share=1.0))
    pf = book(Y=(-2.8, 100_000.0))  # short 280k on 100k equity
    qty, events = eng.check_order(entry(side=SELL, qty=0.5, price=100_000.0), pf, mv(T0))
    assert qty == pytest.approx(0.2)
    assert events[0].message == "gross leverage 3.300000 > 3.000000"


def test_notional_cap():
    eng = RiskEngine(RiskSettings(max_position_share=1.0))
    pf = book(cash=1_000_000.0)
    qty, events = eng.check_order(entry(qty=3.0, price=100_000.0), pf, mv(T0))
    assert qty == pytest.approx(2.5)
    assert (events[0].value, events[0].threshold) == (pytest.approx(300_000.0), 250_000.0)


def test_cash_floor_binds_buys_but_not_sells_or_closing():
    eng = RiskEngine(RiskSettings(max_position_share=1.0))
    pf = book(Y=(0.85, 100_000.0))  # cash 15k of equity 100k
    qty, events = eng.check_order(entry(qty=1.0, price=10_000.0), pf, mv(T0))
    assert qty == pytest.approx(5_000.0 / (10_000.0 * 1.001))
    assert "cash after the order" in events[0].message and events[0].threshold == 0.1
    assert eng.check_order(entry(side=SELL, qty=0.5, price=10_000.0), pf, mv(T0)) == (0.5, [])
    short = book(cash=100_000.0, Y=(-0.5, 100_000.0))
    short.cash = 5_000.0  # below the floor already; buying the short back is still allowed
    assert eng.check_order(entry("Y", BUY, 0.5, 100_000.0), short, mv(T0)) == (0.5, [])


@pytest.mark.parametrize(
    ("rho", "held", "side", "reduced"),
    [(0.8, 1.0, BUY, True), (0.8, 1.0, SELL, False), (-0.8, 1.0, SELL, True), (0.6, 1.0, BUY, False)],
)
def test_correlated_entries_are_halved(rho, held, side, reduced):
    eng, pf = RiskEngine(), book(Y=(held * 0.1, 100_000.0))
    qty, events = eng.check_order(entry(side=side, qty=0.1), pf, mv(T0, corr=lambda a, b: rho))
    assert qty == pytest.approx(0.05 if reduced else 0.1)
    assert kinds(events) == ([("pre_trade", 1, "reduce")] if reduced else [])
    if reduced:
        assert (events[0].value, events[0].threshold) == (pytest.approx(0.8), 0.7)


def test_unknown_correlation_counts_as_missing_corr():
    eng, pf = RiskEngine(), book(Y=(0.1, 100_000.0))
    assert eng.check_order(entry(qty=0.1), pf, mv(T0, corr=lambda a, b: None))[0] == pytest.approx(0.05)


def test_order_rate_limit_in_event_time():
    eng, pf = RiskEngine(), book(X=(0.01, 50_000.0))
    for i in range(30):
        assert eng.check_order(entry("Y", qty=0.001, price=100.0), pf, mv(T0 + i * 1000))[0] == 0.001
    qty, events = eng.check_order(entry("Y", qty=0.001, price=100.0), pf, mv(T0 + 59_999))
    assert qty == 0.0 and events[0].message == "order rate 30 per minute >= 30"
    assert eng.check_order(entry("X", SELL, 0.005), pf, mv(T0 + 59_999)) == (0.005, [])  # closing: exempt
    risk = entry("Y", qty=0.001, price=100.0, strategy="risk")
    assert eng.check_order(risk, pf, mv(T0 + 59_999)) == (0.001, [])
    assert eng.check_order(entry("Y", qty=0.001, price=100.0), pf, mv(T0 + 60_000))[0] == 0.001


def test_reduce_only_is_clipped_to_the_position():
    eng, pf = RiskEngine(), book(X=(0.1, 50_000.0))
    qty, events = eng.check_order(entry(side=SELL, qty=0.3, reduces_only=True), pf, mv(T0))
    assert qty == pytest.approx(0.1) and kinds(events) == [("pre_trade", 1, "reduce")]
    qty, events = eng.check_order(entry(side=BUY, qty=0.3, reduces_only=True), pf, mv(T0))
    assert qty == 0.0 and kinds(events) == [("pre_trade", 2, "deny")]


@pytest.mark.parametrize(
    "intent",
    [entry(qty=0.0), entry(qty=math.nan), entry(price=-1.0), entry(side="hold"), entry(qty=math.inf)],
)
def test_invalid_orders_are_denied_not_raised(intent):
    qty, events = RiskEngine().check_order(intent, book(), mv(T0))
    assert qty == 0.0 and kinds(events) == [("pre_trade", 2, "deny")]


def test_no_new_exposure_without_equity():
    pf = book(cash=1_000.0, X=(1.0, 2_000.0))
    pf.mark("X", 900.0)  # equity -100
    qty, events = RiskEngine().check_order(entry("Y", qty=1.0, price=1.0), pf, mv(T0))
    assert qty == 0.0 and "equity" in events[0].message


# -- switched off, determinism, pickling -----------------------------------------------


def test_disabled_engine_approves_everything_and_never_trips():
    eng = RiskEngine(RiskSettings(enabled=False))
    pf = book(X=(1.0, 50_000.0))
    pf.advance(T0)
    pf.mark("X", 10_000.0)
    m = mv(T0, vols={"X": 0.5}, ents={"X": 1.0}, last={"X": 0})
    assert eng.assess(pf, m) == ([], PERMISSIVE)
    assert eng.check_order(entry(qty=1_000.0, price=1e6), pf, m) == (1_000.0, [])
    assert eng.on_error(T0, "boom") == []
    assert kinds(eng.control(T0, "pause", "x")) == [("control", 0, "pause")]
    assert eng.mode == "normal" and eng.assess(pf, m) == ([], PERMISSIVE)


def _scenario(eng: RiskEngine) -> list:
    pf = book(X=(1.0, 50_000.0), Y=(-2.0, 1_000.0))
    out = []
    for i in range(40):
        ts = T0 + i * 60_000
        pf.advance(ts)
        pf.mark("X", 50_000.0 * (1 - 0.005 * i))
        vols = {"X": 0.001 * (1 + i / 10), "Y": 0.002}
        out.append(eng.assess(pf, mv(ts, vols=vols, ents={"X": 0.7, "Y": 0.3}, last={"X": ts, "Y": T0})))
        out.append(eng.check_order(entry("Z", qty=0.1, price=1_000.0), pf, mv(ts)))
        if i == 20:
            out.append(eng.control(ts, "resume", "go"))
    return out


def test_events_are_deterministic_and_the_engine_pickles():
    first, second = _scenario(RiskEngine()), _scenario(RiskEngine())
    assert first == second
    assert any(isinstance(x[1], RiskActions) and x[0] for x in first)
    eng = RiskEngine()
    pf = book(X=(2.0, 100_000.0))
    eng.assess(pf, mv(T0, vols={"X": 1e-5}))
    clone = pickle.loads(pickle.dumps(eng))
    for e in (eng, clone):
        e.assess(pf, mv(T0 + 1, vols={"X": 1.3e-5}))
    assert clone.vol_ref == eng.vol_ref and clone.dlri_level == eng.dlri_level == 1
    assert clone.__dict__.keys() == eng.__dict__.keys()


def test_hysteresis_level_steps_down_one_exit_at_a_time():
    th = (1.0, 2.0, 3.0)
    assert hysteresis_level(3, 2.5, th, 0.2) == 3
    assert hysteresis_level(3, 2.3, th, 0.2) == 2
    assert hysteresis_level(3, 0.5, th, 0.2) == 0
    assert hysteresis_level(0, 3.5, th, 0.2) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_leverage": 0.0},
        {"hysteresis": 1.0},
        {"breaker_levels": (0.02, 0.015, 0.03)},
        {"dlri_levels": (0.8,)},
        {"safe_leverage": 4.0},
        {"corr_reduce": 1.5},
        {"max_order_notional": math.nan},
    ],
)
def test_settings_are_validated(kwargs):
    with pytest.raises(ValueError, match="RiskSettings"):
        RiskSettings(**kwargs)


def test_safe_leverage_defaults_to_half_the_max():
    assert RiskSettings(max_leverage=4.0).safe_leverage == 2.0


# -- property: approved quantities keep every limit ------------------------------------

SYMS = ("A", "B", "C", "D")
position = st.tuples(
    st.sampled_from(SYMS),
    st.floats(-50, 50).filter(lambda q: abs(q) > 1e-6),
    st.floats(1.0, 10_000.0),
    st.floats(0.5, 2.0),
)


@settings(max_examples=400, deadline=None)
@example(  # CI found it: the reducing and opening parts summed one ulp above the order
    cash=2563.0, positions=[("B", 1.4475432569904, 1.0, 1.0)], sym="B", side=SELL,
    qty=513.9614514738788, price=1.0, rho=None, reduces_only=False, max_leverage=1.0,
)  # fmt: skip
@given(
    cash=st.floats(1_000.0, 1_000_000.0),
    positions=st.lists(position, max_size=4, unique_by=lambda p: p[0]),
    sym=st.sampled_from((*SYMS, "E")),
    side=st.sampled_from((BUY, SELL)),
    qty=st.floats(1e-4, 1_000.0),
    price=st.floats(1.0, 20_000.0),
    rho=st.one_of(st.none(), st.floats(-1.0, 1.0)),
    reduces_only=st.booleans(),
    max_leverage=st.floats(0.5, 5.0),
)
def test_approved_quantity_never_breaks_a_limit(
    cash, positions, sym, side, qty, price, rho, reduces_only, max_leverage
):
    pf = book(cash=cash)
    for s, q, p, move in positions:
        trade(pf, s, q, p)
        pf.mark(s, p * move)
    rs = RiskSettings(max_leverage=max_leverage)
    eng = RiskEngine(rs)
    intent = OrderIntent(sym, side, qty, price, "entry", "s", reduces_only)
    approved, events = eng.check_order(intent, pf, mv(T0, corr=lambda a, b: rho))
    assert 0.0 <= approved <= qty
    assert (approved < qty) == bool(events)
    sign = 1.0 if side == BUY else -1.0
    before = pf.position(sym)
    closing = min(qty, abs(before)) if before * sign < 0 else 0.0
    assert approved >= closing  # reducing is always approved
    if approved == 0.0:
        return
    after = copy.deepcopy(pf)
    after.mark(sym, price)  # limits are checked at the order price
    cash_before = after.cash
    after.apply_fill(Fill(T0, "o", sym, side, approved, price, 0.0, 0.0))
    if approved - closing <= 1e-9 * max(1.0, qty):  # only reduces
        assert abs(after.position(sym)) <= abs(before) + 1e-9
        return
    assert not reduces_only
    equity, tol = after.equity(), 1e-9
    assert abs(after.value(sym)) <= rs.max_position_share * equity * (1 + tol)
    assert after.gross_exposure() <= max_leverage * equity * (1 + tol)
    assert approved * price <= rs.max_order_notional * (1 + tol)
    if side == BUY:
        buffer = approved * price * rs.cost_buffer_bps / 10_000.0
        assert after.cash - buffer >= rs.min_cash_share * equity - tol * equity
    else:
        assert after.cash >= cash_before
