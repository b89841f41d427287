"""The flows on a Kafka cluster: publish ticks, run the features flow, replay a topic.

    ticks topic ─ features flow (the embedded flow's operators) ─┬─ bars, features,
                                                                  │  correlations, dead-letters topics
                                                                  └─ ClickHouse store

Topics are created idempotently at start. With a recovery directory the
flow snapshots its state at every epoch (``kafka.snapshot_interval_s``) and
a restart resumes after the last committed epoch; the sink makes each epoch
durable before it commits (see ``sinks.output_sink``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from flows.config import ConfigError, KafkaConfig, Settings, kafka_client_config
from flows.external_venue import RemoteVenueConfig, loop_source
from flows.kafka_diagnostics import check_cluster
from flows.metrics import FlowMetrics
from flows.pipeline import Execution, TradingReport, build_flow, check_resume, run_flow
from flows.recovery_store import RecoveryDirError, discard_unfinished
from flows.trading_settings import span_input, trading_settings
from infra.kafka_topics import CONTROL_TOPIC, OUTPUT_TABLES, ensure_topics, require_topic, topology
from schemas.codec import encode
from sinks.kafka_producer import RecordProducer
from sinks.output_sink import OutputSink
from sources.chunk_source import Progress, wall_ms
from sources.control_file import ControlScope
from sources.control_topic import ControlTopicSettings
from sources.kafka_ticks import KafkaTickSource, TopicRange
from sources.tick_files import Chunk

INTERNAL, EXTERNAL, LOCKSTEP = "internal", "external", "lockstep"
"""Where a stream's trading loop sends its orders (see :func:`stream`)."""


def topic_names(k: KafkaConfig) -> dict[str, str]:
    """Topic of ``ticks``, of each output table and of ``control``, with the configured prefix.

    >>> topic_names(KafkaConfig(topic_prefix="lab-"))["dead_letters"]
    'lab-dead-letters'
    """
    names = {"ticks": k.topic_prefix + "ticks"}
    names.update({table: k.topic_prefix + topic for table, topic in OUTPUT_TABLES.items()})
    names["control"] = k.topic_prefix + CONTROL_TOPIC
    return names


def ensure(settings: Settings, ticks_topic: str | None = None) -> dict[str, str]:
    """Create qbtc's topics (and ``ticks_topic`` if named) where missing."""
    k = settings.kafka
    specs = topology(k.topic_prefix, k.partitions, k.replication)
    if ticks_topic is not None and ticks_topic != specs[0].name:
        specs.append(type(specs[0])(ticks_topic, k.partitions, k.replication))
    conf = kafka_client_config(k, "admin")
    check_cluster(conf, k.timeout_s)  # wrong credentials or TLS fail here, named, not as a timeout
    return ensure_topics(conf, specs, k.timeout_s)


@dataclass(frozen=True, slots=True)
class KafkaUrl:
    """``kafka://BROKER[,BROKER...][/TOPIC]``.

    >>> KafkaUrl.parse("kafka://h1:9092,h2:9092/ticks")
    KafkaUrl(brokers='h1:9092,h2:9092', topic='ticks')
    """

    brokers: str
    topic: str | None

    @staticmethod
    def parse(url: str) -> KafkaUrl:
        parsed = urlparse(url)
        if parsed.scheme != "kafka" or not parsed.netloc:
            msg = f"{url!r} is not kafka://BROKERS[/TOPIC]"
            raise ConfigError(msg)
        topic = parsed.path.strip("/") or None
        return KafkaUrl(parsed.netloc, topic)


def with_brokers(settings: Settings, brokers: str | None) -> Settings:
    """Settings with ``kafka.brokers`` replaced (when given)."""
    import dataclasses

    if not brokers:
        return settings
    return dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, brokers=brokers))


# -- publish -------------------------------------------------------------------------


@dataclass
class PublishReport:
    ticks: int = 0
    dead: int = 0
    seconds: float = 0.0
    waits: int = 0


def _arrival_order(chunk: Chunk) -> Iterator[tuple[str, list[bytes]]]:
    """The chunk's ticks as runs of one symbol, in the order they were read."""
    if len(chunk.batches) == 1:
        b = chunk.batches[0]
        yield b.symbol, b.encoded()
        return
    arrival = np.concatenate([b.arrival for b in chunk.batches])
    which = np.concatenate([np.full(len(b), i, np.int32) for i, b in enumerate(chunk.batches)])
    encoded = [b.encoded() for b in chunk.batches]
    position = np.concatenate([np.arange(len(b)) for b in chunk.batches])
    order = np.argsort(arrival, kind="stable")
    w, pos = which[order].tolist(), position[order].tolist()
    start = 0
    for i in range(1, len(w) + 1):
        if i == len(w) or w[i] != w[start]:
            b = w[start]
            yield chunk.batches[b].symbol, [encoded[b][p] for p in pos[start:i]]
            start = i


