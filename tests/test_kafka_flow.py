"""The features flow on a real Kafka broker: topic replay, bad records, the producer sink."""

from __future__ import annotations

import csv
import gzip
import math
from collections import defaultdict
from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import Producer
from kafka_helpers import SMALL, column, dump, qbtc, read_topic, unique

from flows.config import BUILTIN_STRATEGIES, KafkaConfig, kafka_client_config, load_settings
from flows.kafka_flow import ensure, with_brokers
from schemas.codec import decode, encode
from schemas.records import REGIMES, DeadLetter, Feature, ModelMetrics, Order, StrategyUpdate, Target, Tick
from sinks.kafka_producer import DeliveryError, RecordProducer

pytestmark = pytest.mark.kafka

STRATEGIES = (*BUILTIN_STRATEGIES, "online_model")
LEVELS = {"meta_every_s": 60, "strategy_every_s": 30, "tactical_every_s": 3}
"""Cadences of the decision levels (s) for the replays of a 240-second stream: several decisions
of each level, and orders still go out."""
MODEL = {"horizon_s": LEVELS["tactical_every_s"], "warmup": 10, "report_every": 10}
"""The online model's settings: it predicts the tactical bar, is warm after 10 of them and writes
a metrics row every 10 forecasts."""
DECIDING = [a for name in STRATEGIES for a in ("--strategy", f"builtin:{name}")] + [
    a
    for s in [
        "levels.enabled=true",
        *(f"levels.{k}={v}" for k, v in LEVELS.items()),
        *(f"strategies.online_model.{k}={v}" for k, v in MODEL.items()),
    ]
    for a in ("--set", s)
]
"""The default strategies and the online model, with the decision levels on (SMALL has them off)."""
DECISION_TOPICS = {
    "strategy_updates": ("strategy-updates", StrategyUpdate, ("strategy", "ts")),
    "targets": ("targets", Target, ("symbol", "ts")),
    "model_metrics": ("model-metrics", ModelMetrics, ("symbol", "model", "ts")),
}
"""Table -> (topic, record type, natural key: the table's sorting key) of the levels and the model."""
REPLAYED = ("ticks", "bars", "features", "correlations", "signals", "orders", "fills", "risk_events")
"""Tables a topic replay and a file replay fill alike (only ``risk_events`` may be empty)."""


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
    """Publishing a file and replaying the topic stores what replaying the file stores.

    Both replays trade with the decision levels on at short cadences and the
    online model among the strategies, so the topic replay's ``--outputs``
    also cover the ``strategy-updates``, ``targets`` and ``model-metrics``
    topics (:func:`_check_decision_topics`).
    """
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
    trade = ["--trade", *sets, *DECIDING]
    topic_run = qbtc(
        "replay",
        f"kafka://{kafka_bootstrap}/{prefix}ticks",
        "--store",
        "chdb://topic.chdb",
        "--quiet",
        "--outputs",
        *trade,
        cwd=tmp_path,
    )
    file_run = qbtc("replay", str(first), "--store", "chdb://file.chdb", "--quiet", *trade, cwd=tmp_path)
    from_topic, from_file = dump("chdb://topic.chdb", tmp_path), dump("chdb://file.chdb", tmp_path)
    for table in (*REPLAYED, *DECISION_TOPICS):
        assert from_topic[table]["rows"] or table == "risk_events", table
        assert from_topic[table] == from_file[table], table
    # the trading loop trades the topic as it trades the file, and its records reach their topics
    summary = [line for line in topic_run.stdout.splitlines() if line.startswith("  orders ")]
    assert summary and summary == [
        line for line in file_run.stdout.splitlines() if line.startswith("  orders ")
    ]
    orders = {decode(v, Order).order_id for _, v in read_topic(kafka_bootstrap, f"{prefix}orders")}
    assert len(orders) == len(from_topic["orders"]["rows"])
    ticks = [int(r[0]) for r in rows[1:]]
    _check_decision_topics(kafka_bootstrap, prefix, from_topic, (min(ticks), max(ticks) + 1000))
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


