"""Kafka failures name their cause in one line; a topic replay's progress only moves forward to 100%.

A broker with a SASL_PLAINTEXT/PLAIN listener (``infra.kafka.broker``'s
opt-in ``sasl_port``) stands in for a secured cluster.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from collections.abc import Iterator

import pytest
from kafka_fixture import free_settings, running_broker
from kafka_helpers import dump, publish_sim, qbtc, unique

from infra.kafka.broker import sasl_bootstrap

pytestmark = pytest.mark.kafka

USER, PASSWORD, WRONG = "qbtc", "right-horse-battery", "wrong-horse-battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sasl_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a broker's SASL_PLAINTEXT listener (user ``qbtc``)."""
    settings = dataclasses.replace(
        free_settings(tmp_path_factory.mktemp("kafka-sasl")),
        sasl_port=_free_port(),
        sasl_users=((USER, PASSWORD),),
        heap_mb=256,
    )
    with running_broker(settings) as s:
        yield sasl_bootstrap(s)


def _sasl_sets(prefix: str) -> list[str]:
    sets = [
        "kafka.security_protocol=SASL_PLAINTEXT",
        "kafka.sasl_mechanism=PLAIN",
        f"kafka.sasl_username={USER}",
        f"kafka.topic_prefix={prefix}",
    ]
    return [a for s in sets for a in ("--set", s)]


@pytest.mark.parametrize("command", ["kafka topics", "stream --until-end", "replay kafka://"])
def test_a_wrong_password_is_named_in_one_line(sasl_brokers, tmp_path, command):
    """Not "no answer from the cluster in N s" after dozens of raw librdkafka lines: the refusal, at once."""
    prefix = unique("sasl")
    args = {
        "kafka topics": ["kafka", "topics", "--kafka", sasl_brokers],
        "stream --until-end": ["stream", "--kafka", sasl_brokers, "--until-end", "--store", "chdb://s.chdb"],
        "replay kafka://": ["replay", f"kafka://{sasl_brokers}/{prefix}ticks", "--store", "chdb://s.chdb"],
    }[command]
    start = time.monotonic()
    out = qbtc(*args, *_sasl_sets(prefix), cwd=tmp_path, env={"QBTC_KAFKA_SASL_PASSWORD": WRONG}, check=False)
    seconds = time.monotonic() - start
    lines = out.stderr.splitlines()
    assert out.returncode == 1, out.stderr[-3000:]
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(f"qbtc {args[0]}: failed: "), lines[0]
    assert "SASL authentication error" in lines[0] and "Invalid username or password" in lines[0]
    assert WRONG not in out.stdout + out.stderr
    assert seconds < 25, f"{seconds:.0f} s: the cause should end the command before kafka.timeout_s (30 s)"


def test_the_right_password_publishes_and_replays(sasl_brokers, tmp_path):
    prefix = unique("sasl")
    env = {"QBTC_KAFKA_SASL_PASSWORD": PASSWORD}
    sets = _sasl_sets(prefix)
    sim = ["--set", "simulator.duration_s=20", "--set", "simulator.trades_per_s=50"]
    pub = qbtc(
        "publish", "--simulate", "--kafka", sasl_brokers, "--quiet", *sets, *sim, cwd=tmp_path, env=env
    )
    published = int(re.search(r"published ([\d,]+) ticks", pub.stdout).group(1).replace(",", ""))
    assert pub.stderr == ""  # no raw librdkafka lines
    url = f"kafka://{sasl_brokers}/{prefix}ticks"
    rep = qbtc("replay", url, "--store", "chdb://s.chdb", "--quiet", *sets, cwd=tmp_path, env=env)
    assert rep.stderr == ""
    assert len(dump("chdb://s.chdb", tmp_path, ("ticks",))["ticks"]["rows"]) == published > 0


def test_topic_replay_progress_never_goes_back_and_ends_at_100(kafka_bootstrap, tmp_path):
    """The percentage is over every partition's offset range (it summed only the partitions seen so far)."""
    prefix = unique("prog")
    published = publish_sim(kafka_bootstrap, prefix, tmp_path, seconds=300, rate=600, symbols=6)
    url = f"kafka://{kafka_bootstrap}/{prefix}ticks"
    out = qbtc(
        "replay", url, "--store", "chdb://p.chdb", "--set", f"kafka.topic_prefix={prefix}", cwd=tmp_path
    )
    shown = [float(p) for p in re.findall(r"^qbtc: +([\d.]+)% ", out.stderr, re.MULTILINE)]
    print(out.stderr)
    assert len(shown) >= 2, out.stderr
    assert shown == sorted(shown), f"progress went back: {shown}"
    assert shown[-1] == 100.0, shown
    assert f"{published:,} records" in out.stderr.splitlines()[-1]
