"""Tests of the synthetic market simulator: determinism, shape, statistics, CSV round trip."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import math
import pickle

import numpy as np
import pytest

from schemas.tick_columns import SIDE_CODES, SIDES
from sources.simulator import (
    DEFAULT_SYMBOLS,
    GENERIC_PROFILE,
    ORIGIN,
    SimulatorSettings,
    iter_ticks,
    simulate,
    write_csv,
)

SMALL = SimulatorSettings(
    symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT", "DOGE/USDT"), duration_s=30, trades_per_s=400
)
GAUSSIAN = {"regime_volatility": (1.0, 1.0, 1.0), "vol_of_vol": 0.0, "jump_rate": (0.0, 0.0, 0.0)}
"""Settings that switch off regimes, stochastic volatility and jumps."""


def run(settings: SimulatorSettings, chunk_ticks: int = 65536) -> dict[str, dict[str, np.ndarray]]:
    """Each symbol's columns over the whole run, concatenated."""
    parts: dict[str, list] = {}
    for chunk in simulate(settings, chunk_ticks):
        symbols = [tc.symbol for tc in chunk]
        assert len(symbols) == len(set(symbols))
        for tc in chunk:
            parts.setdefault(tc.symbol, []).append(tc)
    names = ("ts", "price", "qty", "side", "trade_id", "exchange", "arrival")
    return {
        symbol: {name: np.concatenate([getattr(tc, name) for tc in tcs]) for name in names}
        for symbol, tcs in parts.items()
    }


def second_returns(columns: dict[str, np.ndarray], settings: SimulatorSettings) -> np.ndarray:
    """Log returns of the last trade price at each whole second."""
    edges = np.arange(settings.start_ms + 1000, settings.end_ms + 1, 1000)
    last = np.searchsorted(columns["ts"], edges, side="left") - 1
    assert last[0] >= 0
    return np.diff(np.log(columns["price"][last]))


def moments(x: np.ndarray) -> tuple[float, float]:
    """Skewness and (Pearson, normal = 3) kurtosis."""
    z = (x - x.mean()) / x.std()
    return float(np.mean(z**3)), float(np.mean(z**4))


def assert_same(a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]) -> None:
    assert a.keys() == b.keys()
    for symbol in a:
        for name, values in a[symbol].items():
            np.testing.assert_array_equal(values, b[symbol][name], err_msg=f"{symbol}.{name}")


@pytest.fixture(scope="module")
def default_run() -> dict[str, dict[str, np.ndarray]]:
    return run(SimulatorSettings())


@pytest.fixture(scope="module")
def small_run() -> dict[str, dict[str, np.ndarray]]:
    return run(SMALL)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_output(small_run):
    assert_same(small_run, run(SMALL))


