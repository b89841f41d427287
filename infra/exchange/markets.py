"""The local exchange's spot markets: symbols, their Binance filters, and the filter checks of an order.

A market is a ccxt-unified ``BASE/QUOTE`` symbol (Binance id ``BASEQUOTE``) with
the three filters ccxt's ``binance.load_markets`` reads for precision and limits:
``PRICE_FILTER`` (tick size), ``LOT_SIZE`` (step size, min and max quantity) and
``NOTIONAL`` (minimum price x quantity, applied to market orders at the last
price). Checks run on :class:`~decimal.Decimal` values, as the request's
decimal strings were written, so a quantity of ``0.3`` on a step of ``0.1`` is
on the grid.

>>> spec = MarketSpec.parse("DOGE/USDT:tick=0.00001,step=1,min_qty=1,min_notional=1")
>>> spec.market_id, spec.base, spec.quote, spec.tick_size, spec.step_size
('DOGEUSDT', 'DOGE', 'USDT', 1e-05, 1.0)
>>> filter_failure(spec, Decimal("10"), Decimal("0.12345"), None, None)
>>> filter_failure(spec, Decimal("10.5"), Decimal("0.12345"), None, None)
'LOT_SIZE'
>>> filter_failure(spec, Decimal("5"), None, None, Decimal("0.123456"))
'NOTIONAL'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from schemas.settings import SettingsError, check_settings, setting

PRECISION = 8
"""Decimals of every asset: Binance's amounts are strings with 8 decimals."""
_ASSET = re.compile(r"[A-Z0-9]{1,20}")
_KEYS = {
    "tick": "tick_size",
    "step": "step_size",
    "min_qty": "min_qty",
    "max_qty": "max_qty",
    "min_notional": "min_notional",
    "max_price": "max_price",
}
ORDER_TYPES = (
    "LIMIT",
    "LIMIT_MAKER",
    "MARKET",
    "STOP_LOSS",
    "STOP_LOSS_LIMIT",
    "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
)
"""The spot order types every market takes (its ``orderTypes``)."""


def dec(x: float) -> Decimal:
    """A float as the decimal its shortest repr writes: ``dec(0.1) == Decimal("0.1")``."""
    return Decimal(repr(x))


def amount(x: float) -> str:
    """A quantity, price or balance as Binance writes it: 8 decimals.

    >>> amount(0.1), amount(61234.5), amount(1e-9)
    ('0.10000000', '61234.50000000', '0.00000000')
    """
    return f"{x:.{PRECISION}f}"


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """One spot market and its filters.

    Parameters
    ----------
    symbol
        ccxt-unified ``BASE/QUOTE``, both of ``A-Z0-9``.
    tick_size
        ``PRICE_FILTER``: prices are multiples of it, from ``tick_size`` to ``max_price``.
    step_size, min_qty, max_qty
        ``LOT_SIZE``: quantities are ``min_qty`` plus a multiple of ``step_size``, up to ``max_qty``.
    min_notional
        ``NOTIONAL``: price x quantity at least this (market orders: at the last price).
    max_price
        ``PRICE_FILTER``'s ``maxPrice``.

    >>> MarketSpec("BTC/USDT", tick_size=0.0)
    Traceback (most recent call last):
    ...
    schemas.settings.SettingsError: MarketSpec.tick_size must be a finite number >= 1e-08, got 0.0
    >>> MarketSpec("BTCUSDT")
    Traceback (most recent call last):
    ...
    schemas.settings.SettingsError: MarketSpec.symbol must be BASE/QUOTE of A-Z and 0-9, got 'BTCUSDT'
    """

    symbol: str = setting()
    tick_size: float = setting(0.01, ge=1e-8)
    step_size: float = setting(0.00001, ge=1e-8)
    min_qty: float = setting(0.00001, ge=1e-8)
    max_qty: float = setting(9000.0, gt=0)
    min_notional: float = setting(5.0, ge=0)
    max_price: float = setting(1_000_000.0, gt=0)

    def __post_init__(self) -> None:
        check_settings(self)
        parts = self.symbol.split("/")
        if len(parts) != 2 or not all(_ASSET.fullmatch(p) for p in parts) or parts[0] == parts[1]:
            raise SettingsError.of(self, "symbol", "BASE/QUOTE of A-Z and 0-9")
        if self.min_qty > self.max_qty:
            raise SettingsError.of(self, "min_qty", f"<= max_qty ({self.max_qty})")
        if self.tick_size > self.max_price:
            raise SettingsError.of(self, "tick_size", f"<= max_price ({self.max_price})")

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]

    @property
    def market_id(self) -> str:
        """Binance's symbol: ``BTCUSDT``."""
        return self.base + self.quote

    @classmethod
    def parse(cls, text: str) -> MarketSpec:
        """``BASE/QUOTE`` or ``BASE/QUOTE:key=value,...`` with keys tick, step, min_qty, max_qty,
        min_notional, max_price (the rest keep their defaults).

        >>> MarketSpec.parse("ETH/USDT:tick=0.1").tick_size
        0.1
        >>> MarketSpec.parse("ETH/USDT:lot=1")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: market ETH/USDT: unknown key 'lot' (keys: tick, step, min_qty, max_qty, ...)
        """
        symbol, _, rest = text.strip().partition(":")
        values: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if key.strip() not in _KEYS:
                msg = f"market {symbol}: unknown key {key.strip()!r} (keys: {', '.join(_KEYS)})"
                raise ValueError(msg)
            try:
                values[_KEYS[key.strip()]] = float(value) if eq else float("nan")
            except ValueError:
                msg = f"market {symbol}: {key.strip()} must be a number, got {value!r}"
                raise ValueError(msg) from None
        return cls(symbol.strip(), **values)

    def filters(self) -> list[dict]:
        """The market's ``filters`` in ``exchangeInfo``."""
        return [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": amount(self.tick_size),
                "maxPrice": amount(self.max_price),
                "tickSize": amount(self.tick_size),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": amount(self.min_qty),
                "maxQty": amount(self.max_qty),
                "stepSize": amount(self.step_size),
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": amount(self.min_notional),
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 0,
            },
        ]

    def info(self) -> dict:
        """The market's entry in ``exchangeInfo.symbols``."""
        return {
            "symbol": self.market_id,
            "status": "TRADING",
            "baseAsset": self.base,
            "baseAssetPrecision": PRECISION,
            "quoteAsset": self.quote,
            "quotePrecision": PRECISION,
            "quoteAssetPrecision": PRECISION,
            "baseCommissionPrecision": PRECISION,
            "quoteCommissionPrecision": PRECISION,
            "orderTypes": list(ORDER_TYPES),
            "icebergAllowed": False,
            "ocoAllowed": False,
            "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": False,
            "cancelReplaceAllowed": False,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": self.filters(),
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "NONE",
            "allowedSelfTradePreventionModes": ["NONE"],
        }


