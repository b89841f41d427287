"""Operator commands to the trading loop, kept as JSON Lines in ``trading.control_file``.

``qbtc control resume|pause|flatten --reason TEXT`` appends one line
``{"ts": ..., "command": ..., "reason": ...}``. The flow reads the file at
start and again whenever it grows; the trading loop applies each command at
its first bar close at or after ``ts`` and records it as a risk event (kind
``control``). A command is the only way out of the kill switch's pause. The
file is an append-only log: a replay applies the commands whose ``ts`` falls
inside its data, so delete the file (or point the setting elsewhere) to
start clean.
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


@dataclass(frozen=True, slots=True)
class BadLine:
    """An unreadable line of the control file: its 1-based number, its bytes and what is wrong."""

    line: int
    raw: bytes
    problem: str

    def source(self, path: str) -> str:
        """The dead-letter source of this line, ``path:line`` (unique per line, as for tick files)."""
        return f"{path}:{self.line}"


def append_command(path: str, command: str, reason: str, ts: int) -> ControlCommand:
    """Append a command to the control file (created with its directory)."""
    if command not in COMMANDS:
        msg = f"unknown control command {command!r} (expected {', '.join(COMMANDS)})"
        raise ValueError(msg)
    if not reason.strip():
        msg = "a control command needs a reason"
        raise ValueError(msg)
    cmd = ControlCommand(ts, command, reason.strip())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(orjson.dumps({"ts": cmd.ts, "command": cmd.command, "reason": cmd.reason}) + b"\n")
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
    [ControlCommand(ts=5, command='resume', reason='checked the book')]
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
                cmd = ControlCommand(int(obj["ts"]), str(obj["command"]), str(obj["reason"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
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
