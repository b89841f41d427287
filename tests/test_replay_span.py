"""``--from-ts``/``--to-ts`` at the readers: tick and candle files keep ``from_ts <= ts < to_ts``.

Records outside the span are skipped and counted (``skipped``), never dead
letters; records that cannot be read stay dead letters wherever they sit;
resuming at a chunk's ``resume_at`` gives exactly the rest.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from schemas.records import DUPLICATE, PARSE, SCHEMA, VALUE
from sources.candle_files import CandleFileReader, CandleSettings
from sources.tick_files import TickFileReader
from sources.time_span import TimeSpan

T = 1_700_000_000_000
S = 1000
F, U = T + 100 * S, T + 400 * S  # keeps ticks 100..399
M = 60_000
T0 = 1_618_951_500_000  # on the 5-minute grid


def _write(path, lines: list[str]) -> str:
    body = ("\n".join(lines) + "\n").encode()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:  # closed: 3.12 flushes no
        f.write(body)  # gzip buffer of a file object only collected
    return str(path)


# -- ticks -----------------------------------------------------------------------


def _tick_file(path, n: int, unreadable: bool = False) -> str:
    """``n`` ticks a second apart from T, two symbols, with a value-bad tick outside and one inside F..U."""
    rows = [(T + i * S, f"S{i % 2}/USDT", 1.5) for i in range(n)]
    rows.insert(50, (T + 5 * S + 1, "S0/USDT", -1.0))  # outside the span: skipped, not a dead letter
    rows.insert(300, (F + 1, "S1/USDT", -1.0))  # inside: a value dead letter
    if str(path).removesuffix(".gz").endswith(".jsonl"):
        lines = [json.dumps({"ts": t, "symbol": s, "price": p, "qty": 2}) for t, s, p in rows]
        bad = "{"
    else:
        lines = ["ts,symbol,price,qty"] + [f"{t},{s},{p},2" for t, s, p in rows]
        bad = "x,y"
    if unreadable:
        lines.insert(len(lines) // 2, bad)  # its block goes the slow path; a dead letter whatever the span
    return _write(path, lines)


def _ticks(chunks) -> list[int]:
    return sorted(int(t) for c in chunks for b in c.batches for t in b.ts)


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.jsonl", "t.jsonl.gz"])
@pytest.mark.parametrize("unreadable", [False, True])
def test_ticks_keep_from_inclusive_to_exclusive(tmp_path, name, unreadable, monkeypatch):
    path = _tick_file(tmp_path / name, 600, unreadable)
    if name.startswith("t.csv") and not unreadable:

        def no_slow_path(*args):
            msg = "a clean CSV block is filtered on the fast path"
            raise AssertionError(msg)

        monkeypatch.setattr(TickFileReader, "_slow", no_slow_path)
    reader = TickFileReader(path, "x", lambda: 0, span=TimeSpan(F, U))
    chunks = list(reader.chunks())
    ts = _ticks(chunks)
    assert ts == [T + i * S for i in range(100, 400)]
    assert ts[0] == F and ts[-1] == U - S  # from inclusive, to exclusive
    dead = [d for c in chunks for d in c.dead]
    assert [(d.reason, "-1.0" in d.message) for d in dead if d.reason == VALUE] == [(VALUE, True)]
    assert len(dead) == 1 + unreadable
    assert {d.reason for d in dead} <= {VALUE, SCHEMA, PARSE}
    assert sum(c.skipped for c in chunks) == 600 - 300 + 1
    assert sum(c.records for c in chunks) == len(ts) + len(dead)


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_ticks_fast_and_slow_path_skip_the_same(tmp_path, name):
    span = TimeSpan(F, U)
    fast = list(TickFileReader(_tick_file(tmp_path / name, 600), "x", lambda: 0, span=span).chunks())
    slow_path = _tick_file(tmp_path / f"slow-{name}", 600, unreadable=True)
    slow = list(TickFileReader(slow_path, "x", lambda: 0, span=span).chunks())
    assert len(fast) == len(slow) == 1  # one block: the unreadable line sends all of it the slow way
    assert _ticks(fast) == _ticks(slow)
    assert fast[0].skipped == slow[0].skipped == 301
    assert fast[0].records + 1 == slow[0].records


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.jsonl"])
@pytest.mark.parametrize("span", [TimeSpan(from_ts=T + 10**9), TimeSpan(to_ts=T)], ids=["after", "before"])
def test_ticks_span_that_excludes_everything(tmp_path, name, span):
    path = _tick_file(tmp_path / name, 3000, unreadable=True)
    chunks = list(TickFileReader(path, "x", lambda: 0, block_bytes=4096, span=span).chunks())
    assert len(chunks) > 5 and _ticks(chunks) == []
    dead = [d for c in chunks for d in c.dead]
    assert [d.reason for d in dead] in ([SCHEMA], [PARSE])  # only the unreadable line
    assert sum(c.skipped for c in chunks) == 3000 + 2
    assert sum(c.records for c in chunks) == 1


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.jsonl.gz"])
def test_ticks_resume_with_a_span_reads_exactly_the_rest(tmp_path, name):
    path = _tick_file(tmp_path / name, 3000, unreadable=True)
    span = TimeSpan(T + 700 * S, T + 2100 * S)
    reader = TickFileReader(path, "x", lambda: 0, block_bytes=4096, span=span)
    chunks = list(reader.chunks())
    assert len(chunks) > 5 and _ticks(chunks) == [T + i * S for i in range(700, 2100)]
    for k, chunk in enumerate(chunks):
        rest = list(reader.chunks(skip_lines=chunk.resume_at))
        assert _ticks(rest) == _ticks(chunks[k + 1 :])
        assert [d.source for c in rest for d in c.dead] == [d.source for c in chunks[k + 1 :] for d in c.dead]
        assert sum(c.skipped for c in rest) == sum(c.skipped for c in chunks[k + 1 :])


# -- candles ---------------------------------------------------------------------


def _candle_rows(symbols, n: int, seed: int = 1) -> list[tuple]:
    """Random-walk 1m candles from T0, ``n`` per symbol, by symbol then time."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in symbols:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
        for k, c in enumerate(close):
            o = close[k - 1] if k else c
            rows.append((s, T0 + k * M, o, max(o, c) * 1.001, min(o, c) * 0.999, c, 1.0 + k))
    return rows


