"""``operators.risk.stress`` against independent numpy computations, and ``qbtc stress`` end to end."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from flows.stress import Book, History, horizon_bars, load_history, parse_positions, result_row, store_book
from operators.risk.settings import RiskSettings
from operators.risk.stress import (
    BLOCK,
    T_COPULA,
    StressInput,
    StressSettings,
    _Draws,
    _period_starts,
    ewma_filter,
    fit_dof,
    kendall_correlation,
    stress,
)
from schemas.ddl import TABLES
from schemas.settings import SettingsError
from sinks.store_sink import record_columns

DAY = 86_400_000
T0 = 1_700_000_000_000 // DAY * DAY + DAY // 2  # noon UTC
BAR = 60_000


def _input(r, values, equity=100_000.0, start=T0, peak=None):
    return StressInput(np.asarray(r, float), np.asarray(values, float), equity, start, BAR, peak)


def _oracle_filter(r: np.ndarray, decay: float, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The EWMA filter, one bar at a time in plain Python."""
    n, k = r.shape
    z, last = np.zeros((n - m, k)), np.zeros(k)
    for j in range(k):
        s2 = sum(r[i, j] ** 2 for i in range(m)) / m
        for t in range(m, n):
            z[t - m, j] = r[t, j] / math.sqrt(s2)
            s2 = decay * s2 + (1 - decay) * r[t, j] ** 2
        last[j] = math.sqrt(s2)
    return z, last


def test_ewma_filter_matches_a_plain_loop():
    r = np.random.default_rng(0).standard_t(5, (400, 3)) * 0.01
    z, sigma, _ = ewma_filter(r, 0.94, 30)
    z_ref, sigma_ref = _oracle_filter(r, 0.94, 30)
    np.testing.assert_allclose(z, z_ref, rtol=1e-10)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-10)


def test_one_bar_fhs_is_the_empirical_distribution_of_the_rescaled_residuals():
    """h = 1: each scenario is V * expm1(sigma * z) for one residual drawn: VaR, ES and the
    kill-switch odds are those of that empirical distribution."""
    r = np.random.default_rng(1).standard_t(4, (3_000, 1)) * 0.004
    z, sigma = _oracle_filter(r, 0.94, 30)
    value, equity = 400_000.0, 100_000.0
    pnl = value * np.expm1(sigma[0] * z[:, 0])
    risk = RiskSettings(
        kill_drawdown=0.04, kill_daily_loss=0.02, kill_weekly_loss=0.03, kill_monthly_loss=0.05
    )
    s = StressSettings(scenarios=40_000, horizon_bars=1, recovery_horizons=0)
    out = stress(_input(r, [value], equity), s, risk)
    q5, q1 = np.quantile(pnl, 0.05), np.quantile(pnl, 0.01)
    assert out.var95 == pytest.approx(-q5, rel=0.04)
    assert out.var99 == pytest.approx(-q1, rel=0.06)
    assert out.es95 == pytest.approx(-pnl[pnl <= q5].mean(), rel=0.04)
    for name, limit in (
        ("drawdown", 0.04),
        ("daily_loss", 0.02),
        ("weekly_loss", 0.03),
        ("monthly_loss", 0.05),
    ):
        p = float((-pnl / equity > limit).mean())
        se = math.sqrt(p * (1 - p) / s.scenarios)
        assert abs(out.kill[name] - p) < 4 * se + 1e-4, name
    assert out.kill["any"] == pytest.approx(out.kill["daily_loss"])  # the lowest threshold decides
    assert math.isnan(out.recovery_mean_bars) and out.recovery_cap_bars == 0


