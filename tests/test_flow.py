"""Golden dataflow tests: the flow's output equals a batch recomputation of the spec."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from check_spec import check, check_all
from flow_harness import run_files

from sources.simulator import SimulatorSettings, write_csv

SMALL = ["features.window=30", "features.corr_window=40", "features.corr_every=7"]
REAL = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "binance-trades-2024-08-08T2354Z.csv.gz"
)


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "ticks.csv"
    settings = SimulatorSettings(
        symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT", "DOGE/USDT"), duration_s=240, trades_per_s=150, seed=3
    )
    write_csv(path, settings)
    return str(path)


def _assert_exact(result: dict) -> None:
    for table in ("features", "correlations", "bars"):
        r = result[table]
        assert r["rows"] > 0, table
        assert r["missing"] == 0 and r["extra"] == 0, (table, r)
        assert r["within_spec"], (table, r)
    assert result["features"]["drift_equal"]


def test_flow_matches_the_spec_on_simulated_ticks(sim_file):
    result = check(sim_file, SMALL)
    _assert_exact(result)
    assert result["records"] == result["ticks"] + result["dead_letters"]


def test_flow_matches_the_spec_with_wider_bars_and_lateness(sim_file):
    result = check(sim_file, ["features.bar_interval=2", "features.allowed_lateness_ms=500", *SMALL])
    _assert_exact(result)


def test_flow_matches_the_spec_at_every_resolution(sim_file):
    """Bars of 1, 5, 20 and 60 s from one tick stream (the coarser rolled up from the finest), each
    with its own windows: every resolution equals the spec recomputed from the ticks at its interval."""
    sets = [
        "features.bar_intervals=5,20,60",
        "features.interval_windows=30,12,5,3",
        "features.interval_corr_windows=40,12,6,3",
        "features.interval_corr_every=7,3,2,1",
        "features.allowed_lateness_ms=300",
    ]
    results = check_all(sim_file, sets)
    assert sorted(results) == [1, 5, 20, 60]
    for interval, result in results.items():
        _assert_exact(result)
        assert result["bars"]["trades_equal"], interval
        assert result["unstamped"] == {"bars": 0, "features": 0, "correlations": 0}
    # 240 s of 4 symbols: 4 or 5 minute windows each (the first partial)
    assert 16 <= results[60]["bars"]["rows"] <= 20
    rows = [results[i]["bars"]["rows"] for i in (1, 5, 20, 60)]
    assert rows == sorted(rows, reverse=True)


def _frames(path, workers):
    got, _ = run_files([path], SMALL, workers=workers)
    keys = {
        "ticks": ["symbol", "trade_id"],
        "bars": ["symbol", "ts"],
        "features": ["symbol", "ts"],
        "correlations": ["ts", "symbol_a", "symbol_b"],
    }
    return {t: got[t].sort_values(k).reset_index(drop=True) for t, k in keys.items()}


def test_same_output_whatever_the_worker_count(sim_file):
    one, two = _frames(sim_file, 1), _frames(sim_file, 2)
    for table in one:
        assert len(one[table]) > 0
        pd.testing.assert_frame_equal(one[table], two[table], check_exact=True)


@pytest.mark.skipif(not os.path.exists(REAL), reason="../shared/data recordings are not present")
def test_real_binance_ticks_match_the_spec():
    result = check(
        REAL,
        [
            "features.bar_interval=1",
            "features.window=60",
            "features.corr_window=60",
            "features.corr_every=10",
        ],
    )
    _assert_exact(result)
    print("real data check:", result)
