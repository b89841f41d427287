"""The HTML around the report's charts: the summary table, the strategy table, the page itself.

Everything shown is escaped; the page needs nothing but itself (Plotly's JavaScript is
embedded once, fonts are the system's).
"""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime

from flows import report_series as rs
from flows.report import DAY_MS


def _num(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:,.{digits}f}"


def _pct(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.2f}%"


def _int(x) -> str:
    return "n/a" if x is None else f"{int(x):,}"


def _when(ms) -> str:
    if not isinstance(ms, int | float) or not math.isfinite(ms):
        return "n/a"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _engine(run: dict) -> str:
    risk = rs.settings_of(run).get("risk")
    enabled = risk.get("enabled") if isinstance(risk, dict) else None
    return "n/a" if enabled is None else ("on" if enabled else "off")


def summary_rows(data, models: bool = False) -> list[tuple[str, str]]:
    """(label, value) rows of one run: the ``runs`` row's figures, then the computed ones, and with
    ``models`` the online models' newest figures (``model_latest``).

    ``data`` has ``run`` (the runs row), ``book`` (the portfolio columns), ``costs`` and ``model_latest``.
    """
    run, book, costs = data.run, data.book, data.costs
    equity = book["equity"]
    mean_equity = float(equity.mean()) if equity.size else math.nan
    forecasts = int(((book["var_prev"] > 0) & (book["t"] > book["t"][0])).sum())
    hits = int(book["exceeded"].sum())
    start = run.get("start_equity")
    spent = costs["fees"] + costs["slippage"]
    rate = hits / forecasts if forecasts else None
    long = run["t1"] - run["t0"] >= DAY_MS  # an annualised ratio of minutes of returns says nothing
    return [
        ("kind / status", f"{run.get('kind', '?')} / {run.get('status', '?')}"),
        ("started / finished (UTC)", f"{_when(run.get('started'))} / {_when(run.get('finished'))}"),
        ("risk engine", _engine(run)),
        ("span (UTC)", f"{_when(run['t0'])} .. {_when(run['t1'])}"),
        ("portfolio steps", _int(run["steps"])),
        ("records read", _int(run.get("records"))),
        ("start equity", _num(start)),
        ("end equity", _num(run.get("end_equity"))),
        ("return", _pct(run.get("return"))),
        ("Sharpe (annualised)", _num(run.get("sharpe")) if long else "n/a (under a day)"),
        ("Sortino (annualised)", _num(run.get("sortino")) if long else "n/a (under a day)"),
        ("max drawdown", _pct(run.get("max_drawdown"))),
        ("win rate", _pct(run.get("win_rate"))),
        ("profit factor", _num(run.get("profit_factor"))),
        ("VaR exceedance rate (run)", _pct(run.get("var_exceedance_rate"))),
        ("VaR exceedances (chart)", f"{hits:,} of {forecasts:,} steps ({_pct(rate)})"),
        ("orders / fills / signals", " / ".join(_int(run.get(k)) for k in ("orders", "fills", "signals"))),
        ("kill switches", _int(run.get("kill_switches"))),
        ("mode changes", _int(run.get("mode_changes"))),
        ("breaker trips", _int(run.get("breaker_trips"))),
        ("orders blocked by cost", _int(run.get("orders_blocked_by_cost"))),
        ("their expected costs (not paid)", _num(run.get("cost_saved"))),
        ("fees paid", _num(costs["fees"])),
        ("slippage cost", _num(costs["slippage"])),
        ("costs (fees + slippage)", _num(spent)),
        ("costs / start equity", _pct(spent / start if start else None)),
        ("turnover (traded notional)", _num(costs["turnover"], 0)),
        ("turnover / mean equity", _num(costs["turnover"] / mean_equity if mean_equity else None)),
    ] + (_model_rows(data.model_latest) if models else [])  # fmt: skip


def _model_rows(m: dict) -> list[tuple[str, str]]:
    """The online models' newest figures, averaged over symbols (n/a for a run without them)."""
    if not m.get("symbols"):
        return [(label, "n/a") for label in _MODEL_LABELS]
    values = (
        f"{m['symbols']:,} / {int(m['forecasts']):,}",
        _num(m["log_loss"], 4),
        _pct(m["accuracy"]),
        _num(m["calibration_error"], 4),
        f"{_pct(m['hit_rate_30d'])} / {_pct(m['mean_prob_30d'])}",
        f"{int(m['drifting']):,}",
    )
    return list(zip(_MODEL_LABELS, values, strict=True))


