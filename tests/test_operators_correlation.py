"""CorrelationGrid and RollingCorrelation against pandas/numpy batch recomputation.

Reference (metric spec, correlations): grid closes with forward fill up to the
run's last grid index, r_k = ln(C_k / C_(k-1)); at every k with k % every == 0,
each pair a < b whose returns are defined on all of (k - Wc, k] and not
constant there gets corr = Pearson correlation of the two windows.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from operators.features.correlation_grid import CorrelationGrid, CorrelationSettings
from operators.features.rolling_correlation import RollingCorrelation

RTOL = 1e-9
ATOL = 1e-12
D = 1000  # bar interval, ms
K0 = 1_700_000_013  # grid indices near a real epoch, not aligned to `every`

Series = dict[str, list[tuple[int, float]]]  # symbol -> [(grid index, close)], increasing


# --------------------------------------------------------------------------- reference


def grid_returns(series: Series) -> pd.DataFrame:
    """Returns on the run's grid: NaN up to each symbol's first bar, forward fill after its last."""
    kmin = min(bars[0][0] for bars in series.values())
    kmax = max(bars[-1][0] for bars in series.values())
    grid = pd.RangeIndex(kmin, kmax + 1)
    cols = {}
    for sym, bars in series.items():
        closes = pd.Series([c for _, c in bars], index=[k for k, _ in bars], dtype=float)
        c = closes.reindex(grid).ffill()
        cols[sym] = np.log(c / c.shift(1))
    return pd.DataFrame(cols, index=grid)


def ref_correlations(series: Series, window: int, every: int) -> dict[tuple[int, str, str], float]:
    r = grid_returns(series)
    out = {}
    for k in r.index:
        if k % every or k - window + 1 < r.index[0]:
            continue
        win = r.loc[k - window + 1 : k]
        assert len(win) == window
        ready = sorted(s for s in win.columns if win[s].notna().all() and win[s].nunique() > 1)
        for i, a in enumerate(ready):
            for b in ready[i + 1 :]:
                out[(k * D, a, b)] = float(np.corrcoef(win[a].to_numpy(), win[b].to_numpy())[0, 1])
    return out


# --------------------------------------------------------------------------- feeding


Call = tuple[str, list[tuple[int, float]], int, tuple[str, ...]]


def chunked_calls(series: Series, chunk: int, seed: int) -> list[list[Call]]:
    """Per input chunk of `chunk` grid steps, one update per symbol present in it.

    Like the flow: a symbol reports its bars closed so far and how far its grid
    is final (its newest bar index - 1, sometimes less: a lagging watermark),
    naming as peers the other symbols of the chunk. After the last chunk each
    symbol reports its remaining bars (the flush).
    """
    rng = np.random.default_rng(seed)
    kmin = min(b[0][0] for b in series.values())
    kmax = max(b[-1][0] for b in series.values())
    sent = dict.fromkeys(series, 0)  # bars reported so far
    chunks: list[list[Call]] = []
    for lo in range(kmin, kmax + 1, chunk):
        hi = lo + chunk
        present = sorted(s for s, bars in series.items() if any(lo <= k < hi for k, _ in bars))
        calls = []
        for sym in present:
            bars = series[sym]
            newest = max(k for k, _ in bars if k < hi)
            through = newest - 1 - int(rng.choice([0, 0, 0, 1, 4]))
            j = sent[sym]
            while j < len(bars) and bars[j][0] <= through:
                j += 1
            calls.append((sym, bars[sent[sym] : j], through, tuple(p for p in present if p != sym)))
            sent[sym] = j
        chunks.append(calls)
    chunks.append(
        [(s, bars[sent[s] :], bars[-1][0], ()) for s, bars in series.items() if sent[s] < len(bars)]
    )
    return chunks


def run_grid(chunks: list[list[Call]], window: int, every: int, order_seed: int | None) -> list:
    """Feed the calls chunk by chunk; within a chunk in a shuffled order when order_seed is set."""
    cg = CorrelationGrid(CorrelationSettings(bar_interval_ms=D, window=window, every=every))
    rng = np.random.default_rng(order_seed)
    out = []
    for calls in chunks:
        order = list(range(len(calls)))
        if order_seed is not None:
            rng.shuffle(order)
        for i in order:
            sym, bars, through, peers = calls[i]
            out.extend(cg.update(sym, bars, through, peers=peers))
    out.extend(cg.finish())
    return out


def assert_correlations_equal(got: list, expected: dict[tuple[int, str, str], float]) -> None:
    keys = [(c.ts, c.symbol_a, c.symbol_b) for c in got]
    assert len(keys) == len(set(keys)), "a (ts, a, b) key was emitted twice"
    assert all(a < b for _, a, b in keys)
    missing = sorted(set(expected) - set(keys))
    extra = sorted(set(keys) - set(expected))
    assert not missing and not extra, (
        f"missing {missing[:5]} (of {len(missing)}), extra {extra[:5]} (of {len(extra)})"
    )
    got_by_key = {(c.ts, c.symbol_a, c.symbol_b): c.corr for c in got}
    ordered = sorted(expected)
    np.testing.assert_allclose(
        [got_by_key[k] for k in ordered], [expected[k] for k in ordered], rtol=RTOL, atol=ATOL
    )


# --------------------------------------------------------------------------- streams


def bars_from_returns(ks: np.ndarray, rets: np.ndarray, start_price: float) -> list[tuple[int, float]]:
    closes = start_price * np.exp(np.cumsum(rets))
    return list(zip(ks.tolist(), closes.tolist(), strict=True))


def thin(rng: np.random.Generator, ks: np.ndarray, p_gap: float) -> np.ndarray:
    keep = rng.random(len(ks)) >= p_gap
    keep[0] = keep[-1] = True
    return ks[keep]


def market(seed: int, n: int = 900) -> Series:
    """Five symbols on a run of n grid steps.

    AAA: whole run, a few gaps. BBB: starts later, correlated with AAA, more gaps.
    CCC: starts later still and stops trading at 60% of the run. DDD: closes
    doubling every step (every return ln 2: zero variance) until 80% of the
    run. EEE: a flat price (all returns 0). FFF: tied returns from few levels.
    """
    rng = np.random.default_rng(seed)
    common = rng.normal(0.0, 1e-3, n)
    ks_all = K0 + np.arange(n)
    series: Series = {}
    a = thin(rng, ks_all, 0.05)
    series["AAA"] = bars_from_returns(a, common[a - K0] + rng.normal(0, 5e-4, len(a)), 100.0)
    b = thin(rng, ks_all[37:], 0.3)
    series["BBB"] = bars_from_returns(b, 0.7 * common[b - K0] + rng.normal(0, 8e-4, len(b)), 20.0)
    c = thin(rng, ks_all[120 : int(0.6 * n)], 0.1)
    series["CCC"] = bars_from_returns(c, -common[c - K0] + rng.normal(0, 1e-3, len(c)), 3.0)
    d = ks_all[10 : int(0.8 * n)]
    series["DDD"] = [(int(k), 2.0 ** (i - 300)) for i, k in enumerate(d)]
    e = thin(rng, ks_all[5:], 0.5)
    series["EEE"] = [(int(k), 7.0) for k in e]
    f = thin(rng, ks_all[60:], 0.2)
    series["FFF"] = [
        (int(k), float(x)) for k, x in zip(f, rng.choice([1.0, 1.01, 1.02], len(f)), strict=True)
    ]
    return series


def sparse_market(seed: int, n: int = 400) -> Series:
    """Four symbols trading in 30-70% of the grid steps: first returns arrive late, often after
    the grid has passed them (the grid backfills its window)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0.0, 1e-3, n)
    ks_all = K0 + np.arange(n)
    series: Series = {}
    for name, start, p_gap in [("A", 0, 0.6), ("B", 3, 0.6), ("C", 30, 0.7), ("D", 50, 0.5)]:
        k = thin(rng, ks_all[start:], p_gap)
        rets = common[k - K0] * rng.normal(1.0, 0.3) + rng.normal(0.0, 1e-3, len(k))
        series[name] = bars_from_returns(k, rets, 10.0)
    return series


