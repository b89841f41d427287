"""Compare the flow's features and correlations with a batch recomputation of the spec.

Usage: python tests/check_spec.py FILE [--set section.key=value ...] [--interval SECONDS ...]
Prints, for every resolution of ``features.bar_intervals`` (or those given with ``--interval``),
row counts, key mismatches and the largest relative/absolute errors; each resolution is
recomputed from the accepted ticks at its own bar interval, not from the finer bars.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import spec_reference as ref
from flow_harness import run_files

from flows.config import load_settings

FEATURE_COLS = ["ret", "volatility", "entropy", "var95", "es95", "qvar95"]


def compare(got: pd.DataFrame, want: pd.DataFrame, keys: list[str], cols: list[str]) -> dict:
    """Key sets and the largest errors of ``cols`` between two tables."""
    g = got.set_index(keys).sort_index()
    w = want.set_index(keys).sort_index()
    missing = w.index.difference(g.index)
    extra = g.index.difference(w.index)
    common = w.index.intersection(g.index)
    rel = absdiff = 0.0
    within = True
    for c in cols:
        a = g.loc[common, c].to_numpy(dtype=float)
        b = w.loc[common, c].to_numpy(dtype=float)
        diff = np.abs(a - b)
        absdiff = max(absdiff, float(diff.max(initial=0.0)))
        scale = np.abs(b)
        nz = scale > 1e-12
        if nz.any():
            rel = max(rel, float((diff[nz] / scale[nz]).max()))
        within &= bool(np.all(diff <= 1e-12 + 1e-9 * scale))
    return {
        "rows": len(g),
        "expected": len(w),
        "missing": len(missing),
        "extra": len(extra),
        "max_rel": rel,
        "max_abs": absdiff,
        "within_spec": within,
    }


def check_resolution(got: dict, records: int, features, interval: int) -> dict:
    """The flow's rows at ``interval`` seconds (one of ``features.intervals``) against the spec's
    batch recomputation at that bar interval, straight from the accepted ticks."""
    window, corr_window, corr_every = next(r[1:] for r in features.resolutions() if r[0] == interval)
    d = interval * 1000
    at = {t: _at(got[t], interval) for t in ("bars", "features", "correlations")}
    b = ref.bars(got["ticks"], d)
    out = {"records": records, "ticks": len(got["ticks"]), "dead_letters": len(got["dead_letters"])}
    want_f = ref.features(b, window, features.qvar_entropy_coef)
    out["features"] = compare(at["features"], want_f, ["symbol", "ts"], FEATURE_COLS)
    got_drift = at["features"].set_index(["symbol", "ts"])["drift"].sort_index()
    want_drift = want_f.set_index(["symbol", "ts"])["drift"].sort_index()
    out["features"]["drift_equal"] = bool(got_drift.reindex(want_drift.index).eq(want_drift).all())
    out["features"]["drift_rows"] = int(want_drift.sum())
    want_c = ref.correlations(b, d, corr_window, corr_every)
    out["correlations"] = compare(at["correlations"], want_c, ["ts", "symbol_a", "symbol_b"], ["corr"])
    bar_cols = ["open", "high", "low", "close", "volume", "vwap"]
    out["bars"] = compare(at["bars"], b, ["symbol", "ts"], bar_cols)
    out["bars"]["trades_equal"] = _same_trades(at["bars"], b)
    return out


def _at(table: pd.DataFrame, interval: int) -> pd.DataFrame:
    """A table's rows of one resolution (every row stamped: an unstamped one fails the check)."""
    if not len(table):
        return table
    return table[table["interval"] == interval].reset_index(drop=True)


def _same_trades(got: pd.DataFrame, want: pd.DataFrame) -> bool:
    g = got.set_index(["symbol", "ts"])["trades"].sort_index()
    w = want.set_index(["symbol", "ts"])["trades"].sort_index()
    return bool(g.reindex(w.index).eq(w).all())


def check(path: str, overrides: list[str], workers: int = 1, interval: int | None = None) -> dict:
    """One resolution's check (default: the finest, ``features.bar_interval``)."""
    features = load_settings(None, overrides).features
    got, records = run_files([path], overrides, workers)
    return check_resolution(got, records, features, features.bar_interval if interval is None else interval)


def check_all(path: str, overrides: list[str], workers: int = 1) -> dict[int, dict]:
    """Every resolution's check (``features.bar_intervals``) from one run of the flow, by interval."""
    features = load_settings(None, overrides).features
    got, records = run_files([path], overrides, workers)
    unstamped = {t: int((got[t]["interval"] == 0).sum()) for t in ("bars", "features", "correlations")}
    out = {i: check_resolution(got, records, features, i) for i in features.intervals}
    for result in out.values():
        result["unstamped"] = unstamped
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    overrides = [a for prev, a in zip(["", *args], args, strict=False) if prev == "--set"]
    chosen = [int(a) for prev, a in zip(["", *args], args, strict=False) if prev == "--interval"]
    results = check_all(args[0], overrides)
    for interval, result in results.items():
        if chosen and interval not in chosen:
            continue
        print(f"interval {interval} s:")
        for key, value in result.items():
            print(f"  {key}: {value}")
