"""``qbtc execute --venue paper``: the in-process paper broker, as a service on the topics.

The same :class:`~operators.execution.paper_broker.PaperBroker` (same cost
model, same code) that fills in-process backtests works the requests of
``<prefix>orders`` (:class:`~schemas.records.Order`,
:class:`~schemas.records.CancelRequest`, :class:`~schemas.records.Protection`;
heartbeats are passed over) and reports on ``<prefix>fills`` (one
:class:`~schemas.records.Fill` per fill) and ``<prefix>order-events``
(``accepted``, ``rejected``, ``partially_filled``, ``filled``,
``cancelled`` events with ``leaves_qty``, and the orders it creates: TWAP
children and protective exits, as :class:`~schemas.records.Order` records).
An undecodable message becomes a dead letter.

**Free-running** (default): the bars are the service's own, built from
``<prefix>ticks`` by the flows' :class:`~operators.features.bar_builder.BarBuilder`
(a bar closes when a later tick of its symbol arrives); requests apply from
the next bar that closes after they arrive. It starts at the ticks topic's
end and the orders topic's committed offsets (group ``<prefix>qbtc-execute-paper``),
and keeps its book in memory: a restart starts with an empty book (working
paper orders are then gone; say so with ``expired`` events? no: nothing is
known of them) — use lockstep for runs that must be exact. A loop's
``loop_end`` mark (the end of its bounded run) is answered with ``venue_end``
marks on every partition of ``fills`` and ``order-events``. The dead man's
switch is judged only when no message is waiting.

**Lockstep** (``--lockstep``, with ``qbtc stream --execution external
--lockstep``): the bars are the loop's :class:`~schemas.records.VenueBar`
records. A partition's requests are applied in its order when the loop's
:class:`~schemas.records.StepMark` of step k that follows them arrives (of a
step done already: dropped, they were applied); once every partition of
``orders`` has reached it, the step's bars go through the broker in symbol
order and a ``venue`` mark of step k goes to every partition of ``fills`` and
``order-events``. The result is a function of the orders topic alone, so a
restart reads it again from the start, recomputes, and publishes only what
is not on the output topics yet (steps with a complete mark are skipped, the
records of a half-published step are not repeated). A loop that resumed
from a snapshot sends steps again: marks, bars and order ids already
processed are ignored. One lockstep session per topic prefix.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from flows.config import Settings, kafka_client_config
from operators.execution.deadman import DeadMansSwitch, DeadMansSwitchSettings
from operators.execution.paper_broker import PaperBroker
from operators.execution.venue import REJECTED as CANCEL_REJECTED
from operators.execution.venue import BarContext, BarResult
from operators.features.bar_builder import BarBuilder, BarSettings
from schemas.codec import SchemaError, decode, encode
from schemas.errors import UsageProblem
from schemas.records import (
    ACCEPTED,
    CANCELLED,
    FILLED,
    LOOP_END,
    LOOP_MARK,
    PARSE,
    PARTIALLY_FILLED,
    REJECTED,
    SCHEMA,
    VENUE_MARK,
    Bar,
    CancelRequest,
    DeadLetter,
    Fill,
    Heartbeat,
    Order,
    OrderEvent,
    Protection,
    RiskEvent,
    StepMark,
    VenueBar,
)
from sources.chunk_source import wall_ms
from sources.kafka_ticks import consume_ready

VENUE = "paper"
GROUP = "qbtc-execute-paper"
KILL_HOOK = "QBTC_TEST_PAPER_KILL_AT_STEP"
"""Test hook: the process ends (``os._exit(137)``, as SIGKILL) at its Nth lockstep step, after the
step's records were delivered and before its marks."""


@dataclass
class PaperSummary:
    orders: int = 0
    accepted: int = 0
    rejected: int = 0
    fills: int = 0
    steps: int = 0
    dead_letters: int = 0
    replayed: int = 0  # records recomputed at a restart and found already published

    def line(self, lockstep: bool) -> str:
        steps = f", {self.steps} steps" if lockstep else ""
        again = f" ({self.replayed} records already published)" if self.replayed else ""
        return (
            f"qbtc execute --venue paper: {self.orders} orders ({self.accepted} accepted, {self.rejected} "
            f"rejected), {self.fills} fills{steps}, {self.dead_letters} dead letters{again}"
        )


