"""Ticks for the local exchange: a tick file replayed at a rate, or the live ``ticks`` topic.

Both feeds read qbtc's own way (:class:`~sources.tick_files.TickFileReader`,
:func:`~sources.kafka_ticks.decode_ticks`: the same validation, bad records
skipped and counted) and hand each block's ticks, in (ts, arrival) order, to
one ``sink`` (the venue's ``on_tick`` under its lock) on a daemon thread. A
file is read once (``rate`` ticks per second, ``inf``: as fast as possible);
a topic is followed from its end (``from_beginning``: from its first
offsets) until the venue stops.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from schemas.records import Tick
from schemas.tick_columns import TickColumns
from sources.chunk_source import wall_ms
from sources.tick_files import TickFileReader

log = logging.getLogger(__name__)
TickSink = Callable[[Tick], None]


def in_order(batches: Iterable[TickColumns]) -> list[Tick]:
    """The ticks of per-symbol batches merged in (ts, arrival) order.

    >>> a = TickColumns.from_ticks([Tick(2, "A/B", 1.0, 1.0), Tick(5, "A/B", 1.0, 1.0)], "f", 1)
    >>> b = TickColumns.from_ticks([Tick(3, "C/D", 1.0, 1.0)], "f", 2)
    >>> [t.ts for t in in_order([a, b])]
    [2, 3, 5]
    """
    rows = [(int(b.ts[i]), int(b.arrival[i]), b, i) for b in batches for i in range(len(b))]
    rows.sort(key=lambda r: (r[0], r[1]))
    return [b.tick(i) for _, _, b, i in rows]


class TickFeed(threading.Thread):
    """A daemon thread handing ticks to ``sink`` until its input ends or ``stop`` is set.

    ``ticks`` counts the ticks delivered, ``skipped`` the records rejected
    while reading; ``finished`` is set when the input has ended (never for
    a topic), ``error`` holds why the feed stopped early.
    """

    def __init__(self, name: str, sink: TickSink, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.sink, self.stop = sink, stop
        self.ticks = self.skipped = 0
        self.finished = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.feed()
            self.finished.set()
            log.info("tick feed %s: %d ticks, %d records skipped", self.name, self.ticks, self.skipped)
        except Exception as exc:  # a feed that fails leaves the venue running on the prices it has
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("tick feed %s stopped: %s", self.name, self.error)

    def feed(self) -> None:
        raise NotImplementedError

    def _skip(self, dead: list) -> None:
        if dead and not self.skipped:
            first = dead[0]
            log.warning(
                "tick feed %s skips bad records, first %s: %s", self.name, first.source, first.message
            )
        self.skipped += len(dead)


class FileFeed(TickFeed):
    """Tick files (CSV or JSON Lines, optionally gzip), in the order given, at ``rate`` ticks/s."""

    def __init__(self, paths: list[str], rate: float, sink: TickSink, stop: threading.Event) -> None:
        super().__init__(f"ticks:{','.join(paths)}", sink, stop)
        if not rate > 0:
            msg = f"rate must be > 0 ticks/s (inf: as fast as possible), got {rate}"
            raise ValueError(msg)
        self.rate = rate
        self.readers = [TickFileReader(p, "unknown", wall_ms) for p in paths]  # a missing file fails here

    def feed(self) -> None:
        start = time.monotonic()
        for reader in self.readers:
            for chunk in reader.chunks():
                self._skip(chunk.dead)
                for tick in in_order(chunk.batches):
                    if math.isfinite(self.rate):
                        due = start + self.ticks / self.rate - time.monotonic()
                        if due > 0 and self.stop.wait(due):
                            return
                    if self.stop.is_set():
                        return
                    self.sink(tick)
                    self.ticks += 1


class TopicFeed(TickFeed):
    """The ticks topic of a Kafka cluster, followed live: every partition assigned (no group, nothing
    committed) once the topic exists; ``assigned`` is set then."""

    def __init__(
        self, conf: dict, topic: str, from_beginning: bool, sink: TickSink, stop: threading.Event
    ) -> None:
        super().__init__(f"ticks:{topic}", sink, stop)
        self.conf = {**conf, "group.id": f"qbtc-venue-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        self.topic, self.from_beginning = topic, from_beginning
        self.assigned = threading.Event()

    def feed(self) -> None:
        from confluent_kafka import Consumer, KafkaError

        from sources.kafka_ticks import decode_ticks

        consumer = Consumer(self.conf)
        try:
            if not self._assign(consumer):
                return
            while not self.stop.is_set():
                msgs = consumer.consume(1000, 0.2)
                by_partition: dict[int, list] = {}
                for m in msgs:
                    if m.error() is None:
                        by_partition.setdefault(m.partition(), []).append(m)
                    elif m.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("tick feed %s: %s", self.name, m.error())
                batches = []
                for partition, part in sorted(by_partition.items()):
                    values, offsets = [m.value() for m in part], [m.offset() for m in part]
                    received = [m.timestamp()[1] for m in part]
                    good, dead = decode_ticks(values, offsets, received, f"{self.topic}[{partition}]")
                    batches += good
                    self._skip(dead)
                for tick in in_order(batches):
                    self.sink(tick)
                    self.ticks += 1
        finally:
            consumer.close()

    def _assign(self, consumer) -> bool:
        """Assign every partition of the topic (waiting until it exists); False when stopped first."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        while not self.stop.is_set():
            try:
                topic = consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
            except KafkaException as exc:
                log.warning("tick feed %s: %s", self.name, exc)
                topic = None
            if topic is not None and topic.error is None and topic.partitions:
                parts = [TopicPartition(self.topic, p) for p in sorted(topic.partitions)]
                try:  # the ends now (OFFSET_END resolves at the first fetch): nothing after is missed
                    offsets = [
                        OFFSET_BEGINNING if self.from_beginning else consumer.get_watermark_offsets(tp, 5)[1]
                        for tp in parts
                    ]
                except KafkaException as exc:
                    log.warning("tick feed %s: %s", self.name, exc)
                else:
                    consumer.assign(
                        [
                            TopicPartition(self.topic, tp.partition, o)
                            for tp, o in zip(parts, offsets, strict=True)
                        ]
                    )
                    self.assigned.set()
                    return True
            self.stop.wait(1.0)
        return False
