"""Circuit-breaker reaction time benchmark (prints figures; not a test).

Usage: python tests/bench_trading.py [--runs 100] [--symbols 3] [--chunk 500]

Each run replays, through the embedded flow with trading on, a tick stream
in which a book holding 20% of equity in each symbol meets a crash: calm
trading for ``--calm`` seconds, then prices fall with a volatility a
hundred times higher. The crash takes the portfolio QVaR over the level-3
breaker; the loop then sends flatten orders.

The reaction time is wall time, from the moment the source hands the flow
the chunk holding the tick that completes the step in which QVaR crossed
level 3 (the loop judges a step once every symbol's bar is final) to the
moment the sink receives the flatten orders. It includes everything in
between: splitting, bars, features, the correlation grid, the loop, the
risk engine and the broker. Prints p50, p99 and max over the runs, and the
replay's throughput in the same runs for scale.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from bytewax.outputs import DynamicSink, StatelessSinkPartition

sys.path.insert(0, os.path.dirname(__file__))

from flows.config import load_settings  # noqa: E402
from flows.pipeline import TradingReport, build_flow, run_flow  # noqa: E402
from flows.trading_settings import trading_settings  # noqa: E402
from operators import trading_loop  # noqa: E402
from schemas.records import BUY, Fill  # noqa: E402
from schemas.tick_columns import TickColumns  # noqa: E402
from sources.chunk_source import ChunkSource, Progress  # noqa: E402
from sources.tick_files import Chunk  # noqa: E402

START = 1_700_000_000_000


def ticks(
    symbols: int, calm_s: int, crash_s: int, per_s: int, seed: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per symbol (name, ts, price): calm log returns of 1e-4 per tick, then a crash."""
    rng = np.random.default_rng(seed)
    out = []
    n_calm, n_crash = calm_s * per_s, crash_s * per_s
    for i in range(symbols):
        ts = START + np.arange(n_calm + n_crash, dtype=np.int64) * (1000 // per_s) + i
        common = rng.normal(0, 1, n_calm + n_crash)
        r = np.concatenate(
            [rng.normal(0, 1e-4, n_calm), rng.normal(-2e-3, 1e-2, n_crash) + 0.5e-2 * common[n_calm:]]
        )
        out.append((f"S{i}/USDT", ts, 100.0 * np.exp(np.cumsum(r))))
    return out


def chunks_of(series, chunk: int, emitted: list[tuple[float, int]]):
    """A chunk factory in time order; records (wall time, newest ts) of every chunk handed over."""
    ts = np.concatenate([s[1] for s in series])
    price = np.concatenate([s[2] for s in series])
    sym = np.concatenate([np.full(len(s[1]), k) for k, s in enumerate(series)])
    order = np.argsort(ts, kind="stable")
    ts, price, sym = ts[order], price[order], sym[order]

    def factory(skip: int):
        for lo in range(skip, len(ts), chunk):
            hi = min(lo + chunk, len(ts))
            batches = []
            for k, (name, _, _) in enumerate(series):
                idx = np.flatnonzero(sym[lo:hi] == k) + lo
                if len(idx):
                    n = len(idx)
                    batches.append(
                        TickColumns(
                            name, ts[idx], price[idx], np.ones(n), np.zeros(n, np.int8),
                            np.array([str(j) for j in idx], dtype=object), np.full(n, "bench", dtype=object),
                            "bench", idx.astype(np.int64),
                        )
                    )  # fmt: skip
            emitted.append((time.perf_counter(), int(ts[hi - 1])))
            yield Chunk(batches, [], hi - lo, hi, hi)

    return factory, len(ts)


class _Clock(StatelessSinkPartition):
    def __init__(self, seen: list) -> None:
        self.seen = seen

    def write_batch(self, items: list) -> None:
        now = time.perf_counter()
        for table, payload in items:
            if table == "orders" and any(o.reason == "flatten" for o in payload):
                self.seen.append((now, min(o.ts for o in payload if o.reason == "flatten")))
            elif table == "risk_events":
                for e in payload:
                    if e.kind == "qvar_breaker" and e.level == 3:
                        self.seen.append(("level3", e.ts))


class ClockSink(DynamicSink):
    def __init__(self, seen: list) -> None:
        self.seen = seen

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Clock:
        return _Clock(self.seen)


def _held_book(symbols: int):
    """Make every new trading loop start holding 20% of equity in each symbol."""
    original = trading_loop.TradingLoop.__init__

    def init(self, settings):
        original(self, settings)
        equity = settings.portfolio.initial_cash
        for i in range(symbols):
            qty = 0.2 * equity / 100.0
            self.portfolio.apply_fill(Fill(START, f"seed-{i}", f"S{i}/USDT", BUY, qty, 100.0, 0.0, 0.0))

    trading_loop.TradingLoop.__init__ = init


def one_run(args, seed: int) -> tuple[float | None, int, float]:
    settings = load_settings(
        None,
        [
            "features.window=30",
            "features.corr_window=30",
            "features.corr_every=5",
            "risk.qvar_horizon_s=60",
            f"trading.control_file={os.devnull}",
        ],
    )
    series = ticks(args.symbols, args.calm, args.crash, args.per_s, seed)
    emitted: list[tuple[float, int]] = []
    factory, n = chunks_of(series, args.chunk, emitted)
    seen: list = []
    flow = build_flow(
        ChunkSource([factory], Progress()),
        settings,
        ClockSink(seen),
        trading=trading_settings(settings),
        report=TradingReport(),
    )
    start = time.perf_counter()
    run_flow(flow)
    seconds = time.perf_counter() - start
    level3 = [ts for kind, ts in seen if kind == "level3"]
    flat = [(wall, ts) for wall, ts in seen if wall != "level3"]
    if not level3 or not flat:
        return None, n, seconds
    close_ts = level3[0]
    # the chunk that completed the step: the first one holding a tick at or after its close
    handed = next(wall for wall, newest in emitted if newest >= close_ts)
    reacted = next(wall for wall, ts in flat if ts >= close_ts)
    return reacted - handed, n, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--symbols", type=int, default=3)
    ap.add_argument("--calm", type=int, default=120, help="seconds of calm before the crash")
    ap.add_argument("--crash", type=int, default=30, help="seconds of crash")
    ap.add_argument("--per-s", type=int, default=200, help="ticks per second per symbol")
    ap.add_argument("--chunk", type=int, default=500, help="ticks per input chunk")
    args = ap.parse_args()
    _held_book(args.symbols)
    samples, ticks_total, secs = [], 0, 0.0
    missed = 0
    for seed in range(args.runs):
        r, n, s = one_run(args, seed)
        ticks_total += n
        secs += s
        if r is None:
            missed += 1
        else:
            samples.append(r)
    if not samples:
        sys.exit("no run reached the level-3 breaker")
    ms = np.array(samples) * 1000
    print(f"runs {args.runs}: level-3 breaker reached in {len(samples)} ({missed} without)")
    print(
        f"breaker reaction (chunk handed over -> flatten orders at the sink): "
        f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms"
    )
    print(f"replay throughput in the same runs: {ticks_total / secs:,.0f} ticks/s ({ticks_total:,} ticks)")


if __name__ == "__main__":
    main()
