"""Online VaR and ES backtests: Kupiec, Christoffersen, the Basel zone and Acerbi-Székely Z2.

:class:`VarBacktest` is fed one (forecast VaR, forecast ES, realised return)
at a time and keeps, over a rolling window and since the start, the counts
every figure is made of, in O(1) per update: forecasts T, exceedances x, the
transition counts n00, n01, n10, n11 of the exceedance indicator and the sum
of L_t I_t / ES_t. :class:`ModelRiskMonitor` turns the rolling zone into a
``model_risk`` risk event, once when it turns red and once when it is green
again.

Sign conventions: VaR and ES are positive losses (a 95% VaR of 2% is 0.02);
the realised value is a log return or a P&L, a gain positive, so the loss is
L = -ret; an exceedance is L > VaR (strictly). ``alpha`` is the forecasts'
tail probability (0.05 for a 95% VaR), the rate exceedances should have.

The statistics (``0 ln 0 = 0`` throughout):

- Kupiec's proportion of failures, chi-square with 1 d.o.f.:
  LR_pof = 2 [x ln(pi / alpha) + (T - x) ln((1 - pi) / (1 - alpha))], pi = x / T.
- Christoffersen's independence, chi-square with 1 d.o.f., on the T - 1
  transitions: the likelihood ratio of a first-order Markov chain (pi01,
  pi11) against one rate; in the form of the G statistic of the 2x2 table,
  LR_ind = 2 sum_ij n_ij ln(n_ij N / (n_i. n_.j)), N = n00 + n01 + n10 + n11.
  Conditional coverage LR_cc = LR_pof + LR_ind, chi-square with 2 d.o.f.
  (the usual sum; Christoffersen's own LR_cc drops the first observation
  from the coverage part, which differs by one term).
- The Basel traffic light generalised: P(X <= x) for X ~ Binomial(T, alpha),
  green below ``yellow`` (95%), yellow below ``red`` (99.99%), red from
  there. At T = 250 and alpha = 1% this is Basel's table: 0-4 green, 5-9
  yellow, 10 or more red.
- Acerbi-Székely Z2 = sum_t L_t I_t / (alpha ES_t) / T - 1 (their Z2 with the
  sign turned, as L is a loss): 0 when ES is right, > 0 when realised tail
  losses run above the forecast ES (ES, or the exceedance rate,
  underestimates risk), -1 when nothing exceeded. See :func:`es_z2_p`.

>>> bt = VarBacktest(VarBacktestSettings(window=250, alpha=0.01, min_forecasts=250))
>>> for t in range(250):
...     _ = bt.update(0.02, 0.025, -0.03 if t % 25 == 0 else 0.001)  # 10 exceedances
>>> f = bt.get()
>>> f.exceedances, f.zone, round(f.binom_cdf, 6), round(f.pof_lr, 4), round(f.es_z2, 4)
(10, 'red', 0.999946, 12.9555, 3.8)
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist

from schemas.records import RiskEvent, VarBacktestRow
from schemas.settings import MAX_WINDOW, SettingsError, check_settings, setting

GREEN = "green"
YELLOW = "yellow"
RED = "red"
ZONES = (GREEN, YELLOW, RED)

_NORMAL = NormalDist()

MODEL_RISK = "model_risk"
"""The ``kind`` of the risk events of :class:`ModelRiskMonitor`."""

_NEGLIGIBLE = 1e-17
"""Binomial tail sums stop when a term falls below this share of the sum."""


# --------------------------------------------------------------------------- distributions


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for X chi-square with ``dof`` 1 or 2 degrees of freedom.

    1 d.o.f.: erfc(sqrt(x / 2)); 2 d.o.f.: exp(-x / 2); 1.0 for x <= 0.

    >>> round(chi2_sf(3.841458820694124, 1), 12), round(chi2_sf(5.991464547107979, 2), 12)
    (0.05, 0.05)
    """
    if x <= 0.0:
        return 1.0
    if dof == 1:
        return math.erfc(math.sqrt(0.5 * x))
    if dof == 2:
        return math.exp(-0.5 * x)
    msg = f"chi2_sf knows 1 or 2 degrees of freedom, got {dof}"
    raise ValueError(msg)


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def binom_log_pmf(k: int, n: int, p: float) -> float:
    """ln P(X = k) for X ~ Binomial(n, p), 0 <= k <= n, 0 < p < 1 (by log-gamma)."""
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), 0 < p < 1, exact to rounding.

    Sums the smaller tail from its largest term outward (terms scaled by it,
    so nothing under- or overflows), stopping when the terms no longer count:
    below the mode the lower tail itself, from the mode up one minus the upper
    tail. O(sqrt(n p (1 - p))) terms.

    >>> [round(100 * binom_cdf(k, 250, 0.01), 2) for k in (0, 4, 5, 9, 10)]  # Basel's table
    [8.11, 89.22, 95.88, 99.97, 99.99]
    """
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    mode = math.floor((n + 1) * p)
    if k < mode:  # terms fall from k down to 0
        down = (1.0 - p) / p
        total = term = 1.0
        for j in range(k, 0, -1):
            term *= j / (n - j + 1) * down
            total += term
            if term < total * _NEGLIGIBLE:
                break
        return min(1.0, math.exp(binom_log_pmf(k, n, p) + math.log(total)))
    up = p / (1.0 - p)  # terms fall from k + 1 up to n
    total = term = 1.0
    for j in range(k + 2, n + 1):
        term *= (n - j + 1) / j * up
        total += term
        if term < total * _NEGLIGIBLE:
            break
    return max(0.0, 1.0 - math.exp(binom_log_pmf(k + 1, n, p) + math.log(total)))


def zone_limits(n: int, p: float, yellow: float = 0.95, red: float = 0.9999) -> tuple[int, int]:
    """The fewest exceedances of ``n`` forecasts that are yellow, and red: the smallest x
    with P(X <= x) >= ``yellow`` (``red``), X ~ Binomial(n, p).

    >>> zone_limits(250, 0.01)  # Basel: 5 is yellow, 10 red
    (5, 10)
    """
    x, limits = 0, []
    sd = math.sqrt(n * p * (1.0 - p))
    for limit in (yellow, red):
        # from the normal approximation's guess, a few steps to the exact limit (the cdf rises with x)
        g = max(x, int(n * p + _NORMAL.inv_cdf(limit) * sd))
        if binom_cdf(g, n, p) >= limit:
            while g > x and binom_cdf(g - 1, n, p) >= limit:
                g -= 1
        else:
            g += 1
            while binom_cdf(g, n, p) < limit:
                g += 1
        x = g
        limits.append(x)
    return limits[0], limits[1]


_shared_limits = functools.lru_cache(maxsize=16_384)(zone_limits)
"""zone_limits cached for the process: every symbol's backtest fills its window through the same sizes."""


