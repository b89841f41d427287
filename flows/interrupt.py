"""Ctrl-C while a flow runs: one line on stderr and exit code 130, never a panic or a traceback.

Bytewax 0.21 checks for signals in its run loop, but Python runs the
SIGINT handler between any two bytecodes of the main thread, so the
default handler's ``KeyboardInterrupt`` usually lands inside a step: the
step's error becomes a Rust panic (``thread '<unnamed>' panicked at
src/run.rs ...``) and a ``BytewaxRuntimeError`` naming that step, and the
rows read so far are neither all written nor marked.

- :func:`stop_reading` (file replays and ``qbtc run``): the first Ctrl-C
  only sets ``Progress.stop_requested``; the chunk source then ends its
  input after the chunk it is reading, so the flow ends as if the files
  ended there and flushes everything it read (a replay of that prefix).
  A second Ctrl-C ends the process at once (:func:`hard_exit`).
- :func:`quiet_interrupt` (Kafka flows, whose recovery store keeps the
  last complete epoch): Ctrl-C stops the flow as Bytewax does, with
  stderr silenced until the flow has unwound, so the command line's one
  line is all that shows.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from sources.chunk_source import Progress

EXIT_CODE = 130
"""What a process ended by SIGINT exits with (128 + 2), as shells report it."""


class Interrupted(Exception):
    """A Ctrl-C stopped the command; ``str()`` says what was kept (the command line prints it)."""


def hard_exit(command: str, why: str) -> None:
    """Write ``qbtc COMMAND: interrupted: WHY`` on fd 2 and end the process with code 130."""
    line = f"qbtc {command}: interrupted: {why}\n"
    if os.isatty(2):
        line = "\n" + line  # after a progress line ended by \r
    os.write(2, line.encode(errors="replace"))
    os._exit(EXIT_CODE)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_reading(progress: Progress, command: str) -> Iterator[Progress]:
    """While the block runs, a Ctrl-C asks ``progress``'s source to stop; a second one ends the process."""
    if not _main_thread():  # signal handlers belong to the main thread
        yield progress
        return

    def on_sigint(_signum, _frame) -> None:
        if progress.stop_requested:
            hard_exit(command, "a second Ctrl-C stopped it unflushed: the store holds part of what was read")
        progress.stop_requested = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield progress
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def quiet_interrupt() -> Iterator[None]:
    """While the block runs, Ctrl-C raises ``KeyboardInterrupt`` with fd 2 sent to /dev/null.

    fd 2 is restored when the block ends, so the caller's one line is seen;
    a second Ctrl-C while Bytewax unwinds is ignored.
    """
    if not _main_thread():
        yield
        return
    saved = os.dup(2)
    silenced: list[bool] = []

    def on_sigint(_signum, _frame) -> None:
        if silenced:
            return
        silenced.append(True)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if silenced:
            os.dup2(saved, 2)
        os.close(saved)
