"""The lock of tests/conftest.py: a heavy module waits while another suite holds it; others do not."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import HEAVY_LOCK

ROOT = Path(__file__).resolve().parents[1]


def start(tmp_path: Path, name: str, heavy: bool, lock: Path) -> subprocess.Popen:
    mark = "pytestmark = pytest.mark.heavy\n" if heavy else ""
    (tmp_path / f"test_{name}.py").write_text(f"import pytest\n{mark}\n\ndef test_it():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), HEAVY_LOCK: str(lock)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / f"test_{name}.py")]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_heavy_module_waits_for_the_other_suite_and_a_light_one_does_not(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    heavy: one suite at a time\n")
    (tmp_path / "conftest.py").write_text("from tests.conftest import _heavy_modules_one_at_a_time  # noqa\n")
    lock = tmp_path / "heavy.lock"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the other suite is in a heavy module
        heavy, light = start(tmp_path, "heavy", True, lock), start(tmp_path, "light", False, lock)
        assert light.wait(60) == 0, light.stdout.read()
        time.sleep(1.0)
        assert heavy.poll() is None  # still waiting
        fcntl.flock(held, fcntl.LOCK_UN)
    assert heavy.wait(60) == 0, heavy.stdout.read()
