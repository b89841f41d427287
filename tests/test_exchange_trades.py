"""Live trades through ccxt, offline: Binance's documented payloads through ccxt's own parsers.

Only the transport is replaced: the fake exchanges below are the real ccxt
Binance classes whose ``fetch_trades`` / ``watch_trades`` hand queued raw
payloads to ccxt's parsers (``parse_trades`` for REST, ``handle_message`` and
ccxt's trade cache for the websocket) instead of talking to Binance.
"""

from __future__ import annotations

import asyncio
import gzip
import signal
from collections import deque

import ccxt
import ccxt.async_support
import ccxt.pro
import orjson
import pytest

from schemas.codec import decode
from schemas.records import VALUE, DeadLetter, Tick
from schemas.validation import Rejected
from sinks.tick_file_writer import CSV_HEADER, TickFileWriter
from sources.exchange_trades import (
    RecordError,
    RecordSettings,
    normalise_trade,
    record,
    record_trades,
)
from sources.tick_files import TickFileReader

T = 1_700_000_000_000
NOW = 1_800_000_000_000

# Binance's documented examples, verbatim: REST GET /api/v3/trades and /api/v3/aggTrades
# items and a websocket <symbol>@trade event.
REST_TRADE = orjson.loads(
    '{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",'
    '"time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}'
)
REST_AGG_TRADE = orjson.loads(
    '{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}'
)
WS_TRADE = orjson.loads(
    '{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100",'
    '"T":1672515782136,"m":true,"M":true}'
)


def _markets(exchange) -> list[dict]:
    """Just enough of Binance's spot markets for ccxt to map ids to symbols."""
    return [
        exchange.safe_market_structure(
            {
                "id": base + "BTC",
                "lowercaseId": base.lower() + "btc",
                "symbol": base + "/BTC",
                "base": base,
                "quote": "BTC",
                "baseId": base,
                "quoteId": "BTC",
                "type": "spot",
                "spot": True,
                "margin": False,
                "option": False,
                "contract": False,
                "active": True,
            }
        )
        for base in ("BNB", "ETH")
    ]


def agg(trade_id: int, price: str, qty: str, ts: int, buyer_maker: bool = True) -> dict:
    """A REST ``aggTrades`` item in Binance's format."""
    return {
        "a": trade_id,
        "p": price,
        "q": qty,
        "f": trade_id,
        "l": trade_id,
        "T": ts,
        "m": buyer_maker,
        "M": True,
    }


def ws_trade(trade_id: int, price: str, qty: str, ts: int, symbol_id: str = "BNBBTC") -> dict:
    """A websocket ``trade`` stream event in Binance's format."""
    return {
        "e": "trade",
        "E": ts,
        "s": symbol_id,
        "t": trade_id,
        "p": price,
        "q": qty,
        "T": ts,
        "m": False,
        "M": True,
    }


class QueuedRest:
    """``fetch_trades`` answering from queued raw REST pages through ccxt's parser."""

    def _setup(self, pages: dict[str, list[list[dict]]] | None) -> None:
        self.set_markets(_markets(self))
        self.pages = {symbol: deque(queue) for symbol, queue in (pages or {}).items()}
        self.since_seen: dict[str, list[int | None]] = {}
        self.closes = 0

    async def fetch_trades(self, symbol, since=None, limit=None, params=None):
        self.since_seen.setdefault(symbol, []).append(since)
        await asyncio.sleep(0)
        queue = self.pages.get(symbol)
        raw = queue.popleft() if queue else []
        return self.parse_trades(raw, self.market(symbol))

    async def close(self, clean_instance_data=False):
        self.closes += 1
        await super().close(clean_instance_data)


class RestBinance(QueuedRest, ccxt.async_support.binance):
    """The async REST Binance (no watchTrades), transport replaced."""

    def __init__(self, pages=None) -> None:
        super().__init__({"timeout_on_exit": 0})
        self._setup(pages)