def loop_run_tag(order: Order) -> str:
    """The run tag of a trading loop's order (``{run_tag}-{ts}-{n}``); "" for any other order.

    >>> loop_run_tag(Order(1, "a1b2c3d4-60000-7", "", "X", "buy", 1.0, "market", 0.0, "entry", "c"))
    'a1b2c3d4'
    >>> loop_run_tag(Order(1, "60000-7", "", "X", "buy", 1.0, "market", 0.0, "entry", "c"))
    ''
    """
    parts = order.order_id.split("-")
    return parts[0] if len(parts) == 3 and not order.parent_id and parts[0].isalnum() else ""


class PaperDesk:
    """The broker and what its requests and bars did, as records (pure: no I/O).

    ``publish(table, record, key)`` receives every record to send, in order.
    """

    def __init__(self, settings: Settings, publish) -> None:
        self.broker = PaperBroker(settings.execution)
        self.publish = publish
        self.seen: set[str] = set()  # order ids taken: a loop that resumed sends some again
        self.summary = PaperSummary()

    def event(
        self, order: Order, kind: str, ts: int, filled: float, price: float, reason: str, leaves: float
    ):
        return OrderEvent(
            ts, order.order_id, "", order.symbol, order.side, kind, order.qty, filled, price, reason,
            VENUE, ts, leaves,
        )  # fmt: skip

    def request(self, record: object) -> None:
        """One request of the loop."""
        b = self.broker
        if isinstance(record, Order):
            tag = loop_run_tag(record)
            if tag:  # the loop's run: the broker's exits carry it, as in the loop's own paper broker
                b.run_tag = tag
            if record.order_id in self.seen:
                return
            self.seen.add(record.order_id)
            self.summary.orders += 1
            working = b.submit(record)
            price = record.limit_price
            if working:
                self.summary.accepted += 1
                self.publish(
                    "order_events",
                    self.event(record, ACCEPTED, record.ts, 0.0, price, "", float(record.qty)),
                    record.symbol,
                )
            self._cancellations(b.take_cancelled())
        elif isinstance(record, CancelRequest):
            left = b.remaining(record.order_id)
            order = next((o for o in b.open_orders() if o.order_id == record.order_id), None)
            if b.cancel(record.order_id, record.ts) and order is not None:
                filled = order.qty - (left or 0.0)
                event = self.event(order, CANCELLED, record.ts, filled, order.limit_price, "requested", 0.0)
                self.publish("order_events", event, order.symbol)
        elif isinstance(record, Protection):
            stop = record.stop if record.stop > 0 else None
            target = record.target if record.target > 0 else None
            if record.position_qty == 0 or (stop is None and target is None):
                b.clear_protection(record.symbol)
            else:
                b.set_protection(record.symbol, record.position_qty, stop, target, record.ts)

    def cancel_all(self, ts: int, reason: str) -> int:
        """Cancel every working order (the dead man's switch); how many."""
        b = self.broker
        orders = b.open_orders()
        for order in orders:
            left = b.remaining(order.order_id) or 0.0
            b.cancel(order.order_id, ts)
            event = self.event(order, CANCELLED, ts, order.qty - left, order.limit_price, reason, 0.0)
            self.publish("order_events", event, order.symbol)
        return len(orders)

    def bar(self, bar: Bar, context: BarContext | None = None) -> None:
        """One closed bar of one symbol through the broker, and what it did."""
        b = self.broker
        before = {o.order_id: (o, b.remaining(o.order_id)) for o in b.open_orders() if o.symbol == bar.symbol}
        result: BarResult = b.on_bar(bar, context)
        for order in result.new_orders:
            self.publish("order_events", order, order.symbol)
        whole = set()
        by_id = {o.order_id: o for o in result.new_orders}
        for fill in result.fills:
            self.summary.fills += 1
            self.publish("fills", fill, fill.symbol)
            order = by_id.get(fill.order_id) or before.get(fill.order_id, (None,))[0]
            if order is not None:
                whole.add(order.order_id)
                self.publish(
                    "order_events",
                    self.event(order, FILLED, fill.ts, fill.qty, fill.price, "", 0.0),
                    order.symbol,
                )
        for oid, (order, left) in before.items():
            now = b.remaining(oid)
            if oid in whole or now == left or any(c.order.order_id == oid for c in result.cancelled):
                continue
            ts = bar.ts + b.settings.bar_interval_ms - 1
            if now is None:
                event = self.event(order, FILLED, ts, order.qty, 0.0, "", 0.0)
            else:
                event = self.event(order, PARTIALLY_FILLED, ts, order.qty - now, 0.0, "", now)
            self.publish("order_events", event, order.symbol)
        self._cancellations(result.cancelled)

    def _cancellations(self, cancelled) -> None:
        for c in cancelled:
            kind = REJECTED if c.reason == CANCEL_REJECTED else CANCELLED
            if kind == REJECTED:
                self.summary.rejected += 1
            o = c.order
            event = self.event(o, kind, c.ts, 0.0, o.limit_price, f"{c.reason}: {c.message}", 0.0)
            self.publish("order_events", event, o.symbol)


