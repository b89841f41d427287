"""A plain batch recomputation of the metric spec, for oracle tests.

Written from docs/metrics.md with pandas and numpy, sharing no
code with operators/: given accepted ticks, it returns the bars, features
and correlations the spec defines.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from river import drift

Z95 = 1.6448536269514722


def bars(ticks: pd.DataFrame, d_ms: int) -> pd.DataFrame:
    """OHLCV bars from accepted ticks (columns ts, symbol, price, qty; arrival order)."""
    t = ticks.reset_index(drop=True).copy()
    t["arrival"] = np.arange(len(t))
    t["k"] = t["ts"] // d_ms
    t = t.sort_values(["symbol", "k", "ts", "arrival"], kind="stable")
    t["pq"] = t["price"] * t["qty"]
    g = t.groupby(["symbol", "k"], sort=True)
    out = pd.DataFrame(
        {
            "open": g["price"].first(),
            "high": g["price"].max(),
            "low": g["price"].min(),
            "close": g["price"].last(),
            "volume": g["qty"].sum(),
            "pv": g["pq"].sum(),
            "trades": g["price"].size(),
        }
    ).reset_index()
    out["vwap"] = out["pv"] / out["volume"]
    out["ts"] = out["k"] * d_ms
    return out.drop(columns=["pv"])


def grid_returns(symbol_bars: pd.DataFrame, last_k: int) -> pd.Series:
    """r_k for k0 < k <= last_k with forward-filled closes, indexed by k."""
    closes = symbol_bars.set_index("k")["close"]
    k0 = int(closes.index.min())
    c = closes.reindex(range(k0, last_k + 1)).ffill()
    return np.log(c / c.shift(1)).iloc[1:]


def _entropy(x: np.ndarray) -> float:
    counts: dict[tuple, int] = {}
    for i in range(len(x) - 2):
        pat = tuple(np.argsort(x[i : i + 3], kind="stable"))
        counts[pat] = counts.get(pat, 0) + 1
    m = len(x) - 2
    return -sum((c / m) * math.log(c / m) for c in counts.values()) / math.log(6)


def features(bar_df: pd.DataFrame, window: int, coef: float = 0.3) -> pd.DataFrame:
    """Feature rows per the spec, one per actual bar once W returns exist."""
    rows = []
    for symbol, sb in bar_df.groupby("symbol", sort=True):
        sb = sb.sort_values("k")
        last_k = int(sb["k"].max())
        r = grid_returns(sb, last_k)
        actual = set(sb["k"].tolist())
        adwin = drift.ADWIN()
        seen = False
        values = r.to_numpy()
        ks = r.index.to_numpy()
        for i, k in enumerate(ks):
            adwin.update(abs(values[i]) * 10_000.0)
            seen = seen or adwin.drift_detected
            if i + 1 < window or int(k) not in actual:
                continue
            x = values[i + 1 - window : i + 1]
            vol = float(np.std(x, ddof=1))
            q = float(np.quantile(x, 0.05))
            ent = _entropy(x)
            rows.append(
                {
                    "symbol": symbol,
                    "ts": int(sb.loc[sb["k"] == k, "ts"].iloc[0]),
                    "ret": float(values[i]),
                    "volatility": vol,
                    "entropy": ent,
                    "var95": -q,
                    "es95": -float(np.mean(x[x <= q])),
                    "qvar95": Z95 * vol * (1 - coef * ent),
                    "drift": int(seen),
                }
            )
            seen = False
    return pd.DataFrame(rows)


def correlations(bar_df: pd.DataFrame, d_ms: int, window: int, every: int) -> pd.DataFrame:
    """Correlation rows per the spec."""
    last_k = int(bar_df["k"].max())
    series = {}
    firsts = {}
    for symbol, sb in bar_df.groupby("symbol", sort=True):
        series[symbol] = grid_returns(sb, last_k)
        firsts[symbol] = int(sb["k"].min())
    frame = pd.DataFrame(series)
    names = sorted(series)
    rows = []
    start = min(firsts.values())
    for k in range(start, last_k + 1):
        if k % every:
            continue
        ready = [s for s in names if firsts[s] <= k - window]
        win = frame.loc[k - window + 1 : k]
        for i, a in enumerate(ready):
            xa = win[a].to_numpy()
            if np.all(xa == xa[0]):
                continue
            for b in ready[i + 1 :]:
                xb = win[b].to_numpy()
                if np.all(xb == xb[0]):
                    continue
                rows.append(
                    {"ts": k * d_ms, "symbol_a": a, "symbol_b": b, "corr": float(np.corrcoef(xa, xb)[0, 1])}
                )
    return pd.DataFrame(rows, columns=["ts", "symbol_a", "symbol_b", "corr"])