class WsBinance(QueuedRest, ccxt.pro.binance):
    """ccxt pro Binance whose socket is a queue of raw stream events.

    Each ``watch_trades`` call feeds one queued batch of events through ccxt's
    ``handle_message`` and answers with ccxt's trade cache, as ccxt does
    without ``newUpdates``: earlier trades come back again. An exhausted queue
    is a dropped connection (``NetworkError``), or blocks when ``block``.
    """

    def __init__(self, events=None, pages=None, fail_with=None, block=False) -> None:
        super().__init__({"timeout_on_exit": 0})
        self._setup(pages)
        self.events = deque(events or [])
        self.fail_with = fail_with
        self.block = block
        self.watch_calls = 0

    async def watch_trades(self, symbol, since=None, limit=None, params=None):
        self.watch_calls += 1
        await asyncio.sleep(0)
        if self.fail_with is not None:
            raise self.fail_with
        if not self.events:
            if self.block:
                await asyncio.Event().wait()
            msg = "binance connection closed by the test"
            raise ccxt.NetworkError(msg)
        client = self.client(self.urls["api"]["ws"]["spot"] + "/stream")
        for event in self.events.popleft():
            self.handle_message(client, event)
        return self.trades[symbol]


class Sink:
    """Collects what the recorder emits."""

    def __init__(self) -> None:
        self.batches: list[list[Tick]] = []
        self.dead: list[DeadLetter] = []
        self.sleeps: list[float] = []
        self.warnings: list[str] = []

    @property
    def ticks(self) -> list[Tick]:
        return [t for batch in self.batches for t in batch]

    def emit(self, ticks: list[Tick]) -> None:
        self.batches.append(list(ticks))

    def take_dead(self, dead: list[DeadLetter]) -> None:
        self.dead.extend(dead)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)

    def run(self, settings: RecordSettings, exchange, now_ms=lambda: NOW) -> int:
        coro = record_trades(
            settings, self.emit, self.take_dead, now_ms, exchange, sleep=self.sleep, warn=self.warnings.append
        )
        return asyncio.run(asyncio.wait_for(coro, timeout=10))


# -- ccxt's own Binance parsers -> Tick ---------------------------------------


def _assert_tick(tick: Tick, ts: int, price: float, qty: float, side: str, trade_id: str) -> None:
    assert (tick.ts, tick.symbol, tick.side, tick.trade_id, tick.exchange) == (
        ts,
        "BNB/BTC",
        side,
        trade_id,
        "binance",
    )
    assert tick.price == pytest.approx(price, rel=1e-12)
    assert tick.qty == pytest.approx(qty, rel=1e-12)


def test_rest_trades_and_agg_trades_items_normalise_through_ccxt_parser():
    exchange = ccxt.binance()
    exchange.set_markets(_markets(exchange))
    market = exchange.market("BNB/BTC")
    tick = normalise_trade(exchange.parse_trade(REST_TRADE, market), "binance")
    # isBuyerMaker true: the buyer was the maker, so the taker sold
    _assert_tick(tick, 1499865549590, 4.000001, 12.0, "sell", "28457")
    tick = normalise_trade(exchange.parse_trade(REST_AGG_TRADE, market), "binance")
    _assert_tick(tick, 1498793709153, 0.01633102, 4.70443515, "sell", "26129")
    taker_buy = normalise_trade(
        exchange.parse_trade({**REST_TRADE, "isBuyerMaker": False}, market), "binance"
    )
    assert taker_buy.side == "buy"


