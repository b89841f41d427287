"""How the command line ends on a failed sink: one line on stderr and exit code 1, within seconds.

A sink that cannot make an epoch durable (a store write or flush refused,
output records the cluster does not acknowledge) reports it to
``sinks.failure``. :func:`arm` installs the handler that ends the process
right there: it prints ``qbtc COMMAND: failed: CAUSE`` and calls
``os._exit(1)``, as a ``kill -9`` would end it as far as the data is
concerned: the epoch under way never commits, so the recovery store holds
the last complete epoch and a restart resumes from it.

Why not let the exception travel back through Bytewax: Bytewax 0.21 turns
it into a Rust panic, closes the sink while unwinding, and a second error
there aborts the process, which chDB's SIGABRT handler then holds alive
for good (no exit, no reason). Two more guards:

- before writing the line the handler starts faulthandler's watchdog (a C
  thread that needs no GIL and calls ``_exit(1)``), so even a blocked
  stderr cannot keep the process alive;
- :func:`default_abort` puts SIGABRT back to its default after chDB has
  installed its handler, so any other abort ends the process at once.

Only the command line arms this: flows run inside another program (the
test suite) get the sink's exception as before.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable

from sinks import failure
from sinks.clickhouse_store import StoreError, one_line

EXIT_GRACE_S = 5.0
"""The most the handler may take between the failure and the process's end."""


def _ends_the_run(exc: BaseException) -> bool:
    """Failures of the outside world (store, cluster); programming errors keep their traceback.

    The Kafka client's errors are looked up only when it is loaded: a file
    replay never imports it (a sixth of its start-up).
    """
    kinds: tuple[type, ...] = (StoreError,)
    for module, name in (("sinks.kafka_producer", "DeliveryError"), ("confluent_kafka", "KafkaException")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            kinds += (getattr(loaded, name),)
    return isinstance(exc, kinds)


class _FatalExit:
    def __init__(self, command: str, scrub: Callable[[str], str]) -> None:
        self.command = command
        self.scrub = scrub
        self.lock = threading.Lock()
        self.devnull = open(os.devnull, "w")  # held open for faulthandler until the end

    def __call__(self, exc: BaseException) -> None:
        if not _ends_the_run(exc):
            return
        self.lock.acquire()  # the first failure speaks; any later one waits for the end
        faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=self.devnull)
        line = f"qbtc {self.command}: failed: {self.scrub(one_line(exc))}\n"
        try:
            sys.stderr.flush()  # progress written so far goes first
        except Exception:  # nothing may stop the exit
            pass
        if os.isatty(2):
            line = "\n" + line  # after a progress line ended by \r
        os.write(2, line.encode(errors="replace"))
        os._exit(1)


def arm(command: str, scrub: Callable[[str], str] = str) -> Callable[[], None]:
    """End this process on the first sink failure, naming ``command``; returns the disarm call.

    ``scrub`` removes secrets from the message.
    """
    previous = failure.set_handler(_FatalExit(command, scrub))
    return lambda: failure.set_handler(previous)


def default_abort() -> None:
    """SIGABRT back to its default action (call after opening a chDB store, in the main thread).

    chDB installs a SIGABRT handler that never returns, so a Rust abort (a
    panic while Bytewax unwinds) would leave the process hanging instead of
    ending it.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
