"""Contract tests over every operator and every settings class (River's ``test_stats.py`` style).

Operators and settings classes are found by walking ``operators/``: a public
class that is not a dataclass, a protocol or an exception is an operator and
needs an entry in :data:`OPERATORS` (how to make one and a seeded input
stream); a dataclass with ``__post_init__`` is a settings class and must be
built with ``schemas.settings.setting``. A new class without its entry fails
here.

- Every operator survives a pickle round trip mid-stream: the copy and the
  original answer the rest of the stream identically; an operator with a
  value has None until warm (never 0 for "not enough data") and a value by
  the end of its stream.
- Every settings class is frozen, refuses NaN, +inf, -inf, values out of its
  bounds and values of the wrong type with ``Class.field`` in the message,
  and every field can be set from config text (``settings_from_table`` or a
  config section); the README's key reference is the generated one.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pickle
import pkgutil
import random
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import operators
from flows.config import (
    EXTRA_KEYS,
    Settings,
    config_reference,
    load_settings,
    section_keys,
    settings_from_table,
)
from operators.execution.algos import IcebergWorker, TwapSettings, TwapWorker
from operators.execution.cost_model import BrokerSettings
from operators.execution.deadman import (
    DeadMansSwitch,
    DeadMansSwitchSettings,
    VenueHealth,
    VenueHealthSettings,
)
from operators.execution.limits import ExecutionGuard, ExecutionLimits
from operators.execution.observed_volume import ObservedVolume, ObservedVolumeSettings
from operators.execution.paper_broker import PaperBroker
from operators.execution.quality import SlippageMonitor, SlippageSettings
from operators.execution.reconcile import ReconcileSettings
from operators.features.bar_builder import BarBuilder, BarSettings
from operators.features.bar_rollup import BarRollup, RollupSettings
from operators.features.candle_bars import CandleBars
from operators.features.correlation_grid import CorrelationGrid, CorrelationSettings
from operators.features.drift_flag import DriftFlag
from operators.features.event_time import PartitionMerge, SymbolCapacity, TimeBounds, TimeGuard
from operators.features.grid_returns import GridReturns
from operators.features.permutation_entropy import PermutationEntropy
from operators.features.rolling_correlation import RollingCorrelation
from operators.features.rolling_tail import RollingTail
from operators.features.rolling_variance import RollingVariance
from operators.features.symbol_features import FeatureSettings, SymbolFeatures
from operators.loop_decisions import LoopDecisions
from operators.risk.engine import RiskEngine
from operators.risk.portfolio import Portfolio, PortfolioSettings
from operators.risk.settings import MarketView, OrderIntent
from operators.risk.stress import StressSettings
from operators.risk.var_backtest import ModelRiskMonitor, VarBacktest, VarBacktestFeed, VarBacktestSettings
from operators.risk.var_models import (
    CornishFisher,
    CornishFisherSettings,
    EwmaNormal,
    EwmaSettings,
    FhsSettings,
    FilteredHistorical,
    Garch,
    GarchSettings,
    Historical,
    HistoricalSettings,
    StudentT,
    StudentTSettings,
)
from operators.signals.atr import ATR, ATRSettings
from operators.signals.levels import Levels, LevelsSettings
from operators.signals.online_model import OnlineDirectionModel, OnlineModel, OnlineModelSettings
from operators.signals.progressive_metrics import MetricsSettings, ProgressiveMetrics
from operators.signals.regime import RegimeClassifier, RegimeSettings
from operators.signals.sizing import PositionSizer
from operators.signals.strategies import (
    BUILTINS,
    Breakout,
    EntropyScalping,
    MeanReversion,
    RollingExtreme,
    StrategiesSettings,
    TrendFollowing,
)
from operators.signals.strategy import BarStrategy
from operators.signals.strategy_weights import StrategyWeights, StrategyWeightsSettings
from operators.trading_loop import TradingLoop, TradingSettings
from schemas.records import BUY, LIMIT, MARKET, SELL, Bar, Feature, Fill, Order, Tick
from schemas.settings import SettingsError, field_types, is_settings_class, optional_of
from schemas.tick_columns import TickColumns

D = 60_000
T0 = 1_620_000_000_000 // D * D
N = 400  # items per stream


# --------------------------------------------------------------------------- discovery


def _operator_modules():
    for info in pkgutil.walk_packages(operators.__path__, "operators."):
        yield importlib.import_module(info.name)


def _classes():
    for module in _operator_modules():
        for name, cls in vars(module).items():
            if inspect.isclass(cls) and cls.__module__ == module.__name__ and not name.startswith("_"):
                yield cls


def discovered_operators() -> list[type]:
    """Public classes of operators/ that are not dataclasses, protocols, bases or exceptions."""
    out = []
    for cls in _classes():
        if dataclasses.is_dataclass(cls) or issubclass(cls, BaseException):
            continue
        if getattr(cls, "_is_protocol", False) or cls in NOT_OPERATORS:
            continue
        out.append(cls)
    return sorted(out, key=lambda c: c.__qualname__)


def discovered_settings() -> list[type]:
    """Dataclasses of operators/ that check themselves (a ``__post_init__``) or are named ``...Settings``."""
    found = [
        c
        for c in _classes()
        if dataclasses.is_dataclass(c) and ("__post_init__" in vars(c) or c.__name__.endswith("Settings"))
    ]
    return sorted(found, key=lambda c: c.__qualname__)


# --------------------------------------------------------------------------- operator registry


@dataclass(frozen=True)
class Case:
    """How to exercise one operator.

    ``make`` makes a fresh one, ``stream`` its seeded input items, ``step``
    feeds one item and returns what the operator answered; ``value`` (if the
    operator has one) reads it from the operator and that answer.
    """

    make: Callable[[], object]
    stream: Callable[[], list]
    step: Callable[[object, object], object]
    value: Callable[[object, object], object] | None = None


def _walk(n: int = N, seed: int = 1, start: float = 100.0, vol: float = 0.01) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(start * np.exp(np.cumsum(rng.normal(0.0, vol, n))))


def _bars(symbol: str = "A/USDT", n: int = N, seed: int = 1, interval: int = D) -> list[Bar]:
    rng = np.random.default_rng(seed + 100)
    out, prev = [], None
    for k, c in enumerate(_walk(n, seed)):
        o = c if prev is None else prev
        hi, lo = max(o, c) * (1 + abs(rng.normal(0, 0.002))), min(o, c) * (1 - abs(rng.normal(0, 0.002)))
        v = float(rng.uniform(50, 150))
        out.append(Bar(symbol, T0 + k * interval, o, hi, lo, c, v, (o + c) / 2, int(rng.integers(1, 20))))
        prev = c
    return out


def _features(bars: list[Bar], seed: int = 2) -> list[Feature]:
    rng = np.random.default_rng(seed)
    return [
        Feature(
            b.symbol,
            b.ts,
            0.0,
            float(rng.uniform(0.002, 0.02)),
            float(rng.uniform(0.5, 1.0)),
            0.0,
            0.0,
            0.0,
            0,
        )
        for b in bars
    ]


_REGIMES = ("trend_up", "trend_down", "range", "high_vol")


def _strategy_stream() -> list:
    bars = _bars(seed=3)
    regimes = [None] * 5 + [_REGIMES[(k // 40) % 4] for k in range(5, len(bars))]
    return list(zip(bars, _features(bars), regimes, strict=True))


def _strategy_case(cls, settings=None) -> Case:
    return Case(
        make=cls if settings is None else lambda: cls(settings),
        stream=_strategy_stream,
        step=lambda op, item: op.update(item[0].ts + D, *item),
        value=lambda op, answer: answer,
    )


def _ticks(n: int = N, seed: int = 4) -> list[TickColumns]:
    """Batches of one symbol's ticks, mostly in order, with repeats and stragglers."""
    rng = random.Random(seed)
    out, ts, k = [], T0, 0
    for b in range(n // 4):
        ticks = []
        for _ in range(rng.randint(1, 6)):
            ts += rng.choice((0, 200, 700, 1_500, 30_000))
            late = rng.random() < 0.1
            t = ts - 5_000 if late else ts
            ticks.append(Tick(t, "A/USDT", 100.0 + rng.random(), rng.random() + 0.1, "buy", f"id{k}", "x"))
            if rng.random() < 0.05:  # a repeat of the same trade
                ticks.append(ticks[-1])
            k += 1
        out.append(TickColumns.from_ticks(ticks, "f", b * 10))
    return out


def _guard_stream() -> list[list[TickColumns]]:
    rng = random.Random(5)
    out, ts = [], T0
    for b in range(N // 4):
        batches = []
        for s in ("A/B", "C/D"):
            ticks = []
            for _ in range(rng.randint(1, 4)):
                jump = rng.choice((100, 100, 500, 20_000, 120_000))
                ts += jump if rng.random() < 0.9 else -jump
                ticks.append(Tick(ts, s, 1.0, 1.0))
            batches.append(TickColumns.from_ticks(ticks, "f", b * 10))
        out.append(batches)
    return out


def _merge_stream() -> list:
    rng = random.Random(6)
    out, ts = [], [T0, T0]
    for _ in range(N // 2):
        part = rng.randint(0, 1)
        ticks = []
        for _ in range(rng.randint(1, 4)):
            ts[part] += rng.randint(1, 500)
            ticks.append(Tick(ts[part], "A/B", 1.0, 1.0))
        out.append((part, [TickColumns.from_ticks(ticks, f"t[{part}]")], rng.random() < 0.2))
    return out


def _grid_stream() -> list:
    rng = random.Random(7)
    closes = {s: _walk(N, seed) for seed, s in enumerate(("A", "B", "C"))}
    out, k = [], 0
    while k < N:
        step = rng.randint(1, 3)
        for s in ("A", "B", "C"):
            if rng.random() < 0.9:
                out.append((s, [(j, closes[s][j]) for j in range(k, min(N, k + step))], min(N, k + step) - 1))
        k += step
    return out


def _portfolio_stream() -> list:
    rng = random.Random(8)
    out = []
    for day in range(90):
        ts = T0 + day * 86_400_000
        price = 100.0 * (1 + 0.02 * math.sin(day / 5))
        if rng.random() < 0.3:
            side = BUY if rng.random() < 0.6 else SELL
            out.append(("fill", Fill(ts, f"f{day}", "A/USDT", side, rng.uniform(1, 50), price, 0.1, 1.0)))
        out.append(("mark", ts, price))
    return out


def _portfolio_step(pf: Portfolio, item) -> tuple:
    if item[0] == "fill":
        pf.apply_fill(item[1])
    else:
        pf.mark("A/USDT", item[2])
        pf.advance(item[1])
    return pf.equity(), pf.drawdown(), pf.positions.get("A/USDT"), pf.sharpe()


def _corr(a: str, b: str) -> float | None:
    return 0.5


def _engine_stream() -> list:
    rng = random.Random(9)
    out = []
    for k in range(N):
        ts = T0 + k * D
        vol = 0.01 if k < 100 else 0.03 if k < 140 else 0.01
        price = 100.0 * (1 - 0.0005 * max(0, k - 200))
        out.append((ts, vol, price, rng.random() < 0.2))
    return out


def _engine_step(engine: RiskEngine, item) -> tuple:
    ts, vol, price, order = item
    pf = Portfolio(PortfolioSettings())
    for s in ("A/USDT", "B/USDT"):
        pf.apply_fill(Fill(T0, f"seed-{s}", s, BUY, 300.0, 100.0, 0.0, 0.0))
        pf.mark(s, price)
    pf.advance(ts)
    symbols = ("A/USDT", "B/USDT")
    view = MarketView(
        ts,
        {s: vol for s in symbols},
        {s: 0.9 for s in symbols},
        dict.fromkeys(symbols, "range"),
        dict.fromkeys(symbols, ts),
        _corr,
        True,
    )
    answer = engine.assess(pf, view)
    if order:
        intent = OrderIntent("A/USDT", BUY, 10.0, price, "entry", "test")
        answer = (answer, engine.check_order(intent, pf, view))
    return answer


def _broker_stream() -> list:
    rng = random.Random(10)
    out = []
    for k, b in enumerate(_bars(seed=11)):
        out.append(("bar", b))
        if rng.random() < 0.3:
            side, kind = rng.choice((BUY, SELL)), rng.choice((MARKET, MARKET, LIMIT))
            limit = b.close * (0.999 if side == BUY else 1.001) if kind == LIMIT else 0.0
            qty = rng.choice((1.0, 5.0, 900.0))  # the last is worked as TWAP children
            out.append(
                ("order", Order(b.ts + D, f"o{k}", "", b.symbol, side, qty, kind, limit, "entry", "t"))
            )
        if rng.random() < 0.05:
            out.append(("protect", b.symbol, 5.0, b.close * 0.99, b.close * 1.01, b.ts + D))
    return out


def _broker_step(broker: PaperBroker, item):
    if item[0] == "bar":
        return broker.on_bar(item[1]), broker.take_cancelled()
    if item[0] == "order":
        return broker.submit(item[1])
    return broker.set_protection(*item[1:])


def _weights_stream() -> list:
    rng = random.Random(12)
    names = list(BUILTINS)
    return [
        (rng.choice(names), rng.choice(("A", "B")), rng.choice((-1, 0, 1)), rng.gauss(0, 0.01), T0 + k * D)
        for k in range(N)
    ]


def _weights_step(w: StrategyWeights, item) -> tuple:
    name, symbol, direction, ret, ts = item
    w.record(name, symbol, direction, ret)
    if ts % (7 * D) == 0:
        w.on_drift(symbol, ts)
    return w.weights(symbol, "trend_up", ts), w.stats(name, symbol)


def _loop() -> TradingLoop:
    loop = TradingLoop(TradingSettings(bar_interval_ms=D))
    for s in ("A/USDT", "B/USDT"):
        loop.portfolio.apply_fill(Fill(T0, f"seed-{s}", s, BUY, 100.0, 100.0, 0.0, 0.0))
    return loop


def _loop_stream() -> list:
    symbols = ("A/USDT", "B/USDT")
    bars = {s: _bars(s, 200, seed=20 + i) for i, s in enumerate(symbols)}
    feats = {s: _features(bars[s], seed=30 + i) for i, s in enumerate(symbols)}
    return [[(s, bars[s][k], feats[s][k]) for s in symbols] for k in range(200)]


def _loop_step(loop: TradingLoop, step) -> list:
    for symbol, bar, feature in step:
        loop.add(symbol, [bar], [feature])
    return loop.advance(step[0][1].ts // D)


def _sizer_step(sizer: PositionSizer, item):
    strength, vol, entropy = item
    return sizer.size(strength, vol, qvar_share=0.5, entropy=entropy, max_corr=0.3)


def _sizer_stream() -> list:
    rng = random.Random(13)
    return [(rng.random(), rng.uniform(0.0005, 0.02), rng.random()) for _ in range(N)]


def _floats(seed: int) -> Callable[[], list[float]]:
    def make() -> list[float]:
        rng = np.random.default_rng(seed)
        x = rng.standard_t(3, N) * 0.01
        x[150:170] = 0.0  # a flat stretch
        return [float(v) for v in x]

    return make


def _feed(op, x):
    op.update(x)
    return op.get()


def _guard_orders() -> list:
    """Orders over three UTC days, some over the caps, some closed."""
    rng = random.Random(14)
    out, sent = [], []
    for k in range(N):
        now = T0 + k * 600_000
        if sent and rng.random() < 0.45:
            out.append(("close", sent.pop(rng.randrange(len(sent)))))
            continue
        kind = rng.choice((MARKET, LIMIT))
        price = 100.0 * rng.uniform(0.9, 1.1) if kind == LIMIT else 0.0
        qty = rng.choice((0.5, 2.0, 20.0))
        side = rng.choice((BUY, SELL))
        out.append(
            ("order", Order(now, f"g{k}", "", "A/USDT", side, qty, kind, price, "entry", "t"), 100.0, now)
        )
        sent.append(f"g{k}")
    return out


def _guard_step(guard: ExecutionGuard, item):
    if item[0] == "close":
        return guard.on_closed(item[1]), guard.open_orders
    _, order, last, now = item
    reason = guard.check(order, last, now)
    if reason is None:
        guard.on_sent(order, guard.notional(order, last), now)
    return reason, guard.open_orders, guard.daily_notional(now)


def _beats() -> list:
    rng = random.Random(15)
    out, ts = [], T0
    for _ in range(N):
        ts += rng.choice((1_000, 5_000, 20_000, 45_000))
        out.append((rng.choice(("beat", "poll", "poll")), ts))
    return out


def _switch_step(switch: DeadMansSwitch, item):
    kind, ts = item
    if kind == "beat":
        return switch.beat(ts), switch.tripped
    return switch.trip(ts), switch.expired(ts), switch.tripped


def _venue_calls() -> list:
    rng = random.Random(16)
    out, ts, up = [], T0, True
    for _ in range(N):
        ts += rng.choice((10_000, 60_000, 300_000))
        if rng.random() < 0.05:
            up = not up
        out.append(("ok" if up else rng.choice(("failed", "check")), ts))
    return out


def _market_prints(seed: int) -> list:
    rng = random.Random(seed)
    out, price = [], 100.0
    for k in range(N):
        price *= 1 + rng.gauss(0, 0.001)
        out.append((T0 + k * 10_000, price, rng.uniform(1, 100) if rng.random() < 0.9 else 0.0))
    return out


def _twap_step(worker: TwapWorker, item):
    ts, price, volume = item
    out = worker.on_market(ts, price, volume)
    for child in out.send:  # filled at once, a little worse than the print
        worker.on_fill(ts + 1, child.order.qty, price * 1.0003)
    return out, worker.filled_qty


def _iceberg_step(worker: IcebergWorker, item):
    ts, price, volume = item
    out = worker.on_market(ts, price, volume)
    if volume > 50:
        out = (out, worker.on_fill(ts + 1, volume / 20, price))
    elif volume == 0.0:
        out = (out, worker.on_child_closed(ts))
    return out, worker.filled_qty


def _volume_ticks() -> list:
    rng = random.Random(23)
    return [
        ("AB/C" if k % 3 else "XY/Z", T0 + k * 700 + rng.randint(-900, 0), rng.uniform(0, 5))
        for k in range(N)
    ]


def _slippage_stream() -> list:
    rng = random.Random(17)
    return [(T0 + k, 3.0, rng.gauss(9.0 if (k // 60) % 2 else 3.0, 1.0)) for k in range(N)]


def _backtest_stream() -> list:
    """(VaR, ES, ret) of N(0, 1) forecasts at 95%; the truth's sigma is 1.8 on items 150..229."""
    rng = np.random.default_rng(24)
    k = np.arange(N)
    sigma = np.where((k >= 150) & (k < 230), 1.8, 1.0)
    return [(1.6448536269514722, 2.0627128075074257, float(r)) for r in rng.normal(0, 1, N) * sigma]


_BACKTEST = VarBacktestSettings(window=100, min_forecasts=50)


def _model_risk_stream() -> list:
    bt = VarBacktest(_BACKTEST)
    out = []
    for k, item in enumerate(_backtest_stream()):
        bt.update(*item)
        out.append((T0 + k * D, bt.get()))
    return out


def _levels_step(op, item):
    """Every level's decision on a step of two strategies over two symbols (one drifting now and then)."""
    ts, r = item
    op.record("a", "X", ts, r)
    op.record("b", "Y", ts, -r / 2)
    op.traded("X", 1e4 * (1 + r))
    if ts % (7 * D) == 0:
        op.on_drift("Y")
    meta = op.meta(ts) if op.due("meta", ts) else []
    targets = op.strategy(ts, {"X": "range", "Y": "high_vol"}) if op.due("strategy", ts) else []
    return meta, targets, op.due("tactical", ts), op.weights({"a": 0.5, "b": 0.5}), op.cap("Y")


def _online_stream() -> list:
    """(ts, close, features) of a random walk; the features leave out a bar now and then."""
    feats = _features(_bars(seed=36), seed=37)
    return [
        (T0 + k * D, c, None if k % 23 == 5 else {"vol": f.volatility, "ent": f.entropy})
        for k, (c, f) in enumerate(zip(_walk(seed=36), feats, strict=True))
    ]


def _calibration_stream() -> list:
    """(ts, p, y): calibrated forecasts, then outcomes that stop following them."""
    rng = np.random.default_rng(38)
    p = rng.uniform(0, 1, N)
    y = rng.uniform(0, 1, N) < np.where(np.arange(N) < N // 2, p, 0.5)
    return [(T0 + k * D, float(pk), int(yk)) for k, (pk, yk) in enumerate(zip(p, y, strict=True))]


def _forecast(op, r):
    op.update(r)
    return op.forecast()


OPERATORS: dict[type, Case] = {
    Historical: Case(
        lambda: Historical(HistoricalSettings(window=50)), _floats(30), _forecast, lambda op, a: a
    ),
    EwmaNormal: Case(
        lambda: EwmaNormal(EwmaSettings(min_periods=10)), _floats(31), _forecast, lambda op, a: a
    ),
    FilteredHistorical: Case(
        lambda: FilteredHistorical(FhsSettings(window=50)), _floats(32), _forecast, lambda op, a: a
    ),
    CornishFisher: Case(
        lambda: CornishFisher(CornishFisherSettings(window=50)), _floats(33), _forecast, lambda op, a: a
    ),
    StudentT: Case(lambda: StudentT(StudentTSettings(window=50)), _floats(34), _forecast, lambda op, a: a),
    Garch: Case(lambda: Garch(GarchSettings(window=50)), _floats(35), _forecast, lambda op, a: a),
    VarBacktest: Case(
        lambda: VarBacktest(_BACKTEST),
        _backtest_stream,
        lambda op, item: (op.update(*item), op.snapshot()),
        lambda op, _: op.get(),
    ),
    VarBacktestFeed: Case(
        lambda: VarBacktestFeed(_BACKTEST, "A/USDT", "fhs"),
        _backtest_stream,
        lambda op, item: (op.update(T0, *item), op.zone),
    ),
    ModelRiskMonitor: Case(
        lambda: ModelRiskMonitor(_BACKTEST, "A/USDT"),
        _model_risk_stream,
        lambda op, item: (op.update(*item), op.breached),
    ),
    RollingVariance: Case(lambda: RollingVariance(30), _floats(1), _feed, lambda op, _: op.get()),
    PermutationEntropy: Case(lambda: PermutationEntropy(30), _floats(2), _feed, lambda op, _: op.get()),
    RollingTail: Case(lambda: RollingTail(50), _floats(3), _feed, lambda op, _: op.get()),
    DriftFlag: Case(DriftFlag, _floats(4), lambda op, x: (op.update(x), op.take())),
    GridReturns: Case(
        GridReturns,
        lambda: [(k * 2 if k % 17 else k * 2 + 1, c) for k, c in enumerate(_walk(seed=5))],
        lambda op, item: op.update(*item),
        lambda op, answer: answer,
    ),
    RollingCorrelation: Case(
        lambda: RollingCorrelation(20, 3),
        lambda: [list(r) for r in np.random.default_rng(6).normal(0, 0.01, (N, 3))],
        lambda op, row: (op.update(row), op.n > 1 and (op.corr(0, 1), op.corr(1, 2))),
    ),
    RollingExtreme: Case(
        lambda: RollingExtreme(25, largest=True),
        lambda: list(enumerate(_walk(seed=7))),
        lambda op, item: (op.push(*item), op.get()),
    ),
    BarBuilder: Case(
        lambda: BarBuilder(BarSettings(1_000, 2_000, 60_000), "A/USDT"), _ticks, lambda op, c: op.update(c)
    ),
    Levels: Case(
        lambda: Levels(
            LevelsSettings(meta_every_s=3_600, strategy_every_s=600, meta_min_days=2), ("a", "b"), 0.2
        ),
        lambda: [(T0 + k * D, r) for k, r in enumerate(np.random.default_rng(31).normal(0, 0.01, N))],
        _levels_step,
    ),
    BarRollup: Case(
        lambda: BarRollup(RollupSettings(5 * D, D), "A/USDT"),
        lambda: [_bars(seed=9)[k : k + 4] for k in range(0, N, 4)],
        lambda op, bars: (op.update(bars), op.advance(bars[-1].ts // D + 2), op.closed_through()),
    ),
    CandleBars: Case(
        lambda: CandleBars(D, "A/USDT"),
        lambda: [_bars(seed=8)[k : k + 3] + _bars(seed=8)[k : k + 1] for k in range(0, N, 3)],
        lambda op, bars: (op.update(bars), op.closed_through()),
    ),
    TimeGuard: Case(
        lambda: TimeGuard(TimeBounds(10_000, 60_000, 10, 2)), _guard_stream, lambda op, b: op.check(b)
    ),
    SymbolCapacity: Case(
        lambda: SymbolCapacity(5),
        lambda: [f"S{random.Random(k).randint(0, 8)}/USDT" for k in range(N)],
        lambda op, s: op.admit(s),
    ),
    PartitionMerge: Case(lambda: PartitionMerge(2), _merge_stream, lambda op, item: op.add(*item)),
    CorrelationGrid: Case(
        lambda: CorrelationGrid(CorrelationSettings(D, 20, 5)),
        _grid_stream,
        lambda op, item: op.update(*item),
    ),
    SymbolFeatures: Case(
        lambda: SymbolFeatures(FeatureSettings(D, 30), "A/USDT"),
        lambda: _bars(seed=9),
        lambda op, bar: op.update(bar),
        lambda op, answer: answer,
    ),
    RegimeClassifier: Case(
        lambda: RegimeClassifier(RegimeSettings(ref_halflife_bars=50, ref_min_bars=20, trend_window=20)),
        lambda: list(zip(_bars(seed=10), _features(_bars(seed=10)), [0.3, 0.9, None] * N, strict=False)),
        lambda op, item: op.update(*item),
        lambda op, answer: answer,
    ),
    ATR: Case(
        lambda: ATR(ATRSettings(14)), lambda: _bars(seed=11), lambda op, b: op.update(b), lambda op, a: a
    ),
    EntropyScalping: _strategy_case(EntropyScalping),
    TrendFollowing: _strategy_case(TrendFollowing),
    MeanReversion: _strategy_case(MeanReversion),
    Breakout: _strategy_case(Breakout),
    OnlineModel: _strategy_case(OnlineModel, OnlineModelSettings(warmup=20)),  # 80 tactical bars of 5 min
    OnlineDirectionModel: Case(
        lambda: OnlineDirectionModel(OnlineModelSettings()),
        _online_stream,
        lambda op, item: (op.update(*item), op.get())[1],
        lambda op, answer: answer,
    ),
    ProgressiveMetrics: Case(
        lambda: ProgressiveMetrics(MetricsSettings(window_ms=50 * D, min_count=20)),
        _calibration_stream,
        lambda op, item: (op.update(*item), op.get())[1],
    ),
    StrategyWeights: Case(
        lambda: StrategyWeights(
            {n: c.settings_class().regimes for n, c in BUILTINS.items()},
            StrategyWeightsSettings(window=50, min_obs=5),
        ),
        _weights_stream,
        _weights_step,
    ),
    PositionSizer: Case(PositionSizer, _sizer_stream, _sizer_step),
    Portfolio: Case(Portfolio, _portfolio_stream, _portfolio_step, lambda op, _: op.sharpe()),
    RiskEngine: Case(RiskEngine, _engine_stream, _engine_step),
    PaperBroker: Case(lambda: PaperBroker(BrokerSettings(bar_interval_ms=D)), _broker_stream, _broker_step),
    TradingLoop: Case(_loop, _loop_stream, _loop_step),
    ExecutionGuard: Case(
        lambda: ExecutionGuard(
            ExecutionLimits(
                max_order_notional=1_000.0,
                max_daily_notional=2_000.0,
                max_open_orders=5,
                price_band_bps=800.0,
            )
        ),
        _guard_orders,
        _guard_step,
    ),
    DeadMansSwitch: Case(lambda: DeadMansSwitch(DeadMansSwitchSettings(30_000)), _beats, _switch_step),
    VenueHealth: Case(
        lambda: VenueHealth(VenueHealthSettings(120_000, 1_800_000)),
        _venue_calls,
        lambda op, item: (getattr(op, item[0])(item[1]), op.state),
    ),
    TwapWorker: Case(
        lambda: TwapWorker(
            Order(T0, "tw", "", "A/USDT", BUY, 1e6, MARKET, 0.0, "entry", "t"),
            BrokerSettings(bar_interval_ms=D, twap_max_slippage_bps=6.5),  # some children skipped
            TwapSettings(horizon_ms=600_000, slice_ms=60_000),
        ),
        lambda: _market_prints(18),
        _twap_step,
    ),
    IcebergWorker: Case(
        lambda: IcebergWorker(Order(T0, "ice", "", "A/USDT", SELL, 1e6, LIMIT, 101.0, "exit", "t"), 10.0),
        lambda: _market_prints(19),
        _iceberg_step,
    ),
    ObservedVolume: Case(
        lambda: ObservedVolume(ObservedVolumeSettings(slice_ms=2_000, slices=5)),
        _volume_ticks,
        lambda op, item: op.update(*item),
        lambda op, _: op.get("AB/C"),
    ),
    SlippageMonitor: Case(
        lambda: SlippageMonitor(SlippageSettings(window=20, min_fills=5)),
        _slippage_stream,
        lambda op, item: op.update(*item),
        lambda op, _: op.get(),
    ),
}

NOT_OPERATORS: set[type] = {BarStrategy, LoopDecisions}
"""Public classes of operators/ that are bases, not operators."""


def _plain(x):
    """``x`` as plain comparable data (dataclasses, arrays, sets, NaN)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__name__, *(_plain(getattr(x, f.name)) for f in dataclasses.fields(x)))
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted(map(repr, x))
    if isinstance(x, dict):
        return [(_plain(k), _plain(v)) for k, v in x.items()]
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, np.generic):
        return _plain(x.item())
    return x


def test_every_operator_has_a_registry_entry():
    missing = [c.__qualname__ for c in discovered_operators() if c not in OPERATORS]
    assert missing == [], f"add these operators to OPERATORS in tests/test_contracts.py: {missing}"
    assert discovered_operators(), "found no operators"


@pytest.mark.parametrize("cls", list(OPERATORS), ids=lambda c: c.__name__)
def test_pickle_round_trip_mid_stream_continues_identically(cls):
    case = OPERATORS[cls]
    items = case.stream()
    assert len(items) >= 40
    op = case.make()
    half = len(items) // 2
    for item in items[:half]:
        case.step(op, item)
    copy = pickle.loads(pickle.dumps(op))
    assert type(copy) is cls
    rest = [_plain(case.step(op, item)) for item in items[half:]]
    again = [_plain(case.step(copy, item)) for item in items[half:]]
    assert rest == again
    assert any(a not in (None, [None, None]) for a in rest), "the stream makes the operator say nothing"


@pytest.mark.parametrize("cls", [c for c, case in OPERATORS.items() if case.value], ids=lambda c: c.__name__)
def test_value_is_none_until_warm(cls):
    case = OPERATORS[cls]
    op = case.make()
    items = case.stream()
    values = [case.value(op, case.step(op, item)) for item in items]
    first = next(i for i, v in enumerate(values) if v is not None)
    assert first > 0, f"{cls.__name__} has a value after one item"
    assert all(v is None for v in values[:first])
    assert values[-1] is not None
    assert not any(isinstance(v, float) and math.isnan(v) for v in values)


# --------------------------------------------------------------------------- settings


REQUIRED = {BrokerSettings: {"bar_interval_ms": D}, TradingSettings: {"bar_interval_ms": D}}
"""Values of the fields without a default."""

FROM_FEATURES = {
    FeatureSettings: {
        "bar_interval_ms": "bar_interval",
        "window": "window",
        "qvar_entropy_coef": "qvar_entropy_coef",
        "var_model": "var_model",
    },
    BarSettings: {
        "interval_ms": "bar_interval",
        "allowed_lateness_ms": "allowed_lateness_ms",
        "dedup_horizon_ms": "dedup_horizon_ms",
    },
    CorrelationSettings: {"bar_interval_ms": "bar_interval", "window": "corr_window", "every": "corr_every"},
    TimeBounds: {k: k for k in ("max_ahead_ms", "max_behind_ms", "max_symbols", "confirm_ticks")},
    RollupSettings: {"interval_ms": "bar_intervals", "base_ms": "bar_interval"},
}
"""Settings built from ``[features]`` keys (flows/pipeline.py): field -> key."""

FROM_SECTIONS = {FeatureSettings: {"var_backtest": "var_backtest"}}
"""Fields of those settings that are a whole section of their own: field -> section."""

ASSEMBLED = {TradingSettings, StrategiesSettings, MetricsSettings}
"""Settings put together from other sections (``[trading]`` keys, loaded strategies; the online
model's metrics from its ``[strategies.online_model]`` table)."""

EXECUTION_SERVICE = {
    DeadMansSwitchSettings,
    VenueHealthSettings,
    TwapSettings,
    SlippageSettings,
    ObservedVolumeSettings,
    ReconcileSettings,
    HistoricalSettings,
    EwmaSettings,
    FhsSettings,
    CornishFisherSettings,
    StudentTSettings,
    GarchSettings,
    StressSettings,
}
"""Settings of building blocks with no config keys yet: the execution service's (issue 12;
``ExecutionLimits`` is ``[execution_limits]``, read by ``qbtc execute``) and the VaR/ES
forecasters' own (issue 13: ``features.var_model`` picks one with its defaults)."""


def _section_classes() -> dict[type, str]:
    out: dict[type, str] = {}

    def walk(cls, where):
        out[cls] = where
        for name, tp in field_types(cls).items():
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{where}.{name}")

    for section, cls in field_types(Settings).items():
        walk(cls, section)
    return out


def _instance(cls):
    return cls(**REQUIRED.get(cls, {}))


def _numeric_fields(cls):
    """(field, annotation, its number type) of every number field (in tuples and optionals too)."""
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        inner = optional_of(tp) or tp
        args = typing.get_args(inner)
        scalar = args[0] if typing.get_origin(inner) is tuple else inner
        if scalar in (int, float):
            yield f, tp, scalar


def _with(cls, name: str, x):
    """A value for field ``name`` holding ``x`` (every entry of a tuple)."""
    current = getattr(_instance(cls), name)
    return tuple(x for _ in current) if isinstance(current, tuple) else x


SETTINGS = discovered_settings()


def test_settings_classes_are_found_and_declared_with_setting():
    assert len(SETTINGS) >= 15
    plain = [c.__qualname__ for c in SETTINGS if not is_settings_class(c)]
    assert plain == [], f"declare every field with schemas.settings.setting: {plain}"


def test_every_settings_class_is_reachable_from_config():
    sections = _section_classes()
    strategies = {c.settings_class for c in BUILTINS.values()}
    lost = [
        c.__qualname__
        for c in SETTINGS
        if c not in sections
        and c not in strategies
        and c not in FROM_FEATURES
        and c not in ASSEMBLED
        and c not in EXECUTION_SERVICE
    ]
    assert lost == [], f"give these settings a config section (flows/config.py Settings): {lost}"
    for cls, keys in FROM_FEATURES.items():
        sections = FROM_SECTIONS.get(cls, {})
        assert set(keys) | set(sections) == {f.name for f in dataclasses.fields(cls)}, cls
        assert set(keys.values()) <= {f.name for f in dataclasses.fields(field_types(Settings)["features"])}
        for name, section in sections.items():
            assert field_types(cls)[name] is field_types(Settings)[section], (cls, name)


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_settings_are_frozen(cls):
    s = _instance(cls)
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(s, name, getattr(s, name))


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_settings_refuse_nan_infinities_and_out_of_range_values(cls):
    checked = 0
    for f, _tp, scalar in _numeric_fields(cls):
        meta = f.metadata
        bad: list = []
        if scalar is float:
            bad += [math.nan, -math.inf]
            if not meta["allow_inf"] or meta["lt"] is not None or meta["le"] is not None:
                bad.append(math.inf)
            bad.append(True)  # a bool is not a number here
        else:
            bad += [1.5, math.nan, True]
        for key, sign in (("gt", 0), ("ge", -1), ("lt", 0), ("le", 1)):
            bound = meta[key]
            if bound is not None:
                if scalar is int:
                    bad.append(int(bound) + sign)
                else:
                    bad.append(bound if sign == 0 else math.nextafter(bound, sign * math.inf))
        for x in bad:
            with pytest.raises(SettingsError, match=rf"\b{cls.__name__}\.{f.name} must be"):
                cls(**{**REQUIRED.get(cls, {}), f.name: _with(cls, f.name, x)})
            checked += 1
    for f in dataclasses.fields(cls):  # a value of another type altogether
        with pytest.raises(SettingsError, match=rf"\b{cls.__name__}\.{f.name} must be"):
            cls(**{**REQUIRED.get(cls, {}), f.name: object()})
    assert checked or not list(_numeric_fields(cls))


def _text(value) -> str:
    """A value as ``--set`` text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (tuple, frozenset)):
        return ",".join(_text(v) for v in (sorted(value) if isinstance(value, frozenset) else value))
    return repr(value) if isinstance(value, float) else str(value)


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_field_is_settable_from_config_text(cls):
    default = _instance(cls)
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp) or not is_settings_class(cls):
            continue
        if typing.get_origin(tp) is tuple and not all(
            a in (int, float, str) for a in typing.get_args(tp)[:1]
        ):
            continue  # tuples of objects (strategy specs) are not config values
        value = getattr(default, f.name)
        if f.default is None:  # an optional field filled in __post_init__: leave it to fill
            value = None
        table = {**{k: _text(v) for k, v in REQUIRED.get(cls, {}).items()}, f.name: _text(value)}
        built = settings_from_table(cls, table, "x")
        assert getattr(built, f.name) == getattr(default, f.name), f.name


def _config_default(defaults: Settings, section: str, key: str):
    extra = EXTRA_KEYS.get(section)
    if extra is not None and key in {f.name for f in dataclasses.fields(extra)}:
        holder = extra()
    else:
        holder = getattr(defaults, section)
        for part in key.split(".")[:-1]:
            holder = getattr(holder, part)
    return getattr(holder, key.rpartition(".")[2])


def test_every_config_key_goes_through_load_settings():
    defaults = load_settings(None, [], env={})
    for section in field_types(Settings):
        for key, tp, f in section_keys(section):
            if tp is dict:
                continue  # pass-through tables
            value = None if f.default is None else _config_default(defaults, section, key)
            text = _text(value.reveal() if hasattr(value, "reveal") else value)
            assert load_settings(None, [f"{section}.{key}={text}"], env={}) == defaults, f"{section}.{key}"
            env = {f"QBTC_{section}_{key.replace('.', '_')}".upper(): text}
            assert load_settings(None, [], env=env) == defaults, env


def test_readme_lists_every_key():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    begin, end = "<!-- config-reference:begin -->\n```toml\n", "```\n<!-- config-reference:end -->"
    block = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert block == config_reference(), (
        "README's key reference is stale: paste the output of `python -m flows.config`"
    )


def test_trading_section_keys_are_the_loops_own():
    """``[trading]`` repeats four fields of TradingSettings: same defaults, same rules."""
    from flows.config import TradingConfig

    loop = {f.name: f for f in dataclasses.fields(TradingSettings)}
    for f in dataclasses.fields(TradingConfig):
        twin = loop.get(f.name)
        if twin is not None:
            assert (f.default, dict(f.metadata)) == (twin.default, dict(twin.metadata)), f.name
            assert field_types(TradingConfig)[f.name] == field_types(TradingSettings)[f.name], f.name
    shared = {"allow_short", "min_trade_share", "rebalance_band", "ladder_levels"}
    assert shared <= {f.name for f in dataclasses.fields(TradingConfig)}


FEATURE_TWINS = {
    "window": (FeatureSettings, "window"),
    "qvar_entropy_coef": (FeatureSettings, "qvar_entropy_coef"),
    "var_model": (FeatureSettings, "var_model"),
    "corr_window": (CorrelationSettings, "window"),
    "corr_every": (CorrelationSettings, "every"),
    "allowed_lateness_ms": (BarSettings, "allowed_lateness_ms"),
    "dedup_horizon_ms": (BarSettings, "dedup_horizon_ms"),
    "max_ahead_ms": (TimeBounds, "max_ahead_ms"),
    "max_behind_ms": (TimeBounds, "max_behind_ms"),
    "max_symbols": (TimeBounds, "max_symbols"),
    "confirm_ticks": (TimeBounds, "confirm_ticks"),
}
"""``[features]`` keys and the operator settings field each one becomes (the bar interval, in
seconds there and ms in the operators, is checked by the flow tests)."""


RESOLUTION_KEYS = ("bar_intervals", "interval_windows", "interval_corr_windows", "interval_corr_every")
"""``[features]`` keys of the coarser resolutions (each becomes one field per resolution)."""


def test_feature_section_keys_are_their_operators_own():
    """``[features]`` feeds four operators' settings: each key has its field's default and rule."""
    from flows.config import FeaturesConfig
    from flows.pipeline import MarketSettings

    keys = {f.name: f for f in dataclasses.fields(FeaturesConfig)}
    assert set(keys) == {*FEATURE_TWINS, "bar_interval", *RESOLUTION_KEYS}
    for name, (cls, field_name) in FEATURE_TWINS.items():
        twin = next(f for f in dataclasses.fields(cls) if f.name == field_name)
        got = (keys[name].default, dict(keys[name].metadata), field_types(FeaturesConfig)[name])
        assert got == (twin.default, dict(twin.metadata), field_types(cls)[field_name]), name
    m = MarketSettings.of(load_settings(None, [], env={}))
    assert (m.bars, m.features, m.grid, m.bounds, m.coarse) == (
        BarSettings(1000),
        FeatureSettings(1000),
        CorrelationSettings(1000),
        TimeBounds(),
        (),
    )
    # each coarser resolution: its rollup over the finest, and its own windows
    sets = ["features.bar_intervals=3600,60", "features.interval_windows=300,120,48"]
    m = MarketSettings.of(load_settings(None, [*sets, "features.interval_corr_every=60,30,24"], env={}))
    assert [(r.name, r.rollup, r.features.window, r.grid.window, r.grid.every) for r in m.coarse] == [
        ("60s", RollupSettings(60_000, 1000), 120, 300, 30),
        ("3600s", RollupSettings(3_600_000, 1000), 48, 300, 24),
    ]
    assert (m.features.window, m.grid.every) == (300, 60)
