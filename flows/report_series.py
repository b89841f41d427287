"""The series of a run's HTML report, each computed by one SQL query over the store.

A run's rows in the trading tables are picked by :func:`run_rows` alone; the
feature tables have no run: a run's bars are its symbols' bars between its
first and last portfolio step. Every function returns plain columns (numpy
arrays or lists) for :mod:`flows.html_report` to draw; none reads the wall clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from schemas.errors import UsageProblem
from sinks.clickhouse_store import FINEST_BARS

YEAR_MS = 365 * 86_400_000
PERIODS_MS = (1_000, 60_000, 300_000, 3_600_000, 86_400_000)
"""Candidate periods of the return distribution and the rolling Sharpe (1 s .. 1 day)."""
MIN_PERIODS = 100
"""The longest candidate period that still gives at least this many returns is used."""


class ReportProblem(UsageProblem):
    """A report that cannot be made from the store (no runs table, an unknown run, no trading rows)."""


def sql_str(text: str) -> str:
    """``text`` as a ClickHouse string literal.

    >>> sql_str("it's")
    "'it\\\\'s'"
    """
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_rows(run_id: str) -> str:
    """The one condition that picks a run's rows in the trading tables."""
    return f"run_id = {sql_str(run_id)}"


def _columns(store, sql: str, names: str) -> dict[str, list]:
    """The query's columns by name (``names``: the result's column names, space-separated; an
    empty result carries no names in chDB)."""
    result = store.query(sql)
    columns = [list(c) for c in result.result_columns] or [[] for _ in names.split()]
    return dict(zip(names.split(), columns, strict=True))


def _ms(value):
    """A datetime as epoch ms (the client gives the store's UTC times naive), anything else as is."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return round(aware.timestamp() * 1000)
    return value


# -- the run --------------------------------------------------------------------------------


def find_run(store, run_id: str | None) -> dict:
    """The ``runs`` row of ``run_id`` (the newest run that traded when None), datetimes as epoch ms,
    with ``steps``, ``t0`` and ``t1``: its portfolio steps and their first and last time.

    Trading rows made before run ids (run id ``''``, no ``runs`` row) are a run of kind
    ``before run ids``, the default when no run in ``runs`` traded. Raises
    :class:`ReportProblem` for a store without a runs table, an unknown id (naming the
    newest ids there are) and a run without portfolio rows.
    """
    db = "database = currentDatabase()"
    has = store.query(f"SELECT count() FROM system.tables WHERE {db} AND name = 'runs'")
    if not has.result_rows[0][0]:
        msg = "the store has no runs table (made by a qbtc before runs were recorded): replay with --trade"
        raise ReportProblem(msg)
    if run_id is None:
        rows = store.query("SELECT run_id FROM runs FINAL WHERE trade = 1 ORDER BY started DESC LIMIT 1")
        if rows.result_rows:
            run_id = rows.result_rows[0][0]
        elif _span(store, "")[0]:
            run_id = ""
        else:
            msg = "no trading run in the store (qbtc replay --trade, run or stream --trade make one)"
            raise ReportProblem(msg)
    result = store.query(f"SELECT * FROM runs FINAL WHERE run_id = {sql_str(run_id)}")
    span = _span(store, run_id)
    if result.result_rows:
        run = {k: _ms(v) for k, v in zip(result.column_names, result.result_rows[0], strict=True)}
    elif span[0]:
        run = {"run_id": run_id, "kind": "before run ids", "status": "n/a"}
    else:
        newest = store.query("SELECT run_id FROM runs FINAL ORDER BY started DESC LIMIT 5").result_rows
        known = ", ".join(r[0] for r in newest) or "none"
        msg = f"no run {run_id!r} in the store (newest runs: {known}; qbtc runs lists them)"
        raise ReportProblem(msg)
    if not span[0]:
        msg = f"run {run_id!r} has no trading rows (a {run.get('kind', '?')} without --trade?): no report"
        raise ReportProblem(msg)
    run["steps"], run["t0"], run["t1"] = span
    return run


def _span(store, run_id: str) -> tuple[int, int, int]:
    """The run's portfolio steps, and the first and last step's time (epoch ms)."""
    return tuple(
        store.query(
            "SELECT count(), toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(max(ts)) "
            f"FROM portfolio FINAL WHERE {run_rows(run_id)}"
        ).result_rows[0]
    )


def settings_of(run: dict) -> dict:
    """The run's resolved config (its ``settings`` JSON), {} when unreadable."""
    try:
        got = json.loads(run.get("settings") or "{}")
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


