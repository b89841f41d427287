"""The background processes infra/ starts (the Kafka broker, the local exchange): are they alive."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether the process runs; reaps it if it is our exited child."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != pid  # our own child: the kernel knows best
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A JVM whose main thread has ended shows state Z while its other threads still shut down.
    with contextlib.suppress(OSError, ValueError, KeyError):
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return not (fields["State"].strip().startswith("Z") and int(fields["Threads"]) <= 1)
    return True
