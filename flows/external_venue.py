"""The trading loop's venue when execution is external: requests out on ``orders``, fills back.

``qbtc stream --trade --execution external`` gives the loop a
:class:`RemoteVenue` instead of the in-process paper broker. It implements
:class:`~operators.execution.venue.Venue` over the topics:

- ``submit``, ``cancel``, ``set_protection`` and ``clear_protection`` produce
  an :class:`~schemas.records.Order`, a :class:`~schemas.records.CancelRequest`
  or a :class:`~schemas.records.Protection` to ``<prefix>orders`` (key: the
  symbol, so one symbol's requests stay in order); they are flushed at the end
  of every step.
- ``on_bar`` returns what the execution service reported for the symbol
  since the last step: its :class:`~schemas.records.Fill` records (``fills``),
  the orders it created (TWAP children, protective exits: ``Order`` records
  on ``order-events``) and the cancellations and rejections among its
  :class:`~schemas.records.OrderEvent` records. The portfolio is booked from
  these, not from an in-process broker.
- ``open_orders`` and ``remaining`` mirror the service's working orders:
  an order works from its submit until a final event; its remainder is the
  ``leaves_qty`` of its latest event.

Two modes:

- **free-running** (default): each step takes whatever has arrived. Fills
  land at the first step after they reach the topic, so results depend on
  timing (see README, "Free-running and lockstep").
- **lockstep** (``--lockstep``): at each step the loop publishes the step's
  bars (:class:`~schemas.records.VenueBar`, with the context the in-process
  venue would get) and a :class:`~schemas.records.StepMark` to every partition
  of ``orders``, then waits until the service (``qbtc execute --venue paper
  --lockstep``) has put its own mark for the step on every partition of
  ``fills`` and ``order-events``. The loop sees exactly the fills an
  in-process backtest would (tested: same orders and fills).

At the end of a free-running bounded run (:meth:`RemoteVenue.settle`) the
loop puts a ``loop_end`` :class:`~schemas.records.StepMark` on every
partition of ``orders`` and waits until the service has answered each with
a ``venue_end`` mark on every partition of ``fills`` and ``order-events``
(everything sent before is handled, the exits of crossed protections
included), no order of its own or made for it still works, and every final
event's filled quantity has its fills. Only when the service says nothing
for ``timeout_s`` (``kafka.timeout_s``) does it stop waiting, and it says what it left.

A background thread sends a :class:`~schemas.records.Heartbeat` every
``heartbeat_s`` while the process lives: the service's dead man's switch
cancels every open order when they stop.

The venue pickles with the loop (Bytewax snapshots): working orders,
pending reports and its read positions in ``fills`` and ``order-events`` are
state; the clients and the connection settings are not (they may hold
credentials), :meth:`RemoteVenue.attach` gives them back after a resume. At
first start the read positions are the topics' ends (reports from earlier
runs are not booked), in lockstep their beginnings (a loop that starts again
from scratch, killed before its first snapshot, reads the reports of the
steps the service did already: one lockstep session per topic prefix).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from operators.execution.venue import CANCEL_REASONS, REJECTED, BarContext, BarResult, Cancellation
from schemas.codec import SchemaError, decode, encode
from schemas.errors import OutsideFailure
from schemas.records import (
    CANCELLED,
    FINAL_ORDER_EVENTS,
    LOOP_END,
    LOOP_MARK,
    VENUE_END,
    VENUE_MARK,
    Bar,
    CancelRequest,
    Fill,
    Heartbeat,
    Order,
    OrderEvent,
    Protection,
    StepMark,
    VenueBar,
)

EXIT_PREFIXES = ("stop:", "target:")
"""Client ids of the protective exits the service sends for the loop's protections."""


@dataclass(frozen=True)
class RemoteVenueConfig:
    """How a :class:`RemoteVenue` reaches the service (never pickled: it may hold credentials).

    Parameters
    ----------
    producer_conf, consumer_conf
        librdkafka settings.
    orders, fills, order_events
        The topics.
    lockstep
        Wait for the service's report of every step (see the module doc).
    timeout_s
        How long a lockstep step, or the end of a free-running run, may wait for the service
        without a message.
    heartbeat_s
        Seconds between heartbeats (0: none).
    source
        The loop's name in heartbeats and marks.
    """

    producer_conf: dict
    consumer_conf: dict
    orders: str
    fills: str
    order_events: str
    lockstep: bool = False
    timeout_s: float = 60.0
    heartbeat_s: float = 5.0
    source: str = ""


