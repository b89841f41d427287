"""Log returns on the bar grid, with forward fill across gaps.

>>> g = GridReturns()
>>> g.update(10, 100.0)
[]
>>> [round(r, 12) for r in g.update(13, 110.0)]   # two gaps, then the move
[0.0, 0.0, 0.095310179804]
>>> g.extend_to(15)
[0.0, 0.0]
"""

from __future__ import annotations

import math


class GridReturns:
    """r_k = ln(C_k / C_(k-1)) for every grid index after a symbol's first bar."""

    __slots__ = ("close", "first", "last")

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: int | None = None
        self.close: float | None = None

    def update(self, k: int, close: float) -> list[float]:
        """Returns for grid indices last+1 .. k, given bar k's close."""
        if self.last is None:
            self.first = self.last = k
            self.close = close
            return []
        if k <= self.last:
            msg = f"bar index {k} is not after {self.last}"
            raise ValueError(msg)
        out = [0.0] * (k - self.last - 1)
        out.append(math.log(close / self.close))
        self.last = k
        self.close = close
        return out

    def extend_to(self, k: int) -> list[float]:
        """Forward-filled zero returns up to grid index k (no bar there)."""
        if self.last is None or k <= self.last:
            return []
        out = [0.0] * (k - self.last)
        self.last = k
        return out