def traffic_light(cdf: float, yellow: float = 0.95, red: float = 0.9999) -> str:
    """The zone of a binomial cumulative probability: green < ``yellow`` <= yellow < ``red`` <= red."""
    if cdf < yellow:
        return GREEN
    return YELLOW if cdf < red else RED


# --------------------------------------------------------------------------- statistics


def _xlogy(a: float, b: float) -> float:
    """a ln b with 0 ln b = 0."""
    return 0.0 if a == 0 else a * math.log(b)


def kupiec_pof(exceedances: int, forecasts: int, alpha: float) -> float:
    """Kupiec's proportion-of-failures LR of ``exceedances`` in ``forecasts`` >= 1 at rate ``alpha``.

    >>> round(kupiec_pof(0, 100, 0.05), 6), round(kupiec_pof(100, 100, 0.05), 6)  # -2T ln(1-a), -2T ln a
    (10.258659, 599.146455)
    """
    x, t = exceedances, forecasts
    rate = x / t
    lr = 2.0 * (_xlogy(x, rate / alpha) + _xlogy(t - x, (1.0 - rate) / (1.0 - alpha)))
    return max(lr, 0.0)


def christoffersen_ind(n00: int, n01: int, n10: int, n11: int) -> float:
    """Christoffersen's independence LR of the transition counts (n_ij: state i followed by j).

    The G statistic of the 2x2 table; 0 when a whole row or column is empty
    (nothing to tell a Markov chain from one rate).

    >>> round(christoffersen_ind(90, 5, 5, 0), 6), christoffersen_ind(99, 0, 0, 0)
    (0.526559, 0.0)
    """
    total = n00 + n01 + n10 + n11
    rows = (n00 + n01, n10 + n11)
    cols = (n00 + n10, n01 + n11)
    g = 0.0
    for i, j, n in ((0, 0, n00), (0, 1, n01), (1, 0, n10), (1, 1, n11)):
        if n:
            g += n * math.log(n * total / (rows[i] * cols[j]))
    return max(2.0 * g, 0.0)


