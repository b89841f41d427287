"""Cross-symbol correlations on the bar grid (see the metric spec).

Symbols report their closed bars and how far their grid is final
(``closed_through``); the grid index advances only as far as every known
symbol is final, so the output does not depend on how symbols interleave.

Each emitting grid index gives one :class:`~schemas.correlation_rows.CorrelationBlock`
(the whole matrix as columns, computed at once from the co-moments):
:meth:`CorrelationGrid.update_blocks` returns those, :meth:`CorrelationGrid.update`
the same rows as :class:`~schemas.records.Correlation` records.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from operators.features.grid_returns import GridReturns
from operators.features.rolling_correlation import RollingCorrelation
from schemas.correlation_rows import CorrelationBlock, pair_indices
from schemas.records import Correlation
from schemas.settings import MAX_WINDOW, check_settings, setting


@dataclass(frozen=True, slots=True)
class CorrelationSettings:
    """Parameters of :class:`CorrelationGrid`.

    Parameters
    ----------
    bar_interval_ms
        Grid step D in ms.
    window
        Wc, returns per correlation window (>= 2).
    every
        Emit at grid indices k with k % every == 0 (>= 1).
    """

    bar_interval_ms: int = setting(1000, gt=0, fixed=True)
    window: int = setting(300, ge=2, le=MAX_WINDOW, fixed=True)
    every: int = setting(60, ge=1, le=MAX_WINDOW, fixed=True)

    def __post_init__(self) -> None:
        check_settings(self)


_UNKNOWN = float("-inf")  # a symbol that has not said how far it is final: below every index
_CACHES = ("_lowest", "_at_lowest", "_by_name", "_peers")  # derived from the state, not saved with it


class _Zeros:
    """A run of ``n`` zero returns (a gap) in a symbol's pending returns: O(1) whatever its length."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self):
        return (_Zeros, (self.n,))


@dataclass(slots=True)
class _Slot:
    col: int
    grid: GridReturns = field(default_factory=GridReturns)
    pending: deque = field(default_factory=deque)  # returns (floats, _Zeros runs) from index next_k on
    count: int = 0  # returns held in pending
    next_k: int | None = None
    known_through: int | None = None

    def push(self, zeros: int, ret: float | None) -> None:
        if zeros:
            self.pending.append(_Zeros(zeros))
        if ret is not None:
            self.pending.append(ret)
        self.count += zeros + (ret is not None)

    def pop(self) -> float:
        head = self.pending[0]
        self.count -= 1
        if type(head) is _Zeros:
            head.n -= 1
            if head.n == 0:
                self.pending.popleft()
            return 0.0
        self.pending.popleft()
        return head

    def drop(self, m: int, keep: int) -> list[float]:
        """Drop the ``m`` oldest pending returns; the last ``keep`` of them (at most)."""
        kept: deque[float] = deque(maxlen=keep)
        while m:
            head = self.pending[0]
            if type(head) is _Zeros:
                take = min(m, head.n)
                kept.extend([0.0] * min(take, keep))
                head.n -= take
                if head.n == 0:
                    self.pending.popleft()
            else:
                take = 1
                kept.append(self.pending.popleft())
            m -= take
            self.count -= take
        return list(kept)


