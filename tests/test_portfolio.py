"""Portfolio accounting and portfolio QVaR, checked against hand and numpy computations."""

from __future__ import annotations

import math
import pickle
from datetime import UTC, datetime

import numpy as np
import pytest

from operators.risk.portfolio import DAY_MS, Portfolio, PortfolioSettings, period_keys
from operators.risk.portfolio_risk import PortfolioRiskSettings, normal_es_factor, portfolio_risk
from schemas.records import BUY, SELL, Fill

ATOL = 1e-9


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def fill(side: str, qty: float, price: float, fee: float = 0.0, symbol: str = "X", ts: int = 0) -> Fill:
    return Fill(ts, f"{side}-{qty}-{price}", symbol, side, qty, price, fee, 0.0)


def check_identity(p: Portfolio) -> None:
    pnl = p.realised_pnl + p.unrealised_pnl()
    assert p.equity() - p.settings.initial_cash == pytest.approx(pnl, abs=ATOL)


# -- fills -----------------------------------------------------------------------------


def test_buy_add_partial_sell_flip_and_close_by_hand():
    p = Portfolio(PortfolioSettings(initial_cash=10_000.0))
    assert p.apply_fill(fill(BUY, 1.0, 100.0, 0.1)) == pytest.approx(-0.1)
    assert (p.cash, p.position("X"), p.avg_price["X"]) == (pytest.approx(9_899.9), 1.0, 100.0)
    assert p.apply_fill(fill(BUY, 1.0, 110.0, 0.1)) == pytest.approx(-0.1)  # add: avg 105
    assert p.avg_price["X"] == pytest.approx(105.0)
    assert p.cash == pytest.approx(9_789.8)
    # partial sell 0.5 @ 120: realises 0.5 * 15 - fee
    assert p.apply_fill(fill(SELL, 0.5, 120.0, 0.06)) == pytest.approx(7.44)
    assert (p.position("X"), p.avg_price["X"]) == (pytest.approx(1.5), pytest.approx(105.0))
    assert p.cash == pytest.approx(9_789.8 + 60.0 - 0.06)
    p.mark("X", 120.0)
    assert p.unrealised_pnl() == pytest.approx(1.5 * 15.0)
    check_identity(p)
    # flip: sell 3 @ 100 closes 1.5 (1.5 * -5) and opens 1.5 short at 100
    assert p.apply_fill(fill(SELL, 3.0, 100.0, 0.3)) == pytest.approx(-7.5 - 0.3)
    assert (p.position("X"), p.avg_price["X"]) == (pytest.approx(-1.5), 100.0)
    p.mark("X", 90.0)
    assert p.value("X") == pytest.approx(-135.0)
    assert p.unrealised_pnl() == pytest.approx(15.0)
    check_identity(p)
    # buy back the short at 90: +15 - fee; the position is gone
    assert p.apply_fill(fill(BUY, 1.5, 90.0, 0.135)) == pytest.approx(15.0 - 0.135)
    assert p.positions == {} and p.avg_price == {}
    assert p.realised_pnl == pytest.approx(-0.1 - 0.1 + 7.44 - 7.8 + 14.865)
    assert p.equity() == pytest.approx(p.cash)
    check_identity(p)


def test_float_residue_closes_the_position():
    p = Portfolio()
    p.apply_fill(fill(BUY, 0.3, 10.0))
    p.apply_fill(fill(SELL, 0.1, 10.0))
    p.apply_fill(fill(SELL, 0.2, 10.0))  # 0.3 - 0.1 - 0.2 = 5.6e-17
    assert p.positions == {}
    assert p.position("X") == 0.0 and p.value("X") == 0.0


