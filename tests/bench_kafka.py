"""Kafka throughput and latency benchmark (prints figures; not a test).

Usage: python tests/bench_kafka.py [--brokers HOST:PORT] [--ticks 2000000] [--partitions 4]
                                   [--repeat 1] [--skip-latency] [--processes 2] [--skip-processes]

Without --brokers a single-node broker is started on free ports in a temporary
directory and stopped at the end. With --brokers the benchmark's topics (fresh
prefixes) are deleted at the end.

The simulated ticks are published once onto one fresh topic; then, each in a
fresh subprocess (chDB allows one store per process), timed around the call:
  (a) bare confluent-kafka: one consumer, every partition from the beginning,
      orjson.loads of every value, until every partition's high watermark
  (b) the features flow from the topic into the null sink
  (c) the features flow from the topic into chDB
Prints ticks/s for each and the ratios b/a, c/a (best of --repeat runs).

Processes (unless --skip-processes): ``qbtc stream --null-sink`` on the same
topic, once as one process and once as a cluster of --processes processes
(``--process-id``/``--addresses``, one worker each), from the beginning of the
topic. Each process serves its metrics; the rate is taken from the first tick
any process reads to the moment the processes together have put every tick
into bars (``qbtc_ticks_accepted``), so interpreter start-up is left out of
both. Prints both rates and their ratio.

Latency (unless --skip-latency): ``qbtc stream`` with the default settings
(window 300) into a chDB store, on a second fresh prefix. The first 330 s of
market are published at once, so the windows fill; once the stream has caught
up, 60 s more are published at 20,000 ticks/s (event time at wall-clock pace).
The ticks topic stamps records with the broker's append time (the moment a
consumer can first read them). For every feature record of the paced part,
latency = its Kafka timestamp (when the flow produced it) minus the timestamp
of the tick that closed its bar (the symbol's first tick, in offset order, at
or after the bar's end). Then the same with ``--null-sink`` (what the store costs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

sys.path.insert(0, os.path.dirname(__file__))

from kafka_fixture import free_settings  # noqa: E402

from flows.config import Settings, kafka_client_config, load_settings  # noqa: E402
from flows.inputs import simulator_inputs  # noqa: E402
from flows.kafka_flow import ensure, publish, stream, topic_names, with_brokers  # noqa: E402
from flows.pipeline import Execution  # noqa: E402
from infra.kafka.broker import bootstrap, down, up  # noqa: E402
from schemas.codec import decode  # noqa: E402
from schemas.records import Feature  # noqa: E402
from sources.kafka_ticks import TopicRange  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATION_S = 1800.0
LATENCY_RATE = 20_000
LATENCY_SECONDS = 60.0
STREAM_EXTRA: list[str] = []  # more arguments of the latency case's qbtc stream
LATENCY_WARM_S = 330.0  # the default window (300 bars of 1 s) fills, with room


def kafka_settings(brokers: str, prefix: str, partitions: int, extra: list[str] | None = None) -> Settings:
    overrides = [f"kafka.topic_prefix={prefix}", f"kafka.partitions={partitions}", *(extra or [])]
    return with_brokers(load_settings(None, overrides), brokers)


def fresh_prefix(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}-"


# -- the cases (each runs in a fresh subprocess) ---------------------------------------


def bare_consumer(settings: Settings, topic: str) -> int:
    """Every record of ``topic`` from the beginning, each value parsed by orjson."""
    k = settings.kafka
    consumer = Consumer(kafka_client_config(k, "consumer"))
    try:
        meta = consumer.list_topics(topic, timeout=k.timeout_s)
        parts = [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
        ends: dict[int, int] = {}
        total = 0
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=k.timeout_s)
            if high > low:
                ends[tp.partition] = high
                total += high - low
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        loads = orjson.loads
        n = 0
        idle_since = time.monotonic()
        while ends:
            # never ask for more than is left: consume() waits its timeout for a full batch
            want = max(1, min(k.consume_batch, total - n))
            msgs = consumer.consume(num_messages=want, timeout=1.0)
            if not msgs:
                if time.monotonic() - idle_since > k.timeout_s:
                    msg = f"{topic}: nothing consumed for {k.timeout_s:.0f} s, {n:,} records read"
                    raise RuntimeError(msg)
                continue
            idle_since = time.monotonic()
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                loads(m.value())
                n += 1
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
        return n
    finally:
        consumer.close()


def features_flow(settings: Settings, topic: str, dsn: str | None) -> int:
    metrics = stream(
        settings, topic, TopicRange(bounded=True), dsn=dsn, execution=Execution(workers=1), outputs=False
    )
    return metrics.records


def run_case(args: argparse.Namespace) -> None:
    """Child process: run one case, print ``{"case", "ticks", "seconds"}`` as the last stdout line."""
    settings = kafka_settings(args.brokers, args.prefix, args.partitions)
    topic = topic_names(settings.kafka)["ticks"]
    start = time.perf_counter()
    if args.case == "a":
        n = bare_consumer(settings, topic)
    else:
        n = features_flow(settings, topic, args.dsn)
    secs = time.perf_counter() - start
    sys.stdout.write(json.dumps({"case": args.case, "ticks": n, "seconds": secs}) + "\n")


def spawn(case: str, brokers: str, prefix: str, partitions: int, dsn: str | None = None) -> tuple[int, float]:
    """Run one case in a fresh interpreter; returns (ticks, seconds) measured inside it."""
    cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--brokers", brokers]
    cmd += ["--prefix", prefix, "--partitions", str(partitions)]
    if dsn is not None:
        cmd += ["--dsn", dsn]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        msg = (
            f"case ({case}) exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
        )
        raise RuntimeError(msg)
    out = json.loads(lines[-1])
    return out["ticks"], out["seconds"]


def best_of(repeat: int, label: str, case: str, *args, dsn_for=None) -> float:
    best: tuple[int, float] | None = None
    for i in range(repeat):
        n, secs = spawn(case, *args, dsn=dsn_for(i) if dsn_for else None)
        if best is None or secs < best[1]:
            best = (n, secs)
    n, secs = best
    rate = n / secs
    runs = f" (best of {repeat})" if repeat > 1 else ""
    print(f"{label:<44}{n:>12,} ticks {secs:8.2f} s {rate:>14,.0f} ticks/s{runs}", flush=True)
    return rate


# -- processes ----------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_base(n: int) -> int:
    """A port P with P .. P + n - 1 free."""
    for _ in range(100):
        base = free_ports(1)[0]
        if base + n <= 65535 and all(_bindable(p) for p in range(base, base + n)):
            return base
    msg = f"found no {n} consecutive free ports"
    raise RuntimeError(msg)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def scrape(port: int) -> dict[str, float]:
    """``qbtc_ticks_in`` and ``qbtc_ticks_accepted`` of one process (zeros while it is not serving)."""
    out = {"in": 0.0, "accepted": 0.0}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("qbtc_ticks_in_total "):
            out["in"] = float(line.split()[1])
        elif line.startswith("qbtc_ticks_accepted_total "):
            out["accepted"] = float(line.split()[1])
    return out


def cluster_rate(brokers: str, prefix: str, partitions: int, processes: int, total: int, tmp: str) -> float:
    """Ticks/s of ``qbtc stream --null-sink`` run as ``processes`` processes until every tick is in bars."""
    links = free_ports(processes)
    base = free_base(processes)  # process i serves its metrics on base + i
    metrics = [base + i for i in range(processes)]
    addresses = ";".join(f"127.0.0.1:{p}" for p in links)
    procs, logs = [], []
    for i in range(processes):
        cmd = [sys.executable, "-m", "flows.cli", "stream", "--kafka", brokers, "--null-sink", "--quiet"]
        cmd += ["--set", f"kafka.topic_prefix={prefix}", "--set", f"kafka.partitions={partitions}"]
        cmd += ["--metrics-port", str(base), "--from-offset", "0"]
        if processes > 1:
            cmd += ["--process-id", str(i), "--addresses", addresses]
        log = os.path.join(tmp, f"cluster-{processes}-{i}.log")
        logs.append(log)
        with open(log, "wb") as fh:
            procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT))
    try:
        first: tuple[float, float] | None = None
        deadline = time.monotonic() + 1800
        while True:
            time.sleep(0.1)
            now = time.perf_counter()
            seen = [scrape(p) for p in metrics]
            read = sum(s["in"] for s in seen)
            done = sum(s["accepted"] for s in seen)
            if first is None and read > 0:
                first = (now, done)
            if done >= total:
                break
            dead = [p.returncode for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                msg = f"cluster of {processes} ended ({dead}) at {done:,.0f}/{total:,}:\n{tail(logs[0])}"
                raise RuntimeError(msg)
        start, done_then = first
        return (total - done_then) / (now - start)
    finally:
        for p in procs:
            stop(p)


def processes_case(args: argparse.Namespace, brokers: str, prefix: str, total: int, tmp: str) -> None:
    rates = {}
    for n in (1, args.processes):
        rates[n] = cluster_rate(brokers, prefix, args.partitions, n, total, tmp)
        label = f"qbtc stream --null-sink, {n} process{'es' if n > 1 else ''}"
        print(f"{label:<44}{total:>12,} ticks {'':10} {rates[n]:>14,.0f} ticks/s", flush=True)
    print(f"\n{args.processes} processes / 1 = {rates[args.processes] / rates[1]:.2f}", flush=True)


# -- latency -------------------------------------------------------------------------


def wait_readable(brokers: str, names: list[str], timeout_s: float = 60.0) -> None:
    """Wait until every partition of ``names`` has a leader that answers a watermark query."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "qbtc-bench"})
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                meta = consumer.list_topics(timeout=5).topics
                parts = [TopicPartition(n, p) for n in names for p in meta[n].partitions]
                for tp in parts:
                    consumer.get_watermark_offsets(tp, timeout=5)
                return
            except (KafkaException, KeyError) as exc:
                if time.monotonic() > deadline:
                    msg = f"topics {names} not readable after {timeout_s:.0f} s: {exc}"
                    raise RuntimeError(msg) from None
                time.sleep(0.2)
    finally:
        consumer.close()