def test_websocket_trade_event_normalises_through_ccxt_pro_parser():
    exchange = ccxt.pro.binance()
    exchange.set_markets(_markets(exchange))
    # as ccxt's handle_trade does: the market from the event's "s", then the parser
    market = exchange.safe_market(WS_TRADE["s"], None, None, "spot")
    tick = normalise_trade(exchange.parse_ws_trade(WS_TRADE, market), "binance")
    _assert_tick(tick, 1672515782136, 0.001, 100.0, "sell", "12345")
    tick = normalise_trade(exchange.parse_ws_trade({**WS_TRADE, "m": False}, market), "binance")
    assert tick.side == "buy"
    # without the market ccxt cannot name the symbol: a schema rejection, not a guess
    with pytest.raises(Rejected, match="symbol"):
        normalise_trade(exchange.parse_ws_trade(WS_TRADE), "binance")


@pytest.mark.parametrize(
    ("change", "reason", "text"),
    [
        ({"p": "0"}, "value", "price"),
        ({"q": "-1"}, "value", "qty"),
        ({"T": None}, "schema", "missing field 'ts'"),
        ({"p": None}, "schema", "missing field 'price'"),
    ],
)
def test_bad_trades_are_rejected_with_reason(change, reason, text):
    exchange = ccxt.binance()
    exchange.set_markets(_markets(exchange))
    trade = exchange.parse_trade({**REST_AGG_TRADE, **change}, exchange.market("BNB/BTC"))
    with pytest.raises(Rejected, match=text) as info:
        normalise_trade(trade, "binance")
    assert info.value.reason == reason


def test_a_trade_that_is_not_a_dict_is_a_schema_rejection():
    with pytest.raises(Rejected) as info:
        normalise_trade(["not", "a", "trade"], "binance")
    assert info.value.reason == "schema"


# -- the recorder, polling ------------------------------------------------------


def test_polling_emits_each_trade_once_and_dead_letters_a_bad_trade_once():
    bad = agg(3, "0", "5.0", T)
    pages = [
        [agg(1, "0.0163", "1.0", T), agg(2, "0.0164", "2.0", T, buyer_maker=False)],  # two at one ms
        [
            agg(1, "0.0163", "1.0", T),
            agg(2, "0.0164", "2.0", T),
            bad,
            agg(4, "0.0165", "1.5", T),
            agg(5, "0.0166", "0.5", T + 1),
        ],  # fmt: skip
        [],
        [
            agg(1, "0.0163", "1.0", T),
            bad,
            agg(4, "0.0165", "1.5", T),
            agg(5, "0.0166", "0.5", T + 1),
            agg(6, "0.0167", "3.0", T + 2),
        ],  # fmt: skip
        [bad, agg(7, "0.0168", "4.0", T + 3)],
    ]
    exchange = RestBinance({"BNB/BTC": pages})
    sink = Sink()
    settings = RecordSettings("binance", ("BNB/BTC",), poll_interval_s=5.0, max_ticks=6)
    count = sink.run(settings, exchange)
    assert count == 6 == len(sink.ticks)
    assert [t.trade_id for t in sink.ticks] == ["1", "2", "4", "5", "6", "7"]
    assert [t.ts - T for t in sink.ticks] == [0, 0, 0, 1, 2, 3]
    assert [t.side for t in sink.ticks] == ["sell", "buy", "sell", "sell", "sell", "sell"]
    assert sink.ticks[5].price == pytest.approx(0.0168)
    assert {t.symbol for t in sink.ticks} == {"BNB/BTC"} and {t.exchange for t in sink.ticks} == {"binance"}
    assert len(sink.dead) == 1
    letter = sink.dead[0]
    assert (letter.ingest_ts, letter.source, letter.reason) == (NOW, "binance:BNB/BTC", VALUE)
    assert "price" in letter.message
    assert orjson.loads(letter.payload) == bad
    # since = the last event time; an empty answer asks for the latest trades next
    assert exchange.since_seen["BNB/BTC"] == [None, T, T + 1, None, T + 2]
    assert sink.sleeps == [5.0] * 4  # the injected sleep, never a real wait
    assert exchange.closes == 1
    assert sink.warnings == []


