"""Helpers of the Kafka integration tests: the CLI in subprocesses, store dumps, topic reads."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition

from schemas.codec import decode, encode
from schemas.records import Tick

SMALL = [
    "features.bar_interval=1",
    "features.window=60",
    "features.corr_window=60",
    "features.corr_every=10",
    "trading.cost_gate=false",
    "levels.enabled=false",
]
"""Feature settings that give features and correlations on short streams; the cost gate and the
decision levels off, so the trading runs on them trade at every bar (at 1-second bars no entry's
expected edge beats its 13 bps of costs, and L2 would decide only every 5 minutes)."""

_DUMP = """
import json, sys
from schemas.ddl import TABLES
from sinks.clickhouse_store import Store
store = Store(sys.argv[1])
select = sys.argv[2]
names = sys.argv[3].split(",") if sys.argv[3] else [t for t in TABLES if t != "runs"]
keep_ids = sys.argv[4] == "1"
out = {}
for name in names:
    cols = "*" if keep_ids or "run_id" not in TABLES[name].column_names else "* EXCEPT (run_id)"
    res = store.query(select.format(name=name, cols=cols))
    out[name] = {"columns": list(res.column_names), "rows": [
        [v.hex() if isinstance(v, bytes) else v for v in row] for row in res.result_rows]}
json.dump(out, sys.stdout, default=str)
"""


def walk_ticks(
    symbols: tuple[str, ...], t0: int, start_s: int, seconds: int, seed: int
) -> tuple[list[bytes], list[bytes]]:
    """Ten ticks a second per symbol over [start_s, start_s + seconds) after ``t0`` (random walks),
    encoded, with their keys (the symbols)."""
    rng = np.random.default_rng(seed)
    values, keys = [], []
    for i, symbol in enumerate(symbols):
        n = seconds * 10
        ts = t0 + start_s * 1000 + np.arange(n) * 100
        price = (30_000.0 / (i + 1)) * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
        values += [
            encode(Tick(int(t), symbol, float(p), 0.01, "buy", "", "sim"))
            for t, p in zip(ts, price, strict=True)
        ]
        keys += [symbol.encode()] * n
    return values, keys


def column(table: dict, name: str) -> list:
    """A :func:`dump` table's column by name (tables gain columns: never read one by position)."""
    i = table["columns"].index(name)
    return [row[i] for row in table["rows"]]


def unique(prefix: str = "t") -> str:
    """A fresh topic prefix, so tests sharing one broker never see each other's records."""
    return f"{prefix}{uuid.uuid4().hex[:8]}-"


def qbtc(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300, check: bool = True):
    """Run ``qbtc ARGS`` in a subprocess (chDB allows one store path per process)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        msg = (
            f"qbtc {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
        raise AssertionError(msg)
    return proc


def dump(
    dsn: str, cwd: Path, tables: tuple[str, ...] = (), final: bool = True, run_ids: bool = False
) -> dict:
    """Every table (or ``tables``) of the store at ``dsn`` read with FINAL, rows sorted.

    ``final=False`` reads the distinct rows as written, before the
    ReplacingMergeTree merges rows of one key: a key written twice with
    different values then shows as two rows.

    The ``run_id`` column is left out unless ``run_ids`` (runs compared here,
    a file replay and a topic replay say, have different ids but the same
    rows), and so is the ``runs`` table unless named (start times, commands).
    """
    tables = tuple(getattr(t, "name", t) for t in tables if getattr(t, "name", t) != "runs" or run_ids)
    select = (
        "SELECT {cols} FROM {name} FINAL ORDER BY ALL"
        if final
        else "SELECT DISTINCT {cols} FROM {name} ORDER BY ALL"
    )
    proc = subprocess.run(
        [sys.executable, "-c", _DUMP, dsn, select, ",".join(tables), "1" if run_ids else "0"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        msg = f"dump of {dsn} failed:\n{proc.stderr}"
        raise AssertionError(msg)
    return json.loads(proc.stdout)


def read_messages(brokers: str, topic: str, timeout_s: float = 10.0):
    """Every message of a topic (no errors), partition by partition, up to its current end."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "qbtc-test", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        for p in sorted(meta.topics[topic].partitions):
            tp = TopicPartition(topic, p)
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            got = 0
            deadline = time.monotonic() + timeout_s
            while got < high - low:
                # consume() waits for the whole batch or the timeout: ask often, briefly
                msgs = consumer.consume(min(10_000, high - low - got), 0.2)
                if not msgs and time.monotonic() > deadline:
                    msg = f"{topic}[{p}]: read {got} of {high - low} records"
                    raise AssertionError(msg)
                for m in msgs:
                    if m.error() is None:
                        yield m
                        got += 1
    finally:
        consumer.close()


