"""``qbtc walkforward``: split planning (pure), the choice on train spans only, test figures from
the test span's store rows, ``--out`` and the usage errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from flows.walkforward import (
    Recording,
    SplitResult,
    WalkForwardProblem,
    check_data,
    choose,
    parse_duration,
    parse_grid,
    plan_splits,
    relative_rank,
    run_walkforward,
    summarize,
)
from flows.walkforward_figures import equity_figures
from tests.kafka_helpers import qbtc

M = 60_000
DAY = 1440 * M
T0 = 1_620_000_000_000 // DAY * DAY


# -- planning ---------------------------------------------------------------------------------


def _spans(plan):
    return [(s.index, s.train_start, s.test_start, s.test_end) for s in plan]


def test_durations_parse_to_ms_and_bad_ones_name_the_option():
    assert parse_duration("3600s", "--test") == 3_600_000
    assert parse_duration("90m", "--test") == 90 * M
    assert parse_duration("4h", "--test") == 4 * 3_600_000
    assert parse_duration("7d", "--train") == 7 * DAY
    for bad in ("", "7", "h", "-1d", "0m", "nand", "1x", "infd"):
        with pytest.raises(WalkForwardProblem, match=r"^--train '.*': expected a duration"):
            parse_duration(bad, "--train")


def test_anchored_splits_default_to_n_plus_one_equal_parts_ending_with_the_recording():
    plan = plan_splits(T0, T0 + 4 * DAY, M, 3)
    assert _spans(plan) == [
        (1, T0, T0 + DAY, T0 + 2 * DAY),
        (2, T0, T0 + 2 * DAY, T0 + 3 * DAY),
        (3, T0, T0 + 3 * DAY, T0 + 4 * DAY),
    ]


def test_rolling_train_spans_keep_the_first_ones_length_right_before_each_test():
    plan = plan_splits(T0, T0 + 4 * DAY, M, 3, rolling=True)
    assert [(s.test_start - s.train_start) for s in plan] == [DAY] * 3
    assert [s.train_start for s in plan] == [T0, T0 + DAY, T0 + 2 * DAY]
    plan = plan_splits(T0, T0 + 10 * DAY, M, 2, test_ms=DAY, train_ms=3 * DAY, rolling=True)
    assert _spans(plan) == [(1, T0, T0 + 3 * DAY, T0 + 4 * DAY), (2, T0 + DAY, T0 + 4 * DAY, T0 + 5 * DAY)]


def test_given_train_or_test_sets_the_other_from_what_is_left():
    # --test only: the train span is what is left before the tests, which end with the recording
    assert _spans(plan_splits(T0, T0 + 10 * DAY, M, 2, test_ms=3 * DAY)) == [
        (1, T0, T0 + 4 * DAY, T0 + 7 * DAY),
        (2, T0, T0 + 7 * DAY, T0 + 10 * DAY),
    ]
    # --train only: the tests share what follows it
    assert _spans(plan_splits(T0, T0 + 10 * DAY, M, 4, train_ms=2 * DAY)) == [
        (1, T0, T0 + 2 * DAY, T0 + 4 * DAY),
        (2, T0, T0 + 4 * DAY, T0 + 6 * DAY),
        (3, T0, T0 + 6 * DAY, T0 + 8 * DAY),
        (4, T0, T0 + 8 * DAY, T0 + 10 * DAY),
    ]


def test_boundaries_sit_on_the_bar_grid_and_lengths_floor_to_whole_bars():
    plan = plan_splits(T0 + 17_000, T0 + 100 * M + 5, M, 2, test_ms=90_000)  # 1.5 bars -> 1 bar
    for s in plan:
        assert s.train_start % M == s.test_start % M == s.test_end % M == 0
        assert s.test_end - s.test_start == M
    assert plan[0].train_start == T0 + M  # the first whole bar
    assert plan[-1].test_end <= T0 + 100 * M + 5


def test_too_short_recordings_and_bad_counts_are_usage_errors():
    with pytest.raises(
        WalkForwardProblem, match=r"too short for 3 test span\(s\) of 1d after a train span of 7d"
    ):
        plan_splits(T0, T0 + 5 * DAY, M, 3, test_ms=DAY, train_ms=7 * DAY)
    with pytest.raises(WalkForwardProblem, match="too short"):
        plan_splits(T0, T0 + 3 * M, M, 3)  # 3 bars cannot make 3 tests and a train
    with pytest.raises(WalkForwardProblem, match="--splits 0: expected 1 or more"):
        plan_splits(T0, T0 + DAY, M, 0)
    with pytest.raises(WalkForwardProblem, match="--test 30s is shorter than a bar"):
        plan_splits(T0, T0 + DAY, M, 2, test_ms=30_000)
    with pytest.raises(WalkForwardProblem, match="--train 30s is shorter than a bar"):
        plan_splits(T0, T0 + DAY, M, 2, train_ms=30_000)
    assert len(plan_splits(T0, T0 + 4 * M, M, 3)) == 3  # the smallest: one bar each


def test_a_span_without_data_is_named():
    steps = np.r_[np.arange(T0, T0 + DAY, M), np.arange(T0 + 2 * DAY, T0 + 4 * DAY, M)]
    rec = Recording(T0, T0 + 4 * DAY, M, steps)
    check_data(rec, plan_splits(rec.first, rec.end, M, 3, test_ms=DAY // 2))  # tests in days 2..3: data
    with pytest.raises(
        WalkForwardProblem, match=r"^split 1's test span 2021-05-04 00:00 .. .* holds no data"
    ):
        check_data(rec, plan_splits(rec.first, rec.end, M, 3))


def test_the_grid_is_a_capped_cartesian_product():
    got = parse_grid(["risk.enabled=true,false", "features.window=30,60,90"])
    assert len(got) == 6 and got[0] == ("risk.enabled=true", "features.window=30")
    assert got[-1] == ("risk.enabled=false", "features.window=90")
    assert parse_grid(["a.b=1,1,2"]) == [("a.b=1",), ("a.b=2",)]
    with pytest.raises(WalkForwardProblem, match="at most 16"):
        parse_grid(["a.b=1,2,3,4,5", "a.c=1,2,3,4"])
    with pytest.raises(WalkForwardProblem, match="given twice"):
        parse_grid(["a.b=1,2", "a.b=3"])
    for bad in ("window=1,2", "a.b", "a.b=1,,2"):
        with pytest.raises(WalkForwardProblem, match="expected section.key=value1,value2"):
            parse_grid([bad])


def test_choice_and_ranks():
    assert choose([{"sharpe": None}, {"sharpe": -1.0}, {"sharpe": -1.0}], "sharpe") == 1
    assert choose([{"return": 0.1, "sharpe": 9.0}, {"return": 0.2, "sharpe": 1.0}], "return") == 1
    assert relative_rank([3.0, 1.0, 2.0, 4.0], 1) == pytest.approx(1 / 5)
    assert relative_rank([3.0, 1.0, 2.0, 4.0], 3) == pytest.approx(4 / 5)


def test_the_runner_chooses_on_train_figures_only_and_pbo_runs_after_the_choice():
    plan = plan_splits(0, 40 * M, M, 2)
    calls = []

    def replay(candidate, start, end, run_id):
        calls.append((candidate, start, end, run_id))

    def figures(run_id, start, end):
        candidate = int(run_id.split("-c")[1][0]) - 1
        on_test = start == next(s.test_start for s in plan if f"-s{s.index}-" in run_id)
        # candidate 2 is better on train, worse on test
        sharpe = (1.0 if candidate == 1 else 0.5) * (-1 if on_test else 1)
        return {"sharpe": sharpe, "return": sharpe / 100, "max_drawdown": 0.01}

    results = run_walkforward(plan, [("a.b=1",), ("a.b=2",)], replay, figures, "wf", pbo=True)
    assert [r.chosen for r in results] == [1, 1]
    first = plan[0]
    assert calls[:3] == [
        (0, first.train_start, first.test_start, "wf-s1-c1-train"),
        (1, first.train_start, first.test_start, "wf-s1-c2-train"),
        (1, first.train_start, first.test_end, "wf-s1-c2"),
    ]
    assert calls[3] == (0, first.train_start, first.test_end, "wf-s1-c1")  # --pbo, after the choice
    summary = summarize(results, pbo=True)
    assert summary["overfitting"]["pbo"] == 1.0  # the chosen one ranks last on every test span
    assert summary["overfitting"]["sign_flip_share"] == 1.0
    assert summary["overfitting"]["sharpe_gap_mean"] == pytest.approx(2.0)


def test_summary_spread_is_over_the_splits_test_figures():
    results = [
        SplitResult(s, 0, {"sharpe": tr}, {"return": r, "sharpe": te, "max_drawdown": dd}, f"r{i}")
        for i, (s, tr, r, te, dd) in enumerate(
            zip(
                plan_splits(0, 40 * M, M, 3),
                (1.0, 2.0, -1.0),
                (0.01, -0.02, 0.04),
                (0.5, -1.5, None),
                (0.01, 0.03, 0.02),
                strict=True,
            )  # fmt: skip
        )
    ]
    s = summarize(results, pbo=False)
    assert s["test"]["return"]["mean"] == pytest.approx(0.01)
    assert s["test"]["return"]["std"] == pytest.approx(np.std([0.01, -0.02, 0.04], ddof=1))
    assert (s["test"]["sharpe"]["min"], s["test"]["sharpe"]["max"], s["test"]["sharpe"]["n"]) == (
        -1.5,
        0.5,
        2,
    )
    assert s["overfitting"]["sharpe_gap_mean"] == pytest.approx(((1.0 - 0.5) + (2.0 + 1.5)) / 2)
    assert s["overfitting"]["sign_flip_share"] == pytest.approx(1 / 3)
    assert "pbo" not in s["overfitting"]


def test_equity_figures_match_a_direct_computation():
    rng = np.random.default_rng(3)
    equity = 1000 * np.exp(np.cumsum(rng.normal(0, 0.01, 200)))
    f = equity_figures(equity, M)
    r = equity[1:] / equity[:-1] - 1
    per_year = 365 * 1440
    assert f["return"] == pytest.approx(equity[-1] / equity[0] - 1)
    assert f["max_drawdown"] == pytest.approx(
        max(1 - e / equity[: i + 1].max() for i, e in enumerate(equity))
    )
    assert f["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(per_year))
    assert f["sortino"] == pytest.approx(
        r.mean() / np.sqrt(np.mean(np.minimum(r, 0) ** 2)) * np.sqrt(per_year)
    )
    d = np.diff(equity)
    assert f["profit_factor"] == pytest.approx(d[d > 0].sum() / -d[d < 0].sum())
    assert equity_figures(np.array([5.0]), M)["sharpe"] is None


# -- the command ------------------------------------------------------------------------------


def _candles(path: Path, shock_from: int | None = None) -> None:
    """A day of 1-minute candles of two symbols; from ``shock_from`` (ms) on, prices crash and
    swing (the same rows before it)."""
    rng = np.random.default_rng(11)
    n = 1440
    lines = ["symbol,open_time_ms,open,high,low,close,volume"]
    for k in range(2):
        steps = rng.normal(0.0, 0.0015, n)
        ts = T0 + np.arange(n) * M
        if shock_from is not None:
            late = ts >= shock_from
            steps[late] = steps[late] * 6 - 0.002
        close = 100.0 * (k + 1) * np.exp(np.cumsum(steps))
        open_ = np.r_[close[0], close[:-1]]
        for i in range(n):
            o, c = open_[i], close[i]
            lines.append(
                f"S{k}USDT,{ts[i]},{o:.4f},{max(o, c) * 1.0005:.4f},{min(o, c) * 0.9995:.4f},{c:.4f},10"
            )
    path.write_text("\n".join(lines) + "\n")


COMMON = ["--set", "features.bar_interval=60", "--set", "trading.cost_gate=false", "--quiet"]
GRID = ["--splits", "3", "--grid", "risk.enabled=true,false"]


def _sql(cwd: Path, store: str, query: str) -> list[dict]:
    out = qbtc("sql", query, "--store", store, "--format", "csv", cwd=cwd).stdout
    return list(csv.DictReader(io.StringIO(out)))


@pytest.fixture(scope="module")
def walked(tmp_path_factory) -> dict:
    """Two walk-forwards: the day of candles (with --pbo, JSON out) and the same day whose last test
    span crashes (CSV out)."""
    where = tmp_path_factory.mktemp("walkforward")
    _candles(where / "a.csv")
    last_test = T0 + 1080 * M  # 3 splits of a 1440-bar day: tests start at bars 360, 720, 1080
    _candles(where / "b.csv", shock_from=last_test)
    one = qbtc("walkforward", "a.csv", "--store", "chdb://a.chdb", *COMMON, *GRID, "--pbo", "--out", "a.json",
               cwd=where)  # fmt: skip
    two = qbtc("walkforward", "b.csv", "--store", "chdb://b.chdb", *COMMON, *GRID, "--out", "b.csv.out.csv",
               cwd=where)  # fmt: skip
    return {"where": where, "one": one, "two": two, "last_test": last_test}


def test_each_split_has_its_row_and_the_summary(walked):
    out = walked["one"].stdout
    for i in (1, 2, 3):
        assert any(line.split()[:1] == [str(i)] for line in out.splitlines())
    assert "over 3 splits (test spans)" in out
    assert "train - test Sharpe gap" in out and "probability of backtest overfitting (--pbo)" in out
    doc = json.loads((walked["where"] / "a.json").read_text())
    assert [s["split"] for s in doc["splits"]] == [1, 2, 3]
    assert [s["test_start"] for s in doc["splits"]] == [T0 + 360 * M, T0 + 720 * M, T0 + 1080 * M]
    assert all(s["train_start"] == T0 for s in doc["splits"])  # anchored
    assert all(len(s["candidates_train"]) == 2 and len(s["candidates_test"]) == 2 for s in doc["splits"])
    assert doc["candidates"] == [["risk.enabled=true"], ["risk.enabled=false"]]
    assert 0.0 <= doc["summary"]["overfitting"]["pbo"] <= 1.0
    assert doc["summary"]["test"]["return"]["n"] == 3


def test_test_figures_come_from_the_test_span_rows_only(walked):
    doc = json.loads((walked["where"] / "a.json").read_text())
    split = doc["splits"][1]
    run, a, b = split["run_id"], split["test_start"], split["test_end"]
    t = "toUnixTimestamp64Milli(ts)"
    rows = _sql(
        walked["where"],
        "chdb://a.chdb",
        f"SELECT argMaxIf(equity, ts, {t} <= {a}) AS e0, argMaxIf(equity, ts, {t} <= {b}) AS e1, "
        f"countIf({t} > {a} AND {t} <= {b}) AS steps FROM portfolio FINAL WHERE run_id = '{run}'",
    )[0]
    assert int(rows["steps"]) == 360
    assert split["test"]["start_equity"] == pytest.approx(float(rows["e0"]), rel=1e-12)
    assert split["test_return"] == pytest.approx(
        float(rows["e1"]) / float(rows["e0"]) - 1, rel=1e-9, abs=1e-15
    )
    orders = _sql(
        walked["where"],
        "chdb://a.chdb",
        f"SELECT count() AS n FROM orders FINAL WHERE run_id = '{run}' AND {t} >= {a} AND {t} < {b}",
    )[0]
    assert split["orders"] == int(orders["n"])
    # the run went on from the train span: the equity at the test's start is the train span's end
    assert split["train"]["end_equity"] == pytest.approx(split["test"]["start_equity"], rel=1e-12)


def test_the_choice_does_not_see_the_test_span(walked):
    one = json.loads((walked["where"] / "a.json").read_text())
    two = list(csv.DictReader(io.StringIO((walked["where"] / "b.csv.out.csv").read_text())))
    splits = [r for r in two if r["split"] in ("1", "2", "3")]
    assert [int(r["chosen"]) for r in splits] == [s["chosen"] for s in one["splits"]]
    for r, s in zip(splits, one["splits"], strict=True):
        assert float(r["train_sharpe"]) == pytest.approx(s["train_sharpe"], rel=1e-9)
    # the crash is in the last test span only: its figures differ, the earlier ones do not
    assert float(splits[0]["test_return"]) == pytest.approx(one["splits"][0]["test_return"], rel=1e-9)
    assert float(splits[2]["test_return"]) != pytest.approx(one["splits"][2]["test_return"], rel=1e-3)
    labels = [r["split"] for r in two]
    assert labels[3:7] == ["mean", "std", "min", "max"]
    assert "sharpe_gap_mean" in labels and "sign_flip_share" in labels


def test_the_runs_are_in_the_runs_table_and_a_repeat_is_refused(walked):
    where = walked["where"]
    rows = _sql(where, "chdb://b.chdb", "SELECT run_id, kind FROM runs FINAL ORDER BY run_id")
    assert len(rows) == 9 and {r["kind"] for r in rows} == {"walkforward"}
    again = qbtc("walkforward", "b.csv", "--store", "chdb://b.chdb", *COMMON, *GRID, cwd=where, check=False)
    assert again.returncode == 2
    assert "already holds run wf-" in again.stderr and "--append" in again.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--test", "7"], "--test '7': expected a duration like 3600s, 90m, 4h or 7d"),
        (
            ["--splits", "3", "--test", "12h"],
            "too short for 3 test span(s) of 12h and a train span before them",
        ),
        (["--train", "2d"], "too short for a train span of 2d and 3 test span(s) after it"),
        (["--grid", "risk.nope=1,2"], "--grid risk.nope=1: "),
        (["--grid", "risk.enabled=true,maybe"], "--grid risk.enabled=maybe: "),
        (["--pbo"], "--pbo needs a --grid of 2 or more candidates"),
        (["--splits", "0"], "--splits 0: expected 1 or more"),
        (["--out", "nowhere/x.json"], "--out nowhere/x.json: no directory"),
    ],
)
def test_usage_errors_are_one_line_exit_2(walked, extra, message):
    got = qbtc("walkforward", "a.csv", "--store", "chdb://e.chdb", *COMMON, *extra, cwd=walked["where"],
               check=False)  # fmt: skip
    assert got.returncode == 2, got.stderr
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qbtc walkforward: error: ") and message in lines[0]


def test_the_recording_span_comes_from_a_pass_over_tick_or_candle_files(tmp_path):
    from flows.config import load_settings
    from flows.walkforward_figures import recording_span

    settings = load_settings(None, ["features.bar_interval=60"])
    ticks = tmp_path / "t.csv"
    ticks.write_text(f"ts,symbol,price,qty\n{T0 + 61_000},A/USDT,1,1\n{T0 + 5 * M + 1},B/USDT,2,1\n")
    rec = recording_span([str(ticks)], settings, M)
    assert (rec.first, rec.end, rec.steps_with_data.tolist()) == (T0 + M, T0 + 6 * M, [T0 + M, T0 + 5 * M])
    assert rec.has_data(T0 + 2 * M, T0 + 6 * M) and not rec.has_data(T0 + 2 * M, T0 + 5 * M)
    _candles(tmp_path / "c.csv")
    rec = recording_span([str(tmp_path / "c.csv")], settings, M)
    assert (rec.first, rec.end, len(rec.steps_with_data)) == (T0, T0 + DAY, 1440)
    empty = tmp_path / "e.csv"
    empty.write_text("ts,symbol,price,qty\n")
    with pytest.raises(WalkForwardProblem, match="no records to walk forward over"):
        recording_span([str(empty)], settings, M)


def test_train_runs_end_at_the_test_span_and_the_chosen_run_carries_their_state_into_it(walked):
    doc = json.loads((walked["where"] / "a.json").read_text())
    t = "toUnixTimestamp64Milli(ts)"
    rows = _sql(
        walked["where"],
        "chdb://a.chdb",
        f"SELECT run_id, max({t}) AS last, argMax(equity, ts) AS equity FROM portfolio FINAL GROUP BY run_id",
    )
    last = {r["run_id"]: (int(r["last"]), float(r["equity"])) for r in rows}
    for s in doc["splits"]:
        prefix = s["run_id"].rsplit("-c", 1)[0]
        for j in (1, 2):
            ends, equity = last[f"{prefix}-c{j}-train"]
            assert ends == s["test_start"]  # the train replays never read the test span
            assert s["candidates_train"][j - 1]["end_equity"] == pytest.approx(equity, rel=1e-12)
        # the chosen run, replayed on through the test span, opens it with the train run's equity
        assert s["test"]["start_equity"] == pytest.approx(
            s["candidates_train"][s["chosen"] - 1]["end_equity"]
        )
        assert last[s["run_id"]][0] == s["test_end"]
