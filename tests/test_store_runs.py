"""Runs do not collide in a store: run ids, --append / --fresh, run tags in order ids, per-run counts,
``qbtc sql`` read-only, store paths that do not exist or have no path, a store held by another process."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flow_harness import SHORT_TRADING
from tests.kafka_helpers import qbtc

SHORT = SHORT_TRADING
SETS = [a for s in SHORT for a in ("--set", s)]
ENGINE_OFF = ["--set", "risk.enabled=false"]


@pytest.fixture(scope="module")
def ticks(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("ticks")
    qbtc("simulate", "ticks.csv", *SETS, cwd=where)
    return where / "ticks.csv"


def _replay(ticks: Path, cwd: Path, *extra: str, check: bool = True):
    return qbtc("replay", str(ticks), "--trade", "--quiet", "--store", "chdb://s.chdb", *SETS, *extra,
                cwd=cwd, check=check)  # fmt: skip


def _sql(cwd: Path, query: str) -> list[list[str]]:
    out = qbtc("sql", query, "--store", "chdb://s.chdb", "--format", "csv", cwd=cwd)
    return list(csv.reader(io.StringIO(out.stdout)))[1:]


def _order_ids(cwd: Path) -> list[str]:
    return [row[0] for row in _sql(cwd, "SELECT order_id FROM orders FINAL ORDER BY order_id")]


def _written(stdout: str, table: str) -> int:
    """The summary's count for ``table`` (rows this run wrote)."""
    line = next(x for x in stdout.splitlines() if x.split()[:1] == [table])
    return int(line.split()[1].replace(",", ""))


def _tag(order_id: str) -> str:
    """The run tag of a loop order (``tag-ts-n``) or of a paper-broker exit (``stop:tag:...``)."""
    return order_id.split(":")[1] if ":" in order_id else order_id.split("-")[0]


def _runs(cwd: Path) -> list[list[str]]:
    out = qbtc("runs", "--store", "chdb://s.chdb", "--format", "csv", cwd=cwd)
    return list(csv.reader(io.StringIO(out.stdout)))[1:]


def _run_line(stdout: str) -> str:
    """The run id a run prints (``run: ID``)."""
    return next(x.split()[1] for x in stdout.splitlines() if x.startswith("run: "))


def _by_run(cwd: Path, table: str) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in _sql(cwd, f"SELECT run_id, count() FROM {table} FINAL GROUP BY run_id")}


