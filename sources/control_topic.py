"""Operator commands read from the ``<prefix>control`` topic (``qbtc control --kafka``).

:class:`ControlTopicReader` is what ``qbtc stream --trade`` and ``qbtc
execute`` read commands with, each process on its own (every process sees
every command). Its read position is a :class:`ControlPosition`: partition
-> next offset, nothing else.

* **Start.** A reader with no position starts at the first message produced
  at or after ``since_ms`` (the process's start, by the message's Kafka
  timestamp), else at the partition's end: a command issued before the
  process started is never applied, so an old ``pause`` on the topic does
  not stop a later, unrelated run. The position is taken at the first read
  and kept from then on (even before a message arrives).
* **Restart.** The stream keeps the position in its step's snapshot, so a
  run resumed from its recovery directory carries on after the last command
  its saved state had read: none is applied twice, none is lost. The
  execution service commits it to the consumer group ``group`` after
  handling; at start the committed offsets win over ``since_ms``.
* **Bad messages.** A message that is not an :class:`OperatorCommand`
  becomes a :class:`DeadLetter` (source ``topic[partition]@offset``, the
  raw message kept); reading goes on.

The consumer is made at the first :meth:`ControlTopicReader.read` (a resumed
step reconnects lazily) and is never pickled; nor are the client settings
(they may hold secrets): only the position is state.

**When the stream's loop applies a command.** A command from the topic
takes effect at the loop's next bar close (it is added at the loop's
current event time), whatever its ``ts``. A live stream's event time lags
wall time (a replayed topic, a slow producer, a simulator started in the
past); a command applied at the first close at or after its wall-clock
``ts`` would wait until the data caught up, maybe never, and a ``pause``
must act promptly. The control file keeps its event-time semantics (a
replay applies a file command at the first close at or after ``ts``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemas.codec import SchemaError, decode
from schemas.errors import OutsideFailure
from schemas.records import PARSE, SCHEMA, DeadLetter, OperatorCommand
from sources.chunk_source import wall_ms

if TYPE_CHECKING:
    from confluent_kafka import Consumer

# confluent_kafka is imported where a topic is read or written: a file replay that never
# touches the control topic does not load the client library (~9 MB resident).

CONTROL_KEY = b"control"
"""Every command's message key: one partition, so commands keep the order they were issued in."""


class ControlTopicError(OutsideFailure):
    """The control topic cannot be read (no broker, no topic) within the timeout."""


@dataclass(frozen=True, slots=True)
class ControlTopicSettings:
    """Where and how to read commands (not state: never pickled).

    Parameters
    ----------
    conf
        librdkafka consumer settings (may hold secrets).
    topic
        ``<prefix>control``.
    since_ms
        Wall-clock start of the reading process, epoch ms: a reader without
        a position starts at the first message produced at or after it.
    timeout_s
        How long connecting may take before :class:`ControlTopicError`.
    group
        Consumer group whose committed offsets are the position (``qbtc
        execute``); "" keeps the position in :class:`ControlPosition` only.
    """

    conf: dict = field(repr=False)
    topic: str
    since_ms: int
    timeout_s: float = 30.0
    group: str = ""


@dataclass(slots=True)
class ControlPosition:
    """The reader's state: next offset to read, by partition (empty until the first read)."""

    offsets: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ControlRead:
    """What one read got: the commands, in order, and the messages that are not commands."""

    commands: list[OperatorCommand]
    dead: list[DeadLetter]


def parse_command(value: bytes | None, source: str, now_ms: int) -> OperatorCommand | DeadLetter:
    """One message of the control topic: a command, or a dead letter saying why not.

    >>> from schemas.codec import encode
    >>> parse_command(encode(OperatorCommand(1, "pause", "why", "me@host")), "c[0]@0", 5).command
    'pause'
    >>> bad = parse_command(b"pause!", "c[0]@1", 5)
    >>> bad.source, bad.reason, bad.payload
    ('c[0]@1', 'parse', b'pause!')
    >>> parse_command(b'{"v": 1, "type": "tick"}', "c[0]@2", 5).message
    'c[0]@2: not a control command: expected a control record, got tick'
    """
    try:
        return decode(value or b"", OperatorCommand)
    except SchemaError as exc:
        reason = PARSE if str(exc).startswith("not JSON") else SCHEMA
        return DeadLetter(now_ms, source, reason, f"{source}: not a control command: {exc}", value or b"")


