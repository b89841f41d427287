"""Event time kept sane before ticks reach the bars: bounds, symbol capacity, partition merge.

Three small operators run on every input partition's tick batches before
the per-symbol steps:

- :class:`TimeGuard` rejects a tick too far ahead of its partition's newest
  tick, or a new symbol's tick too far behind it (reason ``time``), so a
  bit-flipped timestamp cannot open a gap of centuries;
- :class:`SymbolCapacity` admits at most ``max_symbols`` distinct symbols
  (later ones are ``capacity`` dead letters);
- :class:`PartitionMerge` holds each partition's ticks until every partition
  has passed their time, then releases each symbol's ticks merged in event
  time, so lateness does not depend on how a symbol's ticks are spread over
  partitions or how the partitions interleave.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from itertools import count, repeat

import numpy as np

from schemas.records import TIME
from schemas.settings import check_settings, setting
from schemas.tick_columns import TickColumns

NEVER = np.iinfo(np.int64).min
ALWAYS = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """Parameters of :class:`TimeGuard` and :class:`SymbolCapacity`.

    Parameters
    ----------
    max_ahead_ms
        A tick more than this ahead of the newest tick its partition has
        delivered is held as a suspect (the partition's first tick sets the
        start); it is accepted when ``confirm_ticks`` ticks in a row are all
        that far ahead, in time order and each within ``max_ahead_ms`` of
        the one before (the input really jumped: an outage, a quiet market),
        and is a ``time`` dead letter otherwise (a corrupt timestamp: the
        next tick is back in time, or far from it: two corrupt timestamps
        in a row, hours apart, once moved a fuzzed file's clock a day ahead).
    max_behind_ms
        A symbol's first tick more than this behind the partition's newest
        tick is a ``time`` dead letter (the symbol stays new).
    max_symbols
        Distinct symbols a flow takes; ticks of further symbols are
        ``capacity`` dead letters.
    confirm_ticks
        Ticks in a row that confirm a jump ahead (>= 1; 1 accepts every
        jump within ``max_ahead_ms`` only).
    """

    max_ahead_ms: int = setting(10_000, ge=1)
    max_behind_ms: int = setting(86_400_000, ge=1)
    max_symbols: int = setting(500, ge=1)
    confirm_ticks: int = setting(3, ge=1)

    def __post_init__(self) -> None:
        check_settings(self)


Rejection = tuple[TickColumns, int, str, str]
"""(batch, row in the batch, reason, message)."""


class TimeGuard:
    """Event-time bounds of one input partition.

    Works on a chunk's per-symbol batches together, in arrival order, so the
    partition's newest tick is the newest that arrived before each tick.
    A tick far ahead waits for the next ticks to confirm it (see
    :class:`TimeBounds`); suspects still waiting at the end of a chunk are
    held back and come out (or are rejected) with a later chunk.

    >>> from schemas.records import Tick
    >>> g = TimeGuard(TimeBounds(max_ahead_ms=1000, max_behind_ms=500, confirm_ticks=2))
    >>> ticks = [Tick(t, "A/B", 1.0, 1.0) for t in (10_000, 90_000, 10_900, 50_000)]
    >>> kept, rejected = g.check([TickColumns.from_ticks(ticks, "f")])
    >>> kept[0].ts.tolist(), [r[1:3] for r in rejected]
    ([10000, 10900], [(1, 'time')])
    >>> rejected[0][3][:60]  # ... (features.max_ahead_ms = 1000) and the next tick is not
    'ts 90000 is 80000 ms ahead of the newest tick 10000 (feature'
    >>> kept, rejected = g.check([TickColumns.from_ticks([Tick(50_100, "A/B", 1.0, 1.0)], "f", 4)])
    >>> [k.ts.tolist() for k in kept], rejected   # 50000 held back, then confirmed
    ([[50000], [50100]], [])
    >>> kept, rejected = g.check([TickColumns.from_ticks([Tick(9_000, "C/D", 1.0, 1.0)], "f", 5)])
    >>> kept, rejected[0][3][:57]
    ([], 'first tick of new symbol C/D is 41100 ms behind the newes')
    """

    __slots__ = ("bounds", "held", "newest", "symbols")

    def __init__(self, bounds: TimeBounds) -> None:
        self.bounds = bounds
        self.newest = NEVER  # newest accepted tick
        self.symbols: set[str] = set()
        self.held: list[TickColumns] = []  # suspects of earlier chunks, one row each

    def check(self, batches: list[TickColumns]) -> tuple[list[TickColumns], list[Rejection]]:
        """The batches' ticks within bounds (held suspects first when confirmed), and the rejected rows."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return [], []
        if self._within(batches):
            return batches, []
        b = self.bounds
        one = len(batches) == 1
        ts = batches[0].ts if one else np.concatenate([c.ts for c in batches])
        order = None if one else np.argsort(np.concatenate([c.arrival for c in batches]), kind="stable")
        ts_o = ts if order is None else ts[order]
        newest = self.newest if self.newest != NEVER else int(ts_o[0])
        before = np.empty_like(ts_o)  # the newest tick before each one, if all were accepted
        before[0] = newest
        if len(ts_o) > 1:
            np.maximum(np.maximum.accumulate(ts_o[:-1]), newest, out=before[1:])
        ok = not self.held and bool((ts_o <= before + b.max_ahead_ms).all())
        if ok:
            rank = None
            start = 0
            for c in batches:
                if c.symbol not in self.symbols:
                    if rank is None:
                        rank = np.empty(len(ts_o), dtype=np.int64)
                        rank[np.arange(len(ts_o)) if order is None else order] = np.arange(len(ts_o))
                    pos = rank[start]
                    if ts_o[pos] < before[pos] - b.max_behind_ms:
                        ok = False
                        break
                start += len(c)
        if not ok:
            return self._slow(batches, ts_o, order, newest)
        self.newest = max(newest, int(ts_o.max()))
        self.symbols.update(c.symbol for c in batches)
        return batches, []

    def _within(self, batches: list[TickColumns]) -> bool:
        """Every tick in bounds, judged without merging the batches' arrival orders (the usual case).

        Each tick is compared with the newest tick of its own batch before
        it, which is never newer than the newest before it in arrival order,
        and a new symbol's first tick with the newest tick of the chunk,
        never older: passing both, the exact check passes too.
        """
        if self.held or self.newest == NEVER:
            return False
        b = self.bounds
        newest = self.newest
        top = newest
        for c in batches:
            run = np.maximum.accumulate(c.ts)
            if c.ts[0] > newest + b.max_ahead_ms:
                return False
            if len(c) > 1 and (c.ts[1:] > np.maximum(run[:-1], newest) + b.max_ahead_ms).any():
                return False
            top = max(top, int(run[-1]))
        fresh = [c for c in batches if c.symbol not in self.symbols]
        if any(int(c.ts[0]) < top - b.max_behind_ms for c in fresh):
            return False
        self.newest = top
        self.symbols.update(c.symbol for c in fresh)
        return True

    def flush(self) -> list[Rejection]:
        """End of input: suspects still waiting are rejected."""
        out = [(c, 0, TIME, self._ahead(int(c.ts[0]), self.newest, "and the input ended")) for c in self.held]
        self.held = []
        return out

    def _ahead(self, t: int, newest: int, why: str) -> str:
        return (
            f"ts {t} is {t - newest} ms ahead of the newest tick {newest} "
            f"(features.max_ahead_ms = {self.bounds.max_ahead_ms}) {why}"
        )

    def _slow(self, batches, ts_o, order, newest: int) -> tuple[list[TickColumns], list[Rejection]]:
        b = self.bounds
        which = np.concatenate([np.full(len(c), i) for i, c in enumerate(batches)])
        row = np.concatenate([np.arange(len(c)) for c in batches])
        if order is not None:
            which, row = which[order], row[order]
        keep = [np.ones(len(c), dtype=bool) for c in batches]
        rejected: list[Rejection] = []
        known = self.symbols
        # suspects: (batch index or -1 for a held one, row or held position, ts)
        suspects: list[tuple[int, int, int]] = [(-1, j, int(c.ts[0])) for j, c in enumerate(self.held)]
        held, released = self.held, []

        def reject_suspects(why: str) -> None:
            for i, r, t in suspects:
                cols = held[r] if i < 0 else batches[i]
                rejected.append((cols, 0 if i < 0 else r, TIME, self._ahead(t, newest, why)))
                if i >= 0:
                    keep[i][r] = False
            suspects.clear()

        for t, i, r in zip(ts_o.tolist(), which.tolist(), row.tolist(), strict=True):
            symbol = batches[i].symbol
            if t > newest + b.max_ahead_ms:
                if suspects and not 0 <= t - suspects[-1][2] <= b.max_ahead_ms:
                    reject_suspects("and the next ticks are not in time order close to it")
                suspects.append((i, r, t))
                if len(suspects) >= b.confirm_ticks:  # the input really jumped ahead
                    for si, sr, st in suspects:
                        newest = max(newest, st)
                        known.add(held[sr].symbol if si < 0 else batches[si].symbol)
                        if si < 0:
                            released.append(held[sr])
                    suspects.clear()
                continue
            if suspects:
                reject_suspects("and the next tick is not")
            if symbol not in known and t < newest - b.max_behind_ms:
                keep[i][r] = False
                rejected.append(
                    (
                        batches[i],
                        r,
                        TIME,
                        f"first tick of new symbol {symbol} is {newest - t} ms behind the newest tick "
                        f"{newest} (features.max_behind_ms = {b.max_behind_ms})",
                    )
                )
                continue
            newest = max(newest, t)
            known.add(symbol)
        self.newest = newest
        self.held = []
        for i, r, _ in suspects:  # still waiting: hold them back
            if i < 0:
                self.held.append(held[r])
            else:
                keep[i][r] = False
                self.held.append(batches[i].take(np.array([r])))
        kept = [c if k.all() else c.take(k) for c, k in zip(batches, keep, strict=True)]
        return released + [c for c in kept if len(c)], rejected


class SymbolCapacity:
    """At most ``max_symbols`` distinct symbols, first come first served.

    >>> cap = SymbolCapacity(2)
    >>> [cap.admit(s) for s in ("A/B", "C/D", "E/F", "A/B")]
    [True, True, False, True]
    """

    __slots__ = ("admitted", "max_symbols")

    def __init__(self, max_symbols: int) -> None:
        self.max_symbols = max_symbols
        self.admitted: set[str] = set()

    def admit(self, symbol: str) -> bool:
        if symbol in self.admitted:
            return True
        if len(self.admitted) >= self.max_symbols:
            return False
        self.admitted.add(symbol)
        return True

    def message(self, symbol: str) -> str:
        return f"symbol {symbol} exceeds the flow's {self.max_symbols} symbols (features.max_symbols)"


class PartitionMerge:
    """Merges the ticks of ``parts`` input partitions in event time.

    Each partition's frontier is the newest tick it has delivered; a
    partition that has delivered everything there is (``caught_up``) holds
    nothing back. A tick is released once every partition's frontier is past
    its time (``ts < bound``), each partition's ticks in their own order
    (a partition's queue is released up to its first tick at or after the
    bound). A symbol's ticks from several partitions are merged by taking
    the oldest head first (ties: lower partition first), so when every
    partition is in event-time order the result is the same however the
    partitions interleave. A tick that arrives behind the bound already
    released cannot be put back in its place: it is released at once and
    counted in ``stragglers``.

    >>> from schemas.records import Tick
    >>> def cols(origin, *ts):
    ...     return TickColumns.from_ticks([Tick(t, "A/B", 1.0, 1.0) for t in ts], origin)
    >>> m = PartitionMerge(2)
    >>> m.add(0, [cols("t[0]", 1, 2, 5, 6)], caught_up=False)
    []
    >>> [(c.origin, c.ts.tolist()) for c in m.add(1, [cols("t[1]", 3, 4, 7)], caught_up=False)]
    [('t[0]', [1, 2]), ('t[1]', [3, 4]), ('t[0]', [5])]
    >>> [(c.origin, c.ts.tolist()) for c in m.add(0, [], caught_up=True)]
    [('t[0]', [6])]
    >>> [(c.origin, c.ts.tolist()) for c in m.add(1, [], caught_up=True)]
    [('t[1]', [7])]
    """

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self.frontier: dict[int, int] = {}
        self.caught_up: set[int] = set()
        self.queues: dict[str, dict[int, deque[TickColumns]]] = {}
        self.released = NEVER  # the bound of the last release
        self.stragglers = 0

    def bound(self) -> int:
        """Ticks older than this can be released."""
        low = ALWAYS
        for p in range(self.parts):
            if p not in self.caught_up:
                low = min(low, self.frontier.get(p, NEVER))
        return low

    def add(self, part: int, batches: list[TickColumns], caught_up: bool) -> list[TickColumns]:
        """A partition's next batches (one per symbol); what can be released now, in order."""
        if caught_up:
            self.caught_up.add(part)
        else:
            self.caught_up.discard(part)
        newest = self.frontier.get(part, NEVER)
        for cols in batches:
            if not len(cols):
                continue
            if self.released != NEVER:
                self.stragglers += int(np.count_nonzero(cols.ts < self.released))
            newest = max(newest, int(cols.ts.max()))
            self.queues.setdefault(cols.symbol, {}).setdefault(part, deque()).append(cols)
        self.frontier[part] = newest
        return self.release(self.bound())

    def flush(self) -> list[TickColumns]:
        """Everything still held (end of input)."""
        return self.release(ALWAYS)

    def release(self, bound: int) -> list[TickColumns]:
        if bound == NEVER:
            return []
        self.released = max(self.released, bound)
        out: list[TickColumns] = []
        for symbol in sorted(self.queues):
            by_part = self.queues[symbol]
            ready = {}
            for p in sorted(by_part):
                taken = _take_before(by_part[p], bound)
                if taken:
                    ready[p] = taken
                if not by_part[p]:
                    del by_part[p]
            if not by_part:
                del self.queues[symbol]
            if len(ready) == 1:
                out.extend(next(iter(ready.values())))
            elif ready:
                out.extend(_merge({p: TickColumns.concat(parts) for p, parts in ready.items()}))
        return out


def _take_before(queue: deque[TickColumns], bound: int) -> list[TickColumns]:
    """The queue's leading ticks older than ``bound`` (stops at the first tick that is not)."""
    taken = []
    while queue:
        cols = queue[0]
        late = np.flatnonzero(cols.ts >= bound)
        if not len(late):
            taken.append(queue.popleft())
            continue
        j = int(late[0])
        if j:
            taken.append(cols.take(np.arange(j)))
            queue[0] = cols.take(np.arange(j, len(cols)))
        break
    return taken


def _merge(ready: dict[int, TickColumns]) -> list[TickColumns]:
    """One symbol's ticks from several partitions, oldest head first, as runs of one partition."""
    parts = sorted(ready)
    if all(bool((np.diff(ready[p].ts) >= 0).all()) for p in parts):
        ts = np.concatenate([ready[p].ts for p in parts])
        rank = np.concatenate([np.full(len(ready[p]), r) for r, p in enumerate(parts)])
        row = np.concatenate([np.arange(len(ready[p])) for p in parts])
        order = np.lexsort((row, rank, ts))
        seq_rank, seq_row = rank[order], row[order]
    else:  # a partition out of order: heads compared one by one
        # zip binds each partition's rank now (a generator expression reading ``r`` would see the last
        # rank once heapq consumes it: every row then indexed the last partition, wrong or out of range)
        merged = heapq.merge(*[zip(ready[p].ts.tolist(), repeat(r), count()) for r, p in enumerate(parts)])
        seq = np.array([(r, i) for _, r, i in merged], dtype=np.int64).reshape(-1, 2)
        seq_rank, seq_row = seq[:, 0], seq[:, 1]
    cuts = np.flatnonzero(np.r_[True, seq_rank[1:] != seq_rank[:-1], True])
    out = []
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        cols = ready[parts[int(seq_rank[a])]]
        out.append(cols.take(seq_row[a:b]))
    return out