def test_different_seed_differs(small_run):
    other = run(dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    btc, other_btc = small_run["BTC/USDT"], other["BTC/USDT"]
    n = min(len(btc["ts"]), len(other_btc["ts"]))
    assert not np.array_equal(btc["price"][:n], other_btc["price"][:n])
    assert not np.array_equal(btc["ts"][:n], other_btc["ts"][:n])


@pytest.mark.parametrize("chunk_ticks", [1, 97, 5000])
def test_output_does_not_depend_on_chunk_size(small_run, chunk_ticks):
    assert_same(small_run, run(SMALL, chunk_ticks))


@pytest.mark.parametrize("chunk_ticks", [97, 5000])
def test_chunks_have_the_asked_size_and_follow_each_other(chunk_ticks):
    sizes, spans = [], []
    for chunk in simulate(SMALL, chunk_ticks):
        sizes.append(sum(len(tc) for tc in chunk))
        arrivals = np.concatenate([tc.arrival for tc in chunk])
        stamps = np.concatenate([tc.ts for tc in chunk])
        spans.append((arrivals.min(), arrivals.max(), stamps.min(), stamps.max()))
    assert all(size == chunk_ticks for size in sizes[:-1])
    assert 0 < sizes[-1] <= chunk_ticks
    for (_, last_arrival, _, last_ts), (first_arrival, _, first_ts, _) in zip(spans, spans[1:], strict=False):
        assert first_arrival == last_arrival + 1
        assert first_ts >= last_ts


def test_shorter_run_is_a_prefix():
    long_run = run(SMALL)
    short = dataclasses.replace(SMALL, duration_s=9.5)
    short_run = run(short)
    for symbol, columns in short_run.items():
        assert columns["ts"].max() < short.end_ms
        n = len(columns["ts"])
        for name in ("ts", "price", "qty", "side", "trade_id"):
            np.testing.assert_array_equal(columns[name], long_run[symbol][name][:n])
    total_short = sum(len(c["ts"]) for c in short_run.values())
    total_long_before = sum(int((c["ts"] < short.end_ms).sum()) for c in long_run.values())
    assert total_short == total_long_before


# --------------------------------------------------------------------------- shape of the output


def test_columns_are_valid(small_run):
    all_arrivals = []
    for symbol, c in small_run.items():
        n = len(c["ts"])
        assert c["ts"].dtype == np.int64 and c["arrival"].dtype == np.int64
        assert c["price"].dtype == np.float64 and c["qty"].dtype == np.float64
        assert c["side"].dtype == np.int8
        assert np.all(np.isfinite(c["price"])) and np.all(c["price"] > 0), symbol
        assert np.all(np.isfinite(c["qty"])) and np.all(c["qty"] > 0), symbol
        assert np.all(np.diff(c["ts"]) >= 0), symbol
        assert SMALL.start_ms <= c["ts"][0] and c["ts"][-1] < SMALL.end_ms
        assert set(np.unique(c["side"]).tolist()) == {SIDE_CODES["buy"], SIDE_CODES["sell"]}
        assert c["trade_id"].tolist() == [str(i) for i in range(1, n + 1)]
        assert set(c["exchange"].tolist()) == {"sim"}
        assert np.all(np.diff(c["arrival"]) > 0)
        all_arrivals.append(c["arrival"])
    arrivals = np.concatenate(all_arrivals)
    np.testing.assert_array_equal(np.sort(arrivals), np.arange(len(arrivals)))
    # Arrival order is time order across symbols.
    stamps = np.concatenate([c["ts"] for c in small_run.values()])
    assert np.all(np.diff(stamps[np.argsort(arrivals)]) >= 0)


def test_chunk_columns_carry_origin_and_no_raw():
    chunk = next(simulate(SMALL, 1000))
    assert [tc.symbol for tc in chunk] == sorted({tc.symbol for tc in chunk}, key=SMALL.symbols.index)
    for tc in chunk:
        assert tc.origin == ORIGIN and tc.raw is None
        assert tc.source(0) == f"{ORIGIN}:{tc.arrival[0]}"
        tick = tc.tick(0)
        assert tick.symbol == tc.symbol and tick.side in ("buy", "sell")


def test_prices_sit_on_a_decimal_tick_grid(small_run):
    # BTC starts near 37 000: tick 0.1; DOGE near 0.075: tick 1e-7.
    for symbol, digits in (("BTC/USDT", 1), ("DOGE/USDT", 7)):
        price = small_run[symbol]["price"]
        np.testing.assert_array_equal(np.round(price, digits), price)
        assert max(len(repr(p)) for p in price.tolist()) <= 12


def test_iter_ticks_matches_simulate(small_run):
    seen = {symbol: 0 for symbol in small_run}
    previous_ts = -1
    for tick in iter_ticks(SMALL):
        c = small_run[tick.symbol]
        i = seen[tick.symbol]
        assert tick.ts >= previous_ts
        assert (tick.ts, tick.price, tick.qty, tick.side, tick.trade_id, tick.exchange) == (
            int(c["ts"][i]),
            float(c["price"][i]),
            float(c["qty"][i]),
            SIDES[c["side"][i]],
            c["trade_id"][i],
            "sim",
        )
        seen[tick.symbol] += 1
        previous_ts = tick.ts
    assert seen == {symbol: len(c["ts"]) for symbol, c in small_run.items()}


# --------------------------------------------------------------------------- statistics


def test_total_count_is_about_rate_times_duration(default_run):
    settings = SimulatorSettings()
    total = sum(len(c["ts"]) for c in default_run.values())
    assert abs(total / (settings.trades_per_s * settings.duration_s) - 1) < 0.25
    assert len(default_run) == len(DEFAULT_SYMBOLS) == 10


def test_count_is_poisson_exact_without_volatility_feedback():
    settings = SimulatorSettings(duration_s=120, trades_per_s=500, activity_elasticity=0.0)
    total = sum(len(c["ts"]) for c in run(settings).values())
    expected = settings.trades_per_s * settings.duration_s
    assert abs(total - expected) < 5 * math.sqrt(expected)


def test_btc_is_busiest(default_run):
    counts = {symbol: len(c["ts"]) for symbol, c in default_run.items()}
    assert max(counts, key=counts.get) == "BTC/USDT"


def test_one_second_returns_are_correlated(default_run):
    settings = SimulatorSettings()
    btc = second_returns(default_run["BTC/USDT"], settings)
    for other in ("ETH/USDT", "SOL/USDT", "DOGE/USDT"):
        corr = np.corrcoef(btc, second_returns(default_run[other], settings))[0, 1]
        assert corr > 0.2, (other, corr)


def test_returns_are_fat_tailed_with_regimes_and_jumps(default_run):
    settings = SimulatorSettings()
    _, kurtosis = moments(second_returns(default_run["BTC/USDT"], settings))
    assert kurtosis > 5
    gaussian = SimulatorSettings(duration_s=1800, trades_per_s=300, **GAUSSIAN)
    _, gaussian_kurtosis = moments(second_returns(run(gaussian)["BTC/USDT"], gaussian))
    assert 2.6 < gaussian_kurtosis < 3.5


def test_stress_jumps_skew_returns_negative():
    stressed = SimulatorSettings(
        symbols=("BTC/USDT", "ETH/USDT"),
        duration_s=1800,
        trades_per_s=300,
        initial_regime=2,
        regime_transitions=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
        jump_rate=(0.0, 0.0, 0.03),
    )
    skew, kurtosis = moments(second_returns(run(stressed)["BTC/USDT"], stressed))
    assert skew < -0.5 and kurtosis > 5


def test_volatility_rises_in_stress():
    def realised(regime: int) -> float:
        settings = SimulatorSettings(
            symbols=("BTC/USDT",),
            duration_s=600,
            trades_per_s=200,
            initial_regime=regime,
            regime_transitions=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
            vol_of_vol=0.0,
            jump_rate=(0.0, 0.0, 0.0),
        )
        return float(np.std(second_returns(run(settings)["BTC/USDT"], settings)))

    calm, normal, stressed = realised(0), realised(1), realised(2)
    assert calm < normal < stressed
    assert 0.4 < calm / normal < 0.8 and 1.7 < stressed / normal < 2.7
    # Annualised volatility of the normal regime is near BTC's 0.55.
    assert 0.4 < normal * math.sqrt(365 * 86_400) < 0.75


def test_trade_rate_rises_with_volatility():
    settings = SimulatorSettings(symbols=("BTC/USDT",), duration_s=1800, trades_per_s=200)
    btc = run(settings)["BTC/USDT"]
    per_second = np.bincount((btc["ts"] - settings.start_ms) // 1000, minlength=1800)[1:]
    size = np.abs(second_returns(btc, settings))
    assert np.corrcoef(per_second, size)[0, 1] > 0.1


def test_taker_side_follows_the_move(small_run):
    btc = small_run["BTC/USDT"]
    move = np.sign(np.diff(btc["price"]))
    buy = np.where(btc["side"][1:] == SIDE_CODES["buy"], 1.0, -1.0)
    assert np.corrcoef(move, buy)[0, 1] > 0.3
    assert 0.4 < np.mean(btc["side"] == SIDE_CODES["buy"]) < 0.6


def test_sizes_are_heavy_tailed(small_run):
    notional = small_run["BTC/USDT"]["price"] * small_run["BTC/USDT"]["qty"]
    assert 100 < np.median(notional) < 400
    assert notional.max() > 50 * np.median(notional)


# --------------------------------------------------------------------------- CSV


def read_csv_rows(path: str, opener=open) -> list[dict[str, str]]:
    with opener(path, "rt", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["ts", "symbol", "price", "qty", "side", "trade_id", "exchange"]
        return list(reader)


@pytest.mark.parametrize("name", ["ticks.csv", "ticks.csv.gz"])
def test_write_csv_round_trips_exactly(tmp_path, small_run, name):
    path = str(tmp_path / name)
    written = write_csv(path, SMALL)
    rows = read_csv_rows(path, gzip.open if name.endswith(".gz") else open)
    assert written == len(rows) == sum(len(c["ts"]) for c in small_run.values())
    stamps = [int(row["ts"]) for row in rows]
    assert stamps == sorted(stamps)
    seen = {symbol: 0 for symbol in small_run}
    for row in rows:
        c = small_run[row["symbol"]]
        i = seen[row["symbol"]]
        assert int(row["ts"]) == c["ts"][i]
        assert float(row["price"]) == c["price"][i]
        assert float(row["qty"]) == c["qty"][i]
        assert row["side"] == SIDES[c["side"][i]]
        assert row["trade_id"] == c["trade_id"][i]
        assert row["exchange"] == "sim"
        seen[row["symbol"]] += 1
    assert seen == {symbol: len(c["ts"]) for symbol, c in small_run.items()}


def test_write_csv_is_byte_identical_across_runs(tmp_path):
    settings = dataclasses.replace(SMALL, duration_s=5)
    first, second = tmp_path / "a.csv.gz", tmp_path / "b.csv.gz"
    write_csv(first, settings)
    write_csv(second, settings)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[:2] == b"\x1f\x8b"
    plain = tmp_path / "c.csv.gz"
    write_csv(plain, settings, gzip=False)
    assert plain.read_bytes() == gzip.decompress(first.read_bytes())


# --------------------------------------------------------------------------- settings


def test_defaults():
    settings = SimulatorSettings()
    assert settings.symbols == DEFAULT_SYMBOLS
    assert settings.symbols[:3] == ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    assert (settings.seed, settings.start_ms, settings.duration_s) == (7, 1_700_000_000_000, 900)
    assert (settings.trades_per_s, settings.exchange) == (2000, "sim")
    assert len(settings.volatility) == len(settings.liquidity) == 10
    assert settings.end_ms == 1_700_000_900_000
    assert pickle.loads(pickle.dumps(settings)) == settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 8  # type: ignore[misc]


def test_unknown_symbols_get_the_generic_profile():
    settings = SimulatorSettings(symbols=["FOO/USDT", "BTC/USDT"])
    assert settings.symbols == ("FOO/USDT", "BTC/USDT")
    assert settings.start_prices[0] == GENERIC_PROFILE[0]
    assert settings.start_prices[1] == 37_000.0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"symbols": ()}, "symbols"),
        ({"symbols": ("BTC/USDT", "BTC/USDT")}, "distinct"),
        ({"symbols": ("BTC,USDT",)}, "symbol"),
        ({"exchange": ""}, "exchange"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"duration_s": 0}, "duration_s"),
        ({"duration_s": math.inf}, "duration_s"),
        ({"duration_s": math.nan}, "duration_s"),
        ({"trades_per_s": -5}, "trades_per_s"),
        ({"start_ms": -1}, "start_ms"),
        ({"start_ms": 7_258_118_400_000}, "2200"),
        ({"symbols": ("BTC/USDT",), "volatility": (0.5, 0.6)}, "volatility needs 1"),
        ({"symbols": ("BTC/USDT",), "start_prices": (0.0,)}, "start_prices"),
        ({"symbols": ("BTC/USDT",), "market_correlation": (1.0,)}, "market_correlation"),
        ({"symbols": ("BTC/USDT",), "liquidity": (math.nan,)}, "liquidity"),
        ({"regime_volatility": (1.0, 1.0)}, "regime_volatility"),
        ({"regime_transitions": ((0.5, 0.5, 0.1), (0, 1, 0), (0, 0, 1))}, "sum"),
        ({"regime_transitions": ((1, 0, 0), (0, 1, 0))}, "3 rows"),
        ({"initial_regime": 3}, "initial_regime"),
        ({"vol_mean_reversion": 0.0}, "vol_mean_reversion"),
        ({"jump_sd": (0.0, 0.0, -0.1)}, "jump_sd"),
        ({"price_digits": 0}, "price_digits"),
        ({"median_notional": 0}, "median_notional"),
    ],
)
def test_bad_settings_are_refused(changes, words):
    with pytest.raises(ValueError, match=words):
        SimulatorSettings(**changes)


@pytest.mark.parametrize("chunk_ticks", [0, -1, 1.5, True])
def test_bad_chunk_size_is_refused(chunk_ticks):
    with pytest.raises(ValueError, match="chunk_ticks"):
        simulate(SMALL, chunk_ticks)


def test_extreme_settings_stay_finite_and_positive():
    wild = SimulatorSettings(
        symbols=("A/USDT", "B/USDT"),
        start_prices=(1e-9, 1e12),
        volatility=(10.0, 10.0),
        duration_s=60,
        trades_per_s=200,
        regime_volatility=(20.0, 20.0, 20.0),
        vol_of_vol=1.0,
        vol_mean_reversion=0.001,
        jump_rate=(10.0, 10.0, 10.0),
        jump_sd=(0.2, 0.2, 0.2),
        notional_sigma=4.0,
    )
    for c in run(wild).values():
        assert np.all(np.isfinite(c["price"])) and np.all(c["price"] > 0)
        assert np.all(np.isfinite(c["qty"])) and np.all(c["qty"] > 0)
