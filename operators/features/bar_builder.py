"""One symbol's ticks into bars, rejecting duplicates and late ticks.

Works on columnar batches (numpy): checks, the watermark and the bar
aggregates are vectorised, so the cost per tick is a few array operations.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from schemas.records import DUPLICATE, LATE, Bar
from schemas.settings import check_settings, setting
from schemas.tick_columns import TickColumns

NO_WATERMARK = np.iinfo(np.int64).min // 2


@dataclass(frozen=True, slots=True)
class BarSettings:
    """Parameters of :class:`BarBuilder`.

    Parameters
    ----------
    interval_ms
        Bar length D in ms; bars are aligned to the epoch.
    allowed_lateness_ms
        The watermark trails the newest tick by this much.
    dedup_horizon_ms
        Trade ids are remembered for at least this much watermark advance
        (and at most twice that); a repeat arriving later still has its bar
        closed and is rejected as late.
    """

    interval_ms: int = setting(1000, gt=0, fixed=True)
    allowed_lateness_ms: int = setting(0, ge=0)
    dedup_horizon_ms: int = setting(600_000, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class BarUpdate:
    """What one batch did.

    Parameters
    ----------
    accepted
        The ticks kept, in arrival order.
    seq
        Per accepted tick, its store ``seq`` (0 when it has a trade id).
    rejected
        (row in the batch, reason, message) per rejected tick.
    closed
        Bars closed by this batch, oldest first.
    closed_through
        The newest grid index known to be closed for this symbol.
    """

    accepted: TickColumns
    seq: np.ndarray
    rejected: list[tuple[int, str, str]]
    closed: list[Bar]
    closed_through: int


class BarBuilder:
    """Stateful bar maker for one symbol.

    >>> from schemas.records import Tick
    >>> b = BarBuilder(BarSettings(interval_ms=1000), "X")
    >>> ticks = [Tick(100, "X", 10.0, 1.0, trade_id="1"),
    ...          Tick(900, "X", 12.0, 1.0, trade_id="2"),
    ...          Tick(1500, "X", 11.0, 2.0, trade_id="3"),
    ...          Tick(800, "X", 9.0, 1.0, trade_id="4"),
    ...          Tick(1600, "X", 11.0, 2.0, trade_id="3")]
    >>> up = b.update(TickColumns.from_ticks(ticks, "t.csv", 2))
    >>> for row in up.rejected:
    ...     print(row)
    (3, 'late', 'ts 800 falls in bar 0 ending 1000 <= watermark 1500')
    (4, 'duplicate', 'trade_id 3 repeats an earlier tick')
    >>> up.closed  # doctest: +NORMALIZE_WHITESPACE
    [Bar(symbol='X', ts=0, open=10.0, high=12.0, low=10.0, close=12.0, volume=2.0, vwap=11.0, trades=2,
         interval=1)]
    >>> b.flush()  # doctest: +NORMALIZE_WHITESPACE
    [Bar(symbol='X', ts=1000, open=11.0, high=11.0, low=11.0, close=11.0, volume=2.0, vwap=11.0, trades=1,
         interval=1)]
    """

    def __init__(self, settings: BarSettings, symbol: str) -> None:
        self.settings = settings
        self.symbol = symbol
        self.max_ts = NO_WATERMARK
        # bar index -> [open_ts, open, high, low, close_ts, close, volume, pv, trades]
        self.open_bars: dict[int, list] = {}
        # exchange -> (ids of this generation, ids of the previous one)
        self.ids: dict[str, tuple[set, set]] = {}
        # exchange -> (runs of this generation, of the previous one): a batch whose ids are the
        # decimals a, a+1, ..., b (exchanges number a symbol's trades so) is kept as the run
        # [a, b], not as b - a + 1 strings; a run is (starts, ends), sorted, disjoint
        self.id_runs: dict[str, tuple[tuple[list, list], tuple[list, list]]] = {}
        self.ids_rotate_at = NO_WATERMARK
        self.seq = 0

    @property
    def watermark(self) -> int:
        return self.max_ts - self.settings.allowed_lateness_ms

    def closed_through(self) -> int:
        """Newest grid index whose bar can no longer change."""
        if self.max_ts == NO_WATERMARK:
            return NO_WATERMARK
        return self.watermark // self.settings.interval_ms - 1

    def _duplicates(self, cols: TickColumns) -> np.ndarray | None:
        """Mask of rows repeating an earlier (exchange, trade_id), or None."""
        ex = cols.exchange
        if len(ex) == 0:
            return None
        if ex[0] == ex[-1] and (ex == ex[0]).all():
            return self._duplicates_on(ex[0], cols.trade_id.tolist())
        dup = np.zeros(len(ex), dtype=bool)
        for name in dict.fromkeys(ex.tolist()):
            rows = np.flatnonzero(ex == name)
            part = self._duplicates_on(name, cols.trade_id[rows].tolist())
            if part is not None:
                dup[rows[part]] = True
        return dup if dup.any() else None

    def _duplicates_on(self, exchange: str, ids: list) -> np.ndarray | None:
        """Duplicates among one exchange's trade ids (in arrival order).

        A trade id is known when it is in a generation's set or, as the
        decimal of an integer, in one of its runs.
        """
        gens = self.ids.get(exchange)
        if gens is None:
            gens = self.ids[exchange] = (set(), set())
            self.id_runs[exchange] = (([], []), ([], []))
        now, before = gens
        runs = self.id_runs[exchange]
        first = _consecutive(ids)
        if first is not None:
            last = first + len(ids) - 1
            if (
                not _overlaps(runs[0], first, last)
                and not _overlaps(runs[1], first, last)
                and (not now or now.isdisjoint(ids))
                and (not before or before.isdisjoint(ids))
            ):
                _add_run(runs[0], first, last)
                return None
        in_runs = runs[0][0] or runs[1][0]
        batch = set(ids)
        if (
            "" not in batch
            and len(batch) == len(ids)
            and now.isdisjoint(batch)
            and before.isdisjoint(batch)
            and not (in_runs and any(_in_runs(runs, key) for key in batch))
        ):
            now.update(batch)
            return None
        seen: set = set()
        dup = np.zeros(len(ids), dtype=bool)
        for i, key in enumerate(ids):
            if key == "":
                continue
            if key in seen or key in now or key in before or (in_runs and _in_runs(runs, key)):
                dup[i] = True
            else:
                seen.add(key)
        now.update(seen)
        return dup if dup.any() else None

    def update(self, cols: TickColumns) -> BarUpdate:
        """Take one batch of this symbol's ticks, in arrival order."""
        st = self.settings
        d = st.interval_ms
        rejected: list[tuple[int, str, str]] = []
        dup = self._duplicates(cols)
        ts = cols.ts
        if dup is not None:
            for i in np.flatnonzero(dup).tolist():
                rejected.append((i, DUPLICATE, f"trade_id {cols.trade_id[i]} repeats an earlier tick"))
            cand = np.flatnonzero(~dup)
        else:
            cand = None
        ts_c = ts if cand is None else ts[cand]
        bars = ts_c // d
        # watermark each tick saw on arrival: running max of the ticks before it
        run_max = np.maximum.accumulate(ts_c) if len(ts_c) else ts_c
        prev_max = np.empty_like(ts_c)
        if len(ts_c):
            prev_max[0] = self.max_ts
            np.maximum(run_max[:-1], self.max_ts, out=prev_max[1:])
        late = (bars + 1) * d <= prev_max - st.allowed_lateness_ms
        if late.any():
            for j in np.flatnonzero(late).tolist():
                i = j if cand is None else int(cand[j])
                wm = int(prev_max[j]) - st.allowed_lateness_ms
                rejected.append(
                    (
                        i,
                        LATE,
                        f"ts {int(ts[i])} falls in bar {int(bars[j])} ending "
                        f"{int((bars[j] + 1) * d)} <= watermark {wm}",
                    )
                )
            keep_local = np.flatnonzero(~late)
            keep = keep_local if cand is None else cand[keep_local]
        else:
            keep_local = None
            keep = cand
        if rejected:
            rejected.sort()
        accepted = cols if keep is None else cols.take(keep)
        if len(ts_c):
            self.max_ts = max(self.max_ts, int(run_max[-1]))
        self._aggregate(accepted, bars if keep_local is None else bars[keep_local])
        seq = self._seq(accepted)
        closed = self._close(self.closed_through())
        self._rotate_ids()
        return BarUpdate(accepted, seq, rejected, closed, self.closed_through())

    def _seq(self, accepted: TickColumns) -> np.ndarray:
        m = len(accepted)
        seq = np.arange(self.seq + 1, self.seq + 1 + m, dtype=np.uint64)
        self.seq += m
        seq[accepted.trade_id != ""] = 0
        return seq

    def _aggregate(self, acc: TickColumns, bars: np.ndarray) -> None:
        m = len(acc)
        if m == 0:
            return
        ts, price, qty = acc.ts, acc.price, acc.qty
        if m == 1 or ((np.diff(bars) == 0).all() and (np.diff(ts) >= 0).all()):
            order = None
            starts = np.array([0])
        else:
            order = np.lexsort((np.arange(m), ts, bars))
            bars, ts, price, qty = bars[order], ts[order], price[order], qty[order]
            starts = np.flatnonzero(np.r_[True, bars[1:] != bars[:-1]])
        ends = np.r_[starts[1:], m] - 1
        highs = np.maximum.reduceat(price, starts)
        lows = np.minimum.reduceat(price, starts)
        notional = price * qty
        counts = np.diff(np.r_[starts, m])
        open_bars = self.open_bars
        for g, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            k = int(bars[s])
            bar = open_bars.get(k)
            # volume and notional parts are summed exactly (math.fsum) at close,
            # so a bar does not depend on how its ticks were split into batches
            if bar is None:
                open_bars[k] = [
                    int(ts[s]),
                    float(price[s]),
                    float(highs[g]),
                    float(lows[g]),
                    int(ts[e]),
                    float(price[e]),
                    [qty[s : e + 1]],
                    [notional[s : e + 1]],
                    int(counts[g]),
                ]
                continue
            if ts[s] < bar[0]:
                bar[0], bar[1] = int(ts[s]), float(price[s])
            bar[2] = max(bar[2], float(highs[g]))
            bar[3] = min(bar[3], float(lows[g]))
            if ts[e] >= bar[4]:
                bar[4], bar[5] = int(ts[e]), float(price[e])
            bar[6].append(qty[s : e + 1])
            bar[7].append(notional[s : e + 1])
            bar[8] += int(counts[g])

    def _close(self, through: int) -> list[Bar]:
        ready = sorted(k for k in self.open_bars if k <= through)
        return [self._bar(k, self.open_bars.pop(k)) for k in ready]

    def _bar(self, k: int, b: list) -> Bar:
        volume = math.fsum(np.concatenate(b[6]) if len(b[6]) > 1 else b[6][0])
        notional = math.fsum(np.concatenate(b[7]) if len(b[7]) > 1 else b[7][0])
        return Bar(
            self.symbol,
            k * self.settings.interval_ms,
            b[1],
            b[2],
            b[3],
            b[5],
            volume,
            notional / volume,
            b[8],
            self.settings.interval_ms // 1000,
        )

    def _rotate_ids(self) -> None:
        wm = self.watermark
        if wm >= self.ids_rotate_at:
            self.ids = {ex: (set(), now) for ex, (now, _) in self.ids.items()}
            self.id_runs = {ex: (([], []), now) for ex, (now, _) in self.id_runs.items()}
            self.ids_rotate_at = wm + self.settings.dedup_horizon_ms

    def flush(self) -> list[Bar]:
        """Close every open bar (end of input)."""
        return self._close(np.iinfo(np.int64).max)

    def __setstate__(self, state: dict) -> None:
        # a builder saved before trade-id runs existed: its ids are all in the sets
        state.setdefault("id_runs", {ex: (([], []), ([], [])) for ex in state.get("ids", {})})
        self.__dict__.update(state)


