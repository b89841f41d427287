"""The risk engine's vocabulary: settings, what the loop tells it and what it answers.

:class:`RiskSettings` holds every threshold of
:class:`~operators.risk.engine.RiskEngine`; :class:`MarketView` is the
market at a step, :class:`RiskActions` what the loop must do then, and
:class:`OrderIntent` an order before its pre-trade check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from operators.risk.portfolio_risk import PortfolioRiskSettings
from schemas.records import REGIMES
from schemas.settings import SettingsError, check_settings, setting

NORMAL, DEFENSIVE, OBSERVATION, PAUSE, EMERGENCY = "normal", "defensive", "observation", "pause", "emergency"
MODE_LEVEL = {NORMAL: 0, DEFENSIVE: 1, OBSERVATION: 1, PAUSE: 2, EMERGENCY: 3}
NO_ENTRY_MODES = (OBSERVATION, PAUSE, EMERGENCY)
COMMANDS = ("resume", "pause", "flatten")
BREAKER_ACTIONS = ("clear", "warn", "caution", "flatten")
BREAKER_METRICS = ("var", "es", "qvar")
"""What the breakers act on (``RiskSettings.breaker_metric``)."""
MINUTE_MS = 60_000


@dataclass(frozen=True, slots=True)
class RiskSettings:
    """Thresholds of :class:`RiskEngine` (shares are fractions: 0.012 = 1.2%).

    Parameters
    ----------
    enabled
        False: approve everything, never trip (comparison runs).
    qvar
        Settings of the portfolio QVaR (and of the horizon of every breaker metric).
    breaker_metric
        What the breakers compare with their levels, as a share of equity over
        the horizon: ``var`` (the calibrated portfolio VaR 95%, from the
        features' ``fvar95`` and the correlations), ``es`` (its ES at the
        same 95% level, from ``fes95``) or ``qvar`` (the seed's entropy-adjusted
        normal QVaR, which understates risk; see the README).
    breaker_levels, hysteresis, breaker_hold_ms
        Metric share of equity entering levels 1, 2, 3 (ascending); a level is
        left below threshold * (1 - hysteresis), hysteresis in [0, 1), and
        only once the share has not exceeded the level's threshold for
        ``breaker_hold_ms`` of event time (a flatten empties the book, and
        with it the QVaR: the hold keeps the loop from buying straight back in).
    max_leverage, safe_leverage
        Gross leverage cap; deleverage target (None: 0.5 * max_leverage).
    dlri_levels, dlri_cut_fraction, vol_ref_halflife_bars
        DLRI levels (cut, deleverage), the cut's share, the ref EWMA's half-life.
    ers_threshold, ers_market_weight, ers_position_weight, ers_size_multiplier, ers_stop_multiplier
        Entropy risk score rule.
    defensive_drawdown, defensive_weekly_loss, defensive_sharpe, sharpe_days, defensive_size_multiplier, \
defensive_min_strength
        Defensive triggers (losses as positive fractions) and what defensive mode does.
    kill_drawdown, kill_daily_loss, kill_weekly_loss, kill_monthly_loss
        Kill-switch triggers.
    stale_after_ms, caution_blocked_regimes
        Event time without data after which a symbol is stale; regimes without entries at caution.
    max_position_share, min_cash_share, corr_threshold, corr_reduce, max_order_notional, \
