"""Fuzzed tick files: no crash, every record accounted for (ticks + dead letters), figures printed.

Mutations are unrestricted: bit flips anywhere (timestamps included),
truncation, random bytes, wrong types, huge numbers, 1 MB lines, repeats.
``QBTC_FUZZ_RECORDS`` sets the size (default 100,000; the note's figures
use 1,000,000).

Through the command line into a chDB store (``qbtc replay FILE``: 50,000
lines by default, 1,000,000 with ``-m slow``) and through the ticks topic
(``qbtc stream --until-end``: 20,000 messages, 200,000 with ``-m slow``),
records read equal the rows of ``ticks`` plus ``dead_letters`` read with
FINAL, exactly (a repeated trade is a ``duplicate`` dead letter).
"""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest
from flow_harness import run_files

RECORDS = int(os.environ.get("QBTC_FUZZ_RECORDS", "100000"))
SYMBOLS = [f"{b}/USDT" for b in ("BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "BNB", "LTC", "DOT", "AVAX")]
SETTINGS = ["features.window=60", "features.corr_window=60", "features.corr_every=10"]


def clean_lines(n: int, seed: int) -> list[bytes]:
    """``n`` CSV tick lines: 10 symbols, about 1,000 trades/s, unique trade ids."""
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(0, 3, n))
    sym = rng.integers(0, len(SYMBOLS), n)
    price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    qty = np.round(rng.exponential(0.5, n) + 0.001, 6)
    side = rng.integers(0, 2, n)
    return [
        b"%d,%s,%.6f,%.6f,%s,%d,binance" % (t, SYMBOLS[s].encode(), p, q, (b"buy", b"sell")[d], i)
        for i, (t, s, p, q, d) in enumerate(
            zip(ts.tolist(), sym.tolist(), price.tolist(), qty.tolist(), side.tolist(), strict=True)
        )
    ]


def mutate(line: bytes, rng: random.Random, lines: list[bytes], seen: int | None = None) -> bytes:
    """One mutated line; a repeat copies one of the first ``seen`` (default all) of ``lines``."""
    kind = rng.randrange(10)
    b = bytearray(line)
    if kind <= 2:  # bit flips, anywhere (timestamps included)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        out = bytes(b)
    elif kind == 3:  # truncation
        out = line[: rng.randrange(len(line))]
    elif kind == 4:  # random bytes
        out = bytes(rng.randrange(256) for _ in range(rng.randint(1, 80)))
    elif kind == 5:  # wrong types
        fields = line.split(b",")
        fields[rng.randrange(len(fields))] = rng.choice([b"true", b"null", b'"x"', b"[1]", b"1_0", b"0x10"])
        out = b",".join(fields)
    elif kind == 6:  # huge or odd numbers
        fields = line.split(b",")
        fields[rng.randrange(4)] = rng.choice(
            [b"1e308", b"-1e308", b"9" * 40, b"nan", b"inf", b"-0", b"1e-320"]
        )
        out = b",".join(fields)
    elif kind == 7:  # a repeat of an earlier record (no slice: a copy per line made 1,000,000 lines O(n^2))
        out = lines[rng.randrange(len(lines) if seen is None else seen)]
    elif kind == 8:  # a line of 1 MB (rarely), else many fields
        out = line + (b"," * (1 << 20) if rng.random() < 0.001 else b",x,y,z")
    else:  # a timestamp moved by up to a day either way
        fields = line.split(b",")
        fields[0] = b"%d" % (int(fields[0]) + rng.randint(-86_400_000, 86_400_000))
        out = b",".join(fields)
    return out.replace(b"\n", b" ")


def fuzzed_lines(clean: list[bytes], rate: float, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [mutate(x, rng, clean, i + 1) if rng.random() < rate else x for i, x in enumerate(clean)]


def _write(path, lines: list[bytes]) -> None:
    with open(path, "wb") as fh:
        fh.write(b"ts,symbol,price,qty,side,trade_id,exchange\n")
        fh.write(b"\n".join(lines) + b"\n")


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.02, 0.3])
def test_fuzzed_file_is_fully_accounted_for(tmp_path, rate):
    clean = clean_lines(RECORDS, seed=11)
    fuzzed = fuzzed_lines(clean, rate, seed=int(rate * 100))
    _write(tmp_path / "clean.csv", clean)
    _write(tmp_path / "fuzzed.csv", fuzzed)
    started = time.perf_counter()
    base, read = run_files([str(tmp_path / "clean.csv")], SETTINGS)
    clean_s = time.perf_counter() - started
    assert read == len(base["ticks"]) == RECORDS
    started = time.perf_counter()
    got, read = run_files([str(tmp_path / "fuzzed.csv")], SETTINGS)
    fuzzed_s = time.perf_counter() - started
    blank = sum(1 for x in fuzzed if not x.strip(b"\r"))
    assert read == RECORDS - blank
    dead = got["dead_letters"]
    assert read == len(got["ticks"]) + len(dead)
    assert dead["source"].is_unique
    feats = got["features"]
    assert np.isfinite(feats.drop(columns=["symbol", "fvar95", "fes95"]).to_numpy(dtype=float)).all()
    # the forecasts are NaN until their model is warm, never infinite
    assert not np.isinf(feats[["fvar95", "fes95"]].to_numpy(dtype=float)).any()
    assert np.isfinite(got["correlations"]["corr"].to_numpy()).all()
    reasons = dead["reason"].value_counts().to_dict()
    print(
        f"\nfuzz rate {rate}: {RECORDS:,} records, clean {RECORDS / clean_s:,.0f} rec/s, "
        f"fuzzed {read / fuzzed_s:,.0f} rec/s (clean/fuzzed time ratio {fuzzed_s / clean_s:.2f}); "
        f"{len(got['ticks']):,} ticks, dead letters {reasons}, symbols {got['ticks']['symbol'].nunique()}"
    )


