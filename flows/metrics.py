"""Prometheus metrics of a running flow, served by prometheus-client on localhost.

Counts add up: once the input is drained, ``qbtc_ticks_in_total`` equals
``qbtc_ticks_accepted_total`` plus ``qbtc_dead_letters_total`` summed over
reasons.

The VaR backtest gauges (``qbtc_var_*``, ``qbtc_es_z2``) show the newest
``var_backtests`` row of each symbol (``portfolio`` for the book), model and
scope (``rolling``, ``cumulative``), as the flow makes them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from schemas.errors import UsageProblem
from schemas.records import REASONS, VarBacktestRow
from sinks.store_sink import RowCounter

ZONE_LEVELS = {"green": 0, "yellow": 1, "red": 2}
"""``qbtc_var_zone``'s value of each Basel zone."""


class MetricsPortError(UsageProblem):
    """The ``--metrics-port`` cannot be served (in use, or not ours to bind): exit code 2."""


class FlowMetrics(RowCounter):
    """The flow's counters, histograms and lag gauges (also the store's row counter).

    Parameters
    ----------
    registry
        Where the metrics live (a fresh one by default, so tests can make many).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        self.records = 0
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

    # -- hooks the flow calls ------------------------------------------------

    def read(self, chunk) -> None:
        """A chunk read from the input (records, dead on read)."""
        if chunk.records:
            self.records += chunk.records
            self.ticks_in.inc(chunk.records)
        if chunk.dead:
            self.dead(chunk.dead)

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
