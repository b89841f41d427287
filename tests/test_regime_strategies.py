"""ATR, regimes, strategies and strategy weights: constructed series with pinned
signals, and step-by-step oracles against plain numpy/pandas recomputation."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest

from operators.features.rolling_variance import RollingVariance
from operators.signals.atr import ATR, ATRSettings
from operators.signals.regime import RegimeClassifier, RegimeSettings
from operators.signals.strategies import (
    Breakout,
    BreakoutSettings,
    EntropyScalping,
    EntropyScalpingSettings,
    MeanReversion,
    MeanReversionSettings,
    RollingExtreme,
    StrategiesSettings,
    TrendFollowing,
    TrendFollowingSettings,
    default_strategies,
)
from operators.signals.strategy_weights import COMPOSITE, StrategyWeights, StrategyWeightsSettings, compose
from schemas.records import REGIMES, Bar, Feature, Signal

RTOL = 1e-9


def bar(t: int, close: float, high: float | None = None, low: float | None = None) -> Bar:
    high = close if high is None else high
    low = close if low is None else low
    return Bar("X", t * 1000, close, high, low, close, 1.0, close, 1)


def feat(t: int, vol: float = 0.01, entropy: float = 0.95) -> Feature:
    return Feature("X", t * 1000, 0.0, vol, entropy, 0.0, 0.0, 0.0, 0)


def ohlc(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    high = close * np.exp(np.abs(rng.normal(0.0, 0.005, n)))
    low = close * np.exp(-np.abs(rng.normal(0.0, 0.005, n)))
    return high, low, close


def bars_of(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> list[Bar]:
    return [
        bar(i, float(c), float(h), float(lo))
        for i, (h, lo, c) in enumerate(zip(high, low, close, strict=True))
    ]


def close_enough(got: float | None, want: float) -> bool:
    return got is not None and math.isclose(got, want, rel_tol=RTOL, abs_tol=1e-12)


# --------------------------------------------------------------------------- ATR


@pytest.mark.parametrize("period", [1, 3, 14])
def test_atr_matches_pandas_wilder(period: int) -> None:
    high, low, close = ohlc(period, 400)
    h, lo, c = pd.Series(high), pd.Series(low), pd.Series(close)
    prev = c.shift(1)
    tr = pd.concat([h - lo, (h - prev).abs(), (lo - prev).abs()], axis=1).max(axis=1)
    seeded = tr.iloc[period - 1 :].copy()
    seeded.iloc[0] = tr.iloc[:period].mean()
    want = seeded.ewm(alpha=1.0 / period, adjust=False).mean().to_numpy()
    atr = ATR(ATRSettings(period))
    for i, b in enumerate(bars_of(high, low, close)):
        got = atr.update(b)
        if i < period - 1:
            assert got is None
        else:
            assert close_enough(got, want[i - period + 1]), i
        if i == 200:
            atr = pickle.loads(pickle.dumps(atr))
    assert close_enough(atr.get(), want[-1])


def test_atr_settings_validated() -> None:
    with pytest.raises(ValueError, match="period"):
        ATRSettings(0)


# --------------------------------------------------------------------------- regime


def regime_series() -> tuple[list[float], list[float], list[float | None], list[str | None]]:
    """Flat, up 0.2%/bar, flat, down, flat; a vol spike with high correlation; hand-pinned regimes."""
    steps = [0.0] * 200
    for t in range(60, 90):
        steps[t] = 0.002
    for t in range(120, 150):
        steps[t] = -0.002
    closes = list(100.0 * np.exp(np.cumsum(steps)))
    vols = [0.001] * 200
    for t in (12, 13, 14):  # before the reference is warm: no high_vol call
        vols[t] = 0.005
    for t in range(170, 180):
        vols[t] = 0.002
    corr: list[float | None] = [None] * 200
    for t in range(100, 111):  # high correlation without high volatility: no crisis
        corr[t] = 0.9
    for t in range(170, 180):
        corr[t] = 0.9 if t >= 175 else 0.5
    # T = steps in window * 0.002 / (0.001 * sqrt 10): 3 steps 1.90, 4 steps 2.53
    want: list[str | None] = [None] * 10 + ["range"] * 190
    want[63:96] = ["trend_up"] * 33
    want[123:156] = ["trend_down"] * 33
    want[170:175] = ["high_vol"] * 5
    want[175:180] = ["crisis"] * 5
    return closes, vols, corr, want


REGIME_SETTINGS = RegimeSettings(trend_window=10, ref_min_bars=20)


def test_regime_pinned_on_constructed_series() -> None:
    closes, vols, corr, want = regime_series()
    rc = RegimeClassifier(REGIME_SETTINGS)
    got = [
        rc.update(bar(t, c), feat(t, v), k)
        for t, (c, v, k) in enumerate(zip(closes, vols, corr, strict=True))
    ]
    assert got == want
    assert set(got) - {None} <= set(REGIMES)


def test_regime_reference_warm_boundary() -> None:
    for spike, want in [(19, "range"), (20, "crisis")]:
        rc = RegimeClassifier(RegimeSettings(trend_window=1, ref_min_bars=20))
        out = [rc.update(bar(t, 100.0), feat(t, 0.005 if t == spike else 0.001), 0.95) for t in range(21)]
        assert out[spike] == want
        assert out[0] is None


def test_regime_none_without_feature_and_sigma_zero() -> None:
    rc = RegimeClassifier(RegimeSettings(trend_window=2, ref_min_bars=5))
    assert [rc.update(bar(t, 100.0), None, None) for t in range(5)] == [None] * 5
    assert rc.update(bar(5, 100.0), feat(5, 0.0), None) == "range"  # no move, sigma 0: score 0
    assert rc.update(bar(6, 101.0), feat(6, 0.0), None) == "trend_up"
    assert rc.trend_score == math.inf
    assert rc.update(bar(7, 101.0), None, 0.99) is None


def test_regime_matches_batch_recomputation() -> None:
    _, _, close = ohlc(7, 600)
    rng = np.random.default_rng(8)
    vols = 0.01 * np.exp(rng.normal(0.0, 0.4, 600))
    corr = rng.uniform(0.5, 1.0, 600)
    s = RegimeSettings(trend_window=20, ref_halflife_bars=50.0, ref_min_bars=30, trend_threshold=1.0)
    logs = np.log(close)
    score = np.full(600, np.nan)
    score[20:] = (logs[20:] - logs[:-20]) / (vols[20:] * math.sqrt(20))
    ref = pd.Series(vols).ewm(halflife=50.0, adjust=True).mean().shift(1).to_numpy().copy()
    ref[:30] = np.nan
    rc = RegimeClassifier(s)
    seen = set()
    for t in range(600):
        got = rc.update(bar(t, float(close[t])), feat(t, float(vols[t])), float(corr[t]))
        if t < 20:
            assert got is None
            continue
        assert close_enough(rc.trend_score, score[t])
        high = not np.isnan(ref[t]) and vols[t] > 1.5 * ref[t]
        if not np.isnan(ref[t]):
            assert close_enough(rc.reference_vol, ref[t])
        if high:
            want = "crisis" if corr[t] >= 0.8 else "high_vol"
        elif score[t] > 1.0:
            want = "trend_up"
        elif score[t] < -1.0:
            want = "trend_down"
        else:
            want = "range"
        assert got == want, t
        seen.add(got)
        if t == 300:
            rc = pickle.loads(pickle.dumps(rc))
    assert seen == set(REGIMES)


def test_regime_settings_validated() -> None:
    for bad in [{"high_vol_ratio": 0.0}, {"ref_min_bars": 0}, {"crisis_corr": 1.5}, {"trend_window": 0}]:
        with pytest.raises(ValueError):
            RegimeSettings(**bad)


# --------------------------------------------------------------------------- rolling helpers


def test_rolling_moments_and_extreme_match_numpy() -> None:
    rng = np.random.default_rng(3)
    xs = np.concatenate([rng.normal(5e4, 30.0, 3000), rng.choice([1e-12, 0.0, 1e6, -1e3], 2000)])
    m, hi, lo = RollingVariance(60), RollingExtreme(60, largest=True), RollingExtreme(60, largest=False)
    for i, x in enumerate(xs):
        m.update(float(x))
        hi.push(i, float(x))
        lo.push(i, float(x))
        win = xs[max(0, i - 59) : i + 1]
        assert m.n == len(win)
        assert math.isclose(m.mean(), float(np.mean(win)), rel_tol=RTOL, abs_tol=1e-9 * np.abs(win).max())
        if len(win) >= 2:
            want = float(np.var(win, ddof=1))
            assert math.isclose(m.var(), want, rel_tol=1e-7, abs_tol=1e-9 * float(np.max(win**2)))
        else:
            assert m.var() is None
        assert hi.get() == win.max() and lo.get() == win.min()


# --------------------------------------------------------------------------- strategies


def run(strategy, closes, feats, regime="range", highs=None, lows=None):
    out = []
    for t, c in enumerate(closes):
        h = None if highs is None else highs[t]
        lo = None if lows is None else lows[t]
        f = feats[t] if isinstance(feats, list) else feats
        g = regime[t] if isinstance(regime, list) else regime
        sig = strategy.update(t * 1000 + 999, bar(t, c, h, lo), f, g)
        out.append(None if sig is None else (sig.direction, sig.strength))
    return out


def approx_signals(got, want) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None:
            assert g is None, i
        else:
            assert g is not None and g[0] == w[0] and math.isclose(g[1], w[1], abs_tol=1e-12), (i, g, w)


def test_entropy_scalping_pinned() -> None:
    s = EntropyScalping(EntropyScalpingSettings(lookback=3))
    closes = [10, 11, 12, 13, 12, 11, 10, 10, 10, 11, 10]
    ents = [0.9, 0.9, 0.9, 0.8, 0.8, 0.9, 0.5, 0.7, 0.7, 0.7, 0.7]
    got = run(s, [float(c) for c in closes], [feat(t, 0.01, e) for t, e in enumerate(ents)])
    want = [
        None,
        None,
        None,
        (1, 0.2),
        (1, 0.2),
        (0, 0.0),
        (-1, 1.0),
        (-1, 0.6),
        (-1, 0.6),
        (1, 0.6),
        (0, 0.0),
    ]
    approx_signals(got, want)
    sig = s.update(99, bar(11, 5.0), feat(11, 0.01, 0.1), "high_vol")  # not its regime
    assert (sig.ts, sig.direction, sig.strength, sig.regime) == (99, 0, 0.0, "high_vol")
    assert s.update(100, bar(12, 5.0), feat(12), None) is None


def test_trend_following_pinned() -> None:
    s = TrendFollowing(TrendFollowingSettings(fast=1, slow=3))
    closes = [10.0, 10.0, 10.0, 11.0, 11.0, 11.0, 9.0]
    slow = [10.0, 10.0, 10.0, 10.5, 10.75, 10.875, 9.9375]  # alpha 0.5 by hand
    got = run(s, closes, feat(0, 0.05), "trend_up")
    want: list = [None, None, (0, 0.0)]
    for t in range(3, 7):
        gap = closes[t] - slow[t]
        want.append((1 if gap > 0 else -1, min(1.0, abs(gap) / (closes[t] * 0.05 * math.sqrt(3)))))
    approx_signals(got, want)


def test_trend_following_matches_pandas_ewm() -> None:
    _, _, close = ohlc(11, 500)
    fast = pd.Series(close).ewm(span=20, adjust=False).mean().to_numpy()
    slow = pd.Series(close).ewm(span=60, adjust=False).mean().to_numpy()
    s = TrendFollowing()
    vol = 0.01
    got = run(s, [float(c) for c in close], feat(0, vol), "trend_down")
    for t in range(500):
        if t < 59:
            assert got[t] is None
            continue
        gap = fast[t] - slow[t]
        assert got[t][0] == np.sign(gap)
        want = min(1.0, abs(gap) / (close[t] * vol * math.sqrt(60)))
        assert math.isclose(got[t][1], want, rel_tol=1e-6, abs_tol=1e-9)


def test_mean_reversion_pinned() -> None:
    s = MeanReversion(MeanReversionSettings(window=5, entry_z=1.5, exit_z=0.5))
    closes = [10.0] * 5 + [15.0, 15.0, 10.0]
    z5 = 4.0 / math.sqrt(5.0)  # (10, 10, 10, 10, 15): mean 11, std sqrt 5
    z6 = 3.0 / math.sqrt(7.5)  # (10, 10, 10, 15, 15): mean 12
    want = [None] * 4 + [(0, 0.0), (-1, 0.5 + 0.5 * (z5 - 1.5) / 1.5), (-1, 0.5 * (z6 - 0.5) / 1.0), (0, 0.0)]
    approx_signals(run(s, closes, None), want)


def reference_mean_reversion(close: np.ndarray, window: int, entry: float, exit_: float) -> list:
    roll = pd.Series(close).rolling(window)
    mean, std = roll.mean().to_numpy(), roll.std(ddof=1).to_numpy()
    out: list = []
    held = 0
    for t, c in enumerate(close):
        if t < window - 1:
            out.append(None)
            continue
        z = 0.0 if std[t] <= 1e-9 * abs(mean[t]) else (c - mean[t]) / std[t]
        if abs(z) > entry:
            held = -int(np.sign(z))
        elif not -held * z > exit_:
            held = 0
        if held == 0:
            out.append((0, 0.0))
        elif abs(z) <= entry:
            out.append((held, max(0.0, 0.5 * (abs(z) - exit_) / (entry - exit_))))
        else:
            out.append((held, min(1.0, 0.5 + 0.5 * (abs(z) - entry) / entry)))
    return out


def test_mean_reversion_matches_pandas_rolling() -> None:
    rng = np.random.default_rng(5)
    close = 100.0 + np.cumsum(rng.normal(0.0, 1.0, 3000)) * 0.1 + rng.normal(0.0, 0.5, 3000)
    got = run(MeanReversion(), [float(c) for c in close], None)
    want = reference_mean_reversion(close, 60, 2.0, 0.5)
    assert sum(1 for w in want if w and w[0]) > 50
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None:
            assert g is None
        else:
            assert g[0] == w[0] and math.isclose(g[1], w[1], abs_tol=1e-7), t


def test_mean_reversion_drops_position_out_of_regime() -> None:
    s = MeanReversion(MeanReversionSettings(window=5, entry_z=1.5, exit_z=0.5))
    regimes = ["range"] * 6 + ["trend_up", "range"]
    got = run(s, [10.0] * 5 + [15.0, 15.0, 15.0], None, regimes)
    assert got[5][0] == -1 and got[6] == (0, 0.0)
    assert got[7] == (0, 0.0)  # z = 0.73 in (exit, entry): no re-entry after standing aside


def test_breakout_pinned() -> None:
    s = Breakout(BreakoutSettings(window=5, exit_window=2))
    hlc = [(10.5, 9.5, 10.0)] * 6 + [
        (11.2, 10.4, 11.0),  # 6: above H = 10.5
        (11.0, 10.6, 10.8),  # 7: hold
        (10.8, 10.5, 10.6),  # 8: hold, exit low 10.4
        (10.6, 10.2, 10.3),  # 9: below exit low 10.5: flat
        (10.0, 9.0, 9.1),  # 10: below L = 9.5: short
    ]
    h, lo, c = zip(*hlc, strict=True)
    got = run(s, list(c), feat(0, 0.1), "high_vol", list(h), list(lo))
    up = math.log(11.0 / 10.5) / 0.1
    want = [None] * 5 + [(0, 0.0), (1, up), (1, up), (1, up), (0, 0.0), (-1, math.log(9.5 / 9.1) / 0.1)]
    approx_signals(got, want)
    assert s.channel() == (11.2, 9.0)


def test_breakout_matches_pandas_channels() -> None:
    high, low, close = ohlc(21, 3000)
    w, e, vol = 60, 30, 0.01
    hh = pd.Series(high).rolling(w).max().shift(1).to_numpy()
    ll = pd.Series(low).rolling(w).min().shift(1).to_numpy()
    eh = pd.Series(high).rolling(e).max().shift(1).to_numpy()
    el = pd.Series(low).rolling(e).min().shift(1).to_numpy()
    got = run(Breakout(), list(close), feat(0, vol), "trend_up", list(high), list(low))
    held, strength, n_entries = 0, 0.0, 0
    for t in range(3000):
        if t < w:
            assert got[t] is None
            continue
        if close[t] > hh[t] or close[t] < ll[t]:
            held = 1 if close[t] > hh[t] else -1
            size = math.log(close[t] / hh[t]) if held == 1 else math.log(ll[t] / close[t])
            strength = min(1.0, size / vol)
            n_entries += 1
        elif (held == 1 and close[t] < el[t]) or (held == -1 and close[t] > eh[t]):
            held, strength = 0, 0.0
        assert got[t][0] == held and math.isclose(got[t][1], strength, abs_tol=1e-12), t
    assert n_entries > 20


def test_strategies_pickle_round_trip_mid_stream() -> None:
    high, low, close = (list(map(float, a)) for a in ohlc(4, 400))
    regimes = [REGIMES[(t // 37) % 4] for t in range(400)]
    feats = [feat(t, 0.01, 0.5 + 0.5 * abs(math.sin(t / 9))) for t in range(400)]
    for make in (EntropyScalping, TrendFollowing, MeanReversion, Breakout):
        a = make()
        first = run(a, close[:200], feats[:200], regimes[:200], high[:200], low[:200])
        b = pickle.loads(pickle.dumps(a))
        rest = slice(200, 400)
        ra = run(a, close[rest], feats[rest], regimes[rest], high[rest], low[rest])
        rb = run(b, close[rest], feats[rest], regimes[rest], high[rest], low[rest])
        assert ra == rb and any(x and x[0] for x in first + ra), make.__name__


def test_default_strategies_and_settings() -> None:
    ss = default_strategies(StrategiesSettings(breakout=BreakoutSettings(window=10, exit_window=5)))
    assert [s.name for s in ss] == ["entropy_scalping", "trend_following", "mean_reversion", "breakout"]
    assert ss[3].settings.window == 10
    assert ss[2].regimes == frozenset({"range"})
    assert ss[3].regimes == frozenset({"trend_up", "trend_down", "high_vol"})
    bad = [
        lambda: EntropyScalpingSettings(entropy_threshold=0.5, entropy_full=0.6),
        lambda: TrendFollowingSettings(fast=60, slow=20),
        lambda: MeanReversionSettings(entry_z=0.5, exit_z=0.5),
        lambda: BreakoutSettings(window=10, exit_window=11),
        lambda: BreakoutSettings(regimes=frozenset({"sideways"})),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()


# --------------------------------------------------------------------------- strategy weights

NAMES = {"a": {"range", "trend_up"}, "b": {"range"}, "c": {"trend_up", "high_vol"}}


def test_weights_track_matches_numpy() -> None:
    rng = np.random.default_rng(9)
    sw = StrategyWeights(NAMES, StrategyWeightsSettings(window=50, min_obs=10))
    rets = rng.normal(0.0005, 0.01, 400)
    dirs = rng.choice([-1, 0, 1], 400)
    for i in range(400):
        sw.record("a", "X", int(dirs[i]), float(rets[i]))
        x = dirs[: i + 1] * rets[: i + 1]
        win = x[-50:]
        curve = np.concatenate([[0.0], np.cumsum(x)])[-51:]
        st = sw.stats("a", "X")
        assert st.n == len(win) and math.isclose(st.mean, win.mean(), rel_tol=1e-9, abs_tol=1e-15)
        if len(win) >= 2:
            assert math.isclose(st.var, win.var(ddof=1), rel_tol=1e-7)
            assert math.isclose(st.sharpe, win.mean() / win.std(ddof=1), rel_tol=1e-6, abs_tol=1e-12)
        assert math.isclose(st.drawdown, 1.0 - math.exp(curve[-1] - curve.max()), abs_tol=1e-12)
        assert sw.moments("a", "X") is None if i < 9 else sw.moments("a", "X")[1] == st.var
    assert sw.stats("b", "X") is None


def test_weights_normalise_and_zero_out_incompatible_regimes() -> None:
    sw = StrategyWeights(NAMES, StrategyWeightsSettings(window=20, min_obs=5))
    assert sw.weights("X", "range", 0) == {"a": 0.5, "b": 0.5, "c": 0.0}  # all cold: equal prior
    assert sw.weights("X", "crisis", 0) == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert sw.weights("X", None, 0) == {"a": 0.0, "b": 0.0, "c": 0.0}
    rets = [0.01, -0.005, 0.02, 0.0, 0.01, 0.015]
    for r in rets:
        sw.record("a", "X", 1, r)
        sw.record("b", "X", 1, r / 2 + 0.003)
        sw.record("c", "X", -1, r)
    a, b = np.array(rets), np.array(rets) / 2 + 0.003
    sa, sb = a.mean() / a.std(ddof=1), b.mean() / b.std(ddof=1)
    dd_a = 1.0 - math.exp(-0.005)  # the curve fell 0.005 from its peak once, and recovered
    assert sw.stats("a", "X").drawdown == 0.0
    w = sw.weights("X", "range", 0)
    assert math.isclose(sum(w.values()), 1.0) and w["c"] == 0.0
    assert math.isclose(w["a"], sa / (sa + sb)) and math.isclose(w["b"], sb / (sa + sb))
    assert sw.weights("X", "high_vol", 0) == {"a": 0.0, "b": 0.0, "c": 0.0}  # c loses: all zero
    assert 0 < dd_a < 0.2
    # a cold strategy gets the mean warm weight (prior_weight 1): d is new
    sw2 = StrategyWeights({**NAMES, "d": {"range"}}, StrategyWeightsSettings(window=20, min_obs=5))
    for r in rets:
        sw2.record("a", "X", 1, r)
        sw2.record("b", "X", 1, r / 2 + 0.003)
    w2 = sw2.weights("X", "range", 0)
    assert math.isclose(w2["d"], (sa + sb) / 2 / (1.5 * (sa + sb)))
    assert math.isclose(sum(w2.values()), 1.0)
    assert sw2.weights("Y", "range", 0) == {"a": 1 / 3, "b": 1 / 3, "c": 0.0, "d": 1 / 3}  # per symbol


def test_weights_drawdown_scales_and_cuts() -> None:
    s = StrategyWeightsSettings(window=10, min_obs=4, max_dd=0.2)
    sw = StrategyWeights({"a": {"range"}, "b": {"range"}}, s)
    for r in [0.2, 0.2, -0.1, 0.2]:
        sw.record("a", "X", 1, r)
        sw.record("b", "X", 1, r)
    sw.record("a", "X", 1, -math.log(1 / 0.9))  # a is 10% below its peak: factor 0.5
    sw.record("b", "X", 1, -math.log(1 / 0.75))  # b 25% below: factor 0
    st_a, st_b = sw.stats("a", "X"), sw.stats("b", "X")
    assert math.isclose(st_a.drawdown, 0.1) and math.isclose(st_b.drawdown, 0.25)
    assert sw.weights("X", "range", 0) == {"a": 1.0, "b": 0.0}


def test_weights_drift_penalty_and_recovery() -> None:
    s = StrategyWeightsSettings(window=10, min_obs=2, bar_interval_ms=1000, drift_settle_bars=60)
    sw = StrategyWeights({"a": {"range"}, "b": {"range"}}, s)
    for r in [0.01, 0.02, 0.015]:
        sw.record("a", "X", 1, r)
        sw.record("b", "X", 1, r)
    sw.record("a", "X", 1, 0.01)
    sw.record("b", "X", 0, 0.01)  # b is flat now: not penalised
    base = sw.weights("X", "range", 0)
    assert math.isclose(sum(base.values()), 1.0)
    sw.on_drift("X", 100_000)
    for dt, factor in [
        (-1000, 0.25),
        (0, 0.25),
        (30_000, 0.625),
        (45_000, 0.8125),
        (60_000, 1.0),
        (90_000, 1.0),
    ]:
        w = sw.weights("X", "range", 100_000 + dt)
        assert math.isclose(w["a"], base["a"] * factor) and w["b"] == base["b"], dt
    assert sw.weights("Y", "range", 100_000) == {"a": 0.5, "b": 0.5}  # other symbols untouched
    sw.on_drift("X", 130_000)  # a new flag restarts the recovery
    assert math.isclose(sw.weights("X", "range", 130_000)["a"], base["a"] * 0.25)
    assert sw.drift_factor("X", 160_000) == 0.625
    sw2 = pickle.loads(pickle.dumps(sw))
    assert sw2.weights("X", "range", 150_000) == sw.weights("X", "range", 150_000)


def test_weights_record_checks_and_composite_track() -> None:
    sw = StrategyWeights.for_strategies(default_strategies())
    assert set(sw.weights("X", "range", 0)) == {
        "entropy_scalping",
        "trend_following",
        "mean_reversion",
        "breakout",
    }
    sw.record(COMPOSITE, "X", 1, 0.01)
    assert sw.stats(COMPOSITE, "X").n == 1
    with pytest.raises(KeyError):
        sw.record("nope", "X", 1, 0.01)
    with pytest.raises(ValueError):
        sw.record("breakout", "X", 2, 0.01)
    with pytest.raises(ValueError):
        StrategyWeights({COMPOSITE: {"range"}})
    with pytest.raises(ValueError):
        StrategyWeightsSettings(min_obs=600)


def test_compose() -> None:
    sigs = [
        Signal(7, "X", "a", 1, 0.8, "range"),
        Signal(7, "X", "b", -1, 0.4, "range"),
        Signal(7, "X", "c", 1, 1.0, "range"),
    ]
    c = compose(7, "X", "range", sigs, {"a": 0.5, "b": 0.5})  # c missing: weight 0; 0.4 - 0.2
    assert (c.ts, c.symbol, c.strategy, c.direction, c.regime) == (7, "X", COMPOSITE, 1, "range")
    assert math.isclose(c.strength, 0.2)
    small = compose(7, "X", "range", sigs, {"a": 0.1, "b": 0.1})  # 0.04 < 0.1
    assert (small.direction, small.strength) == (0, 0.0)
    big = compose(7, "X", "range", sigs, {"a": 1.0, "c": 1.0})
    assert (big.direction, big.strength) == (1, 1.0)
    neg = StrategyWeights({"a": {"range"}}, StrategyWeightsSettings(min_score=0.05)).compose(
        7, "X", "range", sigs, {"b": 0.2}
    )
    assert neg.direction == -1 and math.isclose(neg.strength, 0.08)
    assert compose(7, "X", "range", [], {}).direction == 0
