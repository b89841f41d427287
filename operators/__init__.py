"""Pure-Python stateful computations, laid out as the loop runs.

``features/`` (market features from ticks), ``signals/`` (regimes, strategies,
weights, sizing), ``risk/`` (engine, portfolio, QVaR), ``execution/`` (venue
protocol, cost model, paper broker); ``trading_loop`` coordinates them
(its settings in ``loop_settings``, its decisions in ``loop_decisions``).

No Bytewax here: each operator is a small class with frozen settings, an
``update`` method and a value that stays None until it is warm. flows/ wires
them into dataflows.
"""
