"""Oracle tests of the VaR/ES forecasters against independent batch recomputations.

Each estimator is fed a stream return by return; after every update its
forecast is compared with numpy/scipy on the same prefix (the metric spec's
"exactly": 1e-9 relative, 1e-12 absolute). The references share no code with
operators/: numpy quantiles and masks, explicit EWMA weights, scipy's skew,
kurtosis, norm and t, and quad integrals for the tail means. Horizon rules are
checked against closed forms, exact enumeration or Monte Carlo.
"""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from scipy import integrate, stats

from operators.features.rolling_tail import RollingTail
from operators.risk.var_math import t_cdf, t_ppf
from operators.risk.var_models import (
    CornishFisher,
    CornishFisherSettings,
    EwmaNormal,
    EwmaSettings,
    FhsSettings,
    FilteredHistorical,
    Garch,
    GarchSettings,
    Historical,
    HistoricalSettings,
    StudentT,
    StudentTSettings,
)
from operators.risk.var_windows import _Moments, _TailWindow
from schemas.settings import SettingsError, field_types

RTOL = 1e-9
ATOL = 1e-12
ALPHA = 0.05


# --------------------------------------------------------------------------- streams


def gaussian(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(0.0, 1e-3, n)


def clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    """Student-t(3) shocks with regime-switching volatility (what 1-minute crypto returns look like)."""
    vol = np.where((np.arange(n) // 200) % 3 == 1, 5e-3, 1e-3)
    return rng.standard_t(3, n) * vol


def ties(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.array([-2e-3, -1e-3, 0.0, 1e-3, 2e-3]), n)


def zero_runs(rng: np.random.Generator, n: int) -> np.ndarray:
    out: list[float] = []
    while len(out) < n:
        if rng.random() < 0.5:
            out.extend([0.0] * int(rng.integers(1, 80)))
        else:
            out.extend(rng.normal(0.0, 1e-3, int(rng.integers(1, 60))).tolist())
    return np.array(out[:n])


def extreme(rng: np.random.Generator, n: int) -> np.ndarray:
    levels = np.array([1e-12, -2e-12, 0.0, 1e3, -1e3, -5e2, -1e6, 3.0])
    return rng.choice(levels, n, p=[0.3, 0.15, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05])


STREAMS = {"gaussian": gaussian, "clustered": clustered, "ties": ties, "zero_runs": zero_runs}
ALL_STREAMS = {**STREAMS, "extreme": extreme}


def stream(name: str, n: int = 900, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, list(ALL_STREAMS).index(name)])
    return ALL_STREAMS[name](rng, n)


def close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def feed(model, x: np.ndarray, alpha: float | None = None) -> list:
    out = []
    for r in x.tolist():
        model.update(r)
        f = model.forecast(alpha)
        out.append(None if f is None else (f.var, f.es))
    return out


def warm(out: list) -> tuple[int, np.ndarray]:
    """(index of the first forecast, the forecasts from there as an array); None never comes back."""
    first = next(i for i, v in enumerate(out) if v is not None)
    assert all(v is not None for v in out[first:])
    return first, np.array(out[first:])


# --------------------------------------------------------------------------- references


def ref_tail(win: np.ndarray, alpha: float = ALPHA, method: str = "linear") -> tuple[float, float]:
    q = np.quantile(win, alpha, method=method)
    return float(-q), float(-np.mean(win[win <= q]))


def ref_ewma_var(x: np.ndarray, decay: float) -> np.ndarray:
    """v_n = sum_i decay^(n-i) r_i^2 / sum_i decay^(n-i), explicit weights for every prefix."""
    out = np.empty(len(x))
    for n in range(len(x)):
        w = decay ** np.arange(n, -1, -1, dtype=float)
        out[n] = np.sum(w * x[: n + 1] ** 2) / np.sum(w)
    return out


def ref_normal(sigma: float, alpha: float = ALPHA) -> tuple[float, float]:
    z = stats.norm.ppf(alpha)
    return -z * sigma, sigma * stats.norm.pdf(z) / alpha


def ref_cf(win: np.ndarray, alpha: float = ALPHA, h: int = 1) -> tuple[float, float]:
    mu, sd = h * np.mean(win), math.sqrt(h) * np.std(win, ddof=1)
    flat = np.all(win == win[0])
    s = 0.0 if flat else stats.skew(win) / math.sqrt(h)
    k = 0.0 if flat else stats.kurtosis(win) / h

    def f(u: float) -> float:
        return u + (u * u - 1) * s / 6 + (u**3 - 3 * u) * k / 24 - (2 * u**3 - 5 * u) * s * s / 36

    z = stats.norm.ppf(alpha)
    tail, _ = integrate.quad(lambda u: f(u) * stats.norm.pdf(u), -np.inf, z, epsabs=0, epsrel=1e-12)
    return -(mu + sd * f(z)), -(mu + sd * tail / alpha)


def ref_t(sigma: float, nu: float, alpha: float = ALPHA) -> tuple[float, float]:
    q = stats.t.ppf(alpha, nu)
    c = sigma * math.sqrt((nu - 2) / nu)
    tail, _ = integrate.quad(lambda u: u * stats.t.pdf(u, nu), -np.inf, q, epsabs=0, epsrel=1e-12)
    return -c * q, -c * tail / alpha


# --------------------------------------------------------------------------- historical


@pytest.mark.parametrize("name", list(ALL_STREAMS))
@pytest.mark.parametrize("w", [2, 3, 5, 20, 300])
def test_historical_matches_numpy_and_rolling_tail(name: str, w: int) -> None:
    x = stream(name, max(900, 3 * w))
    model, rt = Historical(HistoricalSettings(window=w)), RollingTail(w, ALPHA)
    out, legacy = [], []
    for r in x.tolist():
        model.update(r)
        rt.update(r)
        f = model.forecast()
        out.append(None if f is None else (f.var, f.es))
        legacy.append(rt.get())
    first, got = warm(out)
    assert first == w - 1
    close(got, [ref_tail(win) for win in sliding_window_view(x, w)])
    close(got, legacy[first:])


@pytest.mark.parametrize("alpha", [0.01, 0.025, 0.1, 0.3])
def test_historical_other_levels(alpha: float) -> None:
    x = stream("clustered")
    fast = Historical(HistoricalSettings(window=100, alpha=alpha))
    slow = Historical(HistoricalSettings(window=100))  # other level than its own: sorts the window
    ref = [ref_tail(win, alpha) for win in sliding_window_view(x, 100)]
    close(warm(feed(fast, x))[1], ref)
    close(warm(feed(slow, x, alpha))[1], ref)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([-3.0, -1.0, -0.0, 0.0, 0.5, 1.0, 2.0, 1e-300, -1e300]), min_size=2, max_size=80)
    | st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=80),
    st.integers(2, 12),
    st.floats(0.001, 0.499),
    st.sampled_from(["linear", "weibull"]),
)
def test_tail_window_is_numpy_on_any_stream(xs: list[float], w: int, alpha: float, method: str) -> None:
    tw = _TailWindow(w, alpha, method)
    for i, v in enumerate(xs):
        tw.update(v)
        got = tw.tail()
        if i + 1 < w:
            assert got is None
            continue
        win = np.array(xs[i + 1 - w : i + 1])
        q = np.quantile(win, alpha, method=method)
        close(got, (q, np.mean(win[win <= q])))


