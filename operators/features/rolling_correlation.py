"""Pearson correlations of every pair of columns over a sliding window.

Co-moments are updated in O(N^2) per row with Welford's add and remove
steps (N columns), whatever the window length, and recomputed from the
window every ``window`` rows to keep float error from building up, and as
soon as a column's variance falls below 1e-3 of its peak since the last
recomputation (large rows leaving the window would cost digits).

>>> rc = RollingCorrelation(3, columns=2)
>>> for row in ([0.1, 0.2], [0.2, 0.1], [0.3, 0.4], [0.5, 0.3]):
...     rc.update(row)
>>> round(rc.corr(0, 1), 12)   # corr((.2, .3, .5), (.1, .4, .3))
0.5
"""

from __future__ import annotations

import numpy as np


class RollingCorrelation:
    """Rolling means and co-moments of the last ``window`` rows.

    Parameters
    ----------
    window
        Rows per window, >= 2.
    columns
        Initial number of columns; :meth:`add_column` grows it.
    """

    def __init__(self, window: int, columns: int = 0) -> None:
        if window < 2:
            msg = f"window must be >= 2, got {window}"
            raise ValueError(msg)
        self.window = window
        self.ring = np.zeros((window, columns))
        self.pos = 0  # next row of the ring to write
        self.n = 0
        self.mean = np.zeros(columns)
        self.com = np.zeros((columns, columns))
        self.peak = np.zeros(columns)
        self._since = 0

    @property
    def columns(self) -> int:
        return self.ring.shape[1]

    def add_column(self) -> int:
        """Add a column of zeros (its past rows read as 0); its index."""
        c = self.columns
        self.ring = np.hstack([self.ring, np.zeros((self.window, 1))])
        self.mean = np.append(self.mean, 0.0)
        com = np.zeros((c + 1, c + 1))
        com[:c, :c] = self.com
        self.com = com
        self.peak = np.append(self.peak, 0.0)
        # a column of zeros has mean and co-moments exactly 0: no recomputation,
        # so the other columns' sums do not depend on when a symbol arrived
        return c

    def update(self, row) -> None:
        """Slide the window by one row (a sequence of ``columns`` floats)."""
        x = np.asarray(row, dtype=np.float64)
        if self.n == self.window:
            old = self.ring[self.pos]
            n = self.n - 1
            d = old - self.mean
            self.mean -= d / n
            self.com -= np.outer(d, old - self.mean)
            self.n = n
        self.ring[self.pos] = x
        self.pos = (self.pos + 1) % self.window
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.com += np.outer(d, x - self.mean)
        self._since += 1
        diag = self.com.diagonal()
        np.maximum(self.peak, diag, out=self.peak)
        if self._since >= self.window or (diag < self.peak * 1e-3).any():
            self.refresh()

    def skip_zero_rows(self, m: int) -> bool:
        """Slide ``m`` all-zero rows through a window that is all zeros already, in O(1).

        Only when the window is full of zeros and the moments are exactly zero
        (then the result is what ``m`` calls of :meth:`update` leave); returns
        False, doing nothing, otherwise.

        >>> rc = RollingCorrelation(2, columns=1)
        >>> for _ in range(4):
        ...     rc.update([0.0])
        >>> rc.skip_zero_rows(10**9), rc.n
        (True, 2)
        """
        if self.n < self.window or self.ring.any() or self.mean.any() or self.com.any() or self.peak.any():
            return False
        self.pos = (self.pos + m) % self.window
        self._since = (self._since + m) % self.window
        return True

    def rows(self) -> np.ndarray:
        """The window's rows, oldest first."""
        if self.n < self.window:
            return self.ring[: self.n]
        return np.roll(self.ring, -self.pos, axis=0)

    def set_recent(self, col: int, values: list[float]) -> None:
        """Overwrite the newest ``len(values)`` rows of one column (backfill)."""
        m = min(len(values), self.n)
        for back in range(1, m + 1):
            self.ring[(self.pos - back) % self.window, col] = values[-back]
        self.refresh()

    def refresh(self) -> None:
        """Recompute the means and co-moments from the window."""
        x = self.rows()
        if len(x) == 0:
            self.mean[:] = 0.0
            self.com[:] = 0.0
        else:
            self.mean = x.mean(axis=0)
            xc = x - self.mean
            self.com = xc.T @ xc
        self.peak = self.com.diagonal().copy()
        self._since = 0

    def constant(self) -> np.ndarray:
        """Boolean per column: all values in the window are equal.

        Any row of the window serves as the reference: no roll into age order.
        """
        x = self.ring[: self.n]
        return (x == x[0]).all(axis=0) if len(x) else np.ones(self.columns, dtype=bool)

    def corr(self, a: int, b: int) -> float:
        """Pearson correlation of columns a and b (window assumed full)."""
        den = np.sqrt(self.com[a, a] * self.com[b, b])
        return float(min(1.0, max(-1.0, self.com[a, b] / den)))

    def corr_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """:meth:`corr` of the column pairs ``(a[i], b[i])`` at once, value for value.

        >>> rc = RollingCorrelation(3, columns=3)
        >>> for row in ([0.1, 0.2, 0.0], [0.2, 0.1, 0.5], [0.3, 0.4, 0.1]):
        ...     rc.update(row)
        >>> rc.corr_pairs(np.array([0, 0, 1]), np.array([1, 2, 2])).tolist() == [
        ...     rc.corr(0, 1), rc.corr(0, 2), rc.corr(1, 2)]
        True
        """
        diag = self.com.diagonal()
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self.com[a, b] / np.sqrt(diag[a] * diag[b])
        # as min(1, max(-1, r)) does: NaN (0/0) reads as -1
        r[np.isnan(r)] = -1.0
        return np.clip(r, -1.0, 1.0, out=r)
