"""Next-bar VaR and ES forecasters: historical, EWMA normal, filtered HS, Cornish-Fisher, Student-t, GARCH.

Every estimator has the same small interface: ``update(r)`` takes the newest
one-bar log return, ``forecast(alpha=None)`` gives the VaR and ES of the next
bar's return as positive loss numbers (a :class:`Forecast`, None until warm),
``forecast_horizon(h, alpha=None)`` those of the sum of the next ``h`` returns,
aggregated by each model's own rule (documented per class). ``alpha`` is the
tail probability, the settings' ``alpha`` [0.05] when omitted. A non-finite
return or an alpha outside (0, 0.5) raises ValueError (a programming error).

Quantiles and tail means follow the metric spec (Q numpy's linear quantile,
ES the mean of the values <= Q) unless a model says otherwise. Window state
(:mod:`operators.risk.var_windows`) keeps exact integer sums, so no float
error builds up over long streams; the tail arithmetic (Student-t,
Cornish-Fisher) is :mod:`operators.risk.var_math`.

>>> m = EwmaNormal(EwmaSettings(min_periods=2))
>>> for r in (0.01, -0.02):
...     m.update(r)
>>> f = m.forecast()                     # sigma^2 = (0.94e-4 + 4e-4) / 1.94
>>> round(f.var, 9), round(f.es, 9)
(0.026247616, 0.03291557)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from operators.risk.var_math import SCALE as _SCALE
from operators.risk.var_math import cf_tail, exact, normal_tail, spec_tail, t_ppf, t_tail
from operators.risk.var_windows import _Ewma, _Moments, _TailWindow
from schemas.settings import MAX_WINDOW, SettingsError, check_settings, setting

_NORMAL = NormalDist()


def _check_return(r: float) -> None:
    if not math.isfinite(r):
        msg = f"a return must be finite, got {r!r}"
        raise ValueError(msg)


def _alpha(alpha: float | None, default: float) -> float:
    a = default if alpha is None else alpha
    if not 0.0 < a < 0.5:
        msg = f"alpha must be in (0, 0.5), got {a!r}"
        raise ValueError(msg)
    return a


def _check_h(h_bars: int) -> None:
    if isinstance(h_bars, bool) or not isinstance(h_bars, int) or h_bars < 1:
        msg = f"h_bars must be an int >= 1, got {h_bars!r}"
        raise ValueError(msg)


QUANTILE_METHODS = ("linear", "weibull")
"""numpy quantile methods of the filtered historical simulation."""


@dataclass(frozen=True, slots=True)
class Forecast:
    """VaR and ES of the next ``horizon`` bars' summed log return, as positive losses."""

    var: float
    es: float
    alpha: float
    horizon: int = 1


def _sim_tail(sums: np.ndarray, alpha: float, h_bars: int) -> Forecast:
    var, es = spec_tail(sums, alpha)
    return Forecast(var, es, alpha, h_bars)


# --------------------------------------------------------------------------- historical


@dataclass(frozen=True, slots=True)
class HistoricalSettings:
    """Historical simulation on the last ``window`` returns.

    Parameters
    ----------
    window
        W, returns in the window (>= 2).
    alpha
        The tail probability kept ready (others are computed by sorting the window).
    sims, seed
        Scenarios of the h-bar bootstrap and its seed.
    """

    window: int = setting(300, ge=2, le=MAX_WINDOW, fixed=True)
    alpha: float = setting(0.05, gt=0, lt=0.5, fixed=True)
    sims: int = setting(20_000, ge=100)
    seed: int = setting(0, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)