# -- the portfolio's steps -------------------------------------------------------------------


def portfolio(store, run_id: str) -> dict[str, np.ndarray]:
    """Every portfolio step of the run, with the computed columns.

    ``underwater`` is equity / running peak - 1 (<= 0); ``costs`` the fees and slippage
    (notional x slippage_bps) of the fills the step booked (those stamped after the previous
    step, up to the step's own close, which the next step books); ``pnl`` the step's equity change before
    those costs (NaN at the first step), close to a VaR backtest's hypothetical P&L (the
    previous step's positions marked to this step's closes); ``var_prev`` the previous
    step's ``var95``, the forecast of this step's P&L; ``exceeded`` is 1 where a forecast
    was made (``var_prev`` > 0) and the loss went beyond it (``pnl`` < -``var_prev``).
    """
    sql = f"""
    SELECT toUnixTimestamp64Milli(ts) AS t, equity, cash, gross_exposure, net_exposure, leverage, var95,
        breaker_level, toString(mode) AS mode,
        equity / max(equity) OVER run_so_far - 1 AS underwater,
        step_costs AS costs,
        if(n = 1, nan, equity - lagInFrame(equity) OVER pair + step_costs) AS pnl,
        if(n = 1, nan, lagInFrame(var95) OVER pair) AS var_prev,
        toUInt8(n > 1 AND var_prev > 0 AND pnl < -var_prev) AS exceeded
    FROM (
        SELECT p.*, row_number() OVER (ORDER BY p.ts) AS n, c.step_costs AS step_costs
        FROM (SELECT * FROM portfolio FINAL WHERE {run_rows(run_id)}) AS p
        LEFT JOIN (
            SELECT s.ts AS ts, sum(f.fee + f.qty * f.price * f.slippage_bps / 10000) AS step_costs
            FROM (SELECT run_id, ts, fee, qty, price, slippage_bps FROM fills FINAL
                  WHERE {run_rows(run_id)}) AS f
            ASOF JOIN (SELECT run_id, ts FROM portfolio FINAL WHERE {run_rows(run_id)}) AS s
                ON f.run_id = s.run_id AND f.ts < s.ts
            GROUP BY s.ts
        ) AS c ON p.ts = c.ts)
    WINDOW run_so_far AS (ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
        pair AS (ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
    ORDER BY ts"""
    names = "t equity cash gross_exposure net_exposure leverage var95 breaker_level mode underwater costs pnl"
    cols = _columns(store, sql, names + " var_prev exceeded")
    out = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items() if k != "mode"}
    out["t"] = out["t"].astype(np.int64)
    out["mode"] = np.asarray(cols["mode"], dtype=object)
    return out


def risk_timeline(store, run_id: str) -> dict[str, list]:
    """The steps where the breaker level or the mode changed, with the first and the last step."""
    sql = f"""
    SELECT t, breaker_level, mode FROM (
        SELECT toUnixTimestamp64Milli(ts) AS t, breaker_level, toString(mode) AS mode,
            row_number() OVER (ORDER BY ts) AS n, count() OVER () AS steps,
            lagInFrame(breaker_level) OVER pair AS level_before,
            lagInFrame(toString(mode)) OVER pair AS mode_before
        FROM portfolio FINAL WHERE {run_rows(run_id)}
        WINDOW pair AS (ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW))
    WHERE n = 1 OR n = steps OR breaker_level != level_before OR mode != mode_before
    ORDER BY t"""
    return _columns(store, sql, "t breaker_level mode")