def read_with_timestamps(brokers: str, topic: str, timeout_s: float = 30.0):
    """(partition, kafka timestamp ms, value) of every record of ``topic`` up to its current end."""
    from kafka_helpers import read_messages

    for m in read_messages(brokers, topic, timeout_s):
        yield m.partition(), m.timestamp()[1], m.value()


def stop(proc: subprocess.Popen) -> str:
    """SIGINT (a clean stop), then SIGTERM, then SIGKILL; says which one ended it."""
    if proc.poll() is not None:
        return f"had exited ({proc.returncode})"
    start = time.perf_counter()
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
        if proc.poll() is not None:
            return f"stopped by {sig.name} in {time.perf_counter() - start:.1f} s (exit {proc.returncode})"
    return "still running after SIGKILL"


def wall_paced_market() -> list[str]:
    """Simulator settings giving ``LATENCY_RATE`` ticks per second of market over the whole run.

    The simulator makes more trades than ``trades_per_s * duration_s`` (activity rises
    with volatility), so its rate is scaled once by a trial run: published at
    ``LATENCY_RATE`` ticks/s, event time then advances at wall-clock pace.
    """
    duration = LATENCY_WARM_S + LATENCY_SECONDS
    sim = ["simulator.symbols=10", f"simulator.duration_s={duration}", "simulator.seed=13"]

    def count(trades_per_s: float) -> int:
        settings = load_settings(None, [*sim, f"simulator.trades_per_s={trades_per_s}"])
        return sum(chunk.records for chunk in simulator_inputs(settings)[0][0](0))

    target = LATENCY_RATE * duration
    return [*sim, f"simulator.trades_per_s={LATENCY_RATE * target / count(LATENCY_RATE):.3f}"]


