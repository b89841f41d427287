"""The replay source: chunk factories (files, simulated streams) read in order, and the run's progress.

A :class:`ChunkSource` partitions a list of chunk factories (one per file or
simulated stream); each partition snapshots how many lines it consumed, so a
resumed run re-reads nothing. :class:`Progress` is the run's shared count of
records read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from sources.tick_files import Chunk


def wall_ms() -> int:
    """Wall-clock epoch ms: the one place the flow reads the clock."""
    return time.time_ns() // 1_000_000


@dataclass
class Progress:
    """Shared progress of a run: records read, bytes consumed.

    ``skipped`` counts the records a replay's ``--from-ts``/``--to-ts`` left
    out (not in ``records``, not dead letters). ``stop_requested`` (set by
    a Ctrl-C, see ``flows.interrupt``) ends the input after the chunk being
    read, as if the files ended there, so the flow flushes what it read.
    """

    total_bytes: int = 0
    done_bytes: int = 0
    records: int = 0
    ticks_dead_on_read: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.perf_counter)
    report: Callable[[Progress], None] | None = None
    last_report: float = 0.0
    stop_requested: bool = False

    def tick(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.report is not None and (force or now - self.last_report >= 1.0):
            self.last_report = now
            self.report(self)


# -- source -------------------------------------------------------------------


ChunkFactory = Callable[[int], Iterator[Chunk]]
"""Makes an input's chunks, resuming at a chunk's ``resume_at``."""


class _ChunkPartition(StatefulSourcePartition):
    def __init__(self, inputs: list[ChunkFactory], progress: Progress, resume) -> None:
        self.inputs = inputs
        self.progress = progress
        self.index, self.skip = resume if resume is not None else (0, 0)
        self.offset_base = 0
        self.it: Iterator[Chunk] | None = None

    def next_batch(self) -> list[Chunk]:
        while self.index < len(self.inputs) and not self.progress.stop_requested:
            if self.it is None:
                self.it = iter(self.inputs[self.index](self.skip))
            chunk = next(self.it, None)
            if chunk is None:
                self.offset_base = self.progress.done_bytes
                self.index += 1
                self.it = None
                self.skip = 0
                continue
            p = self.progress
            p.records += chunk.records
            p.done_bytes = self.offset_base + chunk.position
            p.ticks_dead_on_read += len(chunk.dead)
            p.skipped += chunk.skipped
            p.tick()
            self.skip = chunk.resume_at
            return [chunk]
        raise StopIteration

    def snapshot(self):
        return (self.index, self.skip)


class ChunkSource(FixedPartitionedSource):
    """All inputs, in order, as one partition (so replays are deterministic)."""

    def __init__(self, inputs: list[ChunkFactory], progress: Progress) -> None:
        self.inputs = inputs
        self.progress = progress

    def list_parts(self) -> list[str]:
        return ["inputs"]

    def build_part(self, step_id: str, for_part: str, resume_state) -> _ChunkPartition:
        return _ChunkPartition(self.inputs, self.progress, resume_state)
