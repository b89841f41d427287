"""A River online model per symbol: P(the next tactical bar's return > 0), learnt progressively.

:class:`OnlineDirectionModel` wraps ``river.compose.Pipeline(StandardScaler(),
LogisticRegression(SGD(learning_rate), l2))``. Its bars are the *tactical* bars
of ``horizon_s`` seconds (300 by default, the L2 cadence ``levels.tactical_every_s``;
0: every finest bar): tactical bar k closes at the first finest bar whose close
time reaches the next multiple of ``horizon_s``. At the close of bar k (with
``x_k`` the features at that close, see :func:`features_of`, and ``y_k = 1`` when
bar k's close is above bar k-1's):

1. **score** the forecast made at bar k-1 against ``y_k`` (:mod:`progressive_metrics`);
2. **learn** ``(x_(k-1), y_k)``;
3. **predict** bar k+1 from ``x_k``.

So a bar's label is learnt only after the forecast of that bar was made and
scored: the model never learns from a bar before predicting it (tested with a
call-order spy and with a feature that leaks the label). River is imported when
the first model is made, not with this module (a run without it does not pay
River's import time).

:class:`OnlineModel` is the built-in strategy ``online_model`` around it:
direction ``sign(p - 0.5)`` when ``|p - 0.5| > min_edge`` (else flat), strength
``min(1, 2 |p - 0.5| / full_edge)``; its figures go to the ``model_metrics``
table (:meth:`OnlineModel.take_rows`) and its calibration drift halves the
symbol's size in the trading loop (``calibration_drift``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from operators.signals.progressive_metrics import DAY_MS, Figures, MetricsSettings, ProgressiveMetrics
from operators.signals.strategy import BarStrategy
from schemas.records import REGIMES, Bar, Feature, ModelMetrics
from schemas.settings import SettingsError, check_settings, setting

FEATURE_FIELDS = ("ret", "volatility", "entropy", "var95", "es95", "qvar95", "fvar95", "fes95")
"""The columns of a feature row the model reads (non-finite values are left out)."""
COARSE_FIELDS = ("ret", "volatility", "entropy", "qvar95")
"""... and of a coarser resolution's newest row, as ``{field}_{interval}s``."""


def features_of(feature: Feature, coarse: dict | None = None) -> dict[str, float]:
    """The model's input: the finest feature row's fields and the coarser resolutions' newest rows.

    >>> f = Feature("X", 0, 0.01, 0.02, 0.9, 0.03, 0.04, 0.05, 0)
    >>> x = features_of(f, {60: (None, Feature("X", 0, -0.02, 0.1, 0.8, 0.1, 0.1, 0.2, 0))})
    >>> x["ret"], x["ret_60s"], "fvar95" in x  # fvar95 is NaN here: left out
    (0.01, -0.02, False)
    """
    x = {}
    for name in FEATURE_FIELDS:
        v = getattr(feature, name)
        if math.isfinite(v):
            x[name] = float(v)
    for interval, (_bar, row) in sorted((coarse or {}).items()):
        if row is None:
            continue
        for name in COARSE_FIELDS:
            v = getattr(row, name)
            if math.isfinite(v):
                x[f"{name}_{interval}s"] = float(v)
    return x


@dataclass(frozen=True, slots=True)
class OnlineModelSettings:
    """Parameters of :class:`OnlineDirectionModel` and the ``online_model`` strategy.

    Parameters
    ----------
    horizon_s
        The bar it predicts, seconds: the next ``horizon_s`` window's close against this one's
        (the tactical bar; 0: the next finest bar). Set it to ``levels.tactical_every_s``.
    learning_rate
        SGD's learning rate of the logistic regression.
    l2
        L2 penalty of its weights.
    warmup
        Bars learnt before the strategy takes a view (the metrics score from the first forecast).
    min_edge
        Flat while ``|p - 0.5| <= min_edge``.
    full_edge
        ``2 |p - 0.5|`` that gives strength 1 (strength ``min(1, 2 |p - 0.5| / full_edge)``).
    bins
        Bins of the expected calibration error.
    calibration_days
        The rolling window of the hit rate and mean probability, days of event time.
    drift_threshold
        Calibration drift when ``|hit rate - mean probability|`` over the window exceeds this.
    min_predictions
        ... with at least this many forecasts in the window.
    report_every
        A ``model_metrics`` row every this many scored forecasts (and at each drift change, and
        at the end of the input).
    regimes
        Regimes it may trade in.
    """

    horizon_s: int = setting(300, ge=0, le=86_400 * 30)
    learning_rate: float = setting(0.01, gt=0, le=10)
    l2: float = setting(0.0, ge=0)
    warmup: int = setting(100, ge=0)
    min_edge: float = setting(0.02, ge=0, lt=0.5)
    full_edge: float = setting(0.2, gt=0, le=1)
    bins: int = setting(10, ge=2, le=1000, fixed=True)
    calibration_days: float = setting(30.0, gt=0, le=3650)
    drift_threshold: float = setting(0.15, gt=0, le=1)
    min_predictions: int = setting(100, ge=1)
    report_every: int = setting(1000, ge=1)
    regimes: frozenset[str] = setting(frozenset(REGIMES))

    def __post_init__(self) -> None:
        check_settings(self)
        if not self.regimes <= set(REGIMES):
            raise SettingsError.of(self, "regimes", f"among {REGIMES}")

    def metrics(self) -> MetricsSettings:
        return MetricsSettings(
            self.bins, round(self.calibration_days * DAY_MS), self.drift_threshold, self.min_predictions
        )


def _pipeline(settings: OnlineModelSettings):
    from river import compose, linear_model, optim, preprocessing  # River's import is slow: only when used

    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(settings.learning_rate), l2=settings.l2),
    )


