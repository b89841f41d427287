"""Normalised permutation entropy (order 3, delay 1) over a sliding window.

Counts of the six ordinal patterns of consecutive triples are kept as the
window slides, so each update is O(1). A triple's pattern is
``argsort(triple)`` with a stable sort: ties keep time order.

>>> pe = PermutationEntropy(4)
>>> for x in [1.0, 2.0, 3.0, 4.0]:
...     pe.update(x)
>>> pe.get()    # both triples rise: one pattern, entropy 0
0.0
>>> pe.update(0.0)   # triples (2, 3, 4) and (3, 4, 0)
>>> round(pe.get(), 12)
0.386852807235
"""

from __future__ import annotations

import math
from collections import deque

LN6 = math.log(6.0)
_PATTERNS = {
    # (a <= b, b <= c, a <= c) -> index of stable argsort(a, b, c)
    (True, True, True): 0,  # (0, 1, 2)
    (True, False, True): 1,  # (0, 2, 1)
    (True, False, False): 4,  # (2, 0, 1)
    (False, True, True): 2,  # (1, 0, 2)
    (False, True, False): 3,  # (1, 2, 0)
    (False, False, False): 5,  # (2, 1, 0)
}


def ordinal_pattern(a: float, b: float, c: float) -> int:
    """Index 0..5 of the stable argsort of (a, b, c)."""
    return _PATTERNS[(a <= b, b <= c, a <= c)]


class PermutationEntropy:
    """Permutation entropy of the last ``window`` values, in [0, 1].

    Parameters
    ----------
    window
        Number of values, >= 3 (the window holds ``window - 2`` triples).
    """

    __slots__ = ("_counts", "_patterns", "_vals", "window")

    def __init__(self, window: int) -> None:
        if window < 3:
            msg = f"window must be >= 3, got {window}"
            raise ValueError(msg)
        self.window = window
        self._vals: deque[float] = deque(maxlen=3)
        self._patterns: deque[int] = deque()
        self._counts = [0] * 6

    def update(self, x: float) -> None:
        vals = self._vals
        vals.append(x)
        if len(vals) < 3:
            return
        pattern = ordinal_pattern(vals[0], vals[1], vals[2])
        self._patterns.append(pattern)
        self._counts[pattern] += 1
        if len(self._patterns) > self.window - 2:
            self._counts[self._patterns.popleft()] -= 1

    def get(self) -> float | None:
        """The entropy once the window is full, else None."""
        m = len(self._patterns)
        if m < self.window - 2:
            return None
        h = 0.0
        for c in self._counts:
            if c:
                p = c / m
                h -= p * math.log(p)
        return h / LN6
