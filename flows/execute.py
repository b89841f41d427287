"""``qbtc execute``: the execution service's loop, from the ``orders`` topic to a venue and back.

Each message of ``<prefix>orders`` (consumer group ``<prefix>qbtc-execute``)
goes to :class:`~flows.executor.Executor` (orders, cancel requests,
protections, heartbeats; an undecodable message becomes a dead letter), and
between messages the executor polls (working orders, protections, the dead
man's switch, venue health). Its records go to ``<prefix>order-events``,
``<prefix>fills``, ``<prefix>execution-quality``, ``<prefix>risk-events`` and
``<prefix>dead-letters`` (and to the store with ``--store``); the message's
offset is committed only once they are delivered: at least once in, exactly
once towards the venue (client order ids are the loop's order ids, and an
order handled before a restart is not sent again).

Venues: ``dry-run`` (records ``would_send`` events, sends nothing; also any
``ccxt:<exchange>`` without ``--sandbox`` or ``--live``), ``ccxt:<exchange>``
with ``--sandbox`` (ccxt's sandbox mode, or ``--venue-url``: the local
exchange) or ``--live`` (refused unless ``execution_limits`` caps are set).

At start, before consuming: the topics are read back and reconciled with the
venue (:func:`flows.execution_startup.start_up`).

Operator commands of ``<prefix>control`` (``qbtc control --kafka``) go to
:meth:`Executor.control` at every loop turn, before the next order: read
from the service's start at its first start, then from the offsets it
commits to ``<prefix>qbtc-execute-control`` after handling them (a restart
neither repeats nor loses a command; holds are not saved, so a restarted
service is not paused until told again). See :mod:`sources.control_topic`.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from flows.config import Settings, kafka_client_config
from flows.config_values import Secret
from flows.execution_startup import MAX_SCAN_SYMBOLS, read_book, start_up, topic_records
from flows.execution_venue import CcxtVenue, fill_key, fill_of, order_events, state_event
from flows.executor import KILL_HOOK, KILL_POINTS, RETRIES, Executor, Summary, kill_hook
from operators.execution.limits import ExecutionGuard
from schemas.codec import encode
from schemas.errors import OutsideFailure, UsageProblem
from schemas.records import VENUE_END, Order, StepMark
from sources.chunk_source import wall_ms

__all__ = [
    "KILL_HOOK", "KILL_POINTS", "MAX_SCAN_SYMBOLS", "RETRIES", "CcxtVenue", "Executor", "Summary",
    "answer_end", "execute_options", "execution_keys", "fill_key", "fill_of", "order_events",
    "report_partitions", "run_execute", "state_event", "topic_records",
]  # fmt: skip

VENUE_KEY_ENV = "QBTC_VENUE_API_KEY"
VENUE_SECRET_ENV = "QBTC_VENUE_API_SECRET"
KEY_ENV = "QBTC_EXECUTION_API_KEY"
SECRET_ENV = "QBTC_EXECUTION_API_SECRET"
GROUP = "qbtc-execute"
DRY_RUN, SANDBOX, LIVE = "dry-run", "sandbox", "live"


class ExecuteUsage(UsageProblem):
    """``qbtc execute`` options that do not fit together."""


@dataclass(frozen=True, slots=True)
class ExecuteOptions:
    """What ``qbtc execute`` runs against.

    Parameters
    ----------
    venue
        ``dry-run`` or ``ccxt:<exchange>``.
    mode
        ``dry-run``, ``sandbox`` or ``live`` (see :func:`execute_options`).
    venue_url
        Base URL of a Binance-like venue (the local exchange), "" for ccxt's own URLs.
    idle_exit_s
        Stop after this many seconds without a message (None: run until a signal).
    """

    venue: str
    mode: str
    venue_url: str = ""
    idle_exit_s: float | None = None


def execute_options(
    venue: str,
    sandbox: bool,
    live: bool,
    venue_url: str | None,
    idle_exit_s: float | None,
    settings: Settings,
) -> ExecuteOptions:
    """The options checked: :class:`ExecuteUsage` (exit 2) names the first problem.

    >>> from flows.config import load_settings
    >>> execute_options("ccxt:binance", False, False, None, None, load_settings(None, env={})).mode
    'dry-run'
    >>> execute_options("ccxt:binance", False, True, None, None, load_settings(None, env={}))
    Traceback (most recent call last):
    ...
    flows.execute.ExecuteUsage: --live refused: execution_limits.max_order_notional and \
