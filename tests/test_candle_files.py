"""The candle file reader: formats, symbols, times, dead letters, accounting, resume, aggregation."""

from __future__ import annotations

import gzip
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from schemas.records import DUPLICATE, PARSE, VALUE
from sources.candle_files import CandleFileReader, CandleSettings
from sources.candle_formats import symbol_from_path, unify_symbol
from sources.tick_files import InputError

T = 1_618_951_320_000  # 2021-04-20T20:42:00Z, on the minute
M = 60_000
REAL = "/work/shared/data/binance-1m-20sym-2021-04-20_2021-05-20.csv.gz"
HEADER = "symbol,open_time_ms,open,high,low,close,volume"


def _write(path, text: str | bytes) -> str:
    body = text.encode() if isinstance(text, str) else text
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:  # closed: 3.12 flushes no
        f.write(body)  # gzip buffer when the file object is only collected
    return str(path)


def _reader(path, interval_ms=M, chunk_rows=50_000, now=123) -> CandleFileReader:
    return CandleFileReader(str(path), CandleSettings(interval_ms, "binance", chunk_rows), lambda: now)


def _read(path, **kw):
    chunks = list(_reader(path, **kw).chunks())
    return [b for c in chunks for b in c.bars], [d for c in chunks for d in c.dead], chunks


def _candles(rng, symbols, n, gap=None) -> list[tuple[str, int, float, float, float, float, float]]:
    """Random-walk 1m candles, ``n`` per symbol from T, by symbol then time, minutes in ``gap`` left out."""
    rows = []
    for s in symbols:
        price = 100.0 * (1 + rng.random())
        for k in range(n):
            if gap is not None and k in gap:
                continue
            o = price
            c = o * math.exp(rng.normal(0, 0.002))
            h = max(o, c) * (1 + rng.random() * 0.001)
            lo = min(o, c) * (1 - rng.random() * 0.001)
            v = 0.0 if rng.random() < 0.05 else float(rng.integers(1, 10_000)) / 7
            rows.append((s, T + k * M, o, h, lo, c, v))
            price = c
    return rows


def _csv(rows, header=HEADER) -> str:
    return header + "\n" + "".join(",".join(str(x) for x in r) + "\n" for r in rows)


# -- formats -------------------------------------------------------------------


def test_csv_sorted_by_symbol_comes_out_in_time_order(tmp_path):
    rows = _candles(np.random.default_rng(1), ["AAVEUSDT", "BTCUSDT", "ETHBTC"], 50)
    bars, dead, _ = _read(_write(tmp_path / "c.csv", _csv(rows)))
    assert dead == []
    assert [(b.ts, b.symbol) for b in bars] == sorted(
        (r[1], unify_symbol(r[0])) for r in rows
    )  # (ts, symbol) order
    assert {b.symbol for b in bars} == {"AAVE/USDT", "BTC/USDT", "ETH/BTC"}
    by_key = {(unify_symbol(r[0]), r[1]): r for r in rows}
    for b in bars:
        _, _, o, h, lo, c, v = by_key[(b.symbol, b.ts)]
        assert (b.open, b.high, b.low, b.close, b.volume, b.trades) == (o, h, lo, c, v, 0)
        assert b.vwap == pytest.approx((h + lo + c) / 3, rel=1e-15)


def test_csv_columns_are_mapped_by_name(tmp_path):
    text = (
        "Extra,CLOSE,Pair,Volume,Low,High,Open,Timestamp,note\n"
        f'x,1.5,BTC_USDT,10,0.5,2,1,{T},"a, quoted note"\n'
        f"y,2.5,BTC_USDT,11,1.5,3,2,{T + M},\n"
    )
    bars, dead, _ = _read(_write(tmp_path / "c.csv", text))
    assert dead == []
    assert [(b.symbol, b.ts, b.open, b.high, b.low, b.close, b.volume) for b in bars] == [
        ("BTC/USDT", T, 1.0, 2.0, 0.5, 1.5, 10.0),
        ("BTC/USDT", T + M, 2.0, 3.0, 1.5, 2.5, 11.0),
    ]