def test_exchange_without_watch_trades_polls_and_network_errors_are_retried():
    class Flaky(RestBinance):
        failures = 2

        async def fetch_trades(self, symbol, since=None, limit=None, params=None):
            if self.failures:
                self.failures -= 1
                msg = "binance GET https://api.binance.com/api/v3/aggTrades 503"
                raise ccxt.ExchangeNotAvailable(msg)
            return await super().fetch_trades(symbol, since, limit, params)

    exchange = Flaky({"BNB/BTC": [[agg(1, "0.0163", "1.0", T)]]})
    assert not exchange.has.get("watchTrades")
    sink = Sink()
    settings = RecordSettings("binance", ("BNB/BTC",), poll_interval_s=0.0, max_ticks=1)
    assert sink.run(settings, exchange) == 1
    assert len(sink.warnings) == 1 and "ExchangeNotAvailable" in sink.warnings[0]
    assert sink.sleeps == [1.0, 2.0]  # backoff, then the answer reached max_ticks
    assert exchange.closes == 1


# -- the recorder, websocket ----------------------------------------------------


def test_websocket_dedupes_ccxt_cache_and_falls_back_to_polling_on_network_error():
    events = [
        [ws_trade(100, "0.001", "1", T), ws_trade(101, "0.002", "2", T)],
        [ws_trade(102, "0", "3", T), ws_trade(103, "0.003", "3", T + 1)],  # 102 is bad
        [],
        [ws_trade(104, "0.004", "4", T + 2), ws_trade(99, "0.005", "5", T + 2, symbol_id="ETHBTC")],
    ]
    # after the socket drops: aggregated trades, other ids; the one at T + 2 was streamed already
    pages = [[agg(9002, "0.004", "4", T + 2), agg(9003, "0.006", "6", T + 3)]]
    exchange = WsBinance(events, {"BNB/BTC": pages})
    sink = Sink()
    settings = RecordSettings("binance", ("BNB/BTC",), poll_interval_s=0.0, max_ticks=5)
    assert sink.run(settings, exchange) == 5
    assert [t.trade_id for t in sink.ticks] == ["100", "101", "103", "104", "9003"]
    assert [t.side for t in sink.ticks] == ["buy", "buy", "buy", "buy", "sell"]
    assert {t.symbol for t in sink.ticks} == {"BNB/BTC"}
    assert [(d.reason, orjson.loads(d.payload)["t"]) for d in sink.dead] == [(VALUE, 102)]
    assert exchange.watch_calls == 5  # four batches, then the dropped connection
    assert exchange.since_seen["BNB/BTC"] == [T + 2]
    assert len(sink.warnings) == 1 and "NetworkError" in sink.warnings[0] and "polling" in sink.warnings[0]
    assert exchange.closes == 1


def test_websocket_not_supported_falls_back_to_polling_with_one_warning():
    pages = {
        "BNB/BTC": [[agg(1, "0.0163", "1.0", T), agg(2, "0.0164", "1.0", T)]],
        "ETH/BTC": [[agg(7, "0.05", "1.0", T + 5)]],
    }
    exchange = WsBinance(pages=pages, fail_with=ccxt.NotSupported("binance watchTrades() is not supported"))
    sink = Sink()
    settings = RecordSettings("binance", ("BNB/BTC", "ETH/BTC"), poll_interval_s=0.0, max_ticks=3)
    assert sink.run(settings, exchange) == 3
    assert sorted((t.symbol, t.trade_id) for t in sink.ticks) == [
        ("BNB/BTC", "1"),
        ("BNB/BTC", "2"),
        ("ETH/BTC", "7"),
    ]
    assert exchange.watch_calls == 2
    assert len(sink.warnings) == 1 and "NotSupported" in sink.warnings[0]


def test_use_websocket_false_never_watches():
    exchange = WsBinance(events=[[ws_trade(1, "1", "1", T)]], pages={"BNB/BTC": [[agg(1, "1", "1", T)]]})
    sink = Sink()
    settings = RecordSettings("binance", ("BNB/BTC",), use_websocket=False, poll_interval_s=0.0, max_ticks=1)
    assert sink.run(settings, exchange) == 1
    assert exchange.watch_calls == 0 and sink.warnings == []


