"""The flow's VaR backtest: var_backtests rows in the store and the qbtc_var_* gauges on /metrics."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import urllib.request

import pandas as pd
import pytest
from bytewax.testing import TestingSink
from prometheus_client.parser import text_string_to_metric_families

from flows.config import load_settings
from flows.inputs import file_inputs
from flows.metrics import FlowMetrics
from flows.pipeline import build_flow, run_flow
from schemas.records import VarBacktestRow
from sources.chunk_source import ChunkSource, Progress
from sources.simulator import SimulatorSettings, write_csv

SETS = [
    "features.window=30",
    "features.corr_window=40",
    "var_backtest.window=200",
    "var_backtest.min_forecasts=100",
    "var_backtest.report_every=100",
]


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    """Two symbols, 900 s of market, about 20 trades a second each: no empty bar, so every grid
    return is a bar's (fhs is warm after 530 returns)."""
    path = tmp_path_factory.mktemp("var") / "ticks.csv"
    write_csv(
        path, SimulatorSettings(symbols=("BTC/USDT", "ETH/USDT"), duration_s=900, trades_per_s=40, seed=5)
    )
    return str(path)


def _qbtc(*args, cwd):
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _sql(query: str, store: str, cwd) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(_qbtc("sql", query, "--store", store, "--format", "csv", cwd=cwd)))


def test_replay_writes_backtests_that_count_the_lagged_forecasts(sim_file, tmp_path):
    store = f"chdb://{tmp_path}/store.chdb"
    sets = [x for s in SETS for x in ("--set", s)]
    _qbtc("replay", sim_file, "--store", store, "--quiet", "--no-trade", *sets, cwd=tmp_path)
    feats = _sql(
        "SELECT symbol, toUnixTimestamp64Milli(ts) AS ts, ret, fvar95 FROM features FINAL", store, tmp_path
    )
    rows = _sql(
        "SELECT symbol, toUnixTimestamp64Milli(ts) AS ts, model, scope, forecasts, exceedances, zone "
        "FROM var_backtests FINAL",
        store,
        tmp_path,
    )
    assert set(rows["model"]) == {"fhs"} and set(rows["scope"]) == {"rolling", "cumulative"}
    assert set(rows["zone"]) <= {"green", "yellow", "red"}
    checked = 0
    for symbol, f in feats.sort_values("ts").groupby("symbol"):
        assert (f["ts"].diff().dropna() == 1000).all(), "a gap: the lagged rows are not the counted ones"
        assert f["fvar95"].isna().any() and f["fvar95"].notna().sum() > 200
        lagged = f["fvar95"].shift(1)
        counted = lagged.notna().cumsum().set_axis(f["ts"])
        hits = ((-f["ret"] > lagged) & lagged.notna()).cumsum().set_axis(f["ts"])
        cum = rows[(rows["symbol"] == symbol) & (rows["scope"] == "cumulative")]
        assert len(cum) >= 3
        for r in cum.itertuples():
            assert (r.forecasts, r.exceedances) == (counted[r.ts], hits[r.ts]), (symbol, r.ts)
            checked += 1
        assert cum["forecasts"].max() > counted.iloc[-1] - 100  # rows every 100 forecasts, to the end
    assert checked >= 6
    latest = _sql(
        "SELECT symbol, argMax(forecasts, ts) AS T, argMax(zone, ts) AS zone FROM var_backtests FINAL "
        "WHERE scope = 'cumulative' GROUP BY symbol ORDER BY symbol",
        store,
        tmp_path,
    )  # the README's query
    assert list(latest["symbol"]) == ["BTC/USDT", "ETH/USDT"] and (latest["T"] > 200).all()


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_backtest_gauges_are_on_the_metrics_endpoint(sim_file):
    settings = load_settings(None, SETS, env={})
    inputs, total = file_inputs([sim_file], settings)
    out: list = []
    metrics = FlowMetrics()
    run_flow(
        build_flow(
            ChunkSource(inputs, Progress(total_bytes=total)), settings, TestingSink(out), metrics=metrics
        )
    )
    newest = {}
    for table, rows in out:
        if table == "var_backtests":
            for r in rows:
                newest[(r.symbol, r.model, r.scope)] = r
    assert len(newest) == 4  # two symbols, rolling and cumulative
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve(port)
    values = _scrape(port)
    zone = {"green": 0, "yellow": 1, "red": 2}
    for (symbol, model, scope), r in newest.items():
        labels = (("model", model), ("scope", scope), ("symbol", symbol))
        assert values[("qbtc_var_exceedance_rate", labels)] == pytest.approx(r.rate, rel=1e-12)
        assert values[("qbtc_var_kupiec_p", labels)] == pytest.approx(r.pof_p, rel=1e-12)
        assert values[("qbtc_var_christoffersen_cc_p", labels)] == pytest.approx(r.cc_p, rel=1e-12)
        assert values[("qbtc_var_zone", labels)] == zone[r.zone]
        assert values[("qbtc_es_z2", labels)] == pytest.approx(r.es_z2, rel=1e-12, abs=1e-15)


def test_portfolio_rows_are_labelled_portfolio():
    metrics = FlowMetrics()
    nan = float("nan")
    row = VarBacktestRow(
        1,
        "",
        "fhs",
        "rolling",
        10,
        0.05,
        10,
        1,
        0.1,
        8,
        1,
        1,
        0,
        0.5,
        0.48,
        nan,
        nan,
        nan,
        nan,
        0.9,
        "yellow",
        0.2,
        0.3,
    )
    metrics.var_backtests([row])
    got = metrics.registry.get_sample_value(
        "qbtc_var_zone", {"symbol": "portfolio", "model": "fhs", "scope": "rolling"}
    )
    assert got == 1.0


def test_a_resume_refuses_another_var_model_and_backtest_window():
    from flows.snapshots import ResumeError, dump_state, load_state
    from flows.steps import FEATURE_FIXED, FEATURE_KEYS
    from operators.features.symbol_features import FeatureSettings, SymbolFeatures
    from operators.risk.var_backtest import VarBacktestSettings

    saved = FeatureSettings()
    data = dump_state(SymbolFeatures(saved, "X/USDT"), {"features": saved})
    for changed, key in [
        (FeatureSettings(var_model="garch"), "features.var_model changed from 'fhs' to 'garch'"),
        (FeatureSettings(var_backtest=VarBacktestSettings(window=500)), "var_backtest.window changed"),
    ]:
        with pytest.raises(ResumeError, match=key):
            load_state(data, {"features": changed}, FEATURE_KEYS, fixed=FEATURE_FIXED)
    lines = []
    today = FeatureSettings(var_backtest=VarBacktestSettings(report_every=50))
    state = load_state(data, {"features": today}, FEATURE_KEYS, report=lines.extend, fixed=FEATURE_FIXED)
    assert lines == ["var_backtest.report_every changed from 250 to 50"]
    assert state._feed.backtest.settings is today.var_backtest  # today's settings, applied