def test_normal_residuals_give_the_analytic_var_over_the_horizon():
    """Normal returns, sigma held: the h-bar log return is N(h mu_z sigma, h var_z sigma^2)."""
    r = np.random.default_rng(2).normal(0.0, 0.003, (20_000, 1))
    h, value = 16, 200_000.0
    out = stress(_input(r, [value]), StressSettings(scenarios=40_000, horizon_bars=h, resimulate_sigma=False))
    z, sigma = _oracle_filter(r, 0.94, 30)
    np.testing.assert_allclose(out.sigma, sigma, rtol=1e-10)
    mu, sd = h * z.mean() * sigma[0], math.sqrt(h * z.var()) * sigma[0]
    for alpha, var, es in ((0.05, out.var95, out.es95), (0.01, out.var99, out.es99)):
        q = stats.norm.ppf(alpha)
        assert var == pytest.approx(-value * math.expm1(mu + q * sd), rel=0.04)
        # ES of a lognormal position: E[V (e^X - 1) | X <= x_q]
        es_ref = -value * (math.exp(mu + sd**2 / 2) * stats.norm.cdf(q - sd) / alpha - 1)
        assert es == pytest.approx(es_ref, rel=0.05)


def test_seeded_runs_repeat_and_batching_does_not_change_them():
    r = np.random.default_rng(3).standard_t(4, (800, 2)) * 0.005
    inp = _input(r, [300_000.0, -150_000.0])
    for method in ("fhs", T_COPULA):
        base = StressSettings(scenarios=3 * BLOCK + 17, horizon_bars=12, method=method, seed=7)
        one = stress(inp, StressSettings(**{**_fields(base), "batch_size": 10_000}))
        again = stress(inp, base)
        small = stress(inp, StressSettings(**{**_fields(base), "batch_size": 1}))
        other = stress(inp, StressSettings(**{**_fields(base), "seed": 8}))
        for o in (again, small):
            np.testing.assert_array_equal(o.pnl, one.pnl)
            assert o.kill == one.kill
            assert (o.recovery_mean_bars, o.recovery_unrecovered) == (
                one.recovery_mean_bars,
                one.recovery_unrecovered,
            )
        assert not np.array_equal(other.pnl, one.pnl)


def _fields(s: StressSettings) -> dict:
    return {name: getattr(s, name) for name in s.__dataclass_fields__}


def test_progress_reports_every_batch():
    r = np.random.default_rng(4).normal(0, 0.01, (200, 1))
    seen: list = []
    stress(
        _input(r, [1_000.0]),
        StressSettings(scenarios=2_300, batch_size=1_000),
        progress=lambda *a: seen.append(a),
    )
    assert seen == [(1_000, 2_300), (2_000, 2_300), (2_300, 2_300)]


def test_t_copula_recovers_the_correlation_and_the_tails_dependence():
    rho, nu = 0.7, 4.0
    x = stats.multivariate_t(shape=[[1, rho], [rho, 1]], df=nu).rvs(6_000, random_state=5)
    est = kendall_correlation(x)
    assert est[0, 1] == pytest.approx(rho, abs=0.03)
    assert 3.0 <= fit_dof(x, est) <= 6.0
    z = x / x.std(axis=0)
    draws = _Draws(z, T_COPULA, est, 4.0)(np.random.default_rng(6), 20_000, 1)[:, 0]
    tau_data = stats.kendalltau(z[:, 0], z[:, 1]).statistic
    tau_sim = stats.kendalltau(draws[:, 0], draws[:, 1]).statistic
    assert tau_sim == pytest.approx(tau_data, abs=0.03)
    for j in range(2):  # marginals: the symbol's own residuals
        assert stats.ks_2samp(draws[:, j], z[:, j]).statistic < 0.03
    # independent symbols: a copula near the Gaussian with zero correlation
    y = np.random.default_rng(7).normal(size=(3_000, 2))
    assert abs(kendall_correlation(y)[0, 1]) < 0.05 and fit_dof(y, kendall_correlation(y)) >= 20


