"""The bad-input corpus: every bad record is a dead letter with the right reason."""

from __future__ import annotations

import gzip

import pytest
from flow_harness import run_files

T = 1_700_000_000_000
HEADER = b"ts,symbol,price,qty,side,trade_id,exchange\n"

# (line, expected reason or None for a good tick)
CSV_CORPUS: list[tuple[bytes, str | None]] = [
    (b"%d,BTC/USDT,100.5,0.1,buy,1,binance" % T, None),
    (b"%d,BTC/USDT,100.6,0.2,sell,2,binance" % (T + 10), None),
    (b"2023-11-14T22:13:20.020Z,BTC/USDT,100.7,0.3,buy,3,binance", None),
    (b"%d,ETH/USDT,2000,1,,,binance" % (T + 20), None),
    (b"%d,ETH/USDT,2001,1,BUY,,binance" % (T + 30), None),
    (b"garbage without commas", "schema"),
    (b'%d,BTC/USDT,"100.8,0.1,buy,4,binance' % T, "parse"),
    (b"%d,BTC/USDT,,0.1,buy,5,binance" % T, "schema"),
    (b"%d,,100.8,0.1,buy,6,binance" % T, "schema"),
    (b"%d,BTC/USDT,abc,0.1,buy,7,binance" % T, "schema"),
    (b"%d,BTC/USDT,100.8,0.1,buy,8,binance,extra" % T, "schema"),
    (b"not-a-time,BTC/USDT,100.8,0.1,buy,9,binance", "schema"),
    (b"%d,BTC/USDT,nan,0.1,buy,10,binance" % T, "value"),
    (b"%d,BTC/USDT,100.8,inf,buy,11,binance" % T, "value"),
    (b"%d,BTC/USDT,0,0.1,buy,12,binance" % T, "value"),
    (b"%d,BTC/USDT,100.8,-0.1,buy,13,binance" % T, "value"),
    (b"%d,BTC/USDT,1e400,0.1,buy,14,binance" % T, "value"),
    (b"99999999999999999999999,BTC/USDT,100.8,0.1,buy,15,binance", "value"),
    (b"-5,BTC/USDT,100.8,0.1,buy,16,binance", "value"),
    (b"%d,BTC/USDT,100.8,0.1,hold,17,binance" % T, "value"),
    (b"2023-11-14T22:13:20,BTC/USDT,100.8,0.1,buy,18,binance", "value"),
    (b"%d,BTC\xff/USDT,100.8,0.1,buy,19,binance" % T, "parse"),
    (b"1_700_000_000_000,BTC/USDT,100.8,0.1,buy,25,binance", "schema"),
    ("１７０００００００００００,BTC/USDT,100.8,0.1,buy,26,binance".encode(), "schema"),
    (b"%d,BTC/USDT,1_00.8,0.1,buy,27,binance" % T, "schema"),
    (b"%d,DT,100.8,0.1,buy,28,binance" % T, "value"),
    (b"%d,BTC/USDT,100.8,0.1,buy,29,bin ance" % T, "value"),
    (b"%d,BTC/USDT,100.9,0.1,buy,2,binance" % (T + 40), "duplicate"),
    (b"%d,BTC/USDT,101.0,0.1,buy,20,binance" % (T + 5_000), None),
    (b"%d,BTC/USDT,99.0,0.1,sell,21,binance" % (T + 100), "late"),
    (b"%d,BTC/USDT,101.1,0.1,buy,22,binance" % (T + 5_001), None),
    (b"%d,BTC/USDT,1e300,1e300,buy,23,binance" % (T + 5_002), "value"),
    (b"%d,BTC/USDT,1e12,1e6,buy,24,binance" % (T + 5_003), None),
]