def es_z2_p(z2: float, forecasts: int, alpha: float) -> float:
    """One-sided p-value of Acerbi-Székely Z2 against "ES underestimates" (Z2 > 0).

    Under the null, Z2 is the mean of T independent y_t = L_t I_t / (alpha
    ES_t) minus 1, E[y] = 1 and Var[y] = E[L^2 | tail] / (alpha ES^2) - 1 >=
    1 / alpha - 1 (Jensen, equality when the tail has no spread). The p-value
    is the normal approximation with that lower bound: P(Z > Z2 / sqrt((1 /
    alpha - 1) / T)). The 5% critical value 1.645 sqrt((1 / alpha - 1) / T) is
    0.65 at alpha = 2.5% and T = 250, next to the 0.70 Acerbi and Székely
    (2014) simulate across distributions there; it scales with T and alpha,
    where a fixed 0.7 would not. The lower bound makes the test a little
    liberal for fat tails; with few exceedances (T alpha < ~10) the normal
    approximation is rough.

    >>> round(1.6448536269514722 * math.sqrt((1 / 0.025 - 1) / 250), 3)
    0.65
    >>> round(es_z2_p(0.0, 250, 0.025), 6)
    0.5
    """
    return normal_sf(z2 / math.sqrt((1.0 / alpha - 1.0) / forecasts))


@dataclass(frozen=True, slots=True)
class BacktestFigures:
    """The backtest of the forecasts counted so far (in the window, or since the start).

    Parameters
    ----------
    forecasts
        T, forecasts counted (>= 1).
    exceedances
        x, forecasts whose loss exceeded the VaR.
    rate
        x / T.
    n00, n01, n10, n11
        Transitions of the exceedance indicator (n01: no exceedance followed
        by one); they add up to T - 1.
    pof_lr, pof_p
        Kupiec's LR and its chi-square(1) p-value.
    ind_lr, ind_p, cc_lr, cc_p
        Christoffersen's independence LR (chi-square(1)) and conditional
        coverage LR = pof + ind (chi-square(2)), with p-values; None below
        two forecasts.
    binom_cdf
        P(X <= x) for X ~ Binomial(T, alpha).
    zone
        ``green``, ``yellow`` or ``red`` by ``binom_cdf``.
    es_z2, es_p
        Acerbi-Székely Z2 (> 0: ES underestimates) and its one-sided p-value
        (:func:`es_z2_p`).
    """

    forecasts: int
    exceedances: int
    rate: float
    n00: int
    n01: int
    n10: int
    n11: int
    pof_lr: float
    pof_p: float
    ind_lr: float | None
    ind_p: float | None
    cc_lr: float | None
    cc_p: float | None
    binom_cdf: float
    zone: str
    es_z2: float
    es_p: float


def backtest_figures(
    forecasts: int,
    exceedances: int,
    transitions: tuple[int, int, int, int],
    tail_sum: float,
    alpha: float,
    yellow: float = 0.95,
    red: float = 0.9999,
) -> BacktestFigures:
    """The figures of T = ``forecasts`` >= 1 forecasts from their counts.

    ``transitions`` is (n00, n01, n10, n11); ``tail_sum`` is sum L_t I_t / ES_t.

    >>> f = backtest_figures(250, 0, (249, 0, 0, 0), 0.0, 0.01)
    >>> f.zone, round(f.pof_lr, 4), f.ind_lr, f.es_z2
    ('green', 5.0252, 0.0, -1.0)
    """
    t, x = forecasts, exceedances
    pof = kupiec_pof(x, t, alpha)
    ind = cc = ind_p = cc_p = None
    if t >= 2:
        ind = christoffersen_ind(*transitions)
        cc = pof + ind
        ind_p, cc_p = chi2_sf(ind, 1), chi2_sf(cc, 2)
    cdf = binom_cdf(x, t, alpha)
    z2 = tail_sum / (alpha * t) - 1.0
    return BacktestFigures(
        t,
        x,
        x / t,
        *transitions,
        pof,
        chi2_sf(pof, 1),
        ind,
        ind_p,
        cc,
        cc_p,
        cdf,
        traffic_light(cdf, yellow, red),
        z2,
        es_z2_p(z2, t, alpha),
    )


# --------------------------------------------------------------------------- the operator


