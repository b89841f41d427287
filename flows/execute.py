"""``qbtc execute``: the execution service's loop, from the ``orders`` topic to a venue and back.

Each message of ``<prefix>orders`` (consumer group ``<prefix>qbtc-execute``) is
decoded (an undecodable one becomes a dead letter, a heartbeat is passed
over), checked by :class:`~operators.execution.limits.ExecutionGuard` (a
denial is a ``rejected`` order event with the reason) and sent with its
``order_id`` as the client order id. Its order events go to
``<prefix>order-events`` and one :class:`~schemas.records.Fill` per venue
trade to ``<prefix>fills`` (keyed by symbol, as the flows' outputs); the message's offset is
committed only once those records are delivered: at least once in, exactly
once towards the venue, because the venue refuses a client order id it saw
before and the service then fetches that order and reports its state.

Venues: ``dry-run`` (records ``would_send`` events, sends nothing; also any
``ccxt:<exchange>`` without ``--sandbox`` or ``--live``), ``ccxt:<exchange>``
with ``--sandbox`` (ccxt's sandbox mode, or ``--venue-url``: the local
exchange) or ``--live`` (refused unless ``execution_limits`` caps are set).

At start, before consuming: the ``fills`` topic is read to its end (an
order's fills are published once), and the venue's open orders that are
not on the ``orders`` topic become ``external`` events (:func:`external_orders`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flows.config import Settings, kafka_client_config
from flows.config_values import Secret
from operators.execution.deadman import VenueHealth
from operators.execution.limits import ExecutionGuard
from schemas.codec import SchemaError, decode, encode
from schemas.errors import OutsideFailure, UsageProblem
from schemas.records import (
    ACCEPTED,
    CANCELLED,
    EXPIRED,
    FILLED,
    FINAL_ORDER_EVENTS,
    LIMIT,
    MARKET,
    PARSE,
    PARTIALLY_FILLED,
    REJECTED,
    SCHEMA,
    STOP,
    WOULD_SEND,
    DeadLetter,
    Fill,
    Heartbeat,
    Order,
    OrderEvent,
)
from sources.chunk_source import wall_ms

KEY_ENV = "QBTC_EXECUTION_API_KEY"
SECRET_ENV = "QBTC_EXECUTION_API_SECRET"
GROUP = "qbtc-execute"
DRY_RUN, SANDBOX, LIVE = "dry-run", "sandbox", "live"
CRASH_HOOK = "QBTC_TEST_EXECUTE_CRASH_AFTER_SENDS"
"""Test hook: the process ends (``os._exit(137)``) right after its Nth order reached the venue,
before anything is produced or committed (the SIGKILL point of the restart test)."""
COMMIT_HOOK = "QBTC_TEST_EXECUTE_CRASH_BEFORE_COMMIT"
"""Test hook: the process ends right after the Nth message's records were delivered, before its
offset is committed."""
MAX_SCAN_SYMBOLS = 50
"""At start, open orders are listed for every market of a venue with at most this many, else for the
symbols of our orders only (one request per symbol)."""
RETRIES = (0.5, 1.0, 2.0)
"""Waits between attempts after a network error; then the order is rejected."""


class ExecuteUsage(UsageProblem):
    """``qbtc execute`` options that do not fit together."""


@dataclass(frozen=True, slots=True)
class ExecuteOptions:
    """What ``qbtc execute`` runs against.

    Parameters
    ----------
    venue
        ``dry-run`` or ``ccxt:<exchange>``.
    mode
        ``dry-run``, ``sandbox`` or ``live`` (see :func:`execute_options`).
    venue_url
        Base URL of a Binance-like venue (the local exchange), "" for ccxt's own URLs.
    idle_exit_s
        Stop after this many seconds without a message (None: run until a signal).
    """

    venue: str
    mode: str
    venue_url: str = ""
    idle_exit_s: float | None = None


def execute_options(
    venue: str,
    sandbox: bool,
    live: bool,
    venue_url: str | None,
    idle_exit_s: float | None,
    settings: Settings,
) -> ExecuteOptions:
    """The options checked: :class:`ExecuteUsage` (exit 2) names the first problem.

    >>> from flows.config import load_settings
    >>> execute_options("ccxt:binance", False, False, None, None, load_settings(None, env={})).mode
    'dry-run'
    >>> execute_options("ccxt:binance", False, True, None, None, load_settings(None, env={}))
    Traceback (most recent call last):
    ...
    flows.execute.ExecuteUsage: --live refused: execution_limits.max_order_notional and \
