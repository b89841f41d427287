"""``qbtc stress``: the store's bars and book in, :func:`~operators.risk.stress.stress`, a row out.

The history: each symbol's bar closes from the ``bars`` table, on the bar
grid (the smallest step between the book's symbols' bar times), a missing bar carrying the last
close (no trade, no move), from the first time every symbol of the book has
a close; log returns of that grid. The book: given (``SYMBOL=QTY`` base
quantities, valued at the last close) or the store's (net quantities over
the ``fills`` table; equity and drawdown from the latest ``portfolio`` row).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from operators.risk.settings import RiskSettings
from operators.risk.stress import StressInput, StressOutcome, StressSettings, stress
from schemas.ddl import STRESS
from schemas.errors import UsageProblem
from schemas.records import BUY, StressResult
from sinks.clickhouse_store import FINEST_BARS, Store, redact
from sinks.store_sink import record_columns

_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class StressProblem(UsageProblem):
    """Unusable stress inputs (no bars, an unknown symbol, an empty book): one line, exit 2."""


@dataclass(frozen=True, slots=True)
class History:
    """Aligned closes: ``symbols``, the grid times (epoch ms) and closes (times x symbols)."""

    symbols: tuple[str, ...]
    ts: np.ndarray
    closes: np.ndarray
    bar_ms: int

    def returns(self) -> np.ndarray:
        return np.diff(np.log(self.closes), axis=0)


@dataclass(frozen=True, slots=True)
class Book:
    """Base quantities per symbol, the equity and the peak equity (None: the equity)."""

    qty: dict[str, float]
    equity: float
    peak: float | None
    source: str


def parse_positions(items: list[str]) -> dict[str, float]:
    """``SYMBOL=QTY`` items (repeatable; a symbol given twice adds up).

    >>> parse_positions(["BTC/USDT=0.5", "ETH/USDT=-2", "BTC/USDT=0.25"])
    {'BTC/USDT': 0.75, 'ETH/USDT': -2.0}
    """
    out: dict[str, float] = {}
    for item in items:
        sym, sep, qty = item.partition("=")
        try:
            value = float(qty)
        except ValueError:
            value = math.nan
        if not sep or not sym.strip() or not math.isfinite(value):
            msg = f"--position {item!r}: expected SYMBOL=QTY (a finite base quantity, e.g. BTC/USDT=0.5)"
            raise StressProblem(msg)
        out[sym.strip()] = out.get(sym.strip(), 0.0) + value
    return out


def horizon_bars(text: str, bar_ms: int) -> int:
    """``--horizon``: bars (``60``) or a time (``3600s``, ``90m``, ``4h``, ``1d``), rounded up to bars.

    >>> horizon_bars("60", 60_000), horizon_bars("3600s", 60_000), horizon_bars("90s", 60_000)
    (60, 60, 2)
    """
    text = text.strip()
    unit = _UNITS_MS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        value = float(number) if unit else int(number)
    except ValueError:
        value = -1
    bars = math.ceil(value * unit / bar_ms) if unit and value > 0 and math.isfinite(value) else value
    if bars < 1:
        msg = f"--horizon {text!r}: expected bars (60) or a time (3600s, 90m, 4h, 1d) of at least one bar"
        raise StressProblem(msg)
    return int(bars)


def load_history(store: Store, symbols: list[str], since_ms: int | None, bars: int | None) -> History:
    """The aligned closes of ``symbols`` from the ``bars`` table (see the module docstring)."""
    rows = store.query(
        "SELECT symbol, toUnixTimestamp64Milli(ts) AS t, close FROM bars FINAL "
        f"WHERE {FINEST_BARS} ORDER BY t"
    ).result_rows
    if not rows:
        msg = "the store has no bars: replay or run something first (qbtc replay FILE --store ...)"
        raise StressProblem(msg)
    have = sorted({r[0] for r in rows})
    unknown = [s for s in symbols if s not in have]
    if unknown:
        msg = f"unknown symbol {', '.join(unknown)}: no bars in the store (it has {', '.join(have)})"
        raise StressProblem(msg)
    per = {s: ([], []) for s in symbols}
    for sym, t, close in rows:
        if sym in per:
            per[sym][0].append(t)
            per[sym][1].append(close)
    steps = np.diff(np.unique(np.concatenate([np.asarray(t, dtype=np.int64) for t, _ in per.values()])))
    bar_ms = int(steps.min()) if steps.size else 1
    start = max(t[0] for t, _ in per.values())
    end = max(t[-1] for t, _ in per.values())
    if since_ms is not None:
        start = max(start, since_ms + (-(since_ms - start) % bar_ms))  # the first grid time >= since
    grid = np.arange(start, end + 1, bar_ms, dtype=np.int64)
    closes = np.empty((grid.size, len(symbols)))
    for j, sym in enumerate(symbols):
        t, c = np.asarray(per[sym][0], dtype=np.int64), np.asarray(per[sym][1], dtype=float)
        closes[:, j] = c[np.searchsorted(t, grid, side="right") - 1]  # the last close at or before
    if bars is not None:
        grid, closes = grid[-(bars + 1) :], closes[-(bars + 1) :]
    if grid.size < 3 or not (np.isfinite(closes).all() and (closes > 0).all()):
        msg = f"{max(grid.size - 1, 0)} bars of returns for {', '.join(symbols)}: too few (or bad closes)"
        raise StressProblem(msg)
    return History(tuple(symbols), grid, closes, bar_ms)


def store_book(store: Store, equity: float | None) -> Book:
    """The store's book: net fills per symbol, equity and peak from the latest ``portfolio`` row."""
    rows = store.query(
        f"SELECT symbol, sum(if(side = '{BUY}', qty, -qty)), sum(qty) FROM fills FINAL "
        "GROUP BY symbol ORDER BY symbol"
    ).result_rows
    # a position closed in parts nets to rounding dust (1e-12 of what was traded): that is flat
    qty = {sym: float(q) for sym, q, traded in rows if abs(q) > 1e-9 * traded}
    if not qty:
        msg = "empty portfolio: the store's fills table nets to no position; give --position SYMBOL=QTY"
        raise StressProblem(msg)
    last = store.query("SELECT equity, drawdown FROM portfolio FINAL ORDER BY ts DESC LIMIT 1").result_rows
    peak = None
    if equity is None:
        if not last:
            msg = "the store's portfolio table has no rows to take the equity from: give --equity"
            raise StressProblem(msg)
        equity, drawdown = float(last[0][0]), float(last[0][1])
        peak = equity / (1.0 - drawdown) if 0.0 <= drawdown < 1.0 else None
    return Book(qty, equity, peak, "the store (fills, portfolio)")


