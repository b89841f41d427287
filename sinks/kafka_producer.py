"""An idempotent Kafka producer that waits instead of crashing and reports every failure.

librdkafka raises ``BufferError`` when its local queue is full; Bytewax 0.21's
``KafkaSink`` lets that crash the flow and ignores delivery reports (bytewax
issue #522). :class:`RecordProducer` polls until there is room, counts
delivery reports, and :meth:`RecordProducer.flush` raises
:class:`DeliveryError` when any record was not delivered, so a flow fails
loudly (and recovers) instead of losing records quietly.
"""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError, Producer


class DeliveryError(Exception):
    """Records the broker did not acknowledge."""


class RecordProducer:
    """Produce with back-pressure and delivery accounting.

    Parameters
    ----------
    conf
        librdkafka producer settings (idempotence on by default in qbtc's).
    flush_timeout_s
        How long :meth:`flush` waits for outstanding deliveries.
    """

    def __init__(self, conf: dict, flush_timeout_s: float = 120.0) -> None:
        conf = dict(conf)
        conf.setdefault("enable.idempotence", True)
        conf["error_cb"] = self._on_error
        self.producer = Producer(conf)
        self.flush_timeout_s = flush_timeout_s
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None
        self.fatal: str | None = None
        self.waits = 0
        self._lock = threading.Lock()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err.str()

    def _on_delivery(self, err, msg) -> None:
        if err is None:
            self.delivered += 1
            return
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{msg.topic()}: {err.str()}"

    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
        """Queue one record; when the queue is full, serve callbacks until it has room."""
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._on_delivery)
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
        """Wait until everything queued is acknowledged, then :meth:`check`."""
        left = self.producer.flush(self.flush_timeout_s)
        if left:
            msg = f"{left} record(s) still undelivered after {self.flush_timeout_s:.0f} s"
            raise DeliveryError(msg)
        self.check()
