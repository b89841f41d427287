"""The paper venue's cost model: fees, spread, volatility slippage and market impact, in bps.

``nv`` is the normalised volatility, ``V`` the recent volume per bar: taker
slippage ``s = spread_bps * (1 + vol_slippage_coef * nv) + impact`` with
``impact = impact_coef_bps * sqrt(qty / V)`` when ``qty > impact_volume_share * V``
else 0 (so it starts at 1 bp by default); a taker fill at reference ``p`` is at
``p * (1 + s / BP)`` (buy) or ``p * (1 - s / BP)`` (sell), fee
``taker_fee_bps / BP * qty * price``; a resting limit fills at its limit, fee
``maker_fee_bps / BP * qty * price``, no slippage.
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