@dataclass(frozen=True, slots=True)
class VarBacktestSettings:
    """Parameters of :class:`VarBacktest`.

    Parameters
    ----------
    window
        Forecasts in the rolling window.
    alpha
        The forecasts' tail probability, the exceedance rate they promise
        (0.05 for a 95% VaR and ES).
    min_forecasts
        The rolling figures are None below this many forecasts in the window
        (<= ``window``; 250 is Basel's sample).
    yellow, red
        Zone limits on P(X <= x), X ~ Binomial(T, alpha): yellow from
        ``yellow``, red from ``red`` (Basel: 95% and 99.99%).
    report_every
        :class:`VarBacktestFeed` writes its rows every this many forecasts,
        and whenever the rolling zone changes.
    """

    window: int = setting(1000, ge=2, le=MAX_WINDOW, fixed=True)
    alpha: float = setting(0.05, gt=0, lt=1, fixed=True)
    min_forecasts: int = setting(250, ge=1)
    yellow: float = setting(0.95, gt=0, lt=1)
    red: float = setting(0.9999, gt=0, lt=1)
    report_every: int = setting(250, ge=1)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.min_forecasts > self.window:
            raise SettingsError.of(self, "min_forecasts", f"<= window ({self.window})")
        if self.red <= self.yellow:
            raise SettingsError.of(self, "red", f"> yellow ({self.yellow})")


@dataclass(frozen=True, slots=True)
class VarBacktestSnapshot:
    """The rolling and the cumulative figures of a :class:`VarBacktest` (None until warm)."""

    rolling: BacktestFigures | None
    cumulative: BacktestFigures | None


class VarBacktest:
    """Rolling and cumulative VaR/ES backtest of one forecast stream, O(1) per update.

    Parameters
    ----------
    settings
        Window, alpha, warm-up and zone limits.

    Forecasts with a non-finite value, a missing (None) one or an ES <= 0 are
    skipped (counted in ``skipped``). The rolling sum of L I / ES is
    recomputed from the window every ``window`` updates; the cumulative one
    is a compensated (Neumaier) sum. Counts are integers: no drift. ``get``
    and ``cumulative`` cost a few logs plus the binomial sum, O(sqrt(T alpha)).

    >>> bt = VarBacktest(VarBacktestSettings(window=4, min_forecasts=3))
    >>> [bt.update(0.02, 0.03, r) for r in (0.01, -0.05, -0.03, 0.0)]
    [True, True, True, True]
    >>> f = bt.get()
    >>> f.forecasts, f.exceedances, (f.n00, f.n01, f.n10, f.n11)
    (4, 2, (0, 1, 1, 1))
    >>> bt.update(0.02, 0.03, -0.04)  # the first forecast leaves the window
    True
    >>> f = bt.get()
    >>> f.exceedances, (f.n00, f.n01, f.n10, f.n11), bt.snapshot().cumulative.forecasts
    (3, (0, 1, 1, 1), 5)
    """

    __slots__ = (
        "_buf",
        "_cum",
        "_cum_comp",
        "_cum_last",
        "_cum_sum",
        "_cum_t",
        "_cum_x",
        "_since",
        "_trans",
        "_win_sum",
        "_win_x",
        "settings",
        "skipped",
    )

    def __init__(self, settings: VarBacktestSettings | None = None) -> None:
        self.settings = settings or VarBacktestSettings()
        self._buf: deque[tuple[bool, float]] = deque()  # (exceeded, L I / ES)
        self._win_x = 0
        self._win_sum = 0.0
        self._trans = [0, 0, 0, 0]  # n00, n01, n10, n11 of the window
        self._since = 0
        self._cum_t = 0
        self._cum_x = 0
        self._cum = [0, 0, 0, 0]
        self._cum_last = False
        self._cum_sum = 0.0
        self._cum_comp = 0.0
        self.skipped = 0

    def update(self, var: float | None, es: float | None, ret: float | None) -> bool:
        """Count one forecast (VaR, ES as positive losses) against the realised ``ret``.

        Returns whether it was counted (False: skipped as not a forecast).
        """
        if (
            var is None
            or es is None
            or ret is None
            or not (math.isfinite(var) and math.isfinite(es) and math.isfinite(ret))
            or es <= 0.0
        ):
            self.skipped += 1
            return False
        loss = -ret
        hit = loss > var
        y = loss / es if hit else 0.0
        buf, trans = self._buf, self._trans
        if len(buf) == self.settings.window:
            old_hit, old_y = buf.popleft()
            trans[2 * old_hit + buf[0][0]] -= 1
            self._win_x -= old_hit
            self._win_sum -= old_y
        if buf:
            trans[2 * buf[-1][0] + hit] += 1
        buf.append((hit, y))
        self._win_x += hit
        self._win_sum += y
        self._since += 1
        if self._since >= self.settings.window:
            self._win_sum = math.fsum(v for _, v in buf)
            self._since = 0
        if self._cum_t:
            self._cum[2 * self._cum_last + hit] += 1
        self._cum_t += 1
        self._cum_x += hit
        self._cum_last = hit
        s = self._cum_sum + y  # Neumaier
        if abs(self._cum_sum) >= abs(y):
            self._cum_comp += (self._cum_sum - s) + y
        else:
            self._cum_comp += (y - s) + self._cum_sum
        self._cum_sum = s
        return True

    @property
    def n(self) -> int:
        """Forecasts in the window."""
        return len(self._buf)

    def zone(self) -> str | None:
        """The rolling zone, None below ``min_forecasts``: O(1) once the window is full
        (the zone limits of each window size are computed once per process)."""
        s = self.settings
        t = len(self._buf)
        if t < s.min_forecasts:
            return None
        limits = _shared_limits(t, s.alpha, s.yellow, s.red)
        x = self._win_x
        return GREEN if x < limits[0] else YELLOW if x < limits[1] else RED

    def get(self) -> BacktestFigures | None:
        """The rolling figures, None below ``min_forecasts`` forecasts in the window."""
        s = self.settings
        if len(self._buf) < s.min_forecasts:
            return None
        return backtest_figures(
            len(self._buf), self._win_x, tuple(self._trans), self._win_sum, s.alpha, s.yellow, s.red
        )

    def cumulative(self) -> BacktestFigures | None:
        """The figures since the start, None before the first forecast."""
        s = self.settings
        if not self._cum_t:
            return None
        total = self._cum_sum + self._cum_comp
        return backtest_figures(self._cum_t, self._cum_x, tuple(self._cum), total, s.alpha, s.yellow, s.red)

    def snapshot(self) -> VarBacktestSnapshot:
        """The rolling and the cumulative figures now (rows of a ``var_backtests`` table)."""
        return VarBacktestSnapshot(self.get(), self.cumulative())


