"""Pytest fixtures that run a real Kafka broker from ``infra.kafka.broker`` for tests marked ``kafka``.

``kafka_bootstrap`` uses the broker named by ``$QBTC_TEST_KAFKA`` when set, else a single-node broker
started once per session on free ports in a temporary directory. ``kafka_cluster3`` starts three
nodes for fault tests. A broker that cannot start fails the tests when ``$CI`` is ``true`` (CI must
never skip them) and skips them otherwise.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.kafka.broker import BrokerError, BrokerSettings, bootstrap, down, up


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_settings(data_dir: str | Path, nodes: int = 1, host: str = "127.0.0.1") -> BrokerSettings:
    """Broker settings on free ports: ``2 * nodes`` consecutive ports from a port the OS handed out.

    Node i listens on ``base + 2(i-1)`` (clients) and ``base + 2(i-1) + 1`` (controller).
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base + 2 * nodes <= 65535 and all(_bindable(host, p) for p in range(base, base + 2 * nodes)):
            return BrokerSettings(
                data_dir=str(data_dir), port=base, controller_port=base + 1, nodes=nodes, host=host
            )
    msg = f"found no {2 * nodes} consecutive free ports on {host}"
    raise RuntimeError(msg)


def unavailable(text: str) -> None:
    """Fail the test under CI (``$CI`` is ``true``), skip it elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(text, pytrace=False)
    pytest.skip(text)


def start_or_give_up(settings: BrokerSettings) -> str:
    """``up(settings)``; if the broker cannot start, stop what did start and fail or skip the test."""
    try:
        return up(settings)
    except BrokerError as e:
        with contextlib.suppress(Exception):
            down(settings, timeout_s=10)
        unavailable(f"Kafka ({settings.nodes} node(s), data {settings.data_dir}) could not start: {e}")
        raise  # not reached: unavailable raises


@contextlib.contextmanager
def running_broker(settings: BrokerSettings) -> Iterator[BrokerSettings]:
    """Run a broker for the duration of the block and always stop it afterwards."""
    start_or_give_up(settings)
    try:
        yield settings
    finally:
        down(settings)


@pytest.fixture(scope="session")
def kafka_local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSettings]:
    """Settings of a single-node broker started for this session (ignores ``$QBTC_TEST_KAFKA``)."""
    with running_broker(free_settings(tmp_path_factory.mktemp("kafka"))) as settings:
        yield settings


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """Bootstrap servers of the test broker: ``$QBTC_TEST_KAFKA`` if set, else a local broker."""
    external = os.environ.get("QBTC_TEST_KAFKA")
    if external:
        return external
    return bootstrap(request.getfixturevalue("kafka_local_broker"))


@pytest.fixture(scope="module")
def kafka_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSettings]:
    """Settings of a three-node cluster (replication factor 3, min.insync.replicas 2) for this module."""
    with running_broker(free_settings(tmp_path_factory.mktemp("kafka3"), nodes=3)) as settings:
        yield settings