def run_id(inp: StressInput, symbols: tuple[str, ...], settings: StressSettings, risk: RiskSettings) -> str:
    """A hash of everything that decides the result: the same run gets the same id."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(inp.returns).tobytes())
    h.update(np.ascontiguousarray(inp.values).tobytes())
    kills = (risk.kill_drawdown, risk.kill_daily_loss, risk.kill_weekly_loss, risk.kill_monthly_loss)
    h.update(repr((symbols, inp.equity, inp.peak_equity, inp.start_ts, inp.bar_ms, settings, kills)).encode())
    return h.hexdigest()[:20]


def result_row(
    rid: str, inp: StressInput, hist: History, s: StressSettings, out: StressOutcome
) -> StressResult:
    """The ``stress`` table's row of one run."""
    e = inp.equity
    positions = ",".join(f"{sym}={v:.8g}" for sym, v in zip(hist.symbols, inp.values, strict=True))
    return StressResult(
        rid, inp.start_ts, s.method, s.scenarios, s.horizon_bars, hist.bar_ms, s.seed, out.residual_bars,
        positions, e, out.dof, out.var95, out.es95, out.var99, out.es99, out.worst,
        out.var95 / e, out.es95 / e, out.var99 / e, out.es99 / e, out.worst / e, out.mean_pnl, out.p_loss,
        out.kill["drawdown"], out.kill["daily_loss"], out.kill["weekly_loss"], out.kill["monthly_loss"],
        out.kill["any"], out.recovery_mean_bars, out.recovery_unrecovered, out.recovery_cap_bars,
    )  # fmt: skip


def stderr_progress() -> Callable[[int, int], None]:
    """A progress callback printing ``done/total scenarios`` and the rate on stderr."""
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        end = "\r" if sys.stderr.isatty() else "\n"
        pct = 100.0 * done / total
        sys.stderr.write(
            f"qbtc: stress {pct:5.1f}% {done:,}/{total:,} scenarios, {rate:,.0f} scenarios/s{end}"
        )
        sys.stderr.flush()

    return report


