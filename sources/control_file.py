"""Operator commands to the trading loop, kept as JSON Lines in ``trading.control_file``.

``qbtc control resume|pause|flatten --reason TEXT`` appends one line
``{"ts": ..., "command": ..., "reason": ..., "issued": ...}`` (``issued``: the
wall clock when it was given). The flow reads the file at start and again
whenever it grows; the trading loop applies each command at its first bar
close at or after ``ts`` and records it as a risk event (kind ``control``).
A command is the only way out of the kill switch's pause.

The file is an append-only log shared by every run, so each run applies only
the commands that are its own (:class:`ControlScope`): those dated inside its
event-time span, and, in a live run (``qbtc run``, ``qbtc stream``), those
issued after it started. Older commands are left alone and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import orjson

from schemas.records import CONTROL_COMMANDS as COMMANDS


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """One operator command: when (event-time ms), what and why."""

    ts: int
    command: str
    reason: str
    issued: int | None = None
    """Wall-clock ms when ``qbtc control`` wrote it (None in files of older versions)."""


@dataclass(frozen=True, slots=True)
class ControlScope:
    """Which commands of the control file a run applies, and when.

    A command is the run's when its ``ts`` lies inside the run's event-time
    span (at or after the first bar; one dated after the last bar is never
    due), or, in a live run (``live_since``: the wall-clock ms it started),
    when it was issued after the run started: then it applies at the loop's
    next bar close, or at its ``--at`` time when one was given.

    >>> scope = ControlScope(live_since=1_000)
    >>> old, new = ControlCommand(500, "pause", "x", 500), ControlCommand(2_000, "pause", "x", 2_000)
    >>> scope.due(old, span_start=100, now=150), scope.due(new, span_start=100, now=150)
    (500, 150)
    >>> ControlScope().due(ControlCommand(50, "pause", "x", 2_000), span_start=100, now=150) is None
    True
    """

    live_since: int | None = None

    def due(self, cmd: ControlCommand, span_start: int, now: int) -> int | None:
        """The event time ``cmd`` applies at in this run, or None when it is not this run's."""
        if self.live_since is not None and cmd.issued is not None and cmd.issued >= self.live_since:
            return now if cmd.ts == cmd.issued else cmd.ts  # ts == issued: no --at given
        return cmd.ts if cmd.ts >= span_start else None


@dataclass(frozen=True, slots=True)
class BadLine:
    """An unreadable line of the control file: its 1-based number, its bytes and what is wrong."""

    line: int
    raw: bytes
    problem: str

    def source(self, path: str) -> str:
        """The dead-letter source of this line, ``path:line`` (unique per line, as for tick files)."""
        return f"{path}:{self.line}"


def append_command(
    path: str, command: str, reason: str, ts: int, issued: int | None = None
) -> ControlCommand:
    """Append a command to the control file (created with its directory).

    ``ts`` is when it applies (event time), ``issued`` the wall clock now
    (what makes it a live run's, see :class:`ControlScope`).
    """
    if command not in COMMANDS:
        msg = f"unknown control command {command!r} (expected {', '.join(COMMANDS)})"
        raise ValueError(msg)
    if not reason.strip():
        msg = "a control command needs a reason"
        raise ValueError(msg)
    cmd = ControlCommand(ts, command, reason.strip(), issued)
    line = {"ts": cmd.ts, "command": cmd.command, "reason": cmd.reason}
    if issued is not None:
        line["issued"] = issued
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(orjson.dumps(line) + b"\n")
    return cmd


class ControlReader:
    """Reads the commands appended to a control file since the last read.

    ``offset`` (bytes consumed) is part of the flow's state, so a restarted
    flow does not apply a command twice. Unreadable lines are skipped and
    reported by :meth:`read_numbered` as :class:`BadLine` s (with their
    line numbers, counted from the file's start), by :meth:`read` as
    ``(line, problem)`` pairs.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "control.jsonl")
    >>> r = ControlReader(path)
    >>> r.read()
    ([], [])
    >>> _ = append_command(path, "resume", "checked the book", 5)
    >>> r.read()[0]
    [ControlCommand(ts=5, command='resume', reason='checked the book', issued=None)]
    >>> r.read()
    ([], [])
    """

    def __init__(self, path: str, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def read(self) -> tuple[list[ControlCommand], list[tuple[bytes, str]]]:
        """New commands, and the new unreadable lines as ``(bytes, problem)``."""
        commands, bad = self.read_numbered()
        return commands, [(b.raw, b.problem) for b in bad]

    def read_numbered(self) -> tuple[list[ControlCommand], list[BadLine]]:
        """New commands, and the new unreadable lines with their line numbers."""
        start = self.offset
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return [], []
        if size <= self.offset:
            return [], []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        end = data.rfind(b"\n") + 1  # a line still being written waits for its newline
        self.offset += end
        out: list[ControlCommand] = []
        bad: list[tuple[int, bytes, str]] = []
        for k, text in enumerate(data[:end].split(b"\n")[:-1]):
            line = text.rstrip(b"\r")
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                issued = obj.get("issued")
                if issued is not None and (isinstance(issued, bool) or not isinstance(issued, int)):
                    raise TypeError(f"issued must be an integer (epoch ms), got {issued!r}")  # noqa: EM102
                cmd = ControlCommand(int(obj["ts"]), str(obj["command"]), str(obj["reason"]), issued)
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
                bad.append((k, line, f"unreadable control command: {exc}"))
                continue
            if cmd.command not in COMMANDS:
                bad.append((k, line, f"unknown control command {cmd.command!r}"))
                continue
            out.append(cmd)
        if not bad:
            return out, []
        before = self._lines_before(start)  # only when a line is bad: the file is read from its start
        return out, [BadLine(before + k + 1, line, problem) for k, line, problem in bad]

    def _lines_before(self, offset: int) -> int:
        """Lines in the file's first ``offset`` bytes (the reader keeps bytes, not lines, as state)."""
        with open(self.path, "rb") as fh:
            return fh.read(offset).count(b"\n")