execution_limits.max_daily_notional must be set to send real orders
    """
    if venue != DRY_RUN and not (venue.startswith("ccxt:") and venue[5:]):
        msg = f"--venue {venue!r} is not dry-run or ccxt:<exchange>"
        raise ExecuteUsage(msg)
    if sandbox and live:
        msg = "--sandbox and --live exclude each other"
        raise ExecuteUsage(msg)
    if venue == DRY_RUN and (sandbox or live or venue_url):
        msg = "--sandbox, --live and --venue-url need --venue ccxt:<exchange>"
        raise ExecuteUsage(msg)
    if venue_url and not sandbox:
        msg = "--venue-url needs --sandbox"
        raise ExecuteUsage(msg)
    if idle_exit_s is not None and not idle_exit_s > 0:
        msg = "--idle-exit must be > 0"
        raise ExecuteUsage(msg)
    if live:
        refusal = settings.execution_limits.live_refusal("execution_limits")
        if refusal is not None:
            msg = f"--live refused: {refusal}"
            raise ExecuteUsage(msg)
    mode = LIVE if live else SANDBOX if sandbox else DRY_RUN
    return ExecuteOptions(venue, mode, venue_url or "", idle_exit_s)


def execution_keys(env: Mapping[str, str], secret_file: str | None) -> tuple[Secret, Secret]:
    """API key and secret from ``secret_file`` (``NAME=VALUE`` lines) or the environment, as secrets.

    A secret file may also hold the local exchange's names (``var/venue/api-keys.env``, as ``qbtc
    venue up`` writes it), so a rehearsal needs no copying of keys.
    """
    values: Mapping[str, str] = env
    if secret_file:
        try:
            with open(secret_file) as f:
                lines = f.read().splitlines()
        except OSError as exc:
            msg = f"secret file {secret_file}: {exc.strerror or exc}"
            raise ExecuteUsage(msg) from None
        values = {}
        for line in lines:
            name, eq, value = line.strip().partition("=")
            if eq and not name.startswith("#"):
                values[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    key, secret = values.get(KEY_ENV, "").strip(), values.get(SECRET_ENV, "").strip()
    if secret_file and not key and not secret:  # the file `qbtc venue up` wrote (rehearsals)
        key = values.get(VENUE_KEY_ENV, "").strip()
        secret = values.get(VENUE_SECRET_ENV, "").strip()
    if not key or not secret:
        msg = f"no API keys: set {KEY_ENV} and {SECRET_ENV}, or give --secret-file"
        raise ExecuteUsage(msg)
    return Secret(key), Secret(secret)


def run_execute(
    settings: Settings,
    options: ExecuteOptions,
    keys: tuple[Secret, Secret] | None,
    store_dsn: str | None = None,
) -> int:
    """The service: ensure topics, reconcile with the venue, then consume orders until stopped.

    ``store_dsn``: the records published also go to that store (default: topics only).
    """
    from confluent_kafka import Consumer

    from flows.kafka_flow import ensure, topic_names
    from sinks.kafka_producer import RecordProducer
    from sinks.output_sink import record_key
    from sources.control_topic import ControlTopicReader, ControlTopicSettings, take_commands

    started = wall_ms()  # operator commands issued from now on (or after the committed offsets)
    k = settings.kafka
    ensure(settings)
    topics = topic_names(k)
    consumer_conf = kafka_client_config(k, "consumer")
    venue = None
    if options.mode != DRY_RUN:
        venue = CcxtVenue(options.venue[5:], keys, options.venue_url, options.mode == SANDBOX)
        try:
            venue.ex.load_markets()
        except venue.ccxt.BaseError as exc:
            msg = f"venue {options.venue}: {type(exc).__name__}: {str(exc)[:200]}"
            raise OutsideFailure(msg) from None
    book = read_book(consumer_conf, topics, k.timeout_s, k.topic_prefix + GROUP, venue is not None)
    producer = RecordProducer(kafka_client_config(k, "producer"))
    writer = _store_writer(store_dsn)

    def emit(table: str, record: object) -> None:
        producer.produce(topics[table], encode(record), record_key(table, record))
        if writer is not None:  # a TWAP or iceberg child travels on order-events, is stored with orders
            writer.add("orders" if isinstance(record, Order) else table, [record])

    def deliver() -> None:
        producer.producer.flush(k.timeout_s)
        producer.check()
        if writer is not None:
            writer.flush()

    guard = ExecutionGuard(settings.execution_limits)
    executor = Executor(
        options, guard, venue, emit, set(), broker=settings.execution, kill=kill_hook(), deliver=deliver
    )
    ticks = _ticks_at_end(consumer_conf, topics["ticks"], k.topic_prefix + GROUP, k.timeout_s)
    executor.seen_fills.update(fill_key(f) for f in book.fills)
    if venue is not None:
        start_up(venue, options.venue, book, executor, wall_ms())
        deliver()
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda n, _f: stop.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    # static membership: a restarted executor takes its partitions back at once, not after the
    # killed one's session times out (and a second executor of the same id fences the first)
    # (one group per topic prefix: deployments sharing a cluster do not share offsets or members)
    group = k.topic_prefix + GROUP
    consumer = Consumer(
        {"group.instance.id": group, **consumer_conf, "group.id": group, "auto.offset.reset": "earliest"}
    )
    assigned: list[bool] = []

    def on_assign(_consumer, _partitions) -> None:
        assigned.append(True)

    consumer.subscribe([topics["orders"]], on_assign=on_assign)
    control = ControlTopicReader(
        ControlTopicSettings(consumer_conf, topics["control"], started, k.timeout_s, f"{group}-control")
    )
    idle_since = time.monotonic()
    reports = report_partitions(producer, topics, k.timeout_s)
    try:
        while not stop:
            msg = consumer.poll(0.2)
            _take_ticks(ticks, executor)  # market prints: working parents, observed volume
            # followed orders, protections; the dead man's switch once every message is read
            executor.poll(wall_ms(), caught_up=msg is None)
            if take_commands(control, executor.control, emit):  # before the next order
                deliver()
                control.commit()
            deliver()
            if msg is None:
                if not assigned:
                    idle_since = time.monotonic()  # idle counts once the partitions are ours
                elif options.idle_exit_s is not None and time.monotonic() - idle_since > options.idle_exit_s:
                    break
                continue
            idle_since = time.monotonic()
            if msg.error() is not None:
                continue
            executor.handle(msg.value(), f"{msg.topic()}[{msg.partition()}]@{msg.offset()}")
            deliver()
            if executor.ended:  # a loop's end mark: what it sent before is handled and out
                answer_end(producer, topics, reports, executor.ended)
                deliver()
            executor.kill("commit")
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()
        ticks.close()
        control.close()
        producer.producer.flush(k.timeout_s)
        if writer is not None:
            writer.flush()
        for s, handler in previous.items():
            signal.signal(s, handler)
    producer.check()
    sys.stdout.write(executor.summary.line() + "\n")
    return 0


def report_partitions(producer, topics: dict[str, str], timeout_s: float) -> dict[str, int]:
    """How many partitions ``fills`` and ``order-events`` have (where the end marks are answered)."""
    counts = {}
    for table in ("fills", "order_events"):
        meta = producer.producer.list_topics(topics[table], timeout=timeout_s).topics.get(topics[table])
        counts[table] = len(meta.partitions) if meta is not None and meta.partitions else 1
    return counts


def answer_end(producer, topics: dict[str, str], partitions: dict[str, int], ended: list) -> None:
    """Answer each loop's end mark of ``ended`` (emptied) with a ``venue_end`` mark on every
    partition of ``fills`` and ``order-events``, after everything published before it."""
    for mark in ended:
        value = encode(StepMark(wall_ms(), mark.source, VENUE_END, mark.step))
        for table, n in partitions.items():
            for p in range(n):
                producer.produce(topics[table], value, None, partition=p)
    ended.clear()


def _ticks_at_end(conf: dict, topic: str, group: str, timeout_s: float):
    """A consumer of ``topic`` from its end now (nothing committed: a restart starts at the end again)."""
    from confluent_kafka import Consumer, TopicPartition

    from sources.kafka_ticks import watermarks

    consumer = Consumer({**conf, "group.id": f"{group}-ticks", "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    parts = [TopicPartition(topic, p) for p in sorted(meta.partitions if meta is not None else {})]
    consumer.assign(
        [TopicPartition(topic, tp.partition, watermarks(consumer, tp, timeout_s)[1]) for tp in parts]
    )
    return consumer


def _take_ticks(consumer, executor: Executor) -> None:
    """The ticks there now, to the executor (undecodable ones are the pipeline's to report: skipped)."""
    from sources.kafka_ticks import decode_ticks

    msgs = [m for m in consumer.consume(2000, 0) if m.error() is None]
    by_partition: dict[int, list] = {}
    for m in msgs:
        by_partition.setdefault(m.partition(), []).append(m)
    now = wall_ms()
    for p, group in sorted(by_partition.items()):
        values, offsets = [m.value() for m in group], [m.offset() for m in group]
        batches, _dead = decode_ticks(values, offsets, [now] * len(group), f"{group[0].topic()}[{p}]")
        for cols in batches:
            for ts, price, qty in zip(cols.ts.tolist(), cols.price.tolist(), cols.qty.tolist(), strict=True):
                executor.on_tick(cols.symbol, ts, price, qty)


def _store_writer(dsn: str | None):
    """A writer of the records published into the store at ``dsn`` (None: no store)."""
    if not dsn:
        return None
    from sinks.clickhouse_store import Store
    from sinks.store_sink import RowCounter, StoreWriter

    return StoreWriter(Store(dsn), RowCounter(), batch_rows=1)


def with_kafka(settings: Settings, brokers: str | None) -> Settings:
    """Settings with ``--kafka`` applied."""
    if not brokers:
        return settings
    return dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, brokers=brokers))
