"""The trading loop's settings: :class:`TradingSettings`, the parts being the operators' own settings.

Kept apart from the loop (:mod:`operators.trading_loop`, which re-exports it) so the settings can be
read, built and checked without the loop's state; the flows build it from the config
(:func:`flows.trading_settings.trading_settings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.execution.cost_model import BrokerSettings
from operators.risk.portfolio import PortfolioSettings
from operators.risk.settings import RiskSettings
from operators.risk.var_backtest import VarBacktestSettings
from operators.signals.atr import ATRSettings
from operators.signals.levels import LevelsSettings
from operators.signals.regime import RegimeSettings
from operators.signals.sizing import SizingSettings
from operators.signals.strategies import default_specs
from operators.signals.strategy import StrategySpec
from operators.signals.strategy_weights import StrategyWeightsSettings
from schemas.settings import SettingsError, check_settings, setting


@dataclass(frozen=True, slots=True)
class TradingSettings:
    """Parameters of :class:`~operators.trading_loop.TradingLoop`; the parts are the operators' own settings.

    Parameters
    ----------
    bar_interval_ms
        The bar grid D.
    strategies
        The strategies of the run (unique names; default the four built-ins);
        each symbol gets fresh instances from them.
    allow_short
        Let composite short signals open shorts (default: long only; a short
        signal then means flat).
    min_trade_share
        Rebalances smaller than this share of equity are not sent.
    rebalance_band
        A position on the signal's side is left alone while it is within this
        fraction of its target (closing, flipping and ladder steps always
        trade); without it, every small change of strength would trade.
    ladder_levels
        Tranches of the Fibonacci ladder an entry is scaled in with.
    cost_gate
        Send an order that adds exposure (an entry, a ladder step, an
        increase, a flip) only when its expected edge beats its expected
        cost (:mod:`operators.signals.cost_gate`); reductions are never gated.
    cost_ratio
        The gate passes when ``edge_bps > cost_ratio * cost_bps`` (2 also pays for the exit).
    edge_scale
        k of the expected edge ``k * strength * sigma * sqrt(H) * 10_000`` bps, H the holding
        period in bars: the expected return over it per standard deviation at full strength.
    edge_horizon_s
        The expected holding period of a position, in seconds (H = this over the bar interval,
        at least 1 bar).
    var_model
        The name of the model behind the features' ``fvar95`` (``features.var_model``),
        for the portfolio's ``var_backtests`` rows.
    var_backtest
        The VaR backtests' window, zone limits and cadence.
    run_tag
        Short text every order id starts with (letters, digits; at most 12):
        the run the order belongs to. The flows derive it from the settings
        and the input (:func:`flows.trading_settings.run_tag`); "" leaves
        the ids untagged.
    """

    bar_interval_ms: int = setting(gt=0, fixed=True)
    portfolio: PortfolioSettings = setting(PortfolioSettings())
    risk: RiskSettings = setting(RiskSettings())
    broker: BrokerSettings | None = setting(None)
    regime: RegimeSettings = setting(RegimeSettings())
    strategies: tuple[StrategySpec, ...] = setting(default_factory=default_specs)
    weights: StrategyWeightsSettings | None = setting(None)
    sizing: SizingSettings | None = setting(None)
    atr: ATRSettings = setting(ATRSettings())
    allow_short: bool = setting(False)
    min_trade_share: float = setting(0.002, ge=0, lt=1)
    rebalance_band: float = setting(0.5, ge=0)
    ladder_levels: int = setting(3, ge=1)
    cost_gate: bool = setting(True)
    cost_ratio: float = setting(1.0, ge=0)
    edge_scale: float = setting(0.1, ge=0)
    edge_horizon_s: int = setting(1800, ge=1)
    var_model: str = setting("fhs")
    var_backtest: VarBacktestSettings = setting(VarBacktestSettings())
    levels: LevelsSettings = setting(LevelsSettings())
    # derived from the others (flows.trading_settings.run_tag): a resume reports their changes, not its
    run_tag: str = field(default="", metadata={**setting("").metadata, "derived": True})

    def __post_init__(self) -> None:
        check_settings(self)
        tag = self.run_tag
        if len(tag) > 12 or not tag.isascii() or (tag and not tag.isalnum()):
            raise SettingsError.of(self, "run_tag", "at most 12 ASCII letters or digits")
        names = [spec.name for spec in self.strategies]
        if len(set(names)) != len(names):
            msg = f"strategy names must be unique, got {names}"
            raise ValueError(msg)
        days, kept = self.risk.sharpe_days, self.portfolio.history_days
        if days > kept:  # the engine asks the portfolio for a Sharpe ratio over days it does not keep
            raise SettingsError.of(self.risk, "sharpe_days", f"<= portfolio.history_days ({kept})")
        d = self.bar_interval_ms
        if self.broker is None:
            object.__setattr__(self, "broker", BrokerSettings(bar_interval_ms=d))
        if self.weights is None:
            object.__setattr__(self, "weights", StrategyWeightsSettings(bar_interval_ms=d))
        if self.sizing is None:
            object.__setattr__(self, "sizing", SizingSettings(bar_interval_ms=d))
