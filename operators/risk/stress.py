"""Monte Carlo stress of a portfolio over a horizon: filtered historical simulation or a t-copula.

Pure numpy/scipy, no I/O. :func:`stress` takes aligned per-bar log returns
(bars x symbols), the signed position values (quote units) and the equity,
simulates ``scenarios`` paths of ``horizon_bars`` bars and returns a
:class:`StressOutcome`: VaR/ES at 95% and 99%, the worst case, the chance
that each kill-switch trigger of :class:`~operators.risk.engine.RiskEngine`
fires within the horizon (its own thresholds, from ``RiskSettings``), and the
time to recover a loss.

The filter. Each symbol's returns are standardised by an EWMA sigma
(zero mean, RiskMetrics): ``s2[t] = decay * s2[t-1] + (1 - decay) * r[t-1]**2``,
seeded with the mean square of the first ``min_periods`` returns; the
residuals are ``z[t] = r[t] / sqrt(s2[t])`` for the bars after the seed, and
the current sigma is the forecast for the next bar.

The draws (one residual vector per simulated bar):

- ``fhs``: a whole row of residuals drawn with replacement: every symbol
  takes the same historical bar, so the cross-correlation (and whatever
  tail dependence the history has) is kept.
- ``t_copula``: the residuals' correlation from Kendall's tau
  (``rho = sin(pi tau / 2)``), degrees of freedom fitted by the copula's
  pseudo-likelihood on a grid (or given), multivariate t draws mapped to
  uniforms by the t CDF, then to each symbol's empirical residual quantiles.

A drawn residual times the symbol's sigma is the bar's return; with
``resimulate_sigma`` the sigma follows the EWMA recursion along the path (a
crash raises the volatility of the bars after it), never above the highest
filtered sigma of the history (the EWMA has no mean reversion: over a day of
1-minute bars an unbounded recursion sends some paths' sigma to overflow),
else it stays at today's.
The book is held as it is (base quantities fixed, no kill switch acting):
the P&L after bar t is ``sum_i value_i * (exp(R_i[t]) - 1)``, ``R_i`` the
cumulative log return, exact for any move size.

Kill-switch triggers, evaluated at every simulated bar close as the engine
does at its assess: drawdown ``1 - equity / peak > kill_drawdown`` (peak from
``peak_equity``, default the current equity), and the daily, weekly and
monthly losses (``-(equity - start) / start``, ``start`` the equity when the
UTC day, ISO week or month began: the current one is assumed to have begun at
the current equity; a period that begins inside the horizon starts at the
previous bar's equity) above ``kill_daily_loss`` etc.

Time to recover. For every scenario that ends the horizon with a loss, the
simulation continues (same book, same method, the path's sigma) until the
P&L is back at or above 0, for at most ``recovery_horizons * horizon_bars``
bars. ``recovery_mean_bars`` is the mean over the scenarios that recover
within that cap (NaN when none does); ``recovery_unrecovered`` is the share
of the losing scenarios that do not. With zero drift the recovery time of a
random walk has an infinite mean, so the capped mean is only meaningful read
with that share. (A drift-based estimate, loss / mean drift, was not used:
a history's mean return is mostly noise.)

Seeds. Random numbers are drawn per block of :data:`BLOCK` scenarios from a
generator seeded by ``(seed, block index)``, and a batch is a whole number
of blocks; the results do not depend on ``batch_size``.

>>> rng = np.random.default_rng(1)
>>> r = rng.normal(0.0, 0.01, (2_000, 2))
>>> out = stress(StressInput(r, np.array([50_000.0, -20_000.0]), 100_000.0, 0, 60_000),
...              StressSettings(scenarios=2_000, horizon_bars=10))
>>> 0 < out.var95 < out.es95 < out.var99 < out.es99 <= out.worst
True
>>> sorted(out.kill)
['any', 'daily_loss', 'drawdown', 'monthly_loss', 'weekly_loss']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special, stats
from scipy.signal import lfilter

from operators.risk.portfolio import period_keys
from operators.risk.settings import RiskSettings
from schemas.settings import SettingsError, check_settings, setting

FHS, T_COPULA = "fhs", "t_copula"
METHODS = (FHS, T_COPULA)
BLOCK = 500
"""Scenarios per random-number block (the unit of seeding and of batches)."""
DOF_GRID = (2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
"""Degrees of freedom the t-copula's pseudo-likelihood is evaluated at."""
KILL_TRIGGERS = ("drawdown", "daily_loss", "weekly_loss", "monthly_loss")