def test_tail_window_long_stream_rebuilds_and_stays_exact() -> None:
    """60k updates, window 50: stale heap entries force rebuilds; a volatility collapse tests exactness."""
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0, 1e3, 30_000), rng.normal(0, 1e-9, 30_000)])
    x[::97] = 0.0
    tw = _TailWindow(50, ALPHA)
    for i, v in enumerate(x.tolist()):
        tw.update(v)
        if i >= 49 and (i % 101 == 0 or 30_000 <= i < 30_200 or i % 7 == 0 and i > 30_040):
            win = x[i - 49 : i + 1]
            q = np.quantile(win, ALPHA)
            close(tw.tail(), (q, np.mean(win[win <= q])))
        assert len(tw._lo) + len(tw._hi) <= 2 * 50 + 17


def test_historical_horizon_bootstrap_against_exact_enumeration() -> None:
    """W = 20, h = 2: the bootstrap's VaR/ES against the distribution of all 400 pair sums."""
    x = stream("clustered", 20, seed=3)
    model = Historical(HistoricalSettings(window=20, sims=200_000, seed=1))
    for r in x.tolist():
        model.update(r)
    f = model.forecast_horizon(2)
    pairs = np.sort((x[:, None] + x[None, :]).ravel())  # 400 equally likely sums
    assert -pairs[21] <= f.var <= -pairs[18]  # the 5% point falls between atoms 19 and 20
    np.testing.assert_allclose(f.es, -np.mean(pairs[:20]), rtol=0.01)
    assert model.forecast_horizon(1) == model.forecast()
    assert f.horizon == 2 and model.forecast_horizon(2) == f  # seeded: the same answer twice