@pytest.mark.parametrize(("rate", "span"), [(0.02, False), (0.3, False), (0.05, True)])
def test_a_block_with_bad_lines_reads_as_the_line_reader_reads_it(tmp_path, monkeypatch, rate, span):
    """The mixed path (plain lines by columns, the rest line by line) equals the line reader, row for row."""
    from sources.tick_files import TickFileReader
    from sources.time_span import TimeSpan

    clean = clean_lines(30_000, seed=5)
    fuzzed = fuzzed_lines(clean, rate, seed=7)
    fuzzed[100] = fuzzed[100].replace(b",", b",\r", 1)  # a CR inside a line
    path = tmp_path / "f.csv"
    _write(path, fuzzed)
    window = TimeSpan(1_700_000_005_000, 1_700_000_040_000) if span else None

    def read(mixed: bool):
        reader = TickFileReader(str(path), "unknown", lambda: 0, block_bytes=1 << 16, span=window)
        if mixed:
            real = reader._mixed

            def counted(*args):
                out = real(*args)
                used.append(out is not None)
                return out

            monkeypatch.setattr(reader, "_mixed", counted)
        else:
            monkeypatch.setattr(reader, "_mixed", lambda *a: None)
        ticks, dead, records, skipped = {}, [], 0, 0
        for chunk in reader.chunks():
            records += chunk.records
            skipped += chunk.skipped
            dead.extend((d.source, d.reason, d.message, d.payload) for d in chunk.dead)
            for c in chunk.batches:
                payloads = [c.payload(i) for i in range(len(c))]
                rows = zip(
                    c.arrival.tolist(), c.ts.tolist(), c.price.tolist(), c.qty.tolist(), c.side.tolist(),
                    c.trade_id.tolist(), c.exchange.tolist(), payloads, strict=True,
                )  # fmt: skip
                ticks.setdefault(c.symbol, []).extend(rows)
        return ticks, sorted(dead), records, skipped

    used: list[bool] = []
    fast, slow = read(True), read(False)
    assert sum(used) >= len(used) - 1 > 0  # the mixed path read (nearly) every block
    assert fast[2:] == slow[2:]
    assert fast[1] == slow[1]
    assert fast[0].keys() == slow[0].keys()
    for symbol, rows in slow[0].items():
        assert fast[0][symbol] == rows, symbol


# -- through the command line into a chDB store, and through the ticks topic: counted with FINAL ----------

STORE_RECORDS = int(os.environ.get("QBTC_FUZZ_STORE_RECORDS", "50000"))
"""Lines of the CI run of the file-to-store fuzz (the slow test reads 1,000,000)."""
TOPIC_RECORDS = int(os.environ.get("QBTC_FUZZ_TOPIC_RECORDS", "20000"))
"""Messages of the CI run of the topic fuzz (the slow test publishes 200,000)."""
LONG = pytest.mark.skipif(
    "'slow' not in config.getoption('markexpr') and os.environ.get('QBTC_SLOW') != '1'",
    reason="the long version: run it with -m slow (or QBTC_SLOW=1)",
)
"""The long versions stay out of the default run (CI): ``pytest -m slow tests/test_fuzz.py`` runs them."""