def risk_events(store, run_id: str) -> dict[str, list]:
    """The run's risk events counted by kind and action."""
    sql = f"""
    SELECT toString(kind) AS kind, toString(action) AS action, count() AS events, max(level) AS top_level
    FROM risk_events FINAL WHERE {run_rows(run_id)}
    GROUP BY kind, action ORDER BY events DESC, kind, action"""
    return _columns(store, sql, "kind action events top_level")


def kill_switches(store, run_id: str) -> dict[str, list]:
    """The times and messages of the run's kill-switch events."""
    sql = f"""
    SELECT toUnixTimestamp64Milli(ts) AS t, message FROM risk_events FINAL
    WHERE {run_rows(run_id)} AND kind = 'kill_switch' ORDER BY ts"""
    return _columns(store, sql, "t message")


# -- online models ---------------------------------------------------------------------------


def model_metrics(store, run_id: str) -> dict[str, np.ndarray]:
    """The run's ``model_metrics`` rows over time: at each time rows were written, the mean over the
    symbols reporting then of the running log loss, accuracy and calibration error (empty without rows)."""
    sql = f"""
    SELECT toUnixTimestamp64Milli(ts) AS t, avg(log_loss) AS log_loss, avg(accuracy) AS accuracy,
        avg(calibration_error) AS calibration_error, count() AS symbols
    FROM model_metrics FINAL WHERE {run_rows(run_id)} GROUP BY ts ORDER BY ts"""
    cols = _columns(store, sql, "t log_loss accuracy calibration_error symbols")
    return {
        k: np.asarray(v, dtype=np.int64 if k in ("t", "symbols") else np.float64) for k, v in cols.items()
    }


def model_latest(store, run_id: str) -> dict[str, float]:
    """Each symbol's newest ``model_metrics`` row, summed up: ``symbols``, ``forecasts`` (their n),
    the mean log loss, accuracy, calibration error, 30-day hit rate and mean probability, and how
    many symbols drift (``symbols`` 0 without rows)."""
    sql = f"""
    SELECT count(), sum(n), avg(ll), avg(acc), avg(ece), avg(hit), avg(prob), sum(drift) FROM (
        SELECT symbol, model, argMax(n, ts) AS n, argMax(log_loss, ts) AS ll, argMax(accuracy, ts) AS acc,
            argMax(calibration_error, ts) AS ece, argMax(hit_rate_30d, ts) AS hit,
            argMax(mean_prob_30d, ts) AS prob, argMax(drift, ts) AS drift
        FROM model_metrics FINAL WHERE {run_rows(run_id)} GROUP BY symbol, model)"""
    row = store.query(sql).result_rows[0]
    names = ("symbols", "forecasts", "log_loss", "accuracy", "calibration_error", "hit_rate_30d")
    out = dict(zip((*names, "mean_prob_30d", "drifting"), row, strict=True))
    out["symbols"] = int(out["symbols"] or 0)
    return out


# -- returns ---------------------------------------------------------------------------------


def monthly_returns(store, run_id: str) -> dict[str, list]:
    """Each calendar month's (UTC) return: its last equity over the previous month's last
    (the run's first equity for the first month), minus 1."""
    sql = f"""
    SELECT toYear(month) AS year, toMonth(month) AS month_no,
        last / lagInFrame(last, 1, first) OVER (ORDER BY month ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) - 1
            AS ret
    FROM (SELECT toStartOfMonth(ts) AS month, argMin(equity, ts) AS first, argMax(equity, ts) AS last
          FROM portfolio FINAL WHERE {run_rows(run_id)} GROUP BY month)
    ORDER BY month"""
    return _columns(store, sql, "year month_no ret")


def return_period(t0: int, t1: int, step_ms: int) -> int:
    """The longest of :data:`PERIODS_MS` (not shorter than a step) giving >= MIN_PERIODS returns.

    >>> return_period(0, 30 * 86_400_000, 60_000), return_period(0, 3_600_000, 1_000)
    (3600000, 1000)
    """
    fits = [p for p in PERIODS_MS if p >= step_ms and (t1 - t0) / p >= MIN_PERIODS]
    return max(fits) if fits else max(step_ms, PERIODS_MS[0])


