"""The River online model: progressive validation (never learns a bar before predicting it), its
metrics against batch recomputations, the rolling calibration and its drift, pickling, the loop's
calibration throttle, and a replay that stores its ``model_metrics`` rows under the run's id."""

from __future__ import annotations

import csv
import io
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from operators.signals.online_model import (
    OnlineDirectionModel,
    OnlineModel,
    OnlineModelSettings,
    features_of,
)
from operators.signals.progressive_metrics import DAY_MS, MetricsSettings, ProgressiveMetrics
from operators.signals.strategy import BarStrategy, StrategySpec
from operators.trading_loop import DRIFT_SIZE_MULTIPLIER, MODEL_CALIBRATION, TradingLoop, TradingSettings
from schemas.records import Bar, Feature, ModelMetrics
from tests.flow_harness import SHORT_TRADING
from tests.kafka_helpers import qbtc

D = 60_000
T0 = 1_620_000_000_000 // D * D


def _closes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))


# --------------------------------------------------------------------------- never learns before predicting


class Spy:
    """Wraps a River pipeline and logs every call with the bar it concerns (x carries ``bar``)."""

    def __init__(self, model, log: list) -> None:
        self.model, self.log = model, log

    def predict_proba_one(self, x):
        self.log.append(("predict", int(x["bar"]) + 1))  # made at bar k: the forecast of bar k + 1
        return self.model.predict_proba_one(x)

    def learn_one(self, x, y):
        self.log.append(("learn", int(x["bar"]) + 1))  # x of bar k - 1 with the label of bar k
        return self.model.learn_one(x, y)


def test_every_forecast_of_a_bar_is_made_and_scored_before_its_label_is_learnt():
    log: list = []
    m = OnlineDirectionModel(OnlineModelSettings())
    m.model = Spy(m.model, log)
    scored = []
    for k, c in enumerate(_closes(300, 1)):
        before = m.metrics.n
        m.update(T0 + k * D, float(c), {"bar": float(k), "z": float(k % 3)})
        if m.metrics.n > before:
            scored.append((len(log), k))  # bar k's forecast scored before this update's calls
    predicted = {bar: i for i, (what, bar) in enumerate(log) if what == "predict"}
    learnt = [(i, bar) for i, (what, bar) in enumerate(log) if what == "learn"]
    assert len(learnt) == 299 and len(predicted) == 299  # bar 0 has no label, the first forecast follows it
    for i, bar in learnt:
        if bar in predicted:  # bar 1's label is learnt before any forecast exists (none is made of it)
            assert predicted[bar] < i, bar
    assert all(predicted.get(bar, math.inf) < at for at, bar in scored)
    assert len(scored) == 298


def _leaky_accuracy(closes: np.ndarray, features: list[dict]) -> float:
    """A deliberately wrong order: learn (x_k, y_k) and then predict bar k from x_k."""
    from river import compose, linear_model, optim, preprocessing

    model = compose.Pipeline(
        preprocessing.StandardScaler(), linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    )
    hits = []
    for k in range(1, len(closes)):
        y = closes[k] > closes[k - 1]
        model.learn_one(features[k], y)
        hits.append((model.predict_proba_one(features[k]).get(True, 0.0) >= 0.5) == y)
    return float(np.mean(hits))


def test_a_feature_that_leaks_its_own_bars_label_does_not_help_progressive_validation():
    """x_k holds the sign of bar k's own return: a model that learnt y_k before predicting bar k would be
    near perfect; the progressive forecasts of a random walk stay at chance."""
    closes = _closes(3000, 2)
    signs = np.sign(np.diff(closes, prepend=closes[0]))
    features = [{"leak": float(s)} for s in signs]
    m = OnlineDirectionModel(OnlineModelSettings())
    for k, c in enumerate(closes):
        m.update(T0 + k * D, float(c), features[k])
    f = m.metrics.get()
    assert f.n == len(closes) - 2
    assert abs(f.accuracy - 0.5) < 0.04, f.accuracy
    assert _leaky_accuracy(closes, features) > 0.95


class TacticalSpy(Spy):
    """... logging the bar index that a feature row's ``ret`` carries, and the label learnt."""

    def predict_proba_one(self, x):
        self.log.append(("predict", int(x["ret"])))
        return self.model.predict_proba_one(x)

    def learn_one(self, x, y):
        self.log.append(("learn", int(x["ret"]), bool(y)))
        return self.model.learn_one(x, y)


