"""Prometheus metrics of a running flow, served by prometheus-client on localhost.

Counts add up: once the input is drained, ``qbtc_ticks_in_total`` equals
``qbtc_ticks_accepted_total`` plus ``qbtc_dead_letters_total`` summed over
reasons.

The VaR backtest gauges (``qbtc_var_*``, ``qbtc_es_z2``) show the newest
``var_backtests`` row of each symbol (``portfolio`` for the book), model and
scope (``rolling``, ``cumulative``), as the flow makes them.

The risk gauges (``qbtc_equity``, ``qbtc_drawdown_ratio``, ``qbtc_mode``, ...)
follow the trading loop's rows (``portfolio``, ``orders``, ``fills``,
``risk_events``) in the process that runs the loop; the alert rules in
``infra/prometheus/`` read them.

>>> m = FlowMetrics()
>>> m.trading("portfolio", [PortfolioState(60_000, 950.0, 500.0, 900.0, 900.0, 0.95, 0.05,
...     19.0, 25.0, 30.0, 40.0, 45.0, 0.02, 1, "defensive")])
>>> m.value("qbtc_var95_equity_ratio"), m.value("qbtc_mode", mode="defensive")
(0.02, 1.0)
>>> m.trading("risk_events", [RiskEvent(60_000, "kill_switch", 3, "", 0.2, 0.15, "flatten", "")])
>>> m.value("qbtc_kill_switch"), m.value("qbtc_risk_events_total", kind="kill_switch", level="3")
(1.0, 1.0)
"""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from operators.risk.settings import MODE_LEVEL
from schemas.errors import UsageProblem
from schemas.records import REASONS, Fill, PortfolioState, RiskEvent, VarBacktestRow
from sinks.store_sink import RowCounter

ZONE_LEVELS = {"green": 0, "yellow": 1, "red": 2}
"""``qbtc_var_zone``'s value of each Basel zone."""

MODES = tuple(MODE_LEVEL)
"""The risk engine's modes: ``qbtc_mode{mode=M}`` is 1 for the current one, 0 for the others."""

SLIPPAGE_BUCKETS_BPS = (-25.0, -10.0, -5.0, -1.0, 0.0, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0)
"""``qbtc_fill_slippage_bps``'s buckets (basis points; negative: a fill better than the reference).
With negative buckets the histogram has no ``_sum`` (OpenMetrics), only ``_bucket`` and ``_count``."""


class MetricsPortError(UsageProblem):
    """The ``--metrics-port`` cannot be served (in use, or not ours to bind): exit code 2."""