@dataclass(frozen=True, slots=True)
class StressSettings:
    """How :func:`stress` simulates.

    Parameters
    ----------
    scenarios, horizon_bars
        Paths simulated and their length in bars.
    method
        ``fhs`` (bootstrap of whole residual rows) or ``t_copula``.
    seed
        Seed of the random numbers (with the block index).
    decay, min_periods
        The EWMA filter: decay 0.94 (RiskMetrics; half-life 11 bars), not
        the 0.80 of ``FhsSettings``: that was calibrated for one-bar
        forecasts, and along a re-simulated path a 3-bar half-life lets one
        drawn residual move sigma by half. ``min_periods`` returns seed it.
    resimulate_sigma
        The sigma follows the EWMA recursion along each path, capped at the
        history's highest filtered sigma (else today's).
    dof
        The t-copula's degrees of freedom (> 2), None: fitted on :data:`DOF_GRID`.
    batch_size
        Scenarios between progress reports (rounded to whole blocks of 500).
    recovery_horizons
        The recovery simulation's cap, in horizons (0: no recovery estimate).
    """

    scenarios: int = setting(10_000, ge=1)
    horizon_bars: int = setting(60, ge=1)
    method: str = setting(FHS)
    seed: int = setting(0, ge=0)
    decay: float = setting(0.94, gt=0, lt=1)
    min_periods: int = setting(30, ge=2)
    resimulate_sigma: bool = setting(True)
    dof: float | None = setting(None, gt=2)
    batch_size: int = setting(2_000, ge=1)
    recovery_horizons: int = setting(10, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.method not in METHODS:
            raise SettingsError.of(self, "method", f"one of {METHODS}")


@dataclass(frozen=True, slots=True)
class StressInput:
    """What is stressed.

    Parameters
    ----------
    returns
        Aligned per-bar log returns, bars x symbols, oldest first, finite.
    values
        Signed position value per symbol, quote units (short < 0).
    equity
        The portfolio's equity now, quote units (> 0).
    start_ts, bar_ms
        Close time of the last bar (the horizon starts there) and the bar
        interval, epoch ms: they place the UTC day/week/month boundaries.
    peak_equity
        The peak the drawdown is measured from (None: ``equity``).
    """

    returns: np.ndarray
    values: np.ndarray
    equity: float
    start_ts: int
    bar_ms: int
    peak_equity: float | None = None


@dataclass(frozen=True, slots=True)
class StressOutcome:
    """What :func:`stress` found. Losses are positive, quote units; ``*_share`` over equity.

    Parameters
    ----------
    pnl
        Each scenario's P&L at the end of the horizon.
    var95, es95, var99, es99
        VaR (the loss at the 5% / 1% quantile of ``pnl``) and ES (the mean
        loss at or beyond it).
    worst, mean_pnl, p_loss
        The largest loss, the mean P&L and the share of losing scenarios.
    kill
        Probability that each trigger (and ``any``) fires within the horizon.
    recovery_mean_bars, recovery_unrecovered, recovery_cap_bars
        See the module docstring (NaN when no scenario lost or no cap).
    dof
        The t-copula's degrees of freedom (NaN for ``fhs``).
    sigma
        Each symbol's current EWMA sigma per bar.
    residual_bars
        Standardised residual rows the draws come from.
    """

    pnl: np.ndarray
    var95: float
    es95: float
    var99: float
    es99: float
    worst: float
    mean_pnl: float
    p_loss: float
    kill: dict[str, float]
    recovery_mean_bars: float
    recovery_unrecovered: float
    recovery_cap_bars: int
    dof: float
    sigma: np.ndarray
    residual_bars: int


def ewma_filter(
    returns: np.ndarray, decay: float, min_periods: int, floor_share: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised residuals (rows after the seed), the next bar's sigma and the highest sigma
    the filter gave a row, per symbol.

    The EWMA variance is floored at ``floor_share``² times the history's mean
    squared return (as the one-bar FHS forecaster floors its sigma).

    >>> r = np.array([[0.01], [-0.01], [0.02], [0.0]])
    >>> z, sigma, sigma_max = ewma_filter(r, 0.5, 2)
    >>> s2 = [1e-4, 0.5 * 1e-4 + 0.5 * 4e-4]          # forecasts for rows 2 and 3
    >>> bool(np.allclose(z[:, 0], [0.02 / s2[0] ** 0.5, 0.0]))
    True
    >>> bool(np.isclose(sigma[0], (0.5 * s2[1]) ** 0.5))
    True
    """
    r = np.asarray(returns, dtype=float)
    seed = np.mean(r[:min_periods] ** 2, axis=0)
    tail = r[min_periods:]
    y = lfilter([1.0 - decay], [1.0, -decay], tail**2, axis=0, zi=(decay * seed)[None, :])[0]
    # at least (floor_share x the history's rms return)^2: after a run of unchanged prices the EWMA
    # decays towards 0, and the next one-tick move would be a residual of 1e40 sigmas
    y = np.maximum(y, (floor_share**2) * np.mean(r**2, axis=0))
    forecast = np.vstack([np.maximum(seed, (floor_share**2) * np.mean(r**2, axis=0))[None, :], y[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(forecast > 0, tail / np.sqrt(forecast), 0.0)
    return z, np.sqrt(y[-1]), np.sqrt(forecast.max(axis=0))


def kendall_correlation(z: np.ndarray) -> np.ndarray:
    """The correlation of a t (or any elliptical) copula from Kendall's tau, made positive definite.

    >>> x = np.random.default_rng(0).multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], 4_000)
    >>> bool(abs(kendall_correlation(x)[0, 1] - 0.6) < 0.03)
    True
    """
    k = z.shape[1]
    rho = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            tau = stats.kendalltau(z[:, i], z[:, j]).statistic
            rho[i, j] = rho[j, i] = math.sin(math.pi * (0.0 if math.isnan(tau) else tau) / 2.0)
    w, v = np.linalg.eigh(rho)
    if w.min() < 1e-8:  # nearest positive definite by clipping the eigenvalues
        rho = (v * np.maximum(w, 1e-8)) @ v.T
        d = np.sqrt(np.diag(rho))
        rho = rho / np.outer(d, d)
    return rho


def fit_dof(z: np.ndarray, rho: np.ndarray) -> float:
    """The t-copula's degrees of freedom with the highest pseudo-likelihood on :data:`DOF_GRID`.

    >>> x = stats.multivariate_t(shape=[[1, 0.5], [0.5, 1]], df=4).rvs(3_000, random_state=2)
    >>> fit_dof(x, kendall_correlation(x)) <= 8.0
    True
    """
    n, k = z.shape
    if k < 2:
        return math.inf  # one symbol: the copula is the uniform whatever the dof
    u = (stats.rankdata(z, axis=0) / (n + 1)).clip(1e-9, 1 - 1e-9)
    best, best_ll = DOF_GRID[0], -math.inf
    for nu in DOF_GRID:
        x = stats.t.ppf(u, nu)
        ll = stats.multivariate_t(shape=rho, df=nu).logpdf(x).sum() - stats.t.logpdf(x, nu).sum()
        if ll > best_ll:
            best, best_ll = nu, ll
    return best


class _Draws:
    """Residual vectors for (scenarios, bars) from one block's generator."""

    def __init__(self, z: np.ndarray, method: str, rho: np.ndarray | None, dof: float) -> None:
        self.z, self.method, self.dof = z, method, dof
        self.sorted_t = np.sort(z, axis=0).T.copy()  # symbols x residuals
        self.chol = None if rho is None else np.linalg.cholesky(rho)

    def __call__(self, rng: np.random.Generator, b: int, h: int) -> np.ndarray:
        n, k = self.z.shape
        if self.method == FHS:
            return self.z[rng.integers(0, n, (b, h))]
        x = rng.standard_normal((b, h, k)) @ self.chol.T
        if math.isfinite(self.dof):
            x = x / np.sqrt(rng.chisquare(self.dof, (b, h, 1)) / self.dof)
            u = special.stdtr(self.dof, x)
        else:
            u = special.ndtr(x)
        pos = u * (n - 1)
        lo = np.minimum(pos.astype(np.int64), n - 2) if n > 1 else np.zeros(pos.shape, np.int64)
        frac = pos - lo
        flat = self.sorted_t.ravel()
        base = np.arange(k) * n
        left = flat[base + lo]
        right = flat[base + np.minimum(lo + 1, n - 1)]
        return left + frac * (right - left)


