"""Correlation rows as columns: the same rows as records, on the grid, in the store and through pickle.

The grid's blocks (``update_blocks``) must read as exactly the records of
``update`` (same order, same floats), their store columns must hold the
same rows, their topic messages must be those of the records, and the
vectorised pair correlations must equal the per-pair ones.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flows.messages import StoreRows, SymbolProgress
from flows.steps import GridLogic
from operators.features.correlation_grid import CorrelationGrid, CorrelationSettings
from operators.features.rolling_correlation import RollingCorrelation
from schemas.codec import decode
from schemas.correlation_rows import CorrelationBlock, CorrelationRows, pair_indices
from schemas.records import Correlation
from sinks.output_sink import _OutPartition
from sinks.store_sink import RowCounter, StoreWriter, correlation_columns, record_columns

SYMBOLS = ("ETH/USDT", "A/USDT", "BTC/USDT", "Z/USDT", "B/USDT", "C/USDT")


def _calls(seed: int, steps: int = 120) -> list[tuple]:
    """Symbols reporting bars (some late, some with gaps, one flat) and how far they are final."""
    rng = np.random.default_rng(seed)
    close = dict.fromkeys(SYMBOLS, 100.0)
    out = []
    for k in range(steps):
        for s in rng.permutation(SYMBOLS).tolist():
            if s == "ETH/USDT" and k < 10:  # a late starter
                continue
            if rng.random() < 0.8:
                if s != "Z/USDT" or k > 70:  # flat for a while: constant windows
                    close[s] *= float(np.exp(rng.normal(0, 1e-3)))
                out.append((s, [(k, close[s])], k, SYMBOLS[:3]))
            else:
                out.append((s, [], k - 1, SYMBOLS[:3]))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_blocks_read_as_the_records_of_update(seed):
    settings = CorrelationSettings(1000, 20, 3)
    records, blocks = CorrelationGrid(settings), CorrelationGrid(settings)
    want, got = [], []
    for call in _calls(seed):
        want.extend(records.update(*call))
        got.extend(blocks.update_blocks(*call))
    want.extend(records.finish())
    got.extend(blocks.finish_blocks())
    rows = CorrelationRows(tuple(got))
    assert len(want) > 100
    assert len(rows) == len(want)
    assert list(rows) == want
    assert rows == want
    for block in got:  # pairs a < b in string order, every ready pair once
        r = list(block)
        assert all(x.symbol_a < x.symbol_b for x in r)
        assert (
            len({(x.symbol_a, x.symbol_b) for x in r})
            == len(r)
            == len(block.names) * (len(block.names) - 1) // 2
        )
    assert pickle.dumps(records) == pickle.dumps(blocks)  # the grid's state does not depend on the path


def test_store_columns_hold_the_same_rows_as_the_records():
    blocks = (
        CorrelationBlock(2000, ("A", "C", "D"), np.array([0.5, -1.0, 0.25])),
        CorrelationBlock(3000, ("B", "C"), np.array([1.0])),
    )
    single = Correlation(4000, "A", "B", 0.125)
    parts = [CorrelationRows(blocks), single]
    cols = correlation_columns(parts)
    want = record_columns("correlations", [*CorrelationRows(blocks), single])
    assert cols["ts"].tolist() == want["ts"]
    assert isinstance(cols["symbol_a"], pa.DictionaryArray)
    assert cols["symbol_a"].to_pylist() == want["symbol_a"]
    assert cols["symbol_b"].to_pylist() == want["symbol_b"]
    assert cols["corr"].tolist() == want["corr"]
    assert correlation_columns([])["corr"].tolist() == []


def test_the_null_sink_counts_rows_without_making_records():
    counter = RowCounter()
    writer = StoreWriter(None, counter, batch_rows=4)
    block = CorrelationBlock(2000, ("A", "B", "C"), np.array([0.5, -1.0, 0.25]))
    writer.add("correlations", CorrelationRows((block,)))
    writer.add("correlations", CorrelationRows(()))
    writer.add("correlations", [Correlation(3000, "A", "B", 0.5)])
    writer.flush()
    assert counter.rows["correlations"] == 4


def test_grid_step_rows_pickle_and_compare_as_records():
    logic = GridLogic(CorrelationSettings(1000, 5, 1), None)
    out = []
    rng = np.random.default_rng(4)
    for k in range(12):
        for s in ("A", "B", "C"):
            close = float(100 * np.exp(rng.normal(0, 0.01)))
            out.extend(logic.on_batch([SymbolProgress(s, [(k, close)], k, ("A", "B", "C"), None, False)])[0])
    rows = [o.rows for o in out if o.rows is not None]
    assert rows and all(isinstance(r, StoreRows) and r.table == "correlations" for r in rows)
    payload = rows[-1].rows
    again = pickle.loads(pickle.dumps(payload))
    assert again == payload and len(again) == 3
    assert [(c.symbol_a, c.symbol_b) for c in again] == [("A", "B"), ("A", "C"), ("B", "C")]


def test_vectorised_pairs_equal_the_per_pair_values():
    rng = np.random.default_rng(5)
    rc = RollingCorrelation(30, columns=7)
    x = rng.normal(0, 1e-3, (200, 7))
    x[:, 3] = 0.0  # a constant column: 0/0, read as -1 like the per-pair clamp
    x[50:, 5] = x[50:, 1] * 2.0  # perfectly correlated: the clamp at 1
    for row in x:
        rc.update(row)
        i, j = pair_indices(7)
        with np.errstate(divide="ignore", invalid="ignore"):
            want = [rc.corr(a, b) for a, b in zip(i.tolist(), j.tolist(), strict=True)]
        assert rc.corr_pairs(i, j).tolist() == want


class _Producer:
    def __init__(self) -> None:
        self.sent: list = []

    def produce_many(self, topic, values, keys) -> None:
        self.sent.extend(zip(repeat(topic), values, keys, strict=False))

    def poll(self) -> None:
        pass

    def check(self) -> None:
        pass


def test_topic_messages_of_rows_are_those_of_their_records():
    block = CorrelationBlock(2000, ("A/USDT", "B/USDT", "C/USDT"), np.array([0.5, -1.0, 0.25]))
    sent = []
    for payload in (CorrelationRows((block,)), list(CorrelationRows((block,)))):
        producer = _Producer()
        part = _OutPartition(StoreWriter(None, RowCounter()), producer, {"correlations": "corr-topic"})
        part.write_batch([("correlations", payload)])
        sent.append(producer.sent)
    assert sent[0] == sent[1]
    assert [(t, k) for t, _, k in sent[0]] == [("corr-topic", b"A/USDT")] * 2 + [("corr-topic", b"B/USDT")]
    assert [decode(v) for _, v, _ in sent[0]] == list(CorrelationRows((block,)))


WRITE_AND_READ = """
import json, sys
import numpy as np
from schemas.correlation_rows import CorrelationBlock, CorrelationRows
from schemas.records import Correlation
from sinks.clickhouse_store import Store
from sinks.store_sink import RowCounter, StoreWriter
store = Store("chdb://:memory:")
writer = StoreWriter(store, RowCounter(), batch_rows=5)
names = ("A/USDT", "B/USDT", "C/USDT", "D/USDT")
for k in range(3):
    corr = np.linspace(-1.0, 1.0, 6) * (k + 1) / 3.0
    block = CorrelationBlock(1000 * k, names[k % 2 :], corr[: 6 if k % 2 == 0 else 3])
    writer.add("correlations", CorrelationRows((block,)))
writer.add("correlations", [Correlation(9000, "A/USDT", "Z/USDT", 0.1)])
writer.flush()
sql = ("SELECT toUnixTimestamp64Milli(ts), symbol_a, symbol_b, corr FROM correlations"
       " ORDER BY ts, symbol_a, symbol_b")
print(json.dumps(store.query(sql).result_rows))
"""


def test_the_store_holds_the_rows_of_the_records():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", WRITE_AND_READ], cwd=root, capture_output=True, text=True, check=True
    )
    got = [tuple(r) for r in json.loads(out.stdout.splitlines()[-1])]
    names = ("A/USDT", "B/USDT", "C/USDT", "D/USDT")
    want = []
    for k in range(3):
        corr = np.linspace(-1.0, 1.0, 6) * (k + 1) / 3.0
        block = CorrelationBlock(1000 * k, names[k % 2 :], corr[: 6 if k % 2 == 0 else 3])
        want.extend((c.ts, c.symbol_a, c.symbol_b, c.corr) for c in block)
    want.append((9000, "A/USDT", "Z/USDT", 0.1))
    assert got == sorted(want)