def test_csv_without_symbol_column_takes_the_file_name(tmp_path):
    text = f"date,open,high,low,close,volume\n{T},1,2,0.5,1.5,3\n"
    bars, _, _ = _read(_write(tmp_path / "SOLBUSD-1m-2021-04.csv", text))
    assert [b.symbol for b in bars] == ["SOL/BUSD"]


@pytest.mark.parametrize(
    "stamp",
    [
        str(T),
        str(T // 1000),
        f"{T}.0",
        "2021-04-20T20:42:00Z",
        "2021-04-20T22:42:00+02:00",
        "2021-04-20 20:42:00+00:00",
    ],
)
def test_times_in_ms_seconds_or_iso_are_the_same(tmp_path, stamp):
    text = f"time,open,high,low,close,volume\n{stamp},1,2,0.5,1.5,3\n{T + M},1,2,0.5,1.5,3\n"
    bars, dead, _ = _read(_write(tmp_path / "BTCUSDT.csv", text))
    assert dead == []
    assert [b.ts for b in bars] == [T, T + M]


def test_iso_time_without_offset_is_a_parse_dead_letter(tmp_path):
    text = f"ts,open,high,low,close,volume\n2021-04-20T20:42:00,1,2,0.5,1.5,3\n{T + M},1,2,0.5,1.5,3\n"
    bars, dead, _ = _read(_write(tmp_path / "BTCUSDT.csv", text))
    assert [b.ts for b in bars] == [T + M]
    assert [(d.reason, d.source.rsplit(":", 1)[1]) for d in dead] == [(PARSE, "2")]
    assert "no UTC offset" in dead[0].message


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("BTC_USDT-1m.json", "BTC/USDT"),
        ("BTC_USDT-1m.json.gz", "BTC/USDT"),
        ("BTC_USDT_USDT-1h-futures.json", "BTC/USDT:USDT"),
        ("ETHBTC-1m.json", "ETH/BTC"),
    ],
)
def test_freqtrade_json(tmp_path, name, symbol):
    step = 3_600_000 if "-1h" in name else M
    rows = [[T // step * step + k * step, 1 + k, 2 + k, 0.5 + k, 1.5 + k, 10.0 * k] for k in range(4)]
    rows.reverse()  # any order in, time order out
    bars, dead, chunks = _read(_write(tmp_path / name, json.dumps(rows)), interval_ms=step)
    assert dead == []
    assert [(b.symbol, b.ts, b.open, b.volume) for b in bars] == [
        (symbol, r[0], float(r[1]), r[5]) for r in reversed(rows)
    ]
    assert sum(c.records for c in chunks) == 4


def test_json_dead_letters_name_the_element(tmp_path):
    rows = [
        [T, 1, 2, 0.5, 1.5, 3],
        {"ts": T},
        [T + M, 1, 2, 0.5, 1.5],
        [T + 2 * M, None, 2, 0.5, 1.5, 3],
        [T + 3 * M, "1", "2", "0.5", "1.5", "3"],
        ["2021-04-20T20:46:00Z", 1, 2, 0.5, 1.5, 3],
        [T + 5 * M + 0.5, 1, 2, 0.5, 1.5, 3],
        [T + 6 * M, 1, 2, 0.5, -1.5, 3],
        [T + 3 * M, 9, 9, 9, 9, 9],
    ]
    path = _write(tmp_path / "BTC_USDT-1m.json", json.dumps(rows))
    bars, dead, _ = _read(path)
    assert [b.ts for b in bars] == [T, T + 3 * M, T + 4 * M]
    assert [(d.source, d.reason) for d in dead] == [
        (f"{path}[1]", PARSE),
        (f"{path}[2]", PARSE),
        (f"{path}[3]", PARSE),
        (f"{path}[6]", PARSE),
        (f"{path}[7]", VALUE),
        (f"{path}[8]", DUPLICATE),
    ]
    assert json.loads(dead[0].payload) == {"ts": T}
    assert "open is empty" in dead[2].message
    assert dead[5].message.endswith(f"{path}[4]")


def test_gzip_csv(tmp_path):
    rows = _candles(np.random.default_rng(2), ["BTCUSDT"], 10)
    bars, dead, _ = _read(_write(tmp_path / "c.csv.gz", _csv(rows)))
    assert dead == [] and len(bars) == 10


@pytest.mark.parametrize(
    ("raw", "unified"),
    [
        ("BTC/USDT", "BTC/USDT"),
        ("BTC/USDT:USDT", "BTC/USDT:USDT"),
        ("BTC_USDT", "BTC/USDT"),
        ("BTC_USDT_USDT", "BTC/USDT:USDT"),
        ("AAVEUSDT", "AAVE/USDT"),
        ("ETHBTC", "ETH/BTC"),
        ("SOLBUSD", "SOL/BUSD"),
        ("BTCUSDC", "BTC/USDC"),
        ("BTCFDUSD", "BTC/FDUSD"),
        ("BTCTUSD", "BTC/TUSD"),
        ("ETHDAI", "ETH/DAI"),
        ("BNBETH", "BNB/ETH"),
        ("ADABNB", "ADA/BNB"),
        ("BTCEUR", "BTC/EUR"),
        ("BTCUSD", "BTC/USD"),
        ("USDTTRY", "USDT/TRY"),
        ("BTCGBP", "BTC/GBP"),
        ("XRPJPY", "XRP/JPY"),
        ("1000SHIBUSDT", "1000SHIB/USDT"),
        ("dogeusdt", "DOGE/USDT"),
        ("USDT", "USDT"),
        ("FOOBAR", "FOOBAR"),
        ("A__B", "A__B"),
    ],
)
def test_symbol_normalisation(raw, unified):
    assert unify_symbol(raw) == unified


@pytest.mark.parametrize(
    ("path", "symbol"),
    [
        ("BTC_USDT-1m.json", "BTC/USDT"),
        ("/d/BTC_USDT-5m.json.gz", "BTC/USDT"),
        ("BTC_USDT_USDT-1h-futures.json", "BTC/USDT:USDT"),
        ("AAVEUSDT-1m-2021-04-20.csv", "AAVE/USDT"),
        ("candles.csv", "candles"),
    ],
)
def test_symbol_from_file_name(path, symbol):
    assert symbol_from_path(path) == symbol


# -- dead letters and accounting ----------------------------------------------------


def test_every_dead_letter_reason_names_its_line(tmp_path):
    lines = [
        HEADER,
        f"BTCUSDT,{T},1,2,0.5,1.5,3",  # 2 ok
        f"BTCUSDT,{T + M},1,2,0.5,1.5",  # 3 parse: field count
        "",  # 4 blank: not a record
        f"BTCUSDT,{T + 2 * M},abc,2,0.5,1.5,3",  # 5 parse: number
        "BTCUSDT,yesterday,1,2,0.5,1.5,3",  # 6 parse: time
        f"BTCUSDT,{T + 3 * M},1,2,,1.5,3",  # 7 parse: empty
        f"BTCUSDT,{T + 4 * M},-1,2,0.5,1.5,3",  # 8 value: price
        f"BTCUSDT,{T + 5 * M},1,2,0.5,1.5,-3",  # 9 value: volume
        f"BTCUSDT,{T + 6 * M},1,1.2,0.5,1.5,3",  # 10 value: high
        f"BTCUSDT,{T + 7 * M},1,2,1.1,1.5,3",  # 11 value: low
        f"BTCUSDT,{T + 8 * M + 1},1,2,0.5,1.5,3",  # 12 value: off the grid
        f"BTCUSDT,{T},9,9,9,9,9",  # 13 duplicate of 2
        f"BTCUSDT,{T + 9 * M},1,2,0.5,nan,3",  # 14 value: not finite
        f",{T + 10 * M},1,2,0.5,1.5,3",  # 15 value: no symbol
        f"BTCUSDT,{T + 11 * M},1,2,0.5,1.5,3",  # 16 ok
        f"BTCUSDT,{T + 12 * M},1,2,0.5,1.5,3",  # 17 ok
        f"BTCUSDT,{T + 13 * M},1,2,0.5,1.5,3",  # 18 ok
    ]
    path = _write(tmp_path / "c.csv", "\n".join(lines) + "\n")
    bars, dead, chunks = _read(path)
    assert [b.ts for b in bars] == [T, T + 11 * M, T + 12 * M, T + 13 * M]
    expected = {3: PARSE, 5: PARSE, 6: PARSE, 7: PARSE, 8: VALUE, 9: VALUE, 10: VALUE, 11: VALUE, 12: VALUE}
    expected |= {13: DUPLICATE, 14: VALUE, 15: VALUE}
    assert [(d.source, d.reason) for d in dead] == [(f"{path}:{n}", r) for n, r in expected.items()]
    for d in dead:
        line = int(d.source.rsplit(":", 1)[1])
        assert d.payload == lines[line - 1].encode()
        assert d.ingest_ts == 123
    messages = {int(d.source.rsplit(":", 1)[1]): d.message for d in dead}
    assert "6 fields, the header has 7" in messages[3]
    assert "'abc'" in messages[5] and "'yesterday'" in messages[6] and "low is empty" in messages[7]
    assert "high 1.2 is below" in messages[10] and "low 1.1 is above" in messages[11]
    assert "grid" in messages[12] and messages[13].endswith(f"{path}:2")
    assert sum(c.records for c in chunks) == len(lines) - 2 == len(bars) + len(dead)


def test_crlf_quotes_and_invalid_utf8_keep_line_numbers(tmp_path):
    body = (
        b"symbol,open_time_ms,open,high,low,close,volume,note\r\n"
        + f'BTCUSDT,{T},1,2,0.5,1.5,3,"a,b"\r\n'.encode()
        + f"BTC\xff\xfeUSDT,{T + M},1,2,0.5,1.5,3,\r\n".encode("latin-1")
        + f'BTCUSDT,{T + 2 * M},1,2,0.5,1.5,"x,y"\r\n'.encode()
        + b"\r\n"
        + f"BTCUSDT,{T + 3 * M},1,2,0.5,1.5,3,\r\n".encode()
        + f"BTCUSDT,{T + 4 * M},1,2,0.5,1.5,3,\r\n".encode()
    )
    path = _write(tmp_path / "c.csv", body)
    bars, dead, chunks = _read(path)
    assert [b.ts for b in bars] == [T, T + 3 * M, T + 4 * M]
    assert [(d.source, d.reason) for d in dead] == [(f"{path}:3", PARSE), (f"{path}:4", PARSE)]
    assert dead[0].payload.startswith(b"BTC\xff\xfeUSDT,")
    assert "7 fields, the header has 8" in dead[1].message  # "x,y" is one field
    assert sum(c.records for c in chunks) == 5


def test_accounting_closes_over_many_chunks(tmp_path):
    rng = np.random.default_rng(3)
    rows = [list(r) for r in _candles(rng, ["AAVEUSDT", "BTCUSDT", "ETHUSDT"], 300)]
    for k in rng.choice(len(rows), 40, replace=False):
        rows[k][2] = -1.0  # value dead letters spread over the file
    rows += [list(rows[k]) for k in rng.choice(len(rows), 15, replace=False)]  # duplicates at the end
    bars, dead, chunks = _read(_write(tmp_path / "c.csv", _csv(rows)), chunk_rows=97)
    assert len(chunks) > 5
    assert sum(c.records for c in chunks) == len(rows) == len(bars) + len(dead)
    assert len(dead) >= 40
    assert all(c.records <= 97 for c in chunks) and chunks[-1].position == os.path.getsize(tmp_path / "c.csv")
    assert [c.resume_at for c in chunks] == list(np.cumsum([c.records for c in chunks]))
    assert [(b.ts, b.symbol) for b in bars] == sorted((b.ts, b.symbol) for b in bars)


@pytest.mark.parametrize("interval_ms", [M, 5 * M])
def test_resume_at_any_chunk_gives_exactly_the_rest(tmp_path, interval_ms):
    rng = np.random.default_rng(4)
    rows = [list(r) for r in _candles(rng, ["BTCUSDT", "ETHUSDT"], 200, gap=range(50, 63))]
    rows[7][3] = 0.1  # high below open: one dead letter
    path = _write(tmp_path / "c.csv", _csv(rows))
    reader = _reader(path, interval_ms=interval_ms, chunk_rows=23)
    chunks = list(reader.chunks())
    assert len(chunks) > 5
    for k, chunk in enumerate(chunks):
        rest = list(reader.chunks(skip=chunk.resume_at))
        assert [b for c in rest for b in c.bars] == [b for c in chunks[k + 1 :] for b in c.bars]
        assert [d for c in rest for d in c.dead] == [d for c in chunks[k + 1 :] for d in c.dead]
        assert sum(c.records for c in rest) == len(rows) - chunk.resume_at
    assert list(reader.chunks(skip=len(rows))) == []


# -- aggregation and intervals -------------------------------------------------------


def test_one_minute_candles_aggregate_like_a_pandas_resample(tmp_path):
    rng = np.random.default_rng(5)
    rows = _candles(rng, ["BTCUSDT", "ETHUSDT", "SOLUSDT"], 403, gap=set(range(120, 133)) | {200, 201})
    bars, dead, chunks = _read(_write(tmp_path / "c.csv", _csv(rows)), interval_ms=5 * M, chunk_rows=50)
    assert dead == []
    assert sum(c.records for c in chunks) == len(rows)
    df = pd.DataFrame(rows, columns=["symbol", "ts", "open", "high", "low", "close", "volume"])
    df["pv"] = df.volume * (df.high + df.low + df.close) / 3
    df["when"] = pd.to_datetime(df.ts, unit="ms", utc=True)
    expected = []
    for symbol, g in df.groupby("symbol"):
        r = (
            g.set_index("when")
            .resample("5min")
            .agg(
                {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum", "pv": "sum"}
            )
        )
        r = r.dropna(subset=["open"])
        for when, x in r.iterrows():
            tp = (x.high + x.low + x.close) / 3
            vwap = x.pv / x.volume if x.volume > 0 else tp
            expected.append(
                (
                    int(when.timestamp() * 1000),
                    unify_symbol(symbol),
                    x.open,
                    x.high,
                    x.low,
                    x.close,
                    x.volume,
                    vwap,
                )
            )
    expected.sort()
    assert [(b.ts, b.symbol) for b in bars] == [e[:2] for e in expected]
    for b, e in zip(bars, expected, strict=True):
        got = (b.open, b.high, b.low, b.close, b.volume, b.vwap)
        assert got == pytest.approx(e[2:], rel=1e-12, abs=1e-12)
        assert b.ts % (5 * M) == 0


def test_candles_coarser_than_the_bars_are_an_input_error(tmp_path):
    rows = [("BTCUSDT", T // (5 * M) * (5 * M) + k * 5 * M, 1, 2, 0.5, 1.5, 3) for k in range(5)]
    path = _write(tmp_path / "c.csv", _csv(rows))
    with pytest.raises(
        InputError, match=r"c\.csv.*300000 ms is coarser.*60000 ms.*features\.bar_interval.* 300"
    ):
        list(_reader(path, interval_ms=M).chunks())


def test_candles_that_do_not_divide_the_bars_are_an_input_error(tmp_path):
    rows = [("BTCUSDT", T // (2 * M) * (2 * M) + k * 2 * M, 1, 2, 0.5, 1.5, 3) for k in range(5)]
    path = _write(tmp_path / "c.csv", _csv(rows))
    with pytest.raises(
        InputError, match=r"120000 ms does not divide.*300000 ms.*features\.bar_interval.* 120"
    ):
        list(_reader(path, interval_ms=5 * M).chunks())


# -- whole-file errors and edge cases -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("symbol,open_time_ms,open,high,low,close\nA,1,1,1,1,1\n", "no column 'volume'"),
        ("symbol,when,open,high,low,close,volume\n", "no time column"),
        (f"BTCUSDT,{T},1,2,0.5,1.5,3\n", "no header"),
        ("symbol,ts,open,open,high,low,close,volume\n", "'open' more than once"),
        ("", "no header"),
    ],
)
def test_unusable_csv_header_is_an_input_error(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        _reader(_write(tmp_path / "c.csv", text))


def test_unusable_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        _reader(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="unknown candle file type"):
        _reader(_write(tmp_path / "c.parquet", b""))
    for body in ('{"a": 1}', "[[1, 2"):
        with pytest.raises(InputError, match="JSON"):
            list(_reader(_write(tmp_path / "BTC_USDT-1m.json", body)).chunks())


def test_corrupt_gzip_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        (tmp_path / "c.csv.gz").write_bytes(b"not gzip at all")
        _reader(tmp_path / "c.csv.gz")  # the header is read at once
    whole = gzip.compress(b"[[1618951320000, 1, 2, 0.5, 1.5, 3]]")
    path = tmp_path / "BTC_USDT-1m.json.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="cannot read"):
        list(_reader(path).chunks())


def test_time_out_of_range_is_a_value_dead_letter(tmp_path):
    rows = [[T + k * M, 1, 2, 0.5, 1.5, 3] for k in range(3)] + [[7_300_000_000_000, 1, 2, 0.5, 1.5, 3]]
    rows += [[-M, 1, 2, 0.5, 1.5, 3]]
    bars, dead, _ = _read(_write(tmp_path / "BTC_USDT-1m.json", json.dumps(rows)))
    assert len(bars) == 3
    assert [(d.source[-3:], d.reason) for d in dead] == [("[3]", VALUE), ("[4]", VALUE)]
    assert all("outside 1970..2200" in d.message for d in dead)


def test_a_skip_inside_an_aggregated_bar_emits_that_bar_again(tmp_path):
    rows = _candles(np.random.default_rng(6), ["BTCUSDT"], 40)
    first_bar = sum(1 for r in rows if r[1] < T // (5 * M) * (5 * M) + 5 * M)
    reader = _reader(_write(tmp_path / "c.csv", _csv(rows)), interval_ms=5 * M, chunk_rows=1)
    chunks = list(reader.chunks())
    assert [c.records for c in chunks][0] == first_bar and all(len(c.bars) == 1 for c in chunks)
    again = list(reader.chunks(skip=first_bar - 1))
    assert again[0].bars == chunks[0].bars and again[0].records == 1
    assert [c.bars for c in again[1:]] == [c.bars for c in chunks[1:]]


@pytest.mark.parametrize(("name", "body"), [("c.csv", HEADER + "\n"), ("BTC_USDT-1m.json", "[]")])
def test_empty_files_give_no_chunks(tmp_path, name, body):
    reader = _reader(_write(tmp_path / name, body))
    assert list(reader.chunks()) == [] and reader.source_interval_ms is None


@pytest.mark.slow
def test_real_binance_candles():
    """The 20-symbol month of real 1m candles, when ../shared has it (skipped otherwise)."""
    if not os.path.exists(REAL):
        pytest.skip(f"{REAL} not present: real-data check skipped")
    reader = _reader(REAL, chunk_rows=100_000)
    ts, symbols, records = [], [], 0
    for chunk in reader.chunks():
        assert chunk.dead == []
        records += chunk.records
        ts.extend(b.ts for b in chunk.bars)
        symbols.extend(b.symbol for b in chunk.bars)
    assert records == len(ts) == 858_304 and reader.source_interval_ms == M
    assert len(set(symbols)) == 20 and all(s.endswith("/USDT") for s in symbols)
    keys = np.array(ts, dtype=np.int64)
    assert np.all(np.diff(keys) >= 0)
    grid = np.unique(keys)
    outage = np.diff(grid).max()
    assert outage >= 4 * 3_600_000  # 2021-04-25 04:00-08:45 UTC: no candles at all
