"""``qbtc report``: one self-contained HTML page of a trading run (or two, side by side).

The series come from the store by SQL (:mod:`flows.report_series`); the charts are
Plotly figures whose JavaScript is embedded once in the page, so the file opens
offline (no CDN, no web fonts). Long series are thinned for the browser to about
:data:`MAX_POINTS` points per trace, keeping each slice's lowest and highest value;
markers (VaR exceedances, fills, mode changes) are all drawn.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from flows import report_page
from flows import report_series as rs
from flows.report_series import ReportProblem

MAX_POINTS = 2000
"""Points per line trace at most (about: a slice's low and high, the ends, markers kept)."""
COLORS = ("#1f77b4", "#d62728")
"""The first and the compared run's colour."""
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class Report:
    """What :func:`write_report` wrote: the file, the runs in it, the symbol drawn."""

    path: str
    runs: tuple[str, ...]
    symbol: str | None
    thinned: bool
    size: int


@dataclass(frozen=True, slots=True)
class _RunData:
    run: dict
    label: str
    color: str
    book: dict
    costs: dict
    strategies: dict
    timeline: dict
    events: dict
    kills: dict
    months: dict
    periods: dict
    period_ms: int
    window: int
    models: dict
    model_latest: dict


def _load(store, run_id: str | None, slot: int) -> _RunData:
    run = rs.find_run(store, run_id)
    rid = run["run_id"]
    book = rs.portfolio(store, rid)
    step = int(np.median(np.diff(book["t"][:50]))) if run["steps"] > 1 else 1000  # the bar interval
    period = rs.return_period(run["t0"], run["t1"], step)
    n_periods = max(1, (run["t1"] - run["t0"]) // period)
    window = int(max(10, min(n_periods // 10, 500)))
    return _RunData(
        run=run,
        label=rid or "(before run ids)",
        color=COLORS[slot],
        book=book,
        costs=rs.costs(store, rid),
        strategies=rs.strategy_pnl(store, rid, run["t0"], run["t1"]),
        timeline=rs.risk_timeline(store, rid),
        events=rs.risk_events(store, rid),
        kills=rs.kill_switches(store, rid),
        months=rs.monthly_returns(store, rid),
        periods=rs.period_returns(store, rid, period, window),
        period_ms=period,
        window=window,
        models=rs.model_metrics(store, rid),
        model_latest=rs.model_latest(store, rid),
    )


def write_report(store, out_path, run=None, compare=None, symbol=None) -> Report:
    """Write the HTML report of ``run`` (the newest trading run when None) to ``out_path``.

    Parameters
    ----------
    store
        An open :class:`sinks.clickhouse_store.Store`.
    out_path
        The HTML file to write.
    run, compare
        Run ids; with ``compare`` both runs' traces share the charts and the summary has a
        column per run.
    symbol
        The symbol whose price and fills are drawn (default: the run's most traded).
    """
    first = _load(store, run, 0)
    runs = [first]
    if compare is not None:
        if compare == first.run["run_id"]:
            msg = f"--compare names the run being reported ({compare!r}): give another run id"
            raise ReportProblem(msg)
        runs.append(_load(store, compare, 1))
    chosen = symbol or rs.most_traded(store, first.run["run_id"])
    price = None
    if chosen is not None:
        t0, t1 = min(r.run["t0"] for r in runs), max(r.run["t1"] for r in runs)
        price = rs.symbol_bars(store, chosen, t0, t1)
        if symbol is not None and not len(price["t"]):
            traded = ", ".join(rs.traded_symbols(store, first.run["run_id"])) or "none"
            msg = f"no bars of {symbol!r} in the span of run {first.label!r} (symbols it traded: {traded})"
            raise ReportProblem(msg)
        fills = [rs.symbol_fills(store, r.run["run_id"], chosen) for r in runs]
    charts = [
        ("Equity and drawdown", _equity(runs), _EQUITY_NOTE),
        ("Exposure and leverage", _exposure(runs), _EXPOSURE_NOTE),
        ("VaR forecast against realised P&L", _var(runs), _VAR_NOTE),
        ("Breaker level and mode", _breakers(runs), _BREAKER_NOTE),
        ("P&L by strategy", _strategies(runs), _STRATEGY_NOTE),
        ("Monthly returns", _monthly(runs), _MONTHLY_NOTE),
        ("Return distribution", _distribution(runs), _distribution_note(runs)),
        ("Rolling Sharpe", _rolling_sharpe(runs), _sharpe_note(runs)),
    ]
    if any(r.models["t"].size for r in runs):  # a run with an online model (builtin:online_model)
        charts.append(("Online model: progressive validation", _models(runs), _MODEL_NOTE))
    if price is not None:
        note = _PRICE_NOTE + (" The compared run's fills are open triangles." if len(runs) > 1 else "")
        charts.append((f"{chosen}: price and fills", _price(chosen, price, fills, runs), note))
    thinned = any(
        max(r.book["t"].size, len(r.timeline["t"]), r.models["t"].size) > MAX_POINTS for r in runs
    ) or (price is not None and price["t"].size > MAX_POINTS)
    from plotly.offline import get_plotlyjs

    divs = [(title, _div(fig, f"chart-{i}"), note) for i, (title, fig, note) in enumerate(charts)]
    text = report_page.page(runs, divs, get_plotlyjs(), thinned)
    try:
        with open(out_path, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        msg = f"cannot write {out_path}: {exc.strerror or exc}"
        raise ReportProblem(msg) from None
    return Report(str(out_path), tuple(r.label for r in runs), chosen, thinned, os.path.getsize(out_path))


# -- charts ------------------------------------------------------------------------------------


def _div(fig, div_id: str) -> str:
    """The figure's div and script, without Plotly's JavaScript (the page has it once)."""
    config = {"displaylogo": False, "responsive": True}
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=config)


def _times(t: np.ndarray) -> np.ndarray:
    return np.asarray(t, dtype=np.int64).astype("datetime64[ms]")


def _name(r: _RunData, what: str, many: bool) -> str:
    return f"{what} ({r.label})" if many else what


def _layout(fig, height: int = 380, **extra) -> None:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 60, "t": 30, "b": 40},
        legend={"orientation": "h", "y": -0.15},
        **({"hovermode": "x unified"} | extra),
    )


def _equity(runs: list[_RunData]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.05)
    many = len(runs) > 1
    for r in runs:
        b = r.book
        for row, key, what in ((1, "equity", "equity"), (2, "underwater", "underwater")):
            pick = rs.thin(b[key], MAX_POINTS).index
            y = b[key][pick] * (100 if key == "underwater" else 1)
            fig.add_trace(
                go.Scatter(
                    x=_times(b["t"][pick]),
                    y=y,
                    name=_name(r, what, many),
                    line={"color": r.color, "width": 1.5},
                    fill="tozeroy" if key == "underwater" else None,
                ),
                row=row,
                col=1,
            )
    fig.update_yaxes(title_text="equity", row=1, col=1)
    fig.update_yaxes(title_text="below peak, %", row=2, col=1)
    _layout(fig, height=460)
    return fig


def _exposure(runs: list[_RunData]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    many = len(runs) > 1
    for r in runs:
        b = r.book
        pick = rs.thin(b["gross_exposure"], MAX_POINTS).index
        x = _times(b["t"][pick])
        fig.add_trace(
            go.Scatter(
                x=x, y=b["gross_exposure"][pick], name=_name(r, "gross", many), line={"color": r.color}
            ),
            secondary_y=False,
        )
        net = {"color": r.color, "dash": "dot", "width": 1}
        y = b["net_exposure"][pick]
        fig.add_trace(go.Scatter(x=x, y=y, name=_name(r, "net", many), line=net), secondary_y=False)
        lev = {"color": r.color, "dash": "dash", "width": 1}
        y = b["leverage"][pick]
        fig.add_trace(go.Scatter(x=x, y=y, name=_name(r, "leverage", many), line=lev), secondary_y=True)
    fig.update_yaxes(title_text="exposure, quote", secondary_y=False)
    fig.update_yaxes(title_text="leverage", secondary_y=True)
    _layout(fig)
    return fig


def _var(runs: list[_RunData]):
    import plotly.graph_objects as go

    fig = go.Figure()
    many = len(runs) > 1
    for r in runs:
        b = r.book
        hit = np.flatnonzero(b["exceeded"] > 0)
        pick = rs.thin(b["pnl"], MAX_POINTS, keep=hit).index
        x = _times(b["t"][pick])
        fig.add_trace(
            go.Scatter(
                x=x, y=b["pnl"][pick], name=_name(r, "P&L before costs", many), mode="lines",
                line={"color": r.color, "width": 1}, opacity=0.7,
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=x, y=-b["var_prev"][pick], name=_name(r, "-VaR95 forecast", many), mode="lines",
                line={"color": r.color, "width": 1.5, "dash": "dash", "shape": "hv"},
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=_times(b["t"][hit]), y=b["pnl"][hit], mode="markers",
                name=_name(r, f"exceedances: {hit.size}", many),
                marker={"symbol": "x", "size": 7, "color": "black" if not many else r.color},
            )
        )  # fmt: skip
    fig.update_yaxes(title_text="quote units")
    _layout(fig)
    return fig


def _breakers(runs: list[_RunData]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.08)
    many = len(runs) > 1
    for r in runs:
        tl = r.timeline
        levels = np.asarray(tl["breaker_level"], dtype=np.float64)
        pick = rs.thin(levels, MAX_POINTS).index  # a flapping breaker: each slice's lowest and highest level
        x = _times(np.asarray(tl["t"], dtype=np.int64)[pick])
        line = {"color": r.color, "shape": "hv"}
        level = go.Scatter(x=x, y=levels[pick], name=_name(r, "breaker level", many), line=line)
        fig.add_trace(level, row=1, col=1)
        modes = np.asarray(tl["mode"], dtype=object)[pick]
        fig.add_trace(go.Scatter(x=x, y=modes, name=_name(r, "mode", many), line=line), row=2, col=1)
        if r.kills["t"]:
            fig.add_trace(
                go.Scatter(
                    x=_times(np.asarray(r.kills["t"])), y=[3] * len(r.kills["t"]), mode="markers",
                    name=_name(r, "kill switch", many), text=r.kills["message"],
                    marker={"symbol": "star", "size": 12, "color": r.color},
                ),
                row=1, col=1,
            )  # fmt: skip
    fig.update_yaxes(title_text="level", range=[-0.2, 3.4], dtick=1, row=1, col=1)
    fig.update_yaxes(title_text="mode", type="category", row=2, col=1)
    _layout(fig, height=400)
    return fig


def _strategies(runs: list[_RunData]):
    import plotly.graph_objects as go

    fig = go.Figure()
    many = len(runs) > 1
    for r in runs:
        s = r.strategies
        fig.add_trace(
            go.Bar(
                x=s["strategy"], y=s["net"], name=_name(r, "net P&L", many), marker_color=r.color,
                customdata=np.column_stack([s["gross"], s["fees"], s["fills"]]) if s["strategy"] else None,
                hovertemplate="gross %{customdata[0]:,.2f}<br>fees %{customdata[1]:,.2f}<br>"
                "fills %{customdata[2]}<br>net %{y:,.2f}",
            )
        )  # fmt: skip
    fig.update_yaxes(title_text="quote units")
    _layout(fig, height=340, barmode="group", hovermode="closest")
    return fig


def _monthly(runs: list[_RunData]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = [r.label for r in runs] if len(runs) > 1 else None
    fig = make_subplots(rows=1, cols=len(runs), subplot_titles=titles)
    for col, r in enumerate(runs, start=1):
        m = r.months
        years = sorted(set(m["year"]))
        z = np.full((len(years), 12), np.nan)
        for year, month, ret in zip(m["year"], m["month_no"], m["ret"], strict=True):
            z[years.index(year), month - 1] = 100 * ret
        text = [["" if math.isnan(v) else f"{v:+.2f}%" for v in row] for row in z]
        fig.add_trace(
            go.Heatmap(
                z=z, x=list(MONTHS), y=[str(y) for y in years], text=text, texttemplate="%{text}",
                colorscale="RdYlGn", zmid=0, showscale=col == 1, hoverongaps=False,
                colorbar={"title": "%"},
            ),
            row=1, col=col,
        )  # fmt: skip
    _layout(fig, height=140 + 40 * max(len(set(r.months["year"])) for r in runs), hovermode="closest")
    return fig


def _distribution(runs: list[_RunData]):
    import plotly.graph_objects as go

    fig = go.Figure()
    many = len(runs) > 1
    moved = []
    for r in runs:
        ret = r.periods["ret"]
        moved.append(100 * ret[np.isfinite(ret) & (ret != 0)])
    both = np.concatenate(moved)
    lo, hi = (float(both.min()), float(both.max())) if both.size else (-1.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = {"start": lo, "end": hi, "size": (hi - lo) / 60}  # the same bins for both runs
    for r, x in zip(runs, moved, strict=True):
        fig.add_trace(
            go.Histogram(
                x=x, name=_name(r, f"{x.size} returns", many), marker_color=r.color,
                opacity=0.6 if many else 0.9, xbins=bins,
            )
        )  # fmt: skip
    fig.update_xaxes(title_text="return per period, %")
    fig.update_yaxes(title_text="periods")
    _layout(fig, height=340, barmode="overlay", hovermode="closest")
    return fig


def _rolling_sharpe(runs: list[_RunData]):
    import plotly.graph_objects as go

    fig = go.Figure()
    many = len(runs) > 1
    for r in runs:
        p = r.periods
        pick = rs.thin(p["sharpe"], MAX_POINTS).index
        y = np.where(np.isfinite(p["sharpe"][pick]), p["sharpe"][pick], None)
        name = _name(r, "rolling Sharpe", many)
        fig.add_trace(go.Scatter(x=_times(p["t"][pick]), y=y, name=name, line={"color": r.color}))
    fig.update_yaxes(title_text="annualised")
    _layout(fig, height=320)
    return fig


def _models(runs: list[_RunData]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    many = len(runs) > 1
    for r in runs:
        m = r.models
        if not m["t"].size:
            continue
        for row, key, what in (
            (1, "log_loss", "log loss"),
            (2, "accuracy", "accuracy"),
            (3, "calibration_error", "calibration error"),
        ):
            pick = rs.thin(m[key], MAX_POINTS).index
            line = {"color": r.color, "width": 1.5}
            trace = go.Scatter(x=_times(m["t"][pick]), y=m[key][pick], name=_name(r, what, many), line=line)
            fig.add_trace(trace, row=row, col=1)
    fig.update_yaxes(title_text="log loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", row=2, col=1)
    fig.update_yaxes(title_text="ECE", row=3, col=1)
    _layout(fig, height=460)
    return fig


def _price(symbol: str, bars: dict, fills: list[dict], runs: list[_RunData]):
    import plotly.graph_objects as go

    fig = go.Figure()
    pick = rs.thin(bars["close"], MAX_POINTS).index
    x = _times(bars["t"][pick])
    fig.add_trace(go.Scatter(x=x, y=bars["close"][pick], name=f"{symbol} close", line={"color": "#555"}))
    many = len(runs) > 1
    for r, f in zip(runs, fills, strict=True):
        side = np.asarray(f["side"], dtype=object)
        for which, shape in (("buy", "triangle-up"), ("sell", "triangle-down")):
            at = np.flatnonzero(side == which)
            text = [f"{f['strategy'][i]} {f['reason'][i]} qty {f['qty'][i]:.6g}" for i in at]
            fig.add_trace(
                go.Scatter(
                    x=_times(np.asarray(f["t"], dtype=np.int64)[at]), y=np.asarray(f["price"])[at],
                    mode="markers", name=_name(r, f"{which}s: {at.size}", many), text=text,
                    marker={
                        "symbol": shape if r is runs[0] else f"{shape}-open", "size": 9,
                        "color": ("#2ca02c" if which == "buy" else "#d62728") if not many else r.color,
                    },
                )
            )  # fmt: skip
    fig.update_yaxes(title_text="price")
    _layout(fig, height=400, hovermode="closest")
    return fig


_EQUITY_NOTE = "Marked equity at every portfolio step, and the underwater curve: equity / running peak - 1."
_EXPOSURE_NOTE = (
    "Gross (sum of |position value|) and net (signed) exposure in quote units; leverage = gross / equity "
    "(right axis)."
)
_VAR_NOTE = (
    "Each step's P&L before trading costs (its equity change with the fees and slippage of the fills it "
    "booked added back: close to a VaR backtest's hypothetical P&L) against the previous step's one-step "
    "95% VaR forecast, drawn as a loss (-VaR). An exceedance (x) is a step whose loss went beyond a forecast "
    "made with positions held (VaR > 0); about 5% of such steps are expected."
)
_BREAKER_NOTE = "The breaker level (0-3) and the risk engine's mode after each step; stars: kill switches."
_STRATEGY_NOTE = (
    "Method: a symbol's position between two of its fills earns (next fill price - fill price) x position "
    "for the strategy of the order that set it; the last position is marked at the symbol's last bar close "
    "in the run. Fees are charged to the strategy whose order paid them. The parts add up to the run's "
    "trading P&L (the equity change, when the book is marked at the same closes)."
)
_MONTHLY_NOTE = "Each calendar month's (UTC) return: its last equity over the previous month's last."
_MODEL_NOTE = (
    "The online model's progressive validation (each forecast scored before its bar's outcome was learnt), "
    "mean over the symbols reporting at each time: running log loss, accuracy (the side of p >= 0.5 against "
    "the bar's direction) and expected calibration error (10 equal-width probability bins)."
)
_PRICE_NOTE = (
    "Bar closes over the run's span; triangles are fills at their execution price (hover: strategy, reason, "
    "quantity)."
)


def _period(ms: int) -> str:
    names = {1_000: "1 s", 60_000: "1 min", 300_000: "5 min", 3_600_000: "1 h", 86_400_000: "1 day"}
    return names.get(ms, f"{ms / 1000:g} s")


def _distribution_note(runs: list[_RunData]) -> str:
    parts = ", ".join(f"{r.label}: {_period(r.period_ms)}" for r in runs)
    return (
        f"Returns over consecutive periods ({parts}: the longest of 1 s, 1 min, 5 min, 1 h, 1 day giving at "
        f"least {rs.MIN_PERIODS} periods); periods in which equity did not move (flat book) are left out."
    )


def _sharpe_note(runs: list[_RunData]) -> str:
    parts = ", ".join(f"{r.label}: {r.window} periods of {_period(r.period_ms)}" for r in runs)
    return (
        f"Mean / standard deviation of the period returns over a rolling window ({parts}), annualised "
        "over 365 days; blank until the window is full or while equity did not move."
    )
