"""SymbolFeatures against a pandas/numpy/river batch recomputation of the metric spec.

The reference follows the spec literally: closes on the grid with forward fill,
r_k = ln(C_k / C_(k-1)), one row per actual bar once W returns exist, every
metric recomputed from its window, and one river ADWIN per symbol over
|r| * 10000 for every grid return (gap zeros included).
"""

from __future__ import annotations

import math
import pickle
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from river import drift

from operators.features.symbol_features import FeatureSettings, SymbolFeatures
from schemas.records import Bar, Feature

RTOL = 1e-9
ATOL = 1e-12
Z95 = 1.6448536269514722
FLOAT_COLUMNS = ["ret", "volatility", "entropy", "var95", "es95", "qvar95"]


# --------------------------------------------------------------------------- reference


def ref_entropy(x: np.ndarray) -> float:
    counts = Counter(tuple(np.argsort(x[i : i + 3], kind="stable").tolist()) for i in range(len(x) - 2))
    m = len(x) - 2
    return -sum((c / m) * math.log(c / m) for c in counts.values()) / math.log(6.0)


def ref_features(bars: list[Bar], window: int, coef: float, interval_ms: int) -> pd.DataFrame:
    """The feature rows of one symbol's bars, recomputed from scratch."""
    ks = np.array([b.ts // interval_ms for b in bars])
    closes = pd.Series([b.close for b in bars], index=ks, dtype=float)
    k0 = int(ks[0])
    grid = pd.RangeIndex(k0, int(ks[-1]) + 1)
    c = closes.reindex(grid).ffill()
    r = np.log(c / c.shift(1))  # r at grid index k; NaN at k0
    rets = r.to_numpy()[1:]  # rets[j] = r_(k0 + 1 + j)
    adwin = drift.ADWIN()
    detected = []
    for x in rets.tolist():
        adwin.update(abs(x) * 10_000)
        detected.append(bool(adwin.drift_detected))
    rows = []
    last = -1  # position in rets of the previous row's return
    for b, k in zip(bars[1:], ks[1:].tolist(), strict=True):
        j = k - k0 - 1
        if j + 1 < window:
            continue
        x = rets[j - window + 1 : j + 1]
        vol = float(np.std(x, ddof=1))
        ent = ref_entropy(x)
        q = float(np.quantile(x, 0.05))
        rows.append(
            {
                "symbol": b.symbol,
                "ts": b.ts,
                "ret": float(rets[j]),
                "volatility": vol,
                "entropy": ent,
                "var95": -q,
                "es95": float(-np.mean(x[x <= q])),
                "qvar95": Z95 * vol * (1.0 - coef * ent),
                "drift": int(any(detected[last + 1 : j + 1])),
            }
        )
        last = j
    return pd.DataFrame(rows, columns=["symbol", "ts", *FLOAT_COLUMNS, "drift"])


def run_operator(bars: list[Bar], settings: FeatureSettings) -> pd.DataFrame:
    """Feed the bars (any symbol mix, time order per symbol) through one operator per symbol."""
    ops: dict[str, SymbolFeatures] = {}
    rows: list[Feature] = []
    for b in bars:
        op = ops.setdefault(b.symbol, SymbolFeatures(settings, b.symbol))
        f = op.update(b)
        if f is not None:
            rows.append(f)
    df = pd.DataFrame(
        [(f.symbol, f.ts, f.ret, f.volatility, f.entropy, f.var95, f.es95, f.qvar95, f.drift) for f in rows],
        columns=["symbol", "ts", *FLOAT_COLUMNS, "drift"],
    )
    return df


def assert_features_equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same rows in the same order; every float column within the spec's tolerance.

    All columns are checked before failing, so a report names every column off.
    """
    assert len(expected) > 0, "the case produced no feature rows"
    assert got["symbol"].tolist() == expected["symbol"].tolist()
    assert got["ts"].tolist() == expected["ts"].tolist()
    errors = []
    for col in FLOAT_COLUMNS:
        try:
            np.testing.assert_allclose(
                got[col].to_numpy(float), expected[col].to_numpy(float), rtol=RTOL, atol=ATOL, err_msg=col
            )
        except AssertionError as e:
            errors.append(str(e))
    got_drift = np.flatnonzero(got["drift"].to_numpy()).tolist()
    exp_drift = np.flatnonzero(expected["drift"].to_numpy()).tolist()
    if got_drift != exp_drift:
        errors.append(f"drift rows: got {got_drift}, expected {exp_drift}")
    assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------- streams


def bar_stream(
    rng: np.random.Generator,
    symbol: str,
    n: int,
    interval_ms: int,
    start_k: int = 0,
    gap_p: float = 0.15,
    max_gap: int = 6,
    mode: str = "walk",
) -> list[Bar]:
    steps = np.where(rng.random(n) < gap_p, rng.integers(2, max_gap + 1, n), 1)
    steps[0] = 0
    ks = start_k + np.cumsum(steps)
    if mode == "levels":  # few distinct closes: many tied and zero returns
        closes = rng.choice(np.array([99.5, 100.0, 100.5, 101.0]), n)
    else:
        moves = rng.normal(0.0, 2e-3, n)
        moves[rng.random(n) < 0.25] = 0.0  # unchanged close: zero return
        closes = 100.0 * np.exp(np.cumsum(moves))
    bars = []
    for k, c in zip(ks.tolist(), closes.tolist(), strict=True):
        bars.append(Bar(symbol, k * interval_ms, c, c * 1.001, c * 0.999, c, 1.0, c, 1))
    return bars


def merged(*streams: list[Bar]) -> list[Bar]:
    return sorted((b for s in streams for b in s), key=lambda b: (b.ts, b.symbol))


def multi_symbol_bars(seed: int, interval_ms: int, n: int) -> list[Bar]:
    rng = np.random.default_rng(seed)
    return merged(
        bar_stream(rng, "BTC/USDT", n, interval_ms, start_k=1_700_000_000, mode="walk"),
        bar_stream(rng, "ETH/USDT", n, interval_ms, start_k=1_700_000_007, gap_p=0.3, mode="levels"),
        bar_stream(rng, "SOL/USDT", n // 2, interval_ms, start_k=1_700_000_003, gap_p=0.05, max_gap=40),
    )


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("window", [3, 4, 5, 20, 300])
@pytest.mark.parametrize("coef", [0.3, 0.75])
def test_features_match_batch_recomputation(window: int, coef: float) -> None:
    interval_ms = 1000
    n = 1000 if window == 300 else 400
    bars = multi_symbol_bars(seed=window, interval_ms=interval_ms, n=n)
    settings = FeatureSettings(bar_interval_ms=interval_ms, window=window, qvar_entropy_coef=coef)
    got = run_operator(bars, settings)
    for sym in sorted({b.symbol for b in bars}):
        expected = ref_features([b for b in bars if b.symbol == sym], window, coef, interval_ms)
        assert_features_equal(got[got["symbol"] == sym].reset_index(drop=True), expected)


@pytest.mark.parametrize("window", [3, 5, 20])
def test_features_without_flat_windows(window: int) -> None:
    """Gaps shorter than the window and no unchanged closes: no window is constant."""
    rng = np.random.default_rng(100 + window)
    interval_ms = 60_000
    bars = []
    for sym, start in [("A/USD", 10), ("B/USD", 25)]:
        ks = start + np.cumsum(np.where(rng.random(500) < 0.2, 2, 1))
        closes = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, 500)))
        bars.extend(Bar(sym, k * interval_ms, c, c, c, c, 1.0, c, 1) for k, c in zip(ks, closes, strict=True))
    settings = FeatureSettings(bar_interval_ms=interval_ms, window=window)
    got = run_operator(merged(bars), settings)
    for sym in ("A/USD", "B/USD"):
        expected = ref_features([b for b in bars if b.symbol == sym], window, 0.3, interval_ms)
        assert_features_equal(got[got["symbol"] == sym].reset_index(drop=True), expected)


def test_flat_window_after_moves_has_zero_volatility() -> None:
    """W = 3: a 2% move and back, then the close stays put; the last window is three zero returns.

    Its volatility and qvar95 are 0 (numpy: np.std([0, 0, 0], ddof=1) == 0).
    """
    closes = [100.0, 102.0, 100.0, 100.0, 100.0, 100.0]
    bars = [Bar("X", i * 1000, c, c, c, c, 1.0, c, 1) for i, c in enumerate(closes)]
    got = run_operator(bars, FeatureSettings(bar_interval_ms=1000, window=3))
    assert_features_equal(got, ref_features(bars, 3, 0.3, 1000))


def test_gap_returns_count_towards_the_window() -> None:
    """Two bars 5 grid steps apart already give W = 5 returns: a row at the second bar."""
    bars = [Bar("X", 0, 1, 1, 1, 100.0, 1, 1, 1), Bar("X", 5000, 1, 1, 1, 105.0, 1, 1, 1)]
    sf = SymbolFeatures(FeatureSettings(bar_interval_ms=1000, window=5))
    assert sf.update(bars[0]) is None
    f = sf.update(bars[1])
    assert f is not None
    assert f.ts == 5000
    np.testing.assert_allclose(f.ret, math.log(105.0 / 100.0), rtol=RTOL)
    expected = ref_features(bars, 5, 0.3, 1000)
    assert_features_equal(run_operator(bars, FeatureSettings(bar_interval_ms=1000, window=5)), expected)


def test_no_row_before_window_returns() -> None:
    sf = SymbolFeatures(FeatureSettings(bar_interval_ms=1000, window=4))
    out = [sf.update(Bar("X", k * 1000, 1, 1, 1, 100.0 + k, 1, 1, 1)) for k in range(6)]
    assert out[:4] == [None] * 4
    assert all(isinstance(f, Feature) for f in out[4:])


# Pinned on the seeded stream below (river 0.26.1, numpy default_rng(2024)); the
# reference recomputation must agree with this list as well as the operator.
# One detection shortly after each of the three regime changes (bars 400, 800, 1200).
PINNED_DRIFT_ROWS = [365, 776, 1182]


def regime_change_bars() -> list[Bar]:
    """Volatility 1 bp and 30 bp per bar, switching every 400 bars; 10% of steps skip a bar."""
    rng = np.random.default_rng(2024)
    n = 1600
    sigma = np.where((np.arange(n) // 400) % 2 == 0, 1e-4, 3e-3)
    moves = rng.normal(0.0, 1.0, n) * sigma
    ks = np.cumsum(np.where(rng.random(n) < 0.1, 2, 1))
    closes = 30_000.0 * np.exp(np.cumsum(moves))
    return [Bar("BTC/USDT", k * 1000, c, c, c, c, 1.0, c, 1) for k, c in zip(ks, closes, strict=True)]


def test_drift_fires_on_volatility_regime_change() -> None:
    bars = regime_change_bars()
    window = 50
    expected = ref_features(bars, window, 0.3, 1000)
    got = run_operator(bars, FeatureSettings(bar_interval_ms=1000, window=window))
    exp_rows = np.flatnonzero(expected["drift"].to_numpy()).tolist()
    got_rows = np.flatnonzero(got["drift"].to_numpy()).tolist()
    assert len(exp_rows) >= 1
    assert got_rows == exp_rows
    assert got_rows == PINNED_DRIFT_ROWS
    # the first detection comes after the first change (bar 400, row about 400 - window)
    assert got_rows[0] >= 400 - window
    assert_features_equal(got, expected)


def test_drift_flag_counts_detections_inside_gaps() -> None:
    """A detection on a gap's zero return is reported at the next actual bar's row."""
    bars = regime_change_bars()
    # thin the volatile regimes out so most of their returns fall inside gaps
    thinned = [b for i, b in enumerate(bars) if (i // 400) % 2 == 0 or i % 7 == 0]
    expected = ref_features(thinned, 50, 0.3, 1000)
    got = run_operator(thinned, FeatureSettings(bar_interval_ms=1000, window=50))
    assert expected["drift"].sum() >= 1
    assert_features_equal(got, expected)


@pytest.mark.parametrize("cut", [10, 700, 1000])
def test_pickle_round_trip_mid_stream(cut: int) -> None:
    """Operator state (windows, grid, ADWIN) survives a snapshot: the restored copy goes on alike."""
    bars = regime_change_bars()
    settings = FeatureSettings(bar_interval_ms=1000, window=50)
    op = SymbolFeatures(settings, "BTC/USDT")
    for b in bars[:cut]:
        op.update(b)
    clone = pickle.loads(pickle.dumps(op))
    a = [op.update(b) for b in bars[cut:]]
    c = [clone.update(b) for b in bars[cut:]]
    assert [f is None for f in a] == [f is None for f in c]
    a_df = pd.DataFrame([f for f in a if f is not None])
    c_df = pd.DataFrame([f for f in c if f is not None])
    assert_features_equal(c_df, a_df)


@pytest.mark.parametrize(
    ("kw", "match"), [({"window": 2}, "window"), ({"bar_interval_ms": 0}, "bar_interval")]
)
def test_feature_settings_are_validated(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureSettings(**kw)
