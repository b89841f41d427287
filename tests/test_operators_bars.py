"""BarBuilder against a plain-Python reference of the spec's bar rules.

Reference, tick by tick in arrival order:
- duplicate: a non-empty (exchange, trade_id) already carried by an earlier
  non-duplicate tick (checked first);
- late: bar end <= watermark, watermark = max ts of the earlier accepted ticks
  minus allowed_lateness_ms;
- bars of the accepted ticks: open/close = first/last by ts (ties by arrival),
  high, low, volume, vwap = sum(p*q)/sum(q), trades.
A bar is closed once its end <= watermark; the rest come out of flush().
Results must not depend on how the stream is cut into batches.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.features.bar_builder import BarBuilder, BarSettings
from operators.features.bar_rollup import BarRollup, RollupSettings
from schemas.records import DUPLICATE, LATE, Bar, Tick
from schemas.tick_columns import TickColumns

SYMBOL = "BTC/USDT"
T0 = 1_700_000_000_000


# --------------------------------------------------------------------------- reference


@dataclass
class RefRun:
    reasons: dict[int, str] = field(default_factory=dict)  # input row -> reason
    accepted: list[int] = field(default_factory=list)  # input rows, arrival order
    bars: dict[int, Bar] = field(default_factory=dict)  # grid index -> final bar
    max_ts_after: list[int | None] = field(default_factory=list)  # after each input row


def ref_run(ticks: list[Tick], interval_ms: int, lateness_ms: int) -> RefRun:
    out = RefRun()
    seen_ids: set[tuple[str, str]] = set()
    max_ts: int | None = None
    members: dict[int, list[tuple[int, int, float, float]]] = {}
    for i, t in enumerate(ticks):
        key = (t.exchange, t.trade_id)
        if t.trade_id != "" and key in seen_ids:
            out.reasons[i] = DUPLICATE
        else:
            if t.trade_id != "":
                seen_ids.add(key)
            k = t.ts // interval_ms
            if max_ts is not None and (k + 1) * interval_ms <= max_ts - lateness_ms:
                out.reasons[i] = LATE
            else:
                out.accepted.append(i)
                max_ts = t.ts if max_ts is None else max(max_ts, t.ts)
                members.setdefault(k, []).append((t.ts, i, t.price, t.qty))
        out.max_ts_after.append(max_ts)
    for k, rows in members.items():
        rows.sort(key=lambda r: (r[0], r[1]))  # by ts, ties by arrival
        prices = [r[2] for r in rows]
        qtys = [r[3] for r in rows]
        volume = sum(qtys)
        out.bars[k] = Bar(
            SYMBOL,
            k * interval_ms,
            prices[0],
            max(prices),
            min(prices),
            prices[-1],
            volume,
            sum(p * q for p, q in zip(prices, qtys, strict=True)) / volume,
            len(rows),
        )
    return out


# --------------------------------------------------------------------------- operator run


@dataclass
class OpRun:
    reasons: dict[int, str]
    accepted: list[int]
    closed: list[list[Bar]]  # per batch
    closed_through: list[int]  # per batch
    flushed: list[Bar]


def op_run(ticks: list[Tick], cuts: list[int], st_: BarSettings) -> OpRun:
    bounds = [0, *sorted(set(cuts) - {0, len(ticks)}), len(ticks)]
    b = BarBuilder(st_, SYMBOL)
    reasons: dict[int, str] = {}
    accepted: list[int] = []
    closed, through = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        cols = TickColumns.from_ticks(ticks[lo:hi], "ticks.csv", first_arrival=lo)
        up = b.update(cols)
        assert len(up.accepted) + len(up.rejected) == hi - lo
        for row, reason, message in up.rejected:
            assert 0 <= row < hi - lo
            assert lo + row not in reasons
            assert message
            reasons[lo + row] = reason
        arrivals = up.accepted.arrival.tolist()
        assert arrivals == sorted(arrivals)
        accepted.extend(arrivals)
        closed.append(up.closed)
        through.append(up.closed_through)
    return OpRun(reasons, accepted, closed, through, b.flush())


def bar_key(bar: Bar) -> tuple:
    return (bar.symbol, bar.ts, bar.trades)


def bar_floats(bar: Bar) -> list[float]:
    return [bar.open, bar.high, bar.low, bar.close, bar.volume, bar.vwap]


def assert_bars_equal(got: list[Bar], expected: list[Bar]) -> None:
    assert [bar_key(b) for b in got] == [bar_key(b) for b in expected]
    if expected:
        np.testing.assert_allclose(
            [bar_floats(b) for b in got], [bar_floats(b) for b in expected], rtol=1e-12, atol=0
        )


def check_against_reference(ticks: list[Tick], cuts: list[int], st_: BarSettings) -> OpRun:
    ref = ref_run(ticks, st_.interval_ms, st_.allowed_lateness_ms)
    got = op_run(ticks, cuts, st_)
    assert got.reasons == ref.reasons
    assert got.accepted == ref.accepted
    assert len(got.accepted) + len(got.reasons) == len(ticks)
    # closed bars batch by batch: those whose end <= the watermark after the batch
    bounds = [0, *sorted(set(cuts) - {0, len(ticks)}), len(ticks)]
    prev = None
    for j, hi in enumerate(bounds[1:]):
        max_ts = ref.max_ts_after[hi - 1]
        assert max_ts is not None
        through = (max_ts - st_.allowed_lateness_ms) // st_.interval_ms - 1
        assert got.closed_through[j] == through
        want = [ref.bars[k] for k in sorted(ref.bars) if (prev is None or k > prev) and k <= through]
        assert_bars_equal(got.closed[j], want)
        prev = through
    want_flush = [ref.bars[k] for k in sorted(ref.bars) if prev is None or k > prev]
    assert_bars_equal(got.flushed, want_flush)
    # every bar exactly once, oldest first
    all_bars = [b for batch in got.closed for b in batch] + got.flushed
    assert_bars_equal(all_bars, [ref.bars[k] for k in sorted(ref.bars)])
    return got


# --------------------------------------------------------------------------- streams


def tick_stream(seed: int, n: int, exchanges: tuple[str, ...] = ("binance",)) -> list[Tick]:
    """Out-of-order ticks: ts ties (50 ms grid), delays up to 3 s, repeated and empty ids."""
    rng = np.random.default_rng(seed)
    base = T0 + 50 * np.sort(rng.integers(0, max(n, 40), n))
    delay = np.where(rng.random(n) < 0.25, 50 * rng.integers(1, 60, n), 0)
    ts = base - delay
    prices = np.round(100.0 + rng.normal(0.0, 0.5, n), 2)
    qtys = rng.choice(np.array([0.001, 0.5, 1.0, 2.0, 3.25]), n)
    ticks: list[Tick] = []
    for i in range(n):
        u = rng.random()
        ex = exchanges[int(rng.integers(len(exchanges)))]
        if u < 0.1 and ticks:  # a replay of an earlier trade, possibly with another ts
            src = ticks[int(rng.integers(len(ticks)))]
            if src.trade_id:
                ts_i = src.ts if rng.random() < 0.5 else int(ts[i])
                ticks.append(Tick(ts_i, SYMBOL, src.price, src.qty, "buy", src.trade_id, src.exchange))
                continue
        tid = "" if u > 0.9 else f"t{i}"
        side = ("", "buy", "sell")[int(rng.integers(3))]
        ticks.append(Tick(int(ts[i]), SYMBOL, float(prices[i]), float(qtys[i]), side, tid, ex))
    return ticks


def random_cuts(seed: int, n: int, k: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(rng.integers(1, n, k).tolist())


# --------------------------------------------------------------------------- tests


def test_reference_stream_exercises_every_rule() -> None:
    """Guard on the generator: the streams below hold late and duplicate ticks and ts ties."""
    ticks = tick_stream(1, 600)
    ref = ref_run(ticks, 1000, 0)
    reasons = list(ref.reasons.values())
    assert reasons.count(LATE) > 10
    assert reasons.count(DUPLICATE) > 10
    assert len({t.ts for t in ticks}) < len(ticks)
    assert sum(1 for t in ticks if t.trade_id == "") > 10
    assert len(ref.bars) > 10


@pytest.mark.parametrize("lateness", [0, 400, 2500])
@pytest.mark.parametrize("interval", [250, 1000])
@pytest.mark.parametrize("split", ["one", "each", "random"])
def test_bars_match_reference(lateness: int, interval: int, split: str) -> None:
    n = 500
    ticks = tick_stream(lateness + interval, n)
    cuts = {"one": [], "each": list(range(1, n)), "random": random_cuts(interval, n, 25)}[split]
    check_against_reference(ticks, cuts, BarSettings(interval_ms=interval, allowed_lateness_ms=lateness))


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 250),
    cut_fracs=st.lists(st.floats(0.0, 1.0), max_size=30),
    lateness=st.sampled_from([0, 150, 1000, 2500]),
    interval=st.sampled_from([100, 1000]),
    exchange=st.sampled_from(["binance", ""]),
)
def test_batch_split_invariance(
    seed: int, n: int, cut_fracs: list[float], lateness: int, interval: int, exchange: str
) -> None:
    """Any cut of the stream into batches gives the same verdicts and bars as the reference."""
    ticks = tick_stream(seed, n, (exchange,))
    cuts = [int(f * n) for f in cut_fracs]
    st_ = BarSettings(interval_ms=interval, allowed_lateness_ms=lateness)
    got = check_against_reference(ticks, cuts, st_)
    whole = op_run(ticks, [], st_)
    assert got.reasons == whole.reasons
    assert got.accepted == whole.accepted
    assert_bars_equal(
        [b for batch in got.closed for b in batch] + got.flushed,
        [b for batch in whole.closed for b in batch] + whole.flushed,
    )


@pytest.mark.parametrize("split", ["one", "each", "random"])
@pytest.mark.parametrize("seed", [3, 4])
def test_bars_match_reference_with_several_exchanges(seed: int, split: str) -> None:
    """One symbol traded on two exchanges: trade ids are keyed by (exchange, trade_id)."""
    n = 400
    ticks = tick_stream(seed, n, ("binance", "kraken"))
    cuts = {"one": [], "each": list(range(1, n)), "random": random_cuts(seed, n, 20)}[split]
    check_against_reference(ticks, cuts, BarSettings(interval_ms=1000, allowed_lateness_ms=0))


def _rejections(batches: list[list[Tick]]) -> list[tuple[int, str]]:
    b = BarBuilder(BarSettings(), "X")
    out, a = [], 0
    for batch in batches:
        up = b.update(TickColumns.from_ticks(batch, "t.csv", first_arrival=a))
        out.extend((a + row, reason) for row, reason, _ in up.rejected)
        a += len(batch)
    return out


def _t(ts: int, trade_id: str, exchange: str) -> Tick:
    return Tick(ts, "X", 10.0, 1.0, trade_id=trade_id, exchange=exchange)


def test_same_trade_id_on_two_exchanges_is_not_a_duplicate() -> None:
    ticks = [_t(100, "1", "a"), _t(200, "1", "b")]
    assert _rejections([ticks]) == []  # one batch
    assert _rejections([ticks[:1], ticks[1:]]) == []  # two batches


def test_ticks_without_trade_id_are_never_duplicates() -> None:
    ticks = [_t(100, "", "a"), _t(200, "", "a"), _t(300, "7", "b")]
    assert _rejections([ticks]) == []
    assert _rejections([ticks[:1], ticks[1:]]) == []


def test_repeat_is_a_duplicate_whatever_the_batch_holds() -> None:
    ticks = [_t(100, "1", "a"), _t(200, "1", "a"), _t(300, "2", "b")]
    assert _rejections([ticks]) == [(1, DUPLICATE)]
    assert _rejections([ticks[:1], ticks[1:]]) == [(1, DUPLICATE)]


def test_duplicate_is_checked_before_late() -> None:
    ticks = [_t(100, "1", "a"), _t(5000, "2", "a"), _t(100, "1", "a"), _t(200, "3", "a")]
    assert _rejections([ticks]) == [(2, DUPLICATE), (3, LATE)]
    # a late tick still registers its id: its repeat is a duplicate
    ticks = [_t(5000, "1", "a"), _t(100, "2", "a"), _t(6000, "2", "a")]
    assert _rejections([ticks]) == [(1, LATE), (2, DUPLICATE)]


def test_allowed_lateness_keeps_a_closed_bar_open() -> None:
    ticks = [
        Tick(100, "X", 10.0, 1.0, trade_id="1"),
        Tick(1500, "X", 11.0, 1.0, trade_id="2"),
        Tick(900, "X", 12.0, 2.0, trade_id="3"),  # bar 0 ends 1000 <= 1500 - L only for L <= 500
    ]
    for lateness, late in [(0, True), (500, True), (501, False), (2000, False)]:
        b = BarBuilder(BarSettings(interval_ms=1000, allowed_lateness_ms=lateness), "X")
        up = b.update(TickColumns.from_ticks(ticks, "t.csv"))
        assert [r[:2] for r in up.rejected] == ([(2, LATE)] if late else [])
        bars = up.closed + b.flush()
        assert [bar.ts for bar in bars] == [0, 1000]
        np.testing.assert_allclose(bars[0].volume, 1.0 if late else 3.0, rtol=1e-12)
        np.testing.assert_allclose(bars[0].close, 10.0 if late else 12.0, rtol=1e-12)


def test_equal_ts_open_and_close_follow_arrival_across_batches() -> None:
    ticks = [
        Tick(500, "X", 3.0, 1.0, trade_id="1"),
        Tick(200, "X", 1.0, 1.0, trade_id="2"),
        Tick(200, "X", 2.0, 1.0, trade_id="3"),  # same ts, later arrival: not the open
        Tick(500, "X", 4.0, 1.0, trade_id="4"),  # same ts as the first, later arrival: the close
    ]
    for cuts in ([], [1], [2], [3], [1, 2, 3]):
        got = check_against_reference(ticks, cuts, BarSettings(interval_ms=1000))
        (bar,) = [b for batch in got.closed for b in batch] + got.flushed
        np.testing.assert_allclose([bar.open, bar.close, bar.high, bar.low], [1.0, 4.0, 4.0, 1.0], rtol=1e-12)


@pytest.mark.parametrize("cut", [1, 150, 399])
def test_pickle_round_trip_between_batches(cut: int) -> None:
    """A restored builder (open bars, watermark, remembered ids) continues like the original."""
    ticks = tick_stream(9, 400, ("binance", "kraken"))
    st_ = BarSettings(interval_ms=1000, allowed_lateness_ms=400)
    b = BarBuilder(st_, SYMBOL)
    b.update(TickColumns.from_ticks(ticks[:cut], "t.csv", first_arrival=0))
    clone = pickle.loads(pickle.dumps(b))
    rest = TickColumns.from_ticks(ticks[cut:], "t.csv", first_arrival=cut)
    u1, u2 = b.update(rest), clone.update(rest)
    assert [r[:2] for r in u1.rejected] == [r[:2] for r in u2.rejected]
    assert u1.accepted.arrival.tolist() == u2.accepted.arrival.tolist()
    assert u1.closed_through == u2.closed_through
    assert_bars_equal(u2.closed + clone.flush(), u1.closed + b.flush())


@pytest.mark.parametrize("kw", [{"interval_ms": 0}, {"allowed_lateness_ms": -1}, {"dedup_horizon_ms": -1}])
def test_bar_settings_are_validated(kw: dict) -> None:
    with pytest.raises(ValueError):
        BarSettings(**kw)


# --------------------------------------------------------------------------- trade-id runs


def _id_batches(seed: int, n_batches: int) -> list[list[Tick]]:
    """Batches of one exchange's ticks, ts rising 400 ms a tick: most batches a run of consecutive
    decimal ids (fresh, adjacent, or overlapping earlier ones), some scattered ids, repeats,
    non-canonical spellings of the same numbers ("07", "+7", " 7") and empty ids."""
    rng = np.random.default_rng(seed)
    batches, ts, next_id = [], T0, 1
    for _ in range(n_batches):
        m = int(rng.integers(1, 12))
        kind = rng.random()
        if kind < 0.5:  # the next run
            ids = [str(i) for i in range(next_id, next_id + m)]
            next_id += m + int(rng.integers(0, 2))  # sometimes a gap
        elif kind < 0.7:  # a run over earlier ids (a replay)
            a = int(rng.integers(max(1, next_id - 30), next_id + 1))
            ids = [str(i) for i in range(a, a + m)]
        else:  # anything
            pool = [str(int(rng.integers(1, next_id + 5))) for _ in range(4)]
            pool += ["07", "+7", " 7", "x1", "", "-3", "0"]
            ids = [pool[int(rng.integers(len(pool)))] for _ in range(m)]
        batch = []
        for tid in ids:
            ts += 400
            batch.append(Tick(ts, "X", 10.0, 1.0, trade_id=tid, exchange="ex"))
        batches.append(batch)
    return batches


def _verdicts(batches: list[list[Tick]], horizon_ms: int, b: BarBuilder | None = None) -> list:
    b = b or BarBuilder(BarSettings(interval_ms=1000, dedup_horizon_ms=horizon_ms), "X")
    out = []
    for batch in batches:
        up = b.update(TickColumns.from_ticks(batch, "t.csv"))
        out.append([(row, reason) for row, reason, _ in up.rejected])
    return out


@pytest.mark.parametrize("horizon_ms", [2_000, 15_000, 600_000])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_trade_id_runs_give_the_verdicts_of_plain_sets(seed: int, horizon_ms: int, monkeypatch) -> None:
    """Runs of consecutive ids are a compact form of the id sets: the same duplicates, the same
    forgetting after the horizon, as with every id kept as a string."""
    import operators.features.bar_builder as bb

    batches = _id_batches(seed, 400)
    got = _verdicts(batches, horizon_ms)
    monkeypatch.setattr(bb, "_consecutive", lambda ids: None)  # every id in the sets
    want = _verdicts(batches, horizon_ms)
    assert got == want
    assert sum(len(v) for v in got) > 20  # the streams do hold duplicates


def test_consecutive_ids_are_kept_as_one_run() -> None:
    b = BarBuilder(BarSettings(interval_ms=1000), "X")
    for k in range(50):
        ids = range(1 + 100 * k, 1 + 100 * (k + 1))
        b.update(TickColumns.from_ticks([_t(T0 + i, str(i), "a") for i in ids], "t.csv"))
    (now, before), runs = b.ids["a"], b.id_runs["a"]
    assert now == set() and before == set()
    assert runs == (([101], [5000]), ([1], [100]))  # the first batch's ids rotated at the first watermark
    repeat = [_t(T0 + 6000, "4999", "a"), _t(T0 + 6001, "5001", "a")]
    up = b.update(TickColumns.from_ticks(repeat, "t.csv"))
    assert [r[:2] for r in up.rejected] == [(0, DUPLICATE)]


def test_a_builder_pickled_mid_run_or_before_runs_existed_resumes() -> None:
    batches = _id_batches(5, 200)
    whole = _verdicts(batches, 15_000)
    b = BarBuilder(BarSettings(interval_ms=1000, dedup_horizon_ms=15_000), "X")
    head = _verdicts(batches[:100], 15_000, b)
    assert head + _verdicts(batches[100:], 15_000, pickle.loads(pickle.dumps(b))) == whole
    # a snapshot from before the runs: ids only in the sets
    old = BarBuilder(BarSettings(interval_ms=1000, dedup_horizon_ms=15_000), "X")
    old.ids = {"ex": ({"1", "2"}, set())}
    del old.id_runs
    resumed = pickle.loads(pickle.dumps(old))
    up = resumed.update(TickColumns.from_ticks([_t(T0, "2", "ex"), _t(T0 + 1, "3", "ex")], "t.csv"))
    assert [r[:2] for r in up.rejected] == [(0, DUPLICATE)]


# -- coarser resolutions (BarRollup) -------------------------------------------


def _base_bars(rng: np.random.Generator, n: int, d: int) -> list[Bar]:
    """n finest bars of one symbol on a grid of d ms, about a third of the indices missing."""
    ks = np.sort(rng.choice(np.arange(3 * n // 2), size=n, replace=False))
    out = []
    for k in ks:
        o, c = rng.uniform(90, 110, 2)
        h, lo = max(o, c) + rng.uniform(0, 2), min(o, c) - rng.uniform(0, 2)
        vol = float(rng.uniform(0.1, 5))
        out.append(
            Bar("X", int(k) * d, o, h, lo, c, vol, rng.uniform(lo, h), int(rng.integers(1, 9)), d // 1000)
        )
    return out


@pytest.mark.parametrize("m", [2, 5, 60])
def test_rolled_up_bars_equal_a_batch_aggregation_of_the_finest(m):
    """Whatever the chunking and the progress reports: every coarse bar equals the aggregation of
    its window's finest bars (first open, max high, min low, last close, sums, volume-weighted vwap),
    each emitted once, in order, and only once its window is closed; a pickle round trip mid-way
    changes nothing."""
    rng = np.random.default_rng(m)
    d = 1000
    bars = _base_bars(rng, 600, d)
    roll = BarRollup(RollupSettings(m * d, d), "X")
    got: list[Bar] = []
    i = 0
    while i < len(bars):
        chunk = bars[i : i + int(rng.integers(1, 40))]
        i += len(chunk)
        got += roll.update(chunk)
        # the finest grid is closed somewhere before the next bar (never at or past it)
        following = bars[i].ts // d if i < len(bars) else chunk[-1].ts // d + 10
        through = min(chunk[-1].ts // d + int(rng.integers(-1, 3)), following - 1)
        got += roll.advance(through)
        assert all((b.ts + m * d) // d - 1 <= max(through, chunk[-1].ts // d) for b in got)
        if i % 7 == 0:
            roll = pickle.loads(pickle.dumps(roll))
    got += roll.flush()
    df = pd.DataFrame(
        [
            (b.ts // (m * d), b.open, b.high, b.low, b.close, b.volume, b.vwap * b.volume, b.trades)
            for b in bars
        ],
        columns=["j", "open", "high", "low", "close", "volume", "notional", "trades"],
    )
    want = df.groupby("j").agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
        notional=("notional", "sum"),
        trades=("trades", "sum"),
    )
    assert [b.ts for b in got] == [int(j) * m * d for j in want.index]
    assert {b.interval for b in got} == {m}
    for b, (_, w) in zip(got, want.iterrows(), strict=True):
        assert (b.open, b.high, b.low, b.close, b.trades) == (w.open, w.high, w.low, w.close, w.trades)
        assert math.isclose(b.volume, w.volume, rel_tol=1e-12)
        assert math.isclose(b.vwap, w.notional / w.volume, rel_tol=1e-12)


def test_a_rollup_needs_a_coarser_multiple_of_the_finest_interval():
    with pytest.raises(ValueError, match="multiple of base_ms"):
        RollupSettings(90_000, 60_000)
    with pytest.raises(ValueError, match="multiple of base_ms"):
        RollupSettings(60_000, 60_000)
