"""Sample variance over a sliding window, updated in O(1).

Welford's add and remove steps keep the mean and the sum of squared
deviations. Both are recomputed from the window every ``window`` updates, so
float error cannot build up over long streams, and also as soon as the sum
falls below 1e-3 of its peak since the last recomputation (a large value
leaving the window), where the running sum would have lost its digits.

>>> rv = RollingVariance(3)
>>> for x in [1.0, 2.0, 4.0, 8.0]:
...     rv.update(x)
>>> round(rv.get(), 12)   # var of (2, 4, 8)
9.333333333333
"""

from __future__ import annotations

import math
from collections import deque

CANCELLATION = 1e-3
"""Recompute when the running sum drops below this share of its peak."""


class RollingVariance:
    """Sample variance (ddof=1) of the last ``window`` values.

    Parameters
    ----------
    window
        Number of values, >= 2.
    """

    __slots__ = ("_buf", "_m2", "_mean", "_peak", "_since", "window")

    def __init__(self, window: int) -> None:
        if window < 2:
            msg = f"window must be >= 2, got {window}"
            raise ValueError(msg)
        self.window = window
        self._buf: deque[float] = deque()
        self._mean = 0.0
        self._m2 = 0.0
        self._peak = 0.0
        self._since = 0

    def update(self, x: float) -> None:
        buf = self._buf
        if len(buf) == self.window:
            old = buf.popleft()
            n = len(buf)
            if n == 0:
                self._mean = self._m2 = 0.0
            else:
                mean = self._mean
                new_mean = mean - (old - mean) / n
                self._m2 -= (old - new_mean) * (old - mean)
                self._mean = new_mean
        buf.append(x)
        n = len(buf)
        delta = x - self._mean
        self._mean += delta / n
        self._m2 += delta * (x - self._mean)
        self._since += 1
        m2 = self._m2
        if m2 > self._peak:
            self._peak = m2
        if self._since >= self.window or m2 < self._peak * CANCELLATION:
            self._refresh()

    def _refresh(self) -> None:
        n = len(self._buf)
        mean = math.fsum(self._buf) / n
        self._mean = mean
        self._m2 = self._peak = math.fsum((v - mean) ** 2 for v in self._buf)
        self._since = 0

    def get(self) -> float | None:
        """The variance once the window is full, else None."""
        if len(self._buf) < self.window:
            return None
        return max(self._m2, 0.0) / (self.window - 1)

    def std(self) -> float | None:
        """The standard deviation once the window is full, else None."""
        var = self.get()
        return None if var is None else math.sqrt(var)

    # -- partial windows (strategies' rolling statistics start before the window fills)

    @property
    def n(self) -> int:
        """How many values the window holds."""
        return len(self._buf)

    def mean(self) -> float | None:
        """The mean of the values held, None when empty."""
        return self._mean if self._buf else None

    def var(self) -> float | None:
        """The sample variance of the values held (full or not), None below two values.

        >>> rv = RollingVariance(5)
        >>> for x in [1.0, 2.0, 4.0]:
        ...     rv.update(x)
        >>> rv.n, round(rv.mean(), 12), round(rv.var(), 12), rv.get()
        (3, 2.333333333333, 2.333333333333, None)
        """
        n = len(self._buf)
        return None if n < 2 else max(self._m2, 0.0) / (n - 1)
