"""An idempotent Kafka producer that waits instead of crashing and reports every failure.

librdkafka raises ``BufferError`` when its local queue is full; Bytewax 0.21's
``KafkaSink`` lets that crash the flow and ignores delivery reports (bytewax
issue #522). :class:`RecordProducer` polls until there is room, counts
delivery reports, and :meth:`RecordProducer.flush` raises
:class:`DeliveryError` when any record was not delivered, or when the
cluster stops acknowledging (no delivery report for ``stall_timeout_s``,
e.g. two of three brokers gone with ``min.insync.replicas`` 2: librdkafka
would retry for its 5-minute message timeout), so a flow fails loudly (and
recovers) instead of losing records quietly or waiting for minutes.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaError, Producer

from schemas.errors import OutsideFailure


class DeliveryError(OutsideFailure):
    """Records the broker did not acknowledge."""


class RecordProducer:
    """Produce with back-pressure and delivery accounting.

    Parameters
    ----------
    conf
        librdkafka producer settings (idempotence on by default in qbtc's).
    flush_timeout_s
        How long :meth:`flush` waits for outstanding deliveries.
    stall_timeout_s
        :meth:`flush` gives up when no delivery report (of success or
        failure) arrived for this long.
    """

    def __init__(self, conf: dict, flush_timeout_s: float = 120.0, stall_timeout_s: float = 30.0) -> None:
        conf = dict(conf)
        conf.setdefault("enable.idempotence", True)
        self._forward_error = conf.get("error_cb")
        conf["error_cb"] = self._on_error
        self.producer = Producer(conf)
        self.flush_timeout_s = flush_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None
        self.fatal: str | None = None
        self.last_error: str | None = None  # the client's latest non-fatal error (a broker unreachable)
        self.waits = 0
        self._lock = threading.Lock()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err.str()
        else:
            self.last_error = err.str()
        if self._forward_error is not None:
            self._forward_error(err)

    def _on_delivery(self, err, msg) -> None:
        if err is None:
            self.delivered += 1
            return
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{msg.topic()}: {err.str()}"

    def produce(
        self, topic: str, value: bytes, key: bytes | str | None = None, partition: int | None = None
    ) -> None:
        """Queue one record (to ``partition``, else by key); when the queue is full, serve callbacks
        until it has room."""
        where = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._on_delivery, **where)
                return
            except BufferError:
                self.waits += 1
                self.producer.poll(0.05)

    def produce_many(self, topic: str, values: list[bytes], keys: list | None = None) -> None:
        """Queue many records (keys: one per value, or None)."""
        produce = self.producer.produce
        report = self._on_delivery
        keys = keys if keys is not None else [None] * len(values)
        for i, (value, key) in enumerate(zip(values, keys, strict=True)):
            try:
                produce(topic, value, key, on_delivery=report)
            except BufferError:
                self.produce(topic, value, key)
            if i & 0x3FF == 0:
                self.producer.poll(0)

    def poll(self) -> None:
        """Serve delivery callbacks without waiting."""
        self.producer.poll(0)

    def check(self) -> None:
        """Raise :class:`DeliveryError` if anything failed so far."""
        if self.fatal is not None:
            msg = f"producer failed: {self.fatal}"
            raise DeliveryError(msg)
        if self.failed:
            msg = f"{self.failed} record(s) not delivered; first: {self.first_error}"
            raise DeliveryError(msg)

    def flush(self) -> None:
        """Wait until everything queued is acknowledged, then :meth:`check`.

        Raises :class:`DeliveryError` at the first failed delivery report,
        after ``stall_timeout_s`` without any report, or after
        ``flush_timeout_s`` in all.
        """
        start = last_report = time.monotonic()
        reports = self.delivered + self.failed
        while (left := self.producer.flush(0.5)) and not self.failed and self.fatal is None:
            now = time.monotonic()
            if self.delivered + self.failed != reports:
                reports, last_report = self.delivered + self.failed, now
            elif now - last_report >= self.stall_timeout_s:
                why = f"; last client error: {self.last_error}" if self.last_error else ""
                msg = (
                    f"{left} record(s) not acknowledged: no delivery report from the cluster "
                    f"for {self.stall_timeout_s:.0f} s{why}"
                )
                raise DeliveryError(msg)
            if now - start >= self.flush_timeout_s:
                msg = f"{left} record(s) still undelivered after {self.flush_timeout_s:.0f} s"
                raise DeliveryError(msg)
        self.check()