def test_exposures_weights_and_leverage():
    p = Portfolio()  # 100k
    p.apply_fill(fill(BUY, 2.0, 20_000.0, symbol="A"))
    p.apply_fill(fill(SELL, 10.0, 1_000.0, symbol="B"))
    p.mark("A", 25_000.0)  # +10k
    p.mark("B", 1_100.0)  # -1k
    assert p.equity() == pytest.approx(109_000.0)
    assert p.gross_exposure() == pytest.approx(61_000.0)
    assert p.net_exposure() == pytest.approx(39_000.0)
    assert p.leverage() == pytest.approx(61_000.0 / 109_000.0)
    assert p.weights() == pytest.approx({"A": 50_000.0 / 109_000.0, "B": -11_000.0 / 109_000.0})
    assert Portfolio().leverage() == 0.0
    check_identity(p)


def test_leverage_and_weights_when_equity_is_gone():
    p = Portfolio(PortfolioSettings(initial_cash=1_000.0))
    p.apply_fill(fill(BUY, 1.0, 2_000.0))
    p.mark("X", 900.0)  # equity = -1000 + 900 < 0
    assert p.leverage() == math.inf
    assert p.weights() == {"X": math.inf}
    assert p.drawdown() > 1.0


def test_a_fill_marks_an_unmarked_symbol_but_keeps_a_mark():
    p = Portfolio()
    p.apply_fill(fill(BUY, 1.0, 100.0))
    assert p.marks["X"] == 100.0
    p.mark("X", 101.0)
    p.apply_fill(fill(BUY, 1.0, 102.0))
    assert p.marks["X"] == 101.0


@pytest.mark.parametrize(
    "bad",
    [fill("hold", 1.0, 1.0), fill(BUY, 0.0, 1.0), fill(BUY, 1.0, -1.0), fill(SELL, 1.0, math.nan)],
)
def test_bad_fills_are_programming_errors(bad):
    with pytest.raises(ValueError, match="fill"):
        Portfolio().apply_fill(bad)


@pytest.mark.parametrize(
    "kwargs", [{"initial_cash": 0.0}, {"sharpe_min_days": 1}, {"sharpe_min_days": 40, "history_days": 30}]
)
def test_settings_are_validated(kwargs):
    with pytest.raises(ValueError, match="PortfolioSettings|initial_cash|sharpe_min_days|history_days"):
        PortfolioSettings(**kwargs)


# -- clock and periods ----------------------------------------------------------------


