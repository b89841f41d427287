"""Event time on topics: a symbol spread over partitions, and a poison timestamp with recovery restarts."""

from __future__ import annotations

import random

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_helpers import SMALL, dump, qbtc, unique

from schemas.codec import encode
from schemas.records import Tick

pytestmark = pytest.mark.kafka

T = 1_700_000_000_000
TABLES = ("ticks", "bars", "features", "correlations", "dead_letters")


def _sets(prefix: str) -> list[str]:
    return [a for s in [*SMALL, f"kafka.topic_prefix={prefix}"] for a in ("--set", s)]


def _ticks(n: int, symbols: tuple[str, ...], seed: int = 1) -> list[Tick]:
    """In-order ticks, every time distinct, symbols interleaved."""
    rng = random.Random(seed)
    price = dict.fromkeys(symbols, 100.0)
    out = []
    for i in range(n):
        s = symbols[i % len(symbols)]
        price[s] = round(price[s] * (1 + rng.gauss(0, 0.0005)), 6)
        out.append(Tick(T + 13 * i, s, price[s], 0.25 + (i % 7) / 10, "buy", str(i), "binance"))
    return out


def _csv(path, ticks: list[Tick]) -> None:
    with open(path, "w") as fh:
        fh.write("ts,symbol,price,qty,side,trade_id,exchange\n")
        for t in ticks:
            fh.write(f"{t.ts},{t.symbol},{t.price!r},{t.qty!r},{t.side},{t.trade_id},{t.exchange}\n")


def _create(brokers: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def _produce(brokers: str, topic: str, values: list[tuple[int, bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20})
    failed = []
    for part, key, value in values:
        producer.produce(topic, value, key, partition=part, on_delivery=lambda e, _m: e and failed.append(e))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failed, failed


def test_a_symbol_spread_over_two_partitions_gives_one_result(kafka_bootstrap, tmp_path):
    """60,000 in-order ticks, in blocks of 5,000 alternating between 2 partitions.

    Lateness once depended on which partition was read first (30,000, 23,000
    and 30,000 late ticks in three identical runs). Now five runs store the
    same rows, and the same as a file replay of the ticks.
    """
    ticks = _ticks(60_000, ("BTC/USDT", "ETH/USDT", "SOL/USDT"))
    prefix = unique()
    topic = f"{prefix}ticks"
    _create(kafka_bootstrap, topic, 2)
    _produce(
        kafka_bootstrap, topic, [((i // 5000) % 2, t.symbol.encode(), encode(t)) for i, t in enumerate(ticks)]
    )
    _csv(tmp_path / "ticks.csv", ticks)
    sets = _sets(prefix)
    qbtc("replay", "ticks.csv", "--store", "chdb://file.chdb", "--quiet", *sets, cwd=tmp_path)
    want = dump("chdb://file.chdb", tmp_path, TABLES)
    assert len(want["ticks"]["rows"]) == len(ticks)
    assert not want["dead_letters"]["rows"]
    for run in range(5):
        store = f"chdb://run{run}.chdb"
        if run < 3:
            qbtc(
                "replay",
                f"kafka://{kafka_bootstrap}/{topic}",
                "--store",
                store,
                "--quiet",
                *sets,
                cwd=tmp_path,
            )
        else:
            qbtc(
                "stream", "--until-end", "--kafka", kafka_bootstrap, "--store", store, "--quiet", *sets,
                cwd=tmp_path,
            )  # fmt: skip
        got = dump(store, tmp_path, TABLES)
        for table in TABLES:
            assert got[table] == want[table], (run, table, len(got[table]["rows"]), len(want[table]["rows"]))


def test_a_poison_timestamp_on_a_topic_never_crashes_a_restart(kafka_bootstrap, tmp_path):
    """ts 1700000000261 -> 5700000000261 (a bit flip) once crashed the flow at every restart.

    It is a ``time`` dead letter now: the flow with a recovery directory runs
    to the end, takes a second batch with another poison, and a third run
    resumes with nothing to do; the store equals a file replay of the ticks.
    """
    ticks = _ticks(24_000, ("BTC/USDT", "ETH/USDT"), seed=2)
    first, second = ticks[:12_000], ticks[12_000:]

    def poisoned(part: list[Tick], at: int, tag: str) -> list[Tick]:
        t = part[at]
        bad = Tick(int("5" + str(t.ts)[1:]), t.symbol, t.price, t.qty, t.side, tag, t.exchange)
        return [*part[:at], bad, *part[at:]]

    first, second = poisoned(first, 6_000, "poison-1"), poisoned(second, 100, "poison-2")
    prefix = unique()
    topic = f"{prefix}ticks"
    sets = _sets(prefix)
    cmd = [
        "stream", "--until-end", "--kafka", kafka_bootstrap, "--store", "chdb://live.chdb", "--quiet",
        "--recovery-dir", "rec", "--snapshot-interval", "0.5", *sets,
    ]  # fmt: skip
    _create(kafka_bootstrap, topic, 2)
    _produce(kafka_bootstrap, topic, [(hash(t.symbol) % 2, t.symbol.encode(), encode(t)) for t in first])
    qbtc(*cmd, cwd=tmp_path, timeout=180)
    _produce(kafka_bootstrap, topic, [(hash(t.symbol) % 2, t.symbol.encode(), encode(t)) for t in second])
    qbtc(*cmd, cwd=tmp_path, timeout=180)
    qbtc(*cmd, cwd=tmp_path, timeout=180)
    got = dump("chdb://live.chdb", tmp_path, TABLES)
    dead = got["dead_letters"]
    reason = dead["columns"].index("reason")
    assert sorted(r[reason] for r in dead["rows"]) == ["time", "time"]
    _csv(tmp_path / "all.csv", first + second)
    qbtc("replay", "all.csv", "--store", "chdb://file.chdb", "--quiet", *sets, cwd=tmp_path)
    want = dump("chdb://file.chdb", tmp_path, TABLES)
    assert len(got["ticks"]["rows"]) == len(ticks)
    for table in ("ticks", "bars", "features", "correlations"):
        assert got[table] == want[table], table
