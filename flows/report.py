"""What the CLI prints: run summaries, the backtest summary and query results."""

from __future__ import annotations

import csv
import os
import shlex
import sys
from datetime import UTC, datetime

from schemas.ddl import TABLES
from sinks.clickhouse_store import DEFAULT_DSN, Store, redact

DAY_MS = 86_400_000
EXAMPLE_SQL = (
    "SELECT symbol, interval, count() AS rows, round(avg(volatility), 6) AS avg_vol, "
    "round(max(qvar95), 6) AS max_qvar95, sum(drift) AS drifts "
    "FROM features FINAL GROUP BY symbol, interval ORDER BY symbol, interval"
)


def run_summary(
    kind: str,
    store: Store | None,
    dsn: str,
    records: int,
    seconds: float,
    written,
    skipped: int = 0,
    run_id: str = "",
) -> None:
    """Print what a run read and the rows it wrote, per table, into the store (or the null sink).

    ``written`` counts this run's rows only (a store that held other runs' rows keeps them;
    a replay of the same data rewrites rows that the tables' keys then merge).
    """
    out = sys.stdout
    rate = records / seconds if seconds > 0 else 0.0
    out.write(f"\n{kind}: {records:,} records in {seconds:.1f} s ({rate:,.0f} ticks/s)\n")
    if run_id:
        out.write(f"run: {run_id}\n")
    if skipped:
        out.write(f"{skipped:,} records outside --from-ts/--to-ts skipped (not dead letters)\n")
    if store is None:
        out.write("null sink: rows computed (not stored)\n")
        w = max((len(table) for table in written), default=14) + 2
        for table, n in sorted(written.items()):
            out.write(f"  {table:<{w}}{n:>12,}\n")
        return
    out.write(f"store: {redact(dsn)}: rows written by this run\n")
    w = max(len(table) for table in TABLES) + 2
    for table in TABLES:
        if table == "runs":
            continue
        out.write(f"  {table:<{w}}{written.get(table, 0):>12,} rows\n")
    path = dsn[len("chdb://") :] if dsn.startswith("chdb://") else None
    store_arg = "" if dsn == DEFAULT_DSN else f" --store {shlex.quote(dsn)}"
    if path:
        out.write(f"data: {os.path.abspath(path)}\n")
    out.write(f"try:  qbtc sql {shlex.quote(EXAMPLE_SQL)}{store_arg}\n")
    if run_id:
        out.write(f"      qbtc runs{store_arg}\n")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _utc(ms: int | None) -> str:
    return "n/a" if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


_METRIC = {"var": "VaR", "es": "ES", "qvar": "QVaR"}
"""How the summary names ``risk.breaker_metric``."""


def control_summary(report) -> None:
    """On stderr: one line per operator command the run applied, and how many of the control
    file's commands it left alone (not this run's: dated outside its span, issued before it)."""
    for e in report.controls:
        when = datetime.fromtimestamp(e.ts / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        done = "refused" if e.action == "reject" else "applied"
        sys.stderr.write(f"qbtc: control: {done} at {when} UTC: {e.message}\n")
    n = report.controls_not_applied
    if n:
        what = "command" if n == 1 else "commands"
        sys.stderr.write(
            f"qbtc: control: {n} {what} of {report.control_file} not applied: not this run's "
            "(dated outside its span, or issued before it started)\n"
        )


def trading_summary(report) -> None:
    """Print a trading run's backtest summary (nothing when it did not trade), and on stderr the
    operator commands it applied (:func:`control_summary`)."""
    control_summary(report)
    s = report.summary
    if s is None:
        return
    span = (s["last_ts"] or 0) - (s["first_ts"] or 0)
    short = span < DAY_MS  # an annualised ratio of minutes of returns says nothing
    sharpe, sortino = (None, None) if short else (s["sharpe"], s["sortino"])
    ratios = "(annualised; n/a under a day)" if short else "(annualised)"
    trips = ", ".join(f"level {lvl}: {n}" for lvl, n in s["breaker_trips"].items()) or "none"
    lines = [
        f"backtest {_utc(s['first_ts'])} .. {_utc(s['last_ts'])} UTC "
        f"(equity {s['start_equity']:,.0f} -> {s['end_equity']:,.0f})",
        f"  return          {_pct(s['return']):>10}   max drawdown {_pct(s['max_drawdown']):>8}",
        f"  Sharpe          {_num(sharpe):>10}   Sortino      {_num(sortino):>8}  {ratios}",
        f"  win rate        {_pct(s['win_rate']):>10}   profit factor {_num(s['profit_factor']):>7}",
        f"  orders {s['orders']:,}, fills {s['fills']:,}, signals {s['signals']:,}, "
        f"pre-trade denials {s['denials']:,}",
        f"  orders blocked by cost {s.get('orders_blocked_by_cost', 0):,} "
        f"(their expected fees and slippage {s.get('cost_saved', 0.0):,.2f})",
        f"  breakers ({_METRIC.get(s.get('var_metric'), 'QVaR')}) tripped: {trips}; "
        f"kill switch: {s['kill_switches']}; mode changes: {s['mode_changes']} (mode now {s['mode']})",
        f"  {_METRIC.get(s.get('var_metric'), 'QVaR')} exceedances {_pct(s['var_exceedance_rate'])} "
        f"of {s['var_checks']:,} bars (5% expected for a VaR; Kupiec p {_p(s.get('var_kupiec_p'))})",
    ]
    if not s["orders"] and s.get("orders_blocked_by_cost"):
        lines.append(
            "  no entry beat its expected fees and slippage (the cost gate; see the signals' edge_bps, "
            "cost_bps); --set trading.cost_gate=false trades without it"
        )
    if s.get("model_risk_events"):
        lines.append(f"  VaR model-risk events: {s['model_risk_events']} (see the model_risk risk events)")
    if s.get("strategy_errors"):
        muted = s["strategy_errors"]
        lines.append(f"  strategies muted after an error: {muted} (see the strategy_error risk events)")
    if s.get("unsettled"):
        lines.append(f"  not settled: {s['unsettled']} (the unsettled risk event)")
    sys.stdout.write("\n".join(lines) + "\n")


def _p(value: float | None) -> str:
    """A p-value for a person: three significant digits, n/a when there is none.

    >>> _p(0.04999), _p(3.2e-12), _p(None)
    ('0.05', '3.2e-12', 'n/a')
    """
    return "n/a" if value is None else f"{value:.3g}"


def _cell(value) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def write_table(names: list[str], rows, fmt: str = "table") -> None:
    """Write a query result to stdout as an aligned table, CSV or TSV."""
    cells = [[_cell(v) for v in row] for row in rows]
    if fmt in ("csv", "tsv"):
        writer = csv.writer(sys.stdout, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writerow(names)
        writer.writerows(cells)
        return
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = "+".join("-" * (w + 2) for w in widths)
    sys.stdout.write(" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)) + "\n")
    sys.stdout.write(line + "\n")
    for r in cells:
        sys.stdout.write(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + "\n")
    sys.stdout.write(f"({len(cells)} row{'s' if len(cells) != 1 else ''})\n")
