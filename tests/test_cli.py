"""The qbtc command line, end to end in subprocesses (each has its own chDB engine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

T = 1_700_000_000_000


def qbtc(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["replay"], ["sql"], ["simulate"], ["kafka"], ["kafka", "up"], ["kafka", "topics"],
     ["publish"], ["stream"], ["record"], ["control"], ["runs"], ["report"], ["monitor"], ["monitor", "up"]],
)  # fmt: skip
def test_help(command):
    out = qbtc(*command, "--help")
    assert out.returncode == 0
    assert "usage: qbtc" in out.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["replay", "/nonexistent/ticks.csv"], "no such file"),
        (["replay", "ticks.parquet"], "unknown tick file type"),
        (["replay", "x.csv", "--set", "features.window"], "expected section.key=value"),
        (["replay", "x.csv", "--set", "features.nope=1"], "unknown key"),
        (["replay", "x.csv", "--set", "features.window=abc"], "features.window must be an int in [3, 1000"),
        (
            ["replay", "x.csv", "--set", "features.var_model=nope"],
            "features.var_model must be one of historical, ewma, fhs, cornish_fisher, student_t, garch, got",
        ),
        (["replay", "x.csv", "--set", "var_backtest.red=0.5"], "var_backtest.red must be > yellow (0.95)"),
        (["replay", "x.csv", "--config", "/nonexistent.toml"], "cannot read config"),
        (["sql", "SELECT", "--store", "ftp://x"], "neither chdb"),
        (["replay", "kafka://"], "is not kafka://BROKERS"),
        (["replay", "kafka://h:1/t", "--from-ts", "yesterday"], "neither epoch ms nor ISO-8601"),
        (["replay", "kafka://h:1/t", "--from-offset", "1", "--from-ts", "5"], "not both"),
        (
            ["replay", "x.csv", "--from-ts", "2021-05-20T00:00:00Z", "--to-ts", "1621468800000"],
            "span is empty",
        ),
        (["replay", "x.csv", "--to-ts", "tomorrow"], "--to-ts: ts 'tomorrow' is neither"),
        (["publish", "--simulate", "x.csv"], "one of the two"),
        (["publish", "--simulate", "--rate", "0"], "--rate must be > 0"),
        (["stream", "--process-id", "0"], "--process-id needs --addresses"),
        (["record", "--exchange", "nosuchexchange", "--symbols", "A/B", "--to", "x.csv"], "nosuchexchange"),
        (["record", "--exchange", "binance", "--symbols", "BTCUSDT", "--to", "x.csv"], "BTCUSDT"),
        (["stream", "--set", "kafka.partitions=0"], "kafka.partitions must be an int >= 1, got 0"),
        (["control", "resume", "--reason", "  "], "needs a reason"),
        (["control", "resume", "--reason", "ok", "--at", "soon"], "neither epoch ms nor ISO-8601"),
        (["run", "--set", "portfolio.initial_cash=0"], "portfolio.initial_cash must be a finite number > 0"),
        (["run", "--set", "risk.ers_threshold=1.5"], "risk.ers_threshold must be a finite number in [0, 1]"),
        (["run", "--set", "sizing.entropy_limit=nan"], "sizing.entropy_limit must be a finite number"),
        (["run", "--set", "risk.breaker_levels=0.02,0.01,0.03"], "risk.breaker_levels must be ascending"),
        (["run", "--set", "trading.ers_threshold=0.5"], "trading.ers_threshold moved to risk.ers_threshold"),
        (["run", "--set", "execution.bar_interval_ms=5"], "comes from features.bar_interval"),
        (["replay", "x.csv", "--report", "r.html"], "--report needs --trade"),
        (["replay", "x.csv", "--trade", "--null-sink", "--report", "r.html"], "--report needs a store"),
        (["replay", "x.csv", "--run-id", "a b"], "--run-id 'a b': use 1-64 letters"),
        (["run", "--run-id=.x", "--no-trade"], "--run-id '.x'"),
        (["runs", "--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_unusable_arguments_exit_2_with_one_line(tmp_path, args, words):
    out = qbtc(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert words in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_header_is_a_clear_error(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,c\n1,2,3\n")
    out = qbtc("replay", "t.csv", cwd=tmp_path)
    assert out.returncode == 2
    assert "header has no column ts" in out.stderr


def _ticks(tmp_path):
    path = tmp_path / "ticks.csv"
    lines = ["ts,symbol,price,qty,side,trade_id,exchange"]
    for i in range(400):
        for j, sym in enumerate(("BTC/USDT", "ETH/USDT")):
            price = 100 * (j + 1) + (i * 7919 % 13) * 0.1
            lines.append(f"{T + i * 1000 + j},{sym},{price},{1 + i % 3},buy,{i},test")
    lines.append("bad,line")
    lines.append(f"{T},BTC/USDT,1,1,buy,x,test")  # late
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_twice_leaves_every_key_once(tmp_path):
    path = _ticks(tmp_path)
    store = f"chdb://{tmp_path}/store.chdb"
    conf = tmp_path / "qbtc.toml"
    conf.write_text("[features]\nwindow = 50\ncorr_window = 60\ncorr_every = 10\n")
    for _ in range(2):
        out = qbtc("replay", str(path), "--store", store, "--config", str(conf), "--quiet")
        assert out.returncode == 0, out.stderr
    counts = {}
    for table, key in [
        ("ticks", "exchange, symbol, trade_id, ts, price, qty, seq"),
        ("bars", "symbol, ts"),
        ("features", "symbol, ts"),
        ("correlations", "ts, symbol_a, symbol_b"),
        ("dead_letters", "source"),
    ]:
        out = qbtc(
            "sql", f"SELECT count(), uniqExact({key}) FROM {table} FINAL", "--store", store, "--format", "csv"
        )
        assert out.returncode == 0, out.stderr
        total, unique = map(int, out.stdout.splitlines()[1].split(","))
        assert total == unique > 0, table
        counts[table] = total
    assert counts["ticks"] == 800
    assert counts["dead_letters"] == 2
    assert counts["bars"] == 800
    assert counts["features"] == 2 * (400 - 50)


def test_replay_with_a_span_stores_only_bars_inside_it(tmp_path):
    day = 1_621_382_400_000  # 2021-05-19T00:00:00Z
    candles = ["symbol,open_time_ms,open,high,low,close,volume"]
    candles += [
        f"{s},{day + k * 60_000},{100 + k % 7},108,99,{101 + k % 5},{1 + k}"
        for s in ("AUSDT", "BUSDT")
        for k in range(180)
    ]
    (tmp_path / "candles.csv").write_text("\n".join(candles) + "\n")
    ticks = ["ts,symbol,price,qty"] + [f"{day + k * 10_000},C/USDT,{50 + k % 3},1" for k in range(1080)]
    (tmp_path / "ticks.csv").write_text("\n".join(ticks) + "\n")
    store = f"chdb://{tmp_path}/store.chdb"
    out = qbtc(
        "replay",
        "candles.csv",
        "ticks.csv",
        "--store",
        store,
        "--quiet",
        "--set",
        "features.bar_interval=60",
        "--from-ts",
        "2021-05-19T00:30:00+00:00",
        "--to-ts",
        str(day + 90 * 60_000),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    inside = 2 * 60 + 360  # an hour of candles for two symbols, of ticks every 10 s for one
    assert f"replay: {inside:,} records" in out.stdout
    assert f"{2 * 180 + 1080 - inside:,} records outside --from-ts/--to-ts skipped" in out.stdout
    query = (
        "SELECT symbol, count(), toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(max(ts)) "
        "FROM bars FINAL GROUP BY symbol ORDER BY symbol"
    )
    out = qbtc("sql", query, "--store", store, "--format", "csv")
    assert out.returncode == 0, out.stderr
    first, last = day + 30 * 60_000, day + 89 * 60_000
    assert out.stdout.splitlines()[1:] == [f"{s},60,{first},{last}" for s in ("A/USDT", "B/USDT", "C/USDT")]
    out = qbtc("sql", "SELECT count() FROM dead_letters FINAL", "--store", store, "--format", "csv")
    assert out.stdout.splitlines()[1] == "0"


def test_sql_prints_a_table(tmp_path):
    out = qbtc("sql", "SELECT 1 AS one, 'x' AS s", "--store", "chdb://:memory:")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["one", "|", "s"]
    assert "(1 row)" in out.stdout


def test_run_small_market(tmp_path):
    out = qbtc(
        "run",
        "--quiet",
        "--set",
        "simulator.duration_s=420",
        "--set",
        "simulator.trades_per_s=200",
        "--set",
        "features.window=60",
        "--set",
        "features.corr_window=120",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    for table in ("ticks", "bars", "features", "correlations"):
        line = next(x for x in out.stdout.splitlines() if x.strip().startswith(table))
        assert int(line.split()[1].replace(",", "")) > 0, line
    assert "qbtc sql" in out.stdout
    assert (tmp_path / "var" / "qbtc.chdb").is_dir()
    # the main job trades by default and ends with the backtest figures
    assert "backtest " in out.stdout and "max drawdown" in out.stdout and "VaR exceedances" in out.stdout


def test_control_appends_a_recorded_command(tmp_path):
    out = qbtc(
        "control", "resume", "--reason", "losses reviewed", "--at", "2021-05-20T00:00:00Z", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    line = json.loads((tmp_path / "var" / "control.jsonl").read_text())
    issued = line.pop("issued")  # the wall clock when given (issue 14: live runs apply what is issued)
    assert line == {"ts": 1621468800000, "command": "resume", "reason": "losses reviewed"}
    assert isinstance(issued, int) and issued > 1621468800000


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "sql",
            "SELECT number FROM numbers(200000)",
            "--store",
            "chdb://:memory:",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err
    assert proc.returncode == 141
