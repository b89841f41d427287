"""Crash recovery and scale-out of the features flow on a real Kafka broker."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from kafka_helpers import SMALL, dump, qbtc, read_topic, unique

from schemas.codec import decode

pytestmark = pytest.mark.kafka

NATURAL_KEYS = {
    "bars": lambda r: (r.symbol, r.ts),
    "features": lambda r: (r.symbol, r.ts),
    "correlations": lambda r: (r.ts, r.symbol_a, r.symbol_b),
    "dead-letters": lambda r: r.source,
}


def _publish_sim(brokers: str, prefix: str, cwd, seconds: int, rate: int, symbols: int) -> int:
    out = qbtc(
        "publish", "--simulate", "--kafka", brokers, "--quiet",
        "--set", f"kafka.topic_prefix={prefix}",
        "--set", f"simulator.duration_s={seconds}",
        "--set", f"simulator.trades_per_s={rate}",
        "--set", f"simulator.symbols={symbols}",
        cwd=cwd,
    )  # fmt: skip
    return int(re.search(r"published ([\d,]+) ticks", out.stdout).group(1).replace(",", ""))


def _sets(prefix: str) -> list[str]:
    return [a for s in [*SMALL, f"kafka.topic_prefix={prefix}"] for a in ("--set", s)]


def _start(args: list[str], cwd) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def drain(stream) -> None:
        for line in stream:
            lines.append(line)

    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=drain, args=(stream,), daemon=True).start()
    return proc, lines


def _records_in(brokers: str, topic: str) -> int:
    """Records on a topic so far (the sum of its partitions' end offsets)."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "qbtc-test"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or not meta.partitions:
            return 0
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions
        )
    except KafkaException:  # a topic the flow just created may have no leader yet
        return 0
    finally:
        consumer.close()


def _topic_records(brokers: str, prefix: str) -> dict[str, list]:
    return {t: [decode(v) for _, v in read_topic(brokers, prefix + t)] for t in NATURAL_KEYS}


def test_sigkill_at_eight_points_loses_and_duplicates_nothing(kafka_bootstrap, tmp_path):
    """Kill -9 the flow 8 times mid-topic, restart it each time: the store and topics match a clean run.

    Short intervals between kills matter: a restart killed before one of
    its partitions read anything is what once left stale snapshots behind
    (see flows/recovery_store.py).
    """
    source = unique("in")
    n = _publish_sim(kafka_bootstrap, source, tmp_path, seconds=900, rate=800, symbols=6)
    topic_url = f"kafka://{kafka_bootstrap}/{source}ticks"
    ref, rec = unique("ref"), unique("rec")
    qbtc("replay", topic_url, "--outputs", "--store", "chdb://ref.chdb", "--quiet", *_sets(ref), cwd=tmp_path)

    rng = random.Random(3)
    args = [
        "replay", topic_url, "--outputs", "--store", "chdb://rec.chdb",
        "--recovery-dir", "recovery", "--snapshot-interval", "0.3", *_sets(rec),
    ]  # fmt: skip
    kills = []
    written = 0
    while len(kills) < 8:
        proc, lines = _start(args, tmp_path)
        deadline = time.monotonic() + 120
        # kill once this run has written a random number of bar records more
        target = written + rng.randint(50, 250)
        while (written := _records_in(kafka_bootstrap, f"{rec}bars")) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.02)
        if proc.poll() is not None:
            pytest.fail(
                f"the flow finished before kill {len(kills) + 1}; use a longer topic:\n{''.join(lines)}"
            )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
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

    ref_topics, rec_topics = _topic_records(kafka_bootstrap, ref), _topic_records(kafka_bootstrap, rec)
    for topic, key in NATURAL_KEYS.items():
        copies = defaultdict(set)
        for record in rec_topics[topic]:
            copies[key(record)].add(record)
        changed = {k: v for k, v in copies.items() if len(v) > 1}
        assert not changed, f"{topic}: a repeated record differs: {list(changed.items())[:2]}"
        assert set(rec_topics[topic]) == set(ref_topics[topic]), topic
        assert len(ref_topics[topic]) == len(set(ref_topics[topic])), topic


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_store_what_one_process_stores(kafka_bootstrap, tmp_path):
    source = unique("in")
    _publish_sim(kafka_bootstrap, source, tmp_path, seconds=300, rate=300, symbols=6)
    topic_url = f"kafka://{kafka_bootstrap}/{source}ticks"
    qbtc("replay", topic_url, "--store", "chdb://one.chdb", "--quiet", *_sets(unique("one")), cwd=tmp_path)
    addresses = f"127.0.0.1:{_free_port()};127.0.0.1:{_free_port()}"
    two = unique("two")
    procs = [
        _start(
            ["replay", topic_url, "--store", "chdb://two.chdb", "--quiet", "--process-id", str(i),
             "--addresses", addresses, *_sets(two)],
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