def loop_source() -> str:
    """``stream@host:pid``: who the heartbeats and marks come from."""
    return f"stream@{socket.gethostname()}:{os.getpid()}"


class LockstepTimeout(OutsideFailure):
    """The execution service did not answer a lockstep step in time."""


class RemoteVenue:
    """A :class:`~operators.execution.venue.Venue` over the ``orders``, ``fills``, ``order-events`` topics."""

    def __init__(self, config: RemoteVenueConfig) -> None:
        self._config: RemoteVenueConfig | None = config
        self._working: dict[str, list] = {}  # order_id -> [Order, remaining], in submission order
        self._ours: set[str] = set()  # ids we submitted: their children and fills are ours
        self._created: dict[str, Order] = {}  # working orders the service created (TWAP children, exits)
        self._asked: set[str] = set()  # cancel requests sent: their cancelled events are expected
        self._fills: dict[str, list[Fill]] = {}
        self._new: dict[str, list[Order]] = {}
        self._cancelled: list[Cancellation] = []
        self._events: list[OrderEvent] = []
        self._filled: dict[str, float] = {}  # order id (and a child's parent id) -> quantity of its fills
        self._owed: dict[str, float] = {}  # order id -> filled quantity of its final event, fills to come
        self._ended: set[tuple[str, int, int]] = set()  # (topic, partition, orders partition) answered
        self._positions: dict[tuple[str, int], int] | None = None  # next offset per (topic, partition)
        self._marks: dict[tuple[str, int], int] = {}
        self._last_order_ts = 0
        self._step_ts = 0
        self._seq = 0
        self._clients: _Clients | None = None
        # where reading the reports starts: fixed now, before the first snapshot can be taken, so a
        # loop resumed from any snapshot reads every report since its start
        self._connect()

    # -- pickling: state only ---------------------------------------------------------

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_config"] = None
        state["_clients"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for name in ("_filled", "_owed"):  # snapshots from before the end-of-run accounting
            self.__dict__.setdefault(name, {})
        self.__dict__.setdefault("_ended", set())

    def attach(self, config: RemoteVenueConfig) -> None:
        """Give a resumed venue its connection settings back (clients reconnect at first use)."""
        self._config = config

    def close(self) -> None:
        """Flush the requests sent and stop the heartbeats."""
        if self._clients is not None:
            self._clients.close()
            self._clients = None

    # -- the Venue protocol -----------------------------------------------------------

    def begin_step(self, step: int, bars: dict[str, Bar], contexts: dict[str, BarContext]) -> None:
        clients = self._connect()
        cfg = self._config
        self._step_ts = min((b.ts for b in bars.values()), default=self._step_ts)
        if not cfg.lockstep:
            clients.drain(self._take)
            return
        for symbol in sorted(bars):
            b, ctx = bars[symbol], contexts.get(symbol) or BarContext()
            vol = ctx.normalised_vol
            record = VenueBar(
                step, b.symbol, b.ts, b.open, b.high, b.low, b.close, b.volume, b.vwap, b.trades,
                float(vol) if isinstance(vol, int | float) else 1.0,
            )  # fmt: skip
            clients.produce(cfg.orders, record, symbol)
        clients.everywhere(cfg.orders, StepMark(self._step_ts, cfg.source, LOOP_MARK, step))
        clients.flush()
        clients.wait_marks(step, self._take, self._marks)

    def end_step(self, step: int) -> None:
        if self._clients is not None:
            self._clients.flush()

    def submit(self, order: Order) -> list[Order]:
        clients = self._connect()
        clients.produce(self._config.orders, order, order.symbol)
        self._working[order.order_id] = [order, float(order.qty)]
        self._ours.add(order.order_id)
        self._last_order_ts = max(self._last_order_ts, order.ts)
        clients.last_order_ts = self._last_order_ts
        return [order]

    def cancel(self, order_id: str, ts: int) -> bool:
        w = self._working.pop(order_id, None)
        if w is None:
            return False
        self._connect().produce(self._config.orders, CancelRequest(ts, order_id, w[0].symbol), w[0].symbol)
        self._asked.add(order_id)
        return True

    def open_orders(self) -> list[Order]:
        return [w[0] for w in self._working.values()]

    def remaining(self, order_id: str) -> float | None:
        w = self._working.get(order_id)
        return None if w is None else w[1]

    def take_cancelled(self) -> list[Cancellation]:
        out, self._cancelled = self._cancelled, []
        return out

    def set_protection(
        self, symbol: str, position_qty: float, stop: float | None, target: float | None, ts: int
    ) -> bool:
        ok = isinstance(position_qty, int | float) and math.isfinite(position_qty)
        qty = float(position_qty) if ok else 0.0
        levels = []
        for level in (stop, target):
            good = level is None or (isinstance(level, int | float) and math.isfinite(level) and level > 0)
            ok = ok and good
            levels.append(float(level) if level is not None and good else 0.0)
        self._connect().produce(self._config.orders, Protection(ts, symbol, qty, *levels), symbol)
        return ok

    def clear_protection(self, symbol: str) -> None:
        self._connect().produce(self._config.orders, Protection(self._step_ts, symbol, 0.0, 0.0, 0.0), symbol)

    def on_bar(self, bar: Bar, context: BarContext | None = None) -> BarResult:
        fills = self._fills.pop(bar.symbol, [])
        new = self._new.pop(bar.symbol, [])
        return BarResult(tuple(fills), tuple(new), tuple(self.take_cancelled()))

    # -- beyond the protocol ------------------------------------------------------------

    @property
    def lockstep(self) -> bool:
        return self._config is not None and self._config.lockstep

    @property
    def timeout_s(self) -> float:
        """How long the end of a run (and a lockstep step) waits for the service without a report."""
        return self._config.timeout_s

    def settle(self, quiet_s: float = 1.0) -> tuple[list[Fill], str]:
        """End of a run: the fills that came after the last step, in time order, and what was left
        (``""`` when nothing was).

        Puts the end marks out, then reads reports until the service has answered them, nothing
        of ours works and every final event has its fills, and then ``quiet_s`` passed without a
        report of ours. It gives up only after :attr:`timeout_s` without one.
        """
        clients = self._connect()
        cfg = self._config
        timeout_s = cfg.timeout_s
        parts = clients.partitions[cfg.orders]
        for p in range(parts):
            clients.produce_to(cfg.orders, StepMark(self._step_ts, cfg.source, LOOP_END, p), p)
        clients.flush()
        need = {(t, tp, q) for t in (cfg.fills, cfg.order_events) for tp in range(clients.partitions[t])
                for q in range(parts)}  # fmt: skip
        last, heard = time.monotonic(), self._heard()
        while True:
            clients.drain(self._take, wait_s=0.2)
            if self._heard() != heard:  # a report of ours (others' traffic on the topics is not)
                last, heard = time.monotonic(), self._heard()
                continue
            idle = time.monotonic() - last
            if need <= self._ended and not self._left() and idle >= quiet_s:
                left = ""
                break
            if idle >= timeout_s:
                left = self._left(need - self._ended, timeout_s)
                break
        self._ended.clear()
        fills = [f for symbol in sorted(self._fills) for f in self._fills[symbol]]
        self._fills.clear()
        self._new.clear()
        return sorted(fills, key=lambda f: f.ts), left

    def _heard(self) -> tuple[int, int, int, int]:
        """How much of ours has come in so far during :meth:`settle` (each count only grows there)."""
        fills = sum(len(v) for v in self._fills.values())
        return fills, len(self._events), len(self._ended), sum(len(v) for v in self._new.values())

    def _left(self, unanswered: set | None = None, waited_s: float = 0.0) -> str:
        """What the end of a run still waits for, for a person (``""``: nothing)."""
        parts = []
        if self._working or self._created:
            parts.append(f"{len(self._working) + len(self._created)} order(s) still working")
        if self._owed:
            parts.append(f"fills missing for {len(self._owed)} finished order(s)")
        if unanswered:
            parts.append(f"no end mark back on {len({(t, p) for t, p, _q in unanswered})} partition(s)")
        if not parts or unanswered is None:
            return "; ".join(parts)
        return (
            f"the execution service said nothing for {waited_s:.0f} s at the end of the run: "
            f"{'; '.join(parts)}; what it reports later is not in this run's portfolio"
        )

    def take_events(self) -> list[OrderEvent]:
        """The service's events about our orders since the last call (for the store)."""
        out, self._events = self._events, []
        return out

    # -- reports from the service ----------------------------------------------------------

    def _is_ours(self, order_id: str) -> bool:
        return (
            order_id in self._ours
            or order_id.split("/", 1)[0] in self._ours
            or order_id.startswith(EXIT_PREFIXES)
        )

    def _take(self, topic: str, partition: int, record: object) -> None:
        if isinstance(record, StepMark):
            if record.kind == VENUE_MARK:
                self._marks[(topic, partition)] = record.step
            elif record.kind == VENUE_END and record.source == getattr(self._config, "source", None):
                self._ended.add((topic, partition, record.step))
        elif isinstance(record, Fill):
            if self._is_ours(record.order_id):
                self._fills.setdefault(record.symbol, []).append(record)
                # a child (parent/k) counts for its parent too; a child's or an exit's fill may come
                # before its order record (another topic), so every fill of ours is counted
                for oid in {record.order_id, record.order_id.split("/", 1)[0]}:
                    self._filled[oid] = self._filled.get(oid, 0.0) + record.qty
                    self._paid(oid)
        elif isinstance(record, Order):
            if self._is_ours(record.order_id) and record.order_id not in self._created:
                self._ours.add(record.order_id)
                self._created[record.order_id] = record
                self._new.setdefault(record.symbol, []).append(record)
        elif isinstance(record, OrderEvent) and self._is_ours(record.order_id):
            self._event(record)

    def _event(self, e: OrderEvent) -> None:
        self._events.append(e)
        oid = e.order_id
        w = self._working.get(oid)
        order = w[0] if w is not None else self._created.get(oid)
        final = e.kind in FINAL_ORDER_EVENTS
        known = order is not None or oid in self._asked  # not a final event repeated after a restart
        if w is not None:
            if final:
                del self._working[oid]
            else:
                w[1] = e.leaves_qty
        if final:
            self._created.pop(oid, None)
            if known:
                self._owed[oid] = e.filled_qty
                self._paid(oid)
        if order is None or e.kind not in (REJECTED, CANCELLED, "expired"):
            return
        if e.kind == CANCELLED and oid in self._asked:
            self._asked.discard(oid)  # the loop asked for it: nothing to report
            return
        code, _, message = e.reason.partition(": ")
        if code not in CANCEL_REASONS:
            code, message = (REJECTED if e.kind == REJECTED else e.kind), e.reason
        self._cancelled.append(Cancellation(e.ts, order, code, message))

    def _paid(self, oid: str) -> None:
        """Forget an order's fill count once its final event came and its fills add up to it."""
        owed = self._owed.get(oid)
        if owed is not None and self._filled.get(oid, 0.0) >= owed - 1e-9 * max(1.0, abs(owed)):
            del self._owed[oid]
            self._filled.pop(oid, None)

    def _connect(self) -> _Clients:
        if self._clients is None:
            if self._config is None:
                msg = "the external venue lost its connection settings (resume without attach)"
                raise OutsideFailure(msg)
            self._clients = _Clients(self._config, self._positions)
            self._positions = self._clients.positions  # the same dict: advanced as records are read
            self._clients.last_order_ts = self._last_order_ts
        return self._clients


class _Clients:
    """The producer, the report consumer and the heartbeat thread of one :class:`RemoteVenue`."""

    def __init__(self, config: RemoteVenueConfig, positions: dict[tuple[str, int], int] | None) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from sinks.kafka_producer import RecordProducer
        from sources.kafka_ticks import consume_ready, watermarks

        self.consume_ready = consume_ready

        self.config = config
        self.producer = RecordProducer(config.producer_conf, stall_timeout_s=config.timeout_s)
        conf = {**config.consumer_conf, "group.id": f"{config.source or 'stream'}-reports"}
        conf["enable.auto.commit"] = False
        self.consumer = Consumer(conf)
        self.partitions: dict[str, int] = {}
        for topic in (config.orders, config.fills, config.order_events):
            meta = self.consumer.list_topics(topic, timeout=config.timeout_s)
            parts = meta.topics.get(topic)
            if parts is None or parts.error is not None or not parts.partitions:
                msg = f"topic {topic} does not exist (start the flow once, or create the topics)"
                raise OutsideFailure(msg)
            self.partitions[topic] = len(parts.partitions)
        if positions is None:
            # first start: free-running, reports from before this run are not ours to book; in
            # lockstep (one session per topic prefix) a loop that starts again from scratch needs
            # the reports of the steps the service did already, so it reads them from the start
            positions = {}
            for topic in (config.fills, config.order_events):
                for p in range(self.partitions[topic]):
                    low, high = watermarks(self.consumer, TopicPartition(topic, p), config.timeout_s)
                    positions[(topic, p)] = max(low, 0) if config.lockstep else high
        self.positions = positions
        self.consumer.assign([TopicPartition(t, p, off) for (t, p), off in sorted(positions.items())])
        self.last_order_ts = 0
        self.backlog: dict[tuple[str, int], deque] = {}  # read past a lockstep mark, not yet taken
        self._stop = threading.Event()
        self._thread = None
        if config.heartbeat_s > 0:
            self._thread = threading.Thread(target=self._beat, name="qbtc-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            beat = Heartbeat(int(time.time() * 1000), self.config.source, seq, self.last_order_ts)
            try:
                self.producer.produce(self.config.orders, encode(beat), None)
                self.producer.producer.poll(0)
            except Exception:  # noqa: BLE001 - a lost heartbeat is what the switch is for
                pass
            self._stop.wait(self.config.heartbeat_s)

    def produce(self, topic: str, record: object, key: str | None) -> None:
        self.producer.produce(topic, encode(record), None if key is None else key.encode())

    def everywhere(self, topic: str, record: object) -> None:
        value = encode(record)
        for p in range(self.partitions[topic]):
            self.producer.produce(topic, value, None, partition=p)

    def produce_to(self, topic: str, record: object, partition: int) -> None:
        self.producer.produce(topic, encode(record), None, partition=partition)

    def flush(self) -> None:
        self.producer.flush()

    def _handle(self, msg, take) -> None:
        topic, p = msg.topic(), msg.partition()
        self.positions[(topic, p)] = msg.offset() + 1
        try:
            record = decode(msg.value())
        except SchemaError:
            return  # the service's topics: a message that is not a record is not a report
        take(topic, p, record)

    def drain(self, take, wait_s: float = 0.0) -> int:
        """Every report already on the topics (waiting at most ``wait_s`` for the first); how many."""
        n = 0
        while True:
            msgs = self.consume_ready(self.consumer, wait_s if n == 0 else 0.0)
            if not msgs:
                return n
            n += len(msgs)
            for msg in msgs:
                if msg.error() is None:
                    self._handle(msg, take)

    def wait_marks(self, step: int, take, marks: dict[tuple[str, int], int]) -> None:
        """Read reports until the service's mark of ``step`` is on every partition of both topics.

        A partition is read no further than its mark: what a batch brings from beyond it (the
        reports of later steps, on the topics already when a loop resumes behind the service)
        waits in a backlog for the steps it belongs to, and its offsets count as read only then.
        """
        cfg = self.config
        need = [(t, p) for t in (cfg.fills, cfg.order_events) for p in range(self.partitions[t])]
        done = {tp for tp in need if marks.get(tp, -1) >= step}
        for tp, queue in self.backlog.items():
            while queue and tp not in done:
                self._handle(queue.popleft(), take)
                if marks.get(tp, -1) >= step:
                    done.add(tp)
        last = time.monotonic()
        while len(done) < len(need):
            msgs = self.consume_ready(self.consumer, 0.2)
            if msgs:
                last = time.monotonic()
            elif time.monotonic() - last > cfg.timeout_s:
                msg = (
                    f"lockstep: no answer from the execution service for step {step} in "
                    f"{cfg.timeout_s:.0f} s (is `qbtc execute --venue paper --lockstep` running on "
                    f"{cfg.orders}?)"
                )
                raise LockstepTimeout(msg)
            for m in msgs:
                if m.error() is not None:
                    continue
                tp = (m.topic(), m.partition())
                if tp in done:
                    self.backlog.setdefault(tp, deque()).append(m)
                    continue
                self._handle(m, take)
                if marks.get(tp, -1) >= step:
                    done.add(tp)

    def close(self) -> None:
        self._stop.set()
        try:
            self.producer.flush()
        finally:
            self.consumer.close()
