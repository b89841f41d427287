"""Helpers of the Kafka integration tests: the CLI in subprocesses, store dumps, topic reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

SMALL = [
    "features.bar_interval=1",
    "features.window=60",
    "features.corr_window=60",
    "features.corr_every=10",
]
"""Feature settings that give features and correlations on short streams."""

_DUMP = """
import json, sys
from schemas.ddl import TABLES
from sinks.clickhouse_store import Store
store = Store(sys.argv[1])
out = {}
for name, table in TABLES.items():
    cols = [c for c, _ in table.columns] if hasattr(table, "columns") else None
    res = store.query(f"SELECT * FROM {name} FINAL ORDER BY ALL")
    out[name] = {"columns": list(res.column_names), "rows": [
        [v.hex() if isinstance(v, bytes) else v for v in row] for row in res.result_rows]}
json.dump(out, sys.stdout, default=str)
"""


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


def dump(dsn: str, cwd: Path) -> dict:
    """Every table of the store at ``dsn`` read with FINAL, rows sorted."""
    proc = subprocess.run(
        [sys.executable, "-c", _DUMP, dsn], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
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
