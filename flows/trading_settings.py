"""The trading loop's settings, picked from the config's sections.

Each operator family's section is already its settings object (the derived
fields filled by :func:`flows.config.load_settings`); this adds the loop's
own ``[trading]`` keys and the strategies of ``[strategies]``.
"""

from __future__ import annotations

from flows.config import Settings
from flows.strategy_loader import load_strategies
from operators.trading_loop import TradingSettings


def trading_settings(settings: Settings) -> TradingSettings:
    """The trading loop's settings from the sections of ``settings``."""
    t = settings.trading
    return TradingSettings(
        bar_interval_ms=settings.features.bar_interval * 1000,
        portfolio=settings.portfolio,
        risk=settings.risk,
        broker=settings.execution,
        regime=settings.regime,
        strategies=load_strategies(settings.strategies),
        weights=settings.weights,
        sizing=settings.sizing,
        atr=settings.atr,
        allow_short=t.allow_short,
        min_trade_share=t.min_trade_share,
        rebalance_band=t.rebalance_band,
        ladder_levels=t.ladder_levels,
        var_model=settings.features.var_model,
        var_backtest=settings.var_backtest,
    )
