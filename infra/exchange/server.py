"""The local exchange as an HTTP server: Binance's spot REST API on the standard library's threading server.

:func:`start_venue` starts it in threads of this process (tests, and the
``serve`` command) and returns a :class:`RunningVenue` with its URL; the
engine, the API and the tick feeds share one lock. With ``state_file`` the
venue starts from the state saved there and saves it every ``save_every_s``
when it changed, and at stop.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import orjson

from flows.config import KafkaConfig, kafka_client_config
from infra.exchange.api_keys import ApiKeys
from infra.exchange.binance_api import BinanceApi, Reply
from infra.exchange.markets import MarketSpec
from infra.exchange.matching_engine import EngineSettings, MatchingEngine, VenueTrade
from infra.exchange.state_file import encode_state, load_state, save_state
from infra.exchange.tick_feed import FileFeed, TickFeed, TopicFeed
from operators.execution.cost_model import BrokerSettings
from schemas.records import Tick
from schemas.settings import SettingsError, check_settings, setting
from sources.chunk_source import wall_ms

log = logging.getLogger(__name__)
_ASSET = re.compile(r"[A-Z0-9]{1,20}")
DEFAULT_MARKETS = (MarketSpec("BTC/USDT"), MarketSpec("ETH/USDT"))
INTERNAL = Reply(500, {"code": -1000, "msg": "An unknown error occurred while processing the request."})


@dataclass(frozen=True, slots=True)
class VenueSettings:
    """What the local exchange trades, where it listens and where its prices come from.

    Parameters
    ----------
    engine
        Matching rules and the paper cost model.
    markets
        The spot markets (default BTC/USDT and ETH/USDT with :class:`MarketSpec`'s filters).
    balances
        Starting free balance per asset (a new state only); other assets start at 0.
    host, port
        Where to listen; port 0 takes a free port (see :attr:`RunningVenue.url`).
    ticks
        Tick files (read once, in order) and ``kafka://BROKERS[/TOPIC]`` topics (followed live;
        the topic defaults to ``<kafka.topic_prefix>ticks``).
    rate
        Ticks per second from files (``inf``: as fast as possible).
    from_beginning
        Read topics from their first offsets instead of their ends.
    kafka
        Client settings (security) of the topic feeds.
    state_file
        JSON file to start from and save to ("" : state in memory only).
    save_every_s
        How often a changed state is saved.
    recv_window_max_ms
        Largest ``recvWindow`` accepted.

    >>> default_settings(balances={"USDT": -1.0})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    schemas.settings.SettingsError: VenueSettings.balances must be assets (A-Z, 0-9) with finite amounts ...
    """

    engine: EngineSettings = setting()
    markets: tuple[MarketSpec, ...] = setting(DEFAULT_MARKETS)
    balances: dict = setting(default_factory=lambda: {"USDT": 100_000.0})
    host: str = setting("127.0.0.1")
    port: int = setting(8765, ge=0, le=65535)
    ticks: tuple[str, ...] = setting(())
    rate: float = setting(100.0, gt=0, allow_inf=True)
    from_beginning: bool = setting(False)
    kafka: KafkaConfig = setting(default_factory=KafkaConfig)
    state_file: str = setting("")
    save_every_s: float = setting(1.0, gt=0)
    recv_window_max_ms: int = setting(60_000, ge=1)

    def __post_init__(self) -> None:
        check_settings(self)
        good = all(
            isinstance(a, str)
            and _ASSET.fullmatch(a)
            and isinstance(v, int | float)
            and math.isfinite(v)
            and v >= 0
            for a, v in self.balances.items()
        )
        if not good:
            raise SettingsError.of(self, "balances", "assets (A-Z, 0-9) with finite amounts >= 0")
        ids = [m.market_id for m in self.markets]
        if not ids or len(set(ids)) != len(ids):
            raise SettingsError.of(self, "markets", "one or more markets, each once")


def default_settings(**changes) -> VenueSettings:
    """Venue settings with the paper cost model's defaults (1 s bars) and ``changes``."""
    return VenueSettings(engine=EngineSettings(BrokerSettings(bar_interval_ms=1000)), **changes)