_COUNTS = """
import json, sys
from sinks.clickhouse_store import Store
store = Store(sys.argv[1])
out = {t: store.query(f"SELECT count() FROM {t} FINAL").result_rows[0][0] for t in ("ticks", "dead_letters")}
by_reason = "SELECT reason, count() FROM dead_letters FINAL GROUP BY reason ORDER BY reason"
out["reasons"] = dict(store.query(by_reason).result_rows)
json.dump(out, sys.stdout)
"""


def final_counts(dsn: str, cwd) -> dict:
    """Rows of ``ticks`` and ``dead_letters`` in the store at ``dsn`` read with FINAL, and the dead
    letters by reason (in a subprocess).

    A repeat of a stored tick (same trade id) is a ``duplicate`` dead letter,
    so every record read is one row of one of the two tables.
    """
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _COUNTS, dsn], cwd=cwd, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout)


def _store_fuzz(tmp_path, records: int, rate: float, seed: int) -> None:
    import re

    from kafka_helpers import qbtc

    print(f"\nfuzz seed {seed}: {records:,} lines, mutation rate {rate}")
    clean = clean_lines(records, seed=seed)
    fuzzed = fuzzed_lines(clean, rate, seed=seed + 1)
    for i in random.Random(seed).sample(range(records), 2):  # 1 MiB lines, whatever the rate gave
        fuzzed[i] = clean[i] + b"," * (1 << 20) if i % 2 else bytes(random.Random(i).randbytes(1 << 20))
    fuzzed = [x.replace(b"\n", b" ") for x in fuzzed]
    _write(tmp_path / "fuzzed.csv", fuzzed)
    started = time.perf_counter()
    out = qbtc("replay", "fuzzed.csv", "--store", "chdb://f.chdb", "--quiet", cwd=tmp_path, timeout=3600)
    seconds = time.perf_counter() - started
    read = int(re.search(r"replay: ([\d,]+) records", out.stdout).group(1).replace(",", ""))
    blank = sum(1 for x in fuzzed if not x.strip(b"\r"))
    got = final_counts("chdb://f.chdb", tmp_path)
    print(
        f"read {read:,} records in {seconds:.1f} s: {got['ticks']:,} ticks + {got['dead_letters']:,} dead "
        f"letters (FINAL) {got['reasons']}; {blank} blank lines, "
        f"{sum(len(x) >= 1 << 20 for x in fuzzed)} lines of 1 MiB"
    )
    assert read == records - blank
    assert read == got["ticks"] + got["dead_letters"]
    assert got["ticks"] > 0 and got["dead_letters"] > 0


def test_fuzzed_file_through_the_command_line_is_counted_in_the_store(tmp_path):
    """``qbtc replay`` of a fuzzed CSV: records read = ticks + dead letters in the store, with FINAL."""
    _store_fuzz(tmp_path, STORE_RECORDS, 0.3, seed=20_141)


@pytest.mark.slow
@LONG
def test_a_million_fuzzed_lines_through_the_command_line_are_counted_in_the_store(tmp_path):
    _store_fuzz(tmp_path, 1_000_000, 0.3, seed=20_142)


def clean_messages(n: int, seed: int) -> list[bytes]:
    """``n`` tick messages as ``qbtc publish`` writes them (the codec's JSON), unique trade ids."""
    from schemas.codec import encode
    from schemas.records import Tick

    rng = np.random.default_rng(seed)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(0, 3, n))
    sym = rng.integers(0, len(SYMBOLS), n)
    price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    qty = np.round(rng.exponential(0.5, n) + 0.001, 6)
    side = rng.integers(0, 2, n)
    return [
        encode(Tick(t, SYMBOLS[s], p, q, ("buy", "sell")[d], str(i), "binance"))
        for i, (t, s, p, q, d) in enumerate(
            zip(ts.tolist(), sym.tolist(), price.tolist(), qty.tolist(), side.tolist(), strict=True)
        )
    ]


_FIELDS = (b"ts", b"symbol", b"price", b"qty", b"side", b"trade_id", b"exchange", b"v", b"type")


def _set_field(value: bytes, field: bytes, text: bytes) -> bytes:
    """The JSON text with ``field``'s value replaced by ``text`` (raw JSON, e.g. ``1e999``)."""
    import re

    return re.sub(rb'("%s":)("[^"]*"|[^,}]*)' % field, lambda m: m.group(1) + text, value, count=1)


