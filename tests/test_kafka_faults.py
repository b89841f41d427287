"""Faults survived, measured: each final store equals an uninterrupted run's, table by table (FINAL).

- one broker of a three-node cluster (replication 3, min.insync.replicas 2)
  killed with SIGKILL while ``qbtc stream --trade`` runs, and while
  ``qbtc publish`` runs;
- ``qbtc stream --trade`` killed with SIGKILL at 20 seeded random points and
  restarted from its recovery directory each time (``QBTC_KILLS`` sets the
  count);
- the store's filesystem filling up mid-run: one line, exit 1; the space
  freed, a restart from the recovery directory completes the store.

The seeds, the kill points and the figures are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from kafka_helpers import (
    column,
    dump,
    kill_at,
    latest_records,
    qbtc,
    read_topic,
    records_in,
    set_args,
    start_cli,
    unique,
)

from flows.recovery_store import resume_epoch
from infra.kafka.broker import BrokerSettings, bootstrap, start_node, stop_node
from schemas.codec import decode

pytestmark = [pytest.mark.kafka, pytest.mark.heavy]

TABLES = (
    "ticks", "bars", "features", "correlations", "dead_letters", "var_backtests",
    "signals", "risk_events", "orders", "fills", "portfolio",
)  # fmt: skip
TRADING = ("signals", "risk_events", "orders", "fills", "portfolio")
KILLS = int(os.environ.get("QBTC_KILLS", "20"))
KILL_SEED = int(os.environ.get("QBTC_KILL_SEED", "1405"))


def publish(brokers: str, prefix: str, cwd: Path, seconds: int, rate: int, *extra: str) -> subprocess.Popen:
    """``qbtc publish --simulate`` onto ``<prefix>ticks`` in the background (``extra``: more arguments)."""
    sets = [
        f"kafka.topic_prefix={prefix}",
        f"simulator.duration_s={seconds}",
        f"simulator.trades_per_s={rate}",
    ]
    sets += ["simulator.symbols=4", "kafka.replication=3" if "," in brokers else "kafka.replication=1"]
    args = ["publish", "--simulate", "--kafka", brokers, "--quiet", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args, *[a for s in sets for a in ("--set", s)]],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def published(proc: subprocess.Popen) -> int:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"publish exited {proc.returncode}:\n{err[-3000:]}"
    return int(re.search(r"published ([\d,]+) ticks", out).group(1).replace(",", ""))


def stream_args(brokers: str, source: str, prefix: str, store: str) -> list[str]:
    """``qbtc stream --trade --until-end`` of ``<source>ticks`` into ``store``, outputs on ``<prefix>*``."""
    rf = "kafka.replication=3" if "," in brokers else "kafka.replication=1"
    return [
        "stream", "--trade", "--until-end", "--kafka", brokers, "--topic", f"{source}ticks",
        "--store", store, *set_args(prefix, rf),
    ]  # fmt: skip


def bars_through(brokers: str, topic: str) -> int:
    """Event time the flow's output has reached: the oldest of each bars partition's newest bar."""
    return min((decode(v).ts for v in latest_records(brokers, topic)), default=0)


def assert_same_store(want: dict, got: dict, what: str) -> None:
    for table in want:
        assert got[table]["rows"] == want[table]["rows"], f"{table} differs {what}"


def busiest_node(brokers: str, topics: list[str]) -> int:
    """The node leading the most partitions of ``topics`` (its loss moves the most leaders)."""
    meta = AdminClient({"bootstrap.servers": brokers}).list_topics(timeout=10)
    leaders: dict[int, int] = {}
    for t in topics:
        for p in meta.topics[t].partitions.values():
            leaders[p.leader] = leaders.get(p.leader, 0) + 1
    return max(sorted(leaders), key=leaders.__getitem__)


# -- one broker of three ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_reference(kafka_cluster3, tmp_path_factory) -> dict:
    """An uninterrupted publish and trading stream on the three-node cluster, and its store."""
    servers, cwd = bootstrap(kafka_cluster3), tmp_path_factory.mktemp("cluster-ref")
    source = unique("in")
    ticks = published(publish(servers, source, cwd, seconds=600, rate=60))
    started = time.monotonic()
    qbtc(*stream_args(servers, source, unique("ref"), "chdb://ref.chdb"), "--quiet", cwd=cwd)
    seconds = time.monotonic() - started
    want = dump("chdb://ref.chdb", cwd, TABLES)
    assert len(want["ticks"]["rows"]) == ticks
    assert all(want[t]["rows"] for t in ("bars", "features", "signals", "orders", "fills"))
    print(f"\ncluster reference: {ticks} ticks, {len(want['orders']['rows'])} orders, stream {seconds:.1f} s")
    return {"source": source, "ticks": ticks, "store": want, "values": _values(servers, f"{source}ticks")}


def _values(brokers: str, topic: str) -> dict[bytes | None, list[bytes]]:
    """The values of a topic by key, in offset order (the order a key's partition keeps)."""
    out: dict[bytes | None, list[bytes]] = {}
    for key, value in read_topic(brokers, topic):
        out.setdefault(key, []).append(value)
    return out


@contextlib.contextmanager
def node_killed(settings: BrokerSettings, node: int) -> Iterator[None]:
    """Kill ``node`` with SIGKILL inside the block; start it again (and wait for it) afterwards."""
    try:
        yield
    finally:
        start_node(settings, node)


def test_a_broker_killed_while_trading_changes_nothing(kafka_cluster3, cluster_reference, tmp_path):
    """SIGKILL of one node of three while ``qbtc stream --trade`` reads, trades and writes; no restart."""
    servers, ref = bootstrap(kafka_cluster3), cluster_reference
    prefix = unique("bk")
    qbtc("kafka", "topics", "--kafka", servers, *set_args(prefix, "kafka.replication=3"), cwd=tmp_path)
    victim = busiest_node(servers, [f"{prefix}{t}" for t in ("bars", "orders", "fills", "signals")])
    bars = column(ref["store"]["bars"], "ts")
    first, last = min(bars), max(bars)
    proc, lines = start_cli(
        [*stream_args(servers, ref["source"], prefix, "chdb://rec.chdb"), "--quiet"], tmp_path
    )
    started = time.monotonic()
    with node_killed(kafka_cluster3, victim):
        # the loop trades by now: a third of the event time is through
        target = _ms(first) + (_ms(last) - _ms(first)) // 3
        deadline = time.monotonic() + 180
        while bars_through(servers, f"{prefix}bars") < target:
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        stop_node(kafka_cluster3, victim, kill=True)
        killed = time.monotonic() - started
        code = proc.wait(300)
    seconds = time.monotonic() - started
    print(f"\nnode {victim} killed {killed:.1f} s into the stream; the stream ended after {seconds:.1f} s")
    assert code == 0, "".join(lines)[-3000:]
    assert_same_store(ref["store"], dump("chdb://rec.chdb", tmp_path, TABLES), f"with node {victim} killed")


def test_a_broker_killed_while_publishing_changes_nothing(kafka_cluster3, cluster_reference, tmp_path):
    """SIGKILL of one node of three mid-publish: the topic holds every tick once, in order per key.

    The idempotent producer (acks=all) retries what the dead leader never
    acknowledged on the new leader without duplicates; the store of a
    trading stream over that topic equals the reference's.
    """
    servers, ref = bootstrap(kafka_cluster3), cluster_reference
    source = unique("pk")
    qbtc("kafka", "topics", "--kafka", servers, *set_args(source, "kafka.replication=3"), cwd=tmp_path)
    victim = busiest_node(servers, [f"{source}ticks"])
    started = time.monotonic()
    proc = publish(servers, source, tmp_path, 600, 60, "--rate", str(ref["ticks"] // 8))  # about 8 s
    with node_killed(kafka_cluster3, victim):
        deadline = time.monotonic() + 120
        while (n := records_in(servers, f"{source}ticks")) < ref["ticks"] // 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        stop_node(kafka_cluster3, victim, kill=True)
        killed = time.monotonic() - started
        ticks = published(proc)
    print(
        f"\nnode {victim} killed {killed:.1f} s into the publish, at {n} of {ref['ticks']} ticks on the topic"
    )
    assert n < ref["ticks"], "the publish was over before the kill"
    assert ticks == ref["ticks"]
    assert _values(servers, f"{source}ticks") == ref["values"]
    qbtc(*stream_args(servers, source, unique("pr"), "chdb://rec.chdb"), "--quiet", cwd=tmp_path)
    assert_same_store(ref["store"], dump("chdb://rec.chdb", tmp_path, TABLES), f"with node {victim} killed")


def _ms(ts: str) -> int:
    """Epoch ms of a store timestamp as the dump prints it (``2023-11-14 22:13:20.123000+00:00``)."""
    from datetime import datetime

    return int(datetime.fromisoformat(ts).timestamp() * 1000)


# -- twenty kills --------------------------------------------------------------------------------------


def test_twenty_sigkills_of_a_trading_stream_change_nothing(kafka_bootstrap, tmp_path):
    """``qbtc stream --trade`` killed at ``KILLS`` seeded random points of its event time and restarted.

    A kill point is a share of the event time the recovered run's bars
    have reached; every kill falls while that run has written bars of its
    own (not during its start-up), so each restart moves the stream on.
    """
    source = unique("in")
    ticks = published(publish(kafka_bootstrap, source, tmp_path, seconds=900, rate=40))
    ref, rec = unique("ref"), unique("rec")
    t0 = time.monotonic()
    small_reads = ["--set", "kafka.consume_batch=200"]  # output moves in small steps, not in bursts
    qbtc(*stream_args(kafka_bootstrap, source, ref, "chdb://ref.chdb"), "--quiet", *small_reads, cwd=tmp_path)
    clean_s = time.monotonic() - t0
    bar_ts = [decode(v).ts for _, v in read_topic(kafka_bootstrap, f"{ref}bars")]
    first, last = min(bar_ts), max(bar_ts)
    rng = random.Random(KILL_SEED)
    shares = sorted(round(rng.uniform(0.03, 0.97), 4) for _ in range(KILLS))
    print(f"\nkill seed {KILL_SEED}: {KILLS} kills at shares {shares} of the event time")

    args = [
        *stream_args(kafka_bootstrap, source, rec, "chdb://rec.chdb"),
        "--recovery-dir", "recovery", "--snapshot-interval", "0.2", "--quiet", *small_reads,
    ]  # fmt: skip
    reached: list[float] = []
    t0 = time.monotonic()
    for share in shares:
        proc, lines = start_cli(args, tmp_path)
        before = records_in(kafka_bootstrap, f"{rec}bars")

        def progress(before: int = before) -> int:
            if records_in(kafka_bootstrap, f"{rec}bars") <= before:
                return 0  # this run has written no bar yet
            return bars_through(kafka_bootstrap, f"{rec}bars")

        at = kill_at(proc, lines, progress, first + int(share * (last - first)), timeout_s=180)
        reached.append(round((at - first) / (last - first), 4))
    final = qbtc(*args, cwd=tmp_path)
    kills_s = time.monotonic() - t0
    resumed = int(re.search(r"stream: ([\d,]+) records", final.stdout).group(1).replace(",", ""))
    print(
        f"{ticks} ticks: uninterrupted run {clean_s:.1f} s; {KILLS} kills and {KILLS + 1} starts "
        f"{kills_s:.1f} s; "
        f"killed with the bars at {reached}; the last run read {resumed} ticks"
    )
    assert 0 < resumed < ticks
    want = dump("chdb://ref.chdb", tmp_path, TABLES)
    assert all(want[t]["rows"] for t in ("features", "signals", "orders", "fills"))
    assert_same_store(want, dump("chdb://rec.chdb", tmp_path, TABLES), f"after kills at {reached}")
    written = dump("chdb://rec.chdb", tmp_path, TRADING, final=False)
    for table in TRADING:  # no key written twice with other values (FINAL would hide it)
        assert written[table]["rows"] == want[table]["rows"], f"{table}: a key was written twice"


# -- a full filesystem ---------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, mib: int) -> Iterator[bool]:
    """A tmpfs of ``mib`` MiB mounted at ``path`` (True), or a plain directory if mounting is refused."""
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "qbtc-test", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        yield proc.returncode == 0
    finally:
        if proc.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write a file in ``path`` until its filesystem is full; returns the bytes written."""
    written, block = 0, b"\0" * (1 << 16)
    with open(path / "filler", "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                written += fh.write(block)
    with contextlib.suppress(OSError), open(path / "filler2", "wb", buffering=0) as fh:
        while fh.write(b"\0" * 512):  # the last partial block
            written += 512
    return written


def test_a_full_store_filesystem_ends_a_trading_stream_with_one_line_and_a_restart_completes_it(
    kafka_bootstrap, tmp_path
):
    """The store on a small tmpfs filled mid-run: exit 1, one line; space freed, a restart completes it.

    Without the right to mount (not root), the store's directories are made
    read-only instead; as root without mount the test cannot make a store
    unwritable and is skipped.
    """
    source = unique("in")
    ticks = published(publish(kafka_bootstrap, source, tmp_path, seconds=600, rate=60))
    qbtc(*stream_args(kafka_bootstrap, source, unique("ref"), "chdb://ref.chdb"), "--quiet", cwd=tmp_path)
    want = dump("chdb://ref.chdb", tmp_path, TABLES)
    assert len(want["ticks"]["rows"]) == ticks and want["orders"]["rows"]

    with small_filesystem(tmp_path / "fs", 64) as mounted:
        if not mounted and os.geteuid() == 0:
            pytest.skip("cannot mount a tmpfs, and root writes to read-only directories")
        store, rec = tmp_path / "fs" / "rec.chdb", unique("rec")
        args = [
            *stream_args(kafka_bootstrap, source, rec, f"chdb://{store}"),
            "--recovery-dir", "recovery", "--snapshot-interval", "0.3", "--quiet",
            "--set", "store.batch_rows=500",
        ]  # fmt: skip
        proc, lines = start_cli(args, tmp_path)
        bars = [_ms(ts) for ts in column(want["bars"], "ts")]
        target = min(bars) + (max(bars) - min(bars)) * 2 // 5  # mid-run: 40% of the event time through
        deadline = time.monotonic() + 120
        while bars_through(kafka_bootstrap, f"{rec}bars") < target:
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.02)
        # and an epoch committed since the start, so the restart can resume after it (a fast
        # machine reaches 40% before the first snapshot); bounded: the fault comes anyway
        first = resume_epoch(tmp_path / "recovery")
        wait_commit = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < wait_commit:
            now = resume_epoch(tmp_path / "recovery")
            if now is not None and first is not None and now > first:
                break
            time.sleep(0.02)
        committed = (resume_epoch(tmp_path / "recovery") or 0) > (first or 0)
        if mounted:
            filled = fill(tmp_path / "fs")
            fault = f"filesystem full ({filled / 2**20:.1f} MiB filler)"
        else:
            for d in [store, *store.rglob("*")]:
                if d.is_dir():
                    d.chmod(0o555)
            fault = "read-only store directories"
        t0 = time.monotonic()
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        seconds = time.monotonic() - t0
        time.sleep(0.2)  # the reader threads collect the last lines
        err = [x for x in lines if x.strip()]
        print(f"\n{fault}: exit {code} {seconds:.1f} s later: {err[-1].strip() if err else ''}")
        assert code == 1, "".join(lines)[-3000:]
        assert len(err) == 1, "".join(lines)[-3000:]
        assert err[0].startswith("qbtc stream: failed: store write failed: "), err[0]

        if mounted:  # the fault cleared
            (tmp_path / "fs" / "filler").unlink()
            (tmp_path / "fs" / "filler2").unlink(missing_ok=True)
        else:
            for d in [store, *store.rglob("*")]:
                if d.is_dir():
                    d.chmod(0o755)
        final = qbtc(*args, cwd=tmp_path)
        resumed = int(re.search(r"stream: ([\d,]+) records", final.stdout).group(1).replace(",", ""))
        print(
            f"the restart read {resumed} of {ticks} ticks (an epoch committed before the fault: {committed})"
        )
        assert 0 < resumed <= ticks
        if committed:
            assert resumed < ticks  # it resumed after the committed epoch, not from the start
        got = dump(f"chdb://{store}", tmp_path, TABLES)
        shutil.rmtree(store, ignore_errors=True)
    assert_same_store(want, got, f"after a fault ({fault}) and a restart")