def _consecutive(ids: list) -> int | None:
    """``a`` when ``ids`` are exactly ``str(a), str(a + 1), ...`` (the canonical decimals), else None.

    >>> _consecutive(["7", "8", "9"]), _consecutive(["7", "9"]), _consecutive(["07", "08"]), _consecutive([])
    (7, None, None, None)
    """
    if not ids:
        return None
    try:
        a = int(ids[0])
    except ValueError:
        return None
    n = len(ids)
    if str(a) != ids[0] or str(a + n - 1) != ids[-1] or ids != list(map(str, range(a, a + n))):
        return None
    return a


def _overlaps(run: tuple[list, list], a: int, b: int) -> bool:
    """Whether [a, b] meets one of the runs."""
    starts, ends = run
    i = bisect_right(starts, b)
    return i > 0 and ends[i - 1] >= a


def _add_run(run: tuple[list, list], a: int, b: int) -> None:
    """Add [a, b] (disjoint from the runs), merged with the runs it touches."""
    starts, ends = run
    i = bisect_right(starts, a)
    if i > 0 and ends[i - 1] == a - 1:
        i -= 1
        ends[i] = b
    else:
        starts.insert(i, a)
        ends.insert(i, b)
    if i + 1 < len(starts) and starts[i + 1] == ends[i] + 1:
        ends[i] = ends[i + 1]
        del starts[i + 1], ends[i + 1]


def _in_runs(runs: tuple, key: str) -> bool:
    """Whether ``key`` is the decimal of an integer in either generation's runs."""
    try:
        k = int(key)
    except ValueError:
        return False
    if str(k) != key:
        return False
    return _overlaps(runs[0], k, k) or _overlaps(runs[1], k, k)
