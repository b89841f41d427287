"""Run the embedded dataflow in-process and collect what it would store."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
from bytewax.testing import TestingSink

from flows.config import Settings, load_settings
from flows.inputs import file_inputs
from flows.pipeline import build_flow, run_flow
from schemas.tick_columns import SIDES
from sources.chunk_source import ChunkSource, Progress

SHORT_TRADING = [
    "simulator.duration_s=900",
    "simulator.symbols=4",
    "features.window=60",
    "features.corr_window=60",
    "features.corr_every=10",
    "trading.cost_gate=false",
    "levels.enabled=false",
]
"""A short simulated market that trades (15 minutes, 4 symbols, windows of 60): the trading tests' input.

The cost gate is off (at 1-second bars no signal's expected edge beats 10 bps of fees) and so
are the decision levels (every bar is a decision of every level): these tests are about the
loop's plumbing (tables, run ids, recovery, control), not its costs or cadences
(tests/test_cost_gate.py and tests/test_levels.py are)."""


def run_files(paths: list[str], overrides: list[str] | None = None, workers: int = 1):
    """Tables (as DataFrames) the flow produces from tick files, plus records read."""
    settings: Settings = load_settings(None, overrides or [])
    inputs, total = file_inputs(paths, settings)
    progress = Progress(total_bytes=total)
    out: list = []
    flow = build_flow(ChunkSource(inputs, progress), settings, TestingSink(out))
    run_flow(flow, workers)
    return tables(out), progress.records


def tables(items: list) -> dict[str, pd.DataFrame]:
    parts: dict[str, list] = defaultdict(list)
    for table, payload in items:
        if table == "ticks":
            cols, seq = payload
            parts[table].append(
                pd.DataFrame(
                    {
                        "ts": cols.ts,
                        "symbol": cols.symbol,
                        "price": cols.price,
                        "qty": cols.qty,
                        "side": np.array(SIDES, dtype=object)[cols.side],
                        "trade_id": cols.trade_id,
                        "exchange": cols.exchange,
                        "arrival": cols.arrival,
                        "seq": seq,
                    }
                )
            )
        else:
            parts[table].append(pd.DataFrame([_row(r) for r in payload]))
    out = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
    for name in ("ticks", "bars", "features", "correlations", "dead_letters"):
        out.setdefault(name, pd.DataFrame())
    if len(out["ticks"]):
        out["ticks"] = out["ticks"].sort_values("arrival", kind="stable").reset_index(drop=True)
    return out


def _row(record) -> dict:
    return {name: getattr(record, name) for name in record.__slots__}
