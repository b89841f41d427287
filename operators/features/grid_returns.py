"""Log returns on the bar grid, with forward fill across gaps.

A gap costs O(1): the zero returns of the missing bars come back as a count,
never as a list as long as the gap.

>>> g = GridReturns()
>>> g.update(10, 100.0) is None
True
>>> zeros, r = g.update(13, 110.0)   # two gaps, then the move
>>> zeros, round(r, 12)
(2, 0.095310179804)
>>> g.extend_to(15)
2
>>> round(g.update(16, 1e-320)[1], 6)   # 1e-320 / 110 underflows; the log difference does not
-741.5497
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

    def update(self, k: int, close: float) -> tuple[int, float] | None:
        """Bar k's close: ``(zeros, r_k)``, the zero returns of indices last+1 .. k-1 and r_k.

        None for the symbol's first bar (no return yet).
        """
        if self.last is None:
            self.first = self.last = k
            self.close = close
            return None
        if k <= self.last:
            msg = f"bar index {k} is not after {self.last}"
            raise ValueError(msg)
        zeros = k - self.last - 1
        q = close / self.close
        # extreme (valid) prices can overflow or underflow the ratio: take logs apart then
        r = math.log(q) if 0.0 < q < math.inf else math.log(close) - math.log(self.close)
        self.last = k
        self.close = close
        return zeros, r

    def extend_to(self, k: int) -> int:
        """How many forward-filled zero returns take the grid up to index k (no bar there)."""
        if self.last is None or k <= self.last:
            return 0
        zeros = k - self.last
        self.last = k
        return zeros
