"""The trading loop's settings, picked from the config's sections.

Each operator family's section is already its settings object (the derived
fields filled by :func:`flows.config.load_settings`); this adds the loop's
own ``[trading]`` keys, the strategies of ``[strategies]`` and the run tag
its order ids carry (:func:`run_tag`).
"""

from __future__ import annotations

import dataclasses
import hashlib

from flows.config import Settings
from flows.strategy_loader import load_strategies
from operators.trading_loop import TradingSettings


def trading_settings(settings: Settings, run_input: str = "") -> TradingSettings:
    """The trading loop's settings from the sections of ``settings``; ``run_input`` says what
    the run reads (see :func:`run_tag`)."""
    t = settings.trading
    loop = TradingSettings(
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
        cost_gate=t.cost_gate,
        cost_ratio=t.cost_ratio,
        edge_scale=t.edge_scale,
        edge_horizon_s=t.edge_horizon_s,
        var_model=settings.features.var_model,
        var_backtest=settings.var_backtest,
        levels=settings.levels,
    )
    return dataclasses.replace(loop, run_tag=run_tag(settings, loop, run_input))


def canonical(value) -> str:
    """A settings value as text that is the same in every process: dataclasses field by field,
    classes and functions by name (never an address).

    >>> from operators.signals.atr import ATRSettings
    >>> canonical(ATRSettings()) == canonical(ATRSettings()), canonical((1.5, "a", len))
    (True, "(1.5,'a',builtins.len,)")
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        inner = ",".join(f"{f.name}={canonical(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{type(value).__qualname__}({inner})"
    if isinstance(value, tuple | list):
        return "(" + "".join(f"{canonical(v)}," for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ",".join(f"{canonical(k)}:{canonical(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, type) or callable(value):
        name = getattr(value, "__qualname__", type(value).__qualname__)
        return f"{getattr(value, '__module__', '')}.{name}"
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return repr(value)
    fields = canonical(vars(value)) if hasattr(value, "__dict__") else ""
    return f"{type(value).__module__}.{type(value).__qualname__}{fields}"


def run_tag(settings: Settings, loop: TradingSettings, run_input: str = "") -> str:
    """8 hex digits naming a trading run: a hash of what decides its orders (the loop's
    settings, the ``[features]``, ``[input]``, ``[trading]`` and ``[simulator]`` sections) and
    of ``run_input`` (the span read: ``--from-ts``/``--to-ts``).

    Two runs with the same settings and span get the same tag (a replay repeats its order ids,
    and a topic replay gives the ids of a file replay of the same ticks); runs with other
    settings get another (the engine on and off never share an id). The store, the workers,
    Kafka's addresses and topic prefix, the venue (in process or the execution service) and
    the input's name are not part of it.
    """
    text = "|".join(
        (
            canonical(dataclasses.replace(loop, run_tag="")),
            canonical(settings.features),
            canonical(settings.input),
            canonical(settings.trading),
            canonical(settings.simulator),
            run_input,
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def span_input(from_ts: int | None, to_ts: int | None) -> str:
    """The ``run_input`` of a run that reads ``from_ts <= ts < to_ts`` (None: open).

    >>> span_input(None, 1_000)
    'span=None..1000'
    """
    return f"span={from_ts}..{to_ts}"