@dataclass
class Lockstep:
    """The lockstep barrier over the orders topic's partitions (pure: no I/O)."""

    partitions: int
    queues: dict[int, deque] = field(default_factory=dict)
    waiting: dict[int, int] = field(default_factory=dict)  # partition -> the loop mark it stopped at
    bars: dict[int, dict[str, VenueBar]] = field(default_factory=dict)
    pending: dict[int, list] = field(default_factory=dict)  # partition -> requests before its next mark
    done: int | None = None  # the last step processed

    def add(self, partition: int, record: object) -> None:
        self.queues.setdefault(partition, deque()).append(record)

    def run(self, desk: PaperDesk, on_step) -> None:
        """Apply what is queued, up to and through every step all partitions have reached.

        A partition's requests wait for its next loop mark: they belong to that step (the loop
        sent them before it), so a loop resumed from a snapshot, which sends steps again, has its
        repeated requests dropped with their step's repeated mark instead of applied twice.
        """
        while True:
            for p, queue in self.queues.items():
                while p not in self.waiting and queue:
                    record = queue.popleft()
                    if isinstance(record, StepMark):
                        if record.kind != LOOP_MARK:
                            continue
                        requests = self.pending.pop(p, [])
                        if self.done is None or record.step > self.done:
                            for request in requests:
                                desk.request(request)
                            self.waiting[p] = record.step
                    elif isinstance(record, VenueBar):
                        if self.done is None or record.step > self.done:
                            self.bars.setdefault(record.step, {})[record.symbol] = record
                    else:
                        self.pending.setdefault(p, []).append(record)
            if len(self.waiting) < self.partitions:
                return
            step = min(self.waiting.values())
            for vb in sorted(self.bars.pop(step, {}).values(), key=lambda v: v.symbol):
                bar = Bar(vb.symbol, vb.ts, vb.open, vb.high, vb.low, vb.close, vb.volume, vb.vwap, vb.trades)
                desk.bar(bar, BarContext(normalised_vol=vb.normalised_vol))
            for stale in [k for k in self.bars if k <= step]:
                del self.bars[stale]
            self.waiting = {p: k for p, k in self.waiting.items() if k != step}
            self.done = step
            desk.summary.steps += 1
            on_step(step)


def _published(consumer_conf: dict, topics: list[str], timeout_s: float) -> tuple[int | None, Counter]:
    """What a lockstep service published before: the last step with its mark on every partition of
    ``topics``, and the records after those marks (a half-published step)."""
    from confluent_kafka import Consumer, TopicPartition

    from sources.kafka_ticks import partition_records, watermarks

    consumer = Consumer({**consumer_conf, "group.id": f"{GROUP}-scan", "enable.auto.commit": False})
    marks: dict[tuple[str, int], int] = {}
    tails: dict[tuple[str, int], list[bytes]] = {}
    try:
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            for p in sorted(meta.partitions if meta is not None else {}):
                marks.setdefault((topic, p), -1)
                low, high = watermarks(consumer, TopicPartition(topic, p), timeout_s)
                for _offset, value, record in partition_records(consumer, topic, p, low, high, timeout_s):
                    if record is None:
                        continue
                    if isinstance(record, StepMark) and record.kind == VENUE_MARK:
                        marks[(topic, p)] = record.step
                        tails[(topic, p)] = []
                    else:
                        tails.setdefault((topic, p), []).append(value)
    finally:
        consumer.close()
    if not marks:
        return None, Counter()
    done = min(marks.values())
    tail: Counter = Counter()
    for tp, values in tails.items():
        if marks[tp] == done or marks[tp] == -1:
            tail.update(values)
    return (None if done < 0 else done), tail


