"""What a sink does when it cannot make its output durable: raise (library use) or end the process.

Bytewax 0.21 turns an exception raised by a sink partition into a Rust
panic. While the panic unwinds, Bytewax closes the partition; a second
exception there aborts the process, and chDB's SIGABRT handler then keeps
the aborted process alive for good. Two rules follow:

- a sink partition reports its first failure with :func:`report` and, once
  failed, never raises again (its ``close`` only releases resources);
- a program that must end on a failed sink (the ``qbtc`` command line, see
  ``flows.watchdog``) installs a handler with :func:`set_handler`. The
  handler runs in the thread that saw the failure and may end the process
  there; the recovery store then still holds the last complete epoch.

Without a handler (the default, e.g. flows run inside the test suite) the
exception propagates as before.

>>> seen = []
>>> previous = set_handler(seen.append)
>>> report(ValueError("disk full"))
>>> set_handler(previous) is not None, seen
(True, [ValueError('disk full')])
"""

from __future__ import annotations

from collections.abc import Callable

FailureHandler = Callable[[BaseException], None]
"""Called with a sink's failure; may end the process, or return to let the sink raise."""

_handler: FailureHandler | None = None


def set_handler(handler: FailureHandler | None) -> FailureHandler | None:
    """Install ``handler`` (None: none) for sink failures; returns the previous one."""
    global _handler
    previous, _handler = _handler, handler
    return previous


def report(exc: BaseException) -> None:
    """Tell the installed handler (if any) that a sink cannot make its output durable."""
    handler = _handler
    if handler is not None:
        handler(exc)