# --------------------------------------------------------------------------- EWMA normal


@pytest.mark.parametrize("name", list(ALL_STREAMS))
@pytest.mark.parametrize("decay", [0.94, 0.5, 0.999])
def test_ewma_normal_matches_explicit_weights(name: str, decay: float) -> None:
    x = stream(name, 600)
    s = EwmaSettings(decay=decay, min_periods=10)
    first, got = warm(feed(EwmaNormal(s), x))
    assert first == 9
    sig = np.sqrt(ref_ewma_var(x, decay))[first:]
    close(got, np.array([ref_normal(v) for v in sig]))


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("h", [1, 4, 60])
def test_ewma_horizon_is_sqrt_of_time(alpha: float, h: int) -> None:
    x = stream("gaussian", 100)
    model = EwmaNormal()
    for r in x.tolist():
        model.update(r)
    f = model.forecast_horizon(h, alpha)
    close((f.var, f.es), ref_normal(math.sqrt(h * ref_ewma_var(x, 0.94)[-1]), alpha))


# --------------------------------------------------------------------------- filtered historical simulation


def ref_fhs(
    x: np.ndarray, decay: float, min_periods: int, w: int, alpha: float = ALPHA, method: str = "linear"
) -> list:
    v = ref_ewma_var(x, decay)
    z, out = [], []
    for t in range(len(x)):
        if t >= min_periods and v[t - 1] > 0:
            z.append(x[t] / math.sqrt(v[t - 1]))
        if len(z) < w:
            out.append(None)
            continue
        var, es = ref_tail(np.array(z[-w:]), alpha, method)
        out.append((math.sqrt(v[t]) * var, math.sqrt(v[t]) * es))
    return out


@pytest.mark.parametrize("method", ["linear", "weibull"])
@pytest.mark.parametrize("name", list(ALL_STREAMS))
@pytest.mark.parametrize("w", [5, 100])
def test_fhs_matches_batch_residuals(name: str, w: int, method: str) -> None:
    x = stream(name, 700)
    s = FhsSettings(decay=0.94, min_periods=20, window=w, quantile_method=method, floor_share=0.0)
    got = feed(FilteredHistorical(s), x)
    ref = ref_fhs(x, 0.94, 20, w, ALPHA, method)
    assert [g is None for g in got] == [r is None for r in ref]
    first = next(i for i, r in enumerate(ref) if r is not None)
    close(got[first:], ref[first:])