def _interval(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def summary(
    row: StressResult, book: Book, hist: History, risk: RiskSettings, seconds: float, dsn: str
) -> str:
    """The readable report of one run."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(row.ts / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    method = row.method
    if row.method == "t_copula":
        method += f", {row.dof:g} degrees of freedom" if len(hist.symbols) > 1 else ", one symbol: no copula"
    lines = [
        f"stress: {row.scenarios:,} scenarios ({method}, seed {row.seed}) of {row.horizon_bars:,} bars "
        f"of {_interval(row.bar_ms)} from {when}, in {seconds:.1f} s",
        f"history: {row.history_bars:,} residual bars of {', '.join(hist.symbols)}",
        f"book ({book.source}): equity {row.equity:,.2f}"
        + (f", peak {book.peak:,.2f}" if book.peak is not None else ""),
    ]
    for sym, value, close in zip(hist.symbols, [float(v.split("=")[1]) for v in row.positions.split(",")],
                                 hist.closes[-1], strict=True):  # fmt: skip
        lines.append(f"  {sym:<14}{book.qty.get(sym, 0.0):>14.8g} @ {close:>12,.6g} = {value:>14,.2f}")
    lines.append(f"{'':<10}{'loss':>14}{'of equity':>11}")
    for name, loss, share in (
        ("VaR 95%", row.var95, row.var95_share),
        ("ES 95%", row.es95, row.es95_share),
        ("VaR 99%", row.var99, row.var99_share),
        ("ES 99%", row.es99, row.es99_share),
        ("worst", row.worst, row.worst_share),
    ):
        lines.append(f"{name:<10}{loss:>14,.2f}{share:>10.2%}")
    lines.append(f"mean P&L {row.mean_pnl:,.2f}; P(loss) {row.p_loss:.1%}")
    kills = (
        (f"drawdown > {risk.kill_drawdown:.0%}", row.p_kill_drawdown),
        (f"daily loss > {risk.kill_daily_loss:.0%}", row.p_kill_daily_loss),
        (f"weekly loss > {risk.kill_weekly_loss:.0%}", row.p_kill_weekly_loss),
        (f"monthly loss > {risk.kill_monthly_loss:.0%}", row.p_kill_monthly_loss),
        ("any", row.p_kill_any),
    )
    lines.append("kill switch within the horizon: " + ", ".join(f"{n} {p:.2%}" for n, p in kills))
    if row.recovery_cap_bars and math.isfinite(row.recovery_unrecovered):
        mean = "none" if math.isnan(row.recovery_mean_bars) else f"{row.recovery_mean_bars:,.1f} bars"
        lines.append(
            f"time to recover a loss: mean {mean} (of those back at 0 within {row.recovery_cap_bars:,} "
            f"bars); {row.recovery_unrecovered:.1%} of losing scenarios not back within the cap"
        )
    lines.append(f"stored: stress run_id {row.run_id} in {redact(dsn)}")
    lines.append(f"  qbtc sql \"SELECT * FROM stress FINAL WHERE run_id = '{row.run_id}'\"")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class StressRequest:
    """The command line's choices, typed once."""

    positions: dict[str, float]
    equity: float | None
    since_ms: int | None
    bars: int | None
    horizon: str | None
    settings: StressSettings
    quiet: bool


def run_stress(store: Store, req: StressRequest, risk: RiskSettings) -> str:
    """Load, simulate, store; returns the summary."""
    if req.equity is not None and not (math.isfinite(req.equity) and req.equity > 0):
        msg = f"--equity must be a finite number > 0, got {req.equity!r}"
        raise StressProblem(msg)
    if req.positions:
        if req.equity is None:
            msg = "--position needs --equity (the portfolio's equity in quote units)"
            raise StressProblem(msg)
        book = Book({k: v for k, v in req.positions.items() if v != 0.0}, req.equity, None, "given")
        if not book.qty:
            msg = "empty portfolio: every --position is 0"
            raise StressProblem(msg)
    else:
        book = store_book(store, req.equity)
    symbols = sorted(book.qty)
    hist = load_history(store, symbols, req.since_ms, req.bars)
    s = req.settings
    if req.horizon is not None:
        s = dataclasses.replace(s, horizon_bars=horizon_bars(req.horizon, hist.bar_ms))
    values = np.array([book.qty[sym] for sym in symbols]) * hist.closes[-1]
    inp = StressInput(hist.returns(), values, book.equity, int(hist.ts[-1]), hist.bar_ms, book.peak)
    start = time.perf_counter()
    try:
        out = stress(inp, s, risk, None if req.quiet else stderr_progress())
    except ValueError as exc:
        raise StressProblem(str(exc)) from None
    seconds = time.perf_counter() - start
    row = result_row(run_id(inp, hist.symbols, s, risk), inp, hist, s, out)
    store.insert(STRESS, record_columns("stress", [row]))
    return summary(row, book, hist, risk, seconds, store.dsn)
