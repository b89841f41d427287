"""Hostile input (issue 10): strict types, well-formed names, a dead letter per record read.

A. Types: in JSON (tick files and topic messages) text fields are strings,
numbers are numbers, ``ts`` is an integer and the schema version is the
integer 1; in CSV only ASCII digits are numbers, on Arrow's fast path as on
the line-by-line path.
B. Names: a symbol is ccxt-unified ``BASE/QUOTE[:SETTLE]``, an exchange a
short plain id, and ``input.symbols`` (when given) lists the symbols read.
C. Keys: the same file given twice stores every dead letter of both passes.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import orjson
import pytest
from flow_harness import run_files

from flows.config import ConfigError, load_settings
from flows.inputs import file_inputs
from schemas.codec import RECORD_TYPES, SchemaError, decode, encode
from schemas.records import (
    SCHEMA,
    VALUE,
    Bar,
    CancelRequest,
    Correlation,
    DeadLetter,
    ExecutionQuality,
    Feature,
    Fill,
    Heartbeat,
    ModelMetrics,
    OperatorCommand,
    Order,
    OrderEvent,
    PortfolioState,
    Protection,
    RiskEvent,
    Signal,
    StepMark,
    StrategyUpdate,
    Target,
    Tick,
    VarBacktestRow,
    VenueBar,
)
from sources.control_file import ControlReader, append_command
from sources.kafka_ticks import decode_ticks
from sources.tick_files import TickFileReader

T = 1_700_000_000_000
HEADER = "ts,symbol,price,qty,side,trade_id,exchange"


def _read(path, **kwargs) -> tuple[dict[int, tuple[str, str]], dict[int, tuple]]:
    """Dead letters by line (reason, message) and good ticks by line, read by the tick file reader."""
    reader = TickFileReader(str(path), "unknown", lambda: 0, **kwargs)
    dead, good = {}, {}
    for chunk in reader.chunks():
        for d in chunk.dead:
            dead[int(d.source.rsplit(":", 1)[1])] = (d.reason, d.message)
        for b in chunk.batches:
            for i, line in enumerate(b.arrival.tolist()):
                good[line] = (b.symbol, int(b.ts[i]), float(b.price[i]), float(b.qty[i]), b.exchange[i])
    return dead, good


def _at(text: str) -> str:
    """``text`` with ``@T`` replaced by the test time."""
    return text.replace("@T", str(T))


def _expect(dead: dict, good: dict, lines: list[tuple[str, str | None]], first: int) -> None:
    for k, (text, want) in enumerate(lines):
        n = first + k
        if want is None:
            assert n in good and n not in dead, (text, dead.get(n))
        else:
            assert dead.get(n, (None,))[0] == want, (text, dead.get(n), good.get(n))


# -- A. types ------------------------------------------------------------------------

JSON_LINES: list[tuple[str, str | None]] = [
    (_at('{"ts": @T, "symbol": "BTC/USDT", "price": 50.5, "qty": 2}'), None),
    (
        _at('{"ts": @T, "symbol": "BTC/USDT", "price": 50, "qty": 1, "trade_id": "7", "exchange": "okx"}'),
        None,
    ),
    ('{"ts": "2023-11-14T22:13:20Z", "symbol": "BTC/USDT", "price": 50.5, "qty": 2}', None),
    (_at('{"ts": @T, "symbol": 12345, "price": 50.5, "qty": 2}'), SCHEMA),
    (_at('{"ts": @T, "symbol": "BTC/USDT", "price": 50.5, "qty": 2, "trade_id": 7}'), SCHEMA),
    (_at('{"ts": @T, "symbol": "BTC/USDT", "price": 50.5, "qty": 2, "exchange": 3}'), SCHEMA),
    (_at('{"ts": @T, "symbol": "BTC/USDT", "price": 50.5, "qty": 2, "side": true}'), SCHEMA),
    (_at('{"ts": @T.0, "symbol": "BTC/USDT", "price": 50.5, "qty": 2}'), SCHEMA),
    (_at('{"ts": @T.5, "symbol": "BTC/USDT", "price": 50.5, "qty": 2}'), SCHEMA),
    (_at('{"ts": "@T", "symbol": "BTC/USDT", "price": 50.5, "qty": 2}'), SCHEMA),
    ('{"ts": true, "symbol": "BTC/USDT", "price": 50.5, "qty": 2}', SCHEMA),
    (_at('{"ts": @T, "symbol": "BTC/USDT", "price": "50.5", "qty": 2}'), SCHEMA),
    (_at('{"ts": @T, "symbol": "BTC/USDT", "price": 50.5, "qty": "2"}'), SCHEMA),
    (_at('{"ts": @T, "symbol": "BTC/USDT", "price": false, "qty": 2}'), SCHEMA),
]


def test_json_lines_fields_have_their_json_types(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(line for line, _ in JSON_LINES) + "\n")
    dead, good = _read(path)
    _expect(dead, good, JSON_LINES, 1)
    assert len(dead) + len(good) == len(JSON_LINES)


FULL_WIDTH_T = str(T).translate(str.maketrans("0123456789", "０１２３４５６７８９"))
CSV_LINES: list[tuple[str, str | None]] = [
    (f"{T},BTC/USDT,100,1,buy,1,binance", None),
    (f"{T + 1},BTC/USDT,1e-3,.5,buy,2,binance", None),
    (f"{T + 2},BTC/USDT,100.25,2.,sell,3,binance", None),
    (f"{T + 3},BTC/USDT,+100,1E2,sell,4,binance", None),
    (f"{T // 1000}_{T % 1000:03d},BTC/USDT,100,1,buy,5,binance", SCHEMA),
    (f"{FULL_WIDTH_T},BTC/USDT,100,1,buy,6,binance", SCHEMA),
    (f"{hex(T)},BTC/USDT,100,1,buy,7,binance", SCHEMA),
    (f"{T + 4},BTC/USDT,1_0,1,buy,8,binance", SCHEMA),
    (f"{T + 5},BTC/USDT,１.５,1,buy,9,binance", SCHEMA),
    (f"{T + 6},BTC/USDT,100,\u0663,buy,10,binance", SCHEMA),
    (f"{T + 7},BTC/USDT,nan(1),1,buy,11,binance", SCHEMA),
    (f"{T + 8},BTC/USDT,nan,1,buy,12,binance", VALUE),
]


@pytest.mark.parametrize("path_taken", ["fast", "slow"])
def test_csv_numbers_are_ascii_on_both_paths(tmp_path, path_taken):
    """Only ASCII digits are numbers; a block Arrow parses and the same lines read one by one agree."""
    lines = list(CSV_LINES)
    if path_taken == "fast":  # lines Arrow refuses would send the block the slow way: keep those out
        lines = [(t, w) for t, w in lines if t.isascii() and "_" not in t and "nan(" not in t]
    else:
        lines.append(("garbage", SCHEMA))  # the block goes line by line
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "\n" + "\n".join(t for t, _ in lines) + "\n")
    dead, good = _read(path)
    _expect(dead, good, lines, 2)
    assert good[2][1:4] == (T, 100.0, 1.0) and good[3][2:4] == (1e-3, 0.5)


def test_csv_fast_path_refuses_what_the_slow_path_refuses(tmp_path):
    """A clean block with a hex time or a ``nan(1)`` price: Arrow takes both, the reference does not."""
    lines = [(f"{T},BTC/USDT,100,1,buy,1,binance", None), (f"{hex(T)},BTC/USDT,100,1,buy,2,binance", SCHEMA)]
    lines += [(f"{T + 1},BTC/USDT,nan(1),1,buy,3,binance", SCHEMA)]
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "\n" + "\n".join(t for t, _ in lines) + "\n")
    dead, good = _read(path)
    _expect(dead, good, lines, 2)


def test_hex_trade_ids_keep_the_fast_path(tmp_path, monkeypatch):
    """``0x`` in a block (on-chain trade ids) costs a look at the ``ts`` column, not the slow path."""
    path = tmp_path / "t.csv"
    lines = [f"{T + i},BTC/USDT,100,1,buy,0x{i:040x},okx" for i in range(50)]
    path.write_text("\n".join([HEADER, *lines]) + "\n")

    def no_slow_path(*args):
        msg = "a clean block with hex trade ids is read on the fast path"
        raise AssertionError(msg)

    monkeypatch.setattr(TickFileReader, "_slow", no_slow_path)
    dead, good = _read(path)
    assert dead == {} and sorted(t for _, t, *_ in good.values()) == [T + i for i in range(50)]


def _candles(path, settings=None) -> tuple[list, dict[str, str]]:
    from sources.candle_files import CandleFileReader, CandleSettings

    reader = CandleFileReader(str(path), settings or CandleSettings(interval_ms=60_000), lambda: 0)
    chunks = list(reader.chunks())
    return [b for c in chunks for b in c.bars], {
        d.source.rsplit(str(path), 1)[1]: d.reason for c in chunks for d in c.dead
    }


def test_candle_numbers_are_ascii_and_json_candles_have_no_booleans(tmp_path):
    t0 = T // 60_000 * 60_000
    rows = [f"BTCUSDT,{t0},1,2,1,2,5", f"BTCUSDT,{t0 + 60_000},1e0,2,1,2,5"]
    rows += [
        f"BTCUSDT,{t0 // 1000 // 1000}_{t0 // 1000 % 1000:03d},1,2,1,2,5",
        f"BTCUSDT,{t0 + 120_000},1_0,20,1,2,5",
    ]
    rows += [f"BTCUSDT,{hex(t0 + 180_000)},1,2,1,2,5", f"BTCUSDT,{t0 + 240_000},１,2,1,2,5"]
    rows += [f"DT,{t0},1,2,1,2,5"]
    path = tmp_path / "c.csv"
    path.write_text("symbol,open_time_ms,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    bars, dead = _candles(path)
    assert [b.ts for b in bars] == [t0, t0 + 60_000]
    assert dead == {":4": "parse", ":5": "parse", ":6": "parse", ":7": "parse", ":8": "value"}
    path = tmp_path / "BTC_USDT-1m.json"
    good = [[t0 + k * 60_000, 1, 2, 1, 2, 5] for k in (0, 2, 3)]
    for bad, reason in (
        ([t0 + 60_000, True, 2, 1, 2, 5], "schema"),  # a wrong JSON type (issue 14)
        ([t0 + 60_000, "1_0", 20, 1, 2, 5], "parse"),
        ([t0 + 60_000, "１", 2, 1, 2, 5], "parse"),
    ):
        path.write_text(orjson.dumps([good[0], bad, *good[1:]]).decode())
        bars, dead = _candles(path)
        assert [b.ts for b in bars] == [t0, t0 + 120_000, t0 + 180_000] and dead == {"[1]": reason}, bad
    path.write_text(orjson.dumps([[str(t0), "1", "2", "1", "2", "5"], *good[1:]]).decode())
    assert len(_candles(path)[0]) == 3  # ASCII numbers in strings are still numbers


def _tick(**change) -> bytes:
    obj = {"v": 1, "type": "tick", "ts": T, "symbol": "BTC/USDT", "price": 1.5, "qty": 2.0}
    obj |= {"side": "buy", "trade_id": "1", "exchange": "binance"} | change
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": True}, SCHEMA),
        ({"v": 1.0}, SCHEMA),
        ({"v": "1"}, SCHEMA),
        ({"symbol": 12345}, SCHEMA),
        ({"trade_id": 7}, SCHEMA),
        ({"exchange": 3}, SCHEMA),
        ({"ts": float(T)}, SCHEMA),
        ({"price": "1.5"}, SCHEMA),
        ({"qty": True}, SCHEMA),
        ({"symbol": "DT"}, VALUE),
        ({"exchange": "bin\x01ance"}, VALUE),
    ],
)
@pytest.mark.parametrize("batch", ["alone", "among good ones"])
def test_topic_messages_are_strict_on_both_decode_paths(change, reason, batch):
    good = [_tick(trade_id=str(i)) for i in range(3)]
    values = [_tick(**change)] if batch == "alone" else [*good, _tick(**change)]
    n = len(values)
    batches, dead = decode_ticks(values, list(range(n)), [7] * n, "ticks[0]")
    assert [(d.source, d.reason) for d in dead] == [(f"ticks[0]@{n - 1}", reason)]
    assert sum(len(b) for b in batches) == n - 1


@pytest.mark.parametrize("cls", sorted(RECORD_TYPES.values(), key=lambda c: c.__name__))
@pytest.mark.parametrize("version", [True, 1.0, "1", 2, None])
def test_codec_takes_only_the_integer_1_as_version(cls, version):
    samples = {
        Tick: Tick(T, "BTC/USDT", 1.5, 2.0, "buy", "1", "binance"),
        Bar: Bar("BTC/USDT", T, 1.0, 2.0, 0.5, 1.5, 3.0, 1.25, 4),
        Feature: Feature("BTC/USDT", T, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1),
        Correlation: Correlation(T, "BTC/USDT", "ETH/USDT", 0.5),
        DeadLetter: DeadLetter(T, "a.csv:2", SCHEMA, "bad", b"x"),
        Signal: Signal(T, "BTC/USDT", "trend", 1, 0.5, "calm"),
        RiskEvent: RiskEvent(T, "breaker", 1, "BTC/USDT", 0.1, 0.05, "reduce", "m"),
        Order: Order(T, "o1", "", "BTC/USDT", "buy", 1.0, "market", 0.0, "r", "trend"),
        Fill: Fill(T, "o1", "BTC/USDT", "buy", 1.0, 100.0, 0.1, 2.0),
        OrderEvent: OrderEvent(
            T, "o1", "v1", "BTC/USDT", "buy", "filled", 1.0, 1.0, 100.0, "", "paper", T, 0.0
        ),
        Heartbeat: Heartbeat(T, "stream", 1, T),
        CancelRequest: CancelRequest(T, "o1", "BTC/USDT"),
        Protection: Protection(T, "BTC/USDT", 1.0, 90.0, 120.0),
        VenueBar: VenueBar(5, "BTC/USDT", T, 1.0, 2.0, 0.5, 1.5, 3.0, 1.25, 4, 1.0),
        StepMark: StepMark(T, "loop", "loop", 5),
        ExecutionQuality: ExecutionQuality(T, "o1", "BTC/USDT", "buy", 1.0, 3.0, 4.0, 100.0, 100.04),
        OperatorCommand: OperatorCommand(T, "pause", "checking the venue", "ops@desk"),
        VarBacktestRow: VarBacktestRow(
            T,
            "BTC/USDT",
            "fhs",
            "rolling",
            1000,
            0.05,
            1000,
            52,
            0.052,
            900,
            48,
            48,
            4,
            0.08,
            0.77,
            0.5,
            0.48,
            0.58,
            0.75,
            0.64,
            "green",
            0.02,
            0.3,
        ),
        PortfolioState: PortfolioState(
            T, 1e5, 4e4, 6e4, 6e4, 0.6, 0.01, 120.0, 160.0, 900.0, 1200.0, 700.0, 0.009, 0, "normal"
        ),
        ModelMetrics: ModelMetrics(T, "BTC/USDT", "online_model", 500, 0.69, 0.52, 0.04, 0.55, 0.6, 0),
        StrategyUpdate: StrategyUpdate(T, "trend_following", 0.4, 1.0, 0.8, 0.05, 0.0, 30, "track"),
        Target: Target(T, "BTC/USDT", "range", 1, 2.5e6, 0.2, "in the universe"),
    }
    record = samples[cls]
    obj = orjson.loads(encode(record))
    assert decode(orjson.dumps(obj)) == record
    obj["v"] = version
    with pytest.raises(SchemaError, match="schema version"):
        decode(orjson.dumps(obj))


def test_codec_rejects_a_payload_that_is_not_base64():
    obj = orjson.loads(encode(DeadLetter(T, "a.csv:2", SCHEMA, "bad", b"x")))
    obj["payload"] = "not base64!"
    with pytest.raises(SchemaError, match="payload"):
        decode(orjson.dumps(obj))


# -- B. names --------------------------------------------------------------------

BAD_SYMBOLS = [
    "DT",
    "/USDT",
    "BTC/",
    "S02+USDT",
    "BTC/USDT:",
    "A/B/C",
    "BTC /USDT",
    "BTC/US\x01DT",
    "BTC:USDT",
]
BAD_SYMBOLS += ["B" * 60 + "/USDT", "ＢＴＣ/USDT", "BTC/USDT:USDT:USDT"]
GOOD_SYMBOLS = [
    "BTC/USDT",
    "BTC/USDT:USDT",
    "1000PEPE/USDT",
    "BTC/USD:BTC-240329",
    "ETH/USDC:USDC-240329-3000-C",
]
GOOD_SYMBOLS += ["USDC.e/USDT", "kPEPE/USDC:USDC"]


@pytest.mark.parametrize("kind", ["csv fast", "csv slow", "jsonl"])
def test_malformed_symbols_and_exchanges_are_value_dead_letters(tmp_path, kind):
    rows = [(s, "binance", None) for s in GOOD_SYMBOLS] + [(s, "binance", "symbol") for s in BAD_SYMBOLS]
    rows += [("BTC/USDT", e, "exchange") for e in ("bin ance", "bin\x01ance", "x" * 33, "bin/ance")]
    rows += [("BTC/USDT", e, None) for e in ("binanceusdm", "okx", "unknown")]
    if kind == "jsonl":
        path = tmp_path / "t.jsonl"
        text = [
            orjson.dumps({"ts": T + i, "symbol": s, "price": 1.5, "qty": 1, "exchange": e}).decode()
            for i, (s, e, _) in enumerate(rows)
        ]
        first = 1
    else:
        path = tmp_path / "t.csv"
        text = [HEADER] + [f'{T + i},"{s}",1.5,1,buy,{i},"{e}"' for i, (s, e, _) in enumerate(rows)]
        text += ["garbage"] if kind == "csv slow" else []
        first = 2
    path.write_bytes(("\n".join(text) + "\n").encode())
    dead, good = _read(path)
    for i, (s, e, field) in enumerate(rows):
        if field is None:
            assert first + i in good, (s, e, dead.get(first + i))
            assert good[first + i][0] == s and good[first + i][4] == e
        else:
            assert first + i in dead, (s, e, good.get(first + i))
            reason, message = dead[first + i]
            assert (reason, message.split()[0]) == (VALUE, field), (s, e, message)


def test_topic_messages_with_malformed_names_are_value_dead_letters():
    values = [_tick(symbol=s, trade_id=str(i)) for i, s in enumerate(GOOD_SYMBOLS + BAD_SYMBOLS)]
    batches, dead = decode_ticks(values, list(range(len(values))), [0] * len(values), "ticks[1]")
    assert sorted(b.symbol for b in batches) == sorted(GOOD_SYMBOLS)
    assert [d.source for d in dead] == [f"ticks[1]@{len(GOOD_SYMBOLS) + i}" for i in range(len(BAD_SYMBOLS))]
    assert {(d.reason, d.message.split()[0]) for d in dead} == {(VALUE, "symbol")}


def test_symbol_allow_list_in_config():
    s = load_settings(None, ["input.symbols=BTC/USDT, ETH/USDT:USDT"])
    assert s.input.symbols == ("BTC/USDT", "ETH/USDT:USDT")
    assert load_settings(None, []).input.symbols == ()
    with pytest.raises(ConfigError, match="input.symbols"):
        load_settings(None, ["input.symbols=BTCUSDT"])
    with pytest.raises(ConfigError, match="input.exchange"):
        load_settings(None, ["input.exchange=bin ance"])


def test_symbol_allow_list_from_a_toml_file(tmp_path):
    conf = tmp_path / "q.toml"
    conf.write_text('[input]\nsymbols = ["BTC/USDT", "SOL/USDT"]\n')
    assert load_settings(str(conf)).input.symbols == ("BTC/USDT", "SOL/USDT")
    conf.write_text("[input]\nsymbols = [1]\n")
    with pytest.raises(ConfigError, match="input.symbols"):
        load_settings(str(conf))


def test_symbol_allow_list_on_files_and_topics(tmp_path):
    ticks = tmp_path / "t.csv"
    lines = [HEADER] + [
        f"{T + i * 1000},{s},100,1,buy,{i},binance" for i, s in enumerate(["BTC/USDT", "SOL/USDT"] * 3)
    ]
    ticks.write_text("\n".join(lines) + "\n")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(orjson.dumps({"ts": T, "symbol": "SOL/USDT", "price": 1, "qty": 1}).decode() + "\n")
    candles = tmp_path / "SOLUSDT-1m.csv"
    candles.write_text(f"open_time_ms,open,high,low,close,volume\n{T // 60_000 * 60_000},1,2,1,2,5\n")
    got, records = run_files([str(ticks), str(jsonl), str(candles)], ["input.symbols=BTC/USDT"])
    assert set(got["ticks"]["symbol"]) == {"BTC/USDT"} and len(got["ticks"]) == 3
    dead = got["dead_letters"]
    assert sorted(dead["reason"]) == [VALUE] * 5
    assert set(dead["message"]) == {"symbol 'SOL/USDT' is not in input.symbols"}
    assert records == 3 + len(dead)
    values = [_tick(symbol="BTC/USDT"), _tick(symbol="SOL/USDT", trade_id="2")]
    for vals in (values, [*values, b"{"]):  # the fast and the slow decode path
        batches, dead = decode_ticks(
            vals, list(range(len(vals))), [0] * len(vals), "t[0]", frozenset({"BTC/USDT"})
        )
        assert [b.symbol for b in batches] == ["BTC/USDT"]
        assert (dead[0].source, dead[0].reason) == ("t[0]@1", VALUE)
        assert dead[0].message == "symbol 'SOL/USDT' is not in input.symbols"


# -- C. one dead letter per record read ----------------------------------------------


def _qbtc(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_replaying_a_file_twice_keeps_both_passes_dead_letters(tmp_path):
    lines = [HEADER] + [
        f"{T + i * 500},{('BTC/USDT', 'ETH/USDT')[i % 2]},{100 + i % 7},1,buy,{i},binance" for i in range(200)
    ]
    lines.insert(50, "bad,line")  # schema
    lines.insert(120, f"{T + 60_000},BTC/USDT,-1,1,buy,x,binance")  # value
    (tmp_path / "small.csv").write_text("\n".join(lines) + "\n")
    store = f"chdb://{tmp_path}/s.chdb"
    out = _qbtc("replay", "small.csv", "small.csv", "--store", store, "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "replay: 404 records" in out.stdout
    counts = {}
    for table in ("ticks", "dead_letters"):
        q = _qbtc(
            "sql", f"SELECT count() FROM {table} FINAL", "--store", store, "--format", "csv", cwd=tmp_path
        )
        assert q.returncode == 0, q.stderr
        counts[table] = int(q.stdout.splitlines()[1])
    assert counts == {"ticks": 200, "dead_letters": 204}  # records read = ticks + dead letters
    q = _qbtc(
        "sql",
        "SELECT source, reason FROM dead_letters FINAL WHERE reason IN ('schema', 'value') ORDER BY source",
        "--store",
        store,
        "--format",
        "csv",
        cwd=tmp_path,
    )
    assert q.stdout.splitlines()[1:] == [
        "small.csv#2:121,value",
        "small.csv#2:51,schema",
        "small.csv:121,value",
        "small.csv:51,schema",
    ]


def test_inputs_given_twice_have_distinct_sources(tmp_path):
    ticks = tmp_path / "t.csv"
    ticks.write_text(f"{HEADER}\nbad\n{T},BTC/USDT,1,1,buy,1,binance\n")
    candles = tmp_path / "BTC_USDT-1m.json"
    t0 = T // 60_000 * 60_000
    candles.write_text(f"[[{t0}, 1, 2, 1, 2, 5], [{t0}, 1, 2, 1, 2, 5], 7]")
    settings = load_settings(None, ["features.bar_interval=60"])
    paths = [str(ticks), str(candles), str(ticks), str(candles), str(ticks)]
    factories, _ = file_inputs(paths, settings)
    sources = []
    bar_sources = []
    for make in factories:
        for chunk in make(0):
            sources += [d.source for d in chunk.dead]
            sources += [b.source(i) for b in chunk.batches for i in range(len(b))]
            bar_sources += list(chunk.bar_sources)
    assert sources == [
        f"{ticks}:2",
        f"{ticks}:3",
        f"{candles}[1]",
        f"{candles}[2]",
        f"{ticks}#3:2",
        f"{ticks}#3:3",
        f"{candles}#4[1]",
        f"{candles}#4[2]",
        f"{ticks}#5:2",
        f"{ticks}#5:3",
    ]
    assert bar_sources == [f"{candles}[0]", f"{candles}#4[0]"]


def test_bad_control_lines_each_have_their_line(tmp_path):
    path = tmp_path / "control.jsonl"
    append_command(str(path), "pause", "first", 5)
    with open(path, "ab") as fh:
        fh.write(b"not json\n\n")
    reader = ControlReader(str(path))
    commands, bad = reader.read_numbered()
    assert [c.command for c in commands] == ["pause"] and [(b.line, b.raw) for b in bad] == [(2, b"not json")]
    with open(path, "ab") as fh:
        fh.write(b'{"ts": 1, "command": "halt", "reason": "x"}\n')
    _, bad = reader.read_numbered()
    assert [(b.line, b.source(reader.path)) for b in bad] == [(4, f"{path}:4")]
    assert [line for line, _ in ControlReader(str(path)).read()[1]] == [b"not json", bad[0].raw]


def test_simulated_symbols_are_well_formed():
    from schemas.validation import symbol_problem
    from sources.simulator import DEFAULT_SYMBOLS

    assert [s for s in DEFAULT_SYMBOLS if symbol_problem(s) is not None] == []
    assert np.all([symbol_problem(s) is None for s in GOOD_SYMBOLS])


def test_record_takes_only_allowed_symbols(tmp_path):
    out = _qbtc(
        "record", "--exchange", "binance", "--symbols", "BTC/USDT,SOL/USDT", "--to", "x.csv",
        "--set", "input.symbols=BTC/USDT", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "symbol 'SOL/USDT' is not in input.symbols" in out.stderr
    assert not (tmp_path / "x.csv").exists()