def test_fhs_other_level_and_horizon_paths() -> None:
    """The h-bar paths against a plain loop over the same draws; h = 1 is the one-bar forecast."""
    x = stream("clustered", 500)
    s = FhsSettings(
        decay=0.94, min_periods=20, window=200, quantile_method="linear", sims=500, seed=4, floor_share=0.0
    )
    model = FilteredHistorical(s)
    got = feed(model, x, 0.01)
    close(got[-1], ref_fhs(x, 0.94, 20, 200, 0.01)[-1])
    h = 7
    f = model.forecast_horizon(h)
    v = ref_ewma_var(x, 0.94)
    z = np.array([x[t] / math.sqrt(v[t - 1]) for t in range(20, len(x)) if v[t - 1] > 0])[-200:]
    draws = z[np.random.default_rng(4).integers(0, 200, (500, h))]
    w = 0.94 ** np.arange(len(x) - 1, -1, -1, dtype=float)
    sums = []
    for path in draws:
        num, den, total = float(np.sum(w * x**2)), float(np.sum(w)), 0.0
        for zk in path:
            r = math.sqrt(num / den) * zk
            total += r
            num, den = 0.94 * num + r * r, 0.94 * den + 1.0
        sums.append(total)
    close((f.var, f.es), ref_tail(np.array(sums)))
    assert model.forecast_horizon(1) == model.forecast()


def test_fhs_sigma_floor_matches_batch_and_keeps_flat_runs_sane() -> None:
    """The floored filter against a batch recomputation; a flat run then a one-tick move."""
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.standard_t(4, 400) * 0.002, np.zeros(120), [-2e-5], rng.normal(0, 0.002, 100)])
    s = FhsSettings(decay=0.8, min_periods=20, window=200, quantile_method="weibull", floor_share=0.05)
    model = FilteredHistorical(s)
    got = feed(model, x)
    fast, slow = ref_ewma_var(x, 0.8), ref_ewma_var(x, 0.999)
    v = np.maximum(fast, 0.05**2 * slow)
    z, ref = [], []
    for t in range(len(x)):
        if t >= 20 and v[t - 1] > 0:
            z.append(x[t] / math.sqrt(v[t - 1]))
        if len(z) < 200:
            ref.append(None)
            continue
        q, es = ref_tail(np.array(z[-200:]), ALPHA, "weibull")
        ref.append((math.sqrt(v[t]) * q, math.sqrt(v[t]) * es))
    first = next(i for i, r in enumerate(ref) if r is not None)
    close(got[first:], ref[first:])
    # after 120 unchanged prices the forecast stays near 5% of the slow sigma, not 0.8^60 of it
    assert got[519][0] > 0.05 * math.sqrt(slow[519])
    unfloored = feed(FilteredHistorical(dataclasses.replace(s, floor_share=0.0)), x)
    assert unfloored[519][0] < 1e-8  # what the floor prevents
    assert max(abs(z_) for z_ in z) < 50  # the one-tick move is not a residual of 1e4 sigmas


# --------------------------------------------------------------------------- Cornish-Fisher


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("w", [4, 30, 300])
def test_cornish_fisher_matches_scipy_moments_and_quad(name: str, w: int) -> None:
    x = stream(name, 700)
    first, got = warm(feed(CornishFisher(CornishFisherSettings(window=w)), x))
    assert first == w - 1
    idx = range(0, len(got), 7)  # quad on every 7th window keeps the test fast
    close(got[list(idx)], [ref_cf(sliding_window_view(x, w)[i]) for i in idx])


def test_moments_exact_on_extreme_values() -> None:
    """Exact power sums: 1e6 next to 1e-12 leaves no residue once it leaves the window."""
    x = stream("extreme", 3000)
    m = _Moments(40)
    for i, v in enumerate(x.tolist()):
        m.update(v)
        if i >= 39 and (i < 400 or i % 5 == 0):
            win = x[i - 39 : i + 1]
            mean, sd, g1, g2 = m.get()
            close((mean, sd), (np.mean(win), np.std(win, ddof=1)))
            if np.std(win) > 0:
                np.testing.assert_allclose((g1, g2), (stats.skew(win), stats.kurtosis(win)), rtol=1e-7)


