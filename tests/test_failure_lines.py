"""Every user-facing failure of the command line: exactly one line on stderr and the right exit code.

Exit codes: 2 for usage and input errors, 1 for failures of the outside
world, 130 for Ctrl-C. Each case drives the real CLI in a subprocess and
checks that stderr holds one line (no traceback, no Rust panic, no raw
librdkafka ``%3|...|FAIL|`` line) that names what failed.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import uuid
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


def _interrupt(args: list[str], cwd: Path, after_progress: int = 2, times: int = 1) -> tuple[int, str, str]:
    """Start ``qbtc ARGS``, send SIGINT ``times`` once it has reported progress ``after_progress`` times."""
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
    for _ in range(times):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
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


def test_a_second_ctrl_c_ends_the_replay_at_once_with_one_line(big_ticks, tmp_path):
    store = f"chdb://{tmp_path}/s.chdb"
    code, _, err = _interrupt(["replay", str(big_ticks), "--store", store], tmp_path, times=2)
    line = one_line(err)
    assert code == 130, err
    assert line.startswith("qbtc replay: interrupted: a second Ctrl-C stopped it unflushed"), line


def test_ctrl_c_during_run_exits_130_with_one_line(tmp_path):
    store = f"chdb://{tmp_path}/s.chdb"
    args = ["run", "--store", store, "--set", "simulator.duration_s=3600"]
    code, _, err = _interrupt(args, tmp_path)
    line = one_line(err)
    assert code == 130, err
    assert line.startswith("qbtc run: interrupted: stopped reading after "), line
    assert _count(store, "ticks", tmp_path) > 0


# -- arguments and files ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["simulate", "/nonexistent/dir/ticks.csv"], "cannot write /nonexistent/dir/ticks.csv: no directory"),
        (
            ["simulate", "ticks.csv", "--set", "simulator.duration_s=99999999999"],
            "simulator.duration_s must be a finite number in (0, 1000000000], got 99999999999",
        ),
    ],
)
def test_simulate_usage_errors_exit_2(tmp_path, args, words):
    out = qbtc(*args, cwd=tmp_path)
    line = one_line(out.stderr)
    assert out.returncode == 2, out.stderr
    assert line.startswith("qbtc simulate: error: ") and words in line, line


def test_simulate_into_a_file_as_directory_exits_2(tmp_path):
    (tmp_path / "f").write_text("")
    out = qbtc("simulate", "f/ticks.csv", cwd=tmp_path)
    assert out.returncode == 2
    assert "f is not a directory" in one_line(out.stderr)


# -- Kafka --------------------------------------------------------------------


def _closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [
        ["replay", "kafka://{b}/ticks", "--null-sink", "--quiet"],
        ["stream", "--kafka", "{b}", "--null-sink", "--quiet"],
        ["publish", "--simulate", "--kafka", "{b}", "--quiet"],
        ["kafka", "topics", "--kafka", "{b}"],
    ],
)
def test_no_broker_names_the_address_within_the_timeout(tmp_path, command):
    brokers = f"127.0.0.1:{_closed_port()}"
    args = [a.format(b=brokers) for a in command]
    start = time.monotonic()
    out = qbtc(*args, "--set", "kafka.timeout_s=2", cwd=tmp_path)
    seconds = time.monotonic() - start
    line = one_line(out.stderr)
    assert out.returncode == 1, out.stderr
    assert f"no Kafka broker answered at {brokers} in 2 s" in line, line
    assert "Connection refused" in line
    assert not any(ln.startswith("%") for ln in out.stderr.splitlines())
    assert seconds < 2 + 20  # the check waits kafka.timeout_s; the rest is start-up and shutdown


@pytest.mark.kafka
def test_replay_of_a_missing_topic_exits_2_naming_it(kafka_bootstrap, tmp_path):
    topic = f"nosuchtopic-{uuid.uuid4().hex[:8]}"
    out = qbtc("replay", f"kafka://{kafka_bootstrap}/{topic}", "--null-sink", "--quiet", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert one_line(out.stderr) == f"qbtc replay: error: topic {topic} does not exist on {kafka_bootstrap}"
    out = qbtc("replay", f"kafka://{kafka_bootstrap}/{topic}", "--null-sink", "--quiet", cwd=tmp_path)
    assert out.returncode == 2, "the failed replay created the topic"


@pytest.mark.kafka
def test_metrics_port_in_use_exits_2_naming_it(kafka_bootstrap, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        prefix = f"m{uuid.uuid4().hex[:8]}-"
        out = qbtc(
            "stream", "--kafka", kafka_bootstrap, "--null-sink", "--quiet", "--until-end",
            "--metrics-port", str(port), "--set", f"kafka.topic_prefix={prefix}",
            cwd=tmp_path,
        )  # fmt: skip
    line = one_line(out.stderr)
    assert out.returncode == 2, out.stderr
    assert line.startswith(f"qbtc stream: error: --metrics-port {port}: cannot serve metrics on "), line
    assert "Address already in use" in line


@pytest.mark.kafka
def test_publish_and_ctrl_c_during_stream_print_one_line(kafka_bootstrap, tmp_path):
    prefix = f"c{uuid.uuid4().hex[:8]}-"
    sets = ["--set", f"kafka.topic_prefix={prefix}"]
    out = qbtc(
        "publish", "--simulate", "--kafka", kafka_bootstrap, "--quiet", *sets,
        "--set", "simulator.duration_s=120", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no raw librdkafka line (e.g. %4|...|GETPID|)
    store = f"chdb://{tmp_path}/s.chdb"
    recovery = str(tmp_path / "rec")
    args = ["stream", "--kafka", kafka_bootstrap, "--store", store, "--recovery-dir", recovery, *sets]
    code, _, err = _interrupt(args, tmp_path)
    line = one_line(err)
    assert code == 130, err
    assert line.startswith("qbtc stream: interrupted"), line