def split_market(make, warm_ms: int):
    """The simulator's chunks as two inputs: the first ``warm_ms`` of market, then the rest.

    Also returns a list that holds, once the first input has run, the event time
    where the second one starts.
    """
    chunks = make(0)
    held: list = []
    cut: list[int] = []

    def warm(_):
        for chunk in chunks:
            first = min(int(b.ts[0]) for b in chunk.batches) if chunk.batches else None
            if first is not None and not cut:
                cut.append(first + warm_ms)
            if chunk.batches and max(int(b.ts.max()) for b in chunk.batches) >= cut[0]:
                held.append(chunk)
                return
            yield chunk

    def paced(_):
        yield from held
        yield from chunks

    return [warm], [paced], cut


def log_append_time(brokers: str, topic: str) -> None:
    """Stamp ``topic``'s records with the broker's append time (when consumers can first see them)."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": brokers})
    entry = ConfigEntry(
        "message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def latency(brokers: str, partitions: int, tmp: str, prefixes: list[str], store: bool = True) -> None:
    prefix = fresh_prefix("lat")
    prefixes.append(prefix)
    sim = wall_paced_market()
    settings = kafka_settings(brokers, prefix, partitions, sim)
    window = settings.features.window
    names = topic_names(settings.kafka)
    log_path = os.path.join(tmp, "stream.log")
    sink = ["--store", f"chdb://{os.path.join(tmp, 'latency.chdb')}"] if store else ["--null-sink"]
    cmd = [sys.executable, "-m", "flows.cli", "stream", "--kafka", brokers, *sink, "--quiet", *STREAM_EXTRA]
    cmd += ["--set", f"kafka.topic_prefix={prefix}", "--set", f"kafka.partitions={partitions}"]
    print(
        f"\nlatency: qbtc stream (default window {window}, {'chDB store' if store else 'null sink'}, "
        f"1 worker) on {names['ticks']}: "
        f"{LATENCY_WARM_S:.0f} s of market published at once (the windows fill), then "
        f"{LATENCY_SECONDS:.0f} s at {LATENCY_RATE:,} ticks/s; ticks stamped with the broker's append time",
        flush=True,
    )
    # topics made here first: right after creating them, a partition may have no leader yet
    ensure(settings)
    log_append_time(brokers, names["ticks"])
    wait_readable(brokers, list(names.values()))
    warm, paced, cut = split_market(simulator_inputs(settings)[0][0], int(LATENCY_WARM_S * 1000))
    report = publish(settings, warm, names["ticks"])
    print(f"warm-up: {report.ticks:,} ticks published in {report.seconds:.1f} s", flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        caught_up = wait_caught_up(brokers, names["features"], window, proc, log_path)
        print(f"qbtc stream caught up with the warm-up in {caught_up:.1f} s", flush=True)
        report = publish(settings, paced, names["ticks"], rate=LATENCY_RATE)
        print(
            f"published {report.ticks:,} ticks in {report.seconds:.1f} s "
            f"({report.ticks / report.seconds:,.0f} ticks/s; {LATENCY_SECONDS:.0f} s of event time)",
            flush=True,
        )
        time.sleep(5.0)
        if proc.poll() is not None:
            msg = f"qbtc stream exited {proc.returncode} while publishing:\n{tail(log_path)}"
            raise RuntimeError(msg)
    finally:
        how = stop(proc)
        last = tail(log_path, 1).strip()
        print(f"qbtc stream {how}" + (f": {last[:200]}" if last else ""), flush=True)
    bar_ms = settings.features.bar_interval * 1000
    lat = bar_latencies(brokers, names["ticks"], names["features"], bar_ms, since_ts=cut[0])
    if lat["count"] == 0:
        print(f"no feature records matched a closing tick ({lat['unmatched']} unmatched)")
        return
    print(
        f"feature records of the paced part {lat['count']:,} (unmatched {lat['unmatched']}): "
        f"p50 {lat['p50']:.0f} ms   p99 {lat['p99']:.0f} ms   max {lat['max']:.0f} ms   "
        f"min {lat['min']:.0f} ms",
        flush=True,
    )


def wait_caught_up(brokers: str, topic: str, window: int, proc, log_path: str) -> float:
    """Seconds until the stream's feature records stop growing (it has read the warm-up)."""
    start = time.perf_counter()
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "qbtc-bench"})
    last, still = -1, 0
    try:
        while still < 3:
            time.sleep(1.0)
            if proc.poll() is not None:
                msg = f"qbtc stream exited {proc.returncode}:\n{tail(log_path)}"
                raise RuntimeError(msg)
            try:
                parts = consumer.list_topics(topic, timeout=5).topics[topic].partitions
                total = sum(
                    consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in parts
                )
            except KafkaException:
                continue
            still = still + 1 if total == last and total > 0 else 0
            last = total
            if time.perf_counter() - start > 1800:
                msg = "qbtc stream did not catch up with the warm-up in 30 minutes"
                raise RuntimeError(msg)
    finally:
        consumer.close()
    return time.perf_counter() - start - 3.0