max_orders_per_minute, cost_buffer_bps
        Pre-trade limits (notional in quote units; cost buffer of the cash check in bps).
    """

    enabled: bool = setting(True)
    qvar: PortfolioRiskSettings = setting(PortfolioRiskSettings())
    breaker_metric: str = setting("var")
    breaker_levels: tuple[float, float, float] = setting((0.012, 0.015, 0.020), gt=0)
    hysteresis: float = setting(0.2, ge=0, lt=1)
    breaker_hold_ms: int = setting(1_800_000, ge=0)
    max_leverage: float = setting(3.0, gt=0)
    safe_leverage: float | None = setting(None, gt=0)
    dlri_levels: tuple[float, float] = setting((0.8, 0.9), gt=0)
    dlri_cut_fraction: float = setting(0.25, ge=0, le=1)
    vol_ref_halflife_bars: float = setting(1440.0, gt=0)
    ers_threshold: float = setting(0.6, ge=0, le=1)
    ers_market_weight: float = setting(0.4, ge=0, le=1)
    ers_position_weight: float = setting(0.6, ge=0, le=1)
    ers_size_multiplier: float = setting(0.7, ge=0, le=1)
    ers_stop_multiplier: float = setting(0.75, ge=0, le=1)
    defensive_drawdown: float = setting(0.10, ge=0, le=1)
    defensive_weekly_loss: float = setting(0.03, ge=0, le=1)
    defensive_sharpe: float = setting(0.5)
    sharpe_days: int = setting(30, ge=2)
    defensive_size_multiplier: float = setting(0.5, ge=0, le=1)
    defensive_min_strength: float = setting(0.6, ge=0, le=1)
    kill_drawdown: float = setting(0.15, ge=0, le=1)
    kill_daily_loss: float = setting(0.03, ge=0, le=1)
    kill_weekly_loss: float = setting(0.05, ge=0, le=1)
    kill_monthly_loss: float = setting(0.08, ge=0, le=1)
    stale_after_ms: int = setting(300_000, gt=0)
    caution_blocked_regimes: frozenset[str] = setting(frozenset({"high_vol", "crisis"}))
    max_position_share: float = setting(0.20, gt=0, le=1)
    min_cash_share: float = setting(0.10, ge=0, le=1)
    corr_threshold: float = setting(0.7, ge=0, le=1)
    corr_reduce: float = setting(0.5, ge=0, le=1)
    max_order_notional: float = setting(250_000.0, gt=0)
    max_orders_per_minute: int = setting(30, gt=0)
    cost_buffer_bps: float = setting(10.0, ge=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.breaker_metric not in BREAKER_METRICS:
            raise SettingsError.of(self, "breaker_metric", f"one of {BREAKER_METRICS}")
        if self.safe_leverage is None:
            object.__setattr__(self, "safe_leverage", 0.5 * self.max_leverage)
        if not self.caution_blocked_regimes <= set(REGIMES):
            raise SettingsError.of(self, "caution_blocked_regimes", f"among {REGIMES}")
        if self.safe_leverage > self.max_leverage:
            raise SettingsError.of(self, "safe_leverage", f"<= max_leverage ({self.max_leverage})")
        for name in ("breaker_levels", "dlri_levels"):
            levels = getattr(self, name)
            if any(a >= b for a, b in zip(levels, levels[1:], strict=False)):
                raise SettingsError.of(self, name, "ascending")


@dataclass(frozen=True, slots=True)
class MarketView:
    """What the loop tells the engine at a step.

    Parameters
    ----------
    ts
        Event time, epoch ms.
    vols, entropies, regimes
        Latest per-bar volatility, permutation entropy and regime per symbol.
    last_data_ts
        Last bar/tick ts per symbol (every symbol traded).
    corr
        ``corr(a, b)`` with a < b: the pair's rolling correlation, or None.
    bar_close
        True at the bar close, False at intra-bar path points.
    forecasts
        Latest next-bar (VaR, ES) forecast per symbol, positive return losses
        (the features' ``fvar95``, ``fes95``; NaN: not warm).
    """

    ts: int
    vols: dict[str, float]
    entropies: dict[str, float]
    regimes: dict[str, str]
    last_data_ts: dict[str, int]
    corr: Callable[[str, str], float | None]
    bar_close: bool
    forecasts: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RiskActions:
    """What the loop must do now.

    Parameters
    ----------
    flatten
        Close every position (a target, repeated while in emergency with positions).
    cut_fraction
        Reduce every position by this share now (one-shot), else 0.0.
    deleverage_to
        Reduce positions pro rata to this gross leverage (a target), or None.
    size_multiplier, stop_multiplier, min_strength
        For new orders' sizes and stop distances; ignore weaker signals.
    entries_allowed, blocked_symbols, blocked_regimes
        Whether anything may be opened; the symbols and regimes that may not.
    orders_allowed
        False in observation: no strategy orders (reducing orders still pass).
    """

    flatten: bool = False
    cut_fraction: float = 0.0
    deleverage_to: float | None = None
    size_multiplier: float = 1.0
    stop_multiplier: float = 1.0
    min_strength: float = 0.0
    entries_allowed: bool = True
    blocked_symbols: frozenset[str] = frozenset()
    blocked_regimes: frozenset[str] = frozenset()
    orders_allowed: bool = True


PERMISSIVE = RiskActions()


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """An order the loop would like to send (base quantity > 0 at a reference price)."""

    symbol: str
    side: str
    qty: float
    price: float
    reason: str
    strategy: str
    reduces_only: bool = False


def hysteresis_level(level: int, value: float, thresholds: tuple[float, ...], hysteresis: float) -> int:
    """The new level: up when ``value`` exceeds a higher level's threshold, down
    only below threshold * (1 - hysteresis) of each level left.

    >>> [hysteresis_level(1, v, (1.0, 2.0), 0.2) for v in (0.81, 0.79, 2.01)]
    [1, 0, 2]
    """
    up = sum(1 for t in thresholds if value > t)
    if up > level:
        return up
    while level > up and value < thresholds[level - 1] * (1.0 - hysteresis):
        level -= 1
    return level