# --------------------------------------------------------------------------- CorrelationGrid


def test_reference_market_has_the_intended_shape() -> None:
    """Guard on the generator: constant symbols give no rows, the others do."""
    series = market(0)
    r = grid_returns(series)
    assert r["DDD"].dropna().iloc[:400].nunique() == 1
    np.testing.assert_allclose(r["DDD"].dropna().iloc[0], np.log(2.0), rtol=1e-15)
    assert (r["EEE"].dropna() == 0.0).all()
    expected = ref_correlations(series, 60, 7)
    pairs = {(a, b) for _, a, b in expected}
    assert ("AAA", "BBB") in pairs and ("AAA", "CCC") in pairs and ("BBB", "FFF") in pairs
    assert not any("EEE" in p for p in pairs)
    # DDD only after its doubling stops: forward-filled zeros give it variance
    ddd_last_bar = series["DDD"][-1][0]
    assert all(ts // D > ddd_last_bar for ts, a, b in expected if "DDD" in (a, b))
    assert any("DDD" in p for p in pairs)


@pytest.mark.parametrize(
    ("window", "every", "chunk"),
    [(60, 60, 25), (300, 60, 60), (3, 1, 7), (10, 7, 1), (60, 7, 200), (300, 1, 45), (2, 5, 13)],
)
def test_correlation_grid_matches_batch_recomputation(window: int, every: int, chunk: int) -> None:
    series = market(window * 31 + every)
    expected = ref_correlations(series, window, every)
    assert len(expected) > 0
    got = run_grid(chunked_calls(series, chunk, seed=every), window, every, order_seed=chunk)
    assert_correlations_equal(got, expected)


@pytest.mark.parametrize(("window", "every", "chunk"), [(20, 1, 1), (5, 1, 2), (60, 3, 1), (10, 2, 3)])
@pytest.mark.parametrize("seed", range(6))
def test_correlation_grid_sparse_symbols(window: int, every: int, chunk: int, seed: int) -> None:
    series = sparse_market(seed)
    expected = ref_correlations(series, window, every)
    assert len(expected) > 0
    got = run_grid(chunked_calls(series, chunk, seed=seed), window, every, order_seed=seed)
    assert_correlations_equal(got, expected)


def test_correlation_grid_rows_come_in_grid_order() -> None:
    series = market(5)
    got = run_grid(chunked_calls(series, 30, seed=1), 60, 7, order_seed=2)
    ts = [c.ts for c in got]
    assert ts == sorted(ts)
    assert len(got) > 0


@pytest.mark.parametrize(("window", "every", "chunk"), [(60, 7, 25), (3, 1, 9), (300, 60, 100)])
def test_correlation_grid_output_does_not_depend_on_interleaving(window: int, every: int, chunk: int) -> None:
    series = market(17)
    chunks = chunked_calls(series, chunk, seed=3)
    one = run_grid(chunks, window, every, order_seed=None)  # symbols in name order
    two = run_grid(chunks, window, every, order_seed=99)
    rev = run_grid([calls[::-1] for calls in chunks], window, every, order_seed=None)
    assert len(one) > 0
    for other in (two, rev):
        assert [(c.ts, c.symbol_a, c.symbol_b) for c in other] == [
            (c.ts, c.symbol_a, c.symbol_b) for c in one
        ]
        np.testing.assert_allclose([c.corr for c in other], [c.corr for c in one], rtol=1e-12, atol=0)
    assert_correlations_equal(one, ref_correlations(series, window, every))


@pytest.mark.parametrize("stop", [3, 20, 35])
def test_correlation_grid_pickle_round_trip_between_chunks(stop: int) -> None:
    series = market(23, n=500)
    chunks = chunked_calls(series, 12, seed=4)
    settings = CorrelationSettings(bar_interval_ms=D, window=60, every=7)
    cg = CorrelationGrid(settings)
    for calls in chunks[:stop]:
        for sym, bars, through, peers in calls:
            cg.update(sym, bars, through, peers=peers)
    clone = pickle.loads(pickle.dumps(cg))
    outs = []
    for grid in (cg, clone):
        out = []
        for calls in chunks[stop:]:
            for sym, bars, through, peers in calls:
                out.extend(grid.update(sym, bars, through, peers=peers))
        out.extend(grid.finish())
        outs.append(out)
    assert len(outs[0]) > 0
    assert [(c.ts, c.symbol_a, c.symbol_b) for c in outs[1]] == [
        (c.ts, c.symbol_a, c.symbol_b) for c in outs[0]
    ]
    np.testing.assert_allclose([c.corr for c in outs[1]], [c.corr for c in outs[0]], rtol=1e-15, atol=0)


def test_correlation_grid_single_symbol_and_empty_input() -> None:
    cg = CorrelationGrid(CorrelationSettings(bar_interval_ms=D, window=3, every=1))
    assert cg.finish() == []
    bars = [(k, 100.0 + k % 3) for k in range(10)]
    assert cg.update("A", bars, 9) == []
    assert cg.finish() == []


def test_correlation_settings_are_validated() -> None:
    for kw in ({"window": 1}, {"every": 0}, {"bar_interval_ms": 0}):
        with pytest.raises(ValueError):
            CorrelationSettings(**kw)


# --------------------------------------------------------------------------- RollingCorrelation


def _check_window(rc: RollingCorrelation, x: np.ndarray) -> None:
    """All pairwise corr against np.corrcoef for the non-constant columns of window x."""
    np.testing.assert_array_equal(rc.rows(), x)
    const = np.ptp(x, axis=0) == 0
    np.testing.assert_array_equal(rc.constant(), const)
    ok = np.flatnonzero(~const)
    if len(ok) < 2:
        return
    ref = np.corrcoef(x[:, ok].T)
    got = np.array([[rc.corr(int(a), int(b)) for b in ok] for a in ok])
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("window", [2, 3, 5, 300])
def test_rolling_correlation_step_by_step(window: int) -> None:
    rng = np.random.default_rng(window)
    n = max(3 * window, 400)
    x = np.column_stack(
        [
            rng.normal(0, 1e-3, n),
            rng.choice([-1e-3, 0.0, 1e-3], n),  # ties, and constant windows when small
            np.where(rng.random(n) < 0.7, 0.0, rng.normal(0, 2e-3, n)),  # mostly zero
        ]
    )
    x[:, 1] += 0.5 * x[:, 0]
    rc = RollingCorrelation(window, columns=3)
    for i in range(n):
        rc.update(x[i])
        if i >= window - 1:
            _check_window(rc, x[i - window + 1 : i + 1])


def test_rolling_correlation_long_stream_has_no_float_drift() -> None:
    """60k rows, regimes of 1, 10 and 100 bp per step, a mostly-zero column."""
    rng = np.random.default_rng(42)
    n, w = 60_000, 300
    scale = np.repeat(rng.choice([1e-4, 1e-3, 1e-2], n // 500), 500)[:, None]
    z = rng.normal(0.0, 1.0, (n, 4))
    x = np.column_stack([z[:, 0], 0.6 * z[:, 0] + 0.8 * z[:, 1], -z[:, 0] + 0.1 * z[:, 2], z[:, 3]]) * scale
    x[rng.random(n) < 0.7, 3] = 0.0
    rc = RollingCorrelation(w, columns=4)
    check = set(range(n - 700, n)) | set(rng.integers(w, n, 300).tolist())
    for i in range(n):
        rc.update(x[i])
        if i in check:
            _check_window(rc, x[i - w + 1 : i + 1])


@pytest.mark.parametrize("ratio", [300, 1000, 3000, 10_000])
def test_rolling_correlation_after_a_volatility_collapse(ratio: int) -> None:
    """450 rows at 1% per step, then 600 rows 1/ratio as large (1000: 0.1 bp).

    Once the large rows have left the window (i >= 749) the co-moments must
    describe the small rows alone, also between two periodic refreshes
    (i = 750..898). The removal steps leave an error of order eps * the
    co-moments' peak, i.e. eps * ratio**2 relative to what is left.
    """
    rng = np.random.default_rng(0)
    w = 300
    z = rng.normal(0.0, 1.0, (1050, 2))
    x = np.column_stack([z[:, 0], 0.6 * z[:, 0] + 0.8 * z[:, 1]])
    x[:450] *= 1e-2
    x[450:] *= 1e-2 / ratio
    rc = RollingCorrelation(w, columns=2)
    got, expected = [], []
    for i in range(len(x)):
        rc.update(x[i])
        if i >= w - 1:
            got.append(rc.corr(0, 1))
            expected.append(np.corrcoef(x[i - w + 1 : i + 1].T)[0, 1])
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_rolling_correlation_added_column_reads_past_rows_as_zero() -> None:
    rng = np.random.default_rng(8)
    w, n = 20, 120
    x = rng.normal(0, 1e-3, (n, 2))
    rc = RollingCorrelation(w, columns=1)
    for i in range(50):
        rc.update(x[i, :1])
    assert rc.add_column() == 1
    full = x.copy()
    full[:50, 1] = 0.0
    for i in range(50, n):
        rc.update(x[i])
        _check_window(rc, full[i - w + 1 : i + 1])


def test_rolling_correlation_rejects_bad_window() -> None:
    with pytest.raises(ValueError, match="window"):
        RollingCorrelation(1)