def test_fhs_keeps_the_cross_correlation():
    """Opposite positions in two strongly correlated symbols hedge each other under FHS."""
    rng = np.random.default_rng(8)
    common = rng.normal(0, 0.004, 4_000)
    r = np.column_stack([common + rng.normal(0, 0.0005, 4_000), common + rng.normal(0, 0.0005, 4_000)])
    s = StressSettings(scenarios=5_000, horizon_bars=10)
    hedged = stress(_input(r, [100_000.0, -100_000.0]), s)
    alone = stress(_input(r, [100_000.0, 0.0]), s)
    assert hedged.var95 < 0.3 * alone.var95


def test_period_starts_follow_utc_days():
    midnight = T0 + DAY // 2
    starts = _period_starts(midnight - 2 * BAR, BAR, 5)
    assert starts[0].tolist() == [0, 1, 1, 1, 1]  # the bar closing at midnight opens the new day
    assert _period_starts(T0, BAR, 5)[0].tolist() == [0] * 5


def test_drawdown_counts_from_the_given_peak():
    r = np.random.default_rng(9).normal(0, 0.002, (500, 1))
    s = StressSettings(scenarios=2_000, horizon_bars=5)
    fresh = stress(_input(r, [50_000.0]), s)
    below = stress(_input(r, [50_000.0], peak=100_000.0 / 0.851), s)  # already 14.9% down
    assert fresh.kill["drawdown"] == 0.0
    assert below.kill["drawdown"] > 0.3


def test_recovery_with_a_drift_is_quick_and_without_one_often_capped():
    rng = np.random.default_rng(10)
    up = rng.normal(0.001, 0.003, (2_000, 1))
    flat = rng.normal(0.0, 0.003, (2_000, 1))
    s = StressSettings(scenarios=2_000, horizon_bars=10, recovery_horizons=5)
    quick, slow = stress(_input(up, [100_000.0]), s), stress(_input(flat, [100_000.0]), s)
    assert 1.0 <= quick.recovery_mean_bars < slow.recovery_mean_bars <= 50
    assert quick.recovery_unrecovered < 0.02 < slow.recovery_unrecovered < 1.0
    assert quick.recovery_cap_bars == 50


def test_bad_inputs_and_settings():
    r = np.zeros((100, 1))
    with pytest.raises(ValueError, match="one per symbol"):
        stress(_input(r, [1.0, 2.0]))
    with pytest.raises(ValueError, match="at least min_periods"):
        stress(_input(r[:10], [1.0]))
    with pytest.raises(SettingsError, match="StressSettings.method must be one of"):
        StressSettings(method="garch")
    out = stress(_input(r, [1.0]), StressSettings(scenarios=600))  # no moves: no risk, not NaN
    assert out.var95 == 0.0 and out.kill["any"] == 0.0


# --------------------------------------------------------------------------- flows/stress.py


def test_parse_positions_and_horizon():
    assert parse_positions(["A/B=1", "A/B=-0.5"]) == {"A/B": 0.5}
    for bad in ("A/B", "=1", "A/B=x", "A/B=nan"):
        with pytest.raises(Exception, match="expected SYMBOL=QTY"):
            parse_positions([bad])
    assert horizon_bars("4h", 900_000) == 16
    for bad in ("0", "-3", "xs", "", "1.5"):
        with pytest.raises(Exception, match="--horizon"):
            horizon_bars(bad, 1_000)


class _FakeStore:
    def __init__(self, fills, portfolio):
        self.answers = {"fills": fills, "portfolio": portfolio}

    def query(self, sql):
        table = "fills" if "FROM fills" in sql else "portfolio"
        return type("R", (), {"result_rows": self.answers[table]})()


class _Bars:
    def __init__(self, rows):
        self.rows = rows

    def query(self, sql):
        return type("R", (), {"result_rows": self.rows})()


