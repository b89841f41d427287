"""Execution quality: each fill's realised slippage against what the cost model expected.

:func:`execution_quality` makes a fill's row of the ``execution_quality``
table; :class:`SlippageMonitor` watches a rolling window of them and reports
when realised slippage runs above ``ratio`` times the expected one (2x by
default), once per breach, with hysteresis.

>>> [round(realised_slippage_bps(side, 100.0, 100.05), 9) for side in ("buy", "sell")]
[5.0, -5.0]
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from schemas.records import BUY, ExecutionQuality, Fill, RiskEvent
from schemas.settings import MAX_WINDOW, SettingsError, check_settings, setting

BP = 10_000.0


def realised_slippage_bps(side: str, reference_price: float, fill_price: float) -> float:
    """Fill price against the reference in bps, positive when it cost us (a buy above, a sell below)."""
    sign = 1.0 if side == BUY else -1.0
    return sign * (fill_price / reference_price - 1.0) * BP


def execution_quality(fill: Fill, reference_price: float, expected_slippage_bps: float) -> ExecutionQuality:
    """The ``execution_quality`` row of ``fill``, sent when the last trade was ``reference_price``.

    >>> fill = Fill(5, "o1", "BTC/USDT", "sell", 0.5, 99.97, 0.05, 3.0)
    >>> row = execution_quality(fill, 100.0, 3.0)
    >>> row.order_id, round(row.realised_slippage_bps, 6)
    ('o1', 3.0)
    """
    return ExecutionQuality(
        fill.ts,
        fill.order_id,
        fill.symbol,
        fill.side,
        fill.qty,
        expected_slippage_bps,
        realised_slippage_bps(fill.side, reference_price, fill.price),
        reference_price,
        fill.price,
    )


@dataclass(frozen=True, slots=True)
class SlippageSettings:
    """Parameters of :class:`SlippageMonitor`.

    Parameters
    ----------
    window
        Fills in the rolling window.
    min_fills
        Fills needed before the monitor judges (<= ``window``).
    ratio
        Breach when mean realised > ``ratio`` x mean expected over the window.
    clear_ratio
        A breach clears when mean realised <= ``clear_ratio`` x mean expected
        (< ``ratio``: the hysteresis).
    floor_bps
        Mean expected slippage below this counts as this (fills of resting
        limit orders expect 0 bps, and any slippage is not 2x of 0).
    """

    window: int = setting(50, ge=1, le=MAX_WINDOW, fixed=True)
    min_fills: int = setting(10, ge=1)
    ratio: float = setting(2.0, gt=0)
    clear_ratio: float = setting(1.5, gt=0)
    floor_bps: float = setting(1.0, gt=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.min_fills > self.window:
            raise SettingsError.of(self, "min_fills", f"<= window ({self.window})")
        if self.clear_ratio >= self.ratio:
            raise SettingsError.of(self, "clear_ratio", f"< ratio ({self.ratio})")


@dataclass(frozen=True, slots=True)
class SlippageChange:
    """The monitor entered (``breached``) or left a breach.

    Parameters
    ----------
    ts
        The ts of the fill that changed it.
    breached
        True on entering a breach, False on clearing it.
    realised_bps, expected_bps
        Mean realised and expected slippage over the window.
    threshold_bps
        What the realised mean was compared with (``ratio`` or
        ``clear_ratio`` x max(expected mean, ``floor_bps``)).
    fills
        Fills in the window.
    """

    ts: int
    breached: bool
    realised_bps: float
    expected_bps: float
    threshold_bps: float
    fills: int

    def risk_event(self, symbol: str = "") -> RiskEvent:
        """The ``slippage`` risk event of this change (level 2 on a breach, 0 when cleared)."""
        if self.breached:
            message = (
                f"realised slippage {self.realised_bps:.2f} bps > {self.threshold_bps:.2f} bps "
                f"(expected {self.expected_bps:.2f} bps) over the last {self.fills} fills"
            )
            return RiskEvent(
                self.ts, "slippage", 2, symbol, self.realised_bps, self.threshold_bps, "alert", message
            )
        message = f"realised slippage {self.realised_bps:.2f} bps back under {self.threshold_bps:.2f} bps"
        return RiskEvent(
            self.ts, "slippage", 0, symbol, self.realised_bps, self.threshold_bps, "clear", message
        )


class SlippageMonitor:
    """Rolling means of expected and realised slippage; reports breaches once, with hysteresis.

    Parameters
    ----------
    settings
        Window, ratios and floor.

    Running sums, recomputed from the window every ``window`` updates (no
    drift over long streams). Non-finite inputs are ignored.

    >>> mon = SlippageMonitor(SlippageSettings(window=4, min_fills=2))
    >>> mon.update(1, 3.0, 4.0) is None, mon.get() is None  # one fill: not judged
    (True, True)
    >>> mon.update(2, 3.0, 9.0)  # mean realised 6.5 > 2 x 3
    SlippageChange(ts=2, breached=True, realised_bps=6.5, expected_bps=3.0, threshold_bps=6.0, fills=2)
    >>> mon.update(3, 3.0, 4.0) is None  # still in breach: said once
    True
    >>> mon.update(4, 3.0, -6.0).breached  # mean 2.75 <= 1.5 x 3
    False
    """

    __slots__ = ("_n_since", "_pairs", "_sum_exp", "_sum_real", "breached", "settings")

    def __init__(self, settings: SlippageSettings | None = None) -> None:
        self.settings = settings or SlippageSettings()
        self._pairs: deque[tuple[float, float]] = deque()
        self._sum_exp = 0.0
        self._sum_real = 0.0
        self._n_since = 0
        self.breached = False

    def update(self, ts: int, expected_bps: float, realised_bps: float) -> SlippageChange | None:
        """Add one fill's (expected, realised) slippage; a change when a breach starts or clears."""
        if not (math.isfinite(expected_bps) and math.isfinite(realised_bps)):
            return None
        s = self.settings
        pairs = self._pairs
        pairs.append((expected_bps, realised_bps))
        self._sum_exp += expected_bps
        self._sum_real += realised_bps
        if len(pairs) > s.window:
            e, r = pairs.popleft()
            self._sum_exp -= e
            self._sum_real -= r
        self._n_since += 1
        if self._n_since >= s.window:
            self._sum_exp = math.fsum(e for e, _ in pairs)
            self._sum_real = math.fsum(r for _, r in pairs)
            self._n_since = 0
        means = self.get()
        if means is None:
            return None
        expected, realised = means
        base = max(expected, s.floor_bps)
        if not self.breached and realised > s.ratio * base:
            self.breached = True
            return SlippageChange(ts, True, realised, expected, s.ratio * base, len(pairs))
        if self.breached and realised <= s.clear_ratio * base:
            self.breached = False
            return SlippageChange(ts, False, realised, expected, s.clear_ratio * base, len(pairs))
        return None

    def get(self) -> tuple[float, float] | None:
        """(mean expected, mean realised) over the window, None before ``min_fills`` fills."""
        n = len(self._pairs)
        if n < self.settings.min_fills:
            return None
        return self._sum_exp / n, self._sum_real / n