@pytest.mark.parametrize("h", [2, 10, 60])
def test_cornish_fisher_horizon_scales_cumulants(h: int) -> None:
    x = stream("clustered", 300)
    model = CornishFisher()
    for r in x.tolist():
        model.update(r)
    f = model.forecast_horizon(h)
    close((f.var, f.es), ref_cf(x, ALPHA, h))


# --------------------------------------------------------------------------- Student-t


def ref_nu(win: np.ndarray, nu_min: float, nu_max: float) -> float:
    k = stats.kurtosis(win)
    nu = 4 + 6 / k if k > 6 / (nu_max - 4) else nu_max
    return min(max(nu, nu_min), nu_max)


@pytest.mark.parametrize("nu", [4.0, 4.01, 4.7, 9.0, 30.0, 400.0, 1000.0])
@pytest.mark.parametrize("p", [1e-6, 0.001, 0.01, 0.05, 0.2, 0.49])
def test_t_quantile_and_cdf_against_scipy(nu: float, p: float) -> None:
    close(t_ppf(p, nu), stats.t.ppf(p, nu))
    close(t_cdf(stats.t.ppf(p, nu), nu), p)


@pytest.mark.parametrize("name", list(STREAMS))
def test_student_t_matches_scipy(name: str) -> None:
    x = stream(name, 600)
    s = StudentTSettings(window=100, min_periods=20, nu_max=60.0)
    first, got = warm(feed(StudentT(s), x))
    assert first == 99
    sig = np.sqrt(ref_ewma_var(x, 0.94))
    idx = list(range(0, len(got), 10))
    wins = sliding_window_view(x, 100)
    ref = [ref_t(sig[first + i], ref_nu(wins[i], 4.0, 60.0)) for i in idx]
    close(got[idx], ref)


def test_student_t_horizon_against_monte_carlo() -> None:
    """nu_h = 4 + h (nu - 4) matches variance and kurtosis of the h-sum; its VaR within 3% of simulation."""
    x = clustered(np.random.default_rng(11), 300)
    model = StudentT()
    for r in x.tolist():
        model.update(r)
    nu, sigma = model.nu(), math.sqrt(ref_ewma_var(x, 0.94)[-1])
    assert 4 < nu < 10
    rng = np.random.default_rng(12)
    for h in (1, 4, 16):
        sims = rng.standard_t(nu, (400_000, h)).sum(axis=1) * sigma * math.sqrt((nu - 2) / nu)
        f = model.forecast_horizon(h)
        np.testing.assert_allclose((f.var, f.es), ref_tail(sims), rtol=0.03)


# --------------------------------------------------------------------------- GARCH(1,1)


def ref_garch(x: np.ndarray, w: int, a: float, b: float) -> list:
    out, s2 = [], None
    for t in range(len(x)):
        if t + 1 < w:
            out.append(None)
            continue
        vbar = float(np.mean(x[t + 1 - w : t + 1] ** 2))
        s2 = vbar if s2 is None else (1 - a - b) * vbar + a * x[t] ** 2 + b * s2
        out.append((s2, vbar))
    return out


@pytest.mark.parametrize("name", list(ALL_STREAMS))
def test_garch_matches_batch_recursion(name: str) -> None:
    x = stream(name, 700)
    got = feed(Garch(GarchSettings(window=50, arch=0.1, garch=0.85)), x)
    ref = ref_garch(x, 50, 0.1, 0.85)
    assert [g is None for g in got] == [r is None for r in ref]
    close(got[49:], [ref_normal(math.sqrt(s2)) for s2, _ in ref[49:]])


