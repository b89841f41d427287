"""Live trades from an exchange through ccxt, normalised to :class:`~schemas.records.Tick`.

The recorder prefers ccxt pro websockets (``watch_trades``, one asyncio task
per symbol) and falls back to polling ``fetch_trades`` with async ccxt when
the exchange has no ``watchTrades``, when websockets are turned off, or when
watching fails with ``ccxt.NotSupported`` or a ``ccxt.NetworkError`` (one
warning line on stderr, then polling for good). Network errors while
polling are retried with a growing pause (one warning per run of errors).

Both paths can hand back a trade twice (polls overlap at ``since``, ccxt pro
caches), so each symbol keeps the last event time seen and the ids seen at
that millisecond: a trade older than that time, or at that time with a known
id, is a repeat and is dropped. This assumes an exchange delivers a symbol's
trades in event-time order, which the trade feeds of exchanges do. When a
symbol falls back from websocket to polling, the ids of the two feeds need not
match (Binance streams raw trades but polls aggregated ones), so trades in the
millisecond of the switch are taken as seen: at worst the few prints of that
one millisecond that the socket had not delivered are missed, never doubled.

A poll asks for ``since`` = the last event time seen; an empty answer makes the
next poll ask for the latest trades instead (Binance answers ``since`` with at
most the hour after it, so a quiet market would otherwise stall the poll). The
first poll asks for the latest trades, so a polled recording starts with up to
one page of trades from before the start.

No trade is lost silently: one that fails the project's checks becomes a
:class:`~schemas.records.DeadLetter` with ``source`` ``exchange:symbol`` and
the trade's raw ``info`` as payload (once, however often it is repeated).

>>> settings = RecordSettings("binance", ("BTC/USDT", "ETH/USDT"), max_ticks=1000)
>>> settings.symbols, settings.use_websocket
(('BTC/USDT', 'ETH/USDT'), True)
"""

from __future__ import annotations

import asyncio
import inspect
import math
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import ccxt
import ccxt.async_support
import ccxt.pro
import orjson

from schemas.errors import OutsideFailure
from schemas.records import SCHEMA, DeadLetter, Tick
from schemas.validation import Rejected, check_record

REJECTED_MEMORY = 10_000
"""Rejected trades remembered per symbol, so a repeated bad trade is dead-lettered once."""
MAX_BACKOFF_S = 30.0
"""Longest wait between polls after network errors."""
SUPERVISOR_TICK_S = 1.0
"""Longest the recorder sleeps before looking at the clock again."""


class RecordError(OutsideFailure):
    """An exchange that cannot be recorded from (markets, symbols, no trade feed)."""


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """What to record; validated at construction.

    Parameters
    ----------
    exchange
        A ccxt exchange id, e.g. ``binance`` (see ``ccxt.exchanges``).
    symbols
        ccxt-unified symbols, e.g. ``BTC/USDT``; non-empty and distinct.
    poll_interval_s
        Seconds between two polls of one symbol (>= 0) when polling.
    use_websocket
        Watch trades over ccxt pro websockets when the exchange can.
    max_ticks
        Stop after emitting that many ticks (>= 1); None: no limit.
    duration_s
        Stop after that many seconds (> 0) by the recorder's clock; None: no limit.

    >>> RecordSettings("binance", ("BTC/USDT",), poll_interval_s=-1)
    Traceback (most recent call last):
    ...
    ValueError: poll_interval_s must be a finite number >= 0, got -1
    """

    exchange: str
    symbols: tuple[str, ...]
    poll_interval_s: float = 1.0
    use_websocket: bool = True
    max_ticks: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.exchange, str) or self.exchange not in ccxt.exchanges:
            msg = f"exchange {self.exchange!r} is not a ccxt exchange id (see ccxt.exchanges)"
            raise ValueError(msg)
        symbols = self.symbols
        if not isinstance(symbols, (tuple, list)) or not symbols:
            msg = f"symbols must be a non-empty tuple, got {symbols!r}"
            raise ValueError(msg)
        symbols = tuple(symbols)
        for symbol in symbols:
            if not isinstance(symbol, str) or "/" not in symbol or not symbol.isprintable():
                msg = f"symbol {symbol!r} is not a ccxt-unified symbol such as 'BTC/USDT'"
                raise ValueError(msg)
        if len(set(symbols)) != len(symbols):
            msg = f"symbols must be distinct, got {symbols}"
            raise ValueError(msg)
        object.__setattr__(self, "symbols", symbols)
        if not _number(self.poll_interval_s) or self.poll_interval_s < 0:
            msg = f"poll_interval_s must be a finite number >= 0, got {self.poll_interval_s!r}"
            raise ValueError(msg)
        if not isinstance(self.use_websocket, bool):
            msg = f"use_websocket must be a bool, got {self.use_websocket!r}"
            raise ValueError(msg)
        if self.max_ticks is not None and (
            not isinstance(self.max_ticks, int) or isinstance(self.max_ticks, bool) or self.max_ticks < 1
        ):
            msg = f"max_ticks must be None or an int >= 1, got {self.max_ticks!r}"
            raise ValueError(msg)
        if self.duration_s is not None and (not _number(self.duration_s) or self.duration_s <= 0):
            msg = f"duration_s must be None or a finite number > 0, got {self.duration_s!r}"
            raise ValueError(msg)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def normalise_trade(trade: dict, exchange_id: str) -> Tick:
    """A :class:`Tick` from a ccxt unified trade, or raise :class:`Rejected`.

    The trade goes through the project's own checks
    (:func:`schemas.validation.check_record`) with ``ts`` from ``timestamp``,
    ``qty`` from ``amount``, ``trade_id`` from ``id`` and ``exchange`` from
    ``exchange_id``.

    Parameters
    ----------
    trade
        A trade as ccxt's ``parse_trade`` makes it.
    exchange_id
        The ccxt id of the exchange it came from.

    >>> trade = {"timestamp": 1499865549590, "symbol": "BNB/BTC", "price": 4.000001,
    ...          "amount": 12.0, "side": "sell", "id": "28457"}
    >>> normalise_trade(trade, "binance")
    Tick(ts=1499865549590, symbol='BNB/BTC', price=4.000001, qty=12.0, side='sell', trade_id='28457', \
exchange='binance')
    >>> normalise_trade({**trade, "price": 0.0}, "binance")
    Traceback (most recent call last):
    ...
    schemas.validation.Rejected: price 0.0 is not finite and > 0
    """
    if not isinstance(trade, dict):
        raise Rejected(SCHEMA, f"a ccxt trade must be a dict, got {type(trade).__name__}")
    fields = {
        "ts": trade.get("timestamp"),
        "symbol": trade.get("symbol"),
        "price": trade.get("price"),
        "qty": trade.get("amount"),
        "side": trade.get("side"),
        "trade_id": trade.get("id"),
        "exchange": exchange_id,
    }
    return check_record(fields, exchange_id)


