"""SymbolFeatures' VaR forecasts (fvar95, fes95) and their backtest rows against batch recomputations.

The reference follows the wiring literally: the grid returns of a symbol (a
gap's zeros too, at most W of them per gap), each one counted against the
forecast made after the previous return, then fed to the model.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest

from operators.features.symbol_features import FeatureSettings, SymbolFeatures
from operators.risk.var_backtest import VarBacktestSettings
from operators.risk.var_models import VAR_MODELS, FhsSettings, HistoricalSettings, make_var_model
from schemas.records import Bar
from schemas.settings import SettingsError

D = 1000
W = 40
BACKTEST = VarBacktestSettings(window=200, min_forecasts=50, report_every=60)


def _bars(n: int = 1400, seed: int = 5, gaps: bool = True) -> list[Bar]:
    """A fat-tailed walk with volatility regimes; with ``gaps``, some grid steps have no bar
    (one gap longer than W)."""
    rng = np.random.default_rng(seed)
    sigma = np.where((np.arange(n) // 200) % 2 == 1, 3e-3, 1e-3)
    closes = 100.0 * np.exp(np.cumsum(rng.standard_t(4, n) * sigma))
    ks = np.arange(n)
    if gaps:
        ks = ks + np.cumsum(rng.random(n) < 0.03) * 2  # gaps of 2 steps
        ks[n // 2 :] += W + 7  # one gap longer than W
    return [
        Bar("X/USDT", int(k) * D, 0, 0, 0, float(c), 1, float(c), 1) for k, c in zip(ks, closes, strict=True)
    ]


def _grid_returns(bars: list[Bar]) -> tuple[list[float], list[int], dict[int, int]]:
    """The returns the model sees (gap zeros capped at W), each one's ts, and each bar's position."""
    rets, ts, at = [], [], {}
    for prev, bar in zip(bars, bars[1:], strict=False):
        k0, k = prev.ts // D, bar.ts // D
        m = min(k - k0 - 1, W)
        rets += [0.0] * m
        ts += [(k - m + i) * D for i in range(m)]
        rets.append(math.log(bar.close / prev.close))
        ts.append(bar.ts)
        at[bar.ts] = len(rets) - 1
    return rets, ts, at


def _run(model: str, bars: list[Bar]):
    sf = SymbolFeatures(FeatureSettings(D, W, var_model=model, var_backtest=BACKTEST), "X/USDT")
    feats = [f for f in map(sf.update, bars) if f is not None]
    return feats, sf.take_backtests()


def _fhs_oracle(rets: np.ndarray, s: FhsSettings) -> np.ndarray:
    """(VaR, ES) after each return, NaN until warm: pandas EWMA sigma (floored at a share of the slow
    one), numpy's quantile of the residuals."""
    r2 = pd.Series(rets**2)
    fast = r2.ewm(alpha=1.0 - s.decay, adjust=True).mean().to_numpy()  # including r_t
    slow = r2.ewm(alpha=1.0 - s.floor_decay, adjust=True).mean().to_numpy()
    var = np.maximum(fast, s.floor_share**2 * slow)
    out = np.full((len(rets), 2), np.nan)
    z = []
    for t, r in enumerate(rets):
        if t >= s.min_periods and var[t - 1] > 0:
            z.append(r / math.sqrt(var[t - 1]))
        if len(z) >= s.window:
            w = np.array(z[-s.window :])
            q = np.quantile(w, s.alpha, method=s.quantile_method)
            sigma = math.sqrt(var[t])
            out[t] = (-sigma * q, -sigma * w[w <= q].mean())
    return out


def _historical_oracle(rets: np.ndarray, s: HistoricalSettings) -> np.ndarray:
    out = np.full((len(rets), 2), np.nan)
    for t in range(s.window - 1, len(rets)):
        w = rets[t - s.window + 1 : t + 1]
        q = np.quantile(w, s.alpha)
        out[t] = (-q, -w[w <= q].mean())
    return out


@pytest.mark.parametrize(
    ("model", "oracle", "settings"),
    [("fhs", _fhs_oracle, FhsSettings()), ("historical", _historical_oracle, HistoricalSettings())],
)
def test_fvar95_equals_a_numpy_recomputation(model, oracle, settings):
    bars = _bars()
    feats, _ = _run(model, bars)
    rets, _ts, at = _grid_returns(bars)
    want = oracle(np.array(rets), settings)
    got = np.array([(f.fvar95, f.fes95) for f in feats])
    expected = np.array([want[at[f.ts]] for f in feats])
    assert np.isnan(got[:, 0]).sum() > 0 and (~np.isnan(got[:, 0])).sum() > 300  # warm-up, then forecasts
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("model", list(VAR_MODELS))
def test_every_model_forecasts_as_a_fresh_one_fed_the_same_returns(model):
    bars = _bars(seed=11)
    feats, _ = _run(model, bars)
    rets, _ts, at = _grid_returns(bars)
    m = make_var_model(model)
    after = []
    for r in rets:
        m.update(r)
        fc = m.forecast()
        after.append((math.nan, math.nan) if fc is None else (fc.var, fc.es))
    got = np.array([(f.fvar95, f.fes95) for f in feats])
    expected = np.array([after[at[f.ts]] for f in feats])
    assert (~np.isnan(got[:, 0])).sum() > 300
    np.testing.assert_allclose(got, expected, rtol=0, atol=0, equal_nan=True)