class CorrelationGrid:
    """Aligns symbols' returns on the grid and emits rolling correlations.

    >>> cg = CorrelationGrid(CorrelationSettings(bar_interval_ms=1, window=3, every=1))
    >>> cg.update("A", [(0, 1.0), (1, 2.0), (2, 1.0), (3, 3.0)], 3, peers=("B",))
    []
    >>> [(c.ts, round(c.corr, 9)) for c in cg.update("B", [(0, 1.0), (1, 1.5), (2, 1.2), (3, 2.0)], 3)]
    [(3, 0.996444876)]
    """

    def __init__(self, settings: CorrelationSettings) -> None:
        self.settings = settings
        self.slots: dict[str, _Slot] = {}
        self.names: list[str] = []
        self.rc = RollingCorrelation(settings.window)
        self.done: int | None = None  # last grid index processed
        self.max_bar: int | None = None
        self._clear_caches()

    def _clear_caches(self) -> None:
        self._lowest: float | None = None  # min known_through (_UNKNOWN for None); None: to compute
        self._at_lowest = 0  # slots whose known_through is _lowest
        self._by_name: list[tuple[str, _Slot]] | None = None  # slots in string order of names
        self._peers: tuple[str, ...] | None = None  # the last peers seen, every one a slot

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key not in _CACHES}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._clear_caches()

    def _advance_known(self) -> list[CorrelationBlock]:
        """Advance as far as every known symbol is final: O(1) unless the slowest symbol moved."""
        if self._lowest is None:
            known = [_UNKNOWN if s.known_through is None else s.known_through for s in self.slots.values()]
            if not known:
                return []
            self._lowest = min(known)
            self._at_lowest = known.count(self._lowest)
        if self._lowest == _UNKNOWN:
            return []
        return self._advance(self._lowest)

    def _slot(self, symbol: str) -> _Slot:
        slot = self.slots.get(symbol)
        if slot is None:
            slot = _Slot(self.rc.add_column())
            self.slots[symbol] = slot
            self.names.append(symbol)
            self._clear_caches()
        return slot

    def update(
        self,
        symbol: str,
        bars: list[tuple[int, float]],
        closed_through: int,
        peers: tuple[str, ...] = (),
    ) -> list[Correlation]:
        """Take a symbol's newly closed bars (grid index, close) and progress.

        ``peers`` names symbols that arrived in the same input chunk: the
        grid waits for their own report before it moves on, so the order in
        which symbols are processed cannot change the output.
        """
        return _records(self.update_blocks(symbol, bars, closed_through, peers))

    def update_blocks(
        self,
        symbol: str,
        bars: list[tuple[int, float]],
        closed_through: int,
        peers: tuple[str, ...] = (),
    ) -> list[CorrelationBlock]:
        """:meth:`update`, its rows as one block per emitting grid index."""
        if peers is not self._peers:  # every symbol of a chunk names the same tuple: once per chunk
            for peer in peers:
                self._slot(peer)
            self._peers = peers
        slot = self._slot(symbol)
        for k, close in bars:
            step = slot.grid.update(k, close)
            if step is not None:
                self._extend(slot, k, *step)
            self.max_bar = k if self.max_bar is None else max(self.max_bar, k)
        old = slot.known_through
        if old is None or closed_through > old:
            slot.known_through = closed_through
            moved = closed_through is not None  # (None: still unknown)
            if moved and self._lowest is not None and (_UNKNOWN if old is None else old) == self._lowest:
                self._at_lowest -= 1
                if not self._at_lowest:
                    self._lowest = None  # the slowest symbol moved: find the next one
            self._extend(slot, closed_through, slot.grid.extend_to(closed_through), None)
        return self._advance_known()

    def finish(self) -> list[Correlation]:
        """End of input: forward-fill every symbol to the run's last index."""
        return _records(self.finish_blocks())

    def finish_blocks(self) -> list[CorrelationBlock]:
        """:meth:`finish`, its rows as blocks (see :meth:`update_blocks`)."""
        if self.max_bar is None:
            return []
        for slot in self.slots.values():
            slot.known_through = self.max_bar
            self._extend(slot, self.max_bar, slot.grid.extend_to(self.max_bar), None)
        self._lowest = None
        return self._advance(self.max_bar)

    def _extend(self, slot: _Slot, k: int, zeros: int, ret: float | None) -> None:
        """Returns of grid indices up to k: ``zeros`` zero returns, then ``ret`` at k (if any)."""
        n = zeros + (ret is not None)
        if not n:
            return
        if slot.next_k is None:
            slot.next_k = k - n + 1
        slot.push(zeros, ret)
        done = self.done
        if done is not None and slot.next_k <= done:
            # a symbol reported after the grid passed it: backfill the window
            stale = min(done - slot.next_k + 1, slot.count)
            back = slot.drop(stale, self.settings.window)
            slot.next_k += stale
            self.rc.set_recent(slot.col, back)

    def _advance(self, target: int) -> list[CorrelationBlock]:
        out: list[CorrelationBlock] = []
        if self.done is None:
            starts = [s.next_k for s in self.slots.values() if s.next_k is not None]
            if not starts:
                return out
            self.done = min(starts) - 1
        if self.done >= target:
            return out
        st = self.settings
        slots = list(self.slots.values())
        while self.done < target:
            k = self.done + 1
            if self._skip_gap(slots, k, target):
                continue
            row = [0.0] * self.rc.columns
            for s in slots:
                if s.next_k is not None and s.next_k == k and s.count:
                    row[s.col] = s.pop()
                    s.next_k = k + 1
            self.rc.update(row)
            self.done = k
            if k % st.every == 0:
                block = self._emit(k)
                if block is not None:
                    out.append(block)
        return out

    def _skip_gap(self, slots: list[_Slot], k: int, target: int) -> bool:
        """Jump over a stretch of all-zero rows once the window holds only zeros.

        Every symbol is in a gap there (or not started), so no pair has
        variance and nothing is emitted; the window's state after the jump is
        the one row-by-row updates would leave.
        """
        rc = self.rc
        if rc.n < rc.window:
            return False
        m = target - k + 1
        runs = []
        for s in slots:
            if s.next_k is None:
                continue
            if s.next_k > k:
                m = min(m, s.next_k - k)
                continue
            head = s.pending[0] if s.count else None
            if type(head) is not _Zeros:
                return False
            m = min(m, head.n)
            runs.append(s)
        if m < 2 or not rc.skip_zero_rows(m):  # it checks the window holds only zeros
            return False
        for s in runs:
            head = s.pending[0]
            head.n -= m
            if head.n == 0:
                s.pending.popleft()
            s.count -= m
            s.next_k = k + m
        self.done = k + m - 1
        return True

    def _emit(self, k: int) -> CorrelationBlock | None:
        """Every ready pair at grid index k, from the co-moment matrix at once."""
        wc = self.settings.window
        if self.rc.n < wc:
            return None
        constant = self.rc.constant().tolist()
        if self._by_name is None:
            self._by_name = sorted(self.slots.items(), key=lambda item: item[0])
        start = k - wc
        names, cols = [], []
        for name, s in self._by_name:
            first = s.grid.first
            if first is not None and first <= start and not constant[s.col]:
                names.append(name)
                cols.append(s.col)
        if len(names) < 2:
            return None
        i, j = pair_indices(len(cols))
        col = np.array(cols, dtype=np.intp)
        corr = self.rc.corr_pairs(col[i], col[j])
        d = self.settings.bar_interval_ms
        return CorrelationBlock(k * d, tuple(names), corr, d // 1000)


def _records(blocks: list[CorrelationBlock]) -> list[Correlation]:
    return [row for block in blocks for row in block]
