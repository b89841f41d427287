"""Crash recovery and scale-out of the features flow on a real Kafka broker."""

from __future__ import annotations

import os
import random
from functools import partial

import pytest
from kafka_helpers import (
    assert_topics_match,
    dump,
    kill_at,
    publish_sim,
    qbtc,
    records_in,
    set_args,
    start_cli,
    topic_records,
    unique,
)

pytestmark = [pytest.mark.kafka, pytest.mark.heavy]

NATURAL_KEYS = {
    "bars": lambda r: (r.symbol, r.ts),
    "features": lambda r: (r.symbol, r.ts),
    "correlations": lambda r: (r.ts, r.symbol_a, r.symbol_b),
    "dead-letters": lambda r: r.source,
}


def test_sigkill_at_eight_points_loses_and_duplicates_nothing(kafka_bootstrap, tmp_path):
    """Kill -9 the flow 8 times mid-topic, restart it each time: the store and topics match a clean run.

    Short intervals between kills matter: a restart killed before one of
    its partitions read anything is what once left stale snapshots behind
    (see flows/recovery_store.py).
    """
    source = unique("in")
    n = publish_sim(kafka_bootstrap, source, tmp_path, seconds=900, rate=800, symbols=6)
    topic_url = f"kafka://{kafka_bootstrap}/{source}ticks"
    ref, rec = unique("ref"), unique("rec")
    ref_args = ["replay", topic_url, "--outputs", "--store", "chdb://ref.chdb", "--quiet", *set_args(ref)]
    qbtc(*ref_args, cwd=tmp_path)

    rng = random.Random(3)
    args = [
        "replay", topic_url, "--outputs", "--store", "chdb://rec.chdb",
        "--recovery-dir", "recovery", "--snapshot-interval", "0.3", *set_args(rec),
    ]  # fmt: skip
    kills = []
    written = 0
    while len(kills) < 8:
        proc, lines = start_cli(args, tmp_path)
        # kill once this run has written a random number of bar records more
        bars = partial(records_in, kafka_bootstrap, f"{rec}bars")
        written = kill_at(proc, lines, bars, written + rng.randint(50, 250))
        kills.append(written)
    print(f"killed after {kills} bar records on the output topic")
    assert len(kills) == 8 and kills == sorted(kills) and kills[0] > 0
    final = qbtc(*args, "--quiet", cwd=tmp_path)
    assert "replay:" in final.stdout

    want, got = dump("chdb://ref.chdb", tmp_path), dump("chdb://rec.chdb", tmp_path)
    assert len(want["ticks"]["rows"]) == n
    for table in want:
        assert got[table]["rows"] == want[table]["rows"], f"{table} differs after {kills}"
    assert want["features"]["rows"] and want["correlations"]["rows"]

    ref_topics = topic_records(kafka_bootstrap, ref, list(NATURAL_KEYS))
    rec_topics = topic_records(kafka_bootstrap, rec, list(NATURAL_KEYS))
    assert_topics_match(ref_topics, rec_topics, NATURAL_KEYS)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_store_what_one_process_stores(kafka_bootstrap, tmp_path):
    source = unique("in")
    publish_sim(kafka_bootstrap, source, tmp_path, seconds=300, rate=300, symbols=6)
    topic_url = f"kafka://{kafka_bootstrap}/{source}ticks"
    qbtc("replay", topic_url, "--store", "chdb://one.chdb", "--quiet", *set_args(unique("one")), cwd=tmp_path)
    addresses = f"127.0.0.1:{_free_port()};127.0.0.1:{_free_port()}"
    two = unique("two")
    procs = [
        start_cli(
            ["replay", topic_url, "--store", "chdb://two.chdb", "--quiet", "--process-id", str(i),
             "--addresses", addresses, *set_args(two)],
            tmp_path,
        )
        for i in range(2)
    ]  # fmt: skip
    for proc, lines in procs:
        assert proc.wait(300) == 0, "".join(lines)
    one, both = dump("chdb://one.chdb", tmp_path), dump("chdb://two.chdb", tmp_path)
    for table in one:
        assert both[table]["rows"] == one[table]["rows"], table
    assert one["features"]["rows"] and one["correlations"]["rows"]
    assert os.path.isdir(tmp_path / "two.chdb")