def _candle_file(path, rows) -> str:
    if str(path).removesuffix(".gz").endswith(".json"):
        return _write(path, [json.dumps([list(r[1:]) for r in rows])])
    return _write(
        path, ["symbol,open_time_ms,open,high,low,close,volume"] + [",".join(map(str, r)) for r in rows]
    )


def _candles(path, span: TimeSpan | None = None, interval_ms: int = M, chunk_rows: int = 50_000):
    settings = CandleSettings(interval_ms, "x", chunk_rows, span or TimeSpan())
    reader = CandleFileReader(str(path), settings, lambda: 0)
    chunks = list(reader.chunks())
    return [b for c in chunks for b in c.bars], [d for c in chunks for d in c.dead], chunks


@pytest.mark.parametrize("name", ["c.csv", "c.csv.gz", "BTC_USDT-1m.json", "BTC_USDT-1m.json.gz"])
def test_candles_keep_from_inclusive_to_exclusive(tmp_path, name):
    symbols = ["BTC/USDT"] if ".json" in name else ["AAVEUSDT", "BTCUSDT", "ETHUSDT"]
    rows = _candle_rows(symbols, 60)
    path = _candle_file(tmp_path / name, rows)
    every, _, _ = _candles(path)
    bars, dead, chunks = _candles(path, TimeSpan(T0 + 10 * M, T0 + 25 * M))
    assert dead == []
    assert bars == [b for b in every if T0 + 10 * M <= b.ts < T0 + 25 * M]
    assert {b.ts for b in bars} == {T0 + k * M for k in range(10, 25)}  # from inclusive, to exclusive
    assert sum(c.skipped for c in chunks) == len(rows) - len(bars) == len(symbols) * (60 - 15)
    assert sum(c.records for c in chunks) == len(bars)


def test_candles_aggregate_only_what_is_inside_the_span(tmp_path):
    rows = _candle_rows(["BTCUSDT", "ETHUSDT"], 60, seed=2)
    lo, hi = T0 + 7 * M, T0 + 33 * M  # off the 5-minute grid: the edge bars are partial
    inside = [r for r in rows if lo <= r[1] < hi]
    bars, dead, chunks = _candles(_candle_file(tmp_path / "c.csv", rows), TimeSpan(lo, hi), 5 * M)
    want, _, _ = _candles(_candle_file(tmp_path / "inside.csv", inside), interval_ms=5 * M)
    assert dead == [] and bars == want
    assert [b.ts for b in bars if b.symbol == "BTC/USDT"] == [T0 + k * 5 * M for k in range(1, 7)]
    assert sum(c.skipped for c in chunks) == len(rows) - len(inside)
    assert sum(c.records for c in chunks) == len(inside)


