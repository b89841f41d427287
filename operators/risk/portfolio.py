"""Cash, positions and PnL of one trading account, in event time.

Fills move cash and positions, marks move prices, ``advance(ts)`` moves the
clock. Nothing here reads the wall clock: a period (UTC day, ISO week starting
Monday, calendar month) begins when ``advance`` first sees a ts inside it, and
the equity at that moment (the last marks before ``ts``) is the period's
opening equity. Call ``advance(ts)`` before filling or marking at ``ts``.

>>> p = Portfolio(PortfolioSettings(initial_cash=1_000.0))
>>> p.advance(0)
>>> p.apply_fill(Fill(0, "o1", "X", BUY, 2.0, 100.0, 1.0, 0.0))   # the fee is realised at once
-1.0
>>> p.mark("X", 110.0)
>>> (p.cash, p.equity(), p.unrealised_pnl(), round(p.leverage(), 6))
(799.0, 1019.0, 20.0, 0.215898)
>>> p.apply_fill(Fill(1, "o2", "X", SELL, 3.0, 110.0, 0.0, 0.0))  # closes 2 (+20), opens 1 short
20.0
>>> (p.position("X"), p.value("X"), p.realised_pnl)
(-1.0, -110.0, 19.0)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.records import BUY, SELL, Fill
from schemas.settings import MAX_WINDOW, SettingsError, check_settings, setting

DAY_MS = 86_400_000
PERIODS = ("day", "week", "month")
FLAT_QTY = 1e-12
"""A position whose |qty| falls below this is removed."""


def period_keys(ts: int) -> tuple[int, int, int]:
    """(day, ISO week, month) indices of an epoch-ms ts, UTC.

    Days count from 1970-01-01; weeks start on Monday (1970-01-01 was a
    Thursday, so week 0 began on 1969-12-29); months are year * 12 + month - 1.

    >>> period_keys(0)
    (0, 0, 23640)
    >>> period_keys(4 * DAY_MS)          # Monday 1970-01-05
    (4, 1, 23640)
    >>> period_keys(31 * DAY_MS - 1)     # 1970-01-31T23:59:59.999Z
    (30, 4, 23640)
    """
    day = ts // DAY_MS
    when = datetime.fromtimestamp(day * 86_400, tz=UTC)
    return day, (day + 3) // 7, when.year * 12 + when.month - 1


@dataclass(frozen=True, slots=True)
class PortfolioSettings:
    """Parameters of :class:`Portfolio`.

    Parameters
    ----------
    initial_cash
        Starting cash in quote units, > 0 (fixed: a resumed run keeps the cash it has).
    sharpe_min_days
        Daily returns needed before :meth:`Portfolio.sharpe` has a value (>= 2).
    history_days
        Daily returns kept (>= sharpe_min_days).
    """

    initial_cash: float = setting(100_000.0, gt=0, fixed=True)
    sharpe_min_days: int = setting(30, ge=2)
    history_days: int = setting(365, ge=2, le=MAX_WINDOW, fixed=True)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.history_days < self.sharpe_min_days:
            raise SettingsError.of(self, "history_days", f">= sharpe_min_days ({self.sharpe_min_days})")


class Portfolio:
    """Cash, signed positions, average entry prices, marks and PnL.

    Long and short positions are supported: a sell beyond a long opens a
    short at the fill price. Realised PnL includes every fee (also the fees of
    opening fills), so ``equity() - initial_cash == realised_pnl +
    unrealised_pnl()``. A symbol without a mark is marked at its first fill
    price.

    Parameters
    ----------
    settings
        A :class:`PortfolioSettings`.
    """

    __slots__ = (
        "_keys",
        "_returns",
        "_sharpe_cache",
        "_starts",
        "avg_price",
        "cash",
        "marks",
        "peak_equity",
        "positions",
        "realised_pnl",
        "settings",
        "ts",
    )

    def __init__(self, settings: PortfolioSettings | None = None) -> None:
        self.settings = settings = settings or PortfolioSettings()
        self.cash = settings.initial_cash
        self.positions: dict[str, float] = {}
        self.avg_price: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        self.realised_pnl = 0.0
        self.peak_equity = settings.initial_cash
        self.ts: int | None = None
        self._keys: tuple[int, int, int] | None = None
        self._starts = [settings.initial_cash] * 3  # opening equity of day, week, month
        self._returns: deque[float] = deque(maxlen=settings.history_days)
        self._sharpe_cache: tuple[int, int, float | None] | None = None

    def copy(self) -> Portfolio:
        """An independent copy, for what-if checks (the copy's changes never reach this one)."""
        new = Portfolio.__new__(Portfolio)
        for name in self.__slots__:
            setattr(new, name, getattr(self, name))
        new.positions, new.avg_price, new.marks = dict(self.positions), dict(self.avg_price), dict(self.marks)
        new._starts = list(self._starts)
        new._returns = deque(self._returns, maxlen=self._returns.maxlen)
        return new

    # -- updates -------------------------------------------------------------------

    def apply_fill(self, fill: Fill) -> float:
        """Book a fill; returns the PnL it realised, its fee included."""
        if fill.side not in (BUY, SELL):
            msg = f"fill {fill.order_id}: side must be {BUY!r} or {SELL!r}, got {fill.side!r}"
            raise ValueError(msg)
        if not (fill.qty > 0 and fill.price > 0 and math.isfinite(fill.qty * fill.price + fill.fee)):
            msg = f"fill {fill.order_id}: qty and price must be finite and > 0, got {fill.qty}, {fill.price}"
            raise ValueError(msg)
        sym, price = fill.symbol, fill.price
        signed = fill.qty if fill.side == BUY else -fill.qty
        self.cash -= signed * price + fill.fee
        pos = self.positions.get(sym, 0.0)
        avg = self.avg_price.get(sym, 0.0)
        realised = -fill.fee
        if pos == 0.0 or (pos > 0) == (signed > 0):  # open or add
            new = pos + signed
            avg = (abs(pos) * avg + abs(signed) * price) / abs(new)
        else:  # reduce, close or flip
            closed = min(abs(pos), abs(signed))
            realised += closed * (price - avg) * (1.0 if pos > 0 else -1.0)
            new = pos + signed
            if abs(signed) > abs(pos):
                avg = price
        if abs(new) < FLAT_QTY:
            self.positions.pop(sym, None)
            self.avg_price.pop(sym, None)
        else:
            self.positions[sym] = new
            self.avg_price[sym] = avg
        self.marks.setdefault(sym, price)
        self.realised_pnl += realised
        self._update_peak()
        return realised

    def mark(self, symbol: str, price: float) -> None:
        """Set the latest price of ``symbol``."""
        self.marks[symbol] = price
        if symbol in self.positions:
            self._update_peak()

    def advance(self, ts: int) -> None:
        """Move the clock to ``ts`` (epoch ms); a ts earlier than the clock is ignored.

        On entering a new UTC day the finished day's return (equity now over
        its opening equity) joins the daily series; whole days skipped count
        as zero returns (the equity did not move while nothing was seen).
        """
        if self.ts is not None and ts <= self.ts:
            return
        self.ts = ts
        keys = period_keys(ts)
        old = self._keys
        self._keys = keys
        equity = self.equity()
        if old is None:
            self._starts = [equity] * 3
            return
        if keys[0] != old[0]:
            start = self._starts[0]
            self._returns.append(equity / start - 1.0 if start > 0 else 0.0)
            for _ in range(min(keys[0] - old[0] - 1, self.settings.history_days)):
                self._returns.append(0.0)
        for i in range(3):
            if keys[i] != old[i]:
                self._starts[i] = equity

    def _update_peak(self) -> None:
        equity = self.equity()
        if equity > self.peak_equity:
            self.peak_equity = equity

    # -- queries -------------------------------------------------------------------

    def equity(self) -> float:
        """Cash plus the marked value of every position."""
        marks = self.marks
        return self.cash + sum(q * marks[s] for s, q in self.positions.items())

    def position(self, symbol: str) -> float:
        """Signed quantity held (0.0 when flat)."""
        return self.positions.get(symbol, 0.0)

    def value(self, symbol: str) -> float:
        """Signed marked value of the position (0.0 when flat)."""
        q = self.positions.get(symbol)
        return 0.0 if q is None else q * self.marks[symbol]

    def gross_exposure(self) -> float:
        """Sum of |value| over positions."""
        return sum(abs(self.value(s)) for s in self.positions)

    def net_exposure(self) -> float:
        """Sum of signed values over positions."""
        return sum(self.value(s) for s in self.positions)

    def leverage(self) -> float:
        """Gross exposure over equity; inf when equity <= 0 with positions, 0.0 when flat."""
        gross = self.gross_exposure()
        if gross == 0.0:
            return 0.0
        equity = self.equity()
        return gross / equity if equity > 0 else math.inf

    def weights(self) -> dict[str, float]:
        """Signed value over equity per held symbol (±inf when equity <= 0)."""
        equity = self.equity()
        if equity > 0:
            return {s: self.value(s) / equity for s in self.positions}
        return {s: math.copysign(math.inf, q) for s, q in self.positions.items()}

    def unrealised_pnl(self) -> float:
        """Sum of qty * (mark - average entry price) over positions."""
        return sum(q * (self.marks[s] - self.avg_price[s]) for s, q in self.positions.items())

    def rebase(self) -> None:
        """Measure drawdown and period PnL from now on (an operator resumed after a kill switch)."""
        equity = self.equity()
        self.peak_equity = equity
        self._starts = [equity] * 3

    def drawdown(self) -> float:
        """1 - equity / peak equity, >= 0 (1.0 or more once equity <= 0)."""
        return max(0.0, 1.0 - self.equity() / self.peak_equity)

    def period_pnl(self, period: str) -> float:
        """PnL since the start of the current ``day``, ``week`` or ``month``, as a
        fraction of the equity at that start (negative = loss).

        Before the first ``advance`` the start is the initial cash. With a
        start equity <= 0 the change is divided by its absolute value (0.0 if
        the start is exactly 0).
        """
        try:
            start = self._starts[PERIODS.index(period)]
        except ValueError:
            msg = f"period must be one of {PERIODS}, got {period!r}"
            raise ValueError(msg) from None
        return 0.0 if start == 0 else (self.equity() - start) / abs(start)

    def daily_returns(self) -> list[float]:
        """The finished days' returns, oldest first (at most ``history_days``)."""
        return list(self._returns)

    def sharpe(self, days: int = 30) -> float | None:
        """Sharpe ratio of the last ``days`` daily returns, annualised by sqrt(365).

        mean / sample std (ddof=1) * sqrt(365), risk-free rate 0. None while
        fewer than ``sharpe_min_days`` daily returns exist, and None when the
        returns have zero spread (undefined), never 0 for "not known".
        """
        if not 2 <= days <= self.settings.history_days:
            msg = f"days must be in [2, {self.settings.history_days}], got {days}"
            raise ValueError(msg)
        n_total = len(self._returns)
        stamp = (days, self._keys[0] if self._keys else 0)
        cache = self._sharpe_cache
        if cache is not None and cache[:2] == stamp:
            return cache[2]
        result = None
        if n_total >= self.settings.sharpe_min_days:
            xs = list(self._returns)[-days:]
            n = len(xs)
            mean = math.fsum(xs) / n
            var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
            if var > 0:
                result = mean / math.sqrt(var) * math.sqrt(365.0)
        self._sharpe_cache = (*stamp, result)
        return result