def _decisions(records: list, every_s: int, at_least: int) -> dict[int, list]:
    """A level's records grouped by decision time; at least ``at_least`` decisions, one per
    ``every_s`` window."""
    by_ts = defaultdict(list)
    for r in records:
        by_ts[r.ts].append(r)
    windows = [ts // (every_s * 1000) for ts in sorted(by_ts)]
    assert len(windows) >= at_least and len(set(windows)) == len(windows), sorted(by_ts)
    return by_ts


def _check_decision_topics(brokers: str, prefix: str, stored: dict, span: tuple[int, int]) -> None:
    """The decision levels' and the online model's topics hold well-formed records of the run.

    Each topic holds its store table's rows, one record a key; every record
    decodes as its type, its ``ts`` is in the run's event time ``span`` and
    its fields are in range: an L4 decision gives every strategy a share
    (summing to 1) and the factor ``min(1, n * share)``; an L3 decision gives
    every symbol a cap no larger than ``risk.max_position_share``; each
    symbol's model reports more forecasts scored as the run goes on.
    """
    got = {}
    for table, (topic, cls, key) in DECISION_TOPICS.items():
        got[topic] = [decode(v, cls) for _, v in read_topic(brokers, prefix + topic)]
        keys = [tuple(getattr(r, k) for k in key) for r in got[topic]]
        cols = [column(stored[table], k) for k in key]
        cols[-1] = [
            round(datetime.fromisoformat(ts).replace(tzinfo=UTC).timestamp() * 1000) for ts in cols[-1]
        ]
        stored_keys = list(zip(*cols, strict=True))
        assert len(keys) == len(set(keys)) and sorted(keys) == sorted(stored_keys), topic
        assert all(span[0] <= r.ts <= span[1] for r in got[topic]), (topic, span)
    symbols = {r.symbol for r in got["targets"]}
    assert len(symbols) == 4

    meta = _decisions(got["strategy-updates"], LEVELS["meta_every_s"], at_least=3)
    for ts, updates in meta.items():
        assert sorted(u.strategy for u in updates) == sorted(STRATEGIES), ts
        assert math.isclose(sum(u.share for u in updates), 1.0, rel_tol=1e-9), ts
        for u in updates:
            assert 0 <= u.share <= 1 and math.isclose(u.factor, min(1.0, len(STRATEGIES) * u.share)), u
            assert 0 <= u.drawdown <= 1 and 0 <= u.drift <= 1 and u.days >= 0 and math.isfinite(u.sharpe), u
            assert u.reason in ("track", "warming up", "no strategy earns"), u

    cap = load_settings(None, [], env={}).risk.max_position_share
    l3 = _decisions(got["targets"], LEVELS["strategy_every_s"], at_least=6)
    for ts, targets in l3.items():
        assert sorted(t.symbol for t in targets) == sorted(symbols), ts
    for t in got["targets"]:
        assert t.regime in ("", *REGIMES) and t.in_universe in (0, 1) and t.reason, t
        assert math.isfinite(t.quote_volume) and t.quote_volume >= 0, t
        assert 0 <= t.max_exposure <= cap and (t.in_universe or t.max_exposure <= 0), t
    assert any(t.max_exposure > 0 for t in got["targets"])

    scored = defaultdict(list)
    for m in sorted(got["model-metrics"], key=lambda m: (m.ts, m.n)):
        assert m.model == "online_model" and m.symbol in symbols and m.n >= 1 and m.drift in (0, 1), m
        assert math.isfinite(m.log_loss) and m.log_loss > 0, m
        figures = (m.accuracy, m.calibration_error, m.hit_rate_30d, m.mean_prob_30d)
        assert all(0 <= x <= 1 for x in figures), m
        scored[m.symbol].append(m.n)
    assert set(scored) == symbols
    for symbol, ns in scored.items():
        assert ns == sorted(ns) and ns[-1] >= 2 * MODEL["report_every"], (symbol, ns)


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