# -- stopping -------------------------------------------------------------------


def test_duration_stops_by_the_injected_clock():
    calls = []

    def clock() -> int:
        calls.append(1)
        return T + 100 * len(calls)

    exchange = RestBinance({"BNB/BTC": [[agg(1, "1", "1", T)]]})
    sink = Sink()
    settings = RecordSettings("binance", ("BNB/BTC",), poll_interval_s=0.0, duration_s=1.0)
    assert sink.run(settings, exchange, now_ms=clock) == 1
    assert 10 <= len(calls) < 100
    assert exchange.closes == 1


def test_cancellation_closes_the_exchange():
    exchange = WsBinance(block=True)
    sink = Sink()
    settings = RecordSettings("binance", ("BNB/BTC", "ETH/BTC"))

    async def scenario() -> None:
        task = asyncio.create_task(record_trades(settings, sink.emit, sink.take_dead, lambda: NOW, exchange))
        while exchange.watch_calls < 2:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert exchange.closes == 1


def test_record_returns_the_count_so_far_on_ctrl_c():
    pages = [[agg(i, "1", "1", T + i)] for i in range(1, 50)]
    exchange = RestBinance({"BNB/BTC": pages})
    done: list[list[Tick]] = []

    def emit(ticks: list[Tick]) -> None:
        if len(done) == 3:
            signal.raise_signal(signal.SIGINT)
        assert len(done) < 40, "Ctrl-C did not stop the recorder"
        done.append(ticks)

    settings = RecordSettings("binance", ("BNB/BTC",), poll_interval_s=0.0)
    # Ctrl-C as a terminal sends it: to Python's own handler. An embedded chDB opened earlier in
    # this process installs its own SIGINT handler, and asyncio then leaves SIGINT alone.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        count = record(settings, emit, lambda dead: None, lambda: NOW, exchange=exchange)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert count == sum(len(b) for b in done) >= 3
    assert exchange.closes == 1


def test_unknown_symbol_and_sync_exchange_are_record_errors():
    exchange = RestBinance()
    sink = Sink()
    with pytest.raises(RecordError, match="no market XRP/BTC"):
        sink.run(RecordSettings("binance", ("BNB/BTC", "XRP/BTC")), exchange)
    assert exchange.closes == 1
    sync = ccxt.binance()
    with pytest.raises(RecordError, match="not an async ccxt exchange"):
        sink.run(RecordSettings("binance", ("BNB/BTC",)), sync)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"exchange": "nope"}, "not a ccxt exchange"),
        ({"symbols": ()}, "non-empty"),
        ({"symbols": "BTC/USDT"}, "non-empty tuple"),
        ({"symbols": ("BTCUSDT",)}, "ccxt-unified"),
        ({"symbols": ("BTC/USDT", "BTC/USDT")}, "distinct"),
        ({"poll_interval_s": float("nan")}, "poll_interval_s"),
        ({"max_ticks": 0}, "max_ticks"),
        ({"max_ticks": True}, "max_ticks"),
        ({"duration_s": 0}, "duration_s"),
        ({"use_websocket": "yes"}, "use_websocket"),
    ],
)
def test_settings_are_validated(kwargs, text):
    args = {"exchange": "binance", "symbols": ("BTC/USDT",), **kwargs}
    with pytest.raises(ValueError, match=text):
        RecordSettings(**args)


def test_settings_take_a_list_of_symbols_as_a_tuple():
    assert RecordSettings("binance", ["BTC/USDT", "ETH/USDT"]).symbols == ("BTC/USDT", "ETH/USDT")


# -- TickFileWriter -> TickFileReader -------------------------------------------

