"""Compare the flow's features and correlations with a batch recomputation of the spec.

Usage: python tests/check_spec.py FILE [--set section.key=value ...]
Prints row counts, key mismatches and the largest relative/absolute errors.
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


def check(path: str, overrides: list[str], workers: int = 1) -> dict:
    s = load_settings(None, overrides).features
    d = s.bar_interval * 1000
    got, records = run_files([path], overrides, workers)
    b = ref.bars(got["ticks"], d)
    out = {"records": records, "ticks": len(got["ticks"]), "dead_letters": len(got["dead_letters"])}
    want_f = ref.features(b, s.window, s.qvar_entropy_coef)
    out["features"] = compare(got["features"], want_f, ["symbol", "ts"], FEATURE_COLS)
    got_drift = got["features"].set_index(["symbol", "ts"])["drift"].sort_index()
    want_drift = want_f.set_index(["symbol", "ts"])["drift"].sort_index()
    out["features"]["drift_equal"] = bool(got_drift.reindex(want_drift.index).eq(want_drift).all())
    out["features"]["drift_rows"] = int(want_drift.sum())
    want_c = ref.correlations(b, d, s.corr_window, s.corr_every)
    out["correlations"] = compare(got["correlations"], want_c, ["ts", "symbol_a", "symbol_b"], ["corr"])
    got_b = got["bars"]
    out["bars"] = compare(got_b, b, ["symbol", "ts"], ["open", "high", "low", "close", "volume", "vwap"])
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    overrides = [a for prev, a in zip(["", *args], args, strict=False) if prev == "--set"]
    for key, value in check(args[0], overrides).items():
        print(f"{key}: {value}")