class FlowMetrics(RowCounter):
    """The flow's counters, histograms, lag and risk gauges (also the store's row counter).

    Parameters
    ----------
    registry
        Where the metrics live (a fresh one by default, so tests can make many).
    now
        Wall-clock start, Unix seconds (default: the clock): ``qbtc_last_progress_timestamp_seconds``
        until the first record is read.
    """

    def __init__(self, registry: CollectorRegistry | None = None, now: float | None = None) -> None:
        super().__init__()
        self.records = 0
        self._newest_ms = 0
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ticks_in = Counter("qbtc_ticks_in", "Input records read (ticks and rejects)", registry=r)
        self.ticks_accepted = Counter("qbtc_ticks_accepted", "Ticks accepted into bars", registry=r)
        self.dead_letters = Counter(
            "qbtc_dead_letters", "Records rejected, by reason", ["reason"], registry=r
        )
        for reason in REASONS:
            self.dead_letters.labels(reason)
        self.stragglers = Counter(
            "qbtc_ticks_behind_merge",
            "Ticks that reached the partition merge behind the event time it had released",
            registry=r,
        )
        self.rows_out = Counter("qbtc_rows_out", "Rows written to the store, by table", ["table"], registry=r)
        self.lag = Gauge(
            "qbtc_consumer_lag", "Records behind the partition's end", ["topic", "partition"], registry=r
        )
        self.batch_time = Histogram(
            "qbtc_batch_seconds",
            "Processing time of one symbol batch (bars, features)",
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.store_time = Histogram(
            "qbtc_store_write_seconds",
            "Latency of one store write",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=r,
        )
        labels = ["symbol", "model", "scope"]
        self.var_rate = Gauge(
            "qbtc_var_exceedance_rate", "VaR exceedances per forecast (x / T)", labels, registry=r
        )
        self.var_kupiec_p = Gauge(
            "qbtc_var_kupiec_p", "Kupiec's proportion-of-failures p-value", labels, registry=r
        )
        self.var_cc_p = Gauge(
            "qbtc_var_christoffersen_cc_p",
            "Christoffersen's conditional-coverage p-value (NaN below two forecasts)",
            labels,
            registry=r,
        )
        self.var_zone = Gauge("qbtc_var_zone", "Basel zone: 0 green, 1 yellow, 2 red", labels, registry=r)
        self.es_z2 = Gauge(
            "qbtc_es_z2",
            "Acerbi-Szekely Z2 of the ES forecasts (> 0: ES understates the tail)",
            labels,
            registry=r,
        )
        self.write_errors_total = Counter(
            "qbtc_store_write_errors", "Store writes refused, by table", ["table"], registry=r
        )
        self.last_event = Gauge(
            "qbtc_last_event_timestamp_seconds",
            "Newest event time read from the input (a tick's ts, a candle's open), Unix seconds",
            registry=r,
        )
        self.last_progress = Gauge(
            "qbtc_last_progress_timestamp_seconds",
            "Wall-clock time the flow last read a record (its start before any), Unix seconds",
            registry=r,
        )
        self.last_progress.set(time.time() if now is None else now)
        self._trading_metrics(r)

    def _trading_metrics(self, r: CollectorRegistry) -> None:
        self.equity = Gauge("qbtc_equity", "Marked equity of the trading loop, quote units", registry=r)
        self.drawdown = Gauge("qbtc_drawdown_ratio", "1 - equity / peak equity", registry=r)
        self.leverage = Gauge("qbtc_leverage_ratio", "Gross exposure / equity", registry=r)
        self.var_share = Gauge(
            "qbtc_var95_equity_ratio", "The book's next-step VaR95 / equity (loss > 0)", registry=r
        )
        self.var_share.set(float("nan"))  # unknown until the loop's first step: never 0 ("no risk")
        self.breaker_level = Gauge(
            "qbtc_breaker_level",
            "Circuit breaker level: 0 clear, 1 warning, 2 caution, 3 emergency",
            registry=r,
        )
        self.mode = Gauge("qbtc_mode", "The risk engine's mode: 1 for the current one", ["mode"], registry=r)
        for mode in MODES:
            self.mode.labels(mode)
        self.kill_switch = Gauge(
            "qbtc_kill_switch", "1 while the kill switch is engaged (until an operator resume)", registry=r
        )
        self.risk_events = Counter(
            "qbtc_risk_events", "Risk events, by kind and level (0-3)", ["kind", "level"], registry=r
        )
        self.orders = Counter("qbtc_orders", "Orders the trading loop sent", registry=r)
        self.fills = Counter("qbtc_fills", "Fills the trading loop booked", registry=r)
        self.slippage = Histogram(
            "qbtc_fill_slippage_bps",
            "Slippage of a fill against its reference price, basis points (> 0: it cost us)",
            buckets=SLIPPAGE_BUCKETS_BPS,
            registry=r,
        )

    # -- hooks the flow calls ------------------------------------------------

    def read(self, chunk) -> None:
        """A chunk read from the input (records, dead on read, the newest event time)."""
        if chunk.records:
            self.records += chunk.records
            self.ticks_in.inc(chunk.records)
            self.last_progress.set(time.time())
        if chunk.dead:
            self.dead(chunk.dead)
        newest = max((int(cols.ts.max()) for cols in chunk.batches if len(cols)), default=None)
        if chunk.bars:
            newest = max(newest or 0, max(bar.ts for bar in chunk.bars))
        if newest is not None and newest > self._newest_ms:
            self._newest_ms = newest
            self.last_event.set(newest / 1000)

    def dead(self, letters: list) -> None:
        for letter in letters:
            self.dead_letters.labels(letter.reason).inc()

    def accepted(self, n: int) -> None:
        if n:
            self.ticks_accepted.inc(n)

    def straggled(self, n: int) -> None:
        if n:
            self.stragglers.inc(n)

    def batch_seconds(self, seconds: float) -> None:
        self.batch_time.observe(seconds)

    def partition(self, topic: str, partition: int, position: int, high: int) -> None:
        self.lag.labels(topic, str(partition)).set(max(0, high - position))

    def add(self, table: str, n: int, seconds: float = 0.0) -> None:
        super().add(table, n, seconds)
        self.rows_out.labels(table).inc(n)
        if seconds:
            self.store_time.observe(seconds)

    def write_failed(self, table: str) -> None:
        super().write_failed(table)
        self.write_errors_total.labels(table).inc()

    def trading(self, table: str, rows: list) -> None:
        """Rows the trading loop just emitted for ``table``: the risk gauges and counters follow them."""
        if table == "portfolio" and rows:
            self._portfolio(rows[-1])
        elif table == "orders":
            self.orders.inc(len(rows))
        elif table == "fills":
            self._fills(rows)
        elif table == "risk_events":
            self._risk_events(rows)
        elif table == "var_backtests":
            self.var_backtests(rows)

    def _portfolio(self, state: PortfolioState) -> None:
        self.equity.set(state.equity)
        self.drawdown.set(state.drawdown)
        self.leverage.set(state.leverage)
        ok = state.equity > 0 and math.isfinite(state.var95)
        self.var_share.set(state.var95 / state.equity if ok else float("nan"))
        self.breaker_level.set(state.breaker_level)
        for mode in MODES:
            self.mode.labels(mode).set(1.0 if mode == state.mode else 0.0)

    def _fills(self, fills: list[Fill]) -> None:
        self.fills.inc(len(fills))
        for fill in fills:
            if math.isfinite(fill.slippage_bps):
                self.slippage.observe(fill.slippage_bps)

    def _risk_events(self, events: list[RiskEvent]) -> None:
        for event in events:
            self.risk_events.labels(event.kind, str(event.level)).inc()
            if event.kind == "kill_switch":
                self.kill_switch.set(1)
            elif event.kind == "control" and event.action == "resume":
                self.kill_switch.set(0)

    def value(self, name: str, **labels: str) -> float | None:
        """A sample's value in the registry (the full sample name, e.g. ``qbtc_orders_total``)."""
        return self.registry.get_sample_value(name, labels)

    def var_backtests(self, rows: list[VarBacktestRow]) -> None:
        """``var_backtests`` rows just made: each one sets its gauges."""
        for row in rows:
            labels = (row.symbol or "portfolio", row.model, row.scope)
            self.var_rate.labels(*labels).set(row.rate)
            self.var_kupiec_p.labels(*labels).set(row.pof_p)
            self.var_cc_p.labels(*labels).set(row.cc_p)
            self.var_zone.labels(*labels).set(ZONE_LEVELS.get(row.zone, float("nan")))
            self.es_z2.labels(*labels).set(row.es_z2)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread.

        A port that cannot be bound (in use, privileged) is a :class:`MetricsPortError` naming it.
        """
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            msg = f"--metrics-port {port}: cannot serve metrics on {addr}:{port}: {exc.strerror or exc}"
            msg += " (another process holds it? choose another port)"
            raise MetricsPortError(msg) from None
