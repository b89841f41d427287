"""The features flow on a real Kafka broker: topic replay, bad records, the producer sink."""

from __future__ import annotations

import csv
import gzip

import orjson
import pytest
from confluent_kafka import Producer
from kafka_helpers import SMALL, dump, qbtc, read_topic, unique

from flows.config import KafkaConfig, kafka_client_config, load_settings
from flows.kafka_flow import ensure, with_brokers
from schemas.codec import decode, encode
from schemas.records import DeadLetter, Feature, Order, Tick
from sinks.kafka_producer import DeliveryError, RecordProducer

pytestmark = pytest.mark.kafka


def _sim_file(path, seconds: int = 240, rate: int = 200, extra_rows: list[list[str]] | None = None) -> str:
    qbtc(
        "simulate",
        str(path),
        "--set",
        f"simulator.duration_s={seconds}",
        "--set",
        f"simulator.trades_per_s={rate}",
        "--set",
        "simulator.symbols=4",
        cwd=path.parent,
    )
    if extra_rows:
        with open(path, "a", newline="") as fh:
            csv.writer(fh).writerows(extra_rows)
    return str(path)


def _rows(path: str) -> list[list[str]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        return list(csv.reader(fh))


def test_topic_replay_equals_file_replay(kafka_bootstrap, tmp_path):
    """Publishing a file and replaying the topic stores what replaying the file stores."""
    first = tmp_path / "sim.csv"
    _sim_file(first)
    rows = _rows(str(first))
    # a duplicate (same trade id) and a late tick: dead letters in both replays
    late = list(rows[200])
    late[0] = str(int(rows[1][0]) - 5_000)
    late[5] = "late-1"
    with open(first, "a", newline="") as fh:
        csv.writer(fh).writerows([rows[100], late])
    prefix = unique()
    sets = [a for s in SMALL for a in ("--set", s)] + ["--set", f"kafka.topic_prefix={prefix}"]
    out = qbtc("publish", str(first), "--kafka", kafka_bootstrap, "--quiet", *sets, cwd=tmp_path)
    assert f"published {len(rows) - 1 + 2:,} ticks" in out.stdout
    topic_run = qbtc(
        "replay",
        f"kafka://{kafka_bootstrap}/{prefix}ticks",
        "--store",
        "chdb://topic.chdb",
        "--quiet",
        "--trade",
        "--outputs",
        *sets,
        cwd=tmp_path,
    )
    file_run = qbtc(
        "replay", str(first), "--store", "chdb://file.chdb", "--quiet", "--trade", *sets, cwd=tmp_path
    )
    from_topic, from_file = dump("chdb://topic.chdb", tmp_path), dump("chdb://file.chdb", tmp_path)
    for table in ("ticks", "bars", "features", "correlations", "signals", "orders", "fills", "risk_events"):
        assert from_topic[table]["rows"] or table == "risk_events", table
        assert from_topic[table] == from_file[table], table
    # the trading loop trades the topic as it trades the file, and its records reach their topics
    summary = [line for line in topic_run.stdout.splitlines() if line.startswith("  orders ")]
    assert summary and summary == [
        line for line in file_run.stdout.splitlines() if line.startswith("  orders ")
    ]
    orders = {decode(v, Order).order_id for _, v in read_topic(kafka_bootstrap, f"{prefix}orders")}
    assert len(orders) == len(from_topic["orders"]["rows"])
    dead_t = from_topic["dead_letters"]
    dead_f = from_file["dead_letters"]
    reason = dead_t["columns"].index("reason")
    message = dead_t["columns"].index("message")
    source = dead_t["columns"].index("source")
    assert sorted((r[reason], r[message]) for r in dead_t["rows"]) == sorted(
        (r[reason], r[message]) for r in dead_f["rows"]
    )
    assert sorted(r[reason] for r in dead_t["rows"]) == ["duplicate", "late"]
    assert all(r[source].startswith(f"{prefix}ticks[") and "]@" in r[source] for r in dead_t["rows"])


def test_bad_records_on_the_topic_become_dead_letters(kafka_bootstrap, tmp_path):
    """Every malformed message becomes a dead letter with its reason and topic[partition]@offset."""
    prefix = unique()
    settings = load_settings(None, [f"kafka.topic_prefix={prefix}", "kafka.partitions=2"], env={})
    settings = with_brokers(settings, kafka_bootstrap)
    ensure(settings)
    good = [
        encode(Tick(1_700_000_000_000 + i * 100, "A/B", 100.0 + i, 1.0, "buy", str(i), "x"))
        for i in range(50)
    ]
    bad = {
        b"not json": "parse",
        b'{"v":1,"type":"tick"}': "schema",
        encode(Tick(1_700_000_000_000, "A/B", 1.0, 1.0, "buy", "b1", "x")).replace(
            b'"v":1', b'"v":2'
        ): "schema",
        encode(Tick(1_700_000_000_000, "A/B", -1.0, 1.0, "buy", "b2", "x")): "value",
        encode(Tick(1_700_000_000_000, "A/B", 1.0, 1.0, "hold", "b3", "x")): "value",
        orjson.dumps(
            {
                "v": 1,
                "type": "tick",
                "ts": 1,
                "symbol": "A/B",
                "price": True,
                "qty": 1.0,
                "side": "",
                "trade_id": "",
                "exchange": "x",
            }
        ): "schema",
    }
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    topic = f"{prefix}ticks"
    for i, value in enumerate(good):
        producer.produce(topic, value, b"A/B")
        if i == 20:
            for b in bad:
                producer.produce(topic, b, b"A/B")
            producer.produce(topic, None, b"A/B")  # a tombstone
    assert producer.flush(30) == 0
    qbtc(
        "replay",
        f"kafka://{kafka_bootstrap}/{topic}",
        "--store",
        "chdb://bad.chdb",
        "--quiet",
        "--set",
        f"kafka.topic_prefix={prefix}",
        cwd=tmp_path,
    )
    tables = dump("chdb://bad.chdb", tmp_path)
    assert len(tables["ticks"]["rows"]) == len(good)
    cols = tables["dead_letters"]["columns"]
    dead = [dict(zip(cols, r, strict=True)) for r in tables["dead_letters"]["rows"]]
    assert len(dead) == len(bad) + 1
    by_payload = {d["payload"].encode(): d for d in dead}
    for value, reason in bad.items():
        assert by_payload[value]["reason"] == reason, value
        assert by_payload[value]["source"].startswith(f"{topic}[")
    assert by_payload[b""]["reason"] == "parse"


def test_producer_waits_on_a_full_queue_and_reports_failures(kafka_bootstrap):
    """BufferError makes the producer wait, not crash; undeliverable records raise DeliveryError."""
    prefix = unique()
    k = KafkaConfig(brokers=kafka_bootstrap, topic_prefix=prefix, partitions=1)
    settings = load_settings(None, [f"kafka.topic_prefix={prefix}", "kafka.partitions=1"], env={})
    ensure(with_brokers(settings, kafka_bootstrap))
    conf = kafka_client_config(k, "producer") | {"queue.buffering.max.messages": 10, "linger.ms": 50}
    producer = RecordProducer(conf)
    values = [encode(Feature("A/B", i, 0.0, 0.1, 0.5, 0.01, 0.02, 0.01, 0)) for i in range(3000)]
    producer.produce_many(f"{prefix}features", values, [b"A/B"] * len(values))
    producer.flush()
    assert producer.waits > 0
    assert producer.delivered == len(values)
    got = read_topic(kafka_bootstrap, f"{prefix}features")
    assert sorted(decode(v).ts for _, v in got) == list(range(3000))

    failing = RecordProducer(
        kafka_client_config(k, "producer") | {"message.timeout.ms": 1500}, flush_timeout_s=20
    )
    failing.produce(f"{prefix}no-such-topic", b"{}")
    with pytest.raises(DeliveryError, match="not delivered"):
        failing.flush()


def test_publish_sends_read_errors_to_the_dead_letter_topic(kafka_bootstrap, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ts,symbol,price,qty\n1700000000000,A/B,1.0,1.0\n1700000000001,A/B,-1,1.0\nnope\n")
    prefix = unique()
    out = qbtc(
        "publish",
        str(path),
        "--kafka",
        kafka_bootstrap,
        "--quiet",
        "--set",
        f"kafka.topic_prefix={prefix}",
        cwd=tmp_path,
    )
    assert "published 1 ticks" in out.stdout
    dead = [decode(v, DeadLetter) for _, v in read_topic(kafka_bootstrap, f"{prefix}dead-letters")]
    assert sorted(d.reason for d in dead) == ["schema", "value"]
    assert {d.source for d in dead} == {f"{path}:3", f"{path}:4"}