@pytest.mark.parametrize("h", [1, 2, 30, 1000])
def test_garch_horizon_sums_the_variance_forecasts(h: int) -> None:
    x = stream("clustered", 400)
    model = Garch(GarchSettings(window=100, arch=0.1, garch=0.85))
    for r in x.tolist():
        model.update(r)
    s2, vbar = ref_garch(x, 100, 0.1, 0.85)[-1]
    total, step = 0.0, s2
    for _ in range(h):  # E[s2_(t+k)] = (1 - a - b) vbar + (a + b) E[s2_(t+k-1)]
        total += step
        step = 0.05 * vbar + 0.95 * step
    f = model.forecast_horizon(h)
    close((f.var, f.es), ref_normal(math.sqrt(total)))


# --------------------------------------------------------------------------- contracts


MODELS = {
    Historical: lambda: Historical(HistoricalSettings(window=50)),
    EwmaNormal: lambda: EwmaNormal(EwmaSettings(min_periods=10)),
    FilteredHistorical: lambda: FilteredHistorical(FhsSettings(min_periods=10, window=50, sims=200)),
    CornishFisher: lambda: CornishFisher(CornishFisherSettings(window=50)),
    StudentT: lambda: StudentT(StudentTSettings(window=50, min_periods=10)),
    Garch: lambda: Garch(GarchSettings(window=50)),
}


def _answers(model, xs) -> list:
    out = []
    for r in xs:
        model.update(r)
        out.append((model.forecast(), model.forecast(0.01), model.forecast_horizon(5)))
    return out


@pytest.mark.parametrize("cls", list(MODELS), ids=lambda c: c.__name__)
def test_pickle_round_trip_mid_stream_continues_identically(cls) -> None:
    xs = stream("clustered", 400).tolist()
    model = MODELS[cls]()
    _answers(model, xs[:200])
    copy = pickle.loads(pickle.dumps(model))
    assert _answers(model, xs[200:]) == _answers(copy, xs[200:])


@pytest.mark.parametrize("cls", list(MODELS), ids=lambda c: c.__name__)
def test_none_until_warm_then_positive_forecasts(cls) -> None:
    model = MODELS[cls]()
    got = [_answers(model, [r])[0] for r in stream("clustered", 300).tolist()]
    first = next(i for i, g in enumerate(got) if g[0] is not None)
    assert first > 0
    assert all(g == (None, None, None) for g in got[:first])
    for one, deep, horizon in got[first:]:
        assert 0 < one.var <= one.es and 0 < deep.var <= deep.es and 0 < horizon.var <= horizon.es
        assert one.var < deep.var and (one.alpha, deep.alpha, horizon.horizon) == (0.05, 0.01, 5)


@pytest.mark.parametrize("cls", list(MODELS), ids=lambda c: c.__name__)
def test_bad_calls_raise(cls) -> None:
    model = MODELS[cls]()
    with pytest.raises(ValueError, match="finite"):
        model.update(math.nan)
    with pytest.raises(ValueError, match="alpha"):
        model.forecast(0.5)
    with pytest.raises(ValueError, match="h_bars"):
        model.forecast_horizon(0)


SETTINGS = [
    HistoricalSettings,
    EwmaSettings,
    FhsSettings,
    CornishFisherSettings,
    StudentTSettings,
    GarchSettings,
]


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_settings_refuse_nan_infinities_and_wrong_types(cls) -> None:
    for f in dataclasses.fields(cls):
        for bad in (math.nan, math.inf, -math.inf, object(), True):
            if isinstance(bad, float) and field_types(cls)[f.name] is str:
                continue
            with pytest.raises(SettingsError, match=rf"{cls.__name__}\.{f.name} must be"):
                cls(**{f.name: bad})


def test_cross_field_rules() -> None:
    with pytest.raises(SettingsError, match=r"StudentTSettings\.nu_max must be >= nu_min"):
        StudentTSettings(nu_min=10.0, nu_max=8.0)
    with pytest.raises(SettingsError, match=r"GarchSettings\.garch must be < 1 - arch"):
        GarchSettings(arch=0.2, garch=0.8)
    with pytest.raises(SettingsError, match=r"FhsSettings\.quantile_method must be one of"):
        FhsSettings(quantile_method="nearest")