def period_returns(store, run_id: str, period_ms: int, window: int) -> dict[str, np.ndarray]:
    """Returns over consecutive periods of ``period_ms`` (last equity of a period over the
    previous period's last, the first period over its own first), and their rolling Sharpe
    over ``window`` periods, annualised (365 days; NaN until the window is full or when
    the returns did not vary)."""
    per_year = YEAR_MS / period_ms
    sql = f"""
    SELECT t, ret,
        if(count() OVER w = {window} AND stddevSamp(ret) OVER w > 0,
           avg(ret) OVER w / stddevSamp(ret) OVER w * sqrt({per_year!r}), nan) AS sharpe
    FROM (
        SELECT toUnixTimestamp64Milli(period) AS t,
            last / lagInFrame(last, 1, first) OVER (ORDER BY period ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
                - 1 AS ret
        FROM (SELECT toStartOfInterval(ts, toIntervalMillisecond({period_ms})) AS period,
                  argMin(equity, ts) AS first, argMax(equity, ts) AS last
              FROM portfolio FINAL WHERE {run_rows(run_id)} GROUP BY period))
    WINDOW w AS (ORDER BY t ROWS BETWEEN {window - 1} PRECEDING AND CURRENT ROW)
    ORDER BY t"""
    cols = _columns(store, sql, "t ret sharpe")
    return {k: np.asarray(v, dtype=np.int64 if k == "t" else np.float64) for k, v in cols.items()}


# -- fills, costs, strategies ----------------------------------------------------------------


def costs(store, run_id: str) -> dict[str, float]:
    """Fees paid, turnover (traded notional) and slippage cost (notional x slippage), quote units."""
    sql = f"""
    SELECT count() AS fills, sum(fee) AS fees, sum(qty * price) AS turnover,
        sum(qty * price * slippage_bps) / 10000 AS slippage
    FROM fills FINAL WHERE {run_rows(run_id)}"""
    row = store.query(sql).result_rows[0]
    return {"fills": int(row[0]), "fees": row[1], "turnover": row[2], "slippage": row[3]}


def traded_symbols(store, run_id: str) -> list[str]:
    """The symbols the run has fills of, most traded first."""
    sql = f"""
    SELECT symbol FROM fills FINAL WHERE {run_rows(run_id)}
    GROUP BY symbol ORDER BY count() DESC, sum(qty * price) DESC, symbol"""
    return [row[0] for row in store.query(sql).result_rows]


def most_traded(store, run_id: str) -> str | None:
    """The symbol with the most fills (then the most turnover), None without fills."""
    symbols = traded_symbols(store, run_id)
    return symbols[0] if symbols else None


def _last_closes(run_id: str, t0: int, t1: int) -> str:
    return f"""
    SELECT symbol, argMax(close, ts) AS last_close FROM bars FINAL
    WHERE symbol IN (SELECT symbol FROM fills FINAL WHERE {run_rows(run_id)})
        AND ts BETWEEN fromUnixTimestamp64Milli({t0}) AND fromUnixTimestamp64Milli({t1}) AND {FINEST_BARS}
    GROUP BY symbol"""


