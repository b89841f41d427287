"""A store made by an older qbtc: new columns are added when it opens, a changed key is refused on write."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from schemas.ddl import FEATURES, FILLS
from sinks.clickhouse_store import Store, StoreWriteError

OLD_FEATURES = """CREATE TABLE features (symbol LowCardinality(String), ts DateTime64(3, 'UTC'), ret Float64,
    volatility Float64, entropy Float64, var95 Float64, es95 Float64, qvar95 Float64, drift UInt8)
    ENGINE = ReplacingMergeTree ORDER BY (symbol, ts)"""
OLD_FILLS = """CREATE TABLE fills (ts DateTime64(3, 'UTC'), order_id String, symbol LowCardinality(String),
    side LowCardinality(String), qty Float64, price Float64, fee Float64, slippage_bps Float64)
    ENGINE = ReplacingMergeTree ORDER BY (order_id)"""


def test_an_older_store_gains_the_new_columns_and_refuses_writes_under_an_old_key(tmp_path):
    dsn = f"chdb://{tmp_path / 'old.chdb'}"
    store = Store(dsn)
    for table, ddl in (("features", OLD_FEATURES), ("fills", OLD_FILLS)):
        store.command(f"DROP TABLE {table}")
        store.command(ddl)
    store.command("INSERT INTO features VALUES ('X/USDT', 60000, 0.01, 0.02, 0.9, 0.03, 0.04, 0.02, 0)")

    again = Store(dsn)  # what a newer qbtc does when it opens the old store
    rows = again.query("SELECT ret, fvar95, fes95 FROM features FINAL").result_rows
    assert rows[0][0] == 0.01 and math.isnan(rows[0][1]) and math.isnan(rows[0][2])
    cols = {name: [0.5] for name, _ in FEATURES.columns}
    cols.update(symbol=["X/USDT"], interval=[60], ts=[120_000], drift=[0])
    assert again.insert(FEATURES, cols) == 1
    assert again.query("SELECT count() FROM features FINAL").result_rows[0][0] == 2
    # made before several resolutions: rebuilt under (symbol, interval, ts), the old row at interval 0
    key = again.query("SELECT sorting_key FROM system.tables WHERE name = 'features'").result_rows[0][0]
    assert key.replace(" ", "") == "symbol,interval,ts", key
    got = again.query(
        "SELECT interval, toUnixTimestamp64Milli(ts) FROM features FINAL ORDER BY ts"
    ).result_rows
    assert got == [(60, 120_000), (0, 60_000_000)]  # VALUES read 60000 as seconds

    assert again.stale_keys == {"fills": "order_id"}
    fill = {name: [1.0] for name, _ in FILLS.columns}
    fill.update(ts=[60_000], order_id=["o1"], symbol=["X/USDT"], side=["buy"])
    with pytest.raises(StoreWriteError, match=r"fills: the table in .* is keyed by \(order_id\), this qbtc"):
        again.insert(FILLS, fill)


_BEFORE_RUN_IDS = """
import sys
from schemas.ddl import ORDERS
from sinks.clickhouse_store import Store

dsn = sys.argv[1]
store = Store(dsn)
old_orders = ORDERS.create_sql().replace("`run_id` LowCardinality(String),\\n    ", "")
old_orders = old_orders.replace("ORDER BY (run_id, order_id)", "ORDER BY (order_id)")
assert "run_id" not in old_orders
store.command("DROP TABLE orders")
store.command(old_orders)
store.command("INSERT INTO orders VALUES (60000, 'a-1', '', 'X/USDT', 'buy', 1, 'market', 0, 'entry', 's')")