def test_the_strategy_steps_at_each_tactical_close_and_never_learns_a_tactical_bar_before_predicting_it():
    """1-minute bars, 5-minute tactical bars: the model is called only at the closes on the 5-minute
    grid, learns (x of close j-1, close j > close j-1) right after forecasting close j from close
    j-1, and repeats its standing forecast in between."""
    closes = _closes(103, 4)
    s = OnlineModel(OnlineModelSettings(horizon_s=300, warmup=0, min_edge=0.0))
    log: list = []
    s.model.model = TacticalSpy(s.model.model, log)
    views = []
    for k, c in enumerate(closes):
        bar = Bar("A/USDT", T0 + k * D, c, c, c, c, 1.0, c, 1)
        feat = Feature("A/USDT", bar.ts, float(k), 0.01, 0.9, 0.02, 0.03, 0.04, 0)  # ret carries k
        sig = s.update(bar.ts + D, bar, feat, "range")
        views.append(None if sig is None else (sig.direction, sig.strength))
    closing = [k for k in range(len(closes)) if (T0 + (k + 1) * D) % 300_000 == 0]
    assert closing[:3] == [4, 9, 14]
    assert s.model.learnt == len(closing) - 1 and s.model.metrics.n == len(closing) - 2
    want = []
    for j in range(1, len(closing)):
        up = bool(closes[closing[j]] > closes[closing[j - 1]])
        want += [("learn", closing[j - 1], up), ("predict", closing[j])]
    assert log == want
    for j in range(1, len(closing) - 1):  # between two closes the view stands
        assert views[closing[j]] == views[closing[j + 1] - 1] and views[closing[j]] is not None


# --------------------------------------------------------------------------- metrics against batch figures


def _batch(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, float, float]:
    pc = np.clip(p, 1e-15, 1 - 1e-15)
    loss = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
    acc = float(np.mean((p >= 0.5) == (y == 1)))
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = sum(
        (which == b).sum() / len(p) * abs(y[which == b].mean() - p[which == b].mean())
        for b in range(bins)
        if (which == b).any()
    )
    return loss, acc, float(ece)


def test_the_models_running_metrics_equal_a_batch_recomputation_of_its_recorded_forecasts():
    closes = _closes(800, 3)
    rets = np.diff(np.log(closes), prepend=np.log(closes[0]))
    m = OnlineDirectionModel(OnlineModelSettings(learning_rate=0.05))
    ps, ys = [], []
    for k, c in enumerate(closes):
        p = m.get()
        feature = Feature("A", T0 + k * D, float(rets[k]), 0.01, 0.9, 0.02, 0.03, 0.04, 0)
        m.update(T0 + k * D, float(c), features_of(feature))
        if p is not None:
            ps.append(p)
            ys.append(int(c > closes[k - 1]))
        f = m.metrics.get()
        if f is not None and k % 50 == 0:
            want = _batch(np.array(ps), np.array(ys))
            assert (f.log_loss, f.accuracy, f.calibration_error) == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert m.metrics.n == len(ps) > 700