TICKS = [
    Tick(T, "BTC/USDT", 37000.5, 0.25, "buy", "42", "binance"),
    Tick(T, "BTC/USDT", 1e-08, 0.1 + 0.2, "sell", "43", "binance"),
    Tick(T + 1, "ETH/USDT", 12345678.123456789, 3.0, "", "", "binance"),
    Tick(T + 2, "1000PEPE/USDT:USDT", 2.5, 1e6, "sell", "id,with,commas", "kraken"),
]


def _read(path: str) -> tuple[list[Tick], list[DeadLetter]]:
    ticks, dead = [], []
    for chunk in TickFileReader(path, "", lambda: NOW).chunks():
        dead.extend(chunk.dead)
        for batch in chunk.batches:
            ticks.extend(batch.tick(i) for i in range(len(batch)))
    return sorted(ticks, key=lambda t: (t.ts, t.trade_id)), dead


def _assert_same(got: list[Tick], want: list[Tick]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, sorted(want, key=lambda t: (t.ts, t.trade_id)), strict=True):
        assert (a.ts, a.symbol, a.side, a.trade_id, a.exchange) == (
            b.ts,
            b.symbol,
            b.side,
            b.trade_id,
            b.exchange,
        )
        assert a.price == pytest.approx(b.price, rel=1e-15)
        assert a.qty == pytest.approx(b.qty, rel=1e-15)


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.jsonl", "t.jsonl.gz"])
def test_writer_round_trips_through_the_reader_across_appends(tmp_path, name):
    path = str(tmp_path / name)
    with TickFileWriter(path) as writer:
        writer.write(TICKS[:2])
        writer.write([])
        writer.flush()
    with TickFileWriter(path) as writer:  # a second run appends
        writer.write(TICKS[2:])
        assert writer.written == 2
    ticks, dead = _read(path)
    assert dead == []
    _assert_same(ticks, TICKS)
    text = (gzip.open if name.endswith(".gz") else open)(path, "rb").read().decode()
    if ".csv" in name:
        assert text.startswith(CSV_HEADER + "\n") and text.count("ts,symbol") == 1
    assert text.count("\n") == len(TICKS) + (".csv" in name)


def test_writer_appends_after_a_line_cut_short(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(CSV_HEADER + "\n" + f"{T},BTC/USDT,1.5")  # a run that died mid-line
    with TickFileWriter(path) as writer:
        writer.write(TICKS[:1])
    ticks, dead = _read(str(path))
    _assert_same(ticks, TICKS[:1])
    assert [d.source.rsplit(":", 1)[1] for d in dead] == ["2"]


def test_writer_refuses_a_csv_with_another_header_and_unknown_types(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("symbol,ts,price,qty\nBTC/USDT,1,1,1\n")
    with pytest.raises(ValueError, match="exists with header"):
        TickFileWriter(path)
    with pytest.raises(ValueError, match="unknown tick file type"):
        TickFileWriter(tmp_path / "t.parquet")


def test_writer_appends_dead_letters_in_the_codec_encoding(tmp_path):
    path = tmp_path / "t.csv.gz"
    letters = [
        DeadLetter(
            NOW, "binance:BNB/BTC", VALUE, "price 0.0 is not finite and > 0", orjson.dumps(REST_AGG_TRADE)
        ),
        DeadLetter(NOW + 1, "binance:BNB/BTC", "schema", "missing field 'ts'", b"\x00raw"),
    ]
    with TickFileWriter(path) as writer:
        writer.write_dead(letters[:1])
    with TickFileWriter(path) as writer:
        writer.write_dead(letters[1:])
        assert writer.dead_path == str(path) + ".dead.jsonl"
    lines = (tmp_path / "t.csv.gz.dead.jsonl").read_bytes().splitlines()
    assert [decode(line, DeadLetter) for line in lines] == letters
    writer.close()  # closing twice is harmless
    with pytest.raises(ValueError, match="closed"):
        writer.write(TICKS)
