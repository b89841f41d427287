"""A Kafka tick topic as a Bytewax source of columnar chunks, one partition each.

Messages are the codec's tick records (key = symbol). A batch of messages is
decoded at once when every message is a well-formed tick (the fast path);
otherwise each message is decoded alone, so every bad one becomes a dead
letter with its own reason, ``topic[partition]@offset`` and raw value. The
resume state of a partition is its next offset, so with Bytewax recovery a
restarted flow goes on exactly where the last committed epoch ended.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from schemas.codec import SCHEMA_VERSION, SchemaError, decode
from schemas.records import PARSE, SCHEMA, VALUE, DeadLetter, Tick
from schemas.tick_columns import SIDE_CODES, RawValues, TickColumns
from schemas.validation import NO_SYMBOLS, exchange_problem, symbol_problem, value_problem, value_problems
from sources.tick_files import Chunk, InputError

_FIELDS = ("v", "type", "ts", "symbol", "price", "qty", "side", "trade_id", "exchange")
_NUMBER = {int, float}
_ROW = operator.itemgetter(*_FIELDS)


@dataclass(frozen=True, slots=True)
class TopicRange:
    """Which records of a topic to read.

    Parameters
    ----------
    from_offset
        First offset of every partition (None: the beginning).
    from_ts, to_ts
        Record-timestamp bounds in epoch ms: the first record at or after
        ``from_ts``, up to the last one before ``to_ts``.
    bounded
        Stop at the end offsets found at start-up (a replay) instead of
        waiting for new records (a live flow).
    """

    from_offset: int | None = None
    from_ts: int | None = None
    to_ts: int | None = None
    bounded: bool = True

    def __post_init__(self) -> None:
        if self.from_offset is not None and self.from_ts is not None:
            msg = "give a start offset or a start time, not both"
            raise ValueError(msg)
        if self.from_offset is not None and self.from_offset < 0:
            msg = f"start offset {self.from_offset} is negative"
            raise ValueError(msg)
        if self.to_ts is not None and not self.bounded:
            msg = "an end time makes a bounded read"
            raise ValueError(msg)


def _names_bad(names: list[str], check: Callable[[str], str | None]) -> np.ndarray | None:
    """Mask of the ``names`` that ``check`` faults, each distinct name checked once (None: none)."""
    faulted = [x for x in set(names) if check(x) is not None]
    return np.isin(np.array(names, dtype=object), faulted) if faulted else None


def decode_ticks(
    values: list, offsets: list[int], received: list[int], origin: str, symbols: frozenset[str] = NO_SYMBOLS
) -> tuple[list[TickColumns], list[DeadLetter]]:
    """Per-symbol tick columns and dead letters from one partition's messages.

    Types are strict on both paths: ``"v"`` is the integer 1 (not ``true``
    or ``1.0``), text fields are strings, ``ts`` an integer; ``symbols``
    is the allow-list (empty: any well-formed symbol).

    >>> from schemas.codec import encode
    >>> good = encode(Tick(5, "A/B", 2.0, 1.0, "buy", "1", "x"))
    >>> batches, dead = decode_ticks([good, b"{"], [10, 11], [7, 8], "ticks[0]")
    >>> batches[0].symbol, batches[0].ts.tolist(), batches[0].arrival.tolist()
    ('A/B', [5], [10])
    >>> dead[0].source, dead[0].reason, dead[0].ingest_ts
    ('ticks[0]@11', 'parse', 8)
    """
    fast = _decode_fast(values, symbols)
    if fast is None:
        return _decode_slow(values, offsets, received, origin, symbols)
    names, ts, price, qty, side, side_names, trade_id, exchange, bad = fast
    dead: list[DeadLetter] = []
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            problem = value_problem(
                int(ts[i]), names[i], float(price[i]), float(qty[i]), side_names[i], exchange[i], symbols
            )
            dead.append(
                DeadLetter(received[i], f"{origin}@{offsets[i]}", VALUE, problem or "invalid", values[i])
            )
    return _group(
        names, ts, price, qty, side, trade_id, exchange, ~bad, values, offsets, received, origin
    ), dead


def _decode_fast(values: list, symbols: frozenset[str] = NO_SYMBOLS):
    """All columns when every message is a well-typed tick record, else None.

    One pass makes the messages' dicts, one takes each dict's nine fields
    at once (a C itemgetter) and ``zip`` turns the rows into columns; the
    type checks then run over whole columns.
    """
    try:
        objs = list(map(orjson.loads, values))
        if not objs or set(map(len, objs)) != {len(_FIELDS)}:
            return None
        v, typ, ts, sym, price, qty, side, tid, ex = zip(*map(_ROW, objs), strict=True)
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    if (
        set(map(type, v + ts)) != {int}  # every one, not the set's first: {1, True} == {1}
        or set(v) != {SCHEMA_VERSION}
        or set(typ) != {"tick"}
        or not set(map(type, price + qty)) <= _NUMBER
        or set(map(type, sym + side + tid + ex)) != {str}
    ):
        return None
    try:
        ts_a = np.array(ts, dtype=np.int64)
        price_a = np.array(price, dtype=np.float64)
        qty_a = np.array(qty, dtype=np.float64)
    except (OverflowError, ValueError):
        return None
    n = len(ts)
    try:
        side_a = np.fromiter(map(SIDE_CODES.__getitem__, side), np.int8, n)
    except KeyError:
        side_a = np.fromiter((SIDE_CODES.get(x, -1) for x in side), np.int8, n)
    bad = value_problems(ts_a, price_a, qty_a)
    if side_a.min() < 0:
        bad |= side_a < 0
    for faulted in (_names_bad(sym, lambda x: symbol_problem(x, symbols)), _names_bad(ex, exchange_problem)):
        if faulted is not None:
            bad |= faulted
    return sym, ts_a, price_a, qty_a, side_a, side, tid, ex, bad


def _group(symbols, ts, price, qty, side, trade_id, exchange, good, values, offsets, received, origin):
    names = sorted(set(symbols))
    lut = {name: i for i, name in enumerate(names)}
    codes = np.fromiter(map(lut.__getitem__, symbols), np.int64, len(symbols))
    codes[~good] = -1
    tid = np.array(trade_id, dtype=object)
    ex_names = set(exchange)
    if len(ex_names) == 1:
        ex = np.empty(len(exchange), dtype=object)
        ex.fill(ex_names.pop())  # np.full is ~15x slower for objects
    else:
        ex = np.array(exchange, dtype=object)
    raw = RawValues(values)
    if offsets and offsets[-1] - offsets[0] == len(offsets) - 1:
        off = np.arange(offsets[0], offsets[-1] + 1, dtype=np.int64)
    else:
        off = np.array(offsets, dtype=np.int64)
    rec = np.array(received, dtype=np.int64)
    batches = []
    for code, name in enumerate(names):
        idx = np.flatnonzero(codes == code)
        if not len(idx):
            continue
        batches.append(
            TickColumns(
                name,
                ts[idx],
                price[idx],
                qty[idx],
                side[idx],
                tid[idx],
                ex[idx],
                origin,
                off[idx],
                raw.take(idx),
                rec[idx],
            )
        )
    return batches


def _decode_slow(values, offsets, received, origin, symbols: frozenset[str] = NO_SYMBOLS):
    dead: list[DeadLetter] = []
    keep: list[int] = []
    ticks: list[Tick] = []
    for i, value in enumerate(values):
        source = f"{origin}@{offsets[i]}"
        if value is None:
            dead.append(DeadLetter(received[i], source, PARSE, "empty message (no value)", b""))
            continue
        try:
            tick = decode(value, expect=Tick)
        except SchemaError as exc:
            reason = PARSE if str(exc).startswith("not JSON") else SCHEMA
            dead.append(DeadLetter(received[i], source, reason, str(exc)[:500], value))
            continue
        problem = value_problem(tick.ts, tick.symbol, tick.price, tick.qty, tick.side, tick.exchange, symbols)
        if problem is not None:
            dead.append(DeadLetter(received[i], source, VALUE, problem, value))
            continue
        keep.append(i)
        ticks.append(tick)
    if not ticks:
        return [], dead
    n = len(ticks)
    good = np.ones(n, dtype=bool)
    batches = _group(
        [t.symbol for t in ticks],
        np.fromiter((t.ts for t in ticks), np.int64, n),
        np.fromiter((t.price for t in ticks), np.float64, n),
        np.fromiter((t.qty for t in ticks), np.float64, n),
        np.fromiter((SIDE_CODES[t.side] for t in ticks), np.int8, n),
        [t.trade_id for t in ticks],
        [t.exchange for t in ticks],
        good,
        [values[i] for i in keep],
        [offsets[i] for i in keep],
        [received[i] for i in keep],
        origin,
    )
    return batches, dead


# -- the Bytewax source ----------------------------------------------------------


PartitionObserver = Callable[[str, int, int, int], None]
"""Called after each batch with (topic, partition, next offset, high watermark)."""


class _TopicPartition(StatefulSourcePartition):
    def __init__(self, source: KafkaTickSource, partition: int, resume: int | None) -> None:
        self.source = source
        self.partition = partition
        self.origin = f"{source.topic}[{partition}]"
        self.consumer = Consumer(source.conf)
        tp = TopicPartition(source.topic, partition)
        self.start, self.end = source.offset_range(self.consumer, tp, resume)
        self.pos = self.start
        self.consumer.assign([TopicPartition(source.topic, partition, self.start)])
        self.finished = False  # a bounded read delivered its last chunk
        self.idle = False  # a live partition said it has caught up (and got nothing since)
        self.awake: datetime | None = None
        self.last_observed = 0.0

    def next_batch(self) -> list[Chunk]:
        src = self.source
        if self.end is not None and self.pos >= self.end:
            if not self.finished:
                self.finished = True
                return [self._chunk([], [], 0, caught_up=True)]
            raise StopIteration
        msgs = self.consumer.consume(src.batch, 0)
        if not msgs:
            self.awake = datetime.now(UTC) + timedelta(milliseconds=5)
            self._observe(force=False)
            # a live partition that has read everything there is (not merely
            # nothing fetched yet) says so once: it holds no other partition back
            if self.end is None and not self.idle and self._at_end():
                self.idle = True
                return [self._chunk([], [], 0, caught_up=True)]
            return []
        self.awake = None
        if any(map(Message.error, msgs)):
            for m in msgs:
                err = m.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(err)
            msgs = [m for m in msgs if m.error() is None]
            if not msgs:
                return []
        first, last = msgs[0].offset(), msgs[-1].offset()
        if self.end is not None and last >= self.end:
            msgs = [m for m in msgs if m.offset() < self.end]
            if not msgs:  # only records past the end (offsets can skip, e.g. transaction markers)
                self.pos = max(self.pos, self.end)
                return []
            first, last = msgs[0].offset(), msgs[-1].offset()
        # a batch without gaps (the usual case) has its offsets without a call per message
        offsets = range(first, last + 1) if last - first == len(msgs) - 1 else list(map(Message.offset, msgs))
        values = list(map(Message.value, msgs))
        received = [t for _, t in map(Message.timestamp, msgs)]
        batches, dead = decode_ticks(values, offsets, received, self.origin, src.symbols)
        self.pos = offsets[-1] + 1
        self._observe(force=False)
        self.idle = False
        ended = self.end is not None and self.pos >= self.end
        self.finished = ended
        return [self._chunk(batches, dead, len(msgs), caught_up=ended)]

    def _chunk(self, batches, dead, records, caught_up: bool = False) -> Chunk:
        src = self.source
        return Chunk(
            batches,
            dead,
            records,
            self.pos,
            self.pos,
            (self.partition, src.partitions),
            caught_up=caught_up,
        )

    def _at_end(self) -> bool:
        tp = TopicPartition(self.source.topic, self.partition)
        try:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
        except KafkaException:
            return False
        return 0 <= high <= self.pos

    def _observe(self, force: bool) -> None:
        observe = self.source.observe
        now = time.monotonic()
        if observe is None or (not force and now - self.last_observed < 1.0):
            return
        self.last_observed = now
        tp = TopicPartition(self.source.topic, self.partition)
        try:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
        except KafkaException:
            return
        if high >= 0:
            observe(self.source.topic, self.partition, self.pos, high)

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> int:
        return self.pos

    def close(self) -> None:
        self.consumer.close()


class KafkaTickSource(FixedPartitionedSource):
    """Every partition of a tick topic; resume state: the next offset.

    Parameters
    ----------
    conf
        librdkafka consumer settings (brokers, security, tuning).
    topic
        The tick topic.
    span
        Which records to read and whether to stop at the end.
    batch
        Messages consumed per batch.
    observe
        Optional :data:`PartitionObserver` (consumer lag for metrics).
    symbols
        The symbols to accept (``input.symbols``); empty: any well-formed one.
    """

    def __init__(
        self,
        conf: dict,
        topic: str,
        span: TopicRange,
        batch: int = 3_000,
        observe: PartitionObserver | None = None,
        timeout_s: float = 15.0,
        symbols: frozenset[str] = NO_SYMBOLS,
    ) -> None:
        self.conf = conf
        self.timeout_s = timeout_s
        self.topic = topic
        self.span = span
        self.batch = batch
        self.observe = observe
        self.symbols = frozenset(symbols)
        self.partitions = len(self._partitions())

    def _partitions(self) -> list[int]:
        consumer = Consumer(self.conf)
        try:
            meta = consumer.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException as exc:
            msg = f"cannot read topic {self.topic!r}: {exc.args[0].str() if exc.args else exc}"
            raise InputError(msg) from None
        finally:
            consumer.close()
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            why = "no such topic" if topic is None or not topic.partitions else topic.error.str()
            msg = f"cannot read topic {self.topic!r}: {why}"
            raise InputError(msg)
        return sorted(topic.partitions)

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state) -> _TopicPartition:
        return _TopicPartition(self, int(for_part), resume_state)

    def offset_range(
        self, consumer: Consumer, tp: TopicPartition, resume: int | None
    ) -> tuple[int, int | None]:
        """First offset to read and the end (exclusive; None when unbounded)."""
        span = self.span
        low, high = _retrying(
            lambda: consumer.get_watermark_offsets(tp, timeout=self.timeout_s), self.timeout_s
        )
        if resume is not None:
            start = resume
        elif span.from_offset is not None:
            start = max(span.from_offset, low)
        elif span.from_ts is not None:
            start = _offset_for_time(consumer, tp, span.from_ts, high)
        else:
            start = low if low >= 0 else OFFSET_BEGINNING
        if not span.bounded:
            return start, None
        end = high if span.to_ts is None else _offset_for_time(consumer, tp, span.to_ts, high)
        return start, end


_TRANSIENT = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TRANSPORT,
}


def _retrying(call, timeout_s: float):
    """``call()``, retried while the cluster is settling (a new topic's leaders)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code not in _TRANSIENT or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def watermarks(consumer: Consumer, tp: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """A partition's (low, high) offsets, retried while a new topic's leaders settle."""
    return _retrying(lambda: consumer.get_watermark_offsets(tp, timeout=timeout_s), timeout_s)


def consume_ready(consumer: Consumer, timeout_s: float, most: int = 2000) -> list:
    """The messages there now (at most ``most``), waiting at most ``timeout_s`` for the first:
    ``consume(n, t)`` alone waits for all ``n`` or the whole timeout."""
    first = consumer.consume(1, timeout_s)
    return first + consumer.consume(most, 0) if first else first


def partition_records(consumer: Consumer, topic: str, partition: int, low: int, high: int, timeout_s: float):
    """``(offset, value, record)`` of one partition's messages in ``[low, high)``, ``record`` the
    decoded qbtc record or None when the value is not one (the caller decides what that means).

    Raises :class:`~schemas.errors.OutsideFailure` when the end is not reached within ``timeout_s``
    without a message.
    """
    from schemas.codec import SchemaError, decode
    from schemas.errors import OutsideFailure

    if high <= low:
        return
    consumer.assign([TopicPartition(topic, partition, low)])
    deadline, pos = time.monotonic() + timeout_s, low
    while pos < high:
        msg = consumer.poll(0.2)
        if msg is None:
            if time.monotonic() > deadline:
                text = f"cannot read {topic}[{partition}] to its end in {timeout_s:.0f} s"
                raise OutsideFailure(text)
            continue
        if msg.error() is not None:
            continue
        deadline, pos = time.monotonic() + timeout_s, msg.offset() + 1
        try:
            record = decode(msg.value())
        except SchemaError:
            record = None
        yield msg.offset(), msg.value(), record


def _offset_for_time(consumer: Consumer, tp: TopicPartition, ts: int, high: int) -> int:
    found = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, ts)], timeout=15)[0]
    return high if found.offset < 0 else found.offset