def _path(
    draws: np.ndarray, sig2: np.ndarray, decay: float, resim: bool, cap: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Log returns (b, h, k) of residual draws scaled by the (re-simulated) sigma, and the sigma² after;
    ``cap`` bounds the re-simulated sigma² per symbol."""
    if not resim:
        return draws * np.sqrt(sig2)[:, None, :], sig2
    out = np.empty_like(draws)
    for t in range(draws.shape[1]):
        out[:, t] = r = draws[:, t] * np.sqrt(sig2)
        sig2 = np.minimum(decay * sig2 + (1.0 - decay) * r * r, cap)
    return out, sig2


def _period_starts(start_ts: int, bar_ms: int, h: int) -> np.ndarray:
    """Per period and bar 1..h: the path index (0 = now) of the equity the period's loss is measured from."""
    keys = np.array([period_keys(start_ts + t * bar_ms) for t in range(h + 1)])  # (h + 1, 3)
    out = np.zeros((3, h), dtype=np.int64)
    for p in range(3):
        first = 0
        for t in range(1, h + 1):
            if keys[t, p] != keys[t - 1, p]:
                first = t - 1  # a new period begins at bar t: measured from the equity before it
            out[p, t - 1] = first
    return out


def _kills(pnl: np.ndarray, inp: StressInput, risk: RiskSettings, starts: np.ndarray) -> np.ndarray:
    """(b, 4) booleans: each kill-switch trigger fired at some bar of the path."""
    eq = inp.equity + np.concatenate([np.zeros((pnl.shape[0], 1)), pnl], axis=1)  # (b, h + 1)
    peak = np.maximum(np.maximum.accumulate(eq, axis=1), inp.peak_equity or inp.equity)[:, 1:]
    fired = [(1.0 - eq[:, 1:] / peak > risk.kill_drawdown).any(axis=1)]
    limits = (risk.kill_daily_loss, risk.kill_weekly_loss, risk.kill_monthly_loss)
    for p, limit in enumerate(limits):
        start = eq[:, starts[p]]
        loss = -(eq[:, 1:] - start) / np.abs(start)
        fired.append((loss > limit).any(axis=1))
    return np.stack(fired, axis=1)


@dataclass(frozen=True, slots=True)
class _Run:
    """What every block of one :func:`stress` call shares."""

    inp: StressInput
    settings: StressSettings
    risk: RiskSettings
    draw: _Draws
    sigma: np.ndarray
    starts: np.ndarray
    cap: np.ndarray  # the highest filtered sigma² of the history, per symbol


def _block(rng: np.random.Generator, b: int, run: _Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block: horizon P&L (b,), kill triggers (b, 4) and bars to recover (b,: NaN without a
    loss, inf when not within the cap)."""
    s, values, h = run.settings, run.inp.values, run.settings.horizon_bars
    sig2 = np.broadcast_to(run.sigma**2, (b, run.sigma.size)).copy()
    r, sig2 = _path(run.draw(rng, b, h), sig2, s.decay, s.resimulate_sigma, run.cap)
    cum = np.cumsum(r, axis=1)
    pnl = np.expm1(cum) @ values  # (b, h)
    kills = _kills(pnl, run.inp, run.risk, run.starts)
    recover = np.where(pnl[:, -1] < 0, math.inf, math.nan)
    rows = np.flatnonzero(pnl[:, -1] < 0)  # scenarios still below water, continued alone
    level, sig2, done = cum[rows, -1], sig2[rows], 0
    while rows.size and done < s.recovery_horizons * h:
        r, sig2 = _path(run.draw(rng, rows.size, h), sig2, s.decay, s.resimulate_sigma, run.cap)
        more = level[:, None, :] + np.cumsum(r, axis=1)
        back = (np.expm1(more) @ values) >= 0
        hit = back.any(axis=1)
        recover[rows[hit]] = done + np.argmax(back[hit], axis=1) + 1
        rows, level, sig2, done = rows[~hit], more[~hit, -1], sig2[~hit], done + h
    return pnl[:, -1], kills, recover


def _check(inp: StressInput, s: StressSettings) -> None:
    r, v = inp.returns, inp.values
    if r.ndim != 2 or v.ndim != 1 or r.shape[1] != v.size or v.size == 0:
        msg = f"returns must be bars x symbols and values one per symbol, got {r.shape} and {v.shape}"
        raise ValueError(msg)
    if r.shape[0] < s.min_periods + 2:
        msg = f"{r.shape[0]} bars of returns: at least min_periods + 2 = {s.min_periods + 2} needed"
        raise ValueError(msg)
    if not (np.isfinite(r).all() and np.isfinite(v).all() and math.isfinite(inp.equity) and inp.equity > 0):
        msg = "returns and values must be finite and equity > 0"
        raise ValueError(msg)


def _tail(pnl: np.ndarray, alpha: float) -> tuple[float, float]:
    """VaR and ES (losses > 0) at tail probability ``alpha``."""
    q = float(np.quantile(pnl, alpha))
    return -q, -float(pnl[pnl <= q].mean())


def stress(
    inp: StressInput,
    settings: StressSettings | None = None,
    risk: RiskSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StressOutcome:
    """Simulate ``settings.scenarios`` paths of the book in ``inp``; see the module docstring.

    Parameters
    ----------
    inp
        The returns, the book and the clock (:class:`StressInput`).
    settings
        A :class:`StressSettings` (default: 10,000 FHS scenarios of 60 bars).
    risk
        The engine's thresholds (the kill switch's are used).
    progress
        Called with (scenarios done, scenarios) after every batch.
    """
    s, risk = settings or StressSettings(), risk or RiskSettings()
    inp = StressInput(
        np.asarray(inp.returns, dtype=float), np.asarray(inp.values, dtype=float), float(inp.equity),
        inp.start_ts, inp.bar_ms, inp.peak_equity,
    )  # fmt: skip
    _check(inp, s)
    z, sigma, sigma_max = ewma_filter(inp.returns, s.decay, s.min_periods)
    rho, dof = None, math.nan
    if s.method == T_COPULA:
        rho = kendall_correlation(z)
        dof = s.dof if s.dof is not None else fit_dof(z, rho)
    run = _Run(
        inp,
        s,
        risk,
        _Draws(z, s.method, rho, dof),
        sigma,
        _period_starts(inp.start_ts, inp.bar_ms, s.horizon_bars),
        np.maximum(sigma_max, sigma) ** 2,
    )
    blocks = -(-s.scenarios // BLOCK)
    per_batch = max(1, round(s.batch_size / BLOCK))
    parts = []
    for first in range(0, blocks, per_batch):
        for k in range(first, min(blocks, first + per_batch)):
            b = min(BLOCK, s.scenarios - k * BLOCK)
            parts.append(_block(np.random.default_rng([s.seed, k]), b, run))
        if progress is not None:
            progress(min(s.scenarios, (first + per_batch) * BLOCK), s.scenarios)
    pnl = np.concatenate([p[0] for p in parts])
    kills = np.concatenate([p[1] for p in parts])
    recover = np.concatenate([p[2] for p in parts])
    var95, es95 = _tail(pnl, 0.05)
    var99, es99 = _tail(pnl, 0.01)
    fired = {name: float(kills[:, i].mean()) for i, name in enumerate(KILL_TRIGGERS)}
    fired["any"] = float(kills.any(axis=1).mean())
    losing = recover[~np.isnan(recover)]
    back = losing[np.isfinite(losing)]
    cap = s.recovery_horizons * s.horizon_bars
    return StressOutcome(
        pnl=pnl,
        var95=var95,
        es95=es95,
        var99=var99,
        es99=es99,
        worst=float(-pnl.min()),
        mean_pnl=float(pnl.mean()),
        p_loss=float((pnl < 0).mean()),
        kill=fired,
        recovery_mean_bars=float(back.mean()) if back.size and cap else math.nan,
        recovery_unrecovered=float(1.0 - back.size / losing.size) if losing.size and cap else math.nan,
        recovery_cap_bars=cap,
        dof=float(dof),
        sigma=sigma,
        residual_bars=z.shape[0],
    )