def test_load_history_aligns_the_grid_and_carries_missing_bars():
    rows = [("A/B", 1_000, 10.0), ("C/D", 1_000, 5.0), ("A/B", 1_500, 11.0), ("C/D", 3_000, 6.0)]
    rows += [("A/B", 3_000, 12.0), ("A/B", 4_000, 13.0), ("C/D", 4_000, 7.0), ("E/F", 1_250, 1.0)]
    rows.sort(key=lambda r: r[1])
    hist = load_history(_Bars(rows), ["A/B", "C/D"], None, None)
    assert hist.bar_ms == 500 and hist.ts.tolist() == list(range(1_000, 4_001, 500))
    assert hist.closes[:, 1].tolist() == [5.0, 5.0, 5.0, 5.0, 6.0, 6.0, 7.0]  # C/D's missing bars carried
    np.testing.assert_allclose(hist.returns(), np.diff(np.log(hist.closes), axis=0))
    since = load_history(_Bars(rows), ["A/B", "C/D"], 2_100, None)
    assert since.ts[0] == 2_500
    last = load_history(_Bars(rows), ["A/B", "C/D"], None, 3)
    assert last.ts.tolist() == [2_500, 3_000, 3_500, 4_000]
    with pytest.raises(Exception, match="too few"):
        load_history(_Bars(rows), ["A/B", "C/D"], 3_600, None)


def test_store_book_nets_fills_and_reads_the_latest_equity():
    # (symbol, net qty, traded qty): C/D is flat, E/F nets to rounding dust of what it traded
    fills = [("A/B", 1.5, 2.5), ("C/D", 0.0, 4.0), ("E/F", 6.5e-10, 3e4)]
    book = store_book(_FakeStore(fills, [(90_000.0, 0.1)]), None)
    assert book.qty == {"A/B": 1.5} and book.equity == 90_000.0 and book.peak == pytest.approx(100_000.0)
    assert store_book(_FakeStore([("A/B", 1.5, 1.5)], []), 5_000.0).equity == 5_000.0
    with pytest.raises(Exception, match="give --equity"):
        store_book(_FakeStore([("A/B", 1.5, 1.5)], []), None)
    with pytest.raises(Exception, match="empty portfolio"):
        store_book(_FakeStore([("A/B", 0.0, 2.0)], [(1.0, 0.0)]), None)


def test_the_result_row_is_the_tables_columns():
    r = np.random.default_rng(11).normal(0, 0.01, (100, 1))
    inp = _input(r, [1_000.0])
    s = StressSettings(scenarios=600)
    hist = History(("A/B",), np.arange(101) * BAR, np.exp(np.cumsum(np.r_[0, r[:, 0]])), BAR)
    row = result_row("id", inp, hist, s, stress(inp, s))
    assert tuple(record_columns("stress", [row])) == TABLES["stress"].column_names
    assert row.positions == "A/B=1000" and row.var95_share == pytest.approx(row.var95 / 100_000.0)
    assert isinstance(Book({}, 1.0, None, ""), Book)


# --------------------------------------------------------------------------- qbtc stress