def on_grid(x: Decimal, start: Decimal, step: Decimal) -> bool:
    """Whether ``x`` is ``start`` plus a whole number of ``step``."""
    return (x - start) % step == 0


def price_ok(spec: MarketSpec, price: Decimal) -> bool:
    """``PRICE_FILTER``: within [tick, max_price] and on the tick grid."""
    tick = dec(spec.tick_size)
    return tick <= price <= dec(spec.max_price) and on_grid(price, tick, tick)


def qty_ok(spec: MarketSpec, qty: Decimal) -> bool:
    """``LOT_SIZE``: within [min_qty, max_qty] and on the step grid from min_qty."""
    low = dec(spec.min_qty)
    return low <= qty <= dec(spec.max_qty) and on_grid(qty, low, dec(spec.step_size))


def filter_failure(
    spec: MarketSpec, qty: Decimal, price: Decimal | None, stop_price: Decimal | None, last: Decimal | None
) -> str | None:
    """The first filter an order fails, as Binance names it in ``Filter failure: NAME``; None when it
    passes. ``price`` and ``stop_price`` (when given) must be on the tick grid; the notional is
    priced at the limit, else the stop, else ``last`` (a market order; unchecked without one)."""
    if any(p is not None and not price_ok(spec, p) for p in (price, stop_price)):
        return "PRICE_FILTER"
    if not qty_ok(spec, qty):
        return "LOT_SIZE"
    ref = next((p for p in (price, stop_price, last) if p is not None), None)
    if ref is not None and qty * ref < dec(spec.min_notional):
        return "NOTIONAL"
    return None


def floor_to_step(spec: MarketSpec, qty: float) -> Decimal:
    """The largest quantity on the ``LOT_SIZE`` grid at or below ``qty`` (may be below ``min_qty``).

    >>> floor_to_step(MarketSpec("BTC/USDT", step_size=0.001, min_qty=0.001), 0.0123456)
    Decimal('0.012')
    """
    step, low = dec(spec.step_size), dec(spec.min_qty)
    x = Decimal(repr(qty))
    if x < low:
        return (x // step) * step
    return low + ((x - low) // step) * step


def price_to_tick(spec: MarketSpec, price: float, up: bool) -> float:
    """``price`` rounded to the tick grid, up (a buyer's taker price) or down (a seller's), at least one tick.

    >>> spec = MarketSpec("BTC/USDT", tick_size=0.5)
    >>> price_to_tick(spec, 100.2, up=True), price_to_tick(spec, 100.2, up=False)
    (100.5, 100.0)
    >>> price_to_tick(MarketSpec("BTC/USDT"), 100 * 1.0013, up=True)
    100.13
    """
    tick = dec(spec.tick_size)
    units = (Decimal(repr(price)) / tick).quantize(Decimal("1e-6"))  # 100.13000000000001 is 100.13
    whole = units.to_integral_value(rounding="ROUND_CEILING" if up else "ROUND_FLOOR")
    return float(max(whole, Decimal(1)) * tick)