def backtest_row(
    ts: int, symbol: str, model: str, scope: str, settings: VarBacktestSettings, f: BacktestFigures
) -> VarBacktestRow:
    """The ``var_backtests`` row of figures ``f`` (NaN for the tests undefined below two forecasts)."""
    nan = math.nan
    return VarBacktestRow(
        ts,
        symbol,
        model,
        scope,
        settings.window,
        settings.alpha,
        f.forecasts,
        f.exceedances,
        f.rate,
        f.n00,
        f.n01,
        f.n10,
        f.n11,
        f.pof_lr,
        f.pof_p,
        nan if f.ind_lr is None else f.ind_lr,
        nan if f.ind_p is None else f.ind_p,
        nan if f.cc_lr is None else f.cc_lr,
        nan if f.cc_p is None else f.cc_p,
        f.binom_cdf,
        f.zone,
        f.es_z2,
        f.es_p,
    )


class VarBacktestFeed:
    """A :class:`VarBacktest` of one forecast stream that says when to write its rows.

    Parameters
    ----------
    settings
        The backtest's settings (``report_every`` sets the cadence).
    symbol, model
        What the rows are about (symbol ``""``: the portfolio).

    ``update`` counts a forecast against the realised return in O(1) and
    returns the ``var_backtests`` rows (rolling once warm, and cumulative)
    every ``report_every`` counted forecasts and whenever the rolling zone
    changes; otherwise an empty list. ``zone`` is the rolling zone now.

    >>> feed = VarBacktestFeed(VarBacktestSettings(window=4, min_forecasts=2, report_every=3), "X", "fhs")
    >>> [len(feed.update(t, 0.02, 0.03, -0.01)) for t in range(4)]  # green at 2, due at 3
    [0, 2, 2, 0]
    >>> rows = feed.update(9, 0.02, 0.03, -0.05)  # one exceedance in 4: yellow
    >>> [(r.scope, r.forecasts, r.exceedances) for r in rows], feed.zone
    ([('rolling', 4, 1), ('cumulative', 5, 1)], 'yellow')
    >>> len(feed.update(10, 0.02, 0.03, 0.0)), feed.update(11, 0.02, 0.03, 0.0)  # 6 is due, 7 not
    (2, [])
    >>> [(r.ts, r.forecasts) for r in feed.flush()], feed.flush()  # the end: the figures at 7
    ([(11, 4), (11, 7)], [])
    """

    __slots__ = ("_reported", "backtest", "counted", "last_ts", "model", "symbol", "zone")

    def __init__(self, settings: VarBacktestSettings, symbol: str, model: str) -> None:
        self.backtest = VarBacktest(settings)
        self.symbol = symbol
        self.model = model
        self.counted = 0
        self.zone: str | None = None
        self.last_ts: int | None = None  # ts of the last counted forecast
        self._reported = 0  # forecasts counted when rows were last given

    def update(self, ts: int, var: float | None, es: float | None, ret: float | None) -> list[VarBacktestRow]:
        """Count one forecast; the rows to write now (see the class docstring)."""
        bt = self.backtest
        if not bt.update(var, es, ret):
            return []
        self.counted += 1
        self.last_ts = ts
        zone = bt.zone()
        changed = zone != self.zone
        self.zone = zone
        if not changed and self.counted % bt.settings.report_every:
            return []
        self._reported = self.counted
        return self.rows(ts)

    def flush(self) -> list[VarBacktestRow]:
        """The rows of the last counted forecast when some were counted since the last rows
        (the end of a bounded run: its final figures), else an empty list."""
        if self.counted == self._reported or self.last_ts is None:
            return []
        self._reported = self.counted
        return self.rows(self.last_ts)

    def rows(self, ts: int) -> list[VarBacktestRow]:
        """The rows of the figures now (rolling once warm, then cumulative)."""
        bt = self.backtest
        s = bt.settings
        out = []
        rolling, cumulative = bt.get(), bt.cumulative()
        if rolling is not None:
            out.append(backtest_row(ts, self.symbol, self.model, "rolling", s, rolling))
        if cumulative is not None:
            out.append(backtest_row(ts, self.symbol, self.model, "cumulative", s, cumulative))
        return out