def test_period_keys_at_exact_utc_boundaries():
    sun_end = ms(2024, 3, 31, 23, 59, 59) + 999  # Sunday, last ms of March
    mon = ms(2024, 4, 1)
    a, b = period_keys(sun_end), period_keys(mon)
    assert b[0] == a[0] + 1 and b[1] == a[1] + 1 and b[2] == a[2] + 1
    # a Wednesday -> Thursday boundary inside a month: only the day changes
    wed_end, thu = ms(2024, 4, 3) + DAY_MS - 1, ms(2024, 4, 4)
    assert period_keys(thu)[0] == period_keys(wed_end)[0] + 1
    assert period_keys(thu)[1:] == period_keys(wed_end)[1:]
    # every Monday 00:00 starts a week, and only Mondays do
    for day in range(ms(2024, 1, 1) // DAY_MS, ms(2024, 12, 31) // DAY_MS):
        monday = datetime.fromtimestamp(day * 86_400, tz=UTC).weekday() == 0
        assert (period_keys(day * DAY_MS)[1] != period_keys(day * DAY_MS - 1)[1]) == monday
    assert period_keys(ms(2023, 12, 31))[2] == 2023 * 12 + 11


def test_period_pnl_rolls_over_at_exact_ms():
    p = Portfolio()
    p.apply_fill(fill(BUY, 1.0, 10_000.0))
    t0 = ms(2024, 3, 29, 12)  # Friday
    p.advance(t0)
    p.mark("X", 9_000.0)  # -1000: -1% of 100k for day, week and month
    for period in ("day", "week", "month"):
        assert p.period_pnl(period) == pytest.approx(-0.01)
    p.advance(ms(2024, 3, 30) - 1)  # still Friday
    assert p.period_pnl("day") == pytest.approx(-0.01)
    p.advance(ms(2024, 3, 30))  # Saturday: a new day, same week and month
    assert p.period_pnl("day") == 0.0
    p.mark("X", 8_500.0)  # -500 of 99k
    assert p.period_pnl("day") == pytest.approx(-500 / 99_000)
    assert p.period_pnl("week") == pytest.approx(-0.015)
    assert p.period_pnl("month") == pytest.approx(-0.015)
    p.advance(ms(2024, 3, 31, 23, 59, 59) + 999)  # Sunday, last ms of March
    p.mark("X", 8_000.0)  # -500 of 98.5k
    assert p.period_pnl("week") == pytest.approx(-0.02)
    p.advance(ms(2024, 4, 1))  # Monday 1 April: day, week and month roll together
    assert [p.period_pnl(x) for x in ("day", "week", "month")] == [0.0, 0.0, 0.0]
    p.mark("X", 9_800.0)  # +1800 on 98k
    assert p.period_pnl("month") == pytest.approx(1_800 / 98_000)
    assert p.daily_returns() == pytest.approx([-0.01, -500 / 99_000, -500 / 98_500])
    with pytest.raises(ValueError, match="period"):
        p.period_pnl("year")


def test_before_the_first_advance_periods_start_at_initial_cash_and_time_never_goes_back():
    p = Portfolio()
    p.apply_fill(fill(BUY, 1.0, 10_000.0))
    p.mark("X", 9_000.0)
    assert p.period_pnl("day") == pytest.approx(-0.01)
    p.advance(DAY_MS * 10)
    assert p.period_pnl("day") == 0.0
    p.advance(DAY_MS * 5)  # ignored
    assert p.ts == DAY_MS * 10


def test_skipped_days_are_zero_returns():
    p = Portfolio()
    p.apply_fill(fill(BUY, 1.0, 10_000.0))
    p.advance(0)
    p.mark("X", 11_000.0)
    p.advance(4 * DAY_MS + 5)  # days 1, 2, 3 never seen
    assert p.daily_returns() == pytest.approx([0.01, 0.0, 0.0, 0.0])


def test_drawdown_follows_the_peak():
    p = Portfolio()
    p.apply_fill(fill(BUY, 5.0, 10_000.0))
    assert p.drawdown() == 0.0
    p.mark("X", 12_000.0)  # equity 110k, the peak
    assert p.peak_equity == pytest.approx(110_000.0)
    p.mark("X", 9_000.0)  # 95k
    assert p.drawdown() == pytest.approx(1 - 95 / 110)
    p.mark("X", 11_000.0)  # 105k: below the peak still
    assert p.drawdown() == pytest.approx(1 - 105 / 110)
    assert p.peak_equity == pytest.approx(110_000.0)
    p.mark("X", 13_000.0)
    assert p.drawdown() == 0.0 and p.peak_equity == pytest.approx(115_000.0)


def test_sharpe_matches_numpy_and_is_none_until_warm():
    rng = np.random.default_rng(7)
    p = Portfolio(PortfolioSettings(sharpe_min_days=30))
    p.apply_fill(fill(BUY, 5.0, 10_000.0))
    price = 10_000.0
    equities = []
    for day in range(80):
        p.advance(day * DAY_MS)
        equities.append(p.equity())
        if day < 30:  # day d has d finished days behind it
            assert p.sharpe(30) is None
        else:
            rets = np.diff(equities) / np.array(equities[:-1])
            for days in (30, 45):
                window = rets[-days:]
                expected = window.mean() / window.std(ddof=1) * math.sqrt(365)
                assert p.sharpe(days) == pytest.approx(expected, rel=1e-9)
        price *= math.exp(rng.normal(0.001, 0.02))
        p.mark("X", price)
    assert p.daily_returns() == pytest.approx(list(np.diff(equities) / np.array(equities[:-1])))
    with pytest.raises(ValueError, match="days"):
        p.sharpe(1)


def test_sharpe_of_a_flat_book_is_none_not_zero():
    p = Portfolio(PortfolioSettings(sharpe_min_days=2))
    for day in range(5):
        p.advance(day * DAY_MS)
    assert p.daily_returns() == [0.0] * 4
    assert p.sharpe(3) is None


def test_pickle_round_trip_continues_identically():
    p = Portfolio()
    p.advance(0)
    p.apply_fill(fill(BUY, 1.0, 20_000.0, 2.0))
    p.apply_fill(fill(SELL, 30.0, 1_000.0, 1.0, symbol="B"))
    p.mark("X", 21_000.0)
    p.advance(DAY_MS)
    q = pickle.loads(pickle.dumps(p))
    for r in (p, q):
        r.mark("B", 950.0)
        r.apply_fill(fill(SELL, 1.5, 21_500.0, 1.0))
        r.advance(2 * DAY_MS)
    assert q.positions == p.positions and q.avg_price == p.avg_price and q.marks == p.marks
    state = lambda r: (r.cash, r.realised_pnl, r.peak_equity, r.equity(), r.daily_returns())  # noqa: E731
    assert state(q) == state(p)
    periods = ("day", "week", "month")
    assert [q.period_pnl(x) for x in periods] == [p.period_pnl(x) for x in periods]


# -- portfolio QVaR ----------------------------------------------------------------


def numpy_risk(weights, vols, entropies, corr_matrix, names, equity, s: PortfolioRiskSettings):
    w = np.array([weights[n] for n in names])
    sig = np.array([vols[n] for n in names]) * math.sqrt(s.horizon_bars)
    cov = corr_matrix * np.outer(sig, sig)
    sigma_p = math.sqrt(max(0.0, float(w @ cov @ w)))
    aw = np.abs(w)
    h = float(aw @ np.array([entropies[n] for n in names]) / aw.sum())
    factor = 1 - s.entropy_coef * h
    return sigma_p, equity * sigma_p * s.z * factor, equity * sigma_p * normal_es_factor(s.z) * factor, h


@pytest.mark.parametrize("seed", range(25))
def test_portfolio_risk_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    names = [f"S{i}" for i in range(n)]
    a = rng.normal(size=(n, n + 2))
    cov = a @ a.T
    d = np.sqrt(np.diag(cov))
    rho = cov / np.outer(d, d)
    np.fill_diagonal(rho, 1.0)
    weights = dict(zip(names, rng.normal(0, 0.3, n), strict=True))
    vols = dict(zip(names, rng.uniform(1e-4, 0.03, n), strict=True))
    entropies = dict(zip(names, rng.uniform(0, 1, n), strict=True))
    idx = {s: i for i, s in enumerate(names)}
    calls = []

    def corr(x, y):
        calls.append((x, y))
        return float(rho[idx[x], idx[y]])

    s = PortfolioRiskSettings(horizon_bars=float(rng.integers(1, 60)), entropy_coef=float(rng.uniform(0, 1)))
    equity = float(rng.uniform(1e3, 1e7))
    r = portfolio_risk(weights, vols, entropies, corr, equity, s)
    sigma_p, qvar, es, h = numpy_risk(weights, vols, entropies, rho, names, equity, s)
    assert r.sigma_p == pytest.approx(sigma_p, rel=1e-12, abs=1e-15)
    assert r.qvar == pytest.approx(qvar, rel=1e-12)
    assert r.es == pytest.approx(es, rel=1e-12)
    assert r.qvar_share == pytest.approx(qvar / equity, rel=1e-12)
    assert r.es_share == pytest.approx(es / equity, rel=1e-12)
    assert r.weighted_entropy == pytest.approx(h, rel=1e-12)
    assert (r.missing_pairs, r.missing_vols) == (0, 0)
    assert all(x < y for x, y in calls) and len(calls) == n * (n - 1) // 2


def test_es_factor_is_the_normal_es_at_95():
    assert normal_es_factor(1.6448536269514722) == pytest.approx(2.0627128075074257, rel=1e-12)


def test_no_positions_is_zero_risk_with_zero_entropy():
    r = portfolio_risk({}, {"A": 0.01}, {"A": 0.9}, lambda a, b: 0.5, 1e5, PortfolioRiskSettings())
    assert (r.sigma_p, r.qvar, r.es, r.weighted_entropy, r.missing_pairs) == (0.0, 0.0, 0.0, 0.0, 0)
    r = portfolio_risk({"A": 0.0}, {"A": 0.01}, {"A": 0.9}, lambda a, b: 0.5, 1e5, PortfolioRiskSettings())
    assert r.qvar == 0.0


def test_missing_pairs_count_as_missing_corr():
    weights = {"A": 0.3, "B": 0.2, "C": -0.1}
    vols = {"A": 0.01, "B": 0.02, "C": 0.015}
    ents = {"A": 0.0, "B": 0.0, "C": 0.0}
    known = {("A", "B"): 0.2}
    names = ["A", "B", "C"]
    for missing in (1.0, 0.0, -0.5):
        s = PortfolioRiskSettings(missing_corr=missing)
        r = portfolio_risk(weights, vols, ents, lambda a, b: known.get((a, b)), 1e5, s)
        rho = np.full((3, 3), missing)
        np.fill_diagonal(rho, 1.0)
        rho[0, 1] = rho[1, 0] = 0.2
        assert r.missing_pairs == 2
        assert r.sigma_p == pytest.approx(numpy_risk(weights, vols, ents, rho, names, 1e5, s)[0], rel=1e-12)
    # NaN counts as missing too
    r = portfolio_risk(weights, vols, ents, lambda a, b: math.nan, 1e5, PortfolioRiskSettings())
    assert r.missing_pairs == 3


def test_missing_vols_use_the_largest_known_then_the_default():
    ents: dict[str, float] = {}
    one = lambda a, b: 1.0  # noqa: E731
    s = PortfolioRiskSettings()
    # B has no vol: counts as max known (0.03 from C, not held)
    r = portfolio_risk({"A": 0.5, "B": 0.5}, {"A": 0.01, "C": 0.03}, ents, one, 1.0, s)
    assert r.missing_vols == 1
    assert r.sigma_p == pytest.approx(0.5 * 0.01 + 0.5 * 0.03, rel=1e-12)
    # nothing known: the fixed default 0.01
    r = portfolio_risk({"A": 0.5}, {}, ents, one, 1.0, s)
    assert r.sigma_p == pytest.approx(0.005, rel=1e-12)
    assert r.missing_vols == 1
    # an explicit missing_vol wins
    r = portfolio_risk({"A": 0.5}, {"C": 0.03}, ents, one, 1.0, PortfolioRiskSettings(missing_vol=0.1))
    assert r.sigma_p == pytest.approx(0.05, rel=1e-12)


def test_entropy_discount_and_missing_entropy():
    s = PortfolioRiskSettings()
    full = portfolio_risk({"A": 1.0}, {"A": 0.01}, {}, lambda a, b: None, 1e5, s)
    assert full.qvar == pytest.approx(1e5 * 0.01 * s.z)  # missing entropy: no discount
    half = portfolio_risk({"A": 1.0}, {"A": 0.01}, {"A": 1.0}, lambda a, b: None, 1e5, s)
    assert half.qvar == pytest.approx(full.qvar * 0.7)


@pytest.mark.parametrize(
    "kwargs",
    [{"z": 0.0}, {"entropy_coef": 1.5}, {"horizon_bars": 0}, {"missing_corr": 2.0}, {"missing_vol": -1.0}],
)
def test_risk_settings_are_validated(kwargs):
    with pytest.raises(ValueError, match="PortfolioRiskSettings"):
        PortfolioRiskSettings(**kwargs)