def _batch_counts(rets: list[float], ts: list[int], model: str) -> pd.DataFrame:
    """Per return: was a forecast standing, did the loss exceed it; cumulated, indexed by ts."""
    m = make_var_model(model)
    standing = None
    rows = []
    for r, t in zip(rets, ts, strict=True):
        rows.append((t, standing is not None, standing is not None and -r > standing))
        m.update(r)
        fc = m.forecast()
        standing = None if fc is None else fc.var
    df = pd.DataFrame(rows, columns=["ts", "forecast", "hit"]).set_index("ts")
    return df.cumsum()


@pytest.mark.parametrize("model", ["fhs", "ewma", "garch"])
def test_backtest_rows_count_the_lagged_forecasts(model):
    bars = _bars(seed=3)
    _, rows = _run(model, bars)
    rets, ts, _at = _grid_returns(bars)
    counts = _batch_counts(rets, ts, model)
    cumulative = [r for r in rows if r.scope == "cumulative"]
    assert len(cumulative) >= 5
    assert {r.ts for r in rows} <= set(ts)
    for r in cumulative:
        assert (r.forecasts, r.exceedances) == (counts.loc[r.ts, "forecast"], counts.loc[r.ts, "hit"]), r.ts
        assert (r.symbol, r.model, r.window, r.alpha) == ("X/USDT", model, 200, 0.05)
    # every report_every-th forecast has a row, and rolling rows come once the window has min_forecasts
    total = int(counts["forecast"].iloc[-1])
    due = {n for n in range(BACKTEST.report_every, total + 1, BACKTEST.report_every)}
    assert due <= {r.forecasts for r in cumulative}
    rolling = [r for r in rows if r.scope == "rolling"]
    assert rolling and all(BACKTEST.min_forecasts <= r.forecasts <= BACKTEST.window for r in rolling)


def test_lagged_fvar95_of_a_gapless_stream_is_what_the_backtest_counted():
    """Without gaps the counted forecasts are the feature rows' fvar95 one row back."""
    bars = _bars(seed=8, gaps=False)
    feats, rows = _run("fhs", bars)
    f = pd.DataFrame(
        {"ts": [x.ts for x in feats], "ret": [x.ret for x in feats], "fvar": [x.fvar95 for x in feats]}
    )
    lagged = f["fvar"].shift(1)
    f["counted"] = lagged.notna().cumsum()
    f["hit"] = ((-f["ret"] > lagged) & lagged.notna()).cumsum()
    f = f.set_index("ts")
    cumulative = [r for r in rows if r.scope == "cumulative"]
    assert len(cumulative) >= 3
    for r in cumulative:
        assert (r.forecasts, r.exceedances) == (f.loc[r.ts, "counted"], f.loc[r.ts, "hit"])


def test_take_backtests_returns_new_rows_once():
    sf = SymbolFeatures(FeatureSettings(D, W, var_model="ewma", var_backtest=BACKTEST))
    seen = []
    for bar in _bars(seed=4):
        sf.update(bar)
        seen.append(len(sf.take_backtests()))
    assert sum(seen) > 0 and sf.take_backtests() == []


def test_pickle_mid_stream_continues_identically():
    bars = _bars(seed=6)
    sf = SymbolFeatures(FeatureSettings(D, W, var_backtest=BACKTEST), "X/USDT")
    half = len(bars) * 2 // 3  # the model is warm and the backtest has rows by then
    for bar in bars[:half]:
        sf.update(bar)
    copy = pickle.loads(pickle.dumps(sf))
    a = [sf.update(b) for b in bars[half:]], sf.take_backtests()
    b = [copy.update(b) for b in bars[half:]], copy.take_backtests()
    assert a[1] and not any(math.isnan(f.fvar95) for f in a[0][-10:])
    assert repr(a) == repr(b)


def test_unknown_model_is_a_settings_error():
    with pytest.raises(SettingsError, match=r"FeatureSettings\.var_model must be one of historical, .*garch"):
        FeatureSettings(var_model="nope")
    with pytest.raises(ValueError, match="unknown VaR model 'nope': one of historical, ewma, fhs"):
        make_var_model("nope")


def test_zone_limits_equal_the_linear_search():
    """zone_limits starts from the normal approximation: the same limits as counting up from 0."""
    from operators.risk.var_backtest import binom_cdf, zone_limits

    def linear(n, p, yellow, red):
        x, out = 0, []
        for limit in (yellow, red):
            while binom_cdf(x, n, p) < limit:
                x += 1
            out.append(x)
        return tuple(out)

    rng = np.random.default_rng(2)
    cases = [(n, p, 0.95, 0.9999) for n in range(1, 1101, 3) for p in (0.01, 0.05)]
    for _ in range(1500):
        y, r = sorted(rng.uniform(0.01, 0.99999, 2))
        cases.append((int(rng.integers(1, 3000)), float(rng.uniform(0.001, 0.99)), float(y), float(r)))
    for case in cases:
        assert zone_limits(*case) == linear(*case), case