def qbtc(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """A store with 1-second bars of two correlated symbols (40 minutes of ticks)."""
    where = tmp_path_factory.mktemp("stress")
    rng = np.random.default_rng(12)
    lines, prices = ["ts,symbol,price,qty"], {"BTC/USDT": 40_000.0, "ETH/USDT": 2_000.0}
    for k in range(2_400):
        common = rng.normal(0, 0.0008)
        for sym in prices:
            prices[sym] *= math.exp(common + rng.normal(0, 0.0005))
            lines.append(f"{T0 + k * 1_000},{sym},{prices[sym]:.4f},{rng.uniform(0.01, 1):.4f}")
    (where / "ticks.csv").write_text("\n".join(lines) + "\n")
    out = qbtc("replay", "ticks.csv", "--store", "chdb://s.chdb", "--quiet", cwd=where)
    assert out.returncode == 0, out.stderr
    return where


def test_qbtc_stress_prints_the_summary_and_stores_one_row_per_run(replayed):
    args = ["stress", "--store", "chdb://s.chdb", "--position", "BTC/USDT=0.5", "--position", "ETH/USDT=-3"]
    args += ["--equity", "50000", "--scenarios", "10000", "--horizon", "2m"]
    out = qbtc(*args, cwd=replayed)
    assert out.returncode == 0, out.stderr
    for words in (
        "10,000 scenarios (fhs, seed 0) of 120 bars of 1s",
        "VaR 95%",
        "ES 99%",
        "worst",
        "kill switch within the horizon: drawdown > 15%",
        "time to recover a loss",
        "stored: stress",
    ):
        assert words in out.stdout, words
    assert "10,000/10,000 scenarios" in out.stderr
    again = qbtc(*args, "--quiet", cwd=replayed)
    assert again.returncode == 0 and again.stderr == ""
    copula = qbtc(*args, "--method", "t-copula", "--quiet", cwd=replayed)
    assert copula.returncode == 0, copula.stderr
    query = "SELECT method, scenarios, horizon_bars, positions, var95 > 0, var99 >= var95 FROM stress FINAL"
    query += " ORDER BY method"
    rows = qbtc("sql", query, "--store", "chdb://s.chdb", "--format", "csv", cwd=replayed)
    lines = rows.stdout.strip().splitlines()
    assert len(lines) == 3  # header, fhs (stored twice, one row), t_copula
    assert lines[1].startswith('fhs,10000,120,"BTC/USDT=') and lines[1].endswith(",1,1")
    assert lines[2].startswith("t_copula,10000,120,")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--position", "XRP/USDT=1", "--equity", "10"], "unknown symbol XRP/USDT: no bars in the store"),
        ([], "empty portfolio: the store's fills table nets to no position"),
        (["--position", "BTC/USDT=1"], "--position needs --equity"),
        (
            ["--position", "BTC/USDT=1", "--equity", "10", "--scenarios", "0"],
            "StressSettings.scenarios must be",
        ),
        (["--position", "BTC/USDT=1", "--equity", "10", "--horizon", "soon"], "--horizon 'soon'"),
        (["--position", "BTC/USDT=1", "--equity", "-1"], "--equity must be a finite number > 0"),
        (["--position", "BTC/USDT=1", "--equity", "10", "--bars", "1"], "--bars must be >= 2"),
    ],
)
def test_qbtc_stress_errors_are_one_line(replayed, args, words):
    out = qbtc("stress", "--store", "chdb://s.chdb", *args, cwd=replayed)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and words in out.stderr, out.stderr


def test_qbtc_stress_without_bars(tmp_path):
    out = qbtc("stress", "--store", "chdb://e.chdb", "--position", "A/B=1", "--equity", "5", cwd=tmp_path)
    assert out.returncode == 2 and "the store has no bars" in out.stderr


def test_a_run_of_unchanged_prices_does_not_blow_up_the_filter():
    """After 400 unchanged closes the EWMA would be ~0 and the next tick a residual of 1e40 sigmas."""
    rng = np.random.default_rng(3)
    r = np.concatenate([rng.normal(0, 0.002, 300), np.zeros(400), [2e-5], rng.normal(0, 0.002, 50)])[:, None]
    z, sigma, _ = ewma_filter(r, 0.94, 30)
    assert np.isfinite(z).all() and np.abs(z).max() < 50 and sigma[0] > 0
    res = stress(_input(r, [1_000.0]), StressSettings(scenarios=1000, horizon_bars=60))
    assert all(math.isfinite(v) for v in (res.var95, res.es95, res.worst))


def test_a_long_horizon_keeps_the_resimulated_sigma_bounded():
    """IGARCH re-simulation over 1,440 bars of fat-tailed residuals: capped at the history's highest sigma."""
    rng = np.random.default_rng(8)
    r = (rng.standard_t(2.5, 3000) * 0.001)[:, None]
    res = stress(_input(r, [1_000.0]), StressSettings(scenarios=1000, horizon_bars=1440))
    assert all(math.isfinite(v) for v in (res.var95, res.es99, res.worst, res.mean_pnl))
    assert res.worst < 1_000.0  # a long position cannot lose more than its value