execution_limits.max_daily_notional must be set to send real orders
    """
    if venue != DRY_RUN and not (venue.startswith("ccxt:") and venue[5:]):
        msg = f"--venue {venue!r} is not dry-run or ccxt:<exchange>"
        raise ExecuteUsage(msg)
    if sandbox and live:
        msg = "--sandbox and --live exclude each other"
        raise ExecuteUsage(msg)
    if venue == DRY_RUN and (sandbox or live or venue_url):
        msg = "--sandbox, --live and --venue-url need --venue ccxt:<exchange>"
        raise ExecuteUsage(msg)
    if venue_url and not sandbox:
        msg = "--venue-url needs --sandbox"
        raise ExecuteUsage(msg)
    if idle_exit_s is not None and not idle_exit_s > 0:
        msg = "--idle-exit must be > 0"
        raise ExecuteUsage(msg)
    if live:
        refusal = settings.execution_limits.live_refusal("execution_limits")
        if refusal is not None:
            msg = f"--live refused: {refusal}"
            raise ExecuteUsage(msg)
    mode = LIVE if live else SANDBOX if sandbox else DRY_RUN
    return ExecuteOptions(venue, mode, venue_url or "", idle_exit_s)


def execution_keys(env: Mapping[str, str], secret_file: str | None) -> tuple[Secret, Secret]:
    """API key and secret from ``secret_file`` (``NAME=VALUE`` lines) or the environment, as secrets."""
    values: Mapping[str, str] = env
    if secret_file:
        try:
            with open(secret_file) as f:
                lines = f.read().splitlines()
        except OSError as exc:
            msg = f"secret file {secret_file}: {exc.strerror or exc}"
            raise ExecuteUsage(msg) from None
        values = {}
        for line in lines:
            name, eq, value = line.strip().partition("=")
            if eq and not name.startswith("#"):
                values[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    key, secret = values.get(KEY_ENV, "").strip(), values.get(SECRET_ENV, "").strip()
    if not key or not secret:
        msg = f"no API keys: set {KEY_ENV} and {SECRET_ENV}, or give --secret-file"
        raise ExecuteUsage(msg)
    return Secret(key), Secret(secret)


# -- the venue ------------------------------------------------------------------------


class CcxtVenue:
    """A ccxt exchange (sync client): send with a client order id, fetch an order's state and trades."""

    def __init__(self, exchange: str, keys: tuple[Secret, Secret], url: str, sandbox: bool) -> None:
        import ccxt

        cls = getattr(ccxt, exchange, None)
        if not isinstance(cls, type):
            msg = f"ccxt has no exchange {exchange!r}"
            raise ExecuteUsage(msg)
        self.ccxt = ccxt
        self.ex = cls({"apiKey": keys[0].reveal(), "secret": keys[1].reveal(), "enableRateLimit": False})
        if url:
            from infra.exchange.binance_api import ccxt_urls

            api = self.ex.urls["api"]
            self.ex.urls["api"] = ccxt_urls(api, url) if isinstance(api, dict) else url
        elif sandbox:
            self.ex.set_sandbox_mode(True)

    def send(self, order: Order) -> dict:
        """The venue's order (ccxt's unified dict); a reused client id fetches the order sent before."""
        params: dict = {"clientOrderId": order.order_id}
        kind, price = "market", None
        if order.order_type == LIMIT:
            kind, price = "limit", order.limit_price
        elif order.order_type == STOP:
            params["triggerPrice"] = order.limit_price
        try:
            return self.ex.create_order(order.symbol, kind, order.side, order.qty, price, params)
        except self.ccxt.InvalidOrder as exc:
            if "duplicate" not in str(exc).lower():
                raise
        return self.ex.fetch_order(None, order.symbol, {"clientOrderId": order.order_id})

    def trades(self, symbol: str, venue_order_id: str) -> list[dict]:
        """The venue's trades of one order (ccxt's unified dicts)."""
        return [t for t in self.ex.fetch_my_trades(symbol) if str(t.get("order")) == venue_order_id]


_STATUS = {"canceled": CANCELLED, "cancelled": CANCELLED, "expired": EXPIRED, "rejected": REJECTED}