again = Store(dsn)
assert again.stale_keys == {}, again.stale_keys
key = again.query("SELECT sorting_key FROM system.tables WHERE name = 'orders'").result_rows[0][0]
assert key.replace(" ", "") == "run_id,order_id", key
assert again.query("SELECT run_id, order_id FROM orders FINAL").result_rows == [("", "a-1")]
tables = {r[0] for r in again.query("SHOW TABLES").result_rows}
assert not {t for t in tables if "rekey" in t}, tables  # the rebuild's tables are gone
assert again.run_rows("") == {"orders": 1}
cols = {name: [1.0] for name, _ in ORDERS.columns}
cols.update(run_id=["r1"], ts=[60_000], order_id=["a-1"], parent_id=[""], symbol=["X/USDT"], side=["buy"],
            order_type=["market"], reason=["entry"], strategy=["s"])
assert again.insert(ORDERS, cols) == 1  # the same order id in another run: a row of its own
assert again.query("SELECT count() FROM orders FINAL").result_rows[0][0] == 2

from flows.runs import list_runs

names, rows = list_runs(again)  # no runs row: the old rows are one line of their own
assert [r[:2] for r in rows] == [("", "(before run ids)")] and rows[0][-1] == "1 row", rows
"""


def test_a_store_made_before_run_ids_keeps_its_trading_rows_under_the_new_keys(tmp_path):
    # its own process: chDB opens one store path per process
    dsn = f"chdb://{tmp_path / 'pre.chdb'}"
    proc = subprocess.run(
        [sys.executable, "-c", _BEFORE_RUN_IDS, dsn], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


_BEFORE_INTERVALS = """
import sys
from schemas.ddl import BARS
from sinks.clickhouse_store import FINEST_BARS, Store

OLD_BARS = (
    "CREATE TABLE bars (symbol LowCardinality(String), ts DateTime64(3, 'UTC'), open Float64, high Float64, "
    "low Float64, close Float64, volume Float64, vwap Float64, trades UInt64) "
    "ENGINE = ReplacingMergeTree ORDER BY (symbol, ts)"
)
OLD_CORRELATIONS = (
    "CREATE TABLE correlations (ts DateTime64(3, 'UTC'), symbol_a LowCardinality(String), "
    "symbol_b LowCardinality(String), corr Float64) "
    "ENGINE = ReplacingMergeTree ORDER BY (ts, symbol_a, symbol_b)"
)
dsn = sys.argv[1]
store = Store(dsn)
for table, ddl in (("bars", OLD_BARS), ("correlations", OLD_CORRELATIONS)):
    store.command(f"DROP TABLE {table}")
    store.command(ddl)
store.command("INSERT INTO bars VALUES ('X/USDT', 60000, 1, 2, 0.5, 1.5, 3, 1.2, 4)")
store.command("INSERT INTO correlations VALUES (60000, 'X/USDT', 'Y/USDT', 0.25)")

again = Store(dsn)
assert again.stale_keys == {}, again.stale_keys
tables = "SELECT name, sorting_key FROM system.tables WHERE database = currentDatabase()"
keys = {name: key.replace(" ", "") for name, key in again.query(tables).result_rows}
assert keys["bars"] == "symbol,interval,ts", keys
assert keys["correlations"] == "interval,ts,symbol_a,symbol_b", keys
assert again.query("SELECT interval, corr FROM correlations FINAL").result_rows == [(0, 0.25)]
finest = f"SELECT interval, close FROM bars FINAL WHERE {FINEST_BARS} ORDER BY ts"
assert again.query(finest).result_rows == [(0, 1.5)]  # only old rows: those
cols = {name: [2.0, 2.0] for name, _ in BARS.columns}
cols.update(symbol=["X/USDT", "X/USDT"], interval=[3600, 60], ts=[0, 120_000], trades=[1, 1])
assert again.insert(BARS, cols) == 2
assert again.query(finest).result_rows == [(60, 2.0)]  # the finest stamped resolution
"""


def test_a_store_made_before_several_resolutions_keeps_its_rows_at_interval_0(tmp_path):
    """bars and correlations keyed without interval are rebuilt with their rows at interval 0; the
    readers of one resolution take the finest stamped one, else those rows."""
    dsn = f"chdb://{tmp_path / 'pre-intervals.chdb'}"
    proc = subprocess.run(
        [sys.executable, "-c", _BEFORE_INTERVALS, dsn], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
