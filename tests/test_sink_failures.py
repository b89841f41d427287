"""A store that stops taking writes ends a flow with one line and exit code 1; a restart completes it.

Two ways to make a chDB store refuse writes, both without privileges: a
table's data directory replaced by a file while the flow runs (every insert
then fails in the filesystem), and a CHECK constraint on ``ticks.ts`` (every
insert with a later tick fails, so the failure comes mid-run at a point the
data decides; dropping the constraint clears the fault).

Before the fix such a failure made Bytewax panic, the sink's close failed
again while unwinding, Rust aborted, and chDB's SIGABRT handler held the
aborted process alive: no exit, no reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import TestingSource, run_main
from confluent_kafka.admin import AdminClient
from kafka_helpers import dump, publish_sim, qbtc, records_in, set_args, unique

from infra.kafka.broker import bootstrap, stop_node
from schemas.records import Bar
from sinks import failure
from sinks.clickhouse_store import StoreWriteError
from sinks.output_sink import _OutPartition
from sinks.store_sink import RowCounter, StoreSink, StoreWriter

EXIT_WITHIN_S = 60

_STORE = """
import sys
from sinks.clickhouse_store import Store
store = Store(sys.argv[1])
for sql in sys.argv[2:]:
    store.command(sql)
"""


def store_command(dsn: str, cwd: Path, *sql: str) -> None:
    """Open the store at ``dsn`` in a subprocess (creating its tables) and run ``sql``."""
    subprocess.run([sys.executable, "-c", _STORE, dsn, *sql], cwd=cwd, check=True, timeout=120)


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> tuple[int | None, str, float]:
    """(exit code or None if still running after ``timeout_s``, stderr, seconds waited); kills a hung one."""
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, err, time.monotonic() - start
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return None, err, time.monotonic() - start


def _ticks_csv(path: Path, n: int) -> Path:
    lines = ["ts,symbol,price,qty,side,trade_id,exchange"]
    t0 = 1_700_000_000_000
    for i in range(n):
        sym = ("A/B", "C/D", "E/F")[i % 3]
        lines.append(f"{t0 + i * 7},{sym},{100 + (i * 37 % 101) / 10},{1 + i % 5},buy,{i},x")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_store_that_fails_mid_replay_ends_it_with_one_line(tmp_path):
    """``qbtc replay FILE``: the ticks table's directory becomes a file after the first write."""
    csv = _ticks_csv(tmp_path / "t.csv", 300_000)
    store = tmp_path / "s.chdb"
    store_command(f"chdb://{store}", tmp_path)
    table_dir = (store / "data" / "default" / "ticks").resolve()
    cmd = [sys.executable, "-m", "flows.cli", "replay", str(csv), "--store", f"chdb://{store}", "--quiet"]
    proc = subprocess.Popen(
        [*cmd, "--set", "store.batch_rows=5000"], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not any(table_dir.glob("all_1_1_0")):  # the first insert committed (not its tmp_insert_ dir)
        assert proc.poll() is None and time.monotonic() < deadline, "the replay never wrote ticks"
        time.sleep(0.01)
    os.rename(table_dir, f"{table_dir}.away")
    table_dir.write_text("")  # inserts now fail: "Not a directory"
    code, err, seconds = wait_exit(proc, EXIT_WITHIN_S)
    print(f"exit {code} {seconds:.1f} s after the fault")
    assert code == 1, f"exit {code} after {seconds:.0f} s; stderr:\n{err[-3000:]}"
    lines = err.splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("qbtc replay: failed: store write failed: ticks: "), lines[0]
    assert "Not a directory" in lines[0]


def test_an_abort_after_the_store_opened_ends_the_process(tmp_path):
    """chDB's SIGABRT handler never returns: the CLI puts the default back once the store is open."""
    csv = _ticks_csv(tmp_path / "t.csv", 300_000)
    store = tmp_path / "s.chdb"
    cmd = [sys.executable, "-m", "flows.cli", "replay", str(csv), "--store", f"chdb://{store}", "--quiet"]
    proc = subprocess.Popen(
        [*cmd, "--set", "store.batch_rows=5000"], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not any(store.glob("store/*/*/*_1_1_0")):  # the flow writes: the store is open
        assert proc.poll() is None and time.monotonic() < deadline, "the replay never wrote"
        time.sleep(0.01)
    proc.send_signal(signal.SIGABRT)  # what a Rust abort raises
    code, err, seconds = wait_exit(proc, 30)
    assert code == -signal.SIGABRT, f"exit {code} after {seconds:.0f} s; stderr:\n{err[-3000:]}"


@pytest.mark.kafka
def test_a_stream_whose_store_fails_mid_run_exits_and_a_restart_completes_it(kafka_bootstrap, tmp_path):
    """``qbtc stream --until-end --recovery-dir D``: exit 1 with one line; fault cleared, a rerun exits 0.

    The store then holds what an uninterrupted run stores. A topic replay
    into a failing store ends the same way.
    """
    prefix = unique("sf")
    n = publish_sim(kafka_bootstrap, prefix, tmp_path, seconds=300, rate=200, symbols=4)
    args = ["stream", "--kafka", kafka_bootstrap, "--until-end", "--quiet", *set_args(prefix)]
    qbtc(*args, "--store", "chdb://ref.chdb", cwd=tmp_path)
    want = dump("chdb://ref.chdb", tmp_path)
    assert len(want["ticks"]["rows"]) == n and want["features"]["rows"]
    times = sorted(row[want["ticks"]["columns"].index("ts")] for row in want["ticks"]["rows"])
    middle = times[len(times) // 2]  # "2023-11-14 22:15:00.123000+00:00"

    fault = f"CHECK ts < toDateTime64('{middle[:23]}', 3, 'UTC')"
    store_command("chdb://rec.chdb", tmp_path, f"ALTER TABLE ticks ADD CONSTRAINT fault {fault}")
    rec_args = [*args, "--store", "chdb://rec.chdb", "--recovery-dir", "recovery"]
    rec_args += ["--snapshot-interval", "0.3", "--set", "store.batch_rows=2000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *rec_args], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    code, err, seconds = wait_exit(proc, 120)
    print(f"exit {code} after {seconds:.1f} s")
    assert code == 1, f"exit {code} after {seconds:.0f} s; stderr:\n{err[-3000:]}"
    lines = err.splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("qbtc stream: failed: store write failed: ticks: "), lines[0]
    assert "VIOLATED_CONSTRAINT" in lines[0]

    store_command("chdb://rep.chdb", tmp_path, f"ALTER TABLE ticks ADD CONSTRAINT fault {fault}")
    url = f"kafka://{kafka_bootstrap}/{prefix}ticks"
    replay = qbtc(
        "replay", url, "--store", "chdb://rep.chdb", "--quiet", *set_args(prefix), cwd=tmp_path, check=False
    )
    assert replay.returncode == 1, replay.stderr[-3000:]
    assert replay.stderr.startswith("qbtc replay: failed: store write failed: ticks: "), replay.stderr[-3000:]
    assert len(replay.stderr.splitlines()) == 1, replay.stderr[-3000:]

    store_command("chdb://rec.chdb", tmp_path, "ALTER TABLE ticks DROP CONSTRAINT fault")
    qbtc(*rec_args, cwd=tmp_path)
    got = dump("chdb://rec.chdb", tmp_path)
    for table in want:
        assert got[table]["rows"] == want[table]["rows"], table


@pytest.mark.kafka
def test_two_brokers_gone_end_a_stream_with_one_line(kafka_cluster3, tmp_path):
    """Replication 3, min.insync.replicas 2: with two nodes killed nothing is acknowledged any more.

    The epoch's flush gives up after ``kafka.timeout_s`` without a delivery
    report (librdkafka alone would retry for 5 minutes), and the process ends.
    """
    servers = bootstrap(kafka_cluster3)
    prefix = unique("gone")
    sets = set_args(prefix, "kafka.replication=3", "kafka.timeout_s=10")
    qbtc("kafka", "topics", "--kafka", servers, *sets, cwd=tmp_path)
    # a backlog the flow is still reading when the brokers die (a flow that has read everything
    # has nothing left to deliver, so nothing fails): it once finished 150,000 ticks first on a busy machine
    publish_sim(servers, prefix, tmp_path, seconds=900, rate=500, symbols=4)
    meta = AdminClient({"bootstrap.servers": servers}).list_topics(f"{prefix}ticks", timeout=10)
    survivor = meta.topics[f"{prefix}ticks"].partitions[0].leader  # its partitions still feed the flow
    args = ["stream", "--kafka", servers, "--store", "chdb://g.chdb", "--snapshot-interval", "0.5", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args, *sets], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while records_in(servers, f"{prefix}bars") == 0:  # outputs flow: kill while the backlog is read
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    for node in kafka_cluster3.node_ids:
        if node != survivor:
            stop_node(kafka_cluster3, node, kill=True)
    code, err, seconds = wait_exit(proc, EXIT_WITHIN_S)
    print(f"exit {code} {seconds:.1f} s after two brokers were killed")
    assert code == 1, f"exit {code} after {seconds:.0f} s; stderr:\n{err[-3000:]}"
    lines = err.splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("qbtc stream: failed: "), lines[0]
    assert "not acknowledged" in lines[0] or "not delivered" in lines[0], lines[0]


# -- in-process (library use): the exception comes back, the process stays alive -----------------


class _RefusingStore:
    """A store whose inserts fail like a full disk."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def insert(self, table, columns) -> int:
        msg = f"store write failed: {table.name}: Code: 243. Cannot reserve 1.00 MiB, not enough space"
        raise StoreWriteError(msg)


def _bars(n: int) -> list:
    return [("bars", [Bar("A/B", i * 1000, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1)]) for i in range(n)]


def test_inside_a_program_a_failed_store_raises_once_and_the_flow_returns(monkeypatch):
    """No handler installed: the flow raises (wrapped by Bytewax); close does not raise again."""
    monkeypatch.setattr("sinks.store_sink.Store", _RefusingStore)
    seen: list[BaseException] = []
    previous = failure.set_handler(seen.append)
    try:
        flow = Dataflow("refused")
        op.output("store", op.input("in", flow, TestingSource(_bars(50))), StoreSink("x", RowCounter(), 10))
        with pytest.raises(BytewaxRuntimeError) as err:
            run_main(flow)
    finally:
        failure.set_handler(previous)
    chain, cause = [], err.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert any(isinstance(c, StoreWriteError) for c in chain), chain
    assert seen and all(isinstance(e, StoreWriteError) for e in seen)


def test_a_failed_output_partition_closes_without_raising():
    """The second exception (close while Bytewax unwinds) is what used to abort the process."""
    writer = StoreWriter(_RefusingStore("x"), RowCounter(), batch_rows=1)
    part = _OutPartition(writer, None, {})
    with pytest.raises(StoreWriteError):
        for item in _bars(5):
            part.write_batch([item])
        part.snapshot()
    part.close()  # must not raise
    assert isinstance(part.failed.error, StoreWriteError)
