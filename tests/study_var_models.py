"""Calibration study of the VaR forecasters on the crash-month candles (not a test: run it by hand).

For every symbol of the recording, close-to-close log returns on the bar grid
(empty bars forward-filled: zero returns, as the metric spec's grid returns),
one-bar-ahead 95% VaR from each estimator made before the return is seen; an
exceedance is a loss above the VaR (-r > VaR). Printed per estimator and bar
size: the pooled exceedance rate, how many symbols pass Kupiec's POF test and
Christoffersen's conditional coverage (p > 0.05), and the median and range of
the per-symbol rates.

With ``--ticks`` the same models are scored instead on the tick recording
(:data:`TICKS`) at 1-second bars: per symbol the last trade price of each
second (by ts, ties in arrival order), seconds without trades forward-filled
between the symbol's first and last traded second (zero returns). The
recording spans 650 s, so at most about 120 forecasts per symbol are scored
from return :data:`WARMUP` on; symbols with fewer returns add none. Three
tables: all grid returns (the spec's grid), the same forecasts scored only at
seconds with at least one trade, and trade-time returns (empty seconds dropped
before the models see the series).

    .venv/bin/python tests/study_var_models.py [--csv PATH] [--bars 60,900] [--jobs 2]
    .venv/bin/python tests/study_var_models.py --ticks [--ticks-csv PATH] [--warmup 530]
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
TICKS = "/work/shared/data/binance-trades-2024-08-08T2354Z.csv.gz"
DEFAULT_MODEL = "fhs l=0.80 W=500 weibull"
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


def second_closes(ticks: pd.DataFrame) -> pd.Series:
    """Last price of each traded second of one symbol (by ts, ties in arrival order), indexed by second."""
    g = ticks.sort_values("ts", kind="stable")
    return pd.Series(g["price"].to_numpy(), index=g["ts"].to_numpy() // 1000).groupby(level=0).last()


def second_returns(close: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """1-second grid returns (empty seconds forward-filled between the first and last traded second)
    and, per return, whether its second had a trade."""
    k = range(int(close.index[0]), int(close.index[-1]) + 1)
    traded = pd.Series(True, index=close.index).reindex(k, fill_value=False).to_numpy()
    return np.diff(np.log(close.reindex(k).ffill().to_numpy())), traded[1:]


def score_masked(
    job: tuple[str, str, np.ndarray, np.ndarray],
) -> tuple[str, str, int, int, int, float, float]:
    """(model, symbol, T, x, forecasts missing) of one model fed all of ``r``, scored where ``scored``."""
    name, symbol, r, scored = job
    model = MODELS[name]()
    hits, missing = [], 0
    for ret, s in zip(r.tolist(), scored.tolist(), strict=True):
        if s:
            f = model.forecast()
            if f is None:
                missing += 1
            else:
                hits.append(-ret > f.var)
        model.update(ret)
    h = np.array(hits, dtype=int)
    cc = christoffersen_cc_p(h) if len(h) > 1 else math.nan
    kp = kupiec_p(int(h.sum()), len(h)) if len(h) else math.nan
    return name, symbol, len(h), int(h.sum()), missing, kp, cc


def print_tick_table(title: str, rows: list[tuple]) -> None:
    """Pooled and per-symbol figures of ``score_masked`` rows; symbols without forecasts left out."""
    res = pd.DataFrame(rows, columns=["model", "symbol", "T", "x", "missing", "kupiec_p", "cc_p"])
    res = res[res["T"] > 0]
    print(f"\n{title}")
    t_sym = res.groupby("symbol")["T"].max()
    print("forecasts per symbol: " + (", ".join(f"{s} {t}" for s, t in t_sym.items()) or "none"))
    print(
        f"{'model':26s} {'T':>5s} {'x':>4s} {'pooled rate':>11s} {'pooled Kupiec p':>15s} "
        f"{'Kupiec pass':>11s} {'CC pass':>7s} {'no fcst':>7s}"
    )
    for name in MODELS:
        g = res[res["model"] == name]
        t, x, n_sym = int(g["T"].sum()), int(g["x"].sum()), len(g)
        if not t:
            print(f"{name:26s} no forecasts")
            continue
        kupiec_pass, cc_pass = int((g["kupiec_p"] > 0.05).sum()), int((g["cc_p"] > 0.05).sum())
        mark = " *" if name == DEFAULT_MODEL else ""
        print(
            f"{name:26s} {t:5d} {x:4d} {x / t:11.4%} {kupiec_p(x, t):15.3g} "
            f"{kupiec_pass:>8d}/{n_sym} {cc_pass:>4d}/{n_sym} {int(g['missing'].sum()):7d}{mark}"
        )


def tick_study(path: str, warmup: int, jobs: int) -> None:
    """The three 1-second tables of the tick recording (see the module docstring)."""
    t0 = time.perf_counter()
    ticks = pd.read_csv(path, usecols=["ts", "symbol", "price"])
    closes = {s: second_closes(g) for s, g in ticks.groupby("symbol", sort=True)}
    series = {s: second_returns(c) for s, c in closes.items()}
    n = sum(len(r) for r, _ in series.values())
    zeros = sum(int((r == 0).sum()) for r, _ in series.values())
    empty = sum(int((~m).sum()) for _, m in series.values())
    n_sc = sum(max(len(r) - warmup, 0) for r, _ in series.values())
    z_sc = sum(int((r[warmup:] == 0).sum()) for r, _ in series.values())
    e_sc = sum(int((~m[warmup:]).sum()) for _, m in series.values())
    print(
        f"{path}: {len(ticks):,} ticks, {len(series)} symbols, {n:,} 1-second returns, {zeros:,} zero "
        f"({zeros / n:.1%}; {empty:,} from seconds without trades, {zeros - empty:,} unchanged last price); "
        f"from return {warmup} on: {n_sc:,} returns, {z_sc:,} zero ({z_sc / max(n_sc, 1):.1%}), "
        f"{e_sc:,} without trades. alpha = {ALPHA}; * = default model; first {warmup} returns of each "
        "series not scored; pass = p > 0.05"
    )
    variants = {
        "A. all 1-second grid returns (spec grid, empty seconds = zero returns)": {
            s: (r, np.arange(len(r)) >= warmup) for s, (r, m) in series.items()
        },
        "B. same forecasts (models fed all grid returns), scored only at seconds with >= 1 trade": {
            s: (r, (np.arange(len(r)) >= warmup) & m) for s, (r, m) in series.items()
        },
        "C. trade-time returns (empty seconds dropped before the models; fed and scored on those only)": {
            s: (np.diff(np.log(c.to_numpy())), np.arange(len(c) - 1) >= warmup) for s, c in closes.items()
        },
    }
    with ProcessPoolExecutor(jobs) as pool:
        for title, v in variants.items():
            jobs_ = [(name, s, r, sc) for name in MODELS for s, (r, sc) in v.items()]
            print_tick_table(title, list(pool.map(score_masked, jobs_, chunksize=1)))
    print(f"({time.perf_counter() - t0:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=CSV)
    ap.add_argument("--bars", default="60,900", help="bar sizes in seconds")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--ticks", action="store_true", help="the 1-second tick study instead of the candles")
    ap.add_argument("--ticks-csv", default=TICKS)
    ap.add_argument("--warmup", type=int, default=WARMUP, help="returns not scored (tick study only)")
    args = ap.parse_args()
    if args.ticks:
        tick_study(args.ticks_csv, args.warmup, args.jobs)
        return
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