def test_runs_into_one_store_are_kept_apart_by_run_id_and_a_repeat_is_refused_unless_append(ticks, tmp_path):
    first = _replay(ticks, tmp_path)
    assert "rows written by this run" in first.stdout
    run_on = _run_line(first.stdout)
    ids_on = _order_ids(tmp_path)
    assert len(ids_on) > 20 and _written(first.stdout, "orders") == len(ids_on)
    (tag_on,) = {_tag(i) for i in ids_on}
    loop_ids = [i for i in ids_on if ":" not in i]  # not the paper broker's exits (never sent to a venue)
    assert len(tag_on) == 8 and loop_ids and all(len(i) <= 33 for i in loop_ids)  # 36 with a child's /nn
    assert len(run_on) == 8 and _by_run(tmp_path, "orders") == {run_on: len(ids_on)}

    # the same run again (same settings and input: the same id): one line, exit 2, nothing written
    refused = _replay(ticks, tmp_path, check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and f"already holds run {run_on}" in refused.stderr
    assert "--append" in refused.stderr and "--fresh" in refused.stderr and "--run-id" in refused.stderr
    assert _order_ids(tmp_path) == ids_on
    # a features-only replay of the same data is idempotent as before: no refusal
    qbtc("replay", str(ticks), "--quiet", "--store", "chdb://s.chdb", *SETS, cwd=tmp_path)

    # another run (the engine off): another id and its own tag; no row of the first run is overwritten
    off = _replay(ticks, tmp_path, *ENGINE_OFF)
    run_off = _run_line(off.stdout)
    assert run_off != run_on
    both = _order_ids(tmp_path)
    ids_off = [i for i in both if _tag(i) != tag_on]
    assert set(ids_on) <= set(both) and len(both) == len(ids_on) + len(ids_off)
    (tag_off,) = {_tag(i) for i in ids_off}
    assert tag_off != tag_on
    assert _written(off.stdout, "orders") == len(ids_off)  # this run's rows, not the store's
    for table in ("orders", "fills", "signals", "portfolio"):
        counts = _by_run(tmp_path, table)
        assert set(counts) == {run_on, run_off} and all(counts.values()), (table, counts)
    listed = {r[0]: r for r in _runs(tmp_path)}
    assert {run_on, run_off} <= set(listed)
    assert listed[run_on][2] == listed[run_off][2] == "finished"
    assert int(listed[run_on][9]) == len(ids_on) and int(listed[run_off][9]) == len(ids_off)

    # the same run again with --append: the same ids (deterministic), rows replaced, none added
    again = _replay(ticks, tmp_path, "--append")
    assert _run_line(again.stdout) == run_on
    assert _order_ids(tmp_path) == both and _written(again.stdout, "orders") == len(ids_on)

    # --run-id names a run: the same settings under another id are kept beside the first
    named = _replay(ticks, tmp_path, "--run-id", "engine-on.2")
    assert _run_line(named.stdout) == "engine-on.2"
    assert _by_run(tmp_path, "orders")["engine-on.2"] == len(ids_on)
    bad = _replay(ticks, tmp_path, "--run-id", "no spaces", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--run-id 'no spaces'" in bad.stderr

    # --fresh: qbtc's tables dropped and made again: only this run's rows
    fresh = _replay(ticks, tmp_path, *ENGINE_OFF, "--fresh")
    assert _order_ids(tmp_path) == ids_off
    assert _written(fresh.stdout, "ticks") == int(_sql(tmp_path, "SELECT count() FROM ticks FINAL")[0][0])
    assert [r[0] for r in _runs(tmp_path)] == [run_off]


def test_append_and_fresh_exclude_each_other_and_need_a_store(ticks, tmp_path):
    both = _replay(ticks, tmp_path, "--append", "--fresh", check=False)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    null = qbtc("replay", str(ticks), "--null-sink", "--fresh", "--quiet", cwd=tmp_path, check=False)
    assert null.returncode == 2
    assert null.stderr == "qbtc replay: error: --fresh needs a store (not --null-sink)\n"


def test_sql_is_read_only_unless_write(tmp_path):
    qbtc("sql", "SELECT 1", "--store", "chdb://:memory:", cwd=tmp_path)
    store = tmp_path / "s.chdb"
    # a store made by a run (here: by a --write statement on a path made first)
    store.mkdir()
    qbtc("sql", "SELECT count() FROM fills", "--store", "chdb://s.chdb", cwd=tmp_path)
    for statement in ("DROP TABLE fills", " /* c */ insert into fills SELECT * FROM fills", "TRUNCATE x"):
        out = qbtc("sql", statement, "--store", "chdb://s.chdb", cwd=tmp_path, check=False)
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and "read-only" in out.stderr and "--write" in out.stderr
    assert _sql(tmp_path, "EXISTS TABLE fills") == [["1"]]
    for statement in ("SHOW TABLES", "DESCRIBE TABLE fills", "EXPLAIN SELECT 1", "WITH 1 AS x SELECT x"):
        qbtc("sql", statement, "--store", "chdb://s.chdb", cwd=tmp_path)
    made = qbtc("sql", "CREATE TABLE notes (a Int32) ENGINE = MergeTree ORDER BY a", "--store", "chdb://s.chdb",
                "--write", cwd=tmp_path)  # fmt: skip
    assert made.stdout == "CREATE: done\n"
    qbtc("sql", "INSERT INTO notes VALUES (7)", "--store", "chdb://s.chdb", "--write", cwd=tmp_path)
    assert _sql(tmp_path, "SELECT sum(a) FROM notes") == [["7"]]


def test_sql_refuses_a_store_that_does_not_exist(tmp_path):
    out = qbtc("sql", "SELECT count() FROM fills", "--store", "chdb://tpyo.chdb", cwd=tmp_path, check=False)
    assert out.returncode == 2
    assert out.stderr == f"qbtc sql: error: store {tmp_path / 'tpyo.chdb'} does not exist " \
        "(check --store; qbtc run or replay creates a store)\n"  # fmt: skip
    assert not (tmp_path / "tpyo.chdb").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["sql", "SELECT 1"],
        ["replay", "x.csv"],
        ["run"],
        ["stress", "--position", "BTC/USDT=1", "--equity", "9"],
    ],
    ids=["sql", "replay", "run", "stress"],
)
def test_a_chdb_store_without_a_path_is_a_usage_error(tmp_path, args):
    (tmp_path / "x.csv").write_text("ts,symbol,price,qty\n1700000000000,BTC/USDT,1,1\n")
    out = qbtc(*args, "--store", "chdb://", cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.endswith("error: store chdb:// has no path: give chdb://PATH (chdb://:memory: for a "
                               "throw-away store)\n"), out.stderr  # fmt: skip


HOLD = """
import sys, time
from sinks.clickhouse_store import Store
Store(sys.argv[1])
print("open", flush=True)
time.sleep(120)
"""


def test_a_store_held_by_another_process_names_its_pid(tmp_path):
    root = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, f"chdb://{tmp_path}/s.chdb"], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "open\n"
        for args in (["sql", "SELECT 1"], ["run", "--quiet"]):
            out = qbtc(*args, "--store", f"chdb://{tmp_path}/s.chdb", cwd=tmp_path, check=False)
            assert out.returncode == 1, out.stderr
            assert out.stderr == (
                f"qbtc {args[0]}: failed: store {tmp_path / 's.chdb'} in use by another qbtc process "
                f"(pid {holder.pid})\n"
            )
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # once it is gone, the store opens again
    qbtc("sql", "SELECT 1", "--store", f"chdb://{tmp_path}/s.chdb", cwd=tmp_path)
