"""The local Kafka broker of infra/kafka: start, produce/consume, stop, and a three-node fault test."""

from __future__ import annotations

import logging
import os
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic, PartitionMetadata
from kafka_fixture import free_settings, start_or_give_up

from infra.kafka.broker import bootstrap, down, start_node, status, stop_node, up

pytestmark = pytest.mark.kafka
LOG = logging.getLogger("test_kafka_broker.librdkafka")  # client chatter goes to captured logging


def create_topic(servers: str) -> str:
    """A fresh one-partition topic with the cluster's default replication (auto-create is off)."""
    topic = f"test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": servers, "logger": LOG})
    admin.create_topics([NewTopic(topic, num_partitions=1)], request_timeout=30)[topic].result(timeout=30)
    return topic


def partition0(admin: AdminClient, topic: str, isr: int, timeout: float = 30) -> PartitionMetadata:
    """Metadata of the topic's partition 0 once it has a leader and ``isr`` in-sync replicas."""
    deadline = time.monotonic() + timeout
    while True:
        parts = admin.list_topics(topic, timeout=10).topics[topic].partitions
        p = parts.get(0)
        if (p is not None and p.leader >= 0 and len(p.isrs) == isr) or time.monotonic() > deadline:
            assert p is not None, f"{topic} has no partition 0 after {timeout}s"
            return p
        time.sleep(0.2)


def produce(servers: str, topic: str, values: list[bytes], timeout: float = 60) -> None:
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer(
        {
            "bootstrap.servers": servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "logger": LOG,
        }
    )
    for v in values:
        producer.produce(topic, value=v, key=v[-1:], on_delivery=on_delivery)
    left = producer.flush(timeout)
    assert left == 0, f"{left} messages not delivered within {timeout}s"
    assert errors == []


def consume(consumer: Consumer, n: int, timeout: float = 60) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append(msg.value())
    assert len(got) == n, f"consumed {len(got)} of {n} messages in {timeout}s"
    return got


def group_consumer(servers: str, topic: str, group: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "logger": LOG,
        }
    )
    consumer.subscribe([topic])
    return consumer


def test_up_is_idempotent_and_status_answers(kafka_local_broker):
    s = kafka_local_broker
    before = status(s)
    assert before[1]["alive"] and before[1]["answering"]
    t0 = time.monotonic()
    assert up(s) == bootstrap(s) == f"127.0.0.1:{s.port}"
    assert time.monotonic() - t0 < 10
    after = status(s)
    assert after[1]["pid"] == before[1]["pid"]
    assert after[1]["answering"]


def test_produce_and_consume(kafka_bootstrap):
    topic = create_topic(kafka_bootstrap)
    values = [f"tick-{i}".encode() for i in range(10)]
    produce(kafka_bootstrap, topic, values)
    consumer = group_consumer(kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    try:
        assert consume(consumer, len(values)) == values
    finally:
        consumer.close()


def test_down_stops_the_broker(tmp_path, caplog):
    s = free_settings(tmp_path)
    try:
        start_or_give_up(s)
        pid = status(s)[1]["pid"]
        assert isinstance(pid, int)
        with caplog.at_level(logging.WARNING, logger="infra.kafka.broker"):
            assert down(s) is True
        assert "killing" not in caplog.text  # stopped by SIGTERM, not SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert status(s)[1] == {"pid": None, "alive": False, "answering": False, "port": s.port}
        assert not (tmp_path / "node-1" / "kafka.pid").exists()
        assert down(s) is False
        # The data dir keeps the cluster id: a restart reuses the formatted storage.
        assert up(s) == bootstrap(s)
    finally:
        down(s)


def test_three_nodes_survive_a_killed_node(kafka_cluster3):
    s = kafka_cluster3
    servers = bootstrap(s)
    assert all(st["answering"] for st in status(s).values())
    topic = create_topic(servers)  # replication factor 3 is the cluster's default
    admin = AdminClient({"bootstrap.servers": servers, "logger": LOG})
    partition = partition0(admin, topic, isr=3)  # brokers learn of a new topic one after the other
    assert sorted(partition.replicas) == [1, 2, 3] and sorted(partition.isrs) == [1, 2, 3]
    consumer = group_consumer(servers, topic, "fault")
    try:
        first = [f"a-{i}".encode() for i in range(20)]
        produce(servers, topic, first)
        assert consume(consumer, 20) == first
        consumer.commit(asynchronous=False)

        victim = partition.leader
        assert stop_node(s, victim, kill=True) is True
        assert not status(s)[victim]["alive"]
        second = [f"b-{i}".encode() for i in range(20)]
        produce(servers, topic, second)  # acks=all with 2 of 3 replicas (min.insync.replicas=2)
        assert consume(consumer, 20) == second
        consumer.commit(asynchronous=False)
        moved = partition0(admin, topic, isr=2)
        assert moved.leader != victim and victim not in moved.isrs

        assert start_node(s, victim) == f"127.0.0.1:{s.node_port(victim)}"
        isr = partition0(admin, topic, isr=3, timeout=60).isrs
        assert sorted(isr) == [1, 2, 3], f"node {victim} did not rejoin the ISR: {isr}"
        third = [f"c-{i}".encode() for i in range(20)]
        produce(servers, topic, third)
        assert consume(consumer, 20) == third
    finally:
        consumer.close()
    assert all(st["answering"] for st in status(s).values())
