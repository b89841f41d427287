"""Kafka settings (config, environment, pass-through), secrets, and the metrics endpoint."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from confluent_kafka import Producer
from kafka_helpers import qbtc, unique
from prometheus_client.parser import text_string_to_metric_families

from flows.config import ConfigError, Secret, kafka_client_config, load_settings, redacted, scrub
from schemas.codec import encode
from schemas.records import Tick

PASSWORD = "hunter2-do-not-print"


def test_kafka_settings_from_file_env_and_overrides(tmp_path):
    cfg = tmp_path / "q.toml"
    cfg.write_text(
        '[kafka]\nbrokers = "k1:9092,k2:9092"\nsecurity_protocol = "SASL_SSL"\n'
        'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "qbtc"\n'
        '[kafka.producer]\n"linger.ms" = 20\n[kafka.consumer]\n"fetch.min.bytes" = 1024\n'
    )
    env = {"QBTC_KAFKA_SASL_PASSWORD": PASSWORD, "QBTC_KAFKA_PARTITIONS": "8", "OTHER": "x"}
    s = load_settings(str(cfg), ["kafka.producer.compression.type=zstd", "kafka.brokers=k3:9092"], env=env)
    k = s.kafka
    assert (k.brokers, k.partitions, k.sasl_username) == ("k3:9092", 8, "qbtc")
    assert k.sasl_password == Secret(PASSWORD)
    producer = kafka_client_config(k, "producer")
    assert producer["sasl.password"] == PASSWORD
    assert producer["security.protocol"] == "SASL_SSL" and producer["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (producer["linger.ms"], producer["compression.type"], producer["enable.idempotence"]) == (
        20,
        "zstd",
        True,
    )
    consumer = kafka_client_config(k, "consumer")
    assert consumer["fetch.min.bytes"] == 1024 and "linger.ms" not in consumer
    for shown in (repr(s), str(s), repr(k), str(redacted(producer)), scrub(f"failed with {PASSWORD}", s)):
        assert PASSWORD not in shown
    with pytest.raises(ConfigError) as err:
        load_settings(None, [f"kafka.sasl_password={PASSWORD}", "kafka.partitions=zero"], env={})
    assert PASSWORD not in str(err.value)


def test_cli_never_prints_secrets(tmp_path):
    """A failing command with a password in env and in a pass-through setting shows neither."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there
    env = {"QBTC_KAFKA_SASL_PASSWORD": PASSWORD}
    sets = [
        "--set", "kafka.security_protocol=SASL_PLAINTEXT", "--set", "kafka.sasl_mechanism=PLAIN",
        "--set", "kafka.sasl_username=qbtc", "--set", "kafka.timeout_s=3",
        "--set", f"kafka.producer.sasl.oauthbearer.client.secret={PASSWORD}x",
    ]  # fmt: skip
    out = qbtc("kafka", "topics", "--kafka", f"127.0.0.1:{port}", *sets, cwd=tmp_path, env=env, check=False)
    assert out.returncode == 1, out.stderr
    assert PASSWORD not in out.stdout + out.stderr
    assert f"no Kafka broker answered at 127.0.0.1:{port}" in out.stderr


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            values[key] = sample.value
    return values


def _total(values: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in values.items() if n == name and want <= set(lab))


@pytest.mark.kafka
def test_metrics_endpoint_counts_add_up(kafka_bootstrap, tmp_path):
    """Scrape a running stream: ticks in = accepted + dead letters; lag reaches 0; histograms fill."""
    prefix = unique()
    topic = f"{prefix}ticks"
    sets = ["--set", f"kafka.topic_prefix={prefix}"]
    qbtc("kafka", "topics", "--kafka", kafka_bootstrap, "--partitions", "2", *sets, cwd=tmp_path)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    good = 0
    for sym in ("A/B", "C/D", "E/F"):
        for i in range(2000):
            producer.produce(topic, encode(Tick(1_700_000_000_000 + i * 50, sym, 10.0 + i % 7, 1.0, "buy",
                                                f"{sym}{i}", "x")), sym.encode())  # fmt: skip
            good += 1
    producer.produce(
        topic, encode(Tick(1_700_000_000_000, "A/B", 10.0, 1.0, "buy", "A/B5", "x")), b"A/B"
    )  # duplicate
    producer.produce(topic, b"garbage", b"A/B")
    producer.produce(topic, encode(Tick(1_700_000_000_000, "A/B", 0.0, 1.0, "buy", "z", "x")), b"A/B")
    assert producer.flush(30) == 0
    total = good + 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["stream", "--kafka", kafka_bootstrap, "--store", "chdb://m.chdb", "--metrics-port", str(port),
            "--snapshot-interval", "1", "--quiet", "--set", f"kafka.topic_prefix={prefix}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        scrapes = 0
        values: dict = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                values = _scrape(port)
                scrapes += 1
            except OSError:
                time.sleep(0.2)
                continue
            done = _total(values, "qbtc_ticks_in_total") == total
            lag = [v for (n, _), v in values.items() if n == "qbtc_consumer_lag"]
            stored = _total(values, "qbtc_store_write_seconds_count") > 0
            if done and len(lag) == 2 and not any(lag) and stored:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"counts never settled: {values}")
    finally:
        proc.terminate()
        proc.wait(30)
    assert scrapes >= 1
    accepted = _total(values, "qbtc_ticks_accepted_total")
    dead = {
        r: _total(values, "qbtc_dead_letters_total", reason=r)
        for r in ("parse", "value", "duplicate", "late")
    }
    assert accepted == good
    assert dead == {"parse": 1, "value": 1, "duplicate": 1, "late": 0}
    assert _total(values, "qbtc_ticks_in_total") == accepted + sum(dead.values())
    assert _total(values, "qbtc_batch_seconds_count") > 0
    assert _total(values, "qbtc_rows_out_total", table="ticks") == good
