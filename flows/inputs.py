"""What feeds the dataflow: tick and candle files, the simulator, and the run's progress.

The chunk factories are read by ``sources.chunk_source.ChunkSource``; its
:class:`~sources.chunk_source.Progress` is shown on stderr by :func:`stderr_progress`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

from flows.config import ConfigError, Settings
from sources.chunk_source import ChunkFactory, Progress, wall_ms
from sources.tick_files import Chunk, TickFileReader
from sources.time_span import TimeSpan


def is_candle_file(path: str) -> bool:
    """A candle (OHLCV) file rather than ticks: a JSON array, or a CSV header with open/high/low/close."""
    import gzip

    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4096)
    except (OSError, EOFError):
        return False  # the tick reader reports the problem
    first = head.lstrip()[:1]
    if first == b"[":
        return True
    header = {
        c.strip().strip('"').lower() for c in head.split(b"\n", 1)[0].decode("utf-8", "replace").split(",")
    }
    return {"open", "high", "low", "close"} <= header and "price" not in header


def _candle_chunks(reader) -> ChunkFactory:
    def chunks(skip: int) -> Iterator[Chunk]:
        for c in reader.chunks(skip):
            yield Chunk(
                [],
                c.dead,
                c.records,
                c.position,
                c.resume_at,
                bars=tuple(c.bars),
                skipped=c.skipped,
                bar_sources=tuple(c.bar_sources),
            )

    return chunks


def input_origins(paths: list[str]) -> list[str]:
    """How dead-letter sources name each input, so that every record read has its own source.

    An input's path; for a path given again, ``path#i`` with ``i`` its
    1-based position in ``paths`` (a record of it is ``path#i:line``).

    >>> input_origins(["a.csv", "b.csv", "a.csv", "a.csv"])
    ['a.csv', 'b.csv', 'a.csv#3', 'a.csv#4']
    """
    taken, seen, out = set(paths), set(), []
    for i, path in enumerate(paths, 1):
        origin = path
        if path in seen:
            origin = f"{path}#{i}"
            while origin in taken:  # a file of that very name is read too
                origin += f"#{i}"
        seen.add(path)
        taken.add(origin)
        out.append(origin)
    return out


def stderr_warning(text: str) -> None:
    """One warning line on stderr."""
    sys.stderr.write(f"qbtc: warning: {text}\n")
    sys.stderr.flush()


def file_inputs(
    paths: list[str],
    settings: Settings,
    span: TimeSpan | None = None,
    warn: Callable[[str], None] = stderr_warning,
) -> tuple[list[ChunkFactory], int]:
    """Chunk factories for tick or candle files, and their total size in bytes.

    Candle files (see ``sources.candle_files``) give finished bars on the
    ``features.bar_interval`` grid; tick files give ticks. Records whose time
    is outside ``span`` are skipped at the source (``Chunk.skipped``); a
    symbol outside a non-empty ``input.symbols`` is a dead letter. A path
    given twice is read twice, its sources named by :func:`input_origins`.
    A file without records (empty, blank lines or a header only, ``[]``) is
    read as 0 records, and ``warn`` is told its name, in every format alike.
    """
    from sources.candle_files import CandleFileReader, CandleSettings

    span = span if span is not None else TimeSpan()
    symbols = frozenset(settings.input.symbols)
    factories: list[ChunkFactory] = []
    size = 0
    for p, origin in zip(paths, input_origins(paths), strict=True):
        if is_candle_file(p):
            interval = settings.features.bar_interval * 1000
            candles = CandleSettings(interval, settings.input.exchange, span=span, symbols=symbols)
            reader = CandleFileReader(p, candles, wall_ms, origin)
            _ = reader.source_interval_ms  # reads the file now: an unusable one fails before the flow starts
            factories.append(_candle_chunks(reader))
        else:
            block = settings.input.block_bytes
            reader = TickFileReader(p, settings.input.exchange, wall_ms, block, span, symbols, origin)
            factories.append(reader.chunks)
        if reader.empty:
            warn(f"{origin}: no records (an empty file)")
        size += reader.size
    return factories, size


def simulator_settings(settings: Settings):
    """The simulator's settings from the ``[simulator]`` config section."""
    from sources.simulator import DEFAULT_SYMBOLS, SimulatorSettings

    sim = settings.simulator
    if sim.symbols > len(DEFAULT_SYMBOLS):
        msg = f"simulator.symbols must be <= {len(DEFAULT_SYMBOLS)}"
        raise ConfigError(msg)
    return SimulatorSettings(
        symbols=DEFAULT_SYMBOLS[: sim.symbols],
        seed=sim.seed,
        duration_s=sim.duration_s,
        trades_per_s=sim.trades_per_s,
    )


def simulator_inputs(settings: Settings) -> tuple[list[ChunkFactory], int]:
    """The simulator as one input, and its expected tick count (for progress)."""
    from sources.simulator import simulate

    sim = simulator_settings(settings)

    def chunks(skip: int) -> Iterator[Chunk]:
        done = 0
        for batches in simulate(sim):
            n = sum(len(b) for b in batches)
            done += n
            if done <= skip:
                continue
            yield Chunk(batches, [], n, done, done)

    return [chunks], int(sim.trades_per_s * sim.duration_s)


def stderr_progress(p: Progress) -> None:
    """Print a one-line progress report to stderr."""
    secs = max(time.perf_counter() - p.started, 1e-9)
    pct = f"{min(100.0, 100.0 * p.done_bytes / p.total_bytes):5.1f}% " if p.total_bytes else ""
    end = "\r" if sys.stderr.isatty() else "\n"
    skipped = f", {p.skipped:,} outside --from-ts/--to-ts skipped" if p.skipped else ""
    sys.stderr.write(f"qbtc: {pct}{p.records:,} records, {p.records / secs:,.0f} rec/s{skipped}{end}")
    sys.stderr.flush()