class OnlineDirectionModel:
    """Progressive validation of a River pipeline on one symbol's bars (see the module docstring).

    ``update(ts, close, x)`` at each bar close (``x`` None while the features are
    not known: that bar is scored and learnt from, but predicts nothing);
    :meth:`get` is P(next bar's close > this close), None until a forecast is made
    after at least one bar was learnt. ``metrics`` holds the scored forecasts.

    >>> m = OnlineDirectionModel(OnlineModelSettings())
    >>> for k, c in enumerate([1.0, 1.1, 1.0, 1.2]):
    ...     m.update(k, c, {"a": float(k % 2)})
    >>> 0 < m.get() < 1, m.learnt, m.metrics.n
    (True, 3, 2)
    """

    def __init__(self, settings: OnlineModelSettings | None = None) -> None:
        self.settings = settings or OnlineModelSettings()
        self.model = _pipeline(self.settings)
        self.metrics = ProgressiveMetrics(self.settings.metrics())
        self.close: float | None = None
        self.x: dict[str, float] | None = None  # the last bar's features
        self.p: float | None = None  # the forecast made at the last bar, for this bar
        self.learnt = 0

    def update(self, ts: int, close: float, x: dict[str, float] | None) -> None:
        """Bar k closed at ``ts`` with ``close`` and features ``x``: score, learn, then predict."""
        if self.close is not None and close > 0 and self.close > 0:
            y = close > self.close
            if self.p is not None:
                self.metrics.update(ts, self.p, 1 if y else 0)  # 1. the forecast of this bar
            if self.x is not None:
                self.model.learn_one(self.x, y)  # 2. its label, learnt after it was forecast
                self.learnt += 1
        self.close = close
        self.x = x
        self.p = None
        if x is not None and self.learnt:
            proba = self.model.predict_proba_one(x)  # 3. the next bar
            self.p = float(proba.get(True, 0.0))

    def get(self) -> float | None:
        """P(the next bar's return > 0), None until a forecast is made."""
        return self.p


class OnlineModel(BarStrategy):
    """The ``online_model`` strategy: a River logistic regression per symbol on its features.

    The model steps at each tactical bar's close (``horizon_s``); between two closes the
    strategy repeats the standing forecast. Direction ``sign(p - 0.5)`` when
    ``|p - 0.5| > min_edge``, strength ``min(1, 2 |p - 0.5| / full_edge)``; no view before
    ``warmup`` tactical bars were learnt.
    ``take_rows()`` hands over its ``model_metrics`` rows; ``calibration_drift`` is
    True while its calibration drifts (the trading loop then halves the symbol's size).
    """

    name = "online_model"
    settings_class = OnlineModelSettings
    next_close = 0  # (a model pickled before the tactical horizon steps at its next bar)

    def __init__(self, settings: OnlineModelSettings | None = None) -> None:
        super().__init__(settings)
        self.model = OnlineDirectionModel(self.settings)
        self.coarse: dict = {}
        self.ts = 0
        self.symbol = ""
        self.rows: list[ModelMetrics] = []
        self.reported = 0  # scored forecasts at the last row
        self.drifting = False
        self.next_close = 0  # the close time (ms) of the tactical bar in progress

    def informative(self, coarse) -> None:
        self.coarse = dict(coarse)

    def update(self, ts, bar, feature, regime):
        self.ts, self.symbol = ts, bar.symbol
        return super().update(ts, bar, feature, regime)

    def _step(self, bar: Bar, feature: Feature | None, active: bool) -> tuple[int, float] | None:
        m = self.model
        horizon = self.settings.horizon_s * 1000
        if horizon and not self.next_close:
            self.next_close = -(-self.ts // horizon) * horizon  # the first window close at or after now
        if self.ts >= self.next_close:  # a tactical bar closes: score, learn, predict the next one
            if horizon:
                self.next_close = (self.ts // horizon + 1) * horizon
            m.update(self.ts, bar.close, None if feature is None else features_of(feature, self.coarse))
            figures = m.metrics.get()
            if figures is not None and (
                figures.n - self.reported >= self.settings.report_every or figures.drift != self.drifting
            ):
                self._row(bar.symbol, figures)
            self.drifting = figures is not None and figures.drift
        p = m.get()
        if p is None or m.learnt < self.settings.warmup:
            return None
        edge = p - 0.5
        if abs(edge) <= self.settings.min_edge:
            return 0, 0.0
        return (1 if edge > 0 else -1), min(1.0, 2.0 * abs(edge) / self.settings.full_edge)

    def _row(self, symbol: str, f: Figures) -> None:
        self.rows.append(
            ModelMetrics(
                self.ts, symbol, self.name, f.n, f.log_loss, f.accuracy, f.calibration_error,
                f.hit_rate, f.mean_prob, int(f.drift),
            )
        )  # fmt: skip
        self.reported = f.n

    def take_rows(self, final: bool = False) -> list[ModelMetrics]:
        """The ``model_metrics`` rows made since the last call; with ``final`` (the end of the input)
        also the newest figures when no row has them yet."""
        figures = self.model.metrics.get()
        if final and figures is not None and figures.n > self.reported:
            self._row(self.symbol, figures)
        rows, self.rows = self.rows, []
        return rows

    @property
    def calibration_drift(self) -> bool:
        """True while the forecast's calibration drifts (see :class:`ProgressiveMetrics`)."""
        return self.drifting

    @property
    def calibration_gap(self) -> float:
        """|hit rate - mean probability| over the window (NaN before any forecast is scored)."""
        f = self.model.metrics.get()
        return math.nan if f is None else f.gap
