"""The report's SQL-built series against hand-computed values, its errors, and the HTML it writes.

The store is made in a subprocess (chDB holds one engine per process) from hand-made rows:
run A has six portfolio steps over three months, four fills of two symbols and bars around
them; run B shares A's timestamps (its rows must not leak into A's series); run C did not
trade. The subprocess prints every series as JSON.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.report_series import return_period, thin

ROOT = Path(__file__).resolve().parents[1]

MAKE_AND_READ = r"""
import json, sys
from datetime import UTC, datetime
from schemas.ddl import TABLES
from sinks.clickhouse_store import Store
from flows import report_series as rs
from flows.html_report import write_report

def ms(text):
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)

STEPS = ["2024-01-31 23:58", "2024-01-31 23:59", "2024-02-01 00:00", "2024-02-01 00:01",
         "2024-03-01 00:00", "2024-03-01 00:01"]
store = Store(sys.argv[1])

def default(ctype):
    return 0.0 if ctype == "Float64" else 0 if ("Int" in ctype or "DateTime" in ctype) else ""

def put(table, rows):
    data = {name: [row.get(name, default(ctype)) for row in rows] for name, ctype in TABLES[table].columns}
    store.insert(TABLES[table], data)

def steps(run, equity, var, levels, modes):
    put("portfolio", [dict(run_id=run, ts=ms(t), equity=e, cash=e, gross_exposure=10.0, net_exposure=5.0,
                           leverage=0.1, var95=v, breaker_level=b, mode=m)
                      for t, e, v, b, m in zip(STEPS, equity, var, levels, modes)])

def fill(run, oid, t, sym, side, qty, price, fee, slip=0.0):
    return dict(run_id=run, ts=ms(t), order_id=oid, symbol=sym, side=side, qty=qty, price=price, fee=fee,
                slippage_bps=slip)

def order(run, oid, strategy, reason):
    return dict(run_id=run, order_id=oid, strategy=strategy, reason=reason, symbol="X/USDT", side="buy",
                qty=1.0, order_type="market")

def bar(sym, t, close):
    return dict(symbol=sym, ts=ms(t), open=close, high=close, low=close, close=close, volume=1.0, vwap=close,
                trades=1)

def kill(run, message):
    return dict(run_id=run, ts=ms(STEPS[5]), kind="kill_switch", level=3, action="flatten", message=message)

def run_row(rid, started, trade):
    return dict(run_id=rid, kind="replay", status="finished", started=ms(started), finished=ms(started),
                command="qbtc replay x --trade", input="x", trade=trade, start_equity=100.0,
                end_equity=121.0, first_ts=ms(STEPS[0]), last_ts=ms(STEPS[5]),
                settings='{"risk": {"enabled": true}}')

steps("A", [100, 110, 99, 104.5, 88, 121], [0, 2, 3, 0, 1, 1], [0, 1, 1, 0, 0, 0],
      ["normal", "normal", "defensive", "defensive", "defensive", "normal"])
steps("B", [100, 50, 200, 10, 300, 1], [0, 100, 100, 100, 100, 100], [3] * 6, ["halted"] * 6)
steps("D", [100] * 6, [0] * 6, [0] * 6, ["normal"] * 6)  # traded nothing
steps("", [100, 101, 102, 103, 104, 105], [0] * 6, [0] * 6, ["normal"] * 6)  # written before run ids
put("fills", [
    fill("A", "o1", STEPS[1], "X/USDT", "buy", 1.0, 10.0, 1.0, 1000.0),
    fill("A", "o2", STEPS[3], "X/USDT", "buy", 2.0, 12.0, 0.5),
    fill("A", "o3", STEPS[4], "X/USDT", "sell", 1.0, 15.0, 0.25),
    fill("A", "o4", STEPS[2], "Y/USDT", "sell", 1.0, 5.0, 0.0),
    fill("B", "o1", STEPS[1], "Y/USDT", "buy", 100.0, 10.0, 50.0, 100.0),
])
put("orders", [order("A", "o1", "trend", "entry"), order("A", "o2", "meanrev", "entry"),
               order("A", "o3", "risk", "cut"), order("B", "o1", "other", "entry")])
put("bars", [bar("X/USDT", STEPS[0], 9.0), bar("X/USDT", STEPS[5], 20.0),
             bar("X/USDT", "2024-03-02 00:00", 999.0), bar("Y/USDT", STEPS[4], 4.0)])