def paper_options(venue: str, lockstep: bool, sandbox: bool, live: bool, venue_url: str | None) -> bool:
    """``--lockstep``, once the options are checked (:class:`~schemas.errors.UsageProblem`, exit 2).

    >>> paper_options("paper", True, False, False, None)
    True
    >>> paper_options("ccxt:binance", True, True, False, None)
    Traceback (most recent call last):
    ...
    schemas.errors.UsageProblem: --lockstep needs --venue paper
    """
    if venue != VENUE:
        msg = "--lockstep needs --venue paper"
        raise UsageProblem(msg)
    if sandbox or live or venue_url:
        msg = "--sandbox, --live and --venue-url need --venue ccxt:<exchange> (the paper venue sends nothing)"
        raise UsageProblem(msg)
    return lockstep


def _ticks_consumer(conf: dict, topic: str, group: str, timeout_s: float):
    """The free-running service's ticks: from where it stopped (its group's committed offsets), else
    from the end. Assigned at once, so no tick published after the ready line is passed over."""
    from confluent_kafka import Consumer, TopicPartition

    from sources.kafka_ticks import watermarks

    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    parts = [TopicPartition(topic, p) for p in sorted(meta.partitions if meta is not None else {})]
    start = []
    for tp in consumer.committed(parts, timeout=timeout_s) if parts else []:
        offset = tp.offset if tp.offset >= 0 else watermarks(consumer, tp, timeout_s)[1]
        start.append(TopicPartition(topic, tp.partition, offset))
    consumer.assign(start)
    return consumer


def _commit(consumer, msgs: list) -> None:
    """Commit past ``msgs`` (those without an error), once their records are delivered."""
    from confluent_kafka import TopicPartition

    ends: dict[tuple[str, int], int] = {}
    for m in msgs:
        if m.error() is None:
            key = (m.topic(), m.partition())
            ends[key] = max(ends.get(key, 0), m.offset() + 1)
    if ends:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)


def _risk(producer, topics: dict[str, str], now: int, level: int, message: str) -> None:
    action = "cancel_all" if level else "clear"
    event = RiskEvent(now, "deadman", level, "", 0.0, 0.0, action, message)
    producer.produce(topics["risk_events"], encode(event), None)


