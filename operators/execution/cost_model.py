"""The paper venue's cost model: fees, spread, volatility slippage and market impact, in bps.

``nv`` is the normalised volatility, ``V`` the recent volume per bar: taker
slippage ``s = spread_bps * (1 + vol_slippage_coef * nv) + impact`` with
``impact = impact_coef_bps * sqrt(qty / V)`` when ``qty > impact_volume_share * V``
else 0 (so it starts at 1 bp by default); a taker fill at reference ``p`` is at
``p * (1 + s / BP)`` (buy) or ``p * (1 - s / BP)`` (sell), fee
``taker_fee_bps / BP * qty * price``; a resting limit fills at its limit, fee
``maker_fee_bps / BP * qty * price``, no slippage. Before an order is sent,
:func:`taker_cost_bps` is what such a market order is expected to cost in
all: the taker fee plus the slippage of that size (the trading loop's cost
gate weighs it against the trade's expected edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.settings import check_settings, setting

BP = 10_000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """Parameters of :class:`PaperBroker` (keyword-only).

    Parameters
    ----------
    bar_interval_ms
        Bar length in ms (required, > 0); dates the path points.
    taker_fee_bps, maker_fee_bps
        Fees on the fill's notional.
    spread_bps
        Spread proxy: the cost of crossing against the reference price.
    vol_slippage_coef
        k in ``spread_bps * (1 + k * normalised_vol)``.
    impact_coef_bps, impact_volume_share
        ``impact_coef_bps * sqrt(qty / V)`` when ``qty > impact_volume_share * V``.
    twap_threshold
        Market orders whose notional (qty x the symbol's last close) exceeds
        this many quote units are worked as TWAP children (``inf``: never).
    participation
        A TWAP child is at most this share of the volume of the bar it fills in.
    twap_max_slippage_bps
        A TWAP child whose slippage would exceed this is cancelled.
    recent_volume_bars
        Bars in the broker's own rolling mean of volume per symbol.

    >>> BrokerSettings(bar_interval_ms=0)
    Traceback (most recent call last):
    ...
    schemas.settings.SettingsError: BrokerSettings.bar_interval_ms must be an int > 0, got 0
    """

    bar_interval_ms: int = setting(gt=0, fixed=True)
    taker_fee_bps: float = setting(10.0, ge=0)
    maker_fee_bps: float = setting(2.0, ge=0)
    spread_bps: float = setting(2.0, ge=0)
    vol_slippage_coef: float = setting(0.5, ge=0)
    impact_coef_bps: float = setting(10.0, ge=0)
    impact_volume_share: float = setting(0.01, ge=0)
    twap_threshold: float = setting(50_000.0, gt=0, allow_inf=True)  # math.inf disables TWAP
    participation: float = setting(0.10, gt=0, le=1)
    twap_max_slippage_bps: float = setting(15.0, ge=0)
    recent_volume_bars: int = setting(20, ge=1, fixed=True)

    def __post_init__(self) -> None:
        check_settings(self)


def impact_bps(settings: BrokerSettings, qty: float, recent_volume: float) -> float:
    """Market-impact term in bps: ``coef * sqrt(qty / V)`` above the volume share, else 0.

    >>> s = BrokerSettings(bar_interval_ms=1)
    >>> impact_bps(s, 4.0, 100.0), impact_bps(s, 1.0, 100.0)
    (2.0, 0.0)
    """
    if recent_volume <= 0 or qty <= settings.impact_volume_share * recent_volume:
        return 0.0
    return settings.impact_coef_bps * math.sqrt(qty / recent_volume)


def taker_slippage_bps(
    settings: BrokerSettings, qty: float, normalised_vol: float, recent_volume: float
) -> float:
    """Taker slippage in bps: spread proxy scaled by volatility, plus impact.

    >>> s = BrokerSettings(bar_interval_ms=1)
    >>> taker_slippage_bps(s, 4.0, 2.0, 100.0)
    6.0
    """
    spread = settings.spread_bps * (1.0 + settings.vol_slippage_coef * normalised_vol)
    return spread + impact_bps(settings, qty, recent_volume)


def effective_vol(normalised_vol: float) -> float:
    """The normalised volatility the cost model uses: 1.0 when not finite (unknown), at least 0.

    >>> effective_vol(float("nan")), effective_vol(-0.5), effective_vol(1.5)
    (1.0, 0.0, 1.5)
    """
    return 1.0 if not math.isfinite(normalised_vol) else max(normalised_vol, 0.0)


def taker_cost_bps(
    settings: BrokerSettings, qty: float, price: float, normalised_vol: float, recent_volume: float
) -> float:
    """Expected cost of a market order before it fills, in bps of its notional: taker fee plus slippage.

    The slippage is :func:`taker_slippage_bps` of the size the venue fills at
    once: the whole ``qty``, or for an order worked as TWAP (notional
    ``qty * price`` above ``twap_threshold``) one child of at most
    ``participation * recent_volume``, since each child pays the impact of
    its own size. ``normalised_vol`` goes through :func:`effective_vol`.

    Parameters
    ----------
    settings
        The venue's cost model.
    qty
        The order's size (base units, > 0).
    price
        The reference price (the last close).
    normalised_vol
        The symbol's volatility over its reference volatility.
    recent_volume
        Mean volume per bar V.

    >>> s = BrokerSettings(bar_interval_ms=1)
    >>> taker_cost_bps(s, 4.0, 100.0, 2.0, 100.0)    # 10 fee + 2 x (1 + 0.5 x 2) + 10 x sqrt(0.04)
    16.0
    >>> round(taker_cost_bps(s, 1_000.0, 100.0, 1.0, 1_000.0), 6)  # TWAP: children of 100, 10 x sqrt(0.1)
    16.162278
    """
    child = qty
    if qty * price > settings.twap_threshold and recent_volume > 0:
        child = min(qty, settings.participation * recent_volume)
    return settings.taker_fee_bps + taker_slippage_bps(
        settings, child, effective_vol(normalised_vol), recent_volume
    )