def read_topic(brokers: str, topic: str, timeout_s: float = 10.0) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) of a topic, partition by partition, up to its current end."""
    return [(m.key(), m.value()) for m in read_messages(brokers, topic, timeout_s)]


def publish_sim(brokers: str, prefix: str, cwd: Path, seconds: int, rate: int, symbols: int) -> int:
    """Publish the simulator onto ``<prefix>ticks``; returns the ticks published."""
    out = qbtc(
        "publish", "--simulate", "--kafka", brokers, "--quiet",
        "--set", f"kafka.topic_prefix={prefix}",
        "--set", f"simulator.duration_s={seconds}",
        "--set", f"simulator.trades_per_s={rate}",
        "--set", f"simulator.symbols={symbols}",
        cwd=cwd,
    )  # fmt: skip
    return int(re.search(r"published ([\d,]+) ticks", out.stdout).group(1).replace(",", ""))


def set_args(prefix: str, *extra: str) -> list[str]:
    """``--set`` arguments: :data:`SMALL`, the topic prefix, then ``extra``."""
    return [a for s in [*SMALL, f"kafka.topic_prefix={prefix}", *extra] for a in ("--set", s)]


def start_cli(args: list[str], cwd: Path, env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """Start ``qbtc ARGS`` in the background (``env`` added to the environment); its stdout and
    stderr lines collect in the list."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
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


def records_in(brokers: str, topic: str) -> int:
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


def latest_records(brokers: str, topic: str, timeout_s: float = 10.0) -> list[bytes]:
    """The value of the last record of each partition of a topic that has records."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "qbtc-test",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        last = {}
        for p in sorted(meta.partitions if meta is not None else ()):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                last[p] = high - 1
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in last.items()])
        out: dict[int, bytes] = {}
        deadline = time.monotonic() + timeout_s
        while len(out) < len(last):
            if time.monotonic() > deadline:
                msg = f"{topic}: read the last record of {len(out)} of {len(last)} partitions"
                raise AssertionError(msg)
            for m in consumer.consume(len(last), 0.1):
                if m.error() is None and m.offset() == last[m.partition()]:
                    out[m.partition()] = m.value()
        return list(out.values())
    except KafkaException:  # a topic the flow just created may have no leader yet
        return []
    finally:
        consumer.close()


def kill_at(
    proc: subprocess.Popen,
    lines: list[str],
    progress: Callable[[], int],
    target: int,
    timeout_s: float = 120,
) -> int:
    """SIGKILL ``proc`` once ``progress()`` reaches ``target``; returns the progress then.

    Fails if the process ends first (the input was too short for this kill).
    """
    deadline = time.monotonic() + timeout_s
    while (reached := progress()) < target and proc.poll() is None:
        if time.monotonic() > deadline:
            msg = f"progress {reached} of {target} after {timeout_s:.0f} s:\n{''.join(lines)}"
            raise AssertionError(msg)
        time.sleep(0.02)
    if proc.poll() is not None:
        msg = f"the flow ended before progress {target}; use a longer input:\n{''.join(lines)}"
        raise AssertionError(msg)
    proc.send_signal(signal.SIGKILL)
    code = proc.wait(30)
    if code != -signal.SIGKILL:
        msg = f"the flow exited {code} instead of being killed:\n{''.join(lines)}"
        raise AssertionError(msg)
    return reached


def topic_records(brokers: str, prefix: str, topics: list[str]) -> dict[str, list]:
    """The decoded records of each ``<prefix><topic>``, repeats included."""
    return {t: [decode(v) for _, v in read_topic(brokers, prefix + t)] for t in topics}


def assert_topics_match(ref: dict[str, list], rec: dict[str, list], keys: dict[str, Callable]) -> None:
    """The recovered run's topics hold the reference run's records, repeats allowed only as copies.

    The sink is at-least-once towards Kafka: a restart resumes after the last
    committed epoch and writes what followed it again, so a record may repeat.
    A repeat must be an identical copy: two different records with one natural
    key (``keys[topic]``) are a defect (a consumer keeping the last one per key
    would see a value the reference never had). Without repeats the records
    are the reference's, which has none.
    """
    for topic, key in keys.items():
        copies: dict[object, set] = defaultdict(set)
        for record in rec[topic]:
            copies[key(record)].add(record)
        changed = {k: v for k, v in copies.items() if len(v) > 1}
        assert not changed, f"{topic}: a repeated record differs: {list(changed.items())[:2]}"
        missing = set(ref[topic]) - set(rec[topic])
        extra = set(rec[topic]) - set(ref[topic])
        assert not missing and not extra, (
            f"{topic}: {len(missing)} records missing, {len(extra)} not in the reference; "
            f"e.g. {sorted(missing, key=repr)[:2]} / {sorted(extra, key=repr)[:2]}"
        )
        assert len(ref[topic]) == len(set(ref[topic])), f"{topic}: the reference repeats a record"