def run_paper(settings: Settings, lockstep: bool, idle_exit_s: float | None) -> int:
    """The paper venue service, until a signal (or ``idle_exit_s`` without a message)."""
    from confluent_kafka import Consumer, TopicPartition

    from flows.execute import answer_end, report_partitions
    from flows.kafka_flow import ensure, topic_names
    from sinks.kafka_producer import RecordProducer

    k = settings.kafka
    ensure(settings)
    topics = topic_names(k)
    consumer_conf = kafka_client_config(k, "consumer")
    producer = RecordProducer(kafka_client_config(k, "producer"))
    done_before, tail = (
        _published(consumer_conf, [topics["fills"], topics["order_events"]], k.timeout_s)
        if lockstep
        else (None, Counter())
    )

    def published_before() -> bool:
        """Lockstep restart: the records being made belong to a step published completely before."""
        return done_before is not None and (barrier.done is None or barrier.done < done_before)

    def publish(table: str, record: object, key: str | None) -> None:
        value = encode(record)
        if published_before():
            desk.summary.replayed += 1
            return
        if tail[value] > 0:
            tail[value] -= 1
            desk.summary.replayed += 1
            return
        producer.produce(topics[table], value, None if key is None else key.encode())

    desk = PaperDesk(settings, publish)
    orders_topic = topics["orders"]
    meta = producer.producer.list_topics(orders_topic, timeout=k.timeout_s).topics[orders_topic]
    partitions = len(meta.partitions)
    reports = report_partitions(producer, topics, k.timeout_s)
    barrier = Lockstep(partitions)
    for p in range(partitions):
        barrier.queues[p] = deque()

    hook = os.environ.get(KILL_HOOK, "")
    kill_at = int(hook) if hook.isdigit() else None

    def on_step(step: int) -> None:
        if kill_at is not None and desk.summary.steps >= kill_at:
            producer.flush()  # the step's records are out, its marks are not: a half-published step
            os._exit(137)
        if done_before is None or step > done_before:
            for table in ("fills", "order_events"):
                mark = encode(StepMark(0, "paper", VENUE_MARK, step))
                for p in range(partitions):
                    producer.produce(topics[table], mark, None, partition=p)
        producer.flush()

    group = k.topic_prefix + GROUP
    consumer = Consumer(
        {**consumer_conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    if lockstep:
        consumer.assign([TopicPartition(orders_topic, p, -2) for p in range(partitions)])  # beginning
    else:
        consumer.subscribe([orders_topic])
    ticks = None
    builders: dict[str, BarBuilder] = {}
    bar_settings = BarSettings(interval_ms=settings.features.bar_interval * 1000)
    if not lockstep:
        from sources.kafka_ticks import decode_ticks

        ticks = _ticks_consumer(consumer_conf, topics["ticks"], group + "-ticks", k.timeout_s)
    switch = DeadMansSwitch(DeadMansSwitchSettings(int(settings.execution_limits.deadman_s * 1000)))
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda n, _f: stop.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    idle_since = time.monotonic()
    mode = "lockstep" if lockstep else "free-running"
    sys.stderr.write(f"qbtc execute --venue paper: ready ({mode}) on {orders_topic}\n")
    sys.stderr.flush()
    try:
        while not stop:
            got = False
            msgs = consume_ready(consumer, 0.05)
            for msg in msgs:
                if msg.error() is not None:
                    continue
                got = True
                source = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
                try:
                    record = decode(msg.value() or b"")
                except SchemaError as exc:
                    reason = PARSE if str(exc).startswith("not JSON") else SCHEMA
                    desk.summary.dead_letters += 1
                    if not published_before():
                        dead = DeadLetter(wall_ms(), source, reason, f"{source}: {exc}", msg.value() or b"")
                        producer.produce(topics["dead_letters"], encode(dead), source.encode())
                    continue
                if isinstance(record, Heartbeat):
                    if not lockstep and switch.beat(wall_ms()):
                        _risk(producer, topics, wall_ms(), 0, "heartbeats are back: orders are taken again")
                    continue
                if isinstance(record, Fill | OrderEvent):
                    continue
                if not lockstep and switch.tripped and isinstance(record, Order):
                    reason = "rejected: dead man's switch: no heartbeat from the loop"
                    producer.produce(
                        topics["order_events"],
                        encode(desk.event(record, REJECTED, wall_ms(), 0.0, record.limit_price, reason, 0.0)),
                        record.symbol.encode(),
                    )
                    desk.seen.add(record.order_id)
                    continue
                if lockstep:
                    barrier.add(msg.partition(), record)
                elif isinstance(record, StepMark):
                    if record.kind == LOOP_END:  # what the loop sent before is handled: say so
                        answer_end(producer, topics, reports, [record])
                elif not isinstance(record, VenueBar):
                    desk.request(record)
            if not lockstep and not msgs and switch.trip(wall_ms()):  # judged with nothing left to read
                silent = switch.silence_ms(wall_ms()) or 0
                n = desk.cancel_all(wall_ms(), f"dead man's switch: no heartbeat for {silent / 1000:.0f} s")
                _risk(
                    producer,
                    topics,
                    wall_ms(),
                    3,
                    f"no heartbeat for {silent / 1000:.0f} s: {n} open order(s) cancelled, "
                    "new orders rejected until heartbeats return",
                )
                producer.flush()
            if lockstep:
                barrier.run(desk, on_step)
            elif ticks is not None:
                tick_msgs = consume_ready(ticks, 0.05)
                if tick_msgs:
                    got = True
                    good = [m for m in tick_msgs if m.error() is None]
                    now = wall_ms()
                    values, offsets = [m.value() for m in good], [m.offset() for m in good]
                    batches, dead = decode_ticks(values, offsets, [now] * len(good), topics["ticks"])
                    for d in dead:
                        desk.summary.dead_letters += 1
                        producer.produce(topics["dead_letters"], encode(d), d.source.encode())
                    for cols in batches:
                        b = builders.get(cols.symbol)
                        if b is None:
                            b = builders[cols.symbol] = BarBuilder(bar_settings, cols.symbol)
                        for bar in b.update(cols).closed:
                            desk.bar(bar)
                if msgs:
                    producer.flush()
                    _commit(consumer, msgs)
                if tick_msgs:
                    producer.flush()
                    _commit(ticks, tick_msgs)
            if got:
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
    finally:
        consumer.close()
        if ticks is not None:
            ticks.close()
        producer.producer.flush(k.timeout_s)
        for s, handler in previous.items():
            signal.signal(s, handler)
    producer.check()
    sys.stdout.write(desk.summary.line(lockstep) + "\n")
    return 0