def test_rolling_hit_rate_mean_probability_and_drift_match_pandas_on_irregular_times():
    rng = np.random.default_rng(4)
    n = 3000
    ts = T0 + np.cumsum(rng.choice([D, 10 * D, 3_600_000, DAY_MS // 2], n))
    p = rng.uniform(0, 1, n)
    truth = np.where(np.arange(n) < 1500, p, 0.5)  # calibrated, then the outcomes stop following p
    y = (rng.uniform(0, 1, n) < truth).astype(int)
    s = MetricsSettings(window_ms=30 * DAY_MS, drift_threshold=0.15, min_count=100)
    m = ProgressiveMetrics(s)
    got = []
    for t, pi, yi in zip(ts, p, y, strict=True):
        m.update(int(t), float(pi), int(yi))
        f = m.get()
        got.append((f.window_count, f.hit_rate, f.mean_prob, f.drift))
    side = p >= 0.5
    frame = pd.DataFrame(
        {"hit": (side == (y == 1)).astype(float), "q": np.where(side, p, 1 - p)},
        index=pd.to_datetime(ts, unit="ms", utc=True),
    )
    roll = frame.rolling(f"{s.window_ms}ms", closed="right")
    count, hit, q = roll["hit"].count().to_numpy(), roll["hit"].mean().to_numpy(), roll["q"].mean().to_numpy()
    drift = (count >= 100) & (np.abs(hit - q) > 0.15)
    assert [g[0] for g in got] == count.astype(int).tolist()
    assert np.allclose([g[1] for g in got], hit, rtol=0, atol=1e-12)
    assert np.allclose([g[2] for g in got], q, rtol=0, atol=1e-9)
    assert [g[3] for g in got] == drift.tolist()
    assert not drift[:1500].any() and drift[1500:].any()  # the flag follows the broken calibration


# --------------------------------------------------------------------------- pickling


def _strategy_items(n: int = 400, seed: int = 5) -> list:
    closes = _closes(n, seed)
    out = []
    for k, c in enumerate(closes):
        c = float(c)
        bar = Bar("A/USDT", T0 + k * D, c, c, c, c, 1.0, c, 1)
        ret = math.log(c / closes[k - 1]) if k else 0.0
        feat = Feature("A/USDT", bar.ts, ret, 0.01 + 0.001 * (k % 7), 0.9, 0.02, 0.03, 0.04, 0)
        coarse = (
            {60: (None, Feature("A/USDT", bar.ts, -ret, 0.02, 0.8, 0.01, 0.01, 0.01, 0))} if k > 30 else {}
        )
        out.append((bar, None if k < 3 else feat, None if k < 5 else "range", coarse))
    return out


def _feed(s: OnlineModel, item):
    bar, feat, regime, coarse = item
    s.informative(coarse)
    return s.update(bar.ts + D, bar, feat, regime), s.take_rows(), s.calibration_drift


def test_a_pickled_strategy_mid_stream_continues_identically():
    settings = OnlineModelSettings(horizon_s=0, warmup=20, report_every=50, min_predictions=20)
    s = OnlineModel(settings)
    items = _strategy_items()
    for item in items[:200]:
        _feed(s, item)
    copy = pickle.loads(pickle.dumps(s))
    rest = [_feed(s, item) for item in items[200:]]
    again = [_feed(copy, item) for item in items[200:]]
    assert rest == again
    assert any(sig is not None and sig.direction for sig, _, _ in rest)
    rows = [r for _, got, _ in rest for r in got]
    assert rows and all(isinstance(r, ModelMetrics) and r.model == "online_model" for r in rows)
    final = s.take_rows(final=True)
    assert len(final) == 1 and final[0].n == s.model.metrics.n and final[0].ts == items[-1][0].ts + D


def test_strength_and_direction_follow_the_probability():
    s = OnlineModel(OnlineModelSettings(horizon_s=0, warmup=0, min_edge=0.05, full_edge=0.2))
    bar = Bar("A/USDT", T0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1)
    for p, want in [(0.5, (0, 0.0)), (0.54, (0, 0.0)), (0.56, (1, 0.6)), (0.3, (-1, 1.0)), (0.95, (1, 1.0))]:
        s.model.learnt = 1
        s.model.update = lambda ts, close, x, p=p: setattr(s.model, "p", p)
        sig = s.update(T0 + D, bar, None, "range")
        assert (sig.direction, sig.strength) == (want[0], pytest.approx(want[1])), p


# --------------------------------------------------------------------------- the loop's calibration throttle


class DriftingLong(BarStrategy):
    """Long at full strength; its calibration drifts on the bars of ``DRIFT`` (class-level, for the test)."""

    name = "drifting_long"
    settings_class = None
    DRIFT: frozenset = frozenset()

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self.k = -1

    def _step(self, bar, feature, active):
        self.k += 1
        return (1, 1.0)

    @property
    def calibration_drift(self) -> bool:
        return self.k in self.DRIFT

    @property
    def calibration_gap(self) -> float:
        return 0.3 if self.calibration_drift else 0.05

    def take_rows(self, final: bool = False) -> list:
        return [ModelMetrics(T0, "A/USDT", self.name, self.k, 0.7, 0.5, 0.1, 0.5, 0.8, 0)] if final else []


def _trend_loop(drift: frozenset) -> list[tuple[int, str, object]]:
    DriftingLong.DRIFT = drift
    spec = StrategySpec(DriftingLong.name, DriftingLong)
    loop = TradingLoop(TradingSettings(bar_interval_ms=D, strategies=(spec,), cost_gate=False))
    out = []
    for k in range(160):
        price = 100.0 * math.exp(0.002 * k + 0.0005 * math.sin(k))
        bar = Bar("A/USDT", T0 + k * D, price, price, price, price, 1e6, price, 10)
        loop.add("A/USDT", [bar], [Feature("A/USDT", bar.ts, 0.002, 0.002, 0.3, 0.0, 0.0, 0.0, 0)])
        out.extend((k, table, r) for table, rows in loop.advance(bar.ts // D) for r in rows)
    out.extend((160, table, r) for table, rows in loop.flush_backtests() for r in rows)
    return out


def test_calibration_drift_halves_the_symbols_size_with_risk_events_when_it_starts_and_ends():
    plain = _trend_loop(frozenset())
    drifting = _trend_loop(frozenset(range(0, 120)))
    first = [(k, o.qty) for k, t, o in plain if t == "orders"]
    halved = [(k, o.qty) for k, t, o in drifting if t == "orders"]
    assert first, "the scenario must trade"
    assert halved[0][0] == first[0][0]  # the same decision, at half the size
    assert halved[0][1] == pytest.approx(DRIFT_SIZE_MULTIPLIER * first[0][1])
    events = [
        (k, e.level, e.action, e.value)
        for k, t, e in drifting
        if t == "risk_events" and e.kind == MODEL_CALIBRATION
    ]
    assert events == [(0, 1, "half_size", 0.3), (120, 0, "clear", 0.05)]
    assert not [e for k, t, e in plain if t == "risk_events" and e.kind == MODEL_CALIBRATION]
    rows = [r for k, t, r in drifting if t == "model_metrics"]
    assert len(rows) == 1 and rows[0].n == 159  # the end of the input: take_rows(final=True)


# --------------------------------------------------------------------------- a replay into the store

SETS = [a for s in SHORT_TRADING for a in ("--set", s)]


def test_a_replay_with_the_online_model_stores_its_metrics_under_the_run_id(tmp_path: Path):
    qbtc("simulate", "ticks.csv", *SETS, cwd=tmp_path)
    model = [
        "--set",
        "strategies.online_model.warmup=10",
        "--set",
        "strategies.online_model.report_every=30",
        "--set",
        "strategies.online_model.horizon_s=5",  # 5-second tactical bars: 180 in the 15 minutes
    ]
    qbtc(
        "replay", "ticks.csv", "--trade", "--quiet", "--store", "chdb://s.chdb", "--run-id", "river",
        "--strategy", "builtin:online_model", *SETS, *model, cwd=tmp_path,
    )  # fmt: skip
    query = (
        "SELECT run_id, symbol, model, n, log_loss, accuracy, calibration_error, hit_rate_30d, "
        "mean_prob_30d, drift FROM model_metrics FINAL ORDER BY symbol, ts"
    )
    out = qbtc("sql", query, "--store", "chdb://s.chdb", "--format", "csv", cwd=tmp_path)
    rows = list(csv.reader(io.StringIO(out.stdout)))[1:]
    symbols = {r[1] for r in rows}
    assert (
        len(symbols) == 4 and {r[0] for r in rows} == {"river"} and {r[2] for r in rows} == {"online_model"}
    )
    for symbol in symbols:
        ns = [int(r[3]) for r in rows if r[1] == symbol]
        assert ns[:4] == [30, 60, 90, 120] and ns[-1] > 120  # every 30 forecasts, the last at the end
    for r in rows:
        loss, acc, ece, hit, prob = map(float, r[4:9])
        assert loss > 0 and 0 <= acc <= 1 and 0 <= ece <= 1 and 0 <= hit <= 1 and 0.5 <= prob <= 1
        assert r[9] in ("0", "1")


def test_the_real_models_drift_flag_turns_the_loops_throttle_on_and_off_at_its_own_transitions():
    """A steady rise the model learns to trust, then a random walk: its 72-minute hit rate leaves the
    probability it gives (both ways); every change of its flag is a model_calibration event that bar."""
    settings = OnlineModelSettings(
        horizon_s=0, warmup=10, learning_rate=0.1, calibration_days=0.05, min_predictions=30, report_every=100
    )
    spec = StrategySpec(OnlineModel.name, OnlineModel, settings)
    loop = TradingLoop(TradingSettings(bar_interval_ms=D, strategies=(spec,), cost_gate=False))
    rng = np.random.default_rng(7)
    c, flags, events, rows = 100.0, [], [], []
    for k in range(600):
        r = 0.002 + rng.normal(0, 0.0005) if k < 300 else rng.normal(0, 0.002)
        c *= math.exp(r)
        bar = Bar("A/USDT", T0 + k * D, c, c, c, c, 1e6, c, 10)
        loop.add("A/USDT", [bar], [Feature("A/USDT", bar.ts, r, 0.002, 0.3, 0.01, 0.01, 0.01, 0)])
        for table, got in loop.advance(bar.ts // D):
            events += [
                (k, e.level, e.action) for e in got if table == "risk_events" and e.kind == MODEL_CALIBRATION
            ]
            rows += got if table == "model_metrics" else []
        flags.append(loop.symbols["A/USDT"].strategies[0].calibration_drift)
    changes = [
        (k, 1 if flags[k] else 0, "half_size" if flags[k] else "clear")
        for k in range(600)
        if flags[k] != (k and flags[k - 1])
    ]
    assert events == changes and {e[1] for e in events} == {0, 1}
    assert (loop.throttled == {"A/USDT"}) == flags[-1]
    made = {(r.ts, r.drift) for r in rows}  # a row whenever the flag changes, and every 100 forecasts
    assert {(T0 + (k + 1) * D, level) for k, level, _ in events} <= made
    assert len(rows) > len(events) and all(b.n - a.n <= 100 for a, b in zip(rows, rows[1:], strict=False))
