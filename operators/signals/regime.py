"""The market regime of one symbol at each bar close.

Definitions, checked in this order (the first that holds wins), with the
symbol's feature row at bar t (``sigma_t`` = ``feature.volatility``, the
per-bar standard deviation of log returns over the feature window) and
``rho_t`` its average correlation with the other symbols:

* reference volatility ``ref_(t-1)``: the exponentially weighted mean of the
  volatilities of all *earlier* feature rows, half-life ``ref_halflife_bars``
  rows, bias-corrected like ``pandas.Series.ewm(halflife=h, adjust=True)``:
  ``ref = sum_i w_i sigma_i / sum_i w_i`` with ``w_i = 2 ** (-age_i / h)``. It
  is warm once it holds ``ref_min_bars`` rows; the current row joins it only
  after it was classified, so a volatility spike does not dilute itself.
* high volatility: ref warm and ``sigma_t > high_vol_ratio * ref_(t-1)``.
* ``crisis``: high volatility and ``rho_t >= crisis_corr`` (``rho_t`` known).
* ``high_vol``: high volatility otherwise.
* trend score ``T_t = (ln C_t - ln C_(t-L)) / (sigma_t * sqrt(L))`` with
  ``L = trend_window`` bars (bars as fed, one per update); when
  ``sigma_t == 0`` the score is 0 for no move and +-inf for any move.
* ``trend_up`` when ``T_t > trend_threshold``, ``trend_down`` when
  ``T_t < -trend_threshold``.
* ``range`` otherwise.

The classifier returns None until it has seen ``trend_window + 1`` bars, and
for any bar without a feature row.

>>> rc = RegimeClassifier(RegimeSettings(trend_window=2, ref_min_bars=2, ref_halflife_bars=10))
>>> bar = lambda t, c: Bar("X", t, c, c, c, c, 1.0, c, 1)
>>> feat = lambda t, v: Feature("X", t, 0.0, v, 0.9, 0.0, 0.0, 0.0, 0)
>>> rc.update(bar(0, 100.0), feat(0, 0.01), None), rc.update(bar(1, 100.0), feat(1, 0.01), None)
(None, None)
>>> rc.update(bar(2, 101.0), feat(2, 0.01), None)  # T = ln(1.01) / (0.01 * sqrt 2) = 0.70
'range'
>>> rc.update(bar(3, 105.0), feat(3, 0.01), 0.5)  # T = 3.45
'trend_up'
>>> rc.update(bar(4, 105.0), feat(4, 0.02), 0.5)  # 0.02 > 1.5 * ref 0.01
'high_vol'
>>> rc.update(bar(5, 105.0), feat(5, 0.05), 0.9)
'crisis'
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from schemas.records import Bar, Feature
from schemas.settings import MAX_WINDOW, check_settings, setting

TREND_UP, TREND_DOWN, RANGE, HIGH_VOL, CRISIS = "trend_up", "trend_down", "range", "high_vol", "crisis"


@dataclass(frozen=True, slots=True)
class RegimeSettings:
    """Thresholds of :class:`RegimeClassifier` (see the module docstring).

    Parameters
    ----------
    high_vol_ratio
        High volatility when ``sigma_t`` exceeds this multiple of the reference (> 0).
    ref_halflife_bars
        Half-life of the reference volatility EWMA, in feature rows (> 0).
    ref_min_bars
        Feature rows the reference needs before any high-volatility call (>= 1).
    crisis_corr
        Average correlation at or above which high volatility is a crisis.
    trend_threshold
        ``|T_t|`` above this is a trend (>= 0).
    trend_window
        L, bars between the two closes of the trend score (>= 1).
    """

    high_vol_ratio: float = setting(1.5, gt=0)
    ref_halflife_bars: float = setting(1440.0, gt=0)
    ref_min_bars: int = setting(60, ge=1)
    crisis_corr: float = setting(0.8, ge=-1, le=1)
    trend_threshold: float = setting(2.0, ge=0)
    trend_window: int = setting(60, ge=1, le=MAX_WINDOW, fixed=True)

    def __post_init__(self) -> None:
        check_settings(self)


class RegimeClassifier:
    """Classifies one symbol's bars into :data:`schemas.records.REGIMES`.

    After each update, ``trend_score`` and ``reference_vol`` hold the values
    the call used (None when not computed), for logging.

    Parameters
    ----------
    settings
        The thresholds.
    """

    __slots__ = (
        "_decay",
        "_den",
        "_logs",
        "_n_ref",
        "_num",
        "reference_vol",
        "settings",
        "trend_score",
    )

    def __init__(self, settings: RegimeSettings | None = None) -> None:
        self.settings = settings or RegimeSettings()
        self._logs: deque[float] = deque(maxlen=self.settings.trend_window + 1)
        self._decay = 2.0 ** (-1.0 / self.settings.ref_halflife_bars)
        self._num = 0.0
        self._den = 0.0
        self._n_ref = 0
        self.trend_score: float | None = None
        self.reference_vol: float | None = None

    def reference(self) -> float | None:
        """The reference volatility of the rows seen so far, None until ``ref_min_bars`` rows."""
        if self._n_ref < self.settings.ref_min_bars:
            return None
        return self._num / self._den

    def update(self, bar: Bar, feature: Feature | None, avg_corr: float | None) -> str | None:
        """Feed bar t, its feature row (None while features warm) and its average correlation."""
        s = self.settings
        self._logs.append(math.log(bar.close))
        self.trend_score = None
        self.reference_vol = None
        if feature is None:
            return None
        sigma = feature.volatility
        ref = self.reference()
        self._num = self._num * self._decay + sigma
        self._den = self._den * self._decay + 1.0
        self._n_ref += 1
        self.reference_vol = ref
        if len(self._logs) <= s.trend_window:
            return None
        move = self._logs[-1] - self._logs[0]
        if sigma > 0:
            score = move / (sigma * math.sqrt(s.trend_window))
        else:
            score = 0.0 if move == 0 else math.copysign(math.inf, move)
        self.trend_score = score
        if ref is not None and sigma > s.high_vol_ratio * ref:
            if avg_corr is not None and avg_corr >= s.crisis_corr:
                return CRISIS
            return HIGH_VOL
        if score > s.trend_threshold:
            return TREND_UP
        if score < -s.trend_threshold:
            return TREND_DOWN
        return RANGE