def strategy_pnl(store, run_id: str, t0: int, t1: int) -> dict[str, list]:
    """P&L by strategy: a symbol's position between two of its fills earns (next fill's
    price - this fill's price) x position for the strategy of the order that set it (the
    last position up to the symbol's last bar close in the run); each fill's fee is charged
    to its order's strategy. The gross parts add up to the run's trading P&L."""
    sql = f"""
    SELECT if(strategy = '', '(no order)', strategy) AS strategy, count() AS fills,
        sum(position * (coalesce(next_price, last_close) - price)) AS gross, sum(fee) AS fees,
        gross - fees AS net
    FROM (
        SELECT f.symbol AS symbol, toString(o.strategy) AS strategy, f.price AS price, f.fee AS fee,
            sum(if(f.side = 'buy', f.qty, -f.qty)) OVER per_symbol AS position,
            leadInFrame(toNullable(f.price)) OVER next_fill AS next_price
        FROM (SELECT * FROM fills FINAL WHERE {run_rows(run_id)}) AS f
        LEFT JOIN (SELECT order_id, strategy FROM orders FINAL WHERE {run_rows(run_id)}) AS o
            ON f.order_id = o.order_id
        WINDOW per_symbol AS (PARTITION BY f.symbol ORDER BY f.ts, f.order_id, f.price, f.qty
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
            next_fill AS (PARTITION BY f.symbol ORDER BY f.ts, f.order_id, f.price, f.qty
                          ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING)
    ) AS legs
    LEFT JOIN ({_last_closes(run_id, t0, t1)}) AS closes ON legs.symbol = closes.symbol
    GROUP BY strategy ORDER BY net DESC"""
    return _columns(store, sql, "strategy fills gross fees net")


def symbol_bars(store, symbol: str, t0: int, t1: int) -> dict[str, np.ndarray]:
    """The symbol's bar closes between ``t0`` and ``t1`` (epoch ms, inclusive)."""
    sql = f"""
    SELECT toUnixTimestamp64Milli(ts) AS t, close FROM bars FINAL
    WHERE symbol = {sql_str(symbol)}
        AND ts BETWEEN fromUnixTimestamp64Milli({t0}) AND fromUnixTimestamp64Milli({t1}) AND {FINEST_BARS}
    ORDER BY ts"""
    cols = _columns(store, sql, "t close")
    return {"t": np.asarray(cols["t"], dtype=np.int64), "close": np.asarray(cols["close"], dtype=np.float64)}


def symbol_fills(store, run_id: str, symbol: str) -> dict[str, list]:
    """The run's fills of ``symbol`` with their orders' strategy and reason."""
    sql = f"""
    SELECT toUnixTimestamp64Milli(f.ts) AS t, toString(f.side) AS side, f.qty AS qty, f.price AS price,
        toString(o.strategy) AS strategy, toString(o.reason) AS reason
    FROM (SELECT * FROM fills FINAL WHERE {run_rows(run_id)} AND symbol = {sql_str(symbol)}) AS f
    LEFT JOIN (SELECT order_id, strategy, reason FROM orders FINAL WHERE {run_rows(run_id)}) AS o
        ON f.order_id = o.order_id
    ORDER BY f.ts"""
    return _columns(store, sql, "t side qty price strategy reason")


@dataclass(frozen=True, slots=True)
class Thinned:
    """Indices of the points drawn of a long series, and how many there were."""

    index: np.ndarray
    total: int

    @property
    def thinned(self) -> bool:
        return len(self.index) < self.total


def thin(key: np.ndarray, max_points: int, keep: np.ndarray | None = None) -> Thinned:
    """At most about ``max_points`` indices of ``key``: the lowest and highest of each
    consecutive slice (so peaks and troughs stay), the first and the last, and ``keep``.

    >>> thin(np.array([0.0, 5, 1, 2, -3, 4, 0, 0]), 4).index.tolist()
    [0, 1, 4, 5, 7]
    """
    n = len(key)
    if n <= max_points:
        return Thinned(np.arange(n), n)
    size = math.ceil(n / max(1, max_points // 2))
    slices = math.ceil(n / size)
    padded = np.zeros(slices * size)
    padded[:n] = np.nan_to_num(key, nan=0.0)
    padded[n:] = padded[n - 1]
    filled = padded.reshape(slices, size)
    base = np.arange(slices) * size
    picks = [base + filled.argmin(axis=1), base + filled.argmax(axis=1), np.array([0, n - 1])]
    if keep is not None:
        picks.append(np.asarray(keep, dtype=np.int64))
    index = np.unique(np.concatenate(picks))
    return Thinned(index[index < n], n)