def issuer() -> str:
    """Who issues a command from this process: ``user@host`` (``cli`` when neither is known)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        user = ""
    host = socket.gethostname()
    return f"{user or 'cli'}@{host}" if host else user or "cli"


def produce_command(producer_conf: dict, topic: str, command: OperatorCommand, timeout_s: float) -> str:
    """Put ``command`` on ``topic`` and wait for the broker's acknowledgement (idempotent producer).

    Returns where it went, ``topic[partition]@offset``; raises
    :class:`ControlTopicError` when it is not acknowledged within ``timeout_s``.
    """
    from confluent_kafka import Producer

    from schemas.codec import encode

    conf = {**producer_conf, "enable.idempotence": True, "message.timeout.ms": max(1, int(timeout_s * 1000))}
    producer = Producer(conf)
    result: list = []
    producer.produce(
        topic, encode(command), CONTROL_KEY, on_delivery=lambda err, msg: result.append((err, msg))
    )
    producer.flush(timeout_s + 1)
    if not result:
        msg = f"control topic {topic}: no acknowledgement in {timeout_s:.0f} s"
        raise ControlTopicError(msg)
    err, delivered = result[0]
    if err is not None:
        msg = f"control topic {topic}: not delivered: {err.str()}"
        raise ControlTopicError(msg)
    return f"{topic}[{delivered.partition()}]@{delivered.offset()}"


def check_reachable(admin_conf: dict, timeout_s: float) -> None:
    """Raise :class:`ControlTopicError` when the cluster does not answer within ``timeout_s``."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient(admin_conf).list_topics(timeout=timeout_s)
    except KafkaException:
        servers = admin_conf.get("bootstrap.servers", "")
        msg = f"cannot reach the Kafka cluster at {servers} in {timeout_s:g} s (kafka.timeout_s)"
        raise ControlTopicError(msg) from None


def take_commands(
    reader: ControlTopicReader,
    apply: Callable[[str, str, int], None],
    emit: Callable[[str, object], None],
    now_ms: Callable[[], int] = wall_ms,
) -> int:
    """One non-blocking read for a service: each command to ``apply(command, reason, now_ms)``.

    The reason names who issued it (``"... (by user@host)"``); a bad message
    goes to ``emit("dead_letters", letter)``. Returns how many messages were
    read: when any, deliver what was emitted, then :meth:`ControlTopicReader.commit`.
    """
    got = reader.read()
    for cmd in got.commands:
        apply(cmd.command, f"{cmd.reason} (by {cmd.source})", now_ms())
    for letter in got.dead:
        emit("dead_letters", letter)
    return len(got.commands) + len(got.dead)


