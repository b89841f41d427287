"""Shared pytest plugins of the suite, and the lock that keeps side-by-side suites' heavy modules apart."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

import pytest

pytest_plugins = ["kafka_fixture"]

HEAVY_LOCK = "QBTC_TEST_HEAVY_LOCK"
"""A file shared by suites that run at the same time (``.ci/run`` runs 3.11's and 3.12's side by side)."""


@pytest.fixture(scope="module", autouse=True)
def _heavy_modules_one_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module marked ``heavy`` (a dozen processes at once, SIGKILLs and restarts, a three-node cluster)
    runs while no other suite sharing ``$QBTC_TEST_HEAVY_LOCK`` runs one of its own.

    The two suites run the same modules in the same order, so without it both reach the SIGKILL
    tests together and their brokers, starved of the machine's two cores, time out. Without the
    variable (one suite alone) this does nothing.
    """
    path = os.environ.get(HEAVY_LOCK)
    if not path or request.node.get_closest_marker("heavy") is None:
        yield
        return
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
