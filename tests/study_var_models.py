"""Calibration study of the VaR forecasters on the crash-month candles (not a test: run it by hand).

For every symbol of the recording, close-to-close log returns on the bar grid
(empty bars forward-filled: zero returns, as the metric spec's grid returns),
one-bar-ahead 95% VaR from each estimator made before the return is seen; an
exceedance is a loss above the VaR (-r > VaR). Printed per estimator and bar
size: the pooled exceedance rate, how many symbols pass Kupiec's POF test and
Christoffersen's conditional coverage (p > 0.05), and the median and range of
the per-symbol rates.

    .venv/bin/python tests/study_var_models.py [--csv PATH] [--bars 60,900] [--jobs 2]
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from scipy import stats

from operators.risk.var_models import (
    CornishFisher,
    CornishFisherSettings,
    EwmaNormal,
    EwmaSettings,
    FhsSettings,
    FilteredHistorical,
    Garch,
    GarchSettings,
    Historical,
    HistoricalSettings,
    StudentT,
    StudentTSettings,
)

CSV = "/work/shared/data/binance-1m-20sym-2021-04-20_2021-05-20.csv.gz"
ALPHA = 0.05
WARMUP = 530
"""Forecasts are scored from this return on, the same bars for every model (the slowest warms at 530)."""

MODELS = {
    "historical W=300 (spec)": lambda: Historical(HistoricalSettings(window=300)),
    "ewma-normal l=0.94": lambda: EwmaNormal(EwmaSettings(decay=0.94)),
    "fhs l=0.94 W=300 linear": lambda: FilteredHistorical(
        FhsSettings(decay=0.94, window=300, quantile_method="linear")
    ),
    "fhs l=0.80 W=500 weibull": lambda: FilteredHistorical(FhsSettings()),
    "cornish-fisher W=300": lambda: CornishFisher(CornishFisherSettings(window=300)),
    "student-t W=300 l=0.94": lambda: StudentT(StudentTSettings(window=300, decay=0.94)),
    "garch a=.08 b=.90 W=300": lambda: Garch(GarchSettings(window=300)),
}


def kupiec_p(x: int, t: int, p: float = ALPHA) -> float:
    """Kupiec's POF p-value: LR = -2 ln[(1-p)^(T-x) p^x] + 2 ln[(1-x/T)^(T-x) (x/T)^x], chi2(1)."""
    pi = x / t

    def ll(q: float) -> float:
        return (t - x) * (math.log1p(-q) if q < 1 else -math.inf if t > x else 0.0) + (
            x * math.log(q) if x else 0.0
        )

    return float(stats.chi2.sf(max(-2.0 * ll(p) + 2.0 * ll(pi), 0.0), 1))


def christoffersen_cc_p(hits: np.ndarray, p: float = ALPHA) -> float:
    """Conditional coverage: LR_pof + LR_ind (first-order Markov independence), chi2(2)."""
    a, b = hits[:-1], hits[1:]
    n = {(i, j): int(np.sum((a == i) & (b == j))) for i in (0, 1) for j in (0, 1)}

    def xlogy(k: int, q: float) -> float:
        return k * math.log(q) if k else 0.0

    n0, n1 = n[0, 0] + n[0, 1], n[1, 0] + n[1, 1]
    pi01 = n[0, 1] / n0 if n0 else 0.0
    pi11 = n[1, 1] / n1 if n1 else 0.0
    pi = (n[0, 1] + n[1, 1]) / (n0 + n1)
    l_markov = (
        xlogy(n[0, 0], 1 - pi01) + xlogy(n[0, 1], pi01) + xlogy(n[1, 0], 1 - pi11) + xlogy(n[1, 1], pi11)
    )
    l_iid = xlogy(n[0, 0] + n[1, 0], 1 - pi) + xlogy(n[0, 1] + n[1, 1], pi)
    t, x = len(hits), int(hits.sum())
    lr_pof = -2.0 * (xlogy(t - x, 1 - p) + xlogy(x, p)) + 2.0 * (xlogy(t - x, 1 - x / t) + xlogy(x, x / t))
    return float(stats.chi2.sf(max(lr_pof + 2.0 * (l_markov - l_iid), 0.0), 2))


def grid_returns(candles: pd.DataFrame, bar_ms: int) -> np.ndarray:
    """Log returns of the last close in each bar of ``bar_ms``, empty bars forward-filled."""
    k = candles["open_time_ms"].to_numpy() // bar_ms
    close = pd.Series(candles["close"].to_numpy(), index=k).groupby(level=0).last()
    close = close.reindex(range(int(close.index[0]), int(close.index[-1]) + 1)).ffill()
    return np.diff(np.log(close.to_numpy()))


def score(job: tuple[str, str, np.ndarray]) -> tuple[str, str, int, int, float, float]:
    """(model, symbol, T, x, Kupiec p, Christoffersen cc p) of one model on one return series."""
    name, symbol, r = job
    model = MODELS[name]()
    hits = []
    for t, ret in enumerate(r.tolist()):
        if t >= WARMUP:
            f = model.forecast()
            hits.append(-ret > f.var)
        model.update(ret)
    h = np.array(hits, dtype=int)
    return name, symbol, len(h), int(h.sum()), kupiec_p(int(h.sum()), len(h)), christoffersen_cc_p(h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=CSV)
    ap.add_argument("--bars", default="60,900", help="bar sizes in seconds")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    df = pd.read_csv(args.csv).sort_values(["symbol", "open_time_ms"], kind="stable")
    groups = dict(tuple(df.groupby("symbol", sort=True)))
    for bar_s in (int(b) for b in args.bars.split(",")):
        t0 = time.perf_counter()
        series = {s: grid_returns(g, bar_s * 1000) for s, g in groups.items()}
        jobs = [(m, s, r) for m in MODELS for s, r in series.items()]
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(score, jobs, chunksize=1))
        res = pd.DataFrame(rows, columns=["model", "symbol", "T", "x", "kupiec_p", "cc_p"])
        res["rate"] = res["x"] / res["T"]
        n_sym = len(series)
        print(
            f"\n{bar_s // 60}-minute bars: {n_sym} symbols, {res.groupby('model')['T'].sum().iloc[0]:,} "
            f"forecasts per model (first {WARMUP} returns of each symbol not scored), alpha = {ALPHA}"
        )
        print(
            f"{'model':26s} {'pooled rate':>11s} {'pooled Kupiec p':>15s} {'Kupiec pass':>11s} "
            f"{'CC pass':>7s} {'median rate':>11s} {'min..max rate':>15s}"
        )
        for name in MODELS:
            g = res[res["model"] == name]
            t, x = int(g["T"].sum()), int(g["x"].sum())
            kupiec_pass, cc_pass = int((g["kupiec_p"] > 0.05).sum()), int((g["cc_p"] > 0.05).sum())
            print(
                f"{name:26s} {x / t:11.4%} {kupiec_p(x, t):15.3g} "
                f"{kupiec_pass:>8d}/{n_sym} {cc_pass:>4d}/{n_sym} "
                f"{g['rate'].median():11.4%} {g['rate'].min():7.2%}..{g['rate'].max():.2%}"
            )
        print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