def bar_latencies(
    brokers: str, ticks_topic: str, features_topic: str, bar_ms: int, since_ts: int = 0
) -> dict:
    """Feature record timestamp minus the timestamp of the tick that closed the feature's bar.

    Only the feature records of bars from event time ``since_ts`` on.
    """
    event: dict[str, list[int]] = defaultdict(list)
    stamp: dict[str, list[int]] = defaultdict(list)
    loads = orjson.loads
    for _, kts, value in read_with_timestamps(brokers, ticks_topic):
        tick = loads(value)
        event[tick["symbol"]].append(tick["ts"])
        stamp[tick["symbol"]].append(kts)
    closing = {}
    for symbol, ts in event.items():
        # running max: the first index where it reaches a bound is the first tick at or after it
        closing[symbol] = (np.maximum.accumulate(np.array(ts, np.int64)), np.array(stamp[symbol], np.int64))
    out: list[int] = []
    unmatched = 0
    for _, kts, value in read_with_timestamps(brokers, features_topic):
        feature = decode(value, expect=Feature)
        if feature.ts < since_ts:
            continue
        seen = closing.get(feature.symbol)
        if seen is None:
            unmatched += 1
            continue
        running_max, stamps = seen
        i = int(np.searchsorted(running_max, feature.ts + bar_ms, side="left"))
        if i == len(running_max):
            unmatched += 1
            continue
        out.append(kts - int(stamps[i]))
    if not out:
        return {"count": 0, "unmatched": unmatched}
    a = np.array(out, dtype=np.float64)
    return {
        "count": len(a),
        "unmatched": unmatched,
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "min": float(a.min()),
    }


