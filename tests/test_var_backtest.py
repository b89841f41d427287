"""VaR/ES backtests (operators/risk/var_backtest.py) against scipy, Basel's table and batch recomputation."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import xlogy
from scipy.stats.contingency import chi2_contingency

from operators.risk.var_backtest import (
    GREEN,
    MODEL_RISK,
    RED,
    YELLOW,
    BacktestFigures,
    ModelRiskMonitor,
    VarBacktest,
    VarBacktestSettings,
    backtest_figures,
    binom_cdf,
    chi2_sf,
    christoffersen_ind,
    es_z2_p,
    kupiec_pof,
    traffic_light,
)
from schemas.records import RiskEvent
from schemas.settings import SettingsError

# --------------------------------------------------------------------------- the reference


def reference(hits: np.ndarray, loss: np.ndarray, es: np.ndarray, alpha: float) -> dict:
    """Every figure recomputed from the whole sample by likelihoods, numpy and scipy.stats."""
    t = len(hits)
    x = int(hits.sum())
    rate = x / t
    ll_null = xlogy(t - x, 1 - alpha) + xlogy(x, alpha)
    ll_alt = xlogy(t - x, 1 - rate) + xlogy(x, rate)
    pof = -2.0 * (ll_null - ll_alt)
    out = {
        "forecasts": t,
        "exceedances": x,
        "rate": rate,
        "pof_lr": pof,
        "pof_p": stats.chi2.sf(pof, 1),
        "binom_cdf": stats.binom.cdf(x, t, alpha),
        "es_z2": float(np.sum(loss * hits / (alpha * es))) / t - 1.0,
    }
    z2 = out["es_z2"]
    out["es_p"] = stats.norm.sf(z2 / math.sqrt((1 / alpha - 1) / t))
    cdf = out["binom_cdf"]
    out["zone"] = GREEN if cdf < 0.95 else YELLOW if cdf < 0.9999 else RED
    a, b = hits[:-1], hits[1:]
    n00, n01 = int(np.sum(~a & ~b)), int(np.sum(~a & b))
    n10, n11 = int(np.sum(a & ~b)), int(np.sum(a & b))
    out.update(n00=n00, n01=n01, n10=n10, n11=n11)
    if t < 2:
        out.update(ind_lr=None, ind_p=None, cc_lr=None, cc_p=None)
        return out
    p01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    p11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    p = (n01 + n11) / (t - 1)
    ll_markov = xlogy(n00, 1 - p01) + xlogy(n01, p01) + xlogy(n10, 1 - p11) + xlogy(n11, p11)
    ll_one = xlogy(n00 + n10, 1 - p) + xlogy(n01 + n11, p)
    ind = -2.0 * (ll_one - ll_markov)
    out.update(ind_lr=ind, ind_p=stats.chi2.sf(ind, 1), cc_lr=pof + ind, cc_p=stats.chi2.sf(pof + ind, 2))
    return out


P_OF = {"pof_p": ("pof_lr", 1), "ind_p": ("ind_lr", 1), "cc_p": ("cc_lr", 2)}


def assert_matches(fig: BacktestFigures, ref: dict) -> None:
    """Every figure equal to the reference's.

    A chi-square(1) p-value near an LR of 0 is 1 - sqrt(2 LR / pi): rounding
    of 1e-15 in the LR moves it by 1e-7. So a p-value is checked against
    scipy on the operator's own LR tightly, and against the reference loosely.
    """
    for name, want in ref.items():
        got = getattr(fig, name)
        if want is None or isinstance(want, (str, int)):
            assert got == want, name
        elif name in P_OF:
            lr, dof = P_OF[name]
            assert got == pytest.approx(stats.chi2.sf(getattr(fig, lr), dof), rel=1e-9, abs=1e-300), name
            assert got == pytest.approx(float(want), rel=1e-9, abs=1e-6), name
        else:
            assert got == pytest.approx(float(want), rel=1e-9, abs=1e-9), name


def stream(hits, mags, var: float = 1.0, es: float = 1.5) -> list[tuple[float, float, float]]:
    """(VaR, ES, ret) items: a hit loses var + 0.01 + mag, a miss var - mag (var itself is no hit)."""
    return [(var, es, -(var + 0.01 + m) if h else -(var - m)) for h, m in zip(hits, mags, strict=True)]


# --------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("dof", [1, 2])
def test_chi2_sf_matches_scipy(dof):
    for x in [0.0, 1e-300, 1e-12, 1e-3, 0.5, 1.0, 3.841458820694124, 5.99, 10.0, 50.0, 700.0, 1e4]:
        assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-12, abs=1e-300)
    assert chi2_sf(-1.0, dof) == 1.0


def test_chi2_sf_refuses_other_degrees_of_freedom():
    with pytest.raises(ValueError, match="1 or 2 degrees of freedom, got 3"):
        chi2_sf(1.0, 3)


@pytest.mark.parametrize("p", [0.001, 0.01, 0.025, 0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("n", [1, 2, 7, 50, 250, 1000, 2500])
def test_binom_cdf_matches_scipy_for_every_count(n, p):
    ks = np.arange(-1, n + 2)
    want = stats.binom.cdf(ks, n, p)
    got = np.array([binom_cdf(int(k), n, p) for k in ks])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


def test_binom_cdf_on_a_million_forecasts():
    n, p = 1_000_000, 0.05
    sd = math.sqrt(n * p * (1 - p))
    for z in (-8, -3, -1, 0, 0.5, 1.645, 3, 8):
        k = int(n * p + z * sd)
        assert binom_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-6, abs=1e-15)


def test_basel_traffic_light_table_at_250_observations_and_99_percent():
    # Basel Committee (1996), supervisory framework for backtesting, Table 1 (cumulative %).
    table = [8.11, 28.58, 54.32, 75.81, 89.22, 95.88, 98.63, 99.60, 99.89, 99.97, 99.99]
    for k, pct in enumerate(table):
        assert round(100 * binom_cdf(k, 250, 0.01), 2) == pytest.approx(pct, abs=1e-9), k
    zones = [traffic_light(binom_cdf(k, 250, 0.01)) for k in range(15)]
    assert zones == [GREEN] * 5 + [YELLOW] * 5 + [RED] * 5


def test_traffic_light_limits_are_inclusive_from_below():
    assert [traffic_light(c) for c in (0.0, 0.9499, 0.95, 0.99989, 0.9999, 1.0)] == [
        GREEN,
        GREEN,
        YELLOW,
        YELLOW,
        RED,
        RED,
    ]
    assert traffic_light(0.5, yellow=0.4, red=0.6) == YELLOW


# --------------------------------------------------------------------------- the statistics


def test_kupiec_matches_the_likelihood_ratio_and_scipy():
    rng = np.random.default_rng(1)
    for _ in range(300):
        t = int(rng.integers(1, 3000))
        x = int(rng.integers(0, t + 1))
        alpha = float(rng.choice([0.01, 0.025, 0.05, 0.1, 0.5]))
        ref = reference(np.arange(t) < x, np.zeros(t), np.ones(t), alpha)
        lr = kupiec_pof(x, t, alpha)
        assert lr == pytest.approx(ref["pof_lr"], rel=1e-9, abs=1e-9)
        assert chi2_sf(lr, 1) == pytest.approx(ref["pof_p"], rel=1e-9, abs=1e-300)


def test_kupiec_at_no_and_all_exceedances():
    assert kupiec_pof(0, 1000, 0.05) == pytest.approx(-2 * 1000 * math.log(0.95), rel=1e-12)
    assert kupiec_pof(1000, 1000, 0.05) == pytest.approx(-2 * 1000 * math.log(0.05), rel=1e-12)
    assert kupiec_pof(0, 1, 0.05) == pytest.approx(-2 * math.log(0.95), rel=1e-12)
    assert kupiec_pof(50, 1000, 0.05) == pytest.approx(0.0, abs=1e-12)  # at the nominal rate


def test_christoffersen_ind_is_the_g_test_of_the_transition_table():
    rng = np.random.default_rng(2)
    for _ in range(200):
        table = rng.integers(1, 400, size=4)
        want = chi2_contingency(table.reshape(2, 2), correction=False, lambda_="log-likelihood")
        got = christoffersen_ind(*(int(v) for v in table))
        assert got == pytest.approx(want.statistic, rel=1e-9, abs=1e-9)
        assert chi2_sf(got, 1) == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)


def test_christoffersen_ind_with_zero_transition_counts():
    # 0 ln 0 = 0: a clustered pair and no other exceedance, or none at all.
    hits = np.array([False] * 40 + [True, True] + [False] * 40)
    ref = reference(hits, np.zeros(82), np.ones(82), 0.05)
    assert ref["n11"] == 1
    assert christoffersen_ind(ref["n00"], ref["n01"], ref["n10"], ref["n11"]) == pytest.approx(
        ref["ind_lr"], rel=1e-12
    )
    assert christoffersen_ind(99, 0, 0, 0) == 0.0  # no exceedance
    assert christoffersen_ind(0, 0, 0, 99) == 0.0  # nothing but exceedances
    assert christoffersen_ind(0, 50, 49, 0) == pytest.approx(
        reference(np.arange(100) % 2 == 1, np.zeros(100), np.ones(100), 0.5)["ind_lr"], rel=1e-12
    )  # strictly alternating: n00 = n11 = 0
    assert christoffersen_ind(0, 0, 0, 0) == 0.0


@pytest.mark.parametrize(
    "hits",
    [
        [False],
        [True],
        [False] * 30,
        [True] * 30,
        [True, False] * 15,
        [False] * 29 + [True],
        [True] + [False] * 29,
    ],
    ids=["one_miss", "one_hit", "none", "all", "alternating", "last_only", "first_only"],
)
def test_figures_edge_cases_against_the_reference(hits):
    items = stream(hits, [0.2] * len(hits))
    bt = VarBacktest(VarBacktestSettings(window=1000, alpha=0.05, min_forecasts=1))
    for item in items:
        bt.update(*item)
    loss = np.array([-r for _, _, r in items])
    ref = reference(np.array(hits), loss, np.full(len(hits), 1.5), 0.05)
    assert_matches(bt.get(), ref)
    assert_matches(bt.cumulative(), ref)
    if len(hits) < 2:
        assert bt.get().ind_lr is None and bt.get().cc_p is None
    if not any(hits):
        assert bt.get().es_z2 == -1.0


def test_z2_sign_and_p_value():
    rng = np.random.default_rng(3)
    alpha, var, es = 0.025, 1.959963984540054, 2.337802597085977  # N(0, 1) at 97.5%
    rejections, z2s = 0, []
    for _ in range(400):
        bt = VarBacktest(VarBacktestSettings(window=250, alpha=alpha, min_forecasts=250))
        for r in rng.normal(0, 1, 250):
            bt.update(var, es, float(r))
        z2s.append(bt.get().es_z2)
        rejections += bt.get().es_p < 0.05
    assert abs(np.mean(z2s)) < 0.05  # unbiased when the model is right
    assert 0.02 < rejections / 400 < 0.09  # about its 5% size
    bt = VarBacktest(VarBacktestSettings(window=250, alpha=alpha, min_forecasts=250))
    for r in rng.normal(0, 1.5, 250):  # the model forecasts a sigma of 1, the truth is 1.5
        bt.update(var, es, float(r))
    f = bt.get()
    assert f.es_z2 > 0.7 and f.es_p < 0.01


def test_z2_critical_value_is_near_acerbi_szekely_0_7_at_their_setting():
    crit = stats.norm.isf(0.05) * math.sqrt((1 / 0.025 - 1) / 250)
    assert 0.6 < crit < 0.75
    assert es_z2_p(crit, 250, 0.025) == pytest.approx(0.05, rel=1e-12)


# --------------------------------------------------------------------------- the operator


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.booleans(), st.floats(0.0, 3.0)), min_size=1, max_size=150),
    window=st.integers(2, 25),
    alpha=st.sampled_from([0.01, 0.05, 0.3]),
    es=st.floats(1.0, 4.0),
)
def test_rolling_and_cumulative_equal_batch_recomputation_at_every_step(rows, window, alpha, es):
    hits = [h for h, _ in rows]
    items = stream(hits, [m for _, m in rows], var=1.0, es=es)
    bt = VarBacktest(VarBacktestSettings(window=window, alpha=alpha, min_forecasts=1))
    h = np.array(hits)
    loss = np.array([-r for _, _, r in items])
    es_arr = np.full(len(items), es)
    for k, item in enumerate(items):
        assert bt.update(*item)
        lo = max(0, k + 1 - window)
        assert bt.n == k + 1 - lo
        assert_matches(bt.get(), reference(h[lo : k + 1], loss[lo : k + 1], es_arr[lo : k + 1], alpha))
        assert_matches(bt.cumulative(), reference(h[: k + 1], loss[: k + 1], es_arr[: k + 1], alpha))


def test_exceedance_is_strict_and_var_es_may_vary_per_forecast():
    bt = VarBacktest(VarBacktestSettings(window=10, min_forecasts=1))
    rng = np.random.default_rng(4)
    var = rng.uniform(0.01, 0.03, 200)
    es = var * 1.3
    ret = rng.normal(0, 0.015, 200)
    ret[::17] = -var[::17]  # loss == VaR: not an exceedance
    for v, e, r in zip(var, es, ret, strict=True):
        bt.update(float(v), float(e), float(r))
    loss, lo = -ret, 190
    ref = reference(loss[lo:] > var[lo:], loss[lo:], es[lo:], 0.05)
    assert_matches(bt.get(), ref)
    assert_matches(bt.cumulative(), reference(loss > var, loss, es, 0.05))


def test_rolling_value_is_none_until_min_forecasts():
    bt = VarBacktest(VarBacktestSettings(window=20, min_forecasts=5))
    assert bt.get() is None and bt.cumulative() is None
    assert bt.snapshot().rolling is None
    values = []
    for _ in range(6):
        bt.update(0.02, 0.03, 0.0)
        values.append(bt.get())
    assert values[:4] == [None] * 4 and values[4].forecasts == 5
    assert bt.cumulative().forecasts == 6


def test_skips_what_is_not_a_forecast():
    bt = VarBacktest(VarBacktestSettings(window=5, min_forecasts=1))
    bad = [
        (None, 0.03, 0.0),
        (0.02, None, 0.0),
        (0.02, 0.03, None),
        (math.nan, 0.03, 0.0),
        (0.02, math.inf, 0.0),
        (0.02, 0.03, -math.inf),
        (0.02, 0.0, -0.05),
        (0.02, -0.01, -0.05),
    ]
    assert [bt.update(*item) for item in bad] == [False] * len(bad)
    assert bt.skipped == len(bad) and bt.get() is None and bt.cumulative() is None
    assert bt.update(0.02, 0.03, -0.05)
    assert bt.get().exceedances == 1 and bt.skipped == len(bad)


def test_long_stream_rolling_sum_does_not_drift():
    rng = np.random.default_rng(5)
    n, window = 200_000, 1000
    ret = rng.standard_t(3, n) * 0.01
    ret[::997] *= 1e6  # huge losses entering and leaving the window
    bt = VarBacktest(VarBacktestSettings(window=window, min_forecasts=window))
    for r in ret:
        bt.update(0.02, 0.03, float(r))
    loss = -ret
    hits = loss > 0.02
    ref = reference(hits[-window:], loss[-window:], np.full(window, 0.03), 0.05)
    assert_matches(bt.get(), ref)
    cum = reference(hits, loss, np.full(n, 0.03), 0.05)
    assert bt.cumulative().es_z2 == pytest.approx(cum["es_z2"], rel=1e-12)
    assert bt.cumulative().exceedances == cum["exceedances"]


def test_pickle_round_trip_mid_stream_continues_identically():
    rng = np.random.default_rng(6)
    items = [(0.02, 0.03, float(r)) for r in rng.normal(0, 0.015, 600)]
    bt = VarBacktest(VarBacktestSettings(window=100, min_forecasts=50))
    for item in items[:300]:
        bt.update(*item)
    copy = pickle.loads(pickle.dumps(bt))
    for item in items[300:]:
        bt.update(*item)
        copy.update(*item)
        assert copy.snapshot() == bt.snapshot()
    assert bt.get() is not None


def test_settings_reject_bad_values_with_the_field_name():
    for kwargs, field in [
        ({"window": 1}, "window"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"yellow": math.inf}, "yellow"),
        ({"min_forecasts": 0}, "min_forecasts"),
        ({"window": 100, "min_forecasts": 101}, "min_forecasts"),
        ({"yellow": 0.99, "red": 0.99}, "red"),
    ]:
        with pytest.raises(SettingsError, match=rf"VarBacktestSettings\.{field} must be"):
            VarBacktestSettings(**kwargs)
    s = VarBacktestSettings()
    assert (s.window, s.alpha, s.min_forecasts, s.yellow, s.red) == (1000, 0.05, 250, 0.95, 0.9999)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.window = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- the monitor


def _in_zone(zone: str) -> BacktestFigures:
    counts = {GREEN: 10, YELLOW: 20, RED: 30}[zone]
    fig = backtest_figures(250, counts, (249 - 2 * counts, counts, counts, 0), 0.0, 0.05)
    assert fig.zone == zone
    return fig


def test_monitor_raises_once_per_breach_with_hysteresis():
    mon = ModelRiskMonitor(VarBacktestSettings(), "ETH/USDT")
    zones = [GREEN, YELLOW, RED, RED, YELLOW, RED, YELLOW, GREEN, GREEN, YELLOW, RED, GREEN]
    events = [(k, mon.update(1000 + k, _in_zone(z))) for k, z in enumerate(zones)]
    said = [(k, e.action) for k, e in events if e is not None]
    assert said == [(2, "defensive"), (7, "clear"), (10, "defensive"), (11, "clear")]
    raised, cleared = events[2][1], events[7][1]
    assert isinstance(raised, RiskEvent)
    assert (raised.ts, raised.kind, raised.level, raised.symbol) == (1002, MODEL_RISK, 2, "ETH/USDT")
    assert raised.value == pytest.approx(_in_zone(RED).binom_cdf) and raised.threshold == 0.9999
    assert "30 of 250" in raised.message and "red zone" in raised.message
    assert (cleared.kind, cleared.level, cleared.threshold) == (MODEL_RISK, 0, 0.95)
    assert cleared.value < 0.95 and not mon.breached


def test_monitor_ignores_missing_figures():
    mon = ModelRiskMonitor()
    assert mon.update(1, None) is None
    assert mon.update(2, _in_zone(RED)) is not None
    assert mon.update(3, None) is None and mon.breached


def test_monitor_on_a_model_that_understates_risk_for_a_while():
    # Forecasts of N(0, 1) at 95%; the truth's sigma is 1.6 on items 1000..1299.
    rng = np.random.default_rng(7)
    sigma = np.ones(3000)
    sigma[1000:1300] = 1.6
    ret = rng.normal(0, 1, 3000) * sigma
    s = VarBacktestSettings(window=250, alpha=0.05, min_forecasts=250)
    bt, mon = VarBacktest(s), ModelRiskMonitor(s)
    events = []
    for k, r in enumerate(ret):
        bt.update(1.6448536269514722, 2.0627128075074257, float(r))
        ev = mon.update(k, bt.get())
        if ev is not None:
            events.append((k, ev.action))
    assert [a for _, a in events] == ["defensive", "clear"]
    (k_red, _), (k_clear, _) = events
    assert 1000 < k_red < 1300 < k_clear < 1300 + 250 + 1  # cleared once the bad stretch has left
    # independently: the rolling count's binomial probability, by scipy, crosses 99.99% then 95%
    hits = (-ret > 1.6448536269514722).astype(int)
    counts = np.convolve(hits, np.ones(250, dtype=int))[249:3000]  # counts[j]: items j .. j + 249
    cdf = stats.binom.cdf(counts, 250, 0.05)
    first_red = 249 + int(np.argmax(cdf >= 0.9999))
    first_green = first_red + int(np.argmax(cdf[first_red - 249 :] < 0.95))
    assert (
        events == [(first_red, "defensive"), (first_green, "clear")] == [(1135, "defensive"), (1499, "clear")]
    )


def test_zone_from_cached_limits_equals_the_binomial_zone():
    """VarBacktest.zone (limits cached per window size) agrees with get().zone at every step."""
    import numpy as np

    from operators.risk.var_backtest import VarBacktest, VarBacktestSettings

    rng = np.random.default_rng(5)
    bt = VarBacktest(VarBacktestSettings(window=300, min_forecasts=40))
    sigma = np.where(np.arange(2000) % 700 < 200, 1.7, 1.0)  # bursts push it to yellow and red
    zones = set()
    for r in rng.normal(0, 1, 2000) * sigma:
        bt.update(1.6448536269514722, 2.0627128075074257, float(r))
        fig = bt.get()
        assert bt.zone() == (None if fig is None else fig.zone)
        zones.add(bt.zone())
    assert zones == {None, "green", "yellow", "red"}
