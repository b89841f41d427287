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

BP = 10_000.0


_NON_NEGATIVE = ("taker_fee_bps", "maker_fee_bps", "spread_bps", "vol_slippage_coef", "impact_coef_bps")
_NON_NEGATIVE += ("impact_volume_share", "twap_max_slippage_bps")


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
        this many quote units are worked as TWAP children.
    participation
        A TWAP child is at most this share of the volume of the bar it fills in.
    twap_max_slippage_bps
        A TWAP child whose slippage would exceed this is cancelled.
    recent_volume_bars
        Bars in the broker's own rolling mean of volume per symbol.

    >>> BrokerSettings(bar_interval_ms=0)
    Traceback (most recent call last):
    ...
    ValueError: bar_interval_ms must be a positive int, got 0
    """

    bar_interval_ms: int
    taker_fee_bps: float = 10.0
    maker_fee_bps: float = 2.0
    spread_bps: float = 2.0
    vol_slippage_coef: float = 0.5
    impact_coef_bps: float = 10.0
    impact_volume_share: float = 0.01
    twap_threshold: float = 50_000.0
    participation: float = 0.10
    twap_max_slippage_bps: float = 15.0
    recent_volume_bars: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.bar_interval_ms, int) or self.bar_interval_ms <= 0:
            msg = f"bar_interval_ms must be a positive int, got {self.bar_interval_ms!r}"
            raise ValueError(msg)
        for name in _NON_NEGATIVE:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                msg = f"{name} must be finite and >= 0, got {value!r}"
                raise ValueError(msg)
        if not self.twap_threshold > 0:  # math.inf disables TWAP
            msg = f"twap_threshold must be > 0, got {self.twap_threshold!r}"
            raise ValueError(msg)
        if not 0 < self.participation <= 1:
            msg = f"participation must be in (0, 1], got {self.participation!r}"
            raise ValueError(msg)
        if self.recent_volume_bars < 1:
            msg = f"recent_volume_bars must be >= 1, got {self.recent_volume_bars!r}"
            raise ValueError(msg)


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
