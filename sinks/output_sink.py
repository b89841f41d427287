"""The streaming flows' sink: the store and the output topics, durable at every epoch.

One partition takes every ``(table, payload)`` item: rows go to the store
(batched, idempotent by key) and records to their topic (key = symbol). At
each epoch end Bytewax asks for a snapshot, and the snapshot waits until
the store has written and the broker has acknowledged everything, so an
epoch committed in the recovery store is an epoch whose output is durable.
A restart resumes after the last committed epoch and writes what followed
again: identical rows (deduplicated by the store's keys) and identical
topic records.

A store write or delivery that fails is reported to ``sinks.failure`` (the
command line ends the process there, before the epoch can commit); a
partition that failed never raises again, not even on ``close``.
"""

from __future__ import annotations

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from schemas.codec import encode
from sinks.clickhouse_store import Store
from sinks.kafka_producer import RecordProducer
from sinks.store_sink import FailOnce, RowCounter, StoreWriter


def record_key(table: str, record) -> bytes | None:
    """The topic key of a record: its symbol (the first for correlations; none for portfolio rows)."""
    if table in (
        "bars",
        "features",
        "signals",
        "orders",
        "fills",
        "order_events",
        "execution_quality",
        "targets",
    ):
        return record.symbol.encode()
    if table == "model_metrics":
        return record.symbol.encode()
    if table in ("risk_events", "var_backtests"):
        return record.symbol.encode() or None
    if table == "correlations":
        return record.symbol_a.encode()
    if table == "dead_letters":
        return record.source.encode()
    return None


class _OutPartition(StatefulSinkPartition):
    def __init__(
        self,
        writer: StoreWriter,
        producer: RecordProducer | None,
        topics: dict[str, str | None],
        durable_epochs: bool = True,
    ) -> None:
        self.writer = writer
        self.producer = producer
        self.topics = topics
        self.durable_epochs = durable_epochs
        self.failed = FailOnce()

    def write_batch(self, items: list) -> None:
        self.failed.run(self._write_batch, items)

    def _write_batch(self, items: list) -> None:
        add = self.writer.add
        producer = self.producer
        for table, payload in items:
            add(table, payload)
            topic = self.topics[table] if producer is not None and table != "ticks" else None
            if topic:  # None: a table this sink stores but does not publish
                records = list(payload)  # correlation rows make their records as they are read: once
                producer.produce_many(
                    topic, [encode(r) for r in records], [record_key(table, r) for r in records]
                )
        if producer is not None:
            producer.poll()
            producer.check()

    def snapshot(self) -> None:
        if self.durable_epochs:
            self.failed.run(self._flush)
        else:
            self.failed.run(self._hand_over)

    def _hand_over(self) -> None:
        """An epoch's end without recovery: buffered rows go to the writer thread, unawaited.

        With no snapshot to commit, nothing needs the epoch's rows stored
        before the flow goes on; the store stays as fresh as the epoch, and a
        live stream is not held up while a batch is inserted (``close``
        still waits for everything). The topics are flushed as before: that
        wait is short, and it is how a cluster that stopped answering is noticed.
        """
        if self.producer is not None:
            self.producer.flush()
        self.writer.write_all()

    def _flush(self) -> None:
        if self.producer is not None:
            self.producer.flush()
        self.writer.flush()

    def close(self) -> None:
        if self.failed.error is None:
            try:
                self.failed.run(self._flush)
            except Exception:
                self.writer.discard()
                raise
            self.writer.pool.shutdown()
            return
        self.writer.discard()  # unacknowledged records die with the producer


class OutputSink(FixedPartitionedSink):
    """Store plus topics, flushed at every epoch; items are keyed ``(key, (table, payload))``.

    Parameters
    ----------
    dsn
        The store (None: count rows, store nothing).
    counter
        Counts rows written (and store write time).
    batch_rows
        Rows buffered per table before a store write.
    producer_conf
        librdkafka producer settings, or None for no output topics.
    topics
        Topic of each table (``bars``, ``features``, ``correlations``, ``dead_letters``, ...);
        None for a table stored but not published.
    stall_timeout_s
        An epoch's flush fails when the cluster sent no delivery report for this long.
    durable_epochs
        Every epoch's output is stored and acknowledged before the epoch ends (a flow
        with recovery: its snapshot must not get ahead of its output). False: the
        topics are flushed, the store's rows handed to the writer thread unawaited.
    run_id
        The run the trading tables' rows belong to in the store.
    """

    def __init__(
        self,
        dsn: str | None,
        counter: RowCounter,
        batch_rows: int,
        producer_conf: dict | None,
        topics: dict[str, str | None],
        stall_timeout_s: float = 30.0,
        durable_epochs: bool = True,
        run_id: str = "",
    ) -> None:
        self.dsn = dsn
        self.run_id = run_id
        self.durable_epochs = durable_epochs
        self.counter = counter
        self.batch_rows = batch_rows
        self.producer_conf = producer_conf
        self.topics = topics
        self.stall_timeout_s = stall_timeout_s

    def list_parts(self) -> list[str]:
        return ["out"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state) -> _OutPartition:
        self.counter.writes_here = True
        store = None if self.dsn is None else Store(self.dsn)
        producer = (
            None
            if self.producer_conf is None
            else RecordProducer(self.producer_conf, stall_timeout_s=self.stall_timeout_s)
        )
        writer = StoreWriter(store, self.counter, self.batch_rows, self.run_id)
        return _OutPartition(writer, producer, self.topics, self.durable_epochs)
