"""Historical VaR and Expected Shortfall over a sliding window.

The window is kept sorted (binary search to insert and remove), so the
alpha-quantile is read by position. ``Q`` is numpy's default linear
interpolation: h = (n - 1) * alpha, Q = x[j] + (h - j) * (x[j+1] - x[j]).

>>> rt = RollingTail(5, alpha=0.25)
>>> for x in [0.03, -0.01, 0.02, -0.04, 0.0]:
...     rt.update(x)
>>> [round(v, 12) for v in rt.get()]   # Q = -0.01; tail = (-0.04, -0.01)
[0.01, 0.025]
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import deque


class RollingTail:
    """VaR = -Q(X, alpha) and ES = -mean(x <= Q) of the last ``window`` values.

    Parameters
    ----------
    window
        Number of values, >= 2.
    alpha
        Tail probability in (0, 1), 0.05 for the 95% level.
    """

    __slots__ = ("_fifo", "_frac", "_j", "_sorted", "alpha", "window")

    def __init__(self, window: int, alpha: float = 0.05) -> None:
        if window < 2:
            msg = f"window must be >= 2, got {window}"
            raise ValueError(msg)
        if not 0.0 < alpha < 1.0:
            msg = f"alpha must be in (0, 1), got {alpha}"
            raise ValueError(msg)
        self.window = window
        self.alpha = alpha
        h = (window - 1) * alpha
        self._j = int(h)
        self._frac = h - self._j
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []

    def update(self, x: float) -> None:
        if len(self._fifo) == self.window:
            old = self._fifo.popleft()
            del self._sorted[bisect_left(self._sorted, old)]
        self._fifo.append(x)
        insort(self._sorted, x)

    def quantile(self) -> float | None:
        """Q(X, alpha) once the window is full, else None."""
        if len(self._fifo) < self.window:
            return None
        s, j = self._sorted, self._j
        lo = s[j]
        if j + 1 >= len(s):
            return lo
        # numpy's lerp: exact at the ends of [lo, hi]
        hi = s[j + 1]
        diff = hi - lo
        if self._frac >= 0.5:
            return hi - diff * (1.0 - self._frac)
        return lo + diff * self._frac

    def get(self) -> tuple[float, float] | None:
        """(VaR, ES) once the window is full, else None."""
        q = self.quantile()
        if q is None:
            return None
        s = self._sorted
        m = bisect_right(s, q)
        tail = s[:m]
        return -q, -(sum(tail) / m)
