"""Helpers of the monitoring tests: Prometheus' and Alertmanager's tools, which CI must have."""

from __future__ import annotations

import shutil

from tests.kafka_fixture import unavailable


def require_tool(*names: str) -> str:
    """The path of the first of ``names`` on PATH; else the test fails under ``CI=true`` and skips
    elsewhere (``bash infra/system-packages.sh`` installs them)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    unavailable(f"{' / '.join(names)} not on PATH (bash infra/system-packages.sh installs Debian's)")
    raise AssertionError  # not reached: unavailable raises