def trade_payload(trade: Any) -> bytes:
    """The raw form of a trade for a dead letter: orjson of its ``info``, else of the trade.

    >>> trade_payload({"id": "1", "info": {"t": 1, "p": "0"}})
    b'{"t":1,"p":"0"}'
    """
    raw = trade.get("info") if isinstance(trade, dict) else None
    if raw is None:
        raw = trade
    try:
        return orjson.dumps(raw, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return repr(raw).encode("utf-8", errors="replace")


@dataclass(slots=True)
class SeenTrades:
    """What one symbol's recorder has already passed on, to drop repeats.

    ``last_ts`` is the latest event time of a trade passed on and ``ids_at_last``
    the ids (or, without an id, price|amount|side) of the trades at that time.
    Rejected trades are remembered apart (bounded) and do not move ``last_ts``.
    After :meth:`seal` (a switch from websocket to polling, whose trade ids may
    differ: Binance streams raw trades but polls aggregated ones) every trade at
    ``last_ts`` counts as seen.

    >>> seen = SeenTrades()
    >>> seen.accept(5, "a")
    >>> seen.is_new(5, "a"), seen.is_new(5, "b"), seen.is_new(4, "c"), seen.is_new(6, "a")
    (False, True, False, True)
    >>> seen.reject(7, "x")
    >>> seen.was_rejected(7, "x"), seen.was_rejected(7, "y"), seen.last_ts
    (True, False, 5)
    >>> seen.seal()
    >>> seen.is_new(5, "b"), seen.is_new(6, "b")
    (False, True)
    """

    last_ts: int | None = None
    ids_at_last: set[str] = field(default_factory=set)
    sealed: bool = False
    rejected: set[tuple[str, str]] = field(default_factory=set)
    rejected_order: deque[tuple[str, str]] = field(default_factory=deque)

    def is_new(self, ts: int, key: str) -> bool:
        """True when a valid trade at ``ts`` with ``key`` was not passed on yet."""
        if self.last_ts is None:
            return True
        return ts > self.last_ts or (ts == self.last_ts and not self.sealed and key not in self.ids_at_last)

    def accept(self, ts: int, key: str) -> None:
        """Remember a trade passed on."""
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts
            self.ids_at_last = {key}
            self.sealed = False
        else:
            self.ids_at_last.add(key)

    def seal(self) -> None:
        """Count every trade at ``last_ts`` as seen (the next trades come from another feed)."""
        self.sealed = True

    def was_rejected(self, raw_ts: Any, key: str) -> bool:
        """True when this rejected trade was dead-lettered already."""
        return (repr(raw_ts), key) in self.rejected

    def reject(self, raw_ts: Any, key: str) -> None:
        """Remember a rejected trade (bounded), so its repeats are not dead-lettered again."""
        item = (repr(raw_ts), key)
        if item in self.rejected:
            return
        self.rejected.add(item)
        self.rejected_order.append(item)
        if len(self.rejected_order) > REJECTED_MEMORY:
            self.rejected.discard(self.rejected_order.popleft())


def _trade_key(trade: Any) -> str:
    if not isinstance(trade, dict):
        return repr(trade)
    trade_id = trade.get("id")
    if trade_id not in (None, ""):
        return str(trade_id)
    return f"{trade.get('price')}|{trade.get('amount')}|{trade.get('side')}"


def _stderr_warning(text: str) -> None:
    sys.stderr.write(f"qbtc record: warning: {text}\n")
    sys.stderr.flush()


def make_exchange(settings: RecordSettings) -> Any:
    """A new async ccxt exchange for ``settings``: ccxt pro when websockets are wanted and exist."""
    if settings.use_websocket and settings.exchange in ccxt.pro.exchanges:
        cls = getattr(ccxt.pro, settings.exchange)
    else:
        cls = getattr(ccxt.async_support, settings.exchange)
    return cls({"enableRateLimit": True})


class TradeRecorder:
    """Records trades of several symbols from one exchange; see :func:`record_trades`.

    ``emitted`` is the number of ticks passed to ``emit`` so far, readable
    after an interruption.
    """

    def __init__(
        self,
        settings: RecordSettings,
        emit: Callable[[list[Tick]], None],
        dead: Callable[[list[DeadLetter]], None],
        now_ms: Callable[[], int],
        exchange: Any = None,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        warn: Callable[[str], None] = _stderr_warning,
    ) -> None:
        self.settings = settings
        self.emit = emit
        self.dead = dead
        self.now_ms = now_ms
        self.exchange = exchange
        self.sleep = sleep
        self.warn = warn
        self.emitted = 0
        self.dead_letters = 0
        self.repeats = 0
        self.deadline: int | None = None
        self.stopped = False
        self.warned_fallback = False

    async def run(self) -> int:
        """Record until the limits or cancellation; the number of ticks emitted."""
        if self.exchange is None:
            self.exchange = make_exchange(self.settings)
        exchange = self.exchange
        tasks: list[asyncio.Task] = []
        try:
            await self._prepare(exchange)
            if self.settings.duration_s is not None:
                self.deadline = self.now_ms() + round(self.settings.duration_s * 1000)
            tasks = [
                asyncio.create_task(self._record_symbol(symbol), name=f"record {exchange.id}:{symbol}")
                for symbol in self.settings.symbols
            ]
            await self._supervise(tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await self._close(exchange)
        return self.emitted

    async def _close(self, exchange: Any) -> None:
        try:
            closing = exchange.close()
            if inspect.isawaitable(closing):
                await closing
        except Exception as exc:  # closing must not hide why the run ended
            self.warn(f"{getattr(exchange, 'id', exchange)}: closing failed: {type(exc).__name__}: {exc}")

    async def _prepare(self, exchange: Any) -> None:
        if not inspect.iscoroutinefunction(getattr(exchange, "fetch_trades", None)):
            msg = f"{type(exchange).__name__} is not an async ccxt exchange (ccxt.async_support or ccxt.pro)"
            raise RecordError(msg)
        if not (self._can_watch() or exchange.has.get("fetchTrades")):
            msg = f"{exchange.id} offers neither watchTrades nor fetchTrades"
            raise RecordError(msg)
        try:
            await exchange.load_markets()
        except ccxt.BaseError as exc:
            msg = f"{exchange.id}: cannot load markets: {exc}"
            raise RecordError(msg) from exc
        unknown = [s for s in self.settings.symbols if s not in exchange.markets]
        if unknown:
            msg = f"{exchange.id} has no market {', '.join(unknown)}"
            raise RecordError(msg)

    async def _supervise(self, tasks: list[asyncio.Task]) -> None:
        pending = set(tasks)
        while pending and not self.stopped:
            timeout = SUPERVISOR_TICK_S
            if self.deadline is not None:
                left = (self.deadline - self.now_ms()) / 1000
                if left <= 0:
                    self.stopped = True
                    break
                timeout = min(timeout, left)
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()

    def _can_watch(self) -> bool:
        exchange = self.exchange
        return bool(
            self.settings.use_websocket
            and exchange.has.get("watchTrades")
            and inspect.iscoroutinefunction(getattr(exchange, "watch_trades", None))
        )

    async def _record_symbol(self, symbol: str) -> None:
        seen = SeenTrades()
        if self._can_watch():
            try:
                await self._watch(symbol, seen)
                return
            except (ccxt.NotSupported, ccxt.NetworkError) as exc:
                if not self.warned_fallback:
                    self.warned_fallback = True
                    self.warn(
                        f"{self.exchange.id}: watching trades failed ({type(exc).__name__}: {exc}); "
                        f"polling fetch_trades every {self.settings.poll_interval_s:g}s instead"
                    )
            if not self.exchange.has.get("fetchTrades"):
                msg = f"{self.exchange.id}: watching {symbol} failed and the exchange has no fetchTrades"
                raise RecordError(msg)
            seen.seal()
        await self._poll(symbol, seen)

    async def _watch(self, symbol: str, seen: SeenTrades) -> None:
        while not self.stopped:
            trades = await self.exchange.watch_trades(symbol)
            self._take(symbol, trades, seen)

    async def _poll(self, symbol: str, seen: SeenTrades) -> None:
        interval = self.settings.poll_interval_s
        since: int | None = seen.last_ts
        errors = 0
        while not self.stopped:
            try:
                trades = await self.exchange.fetch_trades(symbol, since=since)
            except ccxt.NetworkError as exc:
                errors += 1
                if errors == 1:
                    self.warn(
                        f"{self.exchange.id}: polling {symbol} failed ({type(exc).__name__}: {exc}); retrying"
                    )
                await self.sleep(min(MAX_BACKOFF_S, max(interval, 1.0) * 2 ** min(errors - 1, 5)))
                continue
            errors = 0
            self._take(symbol, trades, seen)
            if self.stopped:
                break
            # An empty answer to `since` may mean "nothing in the exchange's window
            # after since" (Binance looks one hour ahead): ask for the latest next time.
            since = seen.last_ts if trades else None
            await self.sleep(interval)

    def _take(self, symbol: str, trades: Any, seen: SeenTrades) -> None:
        """Pass the new trades of one answer on: ticks to ``emit``, rejects to ``dead``."""
        ticks: list[Tick] = []
        dead: list[DeadLetter] = []
        room = None if self.settings.max_ticks is None else self.settings.max_ticks - self.emitted
        exchange_id = self.exchange.id
        for trade in trades or ():
            if room is not None and len(ticks) >= room:
                break
            key = _trade_key(trade)
            try:
                tick = normalise_trade(trade, exchange_id)
            except Rejected as rej:
                raw_ts = trade.get("timestamp") if isinstance(trade, dict) else None
                if seen.was_rejected(raw_ts, key):
                    self.repeats += 1
                    continue
                seen.reject(raw_ts, key)
                source = f"{exchange_id}:{symbol}"
                dead.append(DeadLetter(self.now_ms(), source, rej.reason, rej.message, trade_payload(trade)))
                continue
            if not seen.is_new(tick.ts, key):
                self.repeats += 1
                continue
            seen.accept(tick.ts, key)
            ticks.append(tick)
        if dead:
            self.dead_letters += len(dead)
            self.dead(dead)
        if ticks:
            self.emit(ticks)
            self.emitted += len(ticks)
        if (room is not None and self.emitted >= self.settings.max_ticks) or (
            self.deadline is not None and self.now_ms() >= self.deadline
        ):
            self.stopped = True


async def record_trades(
    settings: RecordSettings,
    emit: Callable[[list[Tick]], None],
    dead: Callable[[list[DeadLetter]], None],
    now_ms: Callable[[], int],
    exchange: Any = None,
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    warn: Callable[[str], None] = _stderr_warning,
) -> int:
    """Record live trades until ``max_ticks``, ``duration_s`` or cancellation.

    Parameters
    ----------
    settings
        What to record.
    emit
        Called with each batch of new, valid ticks of one symbol.
    dead
        Called with each batch of dead letters (trades that failed the checks).
    now_ms
        The clock (epoch ms UTC): dead letters' ingest time and ``duration_s``.
    exchange
        A ready async ccxt exchange (``ccxt.pro`` or ``ccxt.async_support``);
        None makes one from ``settings``. It is closed on the way out.
    sleep
        Awaited between polls with the seconds to wait (tests pass a no-op).
    warn
        Takes one-line warnings (fallback to polling, network errors).

    Returns
    -------
    int
        The number of ticks passed to ``emit``. On cancellation the exchange is
        closed and ``CancelledError`` propagates.
    """
    recorder = TradeRecorder(settings, emit, dead, now_ms, exchange, sleep=sleep, warn=warn)
    return await recorder.run()


def record(
    settings: RecordSettings,
    emit: Callable[[list[Tick]], None],
    dead: Callable[[list[DeadLetter]], None],
    now_ms: Callable[[], int],
    *,
    exchange: Any = None,
) -> int:
    """Run :func:`record_trades` to its end or Ctrl-C; the number of ticks emitted."""
    recorder = TradeRecorder(settings, emit, dead, now_ms, exchange)
    try:
        return asyncio.run(recorder.run())
    except KeyboardInterrupt:
        return recorder.emitted
