"""Throughput benchmark (prints figures; not a test).

Usage: python tests/bench_pipeline.py [--ticks 2000000] [--symbols 10] [--skip-naive]
                                      [--skip-process] [--startup-runs 5]

On one generated tick CSV, in one run:
  (a) baseline: Python's csv module reading the file, converting each field to its type
  (b) the full pipeline into a null sink
  (c) the full pipeline into chDB
  (d) a naive recomputation: pandas reads the file, then every feature and
      correlation is recomputed from its whole window at every bar
  (e) the whole process: ``qbtc replay FILE --store chdb://...`` as a command,
      timed from launch to exit (interpreter, imports, store, flow, summary)
Prints ticks/s for each and the ratios b/a, c/a, c/d, e/a.

Start-up (unless --skip-process): ``qbtc replay`` of a 1,000-tick file into a
fresh chDB store, from launch to exit, median of --startup-runs, beside a bare
interpreter (``python -c pass``) measured the same way. The project's modules
are byte-compiled first, as an installed package is (this machine's
PYTHONDONTWRITEBYTECODE=1 would otherwise make every run compile them).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))

import spec_reference as ref  # noqa: E402

from flows.config import load_settings  # noqa: E402
from flows.inputs import file_inputs  # noqa: E402
from flows.pipeline import replay  # noqa: E402
from sources.chunk_source import Progress  # noqa: E402
from sources.simulator import DEFAULT_SYMBOLS, SimulatorSettings, write_csv  # noqa: E402


def baseline(path: str) -> int:
    n = 0
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for row in reader:
            (int(row[0]), row[1], float(row[2]), float(row[3]), row[4], row[5], row[6])
            n += 1
    return n


def pipeline(path: str, dsn: str | None, overrides: list[str]) -> int:
    settings = load_settings(None, overrides)
    inputs, total = file_inputs([path], settings)
    progress = Progress(total_bytes=total)
    replay(inputs, settings, dsn, progress)
    return progress.records


def naive(path: str, overrides: list[str]) -> int:
    f = load_settings(None, overrides).features
    ticks = pd.read_csv(path, dtype={"trade_id": str})
    d = f.bar_interval * 1000
    bars = ref.bars(ticks, d)
    ref.features(bars, f.window, f.qvar_entropy_coef)
    ref.correlations(bars, d, f.corr_window, f.corr_every)
    return len(ticks)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def whole_process(path: str, dsn: str, overrides: list[str] = ()) -> float:
    """Seconds of ``qbtc replay PATH --store DSN --quiet`` from launch to exit."""
    cmd = [sys.executable, "-m", "flows.cli", "replay", path, "--store", dsn, "--quiet", "--fresh"]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        msg = f"qbtc replay exited {proc.returncode}: {proc.stderr[-2000:]}"
        raise RuntimeError(msg)
    return secs


def compile_project() -> None:
    names = ["flows", "sources", "sinks", "operators", "schemas", "infra"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": ""}
    cmd = [sys.executable, "-m", "compileall", "-q", *names]
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, check=True)


def startup(tmp: str, runs: int) -> None:
    path = os.path.join(tmp, "small.csv")
    sim = SimulatorSettings(symbols=DEFAULT_SYMBOLS[:3], duration_s=100.0, trades_per_s=10.0, seed=3)
    rows = write_csv(path, sim)
    compile_project()
    bare, whole = [], []
    for i in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
        whole.append(whole_process(path, f"chdb://{tmp}/small-{i}.chdb"))
    b, w = statistics.median(bare), statistics.median(whole)
    print(f"\nstart-up, median of {runs}: qbtc replay of {rows:,} ticks into a new chDB store {w:.2f} s")
    print(f"  (python -c pass {b:.3f} s; replay / bare interpreter = {w / b:.1f})")


def timed(label: str, fn, *args) -> float:
    start = time.perf_counter()
    n = fn(*args)
    secs = time.perf_counter() - start
    rate = n / secs
    print(f"{label:<44}{n:>12,} ticks {secs:8.2f} s {rate:>14,.0f} ticks/s", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ticks", type=int, default=2_000_000)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-process", action="store_true", help="skip (e) and the start-up figures")
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="qbtc-bench-")
    try:
        path = os.path.join(tmp, "ticks.csv")
        duration = 1800.0
        sim = SimulatorSettings(
            symbols=DEFAULT_SYMBOLS[: args.symbols],
            duration_s=duration,
            trades_per_s=args.ticks / duration,
            seed=11,
        )
        rows = write_csv(path, sim)
        size = os.path.getsize(path) / 1e6
        print(f"input: {rows:,} ticks, {args.symbols} symbols, {duration:.0f} s of market, {size:.0f} MB CSV")
        print(f"settings: {args.overrides or 'defaults'}; machine: {os.cpu_count()} cores; 1 worker\n")
        a = timed("(a) csv module + field conversion", baseline, path)
        b = timed("(b) pipeline -> null sink", pipeline, path, None, args.overrides)
        c = timed("(c) pipeline -> chDB", pipeline, path, f"chdb://{tmp}/bench.chdb", args.overrides)
        print(f"\nb/a = {b / a:.2f}   c/a = {c / a:.2f}")
        if not args.skip_process:
            compile_project()
            secs = whole_process(path, f"chdb://{tmp}/whole.chdb", args.overrides)
            e = rows / secs
            label = "(e) qbtc replay, whole process -> chDB"
            print(f"{label:<44}{rows:>12,} ticks {secs:8.2f} s {e:>14,.0f} ticks/s")
            print(f"e/a = {e / a:.2f}")
        if not args.skip_naive:
            d = timed("(d) naive pandas per-bar recomputation", naive, path, args.overrides)
            print(f"c/d = {c / d:.1f}x")
        if not args.skip_process:
            startup(tmp, args.startup_runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
