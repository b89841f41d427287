"""ClickHouse tables for qbtc's records, created idempotently.

Every table is a ReplacingMergeTree on the record's key (see the metric
spec's "exactly once at the store"), so replays and restarts that write a
row again leave it once; read with ``FINAL`` to see the merged state.
"""

from __future__ import annotations

from dataclasses import dataclass

TS = "DateTime64(3, 'UTC')"


@dataclass(frozen=True, slots=True)
class Table:
    """A table's name, columns (name, ClickHouse type) and sorting key."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def create_sql(self) -> str:
        cols = ",\n    ".join(f"`{name}` {ctype}" for name, ctype in self.columns)
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} (\n    {cols}\n)\n"
            f"ENGINE = ReplacingMergeTree\nORDER BY ({', '.join(self.key)})"
        )


TICKS = Table(
    "ticks",
    (
        ("exchange", "LowCardinality(String)"),
        ("symbol", "LowCardinality(String)"),
        ("trade_id", "String"),
        ("ts", TS),
        ("price", "Float64"),
        ("qty", "Float64"),
        ("side", "LowCardinality(String)"),
        ("seq", "UInt64"),
    ),
    # seq is 0 for ticks with a trade id, else the tick's arrival ordinal
    # within its symbol, so identical prints without ids stay apart.
    ("exchange", "symbol", "trade_id", "ts", "price", "qty", "seq"),
)
BARS = Table(
    "bars",
    (
        ("symbol", "LowCardinality(String)"),
        ("interval", "UInt32"),
        ("ts", TS),
        ("open", "Float64"),
        ("high", "Float64"),
        ("low", "Float64"),
        ("close", "Float64"),
        ("volume", "Float64"),
        ("vwap", "Float64"),
        ("trades", "UInt64"),
    ),
    ("symbol", "interval", "ts"),
)
FEATURES = Table(
    "features",
    (
        ("symbol", "LowCardinality(String)"),
        ("interval", "UInt32"),
        ("ts", TS),
        ("ret", "Float64"),
        ("volatility", "Float64"),
        ("entropy", "Float64"),
        ("var95", "Float64"),
        ("es95", "Float64"),
        ("qvar95", "Float64"),
        ("drift", "UInt8"),
        ("fvar95", "Float64"),
        ("fes95", "Float64"),
    ),
    ("symbol", "interval", "ts"),
)
CORRELATIONS = Table(
    "correlations",
    (
        ("interval", "UInt32"),
        ("ts", TS),
        ("symbol_a", "LowCardinality(String)"),
        ("symbol_b", "LowCardinality(String)"),
        ("corr", "Float64"),
    ),
    ("interval", "ts", "symbol_a", "symbol_b"),
)
DEAD_LETTERS = Table(
    "dead_letters",
    (
        ("ingest_ts", TS),
        ("source", "String"),
        ("reason", "LowCardinality(String)"),
        ("message", "String"),
        ("payload", "String"),
    ),
    ("source",),
)
SIGNALS = Table(
    "signals",
    (
        ("run_id", "LowCardinality(String)"),
        ("ts", TS),
        ("symbol", "LowCardinality(String)"),
        ("strategy", "LowCardinality(String)"),
        ("direction", "Int8"),
        ("strength", "Float64"),
        ("regime", "LowCardinality(String)"),
        ("edge_bps", "Float64"),
        ("cost_bps", "Float64"),
        ("gate", "LowCardinality(String)"),
    ),
    ("run_id", "symbol", "strategy", "ts"),
)
RISK_EVENTS = Table(
    "risk_events",
    (
        ("run_id", "LowCardinality(String)"),
        ("ts", TS),
        ("kind", "LowCardinality(String)"),
        ("level", "UInt8"),
        ("symbol", "LowCardinality(String)"),
        ("value", "Float64"),
        ("threshold", "Float64"),
        ("action", "LowCardinality(String)"),
        ("message", "String"),
    ),
    # events are deterministic, so a replayed epoch writes identical rows
    ("run_id", "ts", "kind", "symbol", "action", "message"),
)
ORDERS = Table(
    "orders",
    (
        ("run_id", "LowCardinality(String)"),
        ("ts", TS),
        ("order_id", "String"),
        ("parent_id", "String"),
        ("symbol", "LowCardinality(String)"),
        ("side", "LowCardinality(String)"),
        ("qty", "Float64"),
        ("order_type", "LowCardinality(String)"),
        ("limit_price", "Float64"),
        ("reason", "LowCardinality(String)"),
        ("strategy", "LowCardinality(String)"),
    ),
    ("run_id", "order_id"),
)
FILLS = Table(
    "fills",
    (
        ("run_id", "LowCardinality(String)"),
        ("ts", TS),
        ("order_id", "String"),
        ("symbol", "LowCardinality(String)"),
        ("side", "LowCardinality(String)"),
        ("qty", "Float64"),
        ("price", "Float64"),
        ("fee", "Float64"),
        ("slippage_bps", "Float64"),
    ),
    # one row per trade: a venue may fill one order in several trades (a paper fill is whole)
    ("run_id", "order_id", "ts", "price", "qty"),
)
ORDER_EVENTS = Table(
    "order_events",
    (
        ("ts", TS),
        ("order_id", "String"),
        ("venue_order_id", "String"),
        ("symbol", "LowCardinality(String)"),
        ("side", "LowCardinality(String)"),
        ("kind", "LowCardinality(String)"),
        ("qty", "Float64"),
        ("filled_qty", "Float64"),
        ("price", "Float64"),
        ("reason", "String"),
        ("venue", "LowCardinality(String)"),
        ("venue_ts", TS),
        ("leaves_qty", "Float64"),
    ),
    # not ts (the service's clock): an event emitted again after a restart
    # (reconciliation, a replayed venue report) replaces the first row
    ("venue", "order_id", "venue_order_id", "kind", "filled_qty"),
)
EXECUTION_QUALITY = Table(
    "execution_quality",
    (
        ("ts", TS),
        ("order_id", "String"),
        ("symbol", "LowCardinality(String)"),
        ("side", "LowCardinality(String)"),
        ("qty", "Float64"),
        ("expected_slippage_bps", "Float64"),
        ("realised_slippage_bps", "Float64"),
        ("reference_price", "Float64"),
        ("fill_price", "Float64"),
    ),
    # one row per fill: an order filled in parts has a row per part
    ("order_id", "ts", "qty", "fill_price"),
)
VAR_BACKTESTS = Table(
    "var_backtests",
    (
        ("ts", TS),
        ("symbol", "LowCardinality(String)"),
        ("interval", "UInt32"),
        ("model", "LowCardinality(String)"),
        ("scope", "LowCardinality(String)"),
        ("window", "UInt32"),
        ("alpha", "Float64"),
        ("forecasts", "UInt64"),
        ("exceedances", "UInt64"),
        ("rate", "Float64"),
        ("n00", "UInt64"),
        ("n01", "UInt64"),
        ("n10", "UInt64"),
        ("n11", "UInt64"),
        ("pof_lr", "Float64"),
        ("pof_p", "Float64"),
        ("ind_lr", "Float64"),
        ("ind_p", "Float64"),
        ("cc_lr", "Float64"),
        ("cc_p", "Float64"),
        ("binom_cdf", "Float64"),
        ("zone", "LowCardinality(String)"),
        ("es_z2", "Float64"),
        ("es_p", "Float64"),
    ),
    # symbol "" is the trading loop's portfolio
    ("model", "symbol", "interval", "scope", "ts"),
)
PORTFOLIO = Table(
    "portfolio",
    (
        ("run_id", "LowCardinality(String)"),
        ("ts", TS),
        ("equity", "Float64"),
        ("cash", "Float64"),
        ("gross_exposure", "Float64"),
        ("net_exposure", "Float64"),
        ("leverage", "Float64"),
        ("drawdown", "Float64"),
        ("var95", "Float64"),
        ("es95", "Float64"),
        ("var95_horizon", "Float64"),
        ("es95_horizon", "Float64"),
        ("qvar95", "Float64"),
        ("breaker_share", "Float64"),
        ("breaker_level", "UInt8"),
        ("mode", "LowCardinality(String)"),
    ),
    ("run_id", "ts"),
)
MODEL_METRICS = Table(
    "model_metrics",
    (
        ("run_id", "LowCardinality(String)"),
        ("ts", TS),
        ("symbol", "LowCardinality(String)"),
        ("model", "LowCardinality(String)"),
        ("n", "UInt64"),
        ("log_loss", "Float64"),
        ("accuracy", "Float64"),
        ("calibration_error", "Float64"),
        ("hit_rate_30d", "Float64"),
        ("mean_prob_30d", "Float64"),
        ("drift", "UInt8"),
    ),
    ("run_id", "symbol", "model", "ts"),
)
"""An online model's progressive-validation figures (``operators.signals.online_model``)."""
MARKET_TABLES = (TICKS, BARS, FEATURES, CORRELATIONS, DEAD_LETTERS, VAR_BACKTESTS)
"""What the features flow writes."""
STRATEGY_UPDATES = Table(
    "strategy_updates",
    (
        ("run_id", "LowCardinality(String)"),
        ("ts", TS),
        ("strategy", "LowCardinality(String)"),
        ("share", "Float64"),
        ("factor", "Float64"),
        ("sharpe", "Float64"),
        ("drawdown", "Float64"),
        ("drift", "Float64"),
        ("days", "UInt32"),
        ("reason", "String"),
    ),
    ("run_id", "strategy", "ts"),
)
"""L4 (meta) decisions: each strategy's share of capital (see ``operators.signals.levels``)."""
TARGETS = Table(
    "targets",
    (
        ("run_id", "LowCardinality(String)"),
        ("ts", TS),
        ("symbol", "LowCardinality(String)"),
        ("regime", "LowCardinality(String)"),
        ("in_universe", "UInt8"),
        ("quote_volume", "Float64"),
        ("max_exposure", "Float64"),
        ("reason", "String"),
    ),
    ("run_id", "symbol", "ts"),
)
"""L3 (strategy) decisions: each symbol's regime, universe and exposure cap."""
TRADING_TABLES = (SIGNALS, RISK_EVENTS, ORDERS, FILLS, PORTFOLIO, MODEL_METRICS, STRATEGY_UPDATES, TARGETS)
"""What the trading loop writes."""
EXECUTION_TABLES = (ORDER_EVENTS, EXECUTION_QUALITY)
"""What the execution service writes (issue 12; no flow writes them yet)."""
TABLES = {t.name: t for t in (*MARKET_TABLES, *TRADING_TABLES, *EXECUTION_TABLES)}
STRESS = Table(
    "stress",
    (
        ("run_id", "String"),
        ("ts", TS),
        ("method", "LowCardinality(String)"),
        ("scenarios", "UInt64"),
        ("horizon_bars", "UInt32"),
        ("bar_ms", "UInt64"),
        ("seed", "UInt64"),
        ("history_bars", "UInt64"),
        ("positions", "String"),
        ("equity", "Float64"),
        ("dof", "Float64"),
        ("var95", "Float64"),
        ("es95", "Float64"),
        ("var99", "Float64"),
        ("es99", "Float64"),
        ("worst", "Float64"),
        ("var95_share", "Float64"),
        ("es95_share", "Float64"),
        ("var99_share", "Float64"),
        ("es99_share", "Float64"),
        ("worst_share", "Float64"),
        ("mean_pnl", "Float64"),
        ("p_loss", "Float64"),
        ("p_kill_drawdown", "Float64"),
        ("p_kill_daily_loss", "Float64"),
        ("p_kill_weekly_loss", "Float64"),
        ("p_kill_monthly_loss", "Float64"),
        ("p_kill_any", "Float64"),
        ("recovery_mean_bars", "Float64"),
        ("recovery_unrecovered", "Float64"),
        ("recovery_cap_bars", "UInt64"),
    ),
    # one wide row per run; run_id is a hash of the inputs, so a rerun replaces its row
    ("run_id",),
)
"""What ``qbtc stress`` writes (one row per run)."""
TABLES[STRESS.name] = STRESS
RUNS = Table(
    "runs",
    (
        ("run_id", "String"),
        ("kind", "LowCardinality(String)"),
        ("status", "LowCardinality(String)"),
        ("started", TS),
        ("finished", TS),
        ("command", "String"),
        ("input", "String"),
        ("trade", "UInt8"),
        ("run_tag", "String"),
        ("settings", "String"),
        ("records", "UInt64"),
        ("rows", "String"),
        ("start_equity", "Float64"),
        ("end_equity", "Float64"),
        ("return", "Float64"),
        ("sharpe", "Float64"),
        ("sortino", "Float64"),
        ("max_drawdown", "Float64"),
        ("win_rate", "Float64"),
        ("profit_factor", "Float64"),
        ("var_exceedance_rate", "Float64"),
        ("orders", "UInt64"),
        ("fills", "UInt64"),
        ("signals", "UInt64"),
        ("kill_switches", "UInt64"),
        ("mode_changes", "UInt64"),
        ("breaker_trips", "UInt64"),
        ("orders_blocked_by_cost", "UInt64"),
        ("cost_saved", "Float64"),
        ("first_ts", TS),
        ("last_ts", TS),
        ("summary", "String"),
    ),
    # one row per run: written at its start (status running) and replaced at its end
    ("run_id",),
)
"""One row per replay, run and stream (``qbtc runs``): what it read, its settings and its
backtest figures (NaN / 0 where it did not trade). The trading tables carry its ``run_id``."""
TABLES[RUNS.name] = RUNS
RUN_TABLES = tuple(t.name for t in TRADING_TABLES)
"""The tables whose rows carry the run that wrote them (first in their keys)."""