JSONL_CORPUS: list[tuple[bytes, str | None]] = [
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 50.5, "qty": 2}' % T, None),
    (
        b'{"ts": "2023-11-14T22:13:20.010+00:00", "symbol": "SOL/USDT", '
        b'"price": 50.6, "qty": 1, "side": "sell"}',
        None,
    ),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 50.7' % T, "parse"),
    (b"[1, 2, 3]", "parse"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": NaN, "qty": 1}' % T, "parse"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 1e999, "qty": 1}' % T, "parse"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 50, "qty": 1, "venue": "x"}' % T, "schema"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 50}' % T, "schema"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": [50], "qty": 1}' % T, "schema"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": true, "qty": 1}' % T, "schema"),
    (b'{"ts": %d, "symbol": 7.5, "price": 50, "qty": 1}' % T, "schema"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": -1, "qty": 1}' % T, "value"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 50, "qty": 0}' % T, "value"),
    (b'{"ts": 1.5, "symbol": "SOL/USDT", "price": 50, "qty": 1}', "schema"),
    (b'{"ts": %d.0, "symbol": "SOL/USDT", "price": 50, "qty": 1}' % T, "schema"),
    (b'{"ts": "%d", "symbol": "SOL/USDT", "price": 50, "qty": 1}' % T, "schema"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": "50.6", "qty": 1}' % T, "schema"),
    (b'{"ts": %d, "symbol": 12345, "price": 50, "qty": 1}' % T, "schema"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 50, "qty": 1, "trade_id": 9}' % T, "schema"),
    (b'{"ts": %d, "symbol": "SOLUSDT", "price": 50, "qty": 1}' % T, "value"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 50, "qty": 1, "exchange": "a b"}' % T, "value"),
    (b'{"ts": %d, "symbol": "SOL/USDT\xc3", "price": 50, "qty": 1}' % T, "parse"),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 51, "qty": 1, "trade_id": "a"}' % (T + 20), None),
    (b'{"ts": %d, "symbol": "SOL/USDT", "price": 51, "qty": 1, "trade_id": "a"}' % (T + 30), "duplicate"),
]


def _write(path, header: bytes, corpus, blank_lines: bool = True) -> None:
    body = header
    for i, (line, _) in enumerate(corpus):
        body += line + b"\n"
        if blank_lines and i == 3:
            body += b"\n"  # a blank line is not a record
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(body)


def _line_numbers(header: bool, corpus) -> list[int]:
    first = 2 if header else 1
    return [first + i + (1 if i > 3 else 0) for i in range(len(corpus))]


@pytest.mark.parametrize(
    ("name", "header", "corpus"),
    [
        ("ticks.csv", HEADER, CSV_CORPUS),
        ("ticks.csv.gz", HEADER, CSV_CORPUS),
        ("ticks.jsonl", b"", JSONL_CORPUS),
    ],
)
def test_every_bad_record_is_a_dead_letter_with_its_reason(tmp_path, name, header, corpus):
    path = tmp_path / name
    _write(path, header, corpus)
    got, records = run_files([str(path)])
    lines = _line_numbers(bool(header), corpus)
    dead = got["dead_letters"]
    reasons = dict(zip(dead["source"], dead["reason"], strict=True))
    payloads = dict(zip(dead["source"], dead["payload"], strict=True))
    for (line, want), number in zip(corpus, lines, strict=True):
        source = f"{path}:{number}"
        if want is None:
            assert source not in reasons, (line, reasons.get(source))
        else:
            assert reasons.get(source) == want, (line, reasons.get(source))
            assert payloads[source] == line
    good = [n for (_, want), n in zip(corpus, lines, strict=True) if want is None]
    assert sorted(got["ticks"]["arrival"].tolist()) == good
    # accounting: records read = ticks + dead letters
    assert records == len(corpus) == len(got["ticks"]) + len(dead)
    assert dead["message"].str.len().min() > 0


def test_clean_blocks_and_dirty_blocks_agree(tmp_path):
    """A block pyarrow accepts and the same lines read one by one give the same ticks."""
    clean = [line for line, want in CSV_CORPUS if want is None and b"Z," not in line and b"BUY" not in line]
    dirty = [*clean, b"garbage"]
    a, b = tmp_path / "clean.csv", tmp_path / "dirty.csv"
    a.write_bytes(HEADER + b"\n".join(clean) + b"\n")
    b.write_bytes(HEADER + b"\n".join(dirty) + b"\n")
    ta, _ = run_files([str(a)])
    tb, _ = run_files([str(b)])
    cols = ["ts", "symbol", "price", "qty", "side", "trade_id", "exchange"]
    assert ta["ticks"][cols].equals(tb["ticks"][cols])
    assert len(tb["dead_letters"]) == 1


def test_huge_payload_is_truncated(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(HEADER + b"x" * 100_000 + b"\n")
    got, _ = run_files([str(path)])
    (payload,) = got["dead_letters"]["payload"].tolist()
    assert len(payload) == 64 * 1024