# --------------------------------------------------------------------------- the monitor


class ModelRiskMonitor:
    """A ``model_risk`` risk event when the rolling zone turns red, and one when it is green again.

    Parameters
    ----------
    settings
        The backtest's settings (its zone limits go in the events).
    symbol
        The symbol of the events, ``""`` for the portfolio.

    Once per breach, with hysteresis: red raises (level 2, action
    ``defensive``: the engine goes defensive), yellow keeps a breach, green
    clears it (level 0, action ``clear``). The event's value is P(X <= x),
    its threshold the limit crossed (``red``, or ``yellow`` when clearing).

    >>> mon = ModelRiskMonitor(VarBacktestSettings(), "BTC/USDT")
    >>> fig = backtest_figures(250, 20, (212, 17, 17, 3), 25.0, 0.05)  # 8% of 250
    >>> fig.zone, mon.update(1, fig) is None
    ('yellow', True)
    >>> ev = mon.update(2, backtest_figures(250, 30, (200, 19, 19, 11), 40.0, 0.05))
    >>> ev.kind, ev.level, ev.action, mon.breached
    ('model_risk', 2, 'defensive', True)
    >>> mon.update(3, fig) is None  # yellow does not clear
    True
    >>> mon.update(4, backtest_figures(250, 12, (227, 11, 11, 0), 14.0, 0.05)).action
    'clear'
    """

    __slots__ = ("breached", "settings", "symbol")

    def __init__(self, settings: VarBacktestSettings | None = None, symbol: str = "") -> None:
        self.settings = settings or VarBacktestSettings()
        self.symbol = symbol
        self.breached = False

    def update(self, ts: int, figures: BacktestFigures | VarBacktestRow | None) -> RiskEvent | None:
        """Judge the rolling figures (or a rolling ``var_backtests`` row) at ``ts``; an event
        when a breach starts or ends."""
        if figures is None:
            return None
        s = self.settings
        what = (
            f"VaR exceeded {figures.exceedances} of {figures.forecasts} times "
            f"({100 * figures.rate:.2f}%, nominal {100 * s.alpha:.2f}%): "
            f"P(X <= {figures.exceedances}) = {figures.binom_cdf:.6f}"
        )
        if not self.breached and figures.zone == RED:
            self.breached = True
            message = f"{what} >= {s.red}, red zone: the risk model understates risk"
            return RiskEvent(ts, MODEL_RISK, 2, self.symbol, figures.binom_cdf, s.red, "defensive", message)
        if self.breached and figures.zone == GREEN:
            self.breached = False
            message = f"{what} < {s.yellow}, back in the green zone"
            return RiskEvent(ts, MODEL_RISK, 0, self.symbol, figures.binom_cdf, s.yellow, "clear", message)
        return None