put("risk_events", [kill("A", "drawdown"), kill("B", "not A's")])
def metrics(run, t, sym, n, ll, acc, ece, hit, prob, drift):
    return dict(run_id=run, ts=ms(t), symbol=sym, model="online_model", n=n, log_loss=ll, accuracy=acc,
                calibration_error=ece, hit_rate_30d=hit, mean_prob_30d=prob, drift=drift)

put("model_metrics", [
    metrics("A", STEPS[2], "X/USDT", 100, 0.7, 0.5, 0.1, 0.5, 0.6, 0),
    metrics("A", STEPS[2], "Y/USDT", 100, 0.5, 0.7, 0.3, 0.7, 0.9, 1),
    metrics("A", STEPS[5], "X/USDT", 200, 0.6, 0.6, 0.2, 0.6, 0.55, 0),
    metrics("B", STEPS[1], "X/USDT", 50, 9.0, 0.1, 0.9, 0.1, 0.9, 1),  # not A's
])
put("runs", [run_row("A", "2024-04-01 00:00", 1), run_row("B", "2024-04-02 00:00", 1),
             run_row("C", "2024-04-03 00:00", 0), run_row("D", "2024-03-31 00:00", 1)])

out = {}
a = rs.find_run(store, "A")
out["run"] = {k: a[k] for k in ("run_id", "steps", "t0", "t1", "start_equity", "started", "first_ts")}
out["run"]["started_want"] = ms("2024-04-01 00:00")
out["newest"] = rs.find_run(store, None)["run_id"]
out["portfolio"] = {k: [None if isinstance(x, float) and x != x else x for x in v.tolist()]
                    for k, v in rs.portfolio(store, "A").items()}
out["timeline"] = rs.risk_timeline(store, "A")
out["monthly"] = rs.monthly_returns(store, "A")
out["periods"] = {k: [None if isinstance(x, float) and x != x else x for x in v.tolist()]
                  for k, v in rs.period_returns(store, "A", 3_600_000, 2).items()}
out["costs"] = rs.costs(store, "A")
out["strategies"] = rs.strategy_pnl(store, "A", a["t0"], a["t1"])
out["traded"] = rs.traded_symbols(store, "A")
out["kills"] = rs.kill_switches(store, "A")
out["fills_x"] = rs.symbol_fills(store, "A", "X/USDT")
out["models"] = {k: v.tolist() for k, v in rs.model_metrics(store, "A").items()}
out["model_latest"] = {"A": rs.model_latest(store, "A"), "D": rs.model_latest(store, "D")}
made = write_report(store, sys.argv[2], run="A", compare="B")
out["report"] = {"runs": list(made.runs), "symbol": made.symbol, "size": made.size}
idle = write_report(store, sys.argv[2] + ".idle.html", run="D")
out["idle"] = {"symbol": idle.symbol, "page": open(idle.path).read().count('class="plotly-graph-div"')}
errors = {}
for name, call in [
    ("unknown", lambda: write_report(store, sys.argv[2], run="nope")),
    ("no_trading", lambda: write_report(store, sys.argv[2], run="C")),
    ("same", lambda: write_report(store, sys.argv[2], run="A", compare="A")),
    ("symbol", lambda: write_report(store, sys.argv[2], run="A", symbol="Z/USDT")),
    ("unwritable", lambda: write_report(store, "/nonexistent-dir/r.html", run="A")),
]:
    try:
        call()
    except Exception as exc:
        errors[name] = [type(exc).__name__, str(exc), getattr(exc, "exit_code", None)]
legacy = write_report(store, sys.argv[2] + ".legacy.html", run="")
out["legacy"] = {"kind": rs.find_run(store, "")["kind"], "runs": list(legacy.runs)}
store.command("TRUNCATE TABLE runs")
out["legacy"]["default"] = rs.find_run(store, None)["run_id"]
store.command("DROP TABLE runs")
try:
    rs.find_run(store, None)
except Exception as exc:
    errors["no_runs_table"] = [type(exc).__name__, str(exc), exc.exit_code]
