"""The volume printed per symbol per time slice, as the execution service sees it in the ticks.

The service has no bars: it sums the quantity of the ticks it reads per
symbol over a grid of slices (``[k * slice_ms, (k + 1) * slice_ms)`` in the
ticks' own time) and keeps the last ``slices`` closed ones. Its value, the
mean volume per closed slice, is the cost model's ``V`` (the impact term of
the expected slippage); None until a slice of the symbol has closed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from schemas.settings import check_settings, setting


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedVolumeSettings:
    """Slices of :class:`ObservedVolume` (keyword-only).

    Parameters
    ----------
    slice_ms
        Length of a slice (the service uses the cost model's bar, ``execution.bar_interval_ms``).
    slices
        Closed slices in the mean (the cost model's ``recent_volume_bars``).
    """

    slice_ms: int = setting(1_000, gt=0)
    slices: int = setting(20, ge=1)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class _SymbolVolume:
    index: int
    current: float
    closed: deque


class ObservedVolume:
    """Mean volume per slice of each symbol, from its ticks (ts, qty); None until a slice closed.

    A tick later than its symbol's current slice closes it (and counts the
    empty slices in between as 0, at most ``slices`` of them); a tick of an
    earlier slice (late) counts in the current one. A quantity that is not
    finite and > 0 counts as 0.

    >>> v = ObservedVolume(ObservedVolumeSettings(slice_ms=1_000, slices=2))
    >>> v.update("A/B", 100, 3.0), v.update("A/B", 900, 1.0)
    (None, None)
    >>> v.update("A/B", 1_000, 5.0)  # slice 0 closed with 4
    4.0
    >>> v.update("A/B", 3_500, 1.0)  # slice 1 closed with 5, slice 2 empty: mean of (5, 0)
    2.5
    >>> v.get("A/B"), v.get("C/D")
    (2.5, None)
    """

    __slots__ = ("_symbols", "settings")

    def __init__(self, settings: ObservedVolumeSettings | None = None) -> None:
        self.settings = settings or ObservedVolumeSettings()
        self._symbols: dict[str, _SymbolVolume] = {}

    def update(self, symbol: str, ts: int, qty: float) -> float | None:
        """One tick of ``symbol``; the symbol's mean volume per closed slice after it."""
        q = float(qty) if isinstance(qty, int | float) and math.isfinite(qty) and qty > 0 else 0.0
        index = int(ts) // self.settings.slice_ms
        s = self._symbols.get(symbol)
        if s is None:
            self._symbols[symbol] = _SymbolVolume(index, q, deque(maxlen=self.settings.slices))
            return None
        if index > s.index:
            s.closed.append(s.current)
            for _ in range(min(index - s.index - 1, self.settings.slices)):
                s.closed.append(0.0)
            s.index, s.current = index, q
        else:
            s.current += q
        return self.get(symbol)

    def get(self, symbol: str) -> float | None:
        """Mean volume per closed slice of ``symbol`` (None before its first slice closed)."""
        s = self._symbols.get(symbol)
        if s is None or not s.closed:
            return None
        return sum(s.closed) / len(s.closed)