def order_events(order: Order, got: dict, venue: str, now_ms: int) -> list[OrderEvent]:
    """``accepted`` plus the order's current state (filled, partially filled, cancelled, ...)."""
    vid, vts = str(got.get("id") or ""), int(got.get("timestamp") or 0)
    filled = float(got.get("filled") or 0.0)
    avg = float(got.get("average") or 0.0)
    price = order.limit_price if order.order_type != MARKET else 0.0

    def event(kind: str, filled_qty: float, px: float, reason: str = "") -> OrderEvent:
        return OrderEvent(
            now_ms, order.order_id, vid, order.symbol, order.side, kind,
            order.qty, filled_qty, px, reason, venue, vts,
            0.0 if kind in FINAL_ORDER_EVENTS else max(order.qty - filled_qty, 0.0),
        )  # fmt: skip

    out = [event(ACCEPTED, 0.0, price)]
    status = got.get("status")
    if status == "closed" or (filled > 0 and filled >= order.qty * (1 - 1e-9)):
        out.append(event(FILLED, filled, avg))
    elif status in _STATUS:
        out.append(event(_STATUS[status], filled, avg or price, f"venue status {status}"))
    elif filled > 0:
        out.append(event(PARTIALLY_FILLED, filled, avg))
    return out


def fill_of(order: Order, trade: dict) -> Fill:
    """One venue trade as a :class:`Fill` (fee in quote units; slippage not measured yet: 0.0)."""
    price, qty = float(trade["price"]), float(trade["amount"])
    fee = trade.get("fee") or {}
    cost = float(fee.get("cost") or 0.0)
    base = order.symbol.split("/")[0]
    if fee.get("currency") == base:
        cost *= price
    return Fill(
        int(trade.get("timestamp") or 0), order.order_id, order.symbol, order.side, qty, price, cost, 0.0
    )


# -- the service ------------------------------------------------------------------------


@dataclass
class Summary:
    orders: int = 0
    would_send: int = 0
    accepted: int = 0
    rejected: int = 0
    fills: int = 0
    dead_letters: int = 0
    skipped_fills: int = 0

    def line(self) -> str:
        return (
            f"qbtc execute: {self.orders} orders ({self.would_send} would_send, {self.accepted} accepted, "
            f"{self.rejected} rejected), {self.fills} fills, {self.dead_letters} dead letters"
        )


Emit = Callable[[str, object], None]


