"""Issue 14 point 4, through the command line: wrong JSON types are ``schema`` dead letters, random
bytes in a CSV are ``parse`` dead letters, settings windows are bounded, unknown ``QBTC_*``
variables and options a command does not read are errors, and empty inputs are alike."""

from __future__ import annotations

import gzip
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from flows.config import ConfigError, load_settings
from flows.inputs import file_inputs
from operators.features.correlation_grid import CorrelationSettings
from schemas.settings import MAX_WINDOW, SettingsError

ROOT = Path(__file__).resolve().parent.parent
T = 1_723_161_240_000


def qbtc(*args, cwd, env=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("QBTC_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full | {"PYTHONPATH": str(ROOT)},
        timeout=300,
    )


def _one_error_line(out, words: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def _dead(tmp_path: Path, store: str) -> list[tuple[str, str, str]]:
    q = "SELECT source, reason, message FROM dead_letters FINAL ORDER BY source"
    out = qbtc("sql", q, "--store", store, "--format", "tsv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return [tuple(line.split("\t")) for line in out.stdout.splitlines()[1:]]


# --- (a) wrong JSON types ---------------------------------------------------------------------------

GOOD = {"ts": T, "symbol": "BTC/USDT", "price": 50.5, "qty": 2.0}
WRONG = [
    {"symbol": 42},
    {"symbol": True},
    {"price": "50.5"},
    {"price": True},
    {"qty": False},
    {"qty": "2"},
    {"ts": True},
    {"ts": 1.5},
    {"side": True},
    {"side": 1},
    {"trade_id": 7},
    {"trade_id": False},
    {"exchange": 5},
    {"exchange": True},
    {"symbol": ["BTC/USDT"]},
    {"price": {"v": 1}},
]


def test_wrong_json_types_of_every_tick_field_are_schema_dead_letters(tmp_path):
    lines = [orjson.dumps(GOOD | {"ts": T - 1000})] + [orjson.dumps(GOOD | w) for w in WRONG]
    (tmp_path / "t.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = qbtc("replay", "t.jsonl", "--store", "chdb://s", "--quiet", "--no-trade", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    dead = _dead(tmp_path, "chdb://s")
    assert [(s, r) for s, r, _ in dead] == sorted(
        (f"t.jsonl:{i}", "schema") for i in range(2, len(WRONG) + 2)
    )
    ticks = qbtc(
        "sql", "SELECT symbol FROM ticks FINAL", "--store", "chdb://s", "--format", "csv", cwd=tmp_path
    )
    assert ticks.stdout.splitlines()[1:] == ["BTC/USDT"]  # never a symbol "42"


def test_wrong_json_types_of_candles_are_schema_dead_letters(tmp_path):
    m = 60_000
    t0 = T // m * m
    rows = [[t0, 1, 2, 0.5, 1.5, 10], [True, 1, 2, 0.5, 1.5, 10], [t0 + m, False, 2, 0.5, 1.5, 10]]
    rows += [[t0 + 2 * m, 1, 2, 0.5, 1.5, [10]], [t0 + 3 * m, 1, {"h": 2}, 0.5, 1.5, 10]]
    rows += [[t0 + 4 * m, "1", "2", "0.5", "1.5", "10"], [t0 + 5 * m, "1_0", 2, 0.5, 1.5, 10]]
    rows += [[t0 + k * m, 1, 2, 0.5, 1.5, 10] for k in (6, 7, 8)]
    (tmp_path / "BTC_USDT-1m.json").write_bytes(orjson.dumps(rows))
    args = ["--store", "chdb://s", "--quiet", "--set", "features.bar_interval=60"]
    out = qbtc("replay", "BTC_USDT-1m.json", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    reasons = {s.rsplit("[", 1)[1]: r for s, r, _ in _dead(tmp_path, "chdb://s")}
    assert reasons == {"1]": "schema", "2]": "schema", "3]": "schema", "4]": "schema", "6]": "parse"}


# --- (b) random bytes in a CSV ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_in_a_csv_are_parse_dead_letters_and_the_run_goes_on(tmp_path, seed):
    rng = random.Random(seed)
    junk = bytes(rng.randrange(256) for _ in range(20_000))
    junk = b"\x00\xff\r" + junk  # a first line that is no text (the file began so)
    (tmp_path / "junk.csv").write_bytes(junk)
    (tmp_path / "good.csv").write_text(f"ts,symbol,price,qty\n{T},BTC/USDT,50.5,1\n")
    out = qbtc("replay", "junk.csv", "good.csv", "--store", "chdb://s", "--no-trade", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    dead = _dead(tmp_path, "chdb://s")
    assert dead and {r for _, r, _ in dead} <= {"parse", "schema"}
    assert sum(r == "parse" for _, r, _ in dead) >= len(dead) // 2
    assert all(s.startswith("junk.csv:") for s, _, _ in dead)
    lines = len([x for x in junk.split(b"\n") if x.removesuffix(b"\r")])
    counts = qbtc(
        "sql", "SELECT count() FROM ticks FINAL", "--store", "chdb://s", "--format", "csv", cwd=tmp_path
    )
    assert int(counts.stdout.splitlines()[1]) + len(dead) == lines + 1  # records read = ticks + dead letters


# --- (c) settings are range-checked -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        (
            "features.window",
            "99999999999999999999999",
            "features.window must be an int in [3, 10000000], got",
        ),
        ("features.window", str(MAX_WINDOW + 1), f"features.window must be an int in [3, {MAX_WINDOW}]"),
        ("features.corr_window", "20000000", "features.corr_window must be an int in [2, 10000000]"),
        ("features.bar_interval", "99999999999", "features.bar_interval must be an int in [1, 31622400]"),
        ("var_backtest.window", "99999999999", "var_backtest.window must be an int in [2, 10000000]"),
    ],
)
def test_windows_are_bounded_by_memory(tmp_path, key, value, words):
    (tmp_path / "t.csv").write_text(f"ts,symbol,price,qty\n{T},BTC/USDT,50.5,1\n")
    _one_error_line(qbtc("replay", "t.csv", "--null-sink", "--set", f"{key}={value}", cwd=tmp_path), words)


def test_the_window_bound_is_accepted_and_every_window_setting_has_it():
    assert load_settings(None, [f"features.window={MAX_WINDOW}"]).features.window == MAX_WINDOW
    with pytest.raises(ConfigError, match=r"regime.trend_window must be an int in \[1, 10000000\]"):
        load_settings(None, [f"regime.trend_window={MAX_WINDOW + 1}"])
    with pytest.raises(SettingsError, match=r"CorrelationSettings.window must be an int in \[2, 10000000\]"):
        CorrelationSettings(window=MAX_WINDOW + 1)


BAD_BAR_INTERVALS = {
    "not a multiple": (
        ["features.bar_interval=60", "features.bar_intervals=90,3600"],
        "features.bar_intervals must be multiples of bar_interval (60), got (90, 3600)",
    ),
    "more than 8 resolutions": (
        ["features.bar_intervals=2,3,4,5,6,7,8,9"],
        "features.bar_intervals must be at most 8 resolutions counting bar_interval (1), got (2, 3",
    ),
    "a duplicate": (
        ["features.bar_intervals=60,900,60"],
        "features.bar_intervals must be distinct intervals (60 listed more than once), got (60, 900, 60)",
    ),
    "zero": (
        ["features.bar_intervals=0,60"],
        "features.bar_intervals must be a list of ints in [1, 31622400], got (0, 60)",
    ),
    "negative": (
        ["features.bar_intervals=-60"],
        "features.bar_intervals must be a list of ints in [1, 31622400], got (-60,)",
    ),
    "not an int": (
        ["features.bar_intervals=1.5"],
        "features.bar_intervals must be a list of ints in [1, 31622400], got '1.5'",
    ),
}
"""Bad ``features.bar_intervals``: the overrides and the start of the error each gives."""


@pytest.mark.parametrize(("sets", "words"), list(BAD_BAR_INTERVALS.values()), ids=list(BAD_BAR_INTERVALS))
def test_a_bad_bar_intervals_is_an_error_naming_the_setting(sets, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_settings(None, sets, env={})


def test_bar_intervals_in_any_order_with_or_without_the_base_are_the_same_resolutions():
    """Unsorted is fine (the resolutions are sorted), so is the base listed, and 8 resolutions in all."""
    want = load_settings(None, ["features.bar_intervals=60,900,3600"], env={}).features
    for given in ("3600,60,900", "1,900,3600,60"):
        got = load_settings(None, [f"features.bar_intervals={given}"], env={}).features
        assert (got.intervals, got.resolutions()) == (want.intervals, want.resolutions()), given
    most = load_settings(None, ["features.bar_intervals=2,3,4,5,6,7,8"], env={}).features
    assert most.intervals == (1, 2, 3, 4, 5, 6, 7, 8)


# --- (d) unknown QBTC_* variables -------------------------------------------------------------------


def test_an_unknown_qbtc_variable_is_an_error_naming_the_nearest_key(tmp_path):
    (tmp_path / "t.csv").write_text(f"ts,symbol,price,qty\n{T},BTC/USDT,50.5,1\n")
    out = qbtc("replay", "t.csv", "--null-sink", cwd=tmp_path, env={"QBTC_FEATURES_WINDW": "60"})
    _one_error_line(
        out,
        "qbtc replay: error: unknown environment variable QBTC_FEATURES_WINDW: did you mean "
        "QBTC_FEATURES_WINDOW (features.window)?",
    )
    known = {"QBTC_FEATURES_WINDOW": "60", "QBTC_KAFKA_CACHE": str(tmp_path), "QBTC_TEST_KAFKA": "x"}
    out = qbtc("replay", "t.csv", "--null-sink", cwd=tmp_path, env=known)
    assert out.returncode == 0, out.stderr


def test_every_qbtc_variable_the_test_suite_reads_is_accepted():
    """Test knobs reach the CLI subprocesses through the environment: none may be refused."""
    import re

    from flows.config import _env_overrides

    read = set()
    for path in (ROOT / "tests").glob("*.py"):
        read |= set(re.findall(r"environ(?:\.get\(|\[)\s*[\"'](QBTC_[A-Z0-9_]+)", path.read_text()))
    assert {"QBTC_TEST_KAFKA", "QBTC_FUZZ_RECORDS"} <= read
    for name in sorted(read):
        _env_overrides({name: "1"})  # no ConfigError


# --- (e) options that do not apply ------------------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        ["--from-offset", "5"],
        ["--from-offset", "0"],
        ["--metrics-port", "9999"],
        ["--outputs"],
        ["--recovery-dir", "r"],
        ["--process-id", "0"],
    ],
)
def test_topic_options_on_a_file_replay_are_errors(tmp_path, option):
    (tmp_path / "t.csv").write_text(f"ts,symbol,price,qty\n{T},BTC/USDT,50.5,1\n")
    out = qbtc("replay", "t.csv", "--null-sink", *option, cwd=tmp_path)
    _one_error_line(out, f"{option[0]} applies to topic replays (kafka://BROKERS/TOPIC) only, not to files")


# --- (f) empty inputs -------------------------------------------------------------------------------

EMPTY = {
    "empty.csv": b"",
    "empty.jsonl": b"",
    "blank.jsonl": b"\n\n\r\n",
    "header.csv": b"ts,symbol,price,qty\n",
    "header_crlf.csv": b"ts,symbol,price,qty\r\n\r\n",
    "empty.csv.gz": gzip.compress(b""),
    "header.csv.gz": gzip.compress(b"ts,symbol,price,qty\n"),
    "candles.csv": b"symbol,open_time_ms,open,high,low,close,volume\n",
    "BTC_USDT-1m.json": b"[]",
}


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_inputs_are_zero_records_exit_0_and_one_warning(tmp_path, name):
    (tmp_path / name).write_bytes(EMPTY[name])
    out = qbtc("replay", name, "--null-sink", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == f"qbtc: warning: {name}: no records (an empty file)\n"
    assert "replay: 0 records" in out.stdout


def test_a_file_with_records_gives_no_warning(tmp_path):
    warned: list[str] = []
    (tmp_path / "t.csv").write_text(f"ts,symbol,price,qty\n{T},BTC/USDT,50.5,1\n")
    (tmp_path / "e.jsonl").write_text("")
    paths = [str(tmp_path / "t.csv"), str(tmp_path / "e.jsonl")]
    file_inputs(paths, load_settings(None, []), warn=warned.append)
    assert warned == [f"{tmp_path / 'e.jsonl'}: no records (an empty file)"]
