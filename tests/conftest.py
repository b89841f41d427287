"""Shared pytest plugins of the test suite."""

from __future__ import annotations

pytest_plugins = ["kafka_fixture"]