def publish(
    settings: Settings,
    inputs: list[Callable[[int], Iterator[Chunk]]],
    topic: str,
    rate: float | None = None,
    report: Callable[[PublishReport], None] | None = None,
) -> PublishReport:
    """Publish every input's ticks onto ``topic`` (key = symbol), in read order.

    Records rejected while reading go to the dead-letters topic. ``rate``
    caps ticks per second (None: as fast as possible). Returns once the
    broker acknowledged everything; raises ``DeliveryError`` otherwise.
    """
    names = topic_names(settings.kafka)
    producer = RecordProducer(kafka_client_config(settings.kafka, "producer"))
    out = PublishReport()
    started = time.perf_counter()
    last_report = started
    step = max(1, int(rate // 200)) if rate else 0
    for make in inputs:
        for chunk in make(0):
            if chunk.dead:
                producer.produce_many(
                    names["dead_letters"],
                    [encode(d) for d in chunk.dead],
                    [d.source.encode() for d in chunk.dead],
                )
                out.dead += len(chunk.dead)
            for symbol, values in _arrival_order(chunk):
                key = symbol.encode()
                if not rate:
                    producer.produce_many(topic, values, [key] * len(values))
                    out.ticks += len(values)
                    continue
                for a in range(0, len(values), step):
                    part = values[a : a + step]
                    producer.produce_many(topic, part, [key] * len(part))
                    out.ticks += len(part)
                    due = started + out.ticks / rate
                    wait = due - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
            producer.check()
            now = time.perf_counter()
            if report is not None and now - last_report >= 1.0:
                last_report = now
                out.seconds = now - started
                report(out)
    producer.flush()
    out.seconds = time.perf_counter() - started
    out.waits = producer.waits
    return out


# -- the features flow ---------------------------------------------------------------


def _init_recovery(ex: Execution, partitions: int) -> None:
    """Create the recovery partitions once, or clean them up for a resume.

    Process 0 does both; the others wait for the partitions to exist (they
    read no snapshot before every process has connected).
    """
    if not ex.recovery_dir:
        return
    from bytewax.recovery import init_db_dir

    path = Path(ex.recovery_dir)
    if any(path.glob("part-*.sqlite3")):
        if ex.process_id in (None, 0):
            try:
                discard_unfinished(path)
            except RecoveryDirError as exc:
                raise ConfigError(str(exc)) from None
        return
    if ex.process_id in (None, 0):
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, partitions)
        return
    deadline = time.monotonic() + 60
    while not any(path.glob("part-*.sqlite3")):
        if time.monotonic() > deadline:
            msg = f"no recovery partitions appeared in {path} (process 0 creates them)"
            raise ConfigError(msg)
        time.sleep(0.2)


def stream(
    settings: Settings,
    topic: str,
    span: TopicRange,
    dsn: str | None,
    execution: Execution,
    metrics: FlowMetrics | None = None,
    outputs: bool = True,
    progress: Progress | None = None,
    report: TradingReport | None = None,
    venue: str = INTERNAL,
    run_id: str = "",
) -> FlowMetrics:
    """Run the features flow from ``topic`` into the store at ``dsn`` and the output topics.

    ``venue`` is where the trading loop's orders go: ``internal`` (the paper
    broker, in the flow), ``external`` (the ``orders`` topic, for ``qbtc
    execute``; fills come back from its topics) or ``lockstep`` (external,
    step by step with ``qbtc execute --venue paper --lockstep``).

    With ``report`` the trading loop runs too (its tables go to the store and
    their topics) and leaves its summary there at the end of a bounded read;
    it applies the operator commands put on the ``control`` topic after this
    call began, and those of ``trading.control_file`` dated inside the data's
    event-time span or, unbounded, issued after this call began.

    ``span.bounded`` makes it a replay that ends at the topic's end offsets
    found at start; otherwise it runs until stopped. ``outputs=False``
    writes no output topics (a store-only replay). ``run_id`` goes into the
    trading tables' rows in the store.
    """
    k = settings.kafka
    started = wall_ms()
    ensure(settings, None if span.bounded else topic)  # a bounded read never creates its topic
    if span.bounded:
        require_topic(kafka_client_config(k, "admin"), topic, k.timeout_s)
    _init_recovery(execution, k.recovery_partitions)
    trading = trading_settings(settings, span_input(span.from_ts, span.to_ts)) if report is not None else None
    if execution.recovery_dir:
        check_resume(execution.recovery_dir, settings, trading)
    metrics = metrics or FlowMetrics()
    if k.metrics_port:
        port = k.metrics_port + (execution.process_id or 0)
        metrics.serve(port)
    consumer_conf = kafka_client_config(k, "consumer")
    source = KafkaTickSource(
        consumer_conf,
        topic,
        span,
        k.consume_batch,
        metrics.partition,
        k.timeout_s,
        symbols=frozenset(settings.input.symbols),
    )
    bounded = span.bounded and execution.process_id is None  # a cluster's process reads some partitions
    if progress is not None:
        ranges = _read_ranges(source) if bounded else None
        source.observe = _progress_observer(metrics, progress, ranges)
    names = topic_names(k)
    external = None
    sink_topics: dict[str, str | None] = dict(names)
    if trading is not None and venue != INTERNAL:
        external = RemoteVenueConfig(
            kafka_client_config(k, "producer"),
            consumer_conf,
            names["orders"],
            names["fills"],
            names["order_events"],
            lockstep=venue == LOCKSTEP,
            timeout_s=k.timeout_s,
            heartbeat_s=min(5.0, settings.execution_limits.deadman_s / 3),  # 3 per dead man's wait
            source=loop_source(),
        )
        # the venue publishes the orders itself and the service the fills and events: the sink
        # stores them only
        sink_topics.update(orders=None, fills=None, order_events=None)
    sink = OutputSink(
        dsn,
        metrics,
        settings.store.batch_rows,
        kafka_client_config(k, "producer") if outputs else None,
        sink_topics,
        stall_timeout_s=k.timeout_s,
        durable_epochs=bool(execution.recovery_dir),  # without recovery an epoch's end waits for nothing
        run_id=run_id,
    )
    control = None
    if trading is not None:  # operator commands issued from now on (sources.control_topic)
        control = ControlTopicSettings(consumer_conf, names["control"], started, k.timeout_s)
    flow = build_flow(
        source,
        settings,
        sink,
        keep_state=bool(execution.recovery_dir),
        metrics=metrics,
        keyed_sink=True,
        trading=trading,
        report=report,
        control_topic=control,
        external=external,
        control_scope=ControlScope(None if span.bounded else started),  # a stream runs live
    )
    run_flow(flow, execution=execution)
    if progress is not None:
        progress.records = metrics.records
        progress.done_bytes = progress.total_bytes  # a bounded read returns once every partition ended
        progress.tick(force=True)
    return metrics


def _read_ranges(source: KafkaTickSource) -> dict[int, tuple[int, int]]:
    """Each partition's (first, end) offsets of a bounded read, as found at start."""
    consumer = Consumer(source.conf)
    try:
        ranges = {}
        for p in range(source.partitions):
            first, end = source.offset_range(consumer, TopicPartition(source.topic, p), None)
            first = max(first, 0)  # OFFSET_BEGINNING of an empty partition
            ranges[p] = (first, max(first, end or 0))
        return ranges
    finally:
        consumer.close()


def _progress_observer(
    metrics: FlowMetrics, progress: Progress, ranges: dict[int, tuple[int, int]] | None
) -> Callable[[str, int, int, int], None]:
    """The source's observer: consumer lag for the metrics, and the run's progress.

    With the ``ranges`` of a bounded read the percentage is the share of
    offsets passed over all partitions (never backwards, 100% at the end; a
    resumed run starts where its snapshot was); a live read shows no
    percentage (its end keeps moving).
    """
    positions: dict[int, int] = {}
    lock = threading.Lock()  # the workers of this process report from their threads
    if ranges:
        progress.total_bytes = sum(end - first for first, end in ranges.values())

    def observe(topic: str, partition: int, position: int, high: int) -> None:
        metrics.partition(topic, partition, position, high)
        progress.records = metrics.records
        if ranges and partition in ranges:
            first, end = ranges[partition]
            with lock:
                positions[partition] = max(positions.get(partition, first), min(position, end))
                progress.done_bytes = sum(pos - ranges[p][0] for p, pos in positions.items())
        progress.tick()

    return observe


def execution_from(settings: Settings, process_id: int | None, addresses: str | None) -> Execution:
    """Execution settings from the config and the cluster options."""
    k = settings.kafka
    addrs = tuple(a.strip() for a in (addresses or "").replace(",", ";").split(";") if a.strip())
    if process_id is not None and not addrs:
        msg = "--process-id needs --addresses"
        raise ConfigError(msg)
    if addrs and process_id is None:
        msg = "--addresses needs --process-id"
        raise ConfigError(msg)
    if process_id is not None and not 0 <= process_id < len(addrs):
        msg = f"--process-id must be in 0..{len(addrs) - 1}"
        raise ConfigError(msg)
    return Execution(
        workers=settings.run.workers,
        epoch_s=k.snapshot_interval_s,
        recovery_dir=os.path.abspath(k.recovery_dir) if k.recovery_dir else "",
        process_id=process_id,
        addresses=addrs,
    )