def test_candle_interval_is_found_over_the_whole_file(tmp_path):
    rows = _candle_rows(["BTCUSDT", "ETHUSDT"], 30, seed=3)
    span = TimeSpan(T0 + 2 * M, T0 + 3 * M)  # one candle per symbol: no step of its own
    path = _candle_file(tmp_path / "c.csv", rows)
    bars, dead, _ = _candles(path, span, interval_ms=5 * M)
    assert dead == []  # not "off the 300000 ms grid"
    assert [(b.symbol, b.ts) for b in bars] == [("BTC/USDT", T0), ("ETH/USDT", T0)]
    reader = CandleFileReader(path, CandleSettings(5 * M, span=span), lambda: 0)
    assert reader.source_interval_ms == M


def test_candle_dead_letters_inside_the_span_only_unless_unreadable(tmp_path):
    rows = [list(r) for r in _candle_rows(["BTCUSDT"], 40, seed=4)]
    rows[3][3] = 0.1  # high below open, outside the span: skipped
    rows[20][3] = 0.1  # inside: a value dead letter
    rows.append(list(rows[21]))  # a duplicate inside the span
    rows.append(list(rows[2]))  # a duplicate outside: skipped
    lines = ["symbol,open_time_ms,open,high,low,close,volume"] + [",".join(map(str, r)) for r in rows]
    lines.insert(2, "BTCUSDT,soon,1,2,0.5,1.5,3")  # an unreadable time: a dead letter, span or not
    path = _write(tmp_path / "c.csv", lines)
    bars, dead, chunks = _candles(path, TimeSpan(T0 + 10 * M, T0 + 30 * M))
    assert [(d.source, d.reason) for d in dead] == [
        (f"{path}:3", PARSE),
        (f"{path}:23", VALUE),
        (f"{path}:43", DUPLICATE),
    ]
    assert [b.ts for b in bars] == [T0 + k * M for k in range(10, 30) if k != 20]
    assert sum(c.skipped for c in chunks) == 40 - 20 + 1
    assert sum(c.records + c.skipped for c in chunks) == len(lines) - 1


@pytest.mark.parametrize("name", ["c.csv", "BTC_USDT-1m.json.gz"])
def test_candle_span_that_excludes_everything(tmp_path, name):
    rows = _candle_rows(["BTC/USDT"], 50, seed=5)
    bars, dead, chunks = _candles(_candle_file(tmp_path / name, rows), TimeSpan(to_ts=T0), chunk_rows=7)
    assert bars == [] and dead == []
    assert [(c.records, c.skipped, c.resume_at) for c in chunks] == [(0, 50, 50)]


@pytest.mark.parametrize("interval_ms", [M, 5 * M])
def test_candle_resume_with_a_span_gives_exactly_the_rest(tmp_path, interval_ms):
    rows = [list(r) for r in _candle_rows(["BTCUSDT", "ETHUSDT"], 120, seed=6)]
    rows[70][3] = 0.1  # one dead letter inside the span
    path = _candle_file(tmp_path / "c.csv", rows)
    span = TimeSpan(T0 + 15 * M, T0 + 95 * M)
    reader = CandleFileReader(path, CandleSettings(interval_ms, "x", 11, span), lambda: 0)
    chunks = list(reader.chunks())
    assert len(chunks) > 5 and chunks[0].skipped == 2 * 40 and all(c.skipped == 0 for c in chunks[1:])
    assert [c.resume_at for c in chunks] == list(np.cumsum([c.records + c.skipped for c in chunks]))
    for k, chunk in enumerate(chunks):
        rest = list(reader.chunks(skip=chunk.resume_at))
        assert [b for c in rest for b in c.bars] == [b for c in chunks[k + 1 :] for b in c.bars]
        assert [d for c in rest for d in c.dead] == [d for c in chunks[k + 1 :] for d in c.dead]
        assert sum(c.records + c.skipped for c in rest) == len(rows) - chunk.resume_at
    again = list(reader.chunks(skip=30))  # inside the skipped candles: the rest of them again
    assert again[0].skipped == 2 * 40 - 30 and again[0].records == again[0].resume_at - 2 * 40
