"""The trading loop's settings, built from the config's sections."""

from __future__ import annotations

from flows.config import ConfigError, FeaturesConfig, Settings, TradingConfig
from operators.execution.cost_model import BrokerSettings
from operators.risk.portfolio import PortfolioSettings
from operators.risk.portfolio_risk import PortfolioRiskSettings
from operators.risk.settings import RiskSettings
from operators.signals.sizing import SizingSettings
from operators.trading_loop import TradingSettings


def trading_settings(settings: Settings) -> TradingSettings:
    """The trading loop's settings from ``[trading]`` (the operators' defaults elsewhere)."""
    try:
        return _trading_settings(settings.trading, settings.features)
    except ValueError as exc:
        msg = f"[trading]: {exc}"
        raise ConfigError(msg) from None


def _trading_settings(t: TradingConfig, features: FeaturesConfig) -> TradingSettings:
    d = features.bar_interval * 1000
    risk = RiskSettings(
        enabled=t.risk_engine,
        qvar=PortfolioRiskSettings(
            entropy_coef=features.qvar_entropy_coef,
            horizon_bars=max(1.0, t.qvar_horizon_s / features.bar_interval),
        ),
        max_leverage=t.max_leverage,
        max_position_share=t.max_position_share,
        max_order_notional=t.max_order_notional,
        ers_threshold=t.ers_threshold,
    )
    broker = BrokerSettings(
        bar_interval_ms=d,
        taker_fee_bps=t.taker_fee_bps,
        maker_fee_bps=t.maker_fee_bps,
        spread_bps=t.spread_bps,
        twap_threshold=t.twap_threshold,
    )
    sizing = SizingSettings(
        bar_interval_ms=d,
        target_daily_vol=t.target_daily_vol,
        max_fraction=t.max_position_share,
        entropy_limit=t.entropy_size_limit,
    )
    return TradingSettings(
        bar_interval_ms=d,
        portfolio=PortfolioSettings(initial_cash=t.initial_cash),
        risk=risk,
        broker=broker,
        sizing=sizing,
        allow_short=t.allow_short,
        min_trade_share=t.min_trade_share,
    )
