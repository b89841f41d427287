"""Candle files through the dataflow: bars as given, features from them, bad order as dead letters."""

from __future__ import annotations

import numpy as np
from flow_harness import run_files

D = 60_000
T0 = 1_620_000_000_000 // D * D


def _candles(path, symbol: str, start: int, n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    rows = []
    for i, c in enumerate(close):
        o = close[i - 1] if i else c
        rows.append((symbol, T0 + (start + i) * D, o, max(o, c) * 1.001, min(o, c) * 0.999, c, 5.0 + i))
    with open(path, "a") as fh:
        if fh.tell() == 0:
            fh.write("symbol,open_time_ms,open,high,low,close,volume\n")
        fh.writelines(",".join(map(str, r)) + "\n" for r in rows)
    return rows


def test_candles_become_bars_and_features_and_out_of_order_candles_dead_letters(tmp_path):
    first, second, third = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    rows = _candles(first, "AAAUSDT", 0, 40, 1) + _candles(first, "BBBUSDT", 0, 40, 2)
    # later files repeat the candle at bar 39 and bring one from the past (bar 10): not bars
    _candles(second, "AAAUSDT", 39, 1, 3)
    _candles(third, "AAAUSDT", 10, 1, 4)
    ticks = tmp_path / "t.csv"
    ticks.write_text(f"ts,symbol,price,qty\n{T0 + 50 * D},BBB/USDT,100.0,1.0\n")
    tables, records = run_files(
        [str(first), str(second), str(third), str(ticks)], ["features.bar_interval=60", "features.window=20"]
    )
    bars = tables["bars"]
    assert len(bars) == 80 and sorted(set(bars.symbol)) == ["AAA/USDT", "BBB/USDT"]
    a = bars[bars.symbol == "AAA/USDT"].sort_values("ts")
    want = [r for r in rows if r[0] == "AAAUSDT"]
    assert a.ts.tolist() == [r[1] for r in want]
    assert np.allclose(a.close, [r[5] for r in want], rtol=0, atol=0)
    assert np.allclose(a.volume, [r[6] for r in want], rtol=0, atol=0)
    assert len(tables["features"]) == 2 * (40 - 20)  # from the 21st bar (W=20 returns) on
    dead = sorted(zip(tables["dead_letters"].reason, tables["dead_letters"].source, strict=True))
    assert dead == [
        ("duplicate", f"{second}:2"),
        ("late", f"{third}:2"),
        ("schema", f"{ticks}:2"),  # BBB/USDT came as candles: a tick of it does not mix in
    ]
    assert records == 80 + 2 + 1 == len(bars) + len(dead)