def _handler(api: BinanceApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "qbtc-venue/1"

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace") if length > 0 else ""
            try:
                reply = api.handle(self.command, url.path, url.query, body, dict(self.headers.items()))
            except Exception:
                log.exception("%s %s failed", self.command, url.path)
                reply = INTERNAL
            data = orjson.dumps(reply.body)
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            code = reply.body.get("code") if isinstance(reply.body, dict) and reply.status >= 400 else None
            log.info("%s %s -> %d%s", self.command, url.path, reply.status, f" ({code})" if code else "")

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            pass  # requests are logged by _serve, without their query strings

    return Handler


@dataclass
class RunningVenue:
    """A local exchange serving in this process: its URL, engine and feeds; :meth:`stop` ends it."""

    url: str
    engine: MatchingEngine
    lock: threading.Lock
    feeds: list[TickFeed]
    settings: VenueSettings
    _server: ThreadingHTTPServer
    _stop: threading.Event
    _threads: list[threading.Thread] = field(default_factory=list)
    _saved: bytes = b""

    def tick(self, tick: Tick) -> list[VenueTrade]:
        """Feed one tick (as the feeds do); the fills it made."""
        with self.lock:
            return self.engine.on_tick(tick)

    def save(self) -> bool:
        """Save the state to ``state_file`` if it changed since the last save; True if written."""
        if not self.settings.state_file:
            return False
        with self.lock:
            data = encode_state(self.engine.state)
        if data == self._saved:
            return False
        save_state(self.settings.state_file, data)
        self._saved = data
        return True

    def stop(self) -> None:
        """Stop serving and feeding, then save the state (if kept in a file)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads + self.feeds:
            t.join(timeout=10)
        self.save()

    def __enter__(self) -> RunningVenue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _feeds(settings: VenueSettings, sink: Callable[[Tick], None], stop: threading.Event) -> list[TickFeed]:
    from flows.kafka_flow import KafkaUrl

    files = [s for s in settings.ticks if not s.startswith("kafka://")]
    feeds: list[TickFeed] = [FileFeed(files, settings.rate, sink, stop)] if files else []
    for source in settings.ticks:
        if source.startswith("kafka://"):
            url = KafkaUrl.parse(source)
            conf = kafka_client_config(settings.kafka, "consumer") | {"bootstrap.servers": url.brokers}
            topic = url.topic or settings.kafka.topic_prefix + "ticks"
            feeds.append(TopicFeed(conf, topic, settings.from_beginning, sink, stop))
    return feeds


def start_venue(settings: VenueSettings, keys: ApiKeys, now_ms: Callable[[], int] = wall_ms) -> RunningVenue:
    """Start the local exchange in daemon threads of this process; returns once it accepts connections."""
    state = load_state(settings.state_file) if settings.state_file else None
    engine = MatchingEngine(settings.engine, settings.markets, settings.balances, now_ms, state)
    lock = threading.Lock()
    stop = threading.Event()

    def sink(tick: Tick) -> None:
        with lock:
            engine.on_tick(tick)

    feeds = _feeds(settings, sink, stop)  # bad inputs fail before the port is taken
    api = BinanceApi(engine, keys, now_ms, lock, settings.recv_window_max_ms)
    server = ThreadingHTTPServer((settings.host, settings.port), _handler(api))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    venue = RunningVenue(f"http://{host}:{port}", engine, lock, feeds, settings, server, stop)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    venue._threads.append(serving)
    if settings.state_file:
        venue._threads.append(threading.Thread(target=_saver, args=(venue,), daemon=True))
    for t in venue._threads + feeds:
        t.start()
    log.info("local exchange at %s: %s", venue.url, ", ".join(m.symbol for m in settings.markets))
    return venue


def _saver(venue: RunningVenue) -> None:
    while not venue._stop.wait(venue.settings.save_every_s):
        try:
            venue.save()
        except OSError as exc:
            log.error("saving %s failed: %s", venue.settings.state_file, exc)