class ControlTopicReader:
    """Commands issued on the control topic since the last read (non-blocking).

    Parameters
    ----------
    settings
        :class:`ControlTopicSettings`.
    position
        A saved :class:`ControlPosition` (a resumed step's), None to start fresh.
    """

    def __init__(self, settings: ControlTopicSettings, position: ControlPosition | None = None) -> None:
        self.settings = settings
        self.position = position if position is not None else ControlPosition()
        self._consumer: Consumer | None = None
        self._backlog: dict[int, int] = {}  # partition -> its end at connect, while behind it

    def __getstate__(self):
        msg = "a ControlTopicReader is not pickled: keep its position (ControlPosition) instead"
        raise TypeError(msg)

    def read(self, max_messages: int = 100) -> ControlRead:
        """What arrived since the last read; connects at the first call (up to ``timeout_s``).

        The first reads wait (up to ``timeout_s``) for the messages that were
        already there at connect (those issued while a restarted process was
        down), so they apply at once; later reads do not wait.
        """
        consumer = self._consumer or self._connect()
        commands: list[OperatorCommand] = []
        dead: list[DeadLetter] = []
        offsets = self.position.offsets
        deadline = time.monotonic() + self.settings.timeout_s
        while True:
            for msg in consumer.consume(max_messages, 0.1 if self._backlog else 0):
                if msg.error() is not None:
                    continue
                part, offset = msg.partition(), msg.offset()
                if offset < offsets.get(part, 0):
                    continue  # fetched before a seek: already read
                offsets[part] = offset + 1
                got = parse_command(msg.value(), f"{msg.topic()}[{part}]@{offset}", wall_ms())
                (commands if isinstance(got, OperatorCommand) else dead).append(got)
            self._backlog = {p: end for p, end in self._backlog.items() if offsets.get(p, 0) < end}
            if not self._backlog or time.monotonic() > deadline:
                self._backlog = {}
                return ControlRead(commands, dead)

    def commit(self) -> None:
        """Commit the position to ``settings.group`` (synchronously); nothing without a group."""
        if not self.settings.group or self._consumer is None or not self.position.offsets:
            return
        from confluent_kafka import TopicPartition

        t = self.settings.topic
        parts = [TopicPartition(t, p, o) for p, o in sorted(self.position.offsets.items())]
        self._consumer.commit(offsets=parts, asynchronous=False)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _connect(self) -> Consumer:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        s = self.settings
        conf = {**s.conf, "enable.auto.commit": False, "enable.auto.offset.store": False}
        if s.group:
            conf["group.id"] = s.group
        consumer = Consumer(conf)
        deadline = time.monotonic() + s.timeout_s
        while True:
            try:
                start = self._start(consumer, deadline)
                break
            except KafkaException as exc:  # a new topic's leaders still settling: ask again
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                consumer.close()
                msg = f"control topic {s.topic}: {exc.args[0].str() if exc.args else exc}"
                raise ControlTopicError(msg) from None
            except ControlTopicError:  # no such topic (yet): the same
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                consumer.close()
                raise
        consumer.assign([TopicPartition(s.topic, p, o) for p, o in sorted(start.items())])
        self._consumer = consumer
        return consumer

    def _end(self, consumer: Consumer, partition: int, deadline: float) -> int:
        """A partition's end offset now."""
        from confluent_kafka import TopicPartition

        s = self.settings
        left = max(0.1, deadline - time.monotonic())
        marks = consumer.get_watermark_offsets(TopicPartition(s.topic, partition), timeout=left)
        if marks is None:
            msg = f"control topic {s.topic}[{partition}]: no end offset in {s.timeout_s:.0f} s"
            raise ControlTopicError(msg)
        return marks[1]

    def _start(self, consumer: Consumer, deadline: float) -> dict[int, int]:
        """Each partition's first offset to read: the saved position, the group's, or ``since_ms``'s."""
        from confluent_kafka import TopicPartition

        s = self.settings
        left = max(0.1, deadline - time.monotonic())
        meta = consumer.list_topics(s.topic, timeout=left).topics.get(s.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            why = meta.error.str() if meta is not None and meta.error is not None else "no such topic"
            msg = f"control topic {s.topic}: {why}"
            raise ControlTopicError(msg)
        offsets = self.position.offsets
        todo = [p for p in sorted(meta.partitions) if p not in offsets]
        if todo and s.group:
            left = max(0.1, deadline - time.monotonic())
            for tp in consumer.committed([TopicPartition(s.topic, p) for p in todo], timeout=left):
                if tp.offset >= 0:
                    offsets[tp.partition] = tp.offset
            todo = [p for p in todo if p not in offsets]
        if todo:
            left = max(0.1, deadline - time.monotonic())
            found = consumer.offsets_for_times([TopicPartition(s.topic, p, s.since_ms) for p in todo], left)
            for tp in found:
                if tp.offset >= 0:
                    offsets[tp.partition] = tp.offset
                else:  # nothing produced since: the end, as it is now
                    offsets[tp.partition] = self._end(consumer, tp.partition, deadline)
        ends = {p: self._end(consumer, p, deadline) for p in offsets}
        self._backlog = {p: end for p, end in ends.items() if end > offsets[p]}
        return dict(offsets)