class Executor:
    """One order at a time: decode, guard, send, report (the records go to ``emit(table, record)``).

    ``venue`` is None for a dry run. ``seen_fills``: order ids whose fills were already published
    (read back from the ``fills`` topic at start): their fills are not published again.
    """

    def __init__(
        self,
        options: ExecuteOptions,
        guard: ExecutionGuard,
        venue: CcxtVenue | None,
        emit: Emit,
        seen_fills: set[str],
        now_ms: Callable[[], int] = wall_ms,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options, self.guard, self.venue, self.emit = options, guard, venue, emit
        self.seen_fills, self.now_ms, self.sleep = seen_fills, now_ms, sleep
        self.health = VenueHealth()
        self.summary = Summary()
        self.sends = 0
        crash = os.environ.get(CRASH_HOOK, "")
        self.crash_after = int(crash) if crash.isdigit() else None

    def handle(self, value: bytes | None, source: str) -> None:
        """One message of the orders topic."""
        now = self.now_ms()
        try:
            record = decode(value or b"")
        except SchemaError as exc:
            reason = PARSE if str(exc).startswith("not JSON") else SCHEMA
            self._dead(now, source, reason, f"{source}: {exc}", value or b"")
            return
        if isinstance(record, Heartbeat):
            return
        if not isinstance(record, Order):
            self._dead(
                now, source, SCHEMA, f"{source}: expected an order, got {type(record).__name__}", value
            )
            return
        self.order(record, now)

    def _dead(self, now: int, source: str, reason: str, message: str, payload: bytes) -> None:
        self.summary.dead_letters += 1
        self.emit("dead_letters", DeadLetter(now, source, reason, message, payload))

    def _event(self, order: Order, kind: str, reason: str = "") -> OrderEvent:
        price = order.limit_price if order.order_type != MARKET else 0.0
        return OrderEvent(
            self.now_ms(), order.order_id, "", order.symbol, order.side, kind,
            order.qty, 0.0, price, reason, self.options.venue, 0,
            0.0 if kind in FINAL_ORDER_EVENTS else order.qty,
        )  # fmt: skip

    def _report(self, event: OrderEvent) -> None:
        if event.kind == ACCEPTED:
            self.summary.accepted += 1
        elif event.kind == REJECTED:
            self.summary.rejected += 1
        elif event.kind == WOULD_SEND:
            self.summary.would_send += 1
        self.emit("order_events", event)

    def order(self, order: Order, now: int) -> None:
        self.summary.orders += 1
        last = self._last_price(order)
        denied = self.guard.check(order, last, now)
        if denied is not None:
            self._report(self._event(order, REJECTED, denied))
            return
        if self.venue is None:
            self._report(self._event(order, WOULD_SEND))
            return
        got = self._send(order)
        if got is None:
            return
        self.guard.on_sent(order, self.guard.notional(order, last), now)
        events = order_events(order, got, self.options.venue, self.now_ms())
        for event in events:
            self._report(event)
        if events[-1].kind in FINAL_ORDER_EVENTS:
            self.guard.on_closed(order.order_id)
        if events[-1].filled_qty > 0:
            self._fills(order, str(got.get("id") or ""))

    def _last_price(self, order: Order) -> float | None:
        limits = self.guard.limits
        needs = (limits.price_band_bps or limits.max_order_notional or limits.max_daily_notional) is not None
        if self.venue is None or not needs:
            return None
        try:
            last = self.venue.ex.fetch_ticker(order.symbol).get("last")
        except self.venue.ccxt.BaseError:
            return None
        return float(last) if last else None

    def _send(self, order: Order) -> dict | None:
        ccxt = self.venue.ccxt
        for attempt in range(len(RETRIES) + 1):
            try:
                got = self.venue.send(order)
            except ccxt.NetworkError as exc:
                self._health(self.health.failed(self.now_ms()))
                if attempt == len(RETRIES):
                    self._report(self._event(order, REJECTED, f"venue unreachable: {type(exc).__name__}"))
                    return None
                self.sleep(RETRIES[attempt])
                continue
            except ccxt.BaseError as exc:
                self._health(self.health.ok(self.now_ms()))
                text = str(exc).replace("\n", " ")[:300]
                self._report(self._event(order, REJECTED, f"venue refused: {type(exc).__name__}: {text}"))
                return None
            self._health(self.health.ok(self.now_ms()))
            self.sends += 1
            if self.crash_after is not None and self.sends >= self.crash_after:
                os._exit(137)
            return got
        return None

    def _health(self, change) -> None:
        if change is not None:
            self.emit("risk_events", change.risk_event(self.options.venue))

    def _fills(self, order: Order, venue_order_id: str) -> None:
        if order.order_id in self.seen_fills:
            self.summary.skipped_fills += 1
            return
        for trade in self.venue.trades(order.symbol, venue_order_id):
            self.summary.fills += 1
            self.emit("fills", fill_of(order, trade))
        self.seen_fills.add(order.order_id)


def topic_records(conf: dict, topic: str, cls: type, timeout_s: float) -> list:
    """Every ``cls`` record on ``topic`` up to its current end (read without committing; others skipped)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**conf, "group.id": f"{GROUP}-scan", "enable.auto.commit": False})
    out: list = []
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        parts = meta.topics[topic].partitions if topic in meta.topics else {}
        for p in sorted(parts):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            deadline, pos = time.monotonic() + timeout_s, low
            while pos < high:
                msg = consumer.poll(0.2)
                if msg is None:
                    if time.monotonic() > deadline:
                        text = f"cannot read {topic}[{p}] to its end in {timeout_s:.0f} s"
                        raise OutsideFailure(text)
                    continue
                if msg.error() is not None:
                    continue
                pos = msg.offset() + 1
                try:
                    out.append(decode(msg.value(), cls))
                except SchemaError:
                    continue  # not ours to judge here
    finally:
        consumer.close()
    return out


def external_orders(venue: CcxtVenue, name: str, ours: list[Order], now_ms: int) -> list[tuple[str, object]]:
    """Start-up reconciliation, its first part: open orders at the venue that are not ours (client
    ids not on the ``orders`` topic) -> ``external`` order events and ``reconcile`` risk events."""
    from operators.execution.reconcile import OurBook, VenueOrder, VenueView, reconcile

    markets = venue.ex.symbols or []
    mine = {o.symbol for o in ours} & set(markets)  # an unknown symbol has no orders to list
    symbols = sorted(mine | (set(markets) if len(markets) <= MAX_SCAN_SYMBOLS else set()))
    seen: list[VenueOrder] = []
    for symbol in symbols:
        try:
            listed = venue.ex.fetch_open_orders(symbol)
        except venue.ccxt.BaseError as exc:
            msg = f"venue {name}: cannot list open orders of {symbol}: {type(exc).__name__}"
            raise OutsideFailure(msg) from None
        seen += [
            VenueOrder(
                str(o.get("id") or ""),
                str(o.get("clientOrderId") or ""),
                symbol,
                str(o.get("side") or ""),
                float(o.get("amount") or 0.0),
                float(o.get("filled") or 0.0),
                float(o.get("price") or 0.0),
                str(o.get("status") or ""),
                int(o.get("timestamp") or 0),
            )  # fmt: skip
            for o in listed
        ]
    found = reconcile(
        OurBook(working=tuple({o.order_id: o for o in ours}.values())), VenueView(name, tuple(seen)), now_ms
    )
    out: list[tuple[str, object]] = [("order_events", e) for e in found.external]
    out += [("risk_events", r) for r in found.risk_events(now_ms) if r.action == "external"]
    return out


def run_execute(settings: Settings, options: ExecuteOptions, keys: tuple[Secret, Secret] | None) -> int:
    """The service: ensure topics, read back published fills, then consume orders until stopped."""
    from confluent_kafka import Consumer

    from flows.kafka_flow import ensure, topic_names
    from sinks.kafka_producer import RecordProducer
    from sinks.output_sink import record_key

    k = settings.kafka
    ensure(settings)
    topics = topic_names(k)
    consumer_conf = kafka_client_config(k, "consumer")
    seen = {f.order_id for f in topic_records(consumer_conf, topics["fills"], Fill, k.timeout_s)}
    venue = None
    if options.mode != DRY_RUN:
        venue = CcxtVenue(options.venue[5:], keys, options.venue_url, options.mode == SANDBOX)
        try:
            venue.ex.load_markets()
        except venue.ccxt.BaseError as exc:
            msg = f"venue {options.venue}: {type(exc).__name__}: {str(exc)[:200]}"
            raise OutsideFailure(msg) from None
    producer = RecordProducer(kafka_client_config(k, "producer"))

    def emit(table: str, record: object) -> None:
        producer.produce(topics[table], encode(record), record_key(table, record))

    if venue is not None:
        ours = topic_records(consumer_conf, topics["orders"], Order, k.timeout_s)
        for table, record in external_orders(venue, options.venue, ours, wall_ms()):
            emit(table, record)
        producer.producer.flush(k.timeout_s)
        producer.check()

    executor = Executor(options, ExecutionGuard(settings.execution_limits), venue, emit, seen)
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda n, _f: stop.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    # static membership: a restarted executor takes its partitions back at once, not after the
    # killed one's session times out (and a second executor of the same id fences the first)
    # (one group per topic prefix: deployments sharing a cluster do not share offsets or members)
    group = k.topic_prefix + GROUP
    consumer = Consumer(
        {"group.instance.id": group, **consumer_conf, "group.id": group, "auto.offset.reset": "earliest"}
    )
    assigned: list[bool] = []

    def on_assign(_consumer, _partitions) -> None:
        assigned.append(True)

    consumer.subscribe([topics["orders"]], on_assign=on_assign)
    idle_since = time.monotonic()
    hook = os.environ.get(COMMIT_HOOK, "")
    crash_before_commit = int(hook) if hook.isdigit() else None
    handled = 0
    try:
        while not stop:
            msg = consumer.poll(0.2)
            if msg is None:
                if not assigned:
                    idle_since = time.monotonic()  # idle counts once the partitions are ours
                elif options.idle_exit_s is not None and time.monotonic() - idle_since > options.idle_exit_s:
                    break
                continue
            idle_since = time.monotonic()
            if msg.error() is not None:
                continue
            executor.handle(msg.value(), f"{msg.topic()}[{msg.partition()}]@{msg.offset()}")
            producer.producer.flush(k.timeout_s)
            producer.check()
            handled += 1
            if crash_before_commit is not None and handled >= crash_before_commit:
                os._exit(137)
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()
        producer.producer.flush(k.timeout_s)
        for s, handler in previous.items():
            signal.signal(s, handler)
    producer.check()
    sys.stdout.write(executor.summary.line() + "\n")
    return 0


def with_kafka(settings: Settings, brokers: str | None) -> Settings:
    """Settings with ``--kafka`` applied."""
    if not brokers:
        return settings
    return dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, brokers=brokers))
