"""The trading loop's running totals for the backtest summary, in event time.

>>> st = TradingStats()
>>> for equity in (100.0, 110.0, 99.0):
...     st.equity_step(equity)
>>> st.fill(5.0); st.fill(None); st.fill(-2.0)
>>> s = st.summary(86_400_000, "normal")
>>> round(s["max_drawdown"], 6), s["fills"], round(s["profit_factor"], 6), round(s["return"], 6)
(0.1, 3, 2.5, -0.01)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from operators.risk.var_backtest import chi2_sf, kupiec_pof

VAR_ALPHA = 0.05
"""The tail of the VaR the breakers act on (95%): the expected exceedance rate."""


@dataclass(slots=True)
class TradingStats:
    """Running totals for the backtest summary (all in event time)."""

    steps: int = 0
    start_equity: float = 0.0
    last_equity: float = 0.0
    returns_n: int = 0
    returns_sum: float = 0.0
    returns_sq: float = 0.0
    downside_sq: float = 0.0
    peak: float = 0.0
    max_drawdown: float = 0.0
    wins: int = 0
    losses: int = 0
    gross_profit: float = 0.0
    gross_loss: float = 0.0
    orders: int = 0
    fills: int = 0
    signals: int = 0
    breaker_trips: dict[int, int] = field(default_factory=dict)
    kill_switches: int = 0
    mode_changes: int = 0
    denials: int = 0
    strategy_errors: int = 0
    var_checks: int = 0
    var_exceedances: int = 0
    model_risk_events: int = 0
    orders_blocked_by_cost: int = 0
    cost_saved: float = 0.0
    first_ts: int | None = None
    last_ts: int | None = None

    def fill(self, realised: float | None) -> None:
        """Count a fill; ``realised`` is its realised P&L when it (partly) closed a position."""
        self.fills += 1
        if realised is None:
            return
        if realised > 0:
            self.wins += 1
            self.gross_profit += realised
        elif realised < 0:
            self.losses += 1
            self.gross_loss -= realised

    def cost_blocked(self, cost: float) -> None:
        """Count an order the cost gate did not send; ``cost`` its expected fee and slippage (quote)."""
        self.orders_blocked_by_cost += 1
        self.cost_saved += cost

    def equity_step(self, equity: float) -> None:
        if self.steps == 0:
            self.start_equity = self.peak = equity
        else:
            r = equity / self.last_equity - 1.0 if self.last_equity > 0 else 0.0
            self.returns_n += 1
            self.returns_sum += r
            self.returns_sq += r * r
            self.downside_sq += min(r, 0.0) ** 2
        self.steps += 1
        self.last_equity = equity
        self.peak = max(self.peak, equity)
        if self.peak > 0:
            self.max_drawdown = max(self.max_drawdown, 1.0 - equity / self.peak)

    def summary(self, bar_interval_ms: int, mode: str, breaker_metric: str = "var") -> dict:
        """Backtest figures: return, Sharpe, Sortino (annualised from ``bar_interval_ms`` steps),
        drawdown, trades, breakers, exceedances of the breaker metric (``breaker_metric``, one bar);
        ``mode`` is the risk engine's mode now."""
        n = self.returns_n
        mean = self.returns_sum / n if n else 0.0
        var = (self.returns_sq - n * mean * mean) / (n - 1) if n > 1 else 0.0
        per_year = 365 * 86_400_000 / bar_interval_ms
        sharpe = mean / math.sqrt(var) * math.sqrt(per_year) if var > 0 else None
        down = math.sqrt(self.downside_sq / n) if n else 0.0
        sortino = mean / down * math.sqrt(per_year) if down > 0 else None
        trades = self.wins + self.losses
        return {
            "start_equity": self.start_equity,
            "end_equity": self.last_equity,
            "return": self.last_equity / self.start_equity - 1.0 if self.start_equity else 0.0,
            "sharpe": sharpe,
            "sortino": sortino,
            "max_drawdown": self.max_drawdown,
            "win_rate": self.wins / trades if trades else None,
            "profit_factor": self.gross_profit / self.gross_loss if self.gross_loss > 0 else None,
            "orders": self.orders,
            "fills": self.fills,
            "signals": self.signals,
            "breaker_trips": dict(sorted(self.breaker_trips.items())),
            "kill_switches": self.kill_switches,
            "mode_changes": self.mode_changes,
            "denials": self.denials,
            "strategy_errors": self.strategy_errors,
            "var_exceedance_rate": self.var_exceedances / self.var_checks if self.var_checks else None,
            "var_checks": self.var_checks,
            "var_metric": breaker_metric,
            "model_risk_events": self.model_risk_events,
            "orders_blocked_by_cost": self.orders_blocked_by_cost,
            "cost_saved": self.cost_saved,
            "var_kupiec_p": (
                chi2_sf(kupiec_pof(self.var_exceedances, self.var_checks, VAR_ALPHA), 1)
                if self.var_checks
                else None
            ),
            "mode": mode,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }
