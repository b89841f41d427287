"""The cost gate: an order that adds exposure goes on only when its expected edge beats its cost.

One strategy (``Hold``: long at a fixed strength, or flat) trades one symbol
whose price stands at 100 (bars 99.5-100.5, a volume so large that no order
has market impact) with a constant per-bar volatility; the paper returns
alternate 0.2% and 0 so the strategy's record is positive and its weight 1.
Then, hand-computed with the defaults (taker fee 10 bps, spread 2 bps x
(1 + 0.5 x normalised volatility 1)), every entry costs 13 bps, and
``edge_horizon_s = 1500`` (25 bars of a minute) makes sqrt(H) = 5.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from flows.config import load_settings
from flows.report import trading_summary
from flows.runs import Run
from flows.trading_settings import trading_settings
from operators.execution.cost_model import BrokerSettings, taker_cost_bps, taker_slippage_bps
from operators.execution.paper_broker import PaperBroker
from operators.execution.venue import BarContext
from operators.risk.settings import RiskSettings
from operators.signals.cost_gate import BLOCKED, NOT_EVALUATED, PASS, edge_bps
from operators.signals.sizing import fib_ladder
from operators.signals.strategy import BarStrategy, StrategySpec
from operators.trading_loop import TradingLoop, TradingSettings
from schemas.codec import decode, encode
from schemas.ddl import SIGNALS
from schemas.records import BUY, MARKET, Bar, Feature, Fill, Order, Signal
from tests.flow_harness import SHORT_TRADING
from tests.test_trading_flow import _run

D = 60_000
T0 = 1_620_000_000_000 // D * D
SYMBOL = "A/USDT"
EQUITY = 100_000.0  # PortfolioSettings' initial cash
COST = 10.0 + 2.0 * 1.5  # taker fee + spread x (1 + 0.5 x 1), no impact


@dataclass(frozen=True, slots=True)
class HoldSettings:
    strength: float = 0.5
    flat: bool = False


class Hold(BarStrategy):
    """Long at ``strength`` on every bar (flat with ``flat``), in every regime."""

    name = "hold"
    settings_class = HoldSettings

    def _step(self, bar, feature, active):
        return (0, 0.0) if self.settings.flat else (1, self.settings.strength)


def _loop(strength=0.5, flat=False, gate=True, risk=False, **keys) -> TradingLoop:
    settings = TradingSettings(
        bar_interval_ms=D,
        strategies=(StrategySpec("hold", Hold, HoldSettings(strength, flat)),),
        risk=RiskSettings(enabled=risk),
        cost_gate=gate,
        edge_horizon_s=1500,
        **keys,
    )
    return TradingLoop(settings)


def _run_loop(loop: TradingLoop, sigma: float, bars: int = 90, controls=()) -> dict[str, list]:
    for ts, command in controls:
        loop.add_control(ts, command, "test")
    out: dict[str, list] = {}
    for k in range(bars):
        ts = T0 + k * D
        bar = Bar(SYMBOL, ts, 100.0, 100.5, 99.5, 100.0, 1e9, 100.0, 10)
        feat = Feature(SYMBOL, ts, 0.002 if k % 2 else 0.0, sigma, 0.5, 0.0, 0.0, 0.0, 0)
        loop.add(SYMBOL, [bar], [feat])
        for table, rows in loop.advance(ts // D):
            out.setdefault(table, []).extend(rows)
    return out


def _composites(out) -> list[Signal]:
    return [s for s in out.get("signals", []) if s.strategy == "composite"]


def _entries(out) -> list[Order]:
    return [o for o in out.get("orders", []) if o.reason == "entry"]


def test_edge_is_strength_times_the_volatility_over_the_holding_period():
    assert edge_bps(0.5, 0.002, 25, 0.1) == pytest.approx(5.0)  # 0.1 x 0.5 x 0.002 x 5 x 10_000
    assert edge_bps(1.0, 0.01, 100, 0.2) == pytest.approx(200.0)
    assert edge_bps(0.5, math.nan, 25, 0.1) == 0.0  # unknown volatility: no edge


def test_expected_cost_is_fee_plus_the_slippage_the_paper_venue_charges():
    s = BrokerSettings(bar_interval_ms=D)
    assert taker_cost_bps(s, 1.0, 100.0, 1.0, 1e9) == pytest.approx(COST)
    assert taker_cost_bps(s, 4.0, 100.0, 2.0, 100.0) == pytest.approx(10.0 + 4.0 + 2.0)  # impact 10 x 0.2
    # what the paper broker then charges a market order at the next open is that cost
    broker = PaperBroker(s)
    broker.on_bar(Bar(SYMBOL, T0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 1))
    broker.submit(Order(T0 + D, "o1", "", SYMBOL, BUY, 4.0, MARKET, 0.0, "entry", "x"))
    ctx = BarContext(normalised_vol=2.0, recent_volume=100.0)
    (fill,) = broker.on_bar(Bar(SYMBOL, T0 + D, 100.0, 101.0, 99.0, 100.0, 100.0, 100.0, 1), ctx).fills
    paid = (fill.price / 100.0 - 1.0) * 1e4 + fill.fee / (fill.qty * fill.price) * 1e4
    assert paid == pytest.approx(taker_cost_bps(s, 4.0, 100.0, 2.0, 100.0))
    assert fill.slippage_bps == pytest.approx(taker_slippage_bps(s, 4.0, 2.0, 100.0))


def test_an_entry_whose_edge_is_below_its_cost_is_not_sent_and_its_signal_says_blocked():
    loop = _loop()
    out = _run_loop(loop, sigma=0.002)  # edge 0.1 x 0.5 x 0.002 x 5 = 5 bps < 13
    assert not out.get("orders") and not out.get("fills")
    gated = [s for s in _composites(out) if s.gate]
    assert gated and {s.gate for s in gated} == {BLOCKED}
    for s in gated:
        assert (s.direction, s.strength) == (1, 0.5)
        assert s.edge_bps == pytest.approx(5.0) and s.cost_bps == pytest.approx(COST)
    summary = loop.summary()
    assert summary["orders_blocked_by_cost"] == len(gated)
    # each blocked order: the first ladder tranche of 0.5 x min(f_vol 0.26, cap 0.2) of equity, at 100
    first = fib_ladder(0.5 * 0.2 * EQUITY / 100.0, 3)[0]
    assert summary["cost_saved"] == pytest.approx(len(gated) * COST / 1e4 * first * 100.0)


def test_an_entry_whose_edge_beats_its_cost_is_sent_with_its_inputs_on_the_signal():
    out = _run_loop(_loop(), sigma=0.01)  # edge 0.1 x 0.5 x 0.01 x 5 = 25 bps > 13
    entries = _entries(out)
    assert len(entries) == 3  # the three ladder tranches, then the position is within its band
    passed = [s for s in _composites(out) if s.gate == PASS]
    assert [s.ts for s in passed] == [o.ts for o in entries]
    for s in passed:
        assert s.edge_bps == pytest.approx(25.0) and s.cost_bps == pytest.approx(COST)
    later = [s for s in _composites(out) if s.ts > entries[-1].ts]
    assert later and all(s.gate == NOT_EVALUATED and math.isnan(s.edge_bps) for s in later)
    # the same trade at a cost ratio of 2 (paying for the exit too) is not worth it
    assert not _entries(_run_loop(_loop(cost_ratio=2.0), sigma=0.01))
    # and a larger edge scale makes the low-volatility trade of the test above worth it
    assert _entries(_run_loop(_loop(edge_scale=0.3), sigma=0.002))  # 15 bps > 13


def test_with_the_gate_off_everything_is_sent_as_before():
    out = _run_loop(_loop(gate=False), sigma=0.002)
    assert len(_entries(out)) == 3
    assert all(s.gate == NOT_EVALUATED and math.isnan(s.cost_bps) for s in _composites(out))


def test_an_exit_is_sent_with_zero_edge():
    loop = _loop(flat=True)
    loop.portfolio.apply_fill(Fill(T0, "seed", SYMBOL, BUY, 100.0, 100.0, 0.0, 0.0))
    out = _run_loop(loop, sigma=0.002)
    (exit_,) = out["orders"]
    assert (exit_.reason, exit_.side, exit_.qty) == ("exit", "sell", 100.0)
    assert all(s.gate == NOT_EVALUATED for s in _composites(out))
    assert loop.summary()["orders_blocked_by_cost"] == 0


def test_de_risking_to_a_lower_target_is_not_gated():
    loop = _loop()  # the target is 10% of equity, the seeded position 20%: sell half
    loop.portfolio.apply_fill(Fill(T0, "seed", SYMBOL, BUY, 200.0, 100.0, 0.0, 0.0))
    out = _run_loop(loop, sigma=0.002, bars=70)  # the edge (5 bps) would not pay an entry
    (cut,) = out["orders"]
    assert (cut.reason, cut.side) == ("exit", "sell") and cut.qty == pytest.approx(100.0)


def test_the_risk_engines_flatten_is_sent_while_entries_are_blocked():
    loop = _loop(risk=True)  # the target is 10% of equity, the seeded position 3%
    loop.portfolio.apply_fill(Fill(T0, "seed", SYMBOL, BUY, 30.0, 100.0, 0.0, 0.0))
    out = _run_loop(loop, sigma=0.002, controls=[(T0 + 80 * D, "flatten")])
    gated = [s.gate for s in _composites(out) if s.ts < T0 + 80 * D and s.gate]
    assert gated and set(gated) == {BLOCKED}  # the increase to 10% of equity is not worth 13 bps
    flatten = [o for o in out["orders"] if o.reason == "flatten"]
    assert [(o.side, o.qty, o.strategy) for o in flatten] == [("sell", 30.0, "risk")]
    assert not _entries(out)


def test_the_gate_columns_go_through_the_codec_and_into_the_signals_table():
    sig = Signal(T0, SYMBOL, "composite", 1, 0.5, "range", 5.0, 13.0, BLOCKED)
    assert decode(encode(sig)) == sig
    unset = decode(encode(Signal(T0, SYMBOL, "hold", 1, 0.5, "range")))
    assert math.isnan(unset.edge_bps) and math.isnan(unset.cost_bps) and unset.gate == ""
    columns = dict(SIGNALS.columns)
    assert (columns["edge_bps"], columns["cost_bps"], columns["gate"]) == (
        "Float64",
        "Float64",
        "LowCardinality(String)",
    )


def test_the_gate_keys_reach_the_loop():
    settings = load_settings(
        None, ["trading.cost_gate=false", "trading.cost_ratio=2", "trading.edge_scale=0.3"]
    )
    loop = trading_settings(settings)
    assert (loop.cost_gate, loop.cost_ratio, loop.edge_scale, loop.edge_horizon_s) == (False, 2.0, 0.3, 1800)
    assert TradingSettings(bar_interval_ms=D).cost_gate is True  # on by default


def test_a_replay_with_the_gate_on_sends_fewer_orders_than_with_it_off(tmp_path):
    """The simulator's 1-second random walk: choppy, its per-bar moves far below the 13 bps an entry
    costs. With the default edge scale every entry is blocked; with 3.0 the strongest pass."""
    sets = [s for s in SHORT_TRADING if not s.startswith("trading.cost_gate")]
    sets.append(f"trading.control_file={tmp_path / 'none.jsonl'}")
    off, off_summary = _run([*sets, "trading.cost_gate=false"])
    on, on_summary = _run([*sets, "trading.edge_scale=3.0"])
    assert off_summary["orders_blocked_by_cost"] == 0 and off["orders"]
    assert 0 < len(on["orders"]) < len(off["orders"])
    assert on_summary["orders_blocked_by_cost"] > 0 and on_summary["cost_saved"] > 0
    blocked = [s for s in on["signals"] if s.gate == BLOCKED]
    assert len(blocked) == on_summary["orders_blocked_by_cost"]
    assert all(s.strategy == "composite" and s.edge_bps <= s.cost_bps for s in blocked)
    passed = [s for s in on["signals"] if s.gate == PASS]
    assert passed and all(s.edge_bps > s.cost_bps > 0 for s in passed)
    assert not _run([*sets])[0]["orders"]  # the default edge scale: no entry is worth 13 bps here


def test_the_backtest_summary_and_the_runs_row_count_what_the_gate_blocked(capsys):
    loop = _loop()
    _run_loop(loop, sigma=0.002)
    summary = loop.summary()
    n, saved = summary["orders_blocked_by_cost"], summary["cost_saved"]
    assert n > 0
    trading_summary(SimpleNamespace(summary=summary, controls=[], controls_not_applied=0, control_file=""))
    line = f"  orders blocked by cost {n:,} (their expected fees and slippage {saved:,.2f})"
    out = capsys.readouterr().out.splitlines()
    assert line in out
    hint = "no entry beat its expected fees and slippage"
    assert any(hint in x for x in out) == (summary["orders"] == 0)
    trading_summary(
        SimpleNamespace(
            summary={**summary, "orders": 0}, controls=[], controls_not_applied=0, control_file=""
        )
    )
    assert any(hint in x for x in capsys.readouterr().out.splitlines())  # a run that sent nothing says why
    run = Run("r1", "replay", "x.csv", True, "tag", "{}", "qbtc replay x.csv", 0, summary=summary)
    columns = run.columns()
    assert columns["orders_blocked_by_cost"] == [n] and columns["cost_saved"] == [pytest.approx(saved)]
    assert math.isnan(Run("r2", "replay", "x.csv", False, "", "{}", "", 0).columns()["cost_saved"][0])


_OLDER_STORE = """
import math
import sys