def tail(path: str, lines: int = 30) -> str:
    with open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-lines:])


def delete_topics(brokers: str, prefixes: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    names = [n for n in admin.list_topics(timeout=10).topics if any(n.startswith(p) for p in prefixes)]
    if not names:
        return
    for future in admin.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(KafkaException):
            future.result(timeout=30)
    print(f"deleted {len(names)} benchmark topics")


# -- main ----------------------------------------------------------------------------


def throughput(args: argparse.Namespace, brokers: str, tmp: str, prefixes: list[str]) -> None:
    prefix = fresh_prefix("tput")
    prefixes.append(prefix)
    sim = [
        f"simulator.symbols={args.symbols}",
        f"simulator.duration_s={DURATION_S}",
        f"simulator.trades_per_s={args.ticks / DURATION_S}",
        "simulator.seed=11",
    ]
    settings = kafka_settings(brokers, prefix, args.partitions, sim)
    topic = topic_names(settings.kafka)["ticks"]
    ensure(settings, topic)
    wait_readable(brokers, [topic])
    report = publish(settings, simulator_inputs(settings)[0], topic)
    print(
        f"input: {report.ticks:,} ticks, {args.symbols} symbols, {DURATION_S:.0f} s of market, "
        f"topic {topic} ({args.partitions} partitions)"
    )
    print(
        f"published in {report.seconds:.1f} s: {report.ticks / report.seconds:,.0f} ticks/s "
        f"(simulator included; {report.waits} producer-queue waits)"
    )
    print(
        f"settings: default features (window {settings.features.window}, bar "
        f"{settings.features.bar_interval} s); machine: {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; 1 worker; broker {brokers}; each case in a fresh process\n",
        flush=True,
    )
    common = (brokers, prefix, args.partitions)
    a = best_of(args.repeat, "(a) bare confluent-kafka + orjson.loads", "a", *common)
    b = best_of(args.repeat, "(b) features flow -> null sink", "b", *common)
    c = best_of(
        args.repeat,
        "(c) features flow -> chDB",
        "c",
        *common,
        dsn_for=lambda i: f"chdb://{os.path.join(tmp, f'bench-{i}.chdb')}",
    )
    print(f"\nb/a = {b / a:.2f}   c/a = {c / a:.2f}", flush=True)
    if not args.skip_processes:
        print(f"\nprocesses ({os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}):", flush=True)
        processes_case(args, brokers, prefix, report.ticks, tmp)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--brokers", help="an existing cluster (default: start a local broker)")
    parser.add_argument("--ticks", type=int, default=2_000_000, help="target tick count (simulator)")
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs of each case")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--processes", type=int, default=2, help="cluster size of the processes case")
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--case", choices=("a", "b", "c"), help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args)
        return
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    tmp = tempfile.mkdtemp(prefix="qbtc-bench-kafka-")
    broker = None if args.brokers else free_settings(os.path.join(tmp, "kafka"))
    prefixes: list[str] = []
    try:
        if broker is not None:
            start = time.perf_counter()
            brokers = up(broker)
            print(f"broker: local single node at {bootstrap(broker)} ({time.perf_counter() - start:.1f} s)")
        else:
            brokers = args.brokers
            print(f"broker: {brokers}")
        throughput(args, brokers, tmp, prefixes)
        if not args.skip_latency:
            latency(brokers, args.partitions, tmp, prefixes)
            latency(brokers, args.partitions, tmp, prefixes, store=False)
    except BaseException:
        if broker is not None:  # the local broker's last words, before its directory goes
            for name in ("console.log", "logs/server.log"):
                path = os.path.join(broker.node_dir(1), name)
                if os.path.exists(path):
                    sys.stderr.write(f"--- {path} (tail)\n{tail(path, 20)}")
        raise
    finally:
        if broker is not None:
            down(broker)
        elif prefixes:
            with contextlib.suppress(KafkaException):
                delete_topics(args.brokers, prefixes)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
