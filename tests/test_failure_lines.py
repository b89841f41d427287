"""Every user-facing failure of the command line: exactly one line on stderr and the right exit code.

Exit codes: 2 for usage and input errors, 1 for failures of the outside
world, 130 for Ctrl-C. Each case drives the real CLI in a subprocess and
checks that stderr holds one line (no traceback, no Rust panic, no raw
librdkafka ``%3|...|FAIL|`` line) that names what failed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

PROGRESS = re.compile(r"^qbtc: (\s*[\d.]+% )?[\d,]+ records, ")
"""A progress line (stderr while a run goes on), not a failure line."""


def qbtc(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def one_line(stderr: str) -> str:
    """The one line of ``stderr`` that is not progress; fails on more, on none, on a traceback or a panic."""
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip() and not PROGRESS.match(ln)]
    assert len(lines) == 1, stderr[-4000:]
    assert "Traceback" not in stderr and "panicked" not in stderr and "|FAIL|" not in stderr, stderr[-4000:]
    return lines[0]


# -- Ctrl-C -------------------------------------------------------------------


def _interrupt(args: list[str], cwd: Path, after_progress: int = 2) -> tuple[int, str, str]:
    """Start ``qbtc ARGS``, send SIGINT once it has reported progress ``after_progress`` times."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if sum(bool(PROGRESS.match(ln)) for ln in seen) >= after_progress:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, "".join(seen) + err


@pytest.fixture(scope="module")
def big_ticks(tmp_path_factory) -> Path:
    """A tick file that takes several seconds to replay (about 1.8M ticks)."""
    path = tmp_path_factory.mktemp("big") / "ticks.csv"
    out = qbtc("simulate", str(path), "--set", "simulator.duration_s=1800", cwd=path.parent)
    assert out.returncode == 0, out.stderr
    return path


def _count(store: str, table: str, cwd: Path) -> int:
    out = qbtc("sql", f"SELECT count() FROM {table} FINAL", "--store", store, "--format", "csv", cwd=cwd)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.splitlines()[1])


def test_ctrl_c_during_replay_flushes_what_was_read_and_exits_130(big_ticks, tmp_path):
    store = f"chdb://{tmp_path}/s.chdb"
    code, out, err = _interrupt(["replay", str(big_ticks), "--store", store], tmp_path)
    line = one_line(err)
    assert code == 130, err
    found = re.fullmatch(r"qbtc replay: interrupted: stopped reading after ([\d,]+) records; .*", line)
    assert found, line
    read = int(found.group(1).replace(",", ""))
    total = sum(1 for _ in big_ticks.open()) - 1
    assert 0 < read < total
    assert _count(store, "ticks", tmp_path) == read  # every tick read is stored, none beyond
    assert _count(store, "bars", tmp_path) > 0
    assert "ticks" in out  # the summary of what was kept


def test_ctrl_c_during_run_exits_130_with_one_line(tmp_path):
    store = f"chdb://{tmp_path}/s.chdb"
    args = ["run", "--store", store, "--set", "simulator.duration_s=3600"]
    code, _, err = _interrupt(args, tmp_path)
    line = one_line(err)
    assert code == 130, err
    assert line.startswith("qbtc run: interrupted: stopped reading after "), line
    assert _count(store, "ticks", tmp_path) > 0