from operators.signals.cost_gate import BLOCKED
from schemas.ddl import SIGNALS, Table
from schemas.records import Signal
from sinks.clickhouse_store import Store
from sinks.store_sink import record_columns

dsn = sys.argv[1]
store = Store(dsn)
old = Table(SIGNALS.name, SIGNALS.columns[:-3], SIGNALS.key)  # before the cost gate
store.command("DROP TABLE signals")
store.command(old.create_sql())
store.command("INSERT INTO signals VALUES ('r0', 60000, 'X/USDT', 'composite', 1, 0.5, 'range')")

again = Store(dsn)  # what a newer qbtc does when it opens the old store
rows = again.query("SELECT strength, edge_bps, cost_bps, gate FROM signals FINAL").result_rows
assert rows[0][0] == 0.5 and math.isnan(rows[0][1]) and math.isnan(rows[0][2]) and rows[0][3] == "", rows
sig = Signal(120_000, "X/USDT", "composite", 1, 0.5, "range", 5.0, 13.0, BLOCKED)
assert again.insert(SIGNALS, record_columns("signals", [sig], "r1")) == 1
got = again.query("SELECT edge_bps, cost_bps, gate FROM signals FINAL WHERE run_id = 'r1'").result_rows
assert got == [(5.0, 13.0, BLOCKED)], got
"""


def test_an_older_store_gains_the_gate_columns(tmp_path):
    # its own process: chDB opens one store path per process (the suite's other stores live elsewhere)
    dsn = f"chdb://{tmp_path / 'old.chdb'}"
    proc = subprocess.run(
        [sys.executable, "-c", _OLDER_STORE, dsn], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
