"""A walk-forward's inputs and outputs: the recording's span, a run's figures over part of it
(from its rows in the store), and the table, JSON and CSV of the splits.

A span's figures, over ``[start, end)`` of a run whose portfolio has one row per bar close:

- its steps are the portfolio rows with ``start < ts <= end`` (a step at ``ts`` closes the bar
  before it); its opening equity ``E0`` is the equity of the last row at or before ``start``
  (the first row in the span when the run starts there);
- ``return`` = E_last / E0 - 1; ``max_drawdown`` = max(1 - E / running peak), the peak from E0;
- ``sharpe`` = mean(r) / std(r, ddof 1) x sqrt(steps per year) and ``sortino`` = mean(r) /
  sqrt(mean(min(r, 0)^2)) x sqrt(steps per year), r the step returns E_k / E_k-1 - 1 (the
  trading loop's own formulas, 365-day years); ``profit_factor`` = the sum of the steps' gains
  over the sum of their losses (equity changes, after costs);
- fills and orders stamped in ``[start, end)`` (a fill at a bar close is booked by the next
  step): ``costs`` = fees + notional x slippage_bps / 10^4, ``turnover`` = traded notional /
  mean equity of the steps, ``gross_pnl`` = E_last - E0 + costs, ``orders``, ``fills``.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np

from flows.report_series import run_rows
from flows.walkforward import Recording, SplitResult, WalkForwardProblem, label

YEAR_MS = 365 * 86_400_000


def recording_span(paths: list[str], settings, step_ms: int) -> Recording:
    """The recording's span on the ``step_ms`` grid, from one pass over the files as a replay
    reads them (candles as bars, ticks' times), and the steps that hold records."""
    from flows.inputs import file_inputs

    factories, _ = file_inputs(paths, settings, warn=lambda _: None)
    steps: set[int] = set()
    for chunks in factories:
        for chunk in chunks(0):
            for bar in chunk.bars or ():
                steps.add(bar.ts // step_ms * step_ms)
            for batch in chunk.batches:
                steps.update((np.unique(batch.ts // step_ms) * step_ms).tolist())
    if not steps:
        msg = f"{', '.join(paths)}: no records to walk forward over"
        raise WalkForwardProblem(msg)
    have = np.array(sorted(steps), dtype=np.int64)
    return Recording(int(have[0]), int(have[-1]) + step_ms, step_ms, have)


def span_figures(store, run_id: str, start: int, end: int, step_ms: int) -> dict:
    """The run's figures over ``[start, end)`` (see the module docstring); None where undefined."""
    where = run_rows(run_id)
    t = "toUnixTimestamp64Milli(ts)"
    rows = store.query(
        f"SELECT {t} AS t, equity FROM portfolio FINAL WHERE {where} AND {t} > {start} AND {t} <= {end} "
        "ORDER BY ts"
    ).result_rows
    before = store.query(
        f"SELECT count(), argMax(equity, ts) FROM portfolio FINAL WHERE {where} AND {t} <= {start}"
    ).result_rows[0]
    fills = store.query(
        "SELECT count(), sum(qty * price), sum(fee), sum(qty * price * slippage_bps) / 10000 "
        f"FROM fills FINAL WHERE {where} AND {t} >= {start} AND {t} < {end}"
    ).result_rows[0]
    orders = store.query(
        f"SELECT count() FROM orders FINAL WHERE {where} AND {t} >= {start} AND {t} < {end}"
    ).result_rows[0][0]
    equity = np.array([r[1] for r in rows], dtype=np.float64)
    if before[0]:
        equity = np.r_[float(before[1]), equity]
    out = {"steps": len(rows), "orders": int(orders), "fills": int(fills[0])}
    out.update(equity_figures(equity, step_ms))
    costs = float(fills[2] or 0.0) + float(fills[3] or 0.0)
    mean_equity = float(equity[1:].mean()) if len(equity) > 1 else None
    out["costs"] = costs
    out["turnover"] = float(fills[1] or 0.0) / mean_equity if mean_equity else None
    out["gross_pnl"] = out["end_equity"] - out["start_equity"] + costs if len(equity) else None
    return out


def equity_figures(equity: np.ndarray, step_ms: int) -> dict:
    """Return, drawdown, Sharpe, Sortino and step profit factor of an equity series (E0 first).

    >>> f = equity_figures(np.array([100.0, 110.0, 99.0, 104.0]), 86_400_000)
    >>> round(f["return"], 6), round(f["max_drawdown"], 6), round(f["profit_factor"], 6)
    (0.04, 0.1, 1.363636)
    """
    if not len(equity):
        keys = ("start_equity", "end_equity", "return", "max_drawdown", "sharpe", "sortino")
        return dict.fromkeys((*keys, "profit_factor"))
    r = equity[1:] / equity[:-1] - 1.0
    per_year = YEAR_MS / step_ms
    sd = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
    down = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))) if len(r) else 0.0
    moves = np.diff(equity)
    loss = float(-moves[moves < 0].sum())
    return {
        "start_equity": float(equity[0]),
        "end_equity": float(equity[-1]),
        "return": float(equity[-1] / equity[0] - 1.0),
        "max_drawdown": float(np.max(1.0 - equity / np.maximum.accumulate(equity))),
        "sharpe": float(r.mean() / sd * math.sqrt(per_year)) if sd > 0 else None,
        "sortino": float(r.mean() / down * math.sqrt(per_year)) if down > 0 else None,
        "profit_factor": float(moves[moves > 0].sum()) / loss if loss > 0 else None,
    }


# -- output -----------------------------------------------------------------------------------

COLUMNS = (
    "split",
    "train_start",
    "test_start",
    "test_end",
    "chosen",
    "candidate",
    "train_sharpe",
    "train_metric",
    "test_return",
    "test_max_drawdown",
    "test_sharpe",
    "test_sortino",
    "turnover",
    "costs",
    "gross_pnl",
    "orders",
    "test_rank",
    "run_id",
)


def split_rows(results: list[SplitResult], candidates: list, metric: str) -> list[dict]:
    """One flat row per split (:data:`COLUMNS`; times in epoch ms)."""
    rows = []
    for r in results:
        s = r.split
        rows.append(
            {
                "split": s.index,
                "train_start": s.train_start,
                "test_start": s.test_start,
                "test_end": s.test_end,
                "chosen": r.chosen + 1,
                "candidate": label(candidates[r.chosen]),
                "train_sharpe": r.train.get("sharpe"),
                "train_metric": r.train.get(metric),
                "test_return": r.test.get("return"),
                "test_max_drawdown": r.test.get("max_drawdown"),
                "test_sharpe": r.test.get("sharpe"),
                "test_sortino": r.test.get("sortino"),
                "turnover": r.test.get("turnover"),
                "costs": r.test.get("costs"),
                "gross_pnl": r.test.get("gross_pnl"),
                "orders": r.test.get("orders"),
                "test_rank": r.test_rank,
                "run_id": r.run_id,
            }
        )
    return rows


def _utc(ms: int) -> str:
    from flows.report import _utc as utc

    return utc(ms)


def _f(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def text_report(rows: list[dict], summary: dict, candidates: list, metric: str) -> str:
    """The splits' table, the spread over splits and the overfitting figures, for stdout."""
    lines = []
    if len(candidates) > 1:
        lines.append(f"candidates (chosen by their {metric} over the train span):")
        lines += [f"  c{j + 1}: {label(c)}" for j, c in enumerate(candidates)]
    head = (
        f"{'split':>5}  {'train':<36}  {'test':<36}  {'chosen':>6}  {'train Sh':>8}  {'return':>8}  "
        f"{'max DD':>7}  {'Sharpe':>8}  {'turnover':>8}  {'costs':>10}  {'gross P&L':>10}  {'orders':>6}"
    )
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['split']:>5}  {_utc(r['train_start'])} .. {_utc(r['test_start'])}  "
            f"{_utc(r['test_start'])} .. {_utc(r['test_end'])}  {'c' + str(r['chosen']):>6}  "
            f"{_f(r['train_sharpe'], '.2f'):>8}  {_f(_pct(r['test_return']), '.2f'):>7}%  "
            f"{_f(_pct(r['test_max_drawdown']), '.2f'):>6}%  {_f(r['test_sharpe'], '.2f'):>8}  "
            f"{_f(r['turnover'], '.2f'):>8}  {_f(r['costs'], ',.2f'):>10}  {_f(r['gross_pnl'], ',.2f'):>10}  "
            f"{r['orders']:>6}"
        )
    lines.append("")
    lines.append(f"over {len(rows)} splits (test spans)      mean        std        min        max")
    for key, name, pct in (("return", "return", True), ("sharpe", "Sharpe", False), ("max_drawdown",
                           "max drawdown", True)):  # fmt: skip
        s = summary["test"][key]
        cells = [_pct(s[k]) if pct else s[k] for k in ("mean", "std", "min", "max")]
        unit = "%" if pct else " "
        lines.append((f"  {name:<28}" + "".join(f"{_f(c, '.2f'):>10}{unit}" for c in cells)).rstrip())
    o = summary["overfitting"]
    lines.append(
        f"overfitting: train - test Sharpe gap, mean {_f(o['sharpe_gap_mean'], '.2f')} "
        f"(over {o['sharpe_gap_splits']} splits); test Sharpe < 0 where train > 0: "
        f"{_f(_pct(o['sign_flip_share']), '.0f')}% of splits"
    )
    if "pbo" in o:
        lines.append(
            f"probability of backtest overfitting (--pbo): {_f(_pct(o['pbo']), '.0f')}% of {o['pbo_splits']} "
            f"splits chose a candidate whose test {metric} ranks below the candidates' median"
        )
    lines.append(
        "(Sharpe, Sortino annualised from bar returns, 365-day years; return, drawdown per test span)"
    )
    return "\n".join(lines) + "\n"


def _pct(x):
    return None if x is None else 100.0 * x


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_out(path: str, rows: list[dict], summary: dict, meta: dict, results: list[SplitResult]) -> None:
    """``--out``: JSON (meta, the splits with every candidate's figures, the summary) or CSV (the
    split rows, then rows ``mean``/``std``/``min``/``max`` of the test figures, then one row per
    overfitting figure with its name in ``split`` and its number in ``value``)."""
    if path.lower().endswith(".csv"):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[*COLUMNS, "value"], lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({k: "" if v is None else v for k, v in r.items()})
            for stat in ("mean", "std", "min", "max"):
                row = {"split": stat}
                for key in ("return", "sharpe", "max_drawdown"):
                    value = summary["test"][key][stat]
                    row[f"test_{key}"] = "" if value is None else value
                w.writerow(row)
            for name, value in summary["overfitting"].items():
                w.writerow({"split": name, "value": "" if value is None else value})
        return
    splits = []
    for row, r in zip(rows, results, strict=True):
        splits.append(
            {
                **row,
                "train": r.train,
                "test": r.test,
                "candidates_train": r.candidates_train,
                "candidates_test": r.candidates_test,
            }
        )
    doc = {**meta, "splits": splits, "summary": summary}
    with open(path, "w") as fh:
        json.dump(_clean(doc), fh, indent=1, sort_keys=False)
        fh.write("\n")
