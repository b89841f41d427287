"""Portfolio QVaR and ES: the parametric VaR of the whole book, entropy-adjusted.

Definitions (normative, from the risk issue):

- sigma_p = sqrt(w' S w), with w the signed position weights (value /
  equity), S_ij = rho_ij * sigma_i * sigma_j * h, sigma_i the per-bar
  volatility of symbol i, h = ``horizon_bars`` (so sigma scales by sqrt(h)),
  rho_ii = 1.
- H_w = sum |w_i| H_i / sum |w_i|, the position-weighted permutation entropy
  (0 with no positions).
- QVaR = equity * sigma_p * z * (1 - c * H_w), z = ``z`` [1.6448536269514722],
  c = ``entropy_coef`` [0.3]; ``qvar_share`` = QVaR / equity.
- ES = equity * sigma_p * phi(z) / (1 - Phi(z)) * (1 - c * H_w): the normal
  expected shortfall at the same level (phi(1.6449) / 0.05 = 2.0627...) with
  the same entropy factor; ``es_share`` = ES / equity.

- The calibrated VaR and ES (``fvar_share``, ``fes_share``, over the same
  horizon): the per-symbol next-bar forecasts (VaR_i, ES_i: the features'
  ``fvar95``/``fes95`` of the configured model, positive return losses)
  aggregated with the correlations, VaR_p = sqrt(v' R v) * sqrt(h) with
  v_i = w_i VaR_i, and ES_p the same with ES_i; no entropy factor. This is
  exact when the returns are jointly elliptical (normal, Student-t) and the
  usual aggregation rule otherwise. A held symbol without a forecast (the
  model not warm) counts with the normal z * sigma_i (and z * sigma_i *
  phi(z) / (1 - Phi(z)) for its ES), and is counted in ``missing_forecasts``.

Missing inputs are counted and filled conservatively:

- a pair whose correlation is unknown (``corr`` returns None or NaN) counts
  as ``missing_corr`` [1.0: moves together];
- a held symbol without a volatility counts with ``missing_vol`` if set, else
  the largest volatility known in ``vols`` (over all symbols, held or not),
  else ``missing_vol_default`` [0.01 per bar];
- a held symbol without an entropy counts as H_i = 0 (no entropy discount).

>>> r = portfolio_risk({"A": 0.5, "B": -0.25}, {"A": 0.01, "B": 0.02}, {"A": 0.5, "B": 1.0},
...                    lambda a, b: 0.5, 100_000.0, PortfolioRiskSettings())
>>> round(r.sigma_p, 12)   # sqrt(0.5^2 1e-4 + 0.25^2 4e-4 - 2 * 0.5 * 0.25 * 0.5 * 2e-4)
0.005
>>> (round(r.weighted_entropy, 12), round(r.qvar, 6), r.missing_pairs)
(0.666666666667, 657.941451, 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from schemas.settings import check_settings, setting

Z95 = 1.6448536269514722


def normal_es_factor(z: float) -> float:
    """phi(z) / (1 - Phi(z)): the normal ES in units of sigma at the VaR level z.

    >>> round(normal_es_factor(Z95), 6)
    2.062713
    """
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return pdf / (0.5 * math.erfc(z / math.sqrt(2.0)))


@dataclass(frozen=True, slots=True)
class PortfolioRiskSettings:
    """Parameters of :func:`portfolio_risk`.

    Parameters
    ----------
    z
        Normal quantile of the VaR level, > 0 [95%].
    entropy_coef
        c in the entropy factor (1 - c * H_w), in [0, 1].
    horizon_bars
        Horizon in bars, > 0; volatilities scale by its square root.
    missing_corr
        Correlation assumed for a pair without one, in [-1, 1].
    missing_vol
        Per-bar volatility assumed for a held symbol without one (>= 0), or
        None for the largest known volatility (``missing_vol_default`` if none).
    missing_vol_default
        The fallback when ``missing_vol`` is None and no volatility is known.
    """

    z: float = setting(Z95, gt=0)
    entropy_coef: float = setting(0.3, ge=0, le=1)
    horizon_bars: float = setting(1.0, gt=0)
    missing_corr: float = setting(1.0, ge=-1, le=1)
    missing_vol: float | None = setting(None, ge=0)
    missing_vol_default: float = setting(0.01, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class PortfolioRisk:
    """The portfolio's risk at one moment.

    Parameters
    ----------
    sigma_p
        Portfolio return volatility over the horizon.
    qvar, es
        Entropy-adjusted VaR and ES in quote units (loss, >= 0).
    qvar_share, es_share
        The same as fractions of equity.
    weighted_entropy
        H_w.
    missing_pairs
        Held pairs whose correlation was unknown.
    missing_vols
        Held symbols whose volatility was unknown.
    fvar_share, fes_share
        The calibrated VaR and ES over the horizon as fractions of equity
        (see the module docstring; NaN when no forecasts were given).
    missing_forecasts
        Held symbols without a calibrated forecast (counted with the normal rule).
    """

    sigma_p: float
    qvar: float
    qvar_share: float
    es: float
    es_share: float
    weighted_entropy: float
    missing_pairs: int
    missing_vols: int
    fvar_share: float = math.nan
    fes_share: float = math.nan
    missing_forecasts: int = 0


def weighted_entropy(weights: dict[str, float], entropies: dict[str, float]) -> float:
    """sum |w_i| H_i / sum |w_i| over held symbols (missing H_i = 0; 0.0 when flat).

    >>> round(weighted_entropy({"A": 0.3, "B": -0.1}, {"A": 1.0, "B": 0.6}), 12)
    0.9
    """
    total = sum(abs(w) for w in weights.values())
    if total == 0.0:
        return 0.0
    return sum(abs(w) * entropies.get(s, 0.0) for s, w in weights.items()) / total


def portfolio_risk(
    weights: dict[str, float],
    vols: dict[str, float],
    entropies: dict[str, float],
    corr: Callable[[str, str], float | None],
    equity: float,
    settings: PortfolioRiskSettings,
    forecasts: dict[str, tuple[float, float]] | None = None,
) -> PortfolioRisk:
    """QVaR and ES of a book of signed weights (see the module docstring).

    Parameters
    ----------
    weights
        Signed value / equity per symbol; zero weights are ignored.
    vols
        Per-bar return volatility per symbol.
    entropies
        Permutation entropy per symbol, in [0, 1].
    corr
        ``corr(a, b)`` with ``a < b`` (string order) gives the pair's
        correlation, or None when unknown. Values are clipped to [-1, 1].
    equity
        Account equity in quote units.
    settings
        A :class:`PortfolioRiskSettings`.
    forecasts
        Per symbol (VaR, ES) of the next bar's return as positive losses (NaN:
        not warm), for the calibrated ``fvar_share``/``fes_share``; None: not computed.
    """
    held = sorted(s for s, w in weights.items() if w != 0.0)
    known = [v for v in vols.values() if math.isfinite(v) and v >= 0]
    if settings.missing_vol is not None:
        fill_vol = settings.missing_vol
    else:
        fill_vol = max(known) if known else settings.missing_vol_default
    scale = math.sqrt(settings.horizon_bars)
    # b_i = w_i * sigma_i * sqrt(h), so that w' S w = sum_ij rho_ij b_i b_j
    b: list[float] = []
    fv: list[float] = []  # w_i VaR_i sqrt(h)
    fe: list[float] = []  # w_i ES_i sqrt(h)
    missing_vols = missing_forecasts = 0
    es_factor = normal_es_factor(settings.z)
    for s in held:
        v = vols.get(s)
        if v is None or not (math.isfinite(v) and v >= 0):
            v = fill_vol
            missing_vols += 1
        b.append(weights[s] * v * scale)
        if forecasts is not None:
            var_i, es_i = forecasts.get(s, (math.nan, math.nan))
            if not (math.isfinite(var_i) and math.isfinite(es_i)):
                var_i, es_i = settings.z * v, v * es_factor
                missing_forecasts += 1
            fv.append(weights[s] * var_i * scale)
            fe.append(weights[s] * es_i * scale)
    terms = [x * x for x in b]
    var_terms = [x * x for x in fv]
    es_terms = [x * x for x in fe]
    missing_pairs = 0
    for i in range(len(held)):
        for j in range(i + 1, len(held)):
            rho = corr(held[i], held[j])
            if rho is None or not math.isfinite(rho):
                rho = settings.missing_corr
                missing_pairs += 1
            rho = min(1.0, max(-1.0, rho))
            terms.append(2.0 * rho * b[i] * b[j])
            if fv:
                var_terms.append(2.0 * rho * fv[i] * fv[j])
                es_terms.append(2.0 * rho * fe[i] * fe[j])
    sigma_p = math.sqrt(max(0.0, math.fsum(terms)))
    if forecasts is None:
        fvar_share = fes_share = math.nan
    else:
        fvar_share = math.sqrt(max(0.0, math.fsum(var_terms)))
        fes_share = math.sqrt(max(0.0, math.fsum(es_terms)))
    h_w = weighted_entropy({s: weights[s] for s in held}, entropies)
    factor = 1.0 - settings.entropy_coef * h_w
    qvar_share = sigma_p * settings.z * factor
    es_share = sigma_p * normal_es_factor(settings.z) * factor
    return PortfolioRisk(
        sigma_p=sigma_p,
        qvar=equity * qvar_share,
        qvar_share=qvar_share,
        es=equity * es_share,
        es_share=es_share,
        weighted_entropy=h_w,
        missing_pairs=missing_pairs,
        missing_vols=missing_vols,
        fvar_share=fvar_share,
        fes_share=fes_share,
        missing_forecasts=missing_forecasts,
    )
