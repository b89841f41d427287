"""The decision levels: each acts at its cadence, and no level exceeds what the one above allowed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from operators.risk.settings import RiskSettings
from operators.signals.levels import DAY_MS, Levels, LevelsSettings, sharpe_drawdown
from operators.signals.regime import RegimeSettings
from operators.trading_loop import TradingLoop, TradingSettings
from schemas.records import Bar, Feature

D = 60_000
T0 = 1_620_000_000_000 // DAY_MS * DAY_MS  # a midnight: the first step opens the first day
SYMBOLS = ("A/USDT", "B/USDT", "C/USDT")
HOUR_MS = 3_600_000


# -- the operator -----------------------------------------------------------------------------


def test_sharpe_and_drawdown_equal_a_numpy_recomputation():
    rng = np.random.default_rng(5)
    daily = list(rng.normal(0.001, 0.02, 40))
    sharpe, dd = sharpe_drawdown(daily)
    x = np.array(daily)
    curve = np.concatenate([[0.0], np.cumsum(x)])
    assert math.isclose(sharpe, x.mean() / x.std(ddof=1), rel_tol=1e-12)
    assert math.isclose(dd, 1 - math.exp(curve[-1] - curve.max()), rel_tol=1e-12, abs_tol=1e-15)


def test_meta_shares_follow_sharpe_times_drawdown_room_and_drift_cuts_them():
    lv = Levels(LevelsSettings(meta_min_days=3, meta_max_drawdown=0.1, drift_cut=0.5), ("a", "b", "c"), 0.2)
    days = {"a": [0.01, 0.02, 0.015, 0.01], "b": [0.01, -0.02, 0.03, 0.005], "c": [-0.01, -0.01, 0.0, -0.02]}
    for day in range(4):
        for name, rets in days.items():
            lv.record(name, "X", T0 + day * DAY_MS, rets[day], direction=1)
            lv.record(name, "Y", T0 + day * DAY_MS, 0.0, direction=1 if name == "b" else 0)
    lv.on_drift("Y")  # b held Y: half of its symbols drifted
    got = {u.strategy: u for u in lv.meta(T0 + 4 * DAY_MS)}
    raw = {}
    for name, rets in days.items():
        sharpe, dd = sharpe_drawdown(rets)
        raw[name] = max(0.0, sharpe) * max(0.0, 1 - dd / 0.1)
    raw["b"] *= 1 - 0.5 * 0.5
    total = sum(raw.values())
    for name in days:
        assert math.isclose(got[name].share, raw[name] / total, rel_tol=1e-12)
        assert got[name].factor == min(1.0, 3 * raw[name] / total)
        assert got[name].days == 4 and got[name].reason == "track"
    assert got["b"].drift == 0.5 and got["a"].drift == 0.0
    # factors only ever take weight away
    weights = {"a": 0.2, "b": 0.5, "c": 0.3}
    after = lv.weights(weights)
    assert all(after[n] <= weights[n] for n in weights) and after["c"] == 0.0


def test_meta_gives_equal_shares_while_warming_up():
    lv = Levels(LevelsSettings(meta_min_days=5), ("a", "b"), 0.2)
    lv.record("a", "X", T0, 0.05)
    ups = lv.meta(T0 + DAY_MS)
    assert [(u.share, u.factor, u.reason) for u in ups] == [(0.5, 1.0, "warming up")] * 2


def test_the_strategy_level_caps_each_symbol_below_the_hard_limit_and_filters_the_universe():
    s = LevelsSettings(universe_size=2, min_quote_volume=1_000.0, high_vol_exposure=0.5, crisis_exposure=0.0)
    lv = Levels(s, ("a",), max_position_share=0.2)
    assert lv.cap("A") == 0.2  # before any L3 decision: the hard limit
    for symbol, volume in {"A": 5_000.0, "B": 3_000.0, "C": 2_000.0, "D": 500.0}.items():
        lv.traded(symbol, volume)
    lv.traded("E", 900.0)
    targets = {
        t.symbol: t for t in lv.strategy(T0, {"A": "trend_up", "B": "high_vol", "C": "range", "E": None})
    }
    assert {k: (t.in_universe, t.max_exposure) for k, t in targets.items()} == {
        "A": (1, 0.2),
        "B": (1, 0.1),
        "C": (0, 0.0),
        "E": (0, 0.0),
    }
    assert targets["C"].reason == "outside the universe" and targets["B"].reason == "regime high_vol"
    assert all(lv.cap(k) <= 0.2 for k in "ABCE")
    crisis = Levels(LevelsSettings(), ("a",), 0.2)
    crisis.strategy(T0, {"A": "crisis"})
    assert crisis.cap("A") == 0.0
    assert Levels(LevelsSettings(enabled=False), ("a",), 0.2).cap("A") == math.inf


@pytest.mark.parametrize(("level", "every"), [("meta", DAY_MS), ("strategy", HOUR_MS), ("tactical", 300_000)])
def test_a_level_is_due_at_the_first_step_of_each_of_its_windows(level, every):
    lv = Levels(LevelsSettings(), ("a",), 0.2)
    closes = [T0 + k * D for k in range(1, 3 * every // D + 1)]
    due = [ts for ts in closes if lv.due(level, ts)]
    assert due == [T0 + D] + [T0 + i * every for i in (1, 2, 3)]
    assert all(Levels(LevelsSettings(enabled=False), ("a",), 0.2).due(level, ts) for ts in closes[:5])


# -- the loop ---------------------------------------------------------------------------------


def _market(days: int, volume: dict[str, float] | None = None):
    """1-minute bars of three symbols trending up and down over hours (a sine), with their features."""
    for k in range(days * 1440):
        ts = T0 + k * D
        rows = []
        for j, s in enumerate(SYMBOLS):
            price = 100.0 * (1 + j) * math.exp(0.05 * math.sin(k / 180 + j) + 0.002 * math.sin(k * 1.7))
            vol = (volume or {}).get(s, 1000.0)
            bar = Bar(s, ts, price, price * 1.0005, price * 0.9995, price, vol, price, 10, 60)
            rows.append((s, bar, Feature(s, ts, 0.0, 0.002, 0.6, 0.003, 0.004, 0.003, 0, interval=60)))
        yield k, rows


def _run(loop: TradingLoop, days: int, volume=None) -> dict[str, list]:
    out: dict[str, list] = {}
    for k, rows in _market(days, volume):
        for s, bar, feat in rows:
            loop.add(s, [bar], [feat])
        for table, records in loop.advance(T0 // D + k):
            out.setdefault(table, []).extend(records)
    return out


def _loop(**levels) -> TradingLoop:
    risk = RiskSettings(enabled=False)  # the levels alone: no breaker gets in the way
    return TradingLoop(
        TradingSettings(bar_interval_ms=D, risk=risk, cost_gate=False, levels=LevelsSettings(**levels))
    )


def test_each_level_acts_at_its_own_cadence():
    """Two days of 1-minute bars with the default cadences: L4 decides at the first step of each
    day, L3 at the first step of each hour, L2 sends orders only at the first step of each 5
    minutes, while L1 runs every bar (the book is marked at every step)."""
    out = _run(_loop(), days=2)
    meta_ts = sorted({u.ts for u in out["strategy_updates"]})
    assert meta_ts == [T0 + D, T0 + DAY_MS, T0 + 2 * DAY_MS]  # the last bar closes at midnight
    assert {u.strategy for u in out["strategy_updates"]} == {"entropy_scalping", "trend_following",
                                                             "mean_reversion", "breakout"}  # fmt: skip
    target_ts = sorted({t.ts for t in out["targets"]})
    assert target_ts == [T0 + D] + [T0 + h * HOUR_MS for h in range(1, 49)]
    assert {t.symbol for t in out["targets"] if t.ts == T0 + HOUR_MS} == set(SYMBOLS)
    entries = [o for o in out["orders"] if o.strategy not in ("risk", "")]
    assert entries, "the strategies traded"
    assert all(o.ts % 300_000 == 0 or o.ts == T0 + D for o in entries)
    assert len(out["portfolio"]) == 2 * 1440  # L1 and the book: every finest step
    composites = [s for s in out["signals"] if s.strategy == "composite"]
    assert composites and all(s.ts % 300_000 == 0 or s.ts == T0 + D for s in composites)


def test_without_levels_every_bar_is_a_decision_and_nothing_is_recorded_for_l4_and_l3():
    out = _run(_loop(enabled=False), days=1)
    assert "strategy_updates" not in out and "targets" not in out
    composites = {s.ts for s in out["signals"] if s.strategy == "composite"}
    assert any(ts % 300_000 for ts in composites)


def test_a_lower_level_cannot_exceed_the_cap_of_the_level_above():
    """A universe of one (the most traded symbol): after the first L3 decision the other symbols
    get a cap of 0, so L2 never opens or keeps a position in them; the one in the universe stays
    within its cap (the hard per-symbol limit) at every tactical decision."""
    loop = _loop(universe_size=1)
    out = _run(loop, days=1, volume={"B/USDT": 50_000.0})
    caps = {(t.ts, t.symbol): t.max_exposure for t in out["targets"]}
    assert {s for (_, s), cap in caps.items() if cap > 0} == {"B/USDT"}
    others = [o for o in out["orders"] if o.symbol != "B/USDT" and o.strategy not in ("risk", "")]
    assert others == []
    fills_b = [f for f in out["fills"] if f.symbol == "B/USDT"]
    assert fills_b, "B traded"
    limit = loop.settings.risk.max_position_share
    for row in out["portfolio"]:
        assert row.gross_exposure <= limit * row.equity * 1.02  # price moves between decisions: a little over


def _run_with_hours(loop: TradingLoop, days: int, hourly_vol) -> dict[str, list]:
    """:func:`_run` with each hour's bar and feature row (interval 3600, volatility
    ``hourly_vol(hour)``) handed over with the last minute of that hour."""
    out: dict[str, list] = {}
    for k, rows in _market(days):
        for s, bar, feat in rows:
            coarse = []
            if k % 60 == 59:
                j = k // 60
                ts = T0 + j * HOUR_MS
                hour = Bar(s, ts, bar.close, bar.close, bar.close, bar.close, 60_000.0, bar.close, 600, 3600)
                coarse = [hour, Feature(s, ts, 0.0, hourly_vol(j), 0.6, 0.01, 0.01, 0.01, 0, interval=3600)]
            loop.add(s, [bar], [feat], coarse=coarse)
        for table, records in loop.advance(T0 // D + k):
            out.setdefault(table, []).extend(records)
    return out


def test_the_strategy_level_decides_on_the_regime_of_its_own_hourly_resolution():
    """The finest bars' volatility never moves (never high_vol there); the hourly rows' jumps
    five-fold from hour 10: from the L3 decision that sees that hour's bar, every symbol's target
    says high_vol with the high-volatility cap, and without the hourly rows none does."""
    regime = RegimeSettings(trend_window=2, ref_min_bars=2)
    risk = RiskSettings(enabled=False)
    settings = TradingSettings(bar_interval_ms=D, risk=risk, cost_gate=False, regime=regime)
    out = _run_with_hours(TradingLoop(settings), 1, lambda j: 0.01 if j < 10 else 0.05)
    high = {t.ts for t in out["targets"] if t.regime == "high_vol"}
    assert high == {T0 + h * HOUR_MS for h in range(11, 25)}
    cap = settings.levels.high_vol_exposure * risk.max_position_share
    assert all(t.max_exposure == pytest.approx(cap) for t in out["targets"] if t.ts in high)
    plain = _run(TradingLoop(settings), days=1)
    assert not [t for t in plain["targets"] if t.regime == "high_vol"]
