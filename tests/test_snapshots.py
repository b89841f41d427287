"""Snapshots hold state only: a resume binds today's settings, or refuses with the key and both values."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from flows.config import load_settings
from flows.snapshots import ResumeError, dump_state, load_state, settings_paths
from flows.steps import FEATURE_FIXED, FEATURE_KEYS, TRADING_FIXED, TRADING_KEYS, SymbolLogic
from flows.trading_settings import trading_settings
from operators.features.bar_builder import BarBuilder, BarSettings
from operators.features.bar_rollup import BarRollup
from operators.features.symbol_features import FeatureSettings, SymbolFeatures
from operators.trading_loop import TradingLoop
from schemas.records import Bar


def _reachable_settings(obj, seen=None) -> list:
    """Every frozen dataclass instance reachable from ``obj`` (through attributes and containers)."""
    seen = set() if seen is None else seen
    out = []
    stack = [obj]
    while stack:
        x = stack.pop()
        if id(x) in seen or isinstance(x, str | bytes | int | float | type) or x is None:
            continue
        seen.add(id(x))
        if dataclasses.is_dataclass(x) and x.__dataclass_params__.frozen:
            out.append(x)
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list | tuple | set | frozenset):
            stack.extend(x)
        else:
            stack.extend(getattr(x, "__dict__", {}).values())
            for cls in type(x).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if hasattr(x, name):
                        stack.append(getattr(x, name))
    return out


def _loop_settings(*overrides: str):
    return trading_settings(load_settings(None, ["features.bar_interval=60", *overrides], env={}))


def test_a_resumed_trading_loop_runs_on_todays_settings_everywhere():
    old = _loop_settings()
    loop = TradingLoop(old)
    for k in range(5):
        loop.add("BTC/USDT", [Bar("BTC/USDT", k * 60_000, 100.0, 101.0, 99.0, 100.5, 3.0, 100.2, 7)], [])
    loop.advance(3)
    data = dump_state(loop, {"trading": old})
    new = _loop_settings("execution.taker_fee_bps=0", "risk.ers_threshold=0.9")
    changes: list[str] = []
    resumed = load_state(data, {"trading": new}, TRADING_KEYS, report=changes.extend)
    assert resumed.settings is new
    assert resumed.broker.settings is new.broker and resumed.risk.settings is new.risk
    today = {id(s) for s in settings_paths({"trading": new}).values()}
    found = [s for s in _reachable_settings(resumed) if type(s).__name__.endswith("Settings")]
    stale = [s for s in found if id(s) not in today]
    assert len(found) >= 8, found  # the loop, broker, engine, sizer, weights, regimes, ATRs, strategies
    assert not stale, stale
    assert any(c.endswith("taker_fee_bps changed from 10.0 to 0.0") for c in changes), changes
    assert any("ers_threshold changed from 0.6 to 0.9" in c for c in changes), changes
    assert resumed.bars.keys() == loop.bars.keys() and resumed.done == loop.done


def test_a_changed_window_or_bar_interval_stops_the_resume_with_the_key_and_both_values():
    bars, feats = BarSettings(60_000), FeatureSettings(60_000, 30, 0.3)
    logic = SymbolLogic(bars, feats, None, keep_state=True)
    data = logic.snapshot()
    with pytest.raises(ResumeError, match=r"features\.window changed from 30 to 60"):
        load_state(data, {"bars": bars, "features": FeatureSettings(60_000, 60, 0.3)}, FEATURE_KEYS,
                   fixed=FEATURE_FIXED)  # fmt: skip
    with pytest.raises(ResumeError, match=r"features\.bar_interval \(in ms\) changed from 60000 to 1000"):
        load_state(
            data,
            {"bars": BarSettings(1000), "features": FeatureSettings(1000, 30, 0.3)},
            FEATURE_KEYS,
            fixed=FEATURE_FIXED,
        )
    # a setting that does not size saved state (the QVaR entropy coefficient) is applied
    lines: list[str] = []
    load_state(data, {"bars": bars, "features": FeatureSettings(60_000, 30, 0.5)}, FEATURE_KEYS, lines.extend)
    assert lines == ["features.qvar_entropy_coef changed from 0.3 to 0.5"]


def test_a_changed_strategy_lookback_stops_the_resume_naming_the_strategys_key():
    old = _loop_settings()
    data = dump_state(TradingLoop(old), {"trading": old})
    new = _loop_settings("strategies.entropy_scalping.lookback=5")
    with pytest.raises(ResumeError, match=r"strategies\.entropy_scalping\.lookback changed from 10 to 5"):
        load_state(data, {"trading": new}, TRADING_KEYS, fixed=TRADING_FIXED)
    lines: list[str] = []
    load_state(data, {"trading": _loop_settings("strategies.breakout.full_strength_sigmas=3")}, TRADING_KEYS,
               lines.extend, TRADING_FIXED)  # fmt: skip
    assert lines == ["strategies.breakout.full_strength_sigmas changed from 1.0 to 3.0"], lines


def test_the_end_of_a_bounded_read_saves_the_state_from_before_it_plus_late_normal_messages():
    """The grid's saved state skips what the end of the input made (``final``) but keeps a normal
    message that arrived after it (from another worker), so a resume carries on as if never stopped."""
    from flows.messages import SymbolProgress
    from flows.steps import GridLogic
    from operators.features.correlation_grid import CorrelationGrid, CorrelationSettings

    settings = CorrelationSettings(1000, 5, 2)

    def progress(symbol: str, k: int, final: bool = False) -> SymbolProgress:
        return SymbolProgress(symbol, [(k, 100.0 + k + (symbol == "B"))], k, ("A", "B"), None, final)

    logic = GridLogic(settings, None, keep_state=True)
    logic.on_batch([progress(s, k) for k in range(6) for s in ("A", "B")])
    logic.on_batch([progress("A", 6, final=True), progress("B", 6)])  # B's 6 came late, not from the end
    logic.on_eof()
    saved, coarse = load_state(logic.snapshot(), {"grid": settings, "coarse": ()}, FEATURE_KEYS)
    assert coarse == []
    want = CorrelationGrid(settings)
    for p in [progress(s, k) for k in range(6) for s in ("A", "B")] + [progress("B", 6)]:
        want.update(p.symbol, p.closes, p.closed_through, p.peers)
    assert pickle.dumps(saved) == pickle.dumps(want)
    assert pickle.dumps(saved) != pickle.dumps(logic.grid)  # the live grid took A's final bar too


def _market(*sets: str):
    from flows.pipeline import MarketSettings

    return MarketSettings.of(load_settings(None, list(sets), env={}))


def _ticks_logic(m, resume=None) -> SymbolLogic:
    return SymbolLogic(m.bars, m.features, resume, keep_state=True, coarse=m.coarse)


def test_a_resume_keeps_the_coarser_resolutions_or_refuses_a_change_of_them():
    """The bars step's and the grid's saved state hold every resolution's rollup, features and grid:
    a resume with other ``features.bar_intervals`` stops with both lists, one with another coarse
    window names that resolution's key, and a state saved before resolutions resumes without them."""
    from flows.messages import SymbolProgress
    from flows.steps import GridLogic

    m = _market("features.bar_intervals=60,300", "features.window=10")
    logic = _ticks_logic(m)
    bars = [Bar("X", k * 1000, 1.0, 1.0, 1.0, 1.0 + k / 1000, 1.0, 1.0, 1, 1) for k in range(130)]
    # the step's operators as its first tick batch makes them, fed finished bars straight away
    logic.symbol = "X"
    logic.bars = BarBuilder(m.bars, "X")
    logic.features = SymbolFeatures(m.features, "X")
    logic.rollups = [(BarRollup(r.rollup, "X"), SymbolFeatures(r.features, "X")) for r in m.coarse]
    out: list = []
    logic._emit(out, [], bars, ())
    coarse_bars = [
        r for o in out for rows in o.rows if rows.table == "bars" for r in rows.rows if r.interval == 60
    ]
    assert [b.ts for b in coarse_bars] == [0, 60_000]  # the third minute is still open
    data = logic.snapshot()

    resumed = _ticks_logic(m, data)
    assert [r.settings.interval_ms for r, _ in resumed.rollups] == [60_000, 300_000]
    assert resumed.rollups[0][0].window == 2
    with pytest.raises(
        ResumeError, match=r"features\.bar_intervals changed from \[1, 60, 300\] to \[1, 60\]"
    ):
        _ticks_logic(_market("features.bar_intervals=60", "features.window=10"), data)
    with pytest.raises(ResumeError, match=r"coarse\.60s\.features\.window changed from 10 to 20"):
        _ticks_logic(_market("features.bar_intervals=60,300", "features.window=10",
                             "features.interval_windows=10,20,10"), data)  # fmt: skip

    old = dump_state((logic.bars, logic.features), {"bars": m.bars, "features": m.features})
    plain = _market("features.window=10")
    assert _ticks_logic(plain, old).rollups == []  # saved before resolutions, resumed without any
    with pytest.raises(ResumeError, match=r"features\.bar_intervals changed from \[1\] to \[1, 60, 300\]"):
        _ticks_logic(m, old)

    grid = GridLogic(m.grid, None, keep_state=True, coarse=m.coarse)
    grid.on_batch(
        [SymbolProgress("X", [(k, 1.0 + k)], k, ("X",), None, False, (([], -1), ([], -1))) for k in range(3)]
    )
    assert len(GridLogic(m.grid, grid.snapshot(), coarse=m.coarse).grids) == 2
    with pytest.raises(ResumeError, match=r"features\.bar_intervals changed"):
        GridLogic(plain.grid, grid.snapshot())


def test_a_trading_loop_saved_by_an_older_qbtc_resumes_with_the_state_added_since_empty():
    """A loop pickled before several resolutions, decision levels and the cost gate (their
    attributes missing) resumes and steps on."""
    settings = _loop_settings()
    loop = TradingLoop(settings)
    bar = Bar("BTC/USDT", 0, 100.0, 101.0, 99.0, 100.5, 3.0, 100.2, 7)
    loop.add("BTC/USDT", [bar], [])
    loop.advance(0)
    for sym in loop.symbols.values():
        del sym.coarse, sym.volumes
    del loop.stats.orders_blocked_by_cost, loop.stats.cost_saved
    for name in ("informative", "levels", "throttled"):
        loop.__dict__.pop(name, None)
    old = pickle.loads(pickle.dumps(loop))
    assert old.levels is not None and old.informative == {} and old.stats.orders_blocked_by_cost == 0
    old.add("BTC/USDT", [Bar("BTC/USDT", 60_000, 100.5, 101.0, 99.0, 100.0, 3.0, 100.2, 7)], [])
    assert old.advance(1) and list(old.symbols.values())[0].coarse == {}
