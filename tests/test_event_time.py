"""Event time kept sane: far-dated ticks, symbols far behind, capacity, O(1) gaps, partition merge."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flow_harness import run_files

from operators.features.correlation_grid import CorrelationGrid, CorrelationSettings
from operators.features.event_time import PartitionMerge, SymbolCapacity, TimeBounds, TimeGuard
from operators.features.grid_returns import GridReturns
from operators.features.symbol_features import FeatureSettings, SymbolFeatures
from schemas.records import Bar, Tick
from schemas.tick_columns import TickColumns

T = 1_700_000_000_000
HEADER = "ts,symbol,price,qty,side,trade_id,exchange\n"
SMALL = ["features.window=20", "features.corr_window=20", "features.corr_every=5"]


def _ticks_csv(
    path, n: int = 3000, symbols=("BTC/USDT", "ETH/USDT"), start: int = T, step: int = 100
) -> list:
    rng = random.Random(5)
    rows = []
    price = dict.fromkeys(symbols, 100.0)
    for i in range(n):
        s = symbols[i % len(symbols)]
        price[s] *= 1 + rng.gauss(0, 0.001)
        rows.append([start + i * step, s, round(price[s], 6), 0.5, "buy", str(i), "binance"])
    _write(path, rows)
    return rows


def _write(path, rows) -> None:
    with open(path, "w") as fh:
        fh.write(HEADER)
        for r in rows:
            fh.write(",".join(str(v) for v in r) + "\n")


# -- defect 1: far-dated ticks ------------------------------------------------------------------


def test_a_bit_flipped_timestamp_is_a_time_dead_letter_and_changes_nothing_else(tmp_path):
    """ts 1700000000261 -> 5700000000261 once crashed the flow (MemoryError filling the gap)."""
    clean, flipped = tmp_path / "clean.csv", tmp_path / "flipped.csv"
    rows = _ticks_csv(clean)
    bad = list(rows[1500])
    bad[0] = int("5" + str(bad[0])[1:])  # the leading digit's bit flip
    bad[5] = "flipped"
    _write(flipped, [*rows[:1500], bad, *rows[1500:]])
    got, read = run_files([str(flipped)], SMALL)
    want, _ = run_files([str(clean)], SMALL)
    dead = got["dead_letters"]
    assert read == len(rows) + 1 == len(got["ticks"]) + len(dead)
    assert dead["reason"].tolist() == ["time"]
    assert dead["source"].tolist() == [f"{flipped}:1502"]
    assert "ahead of the newest tick" in dead["message"][0]
    assert "features.max_ahead_ms" in dead["message"][0]
    for table in ("bars", "features", "correlations"):
        assert got[table].equals(want[table]), table


def test_a_new_symbol_dated_1970_is_a_time_dead_letter(tmp_path):
    path = tmp_path / "old.csv"
    rows = _ticks_csv(tmp_path / "base.csv")
    _write(path, [*rows[:100], [261, "SOL/USDT", 20.0, 1.0, "sell", "x1", "binance"], *rows[100:]])
    got, read = run_files([str(path)], SMALL)
    dead = got["dead_letters"]
    assert dead["reason"].tolist() == ["time"]
    assert "first tick of new symbol SOL/USDT" in dead["message"][0]
    assert read == len(got["ticks"]) + len(dead)
    assert set(got["bars"]["symbol"]) == {"BTC/USDT", "ETH/USDT"}


def test_a_real_jump_is_confirmed_by_the_ticks_after_it_and_the_bounds_are_settings(tmp_path):
    """A 30-day gap followed by trading is data (and costs O(1) memory); unconfirmed, a dead letter."""
    path = tmp_path / "gap.csv"
    rows = _ticks_csv(tmp_path / "base.csv", n=400)
    month = 30 * 86_400_000
    later = [[r[0] + month, *r[1:6], "binance"] for r in rows]
    for i, r in enumerate(later):
        r[5] = f"later-{i}"
    _write(path, rows + later)
    got, _ = run_files([str(path)], [*SMALL, "features.bar_interval=60"])
    assert len(got["dead_letters"]) == 0
    assert len(got["ticks"]) == 800
    assert got["bars"]["ts"].max() > rows[0][0] + month - 60_000
    got, read = run_files([str(path)], [*SMALL, "features.confirm_ticks=1000"])
    dead = got["dead_letters"]
    assert (dead["reason"] == "time").sum() == len(later) == read - len(got["ticks"])
    assert dead["message"].str.contains("features.max_ahead_ms = 10000").all()
    got, _ = run_files(
        [str(path)], [*SMALL, "features.confirm_ticks=1000", "features.max_ahead_ms=3000000000"]
    )
    assert len(got["dead_letters"]) == 0


def test_time_guard_first_tick_sets_the_start_and_a_rejected_new_symbol_stays_new():
    g = TimeGuard(TimeBounds(max_ahead_ms=1_000, max_behind_ms=1_000))
    cols = TickColumns.from_ticks([Tick(t, "A/B", 1.0, 1.0) for t in (5_000, 5_500, 7_000, 6_400)], "f")
    kept, rejected = g.check([cols])
    assert kept[0].ts.tolist() == [5_000, 5_500, 6_400]
    assert [r[1:3] for r in rejected] == [(2, "time")]
    late_new = TickColumns.from_ticks([Tick(t, "C/D", 1.0, 1.0) for t in (5_000, 5_500, 5_000)], "f")
    kept, rejected = g.check([late_new])
    assert kept[0].ts.tolist() == [5_500, 5_000]  # once one tick is in, the symbol is known
    assert [r[1:3] for r in rejected] == [(0, "time")]
    # one chunk's batches are checked in arrival order across symbols
    g = TimeGuard(TimeBounds(max_ahead_ms=1_000, max_behind_ms=1_000))
    a = TickColumns.from_ticks([Tick(t, "A/B", 1.0, 1.0) for t in (1_000, 9_000)], "f")
    a = a.take(np.arange(2))
    a = TickColumns(
        *[getattr(a, f) for f in ("symbol", "ts", "price", "qty", "side", "trade_id", "exchange")],
        "f",
        np.array([0, 3]),
    )
    c = TickColumns.from_ticks([Tick(t, "C/D", 1.0, 1.0) for t in (1_500, 1_800)], "f", first_arrival=1)
    kept, rejected = g.check([a, c])
    assert rejected == [] and [h.ts.tolist() for h in g.held] == [[9_000]]  # 7.2 s ahead: held back
    assert [(r[0].symbol, *r[1:3]) for r in g.flush()] == [("A/B", 0, "time")]  # never confirmed
    assert [k.ts.tolist() for k in kept] == [[1_000], [1_500, 1_800]]
    with pytest.raises(ValueError, match="max_symbols"):
        TimeBounds(max_symbols=0)


# -- defect 4: symbol capacity -----------------------------------------------------------------------


def test_symbols_beyond_the_capacity_are_capacity_dead_letters(tmp_path):
    path = tmp_path / "many.csv"
    rows = _ticks_csv(tmp_path / "base.csv", n=2000)
    junk = [[T + 50 * i + 7, f"J{i:04d}/USDT", 1.0, 1.0, "buy", f"j{i}", "binance"] for i in range(300)]
    mixed = []
    for i, r in enumerate(rows):
        mixed.append(r)
        if i % 6 == 0 and junk:
            mixed.append(junk.pop(0))
    mixed.extend(junk)
    _write(path, mixed)
    got, read = run_files([str(path)], [*SMALL, "features.max_symbols=12"])
    dead = got["dead_letters"]
    assert read == len(mixed) == len(got["ticks"]) + len(dead)
    assert set(dead["reason"]) == {"capacity"}
    assert got["ticks"]["symbol"].nunique() == 12
    assert len(dead) == 300 - 10
    assert "features.max_symbols" in dead["message"][0]
    cap = SymbolCapacity(1)
    assert [cap.admit("A/B"), cap.admit("C/D"), cap.admit("A/B")] == [True, False, True]


# -- gaps in O(1) ---------------------------------------------------------------------------------


def test_grid_returns_report_a_gap_as_a_count():
    g = GridReturns()
    assert g.update(0, 1.0) is None
    assert g.update(10**15, 2.0)[0] == 10**15 - 1
    assert g.extend_to(2 * 10**15) == 10**15


def test_features_across_a_gap_equal_the_row_by_row_definition():
    """Zero returns of a gap enter the windows (at most W of them) and ADWIN (every one)."""
    st = FeatureSettings(bar_interval_ms=1, window=10)
    fast = SymbolFeatures(st)
    closes = [100.0 * (1.01 ** ((i * 7) % 5)) for i in range(60)]
    idx = list(range(30)) + [30 + 5_000 + i for i in range(30)]
    rows = [fast.update(Bar("A/B", k, 0, 0, 0, c, 1, c, 1)) for k, c in zip(idx, closes, strict=True)]
    # the same series with every gap bar present at the previous close
    full = SymbolFeatures(st)
    by_k = dict(zip(idx, closes, strict=True))
    last, want, drift, seen = None, {}, {}, 0
    for k in range(idx[-1] + 1):
        c = by_k.get(k, last)
        f = full.update(Bar("A/B", k, 0, 0, 0, c, 1, c, 1))
        last = c
        seen |= 0 if f is None else f.drift
        if k in by_k:
            want[k], drift[k], seen = f, seen, 0  # the flag covers every update since the last row
    for k, f in zip(idx, rows, strict=True):
        w = want[k]
        assert (f is None) == (w is None)
        if f is not None:
            for name in ("ret", "volatility", "entropy", "var95", "es95", "qvar95"):
                assert getattr(f, name) == pytest.approx(getattr(w, name), rel=1e-9, abs=1e-12), (k, name)
            assert f.drift == drift[k]


def test_correlation_grid_jumps_a_long_common_gap_exactly():
    """A stretch where every symbol is in a gap is jumped; the output equals the row-by-row grid."""
    st = CorrelationSettings(bar_interval_ms=1, window=5, every=3)
    rng = np.random.default_rng(3)

    def feed(grid, gap):
        out = []
        for k in list(range(20)) + list(range(20 + gap, 40 + gap)):
            for sym in ("A/B", "C/D"):
                out.extend(grid.update(sym, [(k, float(rng.lognormal()))], k))
        out.extend(grid.finish())
        return out

    rng = np.random.default_rng(3)
    jumped = feed(CorrelationGrid(st), 3 * 10**11)  # same phase of `every` as 60
    rng = np.random.default_rng(3)
    small = feed(CorrelationGrid(st), 60)
    assert len(jumped) == len(small) > 0
    assert [round(c.corr, 12) for c in jumped] == [round(c.corr, 12) for c in small]


# -- defect 3: partitions merged in event time -----------------------------------------------------


def _spread(ts: list[int], parts: int, block: int, symbol: str = "A/B") -> dict[int, list[TickColumns]]:
    """The ticks in blocks of ``block``, round robin over partitions, in chunks of random size."""
    by_part: dict[int, list[Tick]] = {p: [] for p in range(parts)}
    for i, t in enumerate(ts):
        by_part[(i // block) % parts].append(Tick(t, symbol, 1.0 + i, 1.0, trade_id=str(i)))
    return {p: ticks for p, ticks in by_part.items()}


@pytest.mark.parametrize("seed", range(8))
def test_partition_merge_does_not_depend_on_interleaving(seed):
    rng = random.Random(seed)
    ts = sorted(rng.randrange(0, 50_000) for _ in range(3000))
    by_part = _spread(ts, 3, rng.choice([1, 7, 500]))
    merge = PartitionMerge(3)
    queues = {p: list(ticks) for p, ticks in by_part.items()}
    offsets = dict.fromkeys(queues, 0)
    out: list[TickColumns] = []
    while any(queues.values()) or len(merge.caught_up) < 3:
        p = rng.choice([q for q in queues if queues[q] or q not in merge.caught_up])
        n = rng.randint(1, 400)
        chunk, queues[p] = queues[p][:n], queues[p][n:]
        batch = [TickColumns.from_ticks(chunk, f"t[{p}]", offsets[p])] if chunk else []
        offsets[p] += len(chunk)
        out.extend(merge.add(p, batch, caught_up=not queues[p]))
    got = np.concatenate([c.ts for c in out])
    assert got.tolist() == ts
    assert merge.stragglers == 0


@pytest.mark.parametrize("seed", range(4))
def test_partition_merge_keeps_every_tick_once_when_partitions_are_out_of_order(seed):
    """One symbol over 3 partitions, each out of event-time order: every tick comes out once.

    The heap merge of out-of-order partitions once took every row from the
    last partition (a late-bound rank): ticks lost and repeated, or an
    IndexError that ended ``qbtc stream`` on a fuzzed topic.
    """
    rng = random.Random(seed)
    ts = [rng.randrange(0, 50_000) for _ in range(600)]  # not sorted
    by_part = _spread(ts, 3, rng.choice([1, 7, 50]))
    merge = PartitionMerge(3)
    out: list[TickColumns] = []
    for p, ticks in by_part.items():
        out.extend(merge.add(p, [TickColumns.from_ticks(ticks, f"t[{p}]", 0)], caught_up=True))
    got = sorted(
        (o, int(t), float(x)) for c in out for o, t, x in zip([c.origin] * len(c), c.ts, c.price, strict=True)
    )
    want = sorted((f"t[{p}]", t.ts, t.price) for p, ticks in by_part.items() for t in ticks)
    assert got == want


@pytest.mark.parametrize("seed", range(5))
def test_adwin_zero_runs_equal_one_update_at_a_time(seed):
    """The fast zero path of the drift flag leaves ADWIN exactly as single updates do."""
    from operators.features.drift_flag import DriftFlag

    rng = random.Random(seed)
    slow, fast = DriftFlag(), DriftFlag()
    flags_slow, flags_fast = [], []
    for _ in range(60):
        if rng.random() < 0.5:
            x = rng.choice([0.0, 1e-4, 1e-2, 0.05]) * rng.random()
            for _ in range(rng.randint(1, 50)):
                slow.update(x)
                fast.update(x)
        else:
            n = rng.randint(1, 3000)
            for _ in range(n):
                slow.update(0.0)
            fast.update_zeros(n)
        flags_slow.append(slow.take())
        flags_fast.append(fast.take())
        a, b = slow._adwin, fast._adwin
        state = [(d.width, d.total, d.variance, d.n_detections) for d in (a, b)]
        assert state[0] == state[1]
    assert flags_slow == flags_fast and sum(flags_slow) > 0


def test_huge_amounts_are_value_dead_letters_not_a_bar_sum_overflow(tmp_path):
    """Two ticks of one bar with notionals near 1e308 made math.fsum raise OverflowError in the flow."""
    path = tmp_path / "huge.csv"
    rows = _ticks_csv(tmp_path / "base.csv", n=200)
    huge = [
        [rows[50][0], "BTC/USDT", 1e300, 1e8, "buy", "h1", "binance"],
        [rows[50][0] + 1, "BTC/USDT", 1e300, 1e8, "buy", "h2", "binance"],
        [rows[50][0] + 2, "BTC/USDT", 1.0, 1e250, "buy", "h3", "binance"],
        [rows[50][0] + 3, "BTC/USDT", 1e150, 1e40, "buy", "h4", "binance"],
    ]
    _write(path, [*rows[:51], *huge, *rows[51:]])
    got, read = run_files([str(path)], SMALL)
    dead = got["dead_letters"]
    assert read == len(got["ticks"]) + len(dead) == len(rows) + 4
    assert sorted(dead["payload"].map(lambda p: p.split(b",")[5]).tolist()) == [b"h1", b"h2", b"h3"]
    assert set(dead["reason"]) == {"value"}
    assert dead["message"].str.contains("above 1e+200", regex=False).all()
    assert np.isfinite(got["bars"][["volume", "vwap"]].to_numpy()).all()


def _cols(symbol: str, ts: list[int], arrival: list[int]) -> TickColumns:
    base = TickColumns.from_ticks([Tick(t, symbol, 1.0, 1.0) for t in ts], "f")
    return TickColumns(
        symbol, base.ts, base.price, base.qty, base.side, base.trade_id, base.exchange, "f", np.array(arrival)
    )


@pytest.mark.parametrize("seed", range(6))
def test_time_guard_shortcut_agrees_with_the_arrival_order_check(seed, monkeypatch):
    """The per-batch shortcut accepts only what the merged arrival-order check accepts."""
    bounds = TimeBounds(max_ahead_ms=2_000, max_behind_ms=5_000, confirm_ticks=2)

    def chunks():
        rng, arrival, t = random.Random(seed), 0, 100_000
        for _ in range(40):
            by_symbol: dict[str, list] = {}
            for _ in range(rng.randint(1, 60)):
                t += rng.choice([0, 1, 5, 50, 300, 3_000])
                jump = rng.choice([0] * 20 + [4_000, -8_000, 90_000])
                by_symbol.setdefault(f"S{rng.randrange(6)}/USDT", []).append((t + jump, arrival))
                arrival += 1
            yield [_cols(sym, [x for x, _ in rows], [a for _, a in rows]) for sym, rows in by_symbol.items()]

    def run(shortcut: bool):
        if not shortcut:
            monkeypatch.setattr(TimeGuard, "_within", lambda self, batches: False)
        g = TimeGuard(bounds)
        out = []
        for batches in chunks():
            kept, rejected = g.check(batches)
            out.append(
                ([(k.symbol, k.ts.tolist()) for k in kept], [(r[0].symbol, r[1], r[3]) for r in rejected])
            )
        return out, g.newest, sorted(g.symbols)

    fast = run(True)
    slow = run(False)
    assert fast == slow
    assert any(rejected for _, rejected in fast[0])  # the input does exercise the bounds


def test_corrupt_timestamps_in_a_row_hours_apart_do_not_confirm_a_jump():
    """Three ticks far ahead in time order but hours apart are corrupt, not a jump (a fuzzed file once
    moved its clock a day ahead that way, and 72% of the rest became ``late`` dead letters)."""
    guard = TimeGuard(TimeBounds(max_ahead_ms=1000, confirm_ticks=3))
    hour = 3_600_000
    ts = [10_000, 10_100, 10_000 + hour, 10_000 + 5 * hour, 10_000 + 9 * hour, 10_200, 10_300]
    kept, rejected = guard.check([TickColumns.from_ticks([Tick(t, "A/B", 1.0, 1.0) for t in ts], "f")])
    assert [t for c in kept for t in c.ts.tolist()] == [10_000, 10_100, 10_200, 10_300]
    assert sorted(r[1] for r in rejected) == [2, 3, 4] and {r[2] for r in rejected} == {"time"}
    close = [10_000, 10_000 + hour, 10_500 + hour, 11_000 + hour, 11_100 + hour]  # a real jump: kept
    kept, rejected = TimeGuard(TimeBounds(max_ahead_ms=1000, confirm_ticks=3)).check(
        [TickColumns.from_ticks([Tick(t, "A/B", 1.0, 1.0) for t in close], "f")]
    )
    assert [t for c in kept for t in c.ts.tolist()] == close and rejected == []