class Historical:
    """The spec's var95/es95 of the last W returns, as the next bar's forecast (same numbers as RollingTail).

    ``update`` is O(log W) amortised (two heaps, lazy deletion, exact tail sum);
    ``forecast`` is O(1) at ``settings.alpha`` and O(W log W) at any other level.
    Assumes i.i.d. returns; the h-bar horizon is a bootstrap of h independent
    draws from the window (``sims`` sums, seeded), with the spec's Q and tail mean.

    >>> m = Historical(HistoricalSettings(window=5, alpha=0.25))
    >>> for r in [0.03, -0.01, 0.02, -0.04, 0.0]:
    ...     m.update(r)
    >>> f = m.forecast()
    >>> round(f.var, 12), round(f.es, 12)
    (0.01, 0.025)
    """

    __slots__ = ("_tail", "settings")

    def __init__(self, settings: HistoricalSettings | None = None) -> None:
        self.settings = settings or HistoricalSettings()
        self._tail = _TailWindow(self.settings.window, self.settings.alpha)

    def update(self, r: float) -> None:
        _check_return(r)
        self._tail.update(r)

    def forecast(self, alpha: float | None = None) -> Forecast | None:
        a = _alpha(alpha, self.settings.alpha)
        if not self._tail.full:
            return None
        if a != self.settings.alpha:
            return Forecast(*spec_tail(self._tail.values(), a), a)
        q, mean = self._tail.tail()
        return Forecast(-q, -mean, a)

    def forecast_horizon(self, h_bars: int, alpha: float | None = None) -> Forecast | None:
        _check_h(h_bars)
        if h_bars == 1 or not self._tail.full:
            return self.forecast(alpha)
        a = _alpha(alpha, self.settings.alpha)
        x = self._tail.values()
        rng = np.random.default_rng(self.settings.seed)
        sums = x[rng.integers(0, len(x), (self.settings.sims, h_bars))].sum(axis=1)
        return _sim_tail(sums, a, h_bars)


# --------------------------------------------------------------------------- EWMA normal


@dataclass(frozen=True, slots=True)
class EwmaSettings:
    """RiskMetrics EWMA variance with zero mean and normal returns.

    Parameters
    ----------
    decay
        lambda in v_n = sum decay^(n-i) r_i^2 / sum decay^(n-i) [0.94].
    min_periods
        Returns seen before the first forecast.
    alpha
        The default tail probability.
    """

    decay: float = setting(0.94, gt=0, lt=1, fixed=True)
    min_periods: int = setting(30, ge=1)
    alpha: float = setting(0.05, gt=0, lt=0.5)

    def __post_init__(self) -> None:
        check_settings(self)


class EwmaNormal:
    """VaR = -z_alpha sigma, ES = sigma phi(z_alpha) / alpha, sigma^2 the EWMA of r^2 including the newest.

    O(1) per update. Zero mean, conditionally normal returns; the EWMA weights are
    normalised (pandas ``ewm(alpha=1-decay, adjust=True)`` of r^2), so there is
    no seed variance. The h-bar horizon is sqrt-of-time: the model's variance
    forecast is flat (IGARCH without drift), so the h-bar sum has variance
    h sigma^2, taken as normal (RiskMetrics' rule).
    """

    __slots__ = ("_ewma", "settings")

    def __init__(self, settings: EwmaSettings | None = None) -> None:
        self.settings = settings or EwmaSettings()
        self._ewma = _Ewma(self.settings.decay)

    def update(self, r: float) -> None:
        _check_return(r)
        self._ewma.update(r)

    def sigma(self) -> float | None:
        """The next bar's sigma once warm, else None."""
        if self._ewma.n < self.settings.min_periods:
            return None
        return math.sqrt(self._ewma.var())

    def forecast(self, alpha: float | None = None) -> Forecast | None:
        return self.forecast_horizon(1, alpha)

    def forecast_horizon(self, h_bars: int, alpha: float | None = None) -> Forecast | None:
        _check_h(h_bars)
        a = _alpha(alpha, self.settings.alpha)
        sigma = self.sigma()
        if sigma is None:
            return None
        z = _NORMAL.inv_cdf(a)
        s = sigma * math.sqrt(h_bars)
        return Forecast(-z * s, s * normal_tail(z), a, h_bars)


# --------------------------------------------------------------------------- filtered historical simulation