_MODEL_LABELS = (
    "online model: symbols / forecasts scored",
    "online model: log loss (latest, mean over symbols)",
    "online model: accuracy",
    "online model: calibration error (ECE)",
    "online model: 30-day hit rate / mean probability",
    "online model: symbols drifting (half size)",
)


def summary_table(runs) -> str:
    """The summary as an HTML table: a column per run."""
    models = any(r.model_latest.get("symbols") for r in runs)
    rows = [summary_rows(r, models) for r in runs]
    head = "".join(f"<th>{html.escape(r.label)}</th>" for r in runs)
    body = []
    for i, (label, _) in enumerate(rows[0]):
        cells = "".join(f"<td>{html.escape(rows[k][i][1])}</td>" for k in range(len(runs)))
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    return f'<table class="summary"><tr><th>run</th>{head}</tr>{"".join(body)}</table>'


def strategy_table(runs) -> str:
    """Fills, gross P&L, fees and net P&L per strategy, per run."""
    body = []
    for r in runs:
        s = r.strategies
        for name, fills, gross, fees, net in zip(
            s["strategy"], s["fills"], s["gross"], s["fees"], s["net"], strict=True
        ):
            body.append(
                f"<tr><td>{html.escape(r.label)}</td><td>{html.escape(name)}</td><td>{fills:,}</td>"
                f"<td>{_num(gross)}</td><td>{_num(fees)}</td><td>{_num(net)}</td></tr>"
            )
    head = "<tr><th>run</th><th>strategy</th><th>fills</th><th>gross</th><th>fees</th><th>net</th></tr>"
    return f'<table class="numbers">{head}{"".join(body)}</table>'


def events_table(runs) -> str:
    """The runs' risk events by kind and action."""
    body = []
    for r in runs:
        e = r.events
        for kind, action, n, level in zip(e["kind"], e["action"], e["events"], e["top_level"], strict=True):
            body.append(
                f"<tr><td>{html.escape(r.label)}</td><td>{html.escape(kind)}</td><td>{html.escape(action)}</td>"
                f"<td>{n:,}</td><td>{level}</td></tr>"
            )
    if not body:
        return "<p>No risk events.</p>"
    head = "<tr><th>run</th><th>kind</th><th>action</th><th>events</th><th>highest level</th></tr>"
    return f'<table class="numbers">{head}{"".join(body)}</table>'


def _run_details(r) -> str:
    run = r.run
    try:
        settings = json.dumps(json.loads(run.get("settings") or "{}"), indent=2, sort_keys=True)
    except ValueError:
        settings = str(run.get("settings"))
    return (
        f"<details><summary>run {html.escape(r.label)}: command, input, settings</summary>"
        f"<p><code>{html.escape(str(run.get('command', '')))}</code></p>"
        f"<p>input: <code>{html.escape(str(run.get('input', '')))}</code></p>"
        f"<pre>{html.escape(settings)}</pre></details>"
    )


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1200px; color: #222; padding: 0 16px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin: 1.6em 0 0.3em; }
p.note { color: #555; font-size: 0.9em; margin: 0.2em 0 0.4em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 10px; text-align: right; }
table.summary th:first-child, table.numbers td:nth-child(-n+3) { text-align: left; }
pre { font-size: 0.8em; background: #f6f6f6; padding: 8px; max-height: 360px; overflow: auto; }
.chart { min-height: 300px; }
"""


def page(runs, charts: list[tuple[str, str, str]], plotly_js: str, thinned: bool) -> str:
    """The whole page: ``charts`` are (title, div html, note); ``plotly_js`` is embedded once."""
    labels = " vs ".join(html.escape(r.label) for r in runs)
    thin_note = (
        "Long series are thinned for the browser: at most about 2,000 points per line, each slice's lowest "
        "and highest value kept (markers and every summary figure use all rows)."
        if thinned
        else "Every row is drawn (no series was long enough to thin)."
    )
    sections = "".join(
        f'<section><h2>{html.escape(title)}</h2><p class="note">{html.escape(note)}</p>{div}</section>'
        for title, div, note in charts
    )
    details = "".join(_run_details(r) for r in runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qbtc report: {labels}</title>
<style>{_STYLE}</style>
<script type="text/javascript">{plotly_js}</script>
</head><body>
<h1>qbtc report: {labels}</h1>
<p class="note">Built from the store by SQL. {html.escape(thin_note)}
This file works offline.</p>
<h2>Summary</h2>
{summary_table(runs)}
{details}
{sections}
<section><h2>Strategies</h2>{strategy_table(runs)}</section>
<section><h2>Risk events</h2>{events_table(runs)}</section>
</body></html>
"""
