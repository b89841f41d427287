"""Memory soak benchmark: resident memory as the stream grows (prints figures; not a test).

Usage: python tests/bench_memory.py [--ticks 11000000] [--rate 1000] [--symbols 10]
                                    [--every 1000000] [--case null|trade|both]
                                    [--profile 2000000,8000000] [--set SECTION.KEY=VALUE ...]

The market is the simulator's (``sources.simulator``, seed 11) at a fixed trade rate
(``--rate`` ticks/s of event time, the ``[simulator]`` default), so a longer stream is a longer
span of market time, not a denser one: ``--ticks`` / ``--rate`` seconds of it.

  (i)  null: ``qbtc replay --null-sink`` of a tick CSV written by ``sources.simulator.write_csv``
       into a temporary directory (the file reader, the market steps, a null sink)
  (ii) trade: ``qbtc run --trade`` into a fresh chDB store in the temporary directory (the
       simulator as the source, the market steps, the trading loop, the chDB store)

Each case runs in a fresh subprocess (its RSS is its own). Every ``--every`` ticks it prints the
records read and the process's resident set size, current (VmRSS) and peak (VmHWM), from
/proc/self/status, sampled by the replay's progress callback (at most once a second, off the
per-tick path; so a row is the first sample at or after its million). Row 0 is after the imports,
before the flow starts; the trade case adds chDB's own count of its memory (system.metrics
MemoryTracking) and its active parts. A final line per case gives RSS at the first million, at
the last, and the growth in percent (peak, and current). ``--profile A,B`` also traces
allocations (tracemalloc, which slows the run several times and adds its own overhead to RSS),
prints the 25 source lines whose live memory grew most between tick A and tick B, and the files
holding the most at B.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

CASES = ("null", "trade")
CHDB_MEMORY = "SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'"


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    cur = peak = 0.0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


class Sampler:
    """The progress callback: one RSS row per ``every`` records (and the tracemalloc snapshots)."""

    def __init__(self, every: int, profile: tuple[int, ...], store=None) -> None:
        self.every = every
        self.store = store
        self.next_row = every
        self.rows: list[tuple[int, float, float]] = []
        self.profile = list(profile)
        self.snapshots: list = []
        self.started = time.perf_counter()

    def row(self, records: int) -> None:
        cur, peak = rss_mb()
        self.rows.append((records, cur, peak))
        secs = time.perf_counter() - self.started
        engine = ""
        if self.store is not None:  # what chDB says it holds: tracked memory, active parts
            tracked = self.store.query(CHDB_MEMORY).result_rows[0][0] / 1e6
            parts = self.store.query("SELECT count() FROM system.parts WHERE active").result_rows[0][0]
            engine = f" {tracked:10.0f} {parts:7,}"
        print(f"{records:>14,} {cur:10.0f} {peak:10.0f} {secs:9.0f}{engine}", flush=True)

    def __call__(self, progress) -> None:
        n = progress.records
        if n >= self.next_row:
            self.row(n)
            self.next_row = (n // self.every + 1) * self.every
        if self.profile and n >= self.profile[0]:
            import tracemalloc

            self.profile.pop(0)
            self.snapshots.append(tracemalloc.take_snapshot())
            print(f"{'':>14} tracemalloc snapshot at {n:,}", flush=True)


def child(args) -> None:
    """One case in this process: replay, print the RSS rows and the final line."""
    profile = tuple(int(x) for x in args.profile.split(",")) if args.profile else ()
    if profile:
        import tracemalloc

        tracemalloc.start(args.frames)
    from flows.config import load_settings
    from flows.inputs import file_inputs, simulator_inputs
    from flows.pipeline import TradingReport, replay
    from sources.chunk_source import Progress, wall_ms

    sampler = Sampler(args.every, profile)
    engine = f" {'chDB MB':>10} {'parts':>7}" if args.case == "trade" else ""
    print(f"{'records':>14} {'RSS MB':>10} {'peak MB':>10} {'seconds':>9}{engine}")
    if args.case == "null":
        settings = load_settings(None, args.overrides)
        inputs, total = file_inputs([args.csv], settings)
        progress = Progress(total_bytes=total, report=sampler)
        sampler.row(0)
        replay(inputs, settings, None, progress)
    else:
        sim = [
            f"simulator.symbols={args.symbols}",
            f"simulator.seed={args.seed}",
            f"simulator.trades_per_s={args.rate}",
            f"simulator.duration_s={args.ticks / args.rate}",
        ]
        settings = load_settings(None, sim + args.overrides)
        inputs, expected = simulator_inputs(settings)
        progress = Progress(total_bytes=expected, report=sampler)
        dsn = f"chdb://{args.tmp}/bench.chdb"
        from sinks.clickhouse_store import Store

        sampler.store = Store(dsn)
        sampler.row(0)
        replay(inputs, settings, dsn, progress, trade=True, report=TradingReport(), live_since=wall_ms())
    if sampler.rows[-1][0] != progress.records:
        sampler.row(progress.records)
    if len(sampler.snapshots) >= 2:
        print(f"\ntracemalloc: the lines whose live memory grew most, tick {profile[0]:,} -> {profile[1]:,}")
        for stat in sampler.snapshots[1].compare_to(sampler.snapshots[0], "traceback")[:25]:
            print(f"{stat.size_diff / 1e6:+9.1f} MB {stat.count_diff:+10,} blocks")
            for line in stat.traceback.format()[-2 * args.frames :]:
                print(f"      {line}")
    if sampler.snapshots:
        print(f"\ntracemalloc: the largest live allocations at tick {profile[-1]:,}, by file")
        for stat in sampler.snapshots[-1].statistics("filename")[:15]:
            print(f"{stat.size / 1e6:9.1f} MB {stat.count:10,} blocks  {stat.traceback[0].filename}")
    rows = [r for r in sampler.rows if r[0] >= args.every] or sampler.rows
    first, last = rows[0], rows[-1]
    print(
        f"RESULT {args.case} {first[0]} {first[1]:.0f} {first[2]:.0f} {last[0]} {last[1]:.0f} {last[2]:.0f}",
        flush=True,
    )


def run_case(case: str, args, tmp: str, csv_path: str) -> tuple | None:
    cmd = [sys.executable, __file__, "--child", case, "--tmp", tmp, "--csv", csv_path]
    cmd += ["--ticks", str(args.ticks), "--rate", str(args.rate), "--symbols", str(args.symbols)]
    cmd += ["--seed", str(args.seed), "--every", str(args.every), "--frames", str(args.frames)]
    if args.profile:
        cmd += ["--profile", args.profile]
    for o in args.overrides:
        cmd += ["--set", o]
    print(f"\n({'i' if case == 'null' else 'ii'}) {case}", flush=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__))
    )
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = tuple(float(x) for x in line.split()[2:])
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0:
        print(f"{case}: exit code {proc.returncode}")
        return None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ticks", type=int, default=11_000_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="ticks per second of event time")
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--every", type=int, default=1_000_000, help="records between RSS rows")
    parser.add_argument("--case", choices=(*CASES, "both"), default="both")
    parser.add_argument("--profile", metavar="A,B", help="tracemalloc snapshots at ticks A and B, diffed")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames per allocation")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, os.getcwd())
        args.case = args.child
        child(args)
        return
    cases = CASES if args.case == "both" else (args.case,)
    tmp = tempfile.mkdtemp(prefix="qbtc-bench-memory-")
    try:
        csv_path = os.path.join(tmp, "ticks.csv")
        duration = args.ticks / args.rate
        market = f"{args.symbols} symbols, {args.rate:,.0f} ticks/s, {duration:,.0f} s"
        print(f"market: simulator seed {args.seed}, {market}")
        if "null" in cases:
            from sources.simulator import DEFAULT_SYMBOLS, SimulatorSettings, write_csv

            start = time.perf_counter()
            sim = SimulatorSettings(
                symbols=DEFAULT_SYMBOLS[: args.symbols],
                duration_s=duration,
                trades_per_s=args.rate,
                seed=args.seed,
            )
            rows = write_csv(csv_path, sim)
            size = os.path.getsize(csv_path) / 1e6
            print(
                f"input: {rows:,} ticks, {size:,.0f} MB CSV, written in {time.perf_counter() - start:.0f} s"
            )
        print(f"settings: {args.overrides or 'defaults'}; machine: {os.cpu_count()} cores; 1 worker")
        results = {case: run_case(case, args, tmp, csv_path) for case in cases}
        print(
            f"\n{'case':<8}{'ticks':>12}{'RSS MB':>8}{'peak MB':>9}{'ticks':>13}{'RSS MB':>8}{'peak MB':>9}"
            f"{'growth RSS':>12}{'growth peak':>13}"
        )
        for case, r in results.items():
            if r is None:
                print(f"{case:<8} failed")
                continue
            n0, cur0, peak0, n1, cur1, peak1 = r
            print(
                f"{case:<8}{n0:>12,.0f}{cur0:>8.0f}{peak0:>9.0f}{n1:>13,.0f}{cur1:>8.0f}{peak1:>9.0f}"
                f"{100 * (cur1 / cur0 - 1):>+11.1f}%{100 * (peak1 / peak0 - 1):>+12.1f}%"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