out["errors"] = errors
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    where = tmp_path_factory.mktemp("report")
    html = where / "r.html"
    proc = subprocess.run(
        [sys.executable, "-c", MAKE_AND_READ, f"chdb://{where / 's.chdb'}", str(html)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TZ": "America/New_York"},  # the store's times are UTC whatever the local zone
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["html"] = html.read_text(encoding="utf-8")
    return out


def _close(got, want, tol=1e-9) -> bool:
    return len(got) == len(want) and all(
        (g is None and w is None) or (g is not None and w is not None and math.isclose(g, w, abs_tol=tol))
        for g, w in zip(got, want, strict=True)
    )


def test_the_run_and_the_newest_trading_run_and_the_span(made):
    run = made["run"]
    assert run["run_id"] == "A" and run["steps"] == 6
    assert run["t1"] - run["t0"] == (29 * 1440 + 3) * 60_000
    assert run["first_ts"] == run["t0"] and run["started"] == run["started_want"]
    assert made["newest"] == "B"  # C is newer but did not trade


def test_underwater_is_equity_over_its_running_peak_only_from_the_runs_own_rows(made):
    p = made["portfolio"]
    assert _close(p["equity"], [100, 110, 99, 104.5, 88, 121])
    assert _close(p["underwater"], [0, 0, 99 / 110 - 1, 104.5 / 110 - 1, 88 / 110 - 1, 0])


def test_step_pnl_adds_back_the_costs_the_step_booked_and_exceedances_need_a_forecast(made):
    p = made["portfolio"]
    # o1 at step 2's close (fee 1 + 1000 bps of 10) is booked by step 3; o4 (no costs) by 4;
    # o2 (fee 0.5) by 5; o3 (fee 0.25) by 6
    assert _close(p["costs"], [0, 0, 2, 0, 0.5, 0.25])
    assert _close(p["pnl"], [None, 10, 99 - 110 + 2, 5.5, 88 - 104.5 + 0.5, 33.25])
    assert _close(p["var_prev"], [None, 0, 2, 3, 0, 1])
    # step 3 lost 9 against a VaR of 2; step 5 lost 16 without a forecast (VaR 0); the rest gained
    assert [int(x) for x in p["exceeded"]] == [0, 0, 1, 0, 0, 0]


def test_the_risk_timeline_keeps_the_first_and_last_steps_and_every_change(made):
    t = made["timeline"]
    assert t["breaker_level"] == [0, 1, 1, 0, 0]
    assert t["mode"] == ["normal", "normal", "defensive", "defensive", "normal"]
    assert [made["portfolio"]["t"].index(x) for x in t["t"]] == [0, 1, 2, 3, 5]
    assert made["kills"]["message"] == ["drawdown"]


def test_monthly_returns_chain_each_months_last_equity(made):
    m = made["monthly"]
    assert list(zip(m["year"], m["month_no"], strict=True)) == [(2024, 1), (2024, 2), (2024, 3)]
    assert _close(m["ret"], [110 / 100 - 1, 104.5 / 110 - 1, 121 / 104.5 - 1])


def test_period_returns_and_their_rolling_sharpe(made):
    p = made["periods"]
    rets = [110 / 100 - 1, 104.5 / 110 - 1, 121 / 104.5 - 1]  # hours 23:00, 00:00 (Feb 1), 00:00 (Mar 1)
    assert _close(p["ret"], rets)
    per_year = 365 * 24
    want = [None] + [
        np.mean(rets[i - 1 : i + 1]) / np.std(rets[i - 1 : i + 1], ddof=1) * math.sqrt(per_year)
        for i in (1, 2)
    ]
    assert _close(p["sharpe"], want, tol=1e-6)


def test_costs_and_turnover_of_the_runs_fills(made):
    c = made["costs"]
    assert c["fills"] == 4
    assert math.isclose(c["fees"], 1.75) and math.isclose(c["turnover"], 10 + 24 + 15 + 5)
    assert math.isclose(c["slippage"], 1.0)
    assert made["traded"] == ["X/USDT", "Y/USDT"]


def test_pnl_by_strategy_credits_each_position_until_the_next_fill_and_marks_the_last_at_the_close(made):
    s = made["strategies"]
    got = {
        name: (n, g, f)
        for name, n, g, f in zip(s["strategy"], s["fills"], s["gross"], s["fees"], strict=True)
    }
    # X: 1 @ 10 (trend) -> 3 @ 12 (meanrev) -> 2 @ 15 (risk), last close in the span 20 (not 999 after it)
    # Y: -1 @ 5 with no order row, last close 4
    want = {
        "trend": (1, 1 * (12 - 10), 1.0),
        "meanrev": (1, 3 * (15 - 12), 0.5),
        "risk": (1, 2 * (20 - 15), 0.25),
    }
    want["(no order)"] = (1, -1 * (4 - 5), 0.0)
    assert set(got) == set(want)
    for name, (n, gross, fees) in want.items():
        assert got[name][0] == n and math.isclose(got[name][1], gross) and math.isclose(got[name][2], fees)
    # the gross parts are the symbols' trading P&L: cash flows plus the final positions at the closes
    cash = -10 - 24 + 15 + 5
    assert math.isclose(sum(s["gross"]), cash + 2 * 20 + (-1) * 4)
    assert s["net"] == sorted(s["net"], reverse=True)


def test_fills_of_a_symbol_carry_their_orders_strategy_and_reason(made):
    f = made["fills_x"]
    assert f["side"] == ["buy", "buy", "sell"] and f["strategy"] == ["trend", "meanrev", "risk"]
    assert f["reason"] == ["entry", "entry", "cut"]


def test_errors_are_one_line_usage_problems(made):
    e = made["errors"]
    assert e["unknown"][1] == "no run 'nope' in the store (newest runs: C, B, A, D; qbtc runs lists them)"
    assert e["no_trading"][1] == "run 'C' has no trading rows (a replay without --trade?): no report"
    assert "--compare names the run being reported ('A')" in e["same"][1]
    assert e["symbol"][1] == "no bars of 'Z/USDT' in the span of run 'A' (symbols it traded: X/USDT, Y/USDT)"
    assert e["unwritable"][1] == "cannot write /nonexistent-dir/r.html: No such file or directory"
    assert e["no_runs_table"][1].startswith("the store has no runs table")
    for name, (kind, text, code) in e.items():
        assert kind == "ReportProblem" and code == 2 and "\n" not in text, name


def test_the_html_embeds_plotly_once_and_nothing_from_outside(made):
    page = made["html"]
    assert made["report"]["runs"] == ["A", "B"] and made["report"]["symbol"] == "X/USDT"
    assert page.count('class="plotly-graph-div"') == 10  # with the online model's chart (run A has rows)
    assert page.count("* plotly.js v") == 1  # the bundle's banner
    assert "<script src" not in page and "<link" not in page and "cdn.plot.ly/plotly" not in page
    assert "fonts.googleapis" not in page
    labels = ("fees paid", "turnover (traded notional)", "costs (fees + slippage)", "orders blocked by cost")
    for label in (
        *labels,
        "Monthly returns",
        "Online model: progressive validation",
        "online model: accuracy",
    ):
        assert label in page


def test_the_online_models_metrics_mean_over_symbols_per_time_and_their_latest_figures(made):
    m = made["models"]
    assert m["symbols"] == [2, 1] and [made["portfolio"]["t"].index(t) for t in m["t"]] == [2, 5]
    assert _close(m["log_loss"], [0.6, 0.6]) and _close(m["accuracy"], [0.6, 0.6])
    assert _close(m["calibration_error"], [0.2, 0.2])
    a = made["model_latest"]["A"]  # X's row at step 5, Y's at step 2; B's row is not A's
    assert (a["symbols"], a["forecasts"], a["drifting"]) == (2, 300, 1)
    got = [a[k] for k in ("log_loss", "accuracy", "calibration_error", "hit_rate_30d", "mean_prob_30d")]
    assert _close(got, [0.55, 0.65, 0.25, 0.65, 0.725])
    assert made["model_latest"]["D"]["symbols"] == 0


def test_return_period_is_the_longest_giving_enough_returns():
    day = 86_400_000
    assert return_period(0, 30 * day, 60_000) == 3_600_000
    assert return_period(0, 400 * day, 60_000) == day
    assert return_period(0, 900_000, 1_000) == 1_000
    assert return_period(0, 60_000, 60_000) == 60_000  # too short for any: the step itself


def test_thinning_keeps_each_slices_extremes_the_ends_and_the_kept_points():
    rng = np.random.default_rng(3)
    key = np.cumsum(rng.normal(size=43_200))
    kept = np.array([17, 30_001])
    t = thin(key, 2000, keep=kept)
    assert t.thinned and t.total == key.size and len(t.index) <= 2000 + 4
    assert {0, key.size - 1, 17, 30_001} <= set(t.index.tolist())
    assert int(np.argmin(key)) in t.index and int(np.argmax(key)) in t.index
    assert np.all(np.diff(t.index) > 0)
    short = thin(key[:500], 2000)
    assert not short.thinned and short.index.tolist() == list(range(500))


def test_a_run_without_fills_has_no_price_chart(made):
    assert made["idle"] == {"symbol": None, "page": 8}


def test_rows_written_before_run_ids_are_a_run_of_their_own(made):
    # the default only when no run in the runs table traded
    assert made["legacy"] == {"kind": "before run ids", "runs": ["(before run ids)"], "default": ""}
