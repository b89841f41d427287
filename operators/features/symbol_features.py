"""Per-symbol risk features from closed bars (see the metric spec), with a VaR forecast and its backtest."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from operators.features.drift_flag import DriftFlag
from operators.features.grid_returns import GridReturns
from operators.features.permutation_entropy import PermutationEntropy
from operators.features.rolling_tail import RollingTail
from operators.features.rolling_variance import RollingVariance
from operators.risk.var_backtest import VarBacktestFeed, VarBacktestSettings
from operators.risk.var_models import VAR_MODELS, make_var_model
from schemas.records import Bar, Feature, VarBacktestRow
from schemas.settings import MAX_WINDOW, SettingsError, check_settings, setting

Z95 = 1.6448536269514722


@dataclass(frozen=True, slots=True)
class FeatureSettings:
    """Parameters of the feature operators.

    Parameters
    ----------
    bar_interval_ms
        Grid step D in ms.
    window
        W, returns per feature window (>= 3).
    qvar_entropy_coef
        c in QVaR = 1.6449 * vol * (1 - c * entropy).
    var_model
        The next-bar VaR/ES forecaster behind ``fvar95``/``fes95``, a name of
        :data:`~operators.risk.var_models.VAR_MODELS` with its default settings.
    var_backtest
        The backtest of those forecasts (the ``var_backtests`` rows).
    """

    bar_interval_ms: int = setting(1000, gt=0, fixed=True)
    window: int = setting(300, ge=3, le=MAX_WINDOW, fixed=True)
    qvar_entropy_coef: float = setting(0.3, ge=0, le=1)
    var_model: str = setting("fhs", fixed=True)
    var_backtest: VarBacktestSettings = setting(VarBacktestSettings())

    def __post_init__(self) -> None:
        check_settings(self)
        if self.var_model not in VAR_MODELS:
            raise SettingsError.of(self, "var_model", f"one of {', '.join(VAR_MODELS)}")


class SymbolFeatures:
    """Turns one symbol's closed bars, in time order, into feature rows.

    Every grid return r (the zero returns of a gap too, at most W of them per
    gap, as the other windows take them) is first counted by the backtest
    against the forecast that stood before it (made after the previous
    return), then fed to the VaR model. A feature row's ``fvar95``/``fes95``
    are the model's forecast for the next bar, made after this bar's return
    (NaN until the model is warm). The backtest's rows collect until
    :meth:`take_backtests`.

    >>> sf = SymbolFeatures(FeatureSettings(bar_interval_ms=1000, window=3))
    >>> bars = [Bar("X", i * 1000, 0, 0, 0, c, 1, c, 1) for i, c in
    ...         enumerate([100.0, 101.0, 100.0, 102.0])]
    >>> [sf.update(b) for b in bars[:3]]
    [None, None, None]
    >>> f = sf.update(bars[3])
    >>> (f.ts, round(f.ret, 9), f.entropy)
    (3000, 0.019802627, 0.0)
    """

    __slots__ = (
        "_backtests",
        "_drift",
        "_entropy",
        "_feed",
        "_forecast",
        "_grid",
        "_model",
        "_n",
        "_tail",
        "_var",
        "settings",
        "symbol",
    )

    def __init__(self, settings: FeatureSettings, symbol: str = "") -> None:
        self.settings = settings
        self.symbol = symbol
        w = settings.window
        self._grid = GridReturns()
        self._var = RollingVariance(w)
        self._entropy = PermutationEntropy(w)
        self._tail = RollingTail(w, 0.05)
        self._drift = DriftFlag()
        self._n = 0
        self._model = make_var_model(settings.var_model)
        self._feed = VarBacktestFeed(settings.var_backtest, symbol, settings.var_model)
        self._forecast: tuple[float, float] | None = None  # (VaR, ES) made after the last return
        self._backtests: list[VarBacktestRow] = []

    def _forecast_step(self, ts: int, r: float) -> None:
        """Count the standing forecast against r, feed r to the model, forecast the next bar."""
        fc = self._forecast
        rows = self._feed.update(ts, *fc, r) if fc is not None else self._feed.update(ts, None, None, r)
        if rows:
            self._backtests.extend(rows)
        model = self._model
        model.update(r)
        got = model.forecast()
        self._forecast = None if got is None else (got.var, got.es)

    def _push(self, ts: int, r: float) -> None:
        self._var.update(r)
        self._entropy.update(r)
        self._tail.update(r)
        self._drift.update(r)
        self._forecast_step(ts, r)
        self._n += 1

    def _push_zeros(self, k: int, n: int) -> None:
        """``n`` zero returns (a gap before grid index k): the windows, the VaR model and its
        backtest take the last min(n, W) of them, ADWIN every one."""
        w = self.settings.window
        m = min(n, w)
        d = self.settings.bar_interval_ms
        for i in range(m):
            self._var.update(0.0)
            self._entropy.update(0.0)
            self._tail.update(0.0)
            self._forecast_step((k - m + i) * d, 0.0)
        self._drift.update_zeros(n)
        self._n += n

    def flush_backtests(self) -> list[VarBacktestRow]:
        """The rows still to take, with the backtest's figures at its last forecast (the end of a
        bounded run), then cleared."""
        self._backtests.extend(self._feed.flush())
        return self.take_backtests()

    def take_backtests(self) -> list[VarBacktestRow]:
        """The ``var_backtests`` rows made since the last call (then cleared)."""
        rows = self._backtests
        if rows:
            self._backtests = []
            interval = self.settings.bar_interval_ms // 1000
            rows = [replace(r, interval=interval) for r in rows]
        return rows

    def update(self, bar: Bar) -> Feature | None:
        """Feed bar k; the feature row at k once W returns exist, else None."""
        k = bar.ts // self.settings.bar_interval_ms
        step = self._grid.update(k, bar.close)
        if step is None:
            return None
        zeros, ret = step
        if zeros:
            self._push_zeros(k, zeros)
        self._push(bar.ts, ret)
        if self._n < self.settings.window:
            return None
        vol = self._var.std()
        entropy = self._entropy.get()
        var95, es95 = self._tail.get()
        qvar = Z95 * vol * (1.0 - self.settings.qvar_entropy_coef * entropy)
        fvar, fes = self._forecast if self._forecast is not None else (math.nan, math.nan)
        return Feature(
            bar.symbol,
            bar.ts,
            ret,
            vol,
            entropy,
            var95,
            es95,
            qvar,
            self._drift.take(),
            fvar,
            fes,
            self.settings.bar_interval_ms // 1000,
        )
