"""Correlation throughput: the full matrix at every 1-second bar (prints figures; not a test).

Usage: python tests/bench_correlations.py [--symbols 100 500] [--seconds 300] [--window 300]
                                          [--pipeline-seconds 600] [--skip-pipeline] [--store]
                                          [--before REV]

For each symbol count N, in one run:
  (a) the correlation grid alone (``CorrelationGrid.update_blocks``), fed one
      seeded random bar per symbol and grid second, corr_every = 1, window Wc:
      grid seconds per wall second ("x real time") and pairs/s;
  (b) the same with every row made a ``Correlation`` record (``update``: what a
      consumer that reads records one by one pays on top);
  (c) the baseline: the naive recomputation, ``np.corrcoef`` of the whole
      window at every grid second (same N, Wc and seconds, upper triangle kept);
  (d) unless --skip-pipeline: the whole pipeline (read, bars, features, grid)
      into the null sink, on a simulated tick CSV of N symbols at ~1.5 trades
      per symbol and second, with features.bar_interval=1 and corr_every=1,
      then the same with corr_every=3600 (correlations almost never);
  (e) with --store: (d) into chDB (every row written; slow and disk-hungry at 500 symbols);
Prints x real time for each and the ratios a/c, b/c, d(every=1)/d(every=3600) and e/d.
The grid's x real time counts only grid seconds with a full window (after Wc of warm-up);
the pipeline's counts the whole market, warm-up included.
``--before REV`` also times (a) for the grid of git revision REV (its
``correlation_grid.py`` loaded from git; slow at 500 symbols: use fewer --seconds).
Everything runs in this process on one worker, BLAS on one thread (set
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS to change that).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types

# one core: BLAS (the grid's refresh, the baseline's np.corrcoef) on one thread unless told otherwise
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from flows.config import load_settings  # noqa: E402
from flows.inputs import file_inputs  # noqa: E402
from flows.pipeline import replay  # noqa: E402
from operators.features.correlation_grid import CorrelationGrid, CorrelationSettings  # noqa: E402
from sources.chunk_source import Progress  # noqa: E402
from sources.simulator import SimulatorSettings, write_csv  # noqa: E402

TRADES_PER_SYMBOL_S = 1.5


def names(n: int) -> list[str]:
    return [f"S{i:03d}/USDT" for i in range(n)]


def closes(n: int, seconds: int, seed: int = 7) -> np.ndarray:
    """Seeded random-walk closes, one row per grid second; a tenth of the symbols flat for a while."""
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0, 1e-3, (seconds, n))
    r[: seconds // 3, : n // 10] = 0.0  # some symbols constant at first (no rows for them then)
    return 100.0 * np.exp(np.cumsum(r, axis=0))


def feed(grid, blocks: bool, n: int, seconds: int, window: int) -> tuple[float, int]:
    """One bar per symbol and grid second, each symbol final through it.

    The first ``window`` seconds (no full window yet) are fed untimed; returns
    the seconds taken by the next ``seconds`` grid seconds and the rows made.
    """
    symbols = names(n)
    c = closes(n, window + seconds)
    update = grid.update_blocks if blocks else grid.update
    rows = 0
    start = 0.0
    for k in range(window + seconds):
        if k == window:
            start = time.perf_counter()
        row = c[k].tolist()
        for i, s in enumerate(symbols):
            out = update(s, [(k, row[i])], k)
            rows += sum(map(len, out)) if blocks else len(out)
    return time.perf_counter() - start, rows


def grid_run(cls, blocks: bool, n: int, seconds: int, window: int) -> tuple[float, int]:
    return feed(cls(CorrelationSettings(1000, window, 1)), blocks, n, seconds, window)


def naive(n: int, seconds: int, window: int) -> tuple[float, int]:
    """np.corrcoef of the whole window at every grid second, non-constant columns only."""
    c = closes(n, window + seconds)
    r = np.diff(np.log(c), axis=0)
    start = time.perf_counter()
    rows = 0
    for k in range(window, window + seconds):
        x = r[k - window : k]
        keep = ~(x == x[0]).all(axis=0)
        corr = np.clip(np.corrcoef(x[:, keep], rowvar=False), -1.0, 1.0)
        rows += len(corr[np.triu_indices(int(keep.sum()), 1)])
    return time.perf_counter() - start, rows


def old_grid(rev: str):
    """``CorrelationGrid`` of git revision ``rev`` (with that revision's RollingCorrelation)."""
    root = os.path.join(os.path.dirname(__file__), "..")
    mods = {}
    for name in ("rolling_correlation", "correlation_grid"):
        src = subprocess.run(
            ["git", "show", f"{rev}:operators/features/{name}.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if name == "correlation_grid":
            src = src.replace(
                "from operators.features.rolling_correlation import", "from _old_rolling_correlation import"
            )
        mod = types.ModuleType(f"_old_{name}")
        sys.modules[mod.__name__] = mod
        exec(compile(src, f"{rev}:{name}.py", "exec"), mod.__dict__)
        mods[name] = mod
    return mods["correlation_grid"].CorrelationGrid


def simulated(path: str, n: int, seconds: int) -> int:
    sim = SimulatorSettings(
        symbols=tuple(names(n)), duration_s=float(seconds), trades_per_s=TRADES_PER_SYMBOL_S * n, seed=11
    )
    return write_csv(path, sim)


def pipeline(path: str, every: int, window: int, dsn: str | None = None) -> tuple[float, int]:
    overrides = ["features.bar_interval=1", f"features.corr_every={every}", f"features.corr_window={window}"]
    settings = load_settings(None, overrides)
    inputs, total = file_inputs([path], settings)
    progress = Progress(total_bytes=total)
    start = time.perf_counter()
    replay(inputs, settings, dsn, progress)
    return time.perf_counter() - start, progress.records


def line(label: str, secs: float, grid_s: float, rows: int | None = None) -> float:
    x = grid_s / secs
    extra = f"{rows / secs:>14,.0f} pairs/s" if rows is not None else ""
    print(f"  {label:<54}{secs:8.2f} s {x:9.1f}x real time{extra}", flush=True)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--symbols", type=int, nargs="+", default=[100, 500])
    parser.add_argument(
        "--seconds", type=int, default=300, help="timed grid seconds (after a window of warm-up)"
    )
    parser.add_argument("--window", type=int, default=300)
    parser.add_argument("--pipeline-seconds", type=int, default=600, help="seconds of simulated market")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--store", action="store_true", help="also run the pipeline into chDB")
    parser.add_argument("--before", metavar="REV", help="also time the grid of this git revision")
    args = parser.parse_args()
    secs, w = args.seconds, args.window
    print(f"machine: {os.cpu_count()} cores; 1 worker; window {w}, corr_every 1, 1-second bars")
    print(f"grid alone: {w} grid seconds of warm-up, then {secs} timed grid seconds\n")
    tmp = tempfile.mkdtemp(prefix="qbtc-bench-corr-")
    try:
        for n in args.symbols:
            print(f"N = {n} symbols ({n * (n - 1) // 2:,} pairs per grid second when all are ready)")
            a = line(
                "(a) grid, columns (update_blocks)", *_swap(grid_run(CorrelationGrid, True, n, secs, w), secs)
            )
            b = line(
                "(b) grid, Correlation records (update)",
                *_swap(grid_run(CorrelationGrid, False, n, secs, w), secs),
            )
            c = line("(c) baseline: np.corrcoef of the window every second", *_swap(naive(n, secs, w), secs))
            if args.before:
                old = old_grid(args.before)
                x = line(
                    f"    grid of {args.before} (records)", *_swap(grid_run(old, False, n, secs, w), secs)
                )
                print(f"  a/({args.before}) = {a / x:.1f}")
            print(f"  a/c = {a / c:.2f}   b/c = {b / c:.2f}")
            if not args.skip_pipeline:
                path = os.path.join(tmp, f"ticks-{n}.csv")
                ticks = simulated(path, n, args.pipeline_seconds)
                grid_s = args.pipeline_seconds
                print(f"  pipeline input: {ticks:,} ticks, {n} symbols, {grid_s} s of market")
                d1, n1 = pipeline(path, 1, w)
                x1 = line(f"(d) pipeline -> null sink, corr_every=1 ({n1:,} ticks)", d1, grid_s)
                d2, n2 = pipeline(path, 3600, w)
                x2 = line(f"    pipeline -> null sink, corr_every=3600 ({n2:,} ticks)", d2, grid_s)
                print(f"  d(every=1)/d(every=3600) = {x1 / x2:.2f}")
                if args.store:
                    # chDB opens one path per process: every N writes into the same store
                    e, ne = pipeline(path, 1, w, f"chdb://{tmp}/bench.chdb")
                    xe = line(f"(e) pipeline -> chDB, corr_every=1 ({ne:,} ticks)", e, grid_s)
                    print(f"  e/d(every=1) = {xe / x1:.2f}")
            print()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap(result: tuple[float, int], grid_s: int) -> tuple[float, int, int]:
    secs, rows = result
    return secs, grid_s, rows


if __name__ == "__main__":
    main()
