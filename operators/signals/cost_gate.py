"""Costs in the decision: a trade that adds exposure is sent only when its expected edge beats its cost.

The expected edge of a trade on the composite signal's side, in bps of its
notional, with ``s`` the composite's strength, ``sigma`` the symbol's per-bar
volatility (``Feature.volatility``, a log-return standard deviation), ``H``
the expected holding period in bars (``edge_horizon_s`` over the bar
interval, at least 1: the horizon is a time, so the gate means the same at
1-second and 1-minute bars) and ``k`` the edge scale (``edge_scale``)::

    edge_bps = k * s * sigma * sqrt(H) * 10_000

``sigma * sqrt(H)`` is the standard deviation of the symbol's return over the
holding period, and ``k * s`` the share of it the signal expects to capture:
``k`` is the forecast's information coefficient at full strength (the
expected return over H bars in units of its standard deviation), as in
Grinold's ``alpha = IC * volatility * score``. The defaults: ``k = 0.1``, a
tenth of a standard deviation at full strength (a modest IC); 1800 s, 30
bars of a minute, about the time a driftless price takes to leave the band
between the stop ``a`` and the target ``b`` (``a * b`` bars, in per-bar
sigmas: 2 and 3 ATR widened by 1.5 at the usual entropy, an ATR near 1.6
sigma, give about 35).

The cost is the venue's expected taker cost of the order (fee plus
slippage for its size: :func:`operators.execution.cost_model.taker_cost_bps`).
The gate passes when ``edge_bps > cost_ratio * cost_bps`` (``cost_ratio = 2``
also pays for the exit). Orders that only reduce a position are never gated.

>>> e = edge_bps(0.5, 0.002, 25, 0.1)          # 0.1 x 0.5 x 0.002 x 5 x 10_000
>>> round(e, 6)
5.0
>>> gate(e, 13.0, 1.0), gate(e, 4.0, 1.0), gate(e, 4.0, 0.0)
('blocked', 'pass', 'pass')
"""

from __future__ import annotations

import math

PASS = "pass"
"""``Signal.gate`` of a composite whose trade's edge beat its cost: on to the pre-trade checks."""
BLOCKED = "blocked"
"""``Signal.gate`` of a composite whose trade was not sent: its edge did not beat its cost."""
NOT_EVALUATED = ""
"""``Signal.gate`` when no gated trade was considered (no trade, a reduction, the gate off)."""


def edge_bps(strength: float, sigma: float, horizon_bars: float, edge_scale: float) -> float:
    """Expected edge of a trade on the signal's side, bps of its notional (see the module docstring).

    Parameters
    ----------
    strength
        The composite signal's strength, in [0, 1].
    sigma
        The symbol's per-bar volatility; NaN or negative (unknown) gives edge 0.
    horizon_bars
        The expected holding period H, in bars (> 0).
    edge_scale
        k: expected return over H bars per standard deviation at full strength (>= 0).
    """
    if not sigma > 0 or not math.isfinite(sigma):
        return 0.0
    return edge_scale * strength * sigma * math.sqrt(horizon_bars) * 10_000.0


def gate(edge: float, cost: float, cost_ratio: float) -> str:
    """:data:`PASS` when ``edge > cost_ratio * cost``, else :data:`BLOCKED` (a NaN cost blocks).

    >>> gate(10.0, 10.0, 1.0), gate(0.0, 0.0, 1.0), gate(1.0, float("nan"), 1.0)
    ('blocked', 'blocked', 'blocked')
    """
    return PASS if edge > cost_ratio * cost else BLOCKED