@dataclass(frozen=True, slots=True)
class FhsSettings:
    """EWMA-filtered historical simulation.

    The defaults (decay 0.80, W = 500, Weibull's quantile) calibrated best on
    the crash-month candles, 1- and 15-minute bars (tests/study_var_models.py).

    Parameters
    ----------
    decay, min_periods
        The EWMA filter (see :class:`EwmaSettings`; 0.80 here: a half-life of
        about 3 bars).
    window
        Standardised residuals kept (>= 2).
    quantile_method
        numpy's quantile of the residuals: "linear" (the spec's Q, whose
        exceedance rate is biased up by (1 - 2 alpha) / (W + 1): 5.3% at
        W = 300) or "weibull" (position (W + 1) alpha, unbiased for i.i.d.
        continuous residuals).
    alpha
        The tail probability kept ready.
    sims, seed
        Paths of the h-bar simulation and its seed.
    floor_share, floor_decay
        The filter's sigma is at least ``floor_share`` x a slow EWMA sigma
        (decay ``floor_decay``, a half-life of about 700 bars): after a run of
        unchanged prices the fast EWMA decays towards 0 (0.8^n), and without
        a floor the next one-tick move would be a residual of thousands of
        sigmas (filling the window's tail) and its forecast a VaR of 1e-10
        (an ES backtest's L / ES without bound). 0 switches the floor off.
    """

    decay: float = setting(0.80, gt=0, lt=1, fixed=True)
    min_periods: int = setting(30, ge=1, fixed=True)
    window: int = setting(500, ge=2, le=MAX_WINDOW, fixed=True)
    quantile_method: str = setting("weibull", fixed=True)
    floor_share: float = setting(0.05, ge=0, lt=1, fixed=True)
    floor_decay: float = setting(0.999, gt=0, lt=1, fixed=True)
    alpha: float = setting(0.05, gt=0, lt=0.5, fixed=True)
    sims: int = setting(20_000, ge=100)
    seed: int = setting(0, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.quantile_method not in QUANTILE_METHODS:
            raise SettingsError.of(self, "quantile_method", f"one of {QUANTILE_METHODS}")


class FilteredHistorical:
    """VaR = -sigma Q(Z, alpha), ES = -sigma mean(Z <= Q), Z the last W residuals r_t / sigma_(t|t-1).

    Q is numpy's ``quantile_method`` quantile of the residual window.

    sigma_(t|t-1) is the EWMA sigma before r_t (as :class:`EwmaNormal`), at
    least ``floor_share`` x the slow EWMA sigma before r_t; a residual is kept
    once the EWMA has ``min_periods`` returns and sigma > 0.
    Warm after W residuals. ``update`` O(log W) amortised, ``forecast`` O(1) at
    ``settings.alpha``. Assumes i.i.d. standardised residuals. The h-bar
    horizon simulates ``sims`` paths: r_k = sigma_k z_k with z_k drawn from the
    window and sigma_k updated by the EWMA along the path (volatility feedback
    included), then the spec's Q and tail mean of the path sums.
    """

    __slots__ = ("_ewma", "_slow", "_tail", "settings")

    def __init__(self, settings: FhsSettings | None = None) -> None:
        self.settings = settings or FhsSettings()
        self._ewma = _Ewma(self.settings.decay)
        self._slow = _Ewma(self.settings.floor_decay)
        s = self.settings
        self._tail = _TailWindow(s.window, s.alpha, s.quantile_method)

    def _floor_var(self) -> float:
        f = self.settings.floor_share
        return f * f * self._slow.var()

    def _var(self) -> float:
        """The filter's variance for the next return: the fast EWMA's, floored."""
        return max(self._ewma.var(), self._floor_var())

    def update(self, r: float) -> None:
        _check_return(r)
        e = self._ewma
        if e.n >= self.settings.min_periods:
            v = self._var()
            if v > 0.0:
                self._tail.update(r / math.sqrt(v))
        e.update(r)
        self._slow.update(r)

    def forecast(self, alpha: float | None = None) -> Forecast | None:
        a = _alpha(alpha, self.settings.alpha)
        if not self._tail.full:
            return None
        sigma = math.sqrt(self._var())
        if a != self.settings.alpha:
            var, es = spec_tail(self._tail.values(), a, self.settings.quantile_method)
            return Forecast(sigma * var, sigma * es, a)
        q, mean = self._tail.tail()
        return Forecast(-sigma * q, -sigma * mean, a)

    def forecast_horizon(self, h_bars: int, alpha: float | None = None) -> Forecast | None:
        _check_h(h_bars)
        if h_bars == 1 or not self._tail.full:
            return self.forecast(alpha)
        a = _alpha(alpha, self.settings.alpha)
        z = self._tail.values()
        rng = np.random.default_rng(self.settings.seed)
        draws = z[rng.integers(0, len(z), (self.settings.sims, h_bars))]
        lam = self.settings.decay
        num = np.full(self.settings.sims, self._ewma.num)
        den = self._ewma.den
        floor = self._floor_var()  # held at its value now along the paths (it moves ~0.1% a bar)
        total = np.zeros(self.settings.sims)
        for k in range(h_bars):
            r = np.sqrt(np.maximum(num / den, floor)) * draws[:, k]
            total += r
            num = lam * num + r * r
            den = lam * den + 1.0
        return _sim_tail(total, a, h_bars)


# --------------------------------------------------------------------------- Cornish-Fisher


@dataclass(frozen=True, slots=True)
class CornishFisherSettings:
    """Cornish-Fisher expansion on the moments of the last ``window`` returns.

    Parameters
    ----------
    window
        W, returns in the window (>= 4).
    alpha
        The default tail probability.
    """

    window: int = setting(300, ge=4, le=MAX_WINDOW, fixed=True)
    alpha: float = setting(0.05, gt=0, lt=0.5)

    def __post_init__(self) -> None:
        check_settings(self)


class CornishFisher:
    """VaR = -(mu + sd f(z_alpha)), ES = -(mu + sd E[f(Z) | Z <= z_alpha]) on the window's moments.

    mu, sd (ddof=1), skewness g1 and excess kurtosis g2 (population moments,
    scipy's ``skew``/``kurtosis`` defaults) of the last W returns, exact power
    sums, O(1) per update. Assumes i.i.d. returns and a Cornish-Fisher map
    that is increasing on the tail (moderate g1, g2; not checked). The h-bar
    horizon rescales the cumulants of a sum of h i.i.d. returns: mean h mu,
    sd sqrt(h) sd, skewness g1 / sqrt(h), excess kurtosis g2 / h.
    """

    __slots__ = ("_moments", "settings")

    def __init__(self, settings: CornishFisherSettings | None = None) -> None:
        self.settings = settings or CornishFisherSettings()
        self._moments = _Moments(self.settings.window)

    def update(self, r: float) -> None:
        _check_return(r)
        self._moments.update(r)

    def moments(self) -> tuple[float, float, float, float] | None:
        """(mean, sd, skewness, excess kurtosis) of the window once full, else None."""
        return self._moments.get()

    def forecast(self, alpha: float | None = None) -> Forecast | None:
        return self.forecast_horizon(1, alpha)

    def forecast_horizon(self, h_bars: int, alpha: float | None = None) -> Forecast | None:
        _check_h(h_bars)
        a = _alpha(alpha, self.settings.alpha)
        got = self._moments.get()
        if got is None:
            return None
        mu, sd, g1, g2 = got
        f, tail = cf_tail(_NORMAL.inv_cdf(a), g1 / math.sqrt(h_bars), g2 / h_bars)
        mu, sd = mu * h_bars, sd * math.sqrt(h_bars)
        return Forecast(-(mu + sd * f), -(mu + sd * tail), a, h_bars)


# --------------------------------------------------------------------------- Student-t


@dataclass(frozen=True, slots=True)
class StudentTSettings:
    """Student-t returns: degrees of freedom from the rolling kurtosis, scale from the EWMA.

    Parameters
    ----------
    window
        W, returns behind the excess kurtosis (>= 4).
    decay, min_periods
        The EWMA variance (see :class:`EwmaSettings`).
    nu_min, nu_max
        nu = 4 + 6 / g2 clipped to [nu_min, nu_max] (nu_max when g2 <= 0).
    alpha
        The default tail probability.
    """

    window: int = setting(300, ge=4, le=MAX_WINDOW, fixed=True)
    decay: float = setting(0.94, gt=0, lt=1, fixed=True)
    min_periods: int = setting(30, ge=1)
    nu_min: float = setting(4.0, ge=4)
    nu_max: float = setting(50.0, ge=4, le=1000)
    alpha: float = setting(0.05, gt=0, lt=0.5)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.nu_max < self.nu_min:
            raise SettingsError.of(self, "nu_max", f">= nu_min ({self.nu_min})")


class StudentT:
    """VaR = -sigma c t_nu^-1(alpha), ES = sigma c (nu + q^2)/(nu - 1) f_nu(q) / alpha, c = sqrt((nu-2)/nu).

    sigma is the EWMA sigma (as :class:`EwmaNormal`), so the standardised t
    has variance sigma^2; nu = 4 + 6 / g2 matches the t's excess kurtosis
    6 / (nu - 4) to the window's g2 (method of moments). O(1) per update
    (EWMA and exact power sums); a forecast solves the t quantile by Newton on
    the incomplete beta function (pure Python, ~1e-15). Warm once W returns and
    ``min_periods`` have been seen. The h-bar horizon keeps the flat EWMA
    variance (h sigma^2) and matches the kurtosis of a sum of h i.i.d.
    t returns, g2 / h: nu_h = 4 + h (nu - 4), clipped at nu_max (a moment-matching
    approximation; the sum is not exactly t).
    """

    __slots__ = ("_ewma", "_moments", "settings")

    def __init__(self, settings: StudentTSettings | None = None) -> None:
        self.settings = settings or StudentTSettings()
        self._ewma = _Ewma(self.settings.decay)
        self._moments = _Moments(self.settings.window)

    def update(self, r: float) -> None:
        _check_return(r)
        self._ewma.update(r)
        self._moments.update(r)

    def nu(self) -> float | None:
        """The fitted degrees of freedom once the window is full, else None."""
        got = self._moments.get()
        if got is None:
            return None
        s = self.settings
        g2 = got[3]
        nu = 4.0 + 6.0 / g2 if g2 > 6.0 / (s.nu_max - 4.0 + 1e-300) else s.nu_max
        return min(max(nu, s.nu_min), s.nu_max)

    def forecast(self, alpha: float | None = None) -> Forecast | None:
        return self.forecast_horizon(1, alpha)

    def forecast_horizon(self, h_bars: int, alpha: float | None = None) -> Forecast | None:
        _check_h(h_bars)
        a = _alpha(alpha, self.settings.alpha)
        nu = self.nu()
        if nu is None or self._ewma.n < self.settings.min_periods:
            return None
        nu = min(4.0 + h_bars * (nu - 4.0), self.settings.nu_max) if h_bars > 1 else nu
        sigma = math.sqrt(self._ewma.var() * h_bars)
        q = t_ppf(a, nu)
        c = sigma * math.sqrt((nu - 2.0) / nu)
        return Forecast(-c * q, c * t_tail(q, nu, a), a, h_bars)


# --------------------------------------------------------------------------- GARCH(1,1)


@dataclass(frozen=True, slots=True)
class GarchSettings:
    """GARCH(1,1) with variance targeting on a rolling window, normal innovations.

    Parameters
    ----------
    window
        W, returns behind the target variance (mean of r^2).
    arch, garch
        a and b in s2_(t+1) = (1 - a - b) vbar_t + a r_t^2 + b s2_t (a + b < 1).
    alpha
        The default tail probability.
    """

    window: int = setting(300, ge=2, le=MAX_WINDOW, fixed=True)
    arch: float = setting(0.08, ge=0, lt=1)
    garch: float = setting(0.90, ge=0, lt=1)
    alpha: float = setting(0.05, gt=0, lt=0.5)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.arch + self.garch >= 1.0:
            raise SettingsError.of(self, "garch", f"< 1 - arch ({1.0 - self.arch})")


class Garch:
    """VaR = -z_alpha s, ES = s phi(z_alpha) / alpha, s^2 the GARCH(1,1) one-step variance forecast.

    vbar_t = mean of r^2 over the last W returns (exact sum, O(1)); the
    recursion starts at s2 = vbar when the window first fills and then runs
    s2 <- (1 - a - b) vbar_t + a r_t^2 + b s2 with every return (O(1)).
    a and b are settings, not estimated (variance targeting only). Zero mean,
    conditionally normal. The h-bar horizon sums the model's variance
    forecasts, sum_k [vbar + (a + b)^(k-1) (s2 - vbar)], taken as normal.
    """

    __slots__ = ("_fifo", "_s2", "_sum", "settings")

    def __init__(self, settings: GarchSettings | None = None) -> None:
        self.settings = settings or GarchSettings()
        self._fifo: deque[int] = deque()
        self._sum = 0
        self._s2: float | None = None

    def target(self) -> float | None:
        """vbar, the mean of r^2 over the window, once full."""
        w = self.settings.window
        return self._sum / (w << _SCALE) if len(self._fifo) == w else None

    def update(self, r: float) -> None:
        _check_return(r)
        u = exact(r * r)
        if len(self._fifo) == self.settings.window:
            self._sum -= self._fifo.popleft()
        self._fifo.append(u)
        self._sum += u
        vbar = self.target()
        if vbar is None:
            return
        a, b = self.settings.arch, self.settings.garch
        self._s2 = vbar if self._s2 is None else (1.0 - a - b) * vbar + a * r * r + b * self._s2

    def variance(self, h_bars: int = 1) -> float | None:
        """Sum of the variance forecasts of the next ``h_bars`` bars once warm."""
        if self._s2 is None:
            return None
        vbar, p = self.target(), self.settings.arch + self.settings.garch
        geometric = float(h_bars) if p == 1.0 else (1.0 - p**h_bars) / (1.0 - p)
        return h_bars * vbar + geometric * (self._s2 - vbar)

    def forecast(self, alpha: float | None = None) -> Forecast | None:
        return self.forecast_horizon(1, alpha)

    def forecast_horizon(self, h_bars: int, alpha: float | None = None) -> Forecast | None:
        _check_h(h_bars)
        a = _alpha(alpha, self.settings.alpha)
        v = self.variance(h_bars)
        if v is None:
            return None
        z = _NORMAL.inv_cdf(a)
        s = math.sqrt(max(v, 0.0))
        return Forecast(-z * s, s * normal_tail(z), a, h_bars)


# --------------------------------------------------------------------------- the registry


VAR_MODELS: dict[str, type] = {
    "historical": Historical,
    "ewma": EwmaNormal,
    "fhs": FilteredHistorical,
    "cornish_fisher": CornishFisher,
    "student_t": StudentT,
    "garch": Garch,
}
"""The forecasters by the name ``features.var_model`` takes."""


def make_var_model(name: str):
    """A new forecaster ``name`` of :data:`VAR_MODELS` with its default settings.

    >>> type(make_var_model("fhs")).__name__
    'FilteredHistorical'
    >>> make_var_model("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown VaR model 'nope': one of historical, ewma, fhs, cornish_fisher, student_t, garch
    """
    cls = VAR_MODELS.get(name)
    if cls is None:
        msg = f"unknown VaR model {name!r}: one of {', '.join(VAR_MODELS)}"
        raise ValueError(msg)
    return cls()
