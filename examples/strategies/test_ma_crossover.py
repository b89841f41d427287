"""The example strategy, step by step against pandas, through a pickle, and through the loader."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ma_crossover import MovingAverageCrossover, MovingAverageCrossoverSettings

from flows.config import StrategiesConfig
from flows.strategy_loader import load_strategies
from schemas.records import REGIMES, Bar

HERE = Path(__file__).parent


def _bars(n: int, seed: int = 3) -> list[Bar]:
    rng = np.random.default_rng(seed)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    return [Bar("X", i * 60_000, c, c, c, c, 1.0, c, 1) for i, c in enumerate(map(float, closes))]


def _regimes(n: int) -> list[str]:
    return [REGIMES[(i // 50) % len(REGIMES)] for i in range(n)]


def test_signals_match_pandas_rolling_means_bar_by_bar():
    s = MovingAverageCrossoverSettings(fast=5, slow=20, full_gap=0.004)
    strategy = MovingAverageCrossover(s)
    bars, regimes = _bars(3000), _regimes(3000)
    closes = pd.Series([b.close for b in bars])
    fast, slow = closes.rolling(s.fast).mean(), closes.rolling(s.slow).mean()
    trades = 0
    for i, (bar, regime) in enumerate(zip(bars, regimes, strict=True)):
        sig = strategy.update(bar.ts + 60_000, bar, None, regime)
        if i < s.slow - 1:
            assert sig is None, i
            continue
        gap = fast[i] - slow[i]
        if regime not in s.regimes:
            want = (0, 0.0)
        else:
            want = (int(np.sign(gap)), min(1.0, abs(gap) / slow[i] / s.full_gap))
        assert sig.direction == want[0], i
        assert math.isclose(sig.strength, want[1], rel_tol=1e-9, abs_tol=1e-12), i
        assert (sig.ts, sig.strategy, sig.regime) == (bar.ts + 60_000, "ma_crossover", regime)
        trades += sig.direction != 0
    assert trades > 1000


def test_pickle_mid_stream_continues_identically():
    bars, regimes = _bars(600, seed=5), _regimes(600)
    a = MovingAverageCrossover()
    for bar, regime in zip(bars[:300], regimes[:300], strict=True):
        a.update(bar.ts, bar, None, regime)
    b = pickle.loads(pickle.dumps(a))
    rest = list(zip(bars[300:], regimes[300:], strict=True))
    ra = [a.update(bar.ts, bar, None, regime) for bar, regime in rest]
    rb = [b.update(bar.ts, bar, None, regime) for bar, regime in rest]
    assert ra == rb and any(x is not None and x.direction for x in ra)


@pytest.mark.parametrize(
    "bad", [{"fast": 30, "slow": 30}, {"fast": 0}, {"full_gap": 0.0}, {"full_gap": float("nan")}]
)
def test_settings_reject_bad_values(bad):
    with pytest.raises(ValueError):
        MovingAverageCrossoverSettings(**bad)


def test_loads_from_its_file_with_settings_from_config():
    spec = f"{HERE / 'ma_crossover.py'}:MovingAverageCrossover"
    (made,) = load_strategies(StrategiesConfig(use=(spec,), params={"ma_crossover": {"fast": "3"}}))
    assert made.name == "ma_crossover"
    # the loader's copy of the module is its own (qbtc_strategy_...), so compare values
    assert dataclasses.asdict(made.settings) == dataclasses.asdict(MovingAverageCrossoverSettings(fast=3))
    assert made.build().regimes == frozenset({"trend_up", "trend_down", "range"})
