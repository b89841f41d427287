"""Window and EWMA state behind the VaR models: O(1) / O(log W) updates, no float drift.

Sums are exact integers (every finite double is an integer multiple of
2**-1074, :func:`operators.risk.var_math.exact`), so a long stream needs no
periodic recomputation. Private helpers of :mod:`operators.risk.var_models`.

>>> w = _TailWindow(5, 0.25)
>>> for x in [0.03, -0.01, 0.02, -0.04, 0.0]:
...     w.update(x)
>>> w.tail()   # Q(X, 0.25) and the mean of the values <= Q
(-0.01, -0.025)
>>> m = _Moments(4)
>>> for x in [1.0, 2.0, 4.0, 8.0]:
...     m.update(x)
>>> [round(v, 9) for v in m.get()]   # mean, sd (ddof=1), skewness, excess kurtosis
[3.75, 3.095695937, 0.656807734, -1.098979206]
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np

from operators.risk.var_math import SCALE as _SCALE
from operators.risk.var_math import exact

# --------------------------------------------------------------------------- shared state


class _Ewma:
    """Zero-mean EWMA variance with normalised weights (pandas ``ewm(adjust=True)`` of r^2).

    v_n = sum_i decay^(n-i) r_i^2 / sum_i decay^(n-i), O(1) per update.
    """

    __slots__ = ("decay", "den", "n", "num")

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.num = 0.0
        self.den = 0.0
        self.n = 0

    def update(self, r: float) -> None:
        self.num = self.decay * self.num + r * r
        self.den = self.decay * self.den + 1.0
        self.n += 1

    def var(self) -> float:
        return self.num / self.den if self.n else 0.0


class _TailWindow:
    """The last ``window`` values with their alpha-quantile and tail mean, O(log W) per update.

    The quantile is numpy's ``method`` ("linear", the spec's, or "weibull").

    Two heaps split the window into the k = floor((W-1) alpha) + 1 smallest
    values (a max-heap, with their exact integer sum and value counts) and the
    rest (a min-heap). Removal is lazy (a pending-deletion count per value);
    both heaps are rebuilt from the window when stale entries make them twice
    the window (amortised O(log W)).
    """

    __slots__ = (
        "_count",
        "_del_hi",
        "_del_lo",
        "_fifo",
        "_frac",
        "_hi",
        "_k",
        "_lo",
        "_lo_count",
        "_lo_sum",
        "_n_hi",
        "_n_lo",
        "alpha",
        "window",
    )

    def __init__(self, window: int, alpha: float, method: str = "linear") -> None:
        self.window, self.alpha = window, alpha
        # numpy's virtual index of the quantile: linear (n - 1) a; weibull (n + 1) a - 1, clipped
        h = (window - 1) * alpha if method == "linear" else window * alpha + alpha - 1.0
        h = min(max(h, 0.0), window - 1.0)
        self._k = int(h) + 1
        self._frac = h - int(h)
        self._fifo: deque[float] = deque()
        self._count: dict[float, int] = {}
        self._reset_heaps([])

    def _reset_heaps(self, ordered: list[float]) -> None:
        k = self._k
        self._lo = [-v for v in reversed(ordered[:k])]  # a valid max-heap: non-increasing
        self._hi = ordered[k:]  # ascending: a valid min-heap
        self._n_lo, self._n_hi = len(self._lo), len(self._hi)
        self._del_lo: dict[float, int] = {}
        self._del_hi: dict[float, int] = {}
        self._lo_sum = sum(exact(v) for v in ordered[:k])
        self._lo_count: dict[float, int] = {}
        for v in ordered[:k]:
            self._lo_count[v] = self._lo_count.get(v, 0) + 1

    @property
    def full(self) -> bool:
        return len(self._fifo) == self.window

    def values(self) -> np.ndarray:
        return np.fromiter(self._fifo, float, len(self._fifo))

    def _top_lo(self) -> float:
        lo, pending = self._lo, self._del_lo
        while pending.get(-lo[0], 0):
            v = -heapq.heappop(lo)
            pending[v] -= 1
            if not pending[v]:
                del pending[v]
        return -lo[0]

    def _top_hi(self) -> float:
        hi, pending = self._hi, self._del_hi
        while pending.get(hi[0], 0):
            v = heapq.heappop(hi)
            pending[v] -= 1
            if not pending[v]:
                del pending[v]
        return hi[0]

    def _add_lo(self, v: float, sign: int) -> None:
        self._n_lo += sign
        self._lo_sum += sign * exact(v)
        c = self._lo_count.get(v, 0) + sign
        if c:
            self._lo_count[v] = c
        else:
            del self._lo_count[v]

    def update(self, x: float) -> None:
        fifo, count = self._fifo, self._count
        if len(fifo) == self.window:
            old = fifo.popleft()
            c = count[old] - 1
            if c:
                count[old] = c
            else:
                del count[old]
            if self._n_lo and old <= self._top_lo():
                self._del_lo[old] = self._del_lo.get(old, 0) + 1
                self._add_lo(old, -1)
            else:
                self._del_hi[old] = self._del_hi.get(old, 0) + 1
                self._n_hi -= 1
        fifo.append(x)
        count[x] = count.get(x, 0) + 1
        if self._n_lo and x <= self._top_lo():
            heapq.heappush(self._lo, -x)
            self._add_lo(x, 1)
        else:
            heapq.heappush(self._hi, x)
            self._n_hi += 1
        while self._n_lo > self._k:
            v = self._top_lo()
            heapq.heappop(self._lo)
            self._add_lo(v, -1)
            heapq.heappush(self._hi, v)
            self._n_hi += 1
        while self._n_lo < self._k and self._n_hi:
            v = self._top_hi()
            heapq.heappop(self._hi)
            self._n_hi -= 1
            heapq.heappush(self._lo, -v)
            self._add_lo(v, 1)
        if len(self._lo) + len(self._hi) > 2 * self.window + 16:
            self._reset_heaps(sorted(fifo))

    def tail(self) -> tuple[float, float] | None:
        """(Q, mean of the values <= Q) once full, else None."""
        if not self.full:
            return None
        lo = self._top_lo()
        if not self._n_hi:
            q = lo
        else:
            hi = self._top_hi()
            diff = hi - lo  # numpy's lerp, exact at both ends
            q = hi - diff * (1.0 - self._frac) if self._frac >= 0.5 else lo + diff * self._frac
        total, m = self._lo_sum, self._n_lo
        if self._n_hi and q >= self._top_hi():  # ties of Q above the k smallest
            extra = self._count[q] - self._lo_count.get(q, 0)
            total += extra * exact(q)
            m += extra
        return q, total / (m << _SCALE)


class _Moments:
    """Exact power sums of the last ``window`` values: mean, sd (ddof=1), skewness g1, excess kurtosis g2.

    O(1) per update (big-integer arithmetic on exact multiples of 2**-1074).
    """

    __slots__ = ("_fifo", "_s", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self._fifo: deque[tuple[int, int, int, int]] = deque()
        self._s = [0, 0, 0, 0]

    def update(self, x: float) -> None:
        u = exact(x)
        u2 = u * u
        p = (u, u2, u2 * u, u2 * u2)
        s = self._s
        if len(self._fifo) == self.window:
            old = self._fifo.popleft()
            for i in range(4):
                s[i] -= old[i]
        self._fifo.append(p)
        for i in range(4):
            s[i] += p[i]

    @property
    def full(self) -> bool:
        return len(self._fifo) == self.window

    def get(self) -> tuple[float, float, float, float] | None:
        """(mean, sd, g1, g2) once full, else None; g1 = g2 = 0 for a flat window."""
        if not self.full:
            return None
        n = self.window
        s1, s2, s3, s4 = self._s
        b = n * s2 - s1 * s1  # n * M2, exact
        mean = s1 / (n << _SCALE)
        sd = math.sqrt(b / ((n * (n - 1)) << (2 * _SCALE)))
        if b == 0:
            return mean, sd, 0.0, 0.0
        a = n * n * s3 - 3 * n * s1 * s2 + 2 * s1**3  # n^2 * M3
        c = n**3 * s4 - 4 * n * n * s1 * s3 + 6 * n * s1 * s1 * s2 - 3 * s1**4  # n^3 * M4
        # the exact a, b, c to 62-bit mantissas with even binary exponents (relative error ~1e-18)
        (am, ae), (bm, be), (cm, ce) = _split(a), _split(b), _split(c)
        g1 = math.ldexp(am / (bm * math.sqrt(bm)), ae - 3 * be // 2)
        g2 = math.ldexp(cm / (bm * bm), ce - 2 * be) - 3.0
        return mean, sd, g1, g2


def _split(x: int) -> tuple[float, int]:
    """(m, e) with x ~ m * 2**e, |m| < 2**64, e even (exact when x fits in a double)."""
    e = max(abs(x).bit_length() - 62, 0)
    e += e & 1
    m = abs(x) >> e
    return float(-m if x < 0 else m), e