def mutate_message(value: bytes, rng: random.Random, clean: list[bytes], seen: int) -> bytes:
    """One mutated tick message (the mutations of :func:`mutate`, on the codec's JSON); a repeat
    copies one of the first ``seen`` of ``clean``."""
    kind = rng.randrange(9)
    if kind <= 2:  # bit flips, anywhere
        b = bytearray(value)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 3:  # truncation (to nothing, sometimes)
        return value[: rng.randrange(len(value))]
    if kind == 4:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 80)))
    if kind == 5:  # wrong types
        wrong = [b"true", b"null", b'"x"', b"[1]", b'{"a":1}', b'"100.5"', b"1.5", b"17"]
        return _set_field(value, rng.choice(_FIELDS), rng.choice(wrong))
    if kind == 6:  # huge or odd numbers
        odd = [b"1e308", b"-1e308", b"1e999", b"9" * 40, b"-0", b"1e-320", b"NaN", b"Infinity", b"-1"]
        return _set_field(value, rng.choice(_FIELDS[:4]), rng.choice(odd))
    if kind == 7:  # a repeat of an earlier record
        return clean[rng.randrange(seen)]
    # an unknown field: 1 MiB of it (rarely), else a short one
    pad = b"x" * (1 << 20) if rng.random() < 0.002 else b"y"
    return value[:-1] + b',"pad":"' + pad + b'"}'


def _topic_fuzz(brokers: str, tmp_path, records: int, rate: float, seed: int) -> None:
    import re

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from kafka_helpers import qbtc, unique

    print(f"\ntopic fuzz seed {seed}: {records:,} messages, mutation rate {rate}")
    clean = clean_messages(records, seed=seed)
    rng = random.Random(seed + 1)
    values = [mutate_message(x, rng, clean, i + 1) if rng.random() < rate else x for i, x in enumerate(clean)]
    for i in rng.sample(range(records), 2):  # 1 MiB messages, whatever the rate gave
        padded = clean[i][:-1] + b',"pad":"' + b"x" * (1 << 20) + b'"}'
        values[i] = padded if i % 2 else rng.randbytes(1 << 20)
    prefix = unique("fz")
    topic = f"{prefix}ticks"
    big = str(4 << 20)  # room for the 1 MiB messages
    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics([NewTopic(topic, 3, 1, config={"max.message.bytes": big})])
    futures[topic].result(30)
    producer = Producer({"bootstrap.servers": brokers, "message.max.bytes": big, "linger.ms": 20})
    failed: list = []
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value, key=SYMBOLS[i % len(SYMBOLS)].encode(),
                                 on_delivery=lambda err, _m: err and failed.append(err))  # fmt: skip
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0 and not failed, failed[:3]
    started = time.perf_counter()
    out = qbtc(
        "stream", "--kafka", brokers, "--topic", topic, "--until-end", "--store", "chdb://t.chdb", "--quiet",
        "--set", f"kafka.topic_prefix={prefix}", *[a for s in SETTINGS for a in ("--set", s)],
        cwd=tmp_path, timeout=3600,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    read = int(re.search(r"stream: ([\d,]+) records", out.stdout).group(1).replace(",", ""))
    got = final_counts("chdb://t.chdb", tmp_path)
    print(
        f"read {read:,} messages in {seconds:.1f} s: {got['ticks']:,} ticks + {got['dead_letters']:,} dead "
        f"letters (FINAL) {got['reasons']}; "
        f"{sum(len(v) >= 1 << 20 for v in values)} messages of 1 MiB"
    )
    assert read == records
    assert read == got["ticks"] + got["dead_letters"]
    assert got["ticks"] > 0 and got["dead_letters"] > 0


@pytest.mark.kafka
def test_fuzzed_messages_on_the_ticks_topic_are_counted_in_the_store(kafka_bootstrap, tmp_path):
    """``qbtc stream`` of mutated tick messages: messages read = ticks + dead letters, with FINAL."""
    _topic_fuzz(kafka_bootstrap, tmp_path, TOPIC_RECORDS, 0.3, seed=20_143)


@pytest.mark.kafka
@pytest.mark.slow
@LONG
def test_200000_fuzzed_messages_on_the_ticks_topic_are_counted_in_the_store(kafka_bootstrap, tmp_path):
    _topic_fuzz(kafka_bootstrap, tmp_path, 200_000, 0.3, seed=20_144)
