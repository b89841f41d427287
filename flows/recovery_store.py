"""Bytewax's SQLite recovery partitions: drop what an interrupted execution left behind.

Bytewax 0.21 resumes from the epoch every worker had finished (the "resume
epoch") and loads, per state key, the newest snapshot *before* it. An
execution killed mid-way has usually written snapshots at epochs at or after
that resume epoch as well. The next execution redoes those epochs, but it
overwrites a key's stale snapshot only if the key changes in the same epoch
again; a key that does not (a partition read in other batches this time, a
symbol whose state was not loaded) keeps a snapshot of a future that never
committed. Once the new execution's frontier passes that epoch, a later
resume loads the stale snapshot, which disagrees with the other keys: the
crash test saw a symbol's state that had already counted a batch while its
input partition resumed before that batch, so the batch came back as
duplicates and its rows never reached the store. Bytewax's own garbage
collection can likewise keep the stale snapshot and delete the good one.

:func:`discard_unfinished` removes every snapshot at or after the resume
epoch before the flow starts, so what loads is exactly the committed state.
It computes the resume epoch as Bytewax does (``src/recovery.rs``,
``resume_from``). Run it before Bytewax opens the directory, in one process
only (the others connect to it before they read any snapshot).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from schemas.errors import UsageProblem


class RecoveryDirError(UsageProblem):
    """A recovery directory whose partitions cannot be read as a whole."""


def _read(path: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        return conn.execute(sql).fetchall()


def resume_epoch(db_dir: str | Path) -> int | None:
    """The epoch Bytewax will resume from (None for a directory never run).

    Every partition of the directory must be present.
    """
    files = sorted(Path(db_dir).glob("part-*.sqlite3"))
    if not files:
        return None
    parts: dict[int, int] = {}
    exs: dict[int, tuple[int, int]] = {}
    fronts: dict[tuple[int, int], int] = {}
    for f in files:
        for index, count in _read(f, "SELECT part_index, part_count FROM parts"):
            parts[index] = count
        for ex, workers, epoch in _read(f, "SELECT ex_num, worker_count, resume_epoch FROM exs"):
            exs[ex] = (workers, epoch)
        for ex, worker, front in _read(f, "SELECT ex_num, worker_index, worker_frontier FROM fronts"):
            fronts[ex, worker] = max(front, fronts.get((ex, worker), front))
    counts = set(parts.values())
    if len(counts) != 1 or set(parts) != set(range(counts.pop())):
        msg = f"{db_dir}: recovery partitions {sorted(parts)} are not a complete set"
        raise RecoveryDirError(msg)
    if not exs:
        return None
    last = max(exs)
    workers, started_at = exs[last]
    return min(max(started_at, fronts.get((last, w), started_at)) for w in range(workers))


def discard_unfinished(db_dir: str | Path) -> int:
    """Delete the snapshots at or after the resume epoch; returns how many.

    >>> import tempfile
    >>> discard_unfinished(tempfile.mkdtemp())
    0
    """
    epoch = resume_epoch(db_dir)
    if epoch is None:
        return 0
    removed = 0
    for f in sorted(Path(db_dir).glob("part-*.sqlite3")):
        with closing(sqlite3.connect(f, timeout=30)) as conn, conn:
            removed += conn.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (epoch,)).rowcount
    return removed
