"""The trading loop's decisions: signals to composites, sizes, cost gate and pre-trade checked orders.

Step 4 of :mod:`operators.trading_loop` (and the L4/L3 decisions of step 2): every strategy updates
on the bar; at the tactical cadence the weighted composite per symbol is sized, scaled in along
a Fibonacci ladder, weighed against its cost and pre-trade checked, and what is approved is
sent. A strategy that raises, or answers with no valid signal, is muted; an online model whose
calibration drifts halves its symbol's size.

:class:`LoopDecisions` is a mixin of :class:`~operators.trading_loop.TradingLoop`: its methods
work on the loop's own state (the same instance), which the loop creates, snapshots and
restores; nothing here keeps state of its own.
"""

from __future__ import annotations

import math
import os
import traceback
from dataclasses import replace
from typing import TYPE_CHECKING

from operators.execution.cost_model import BP, taker_cost_bps
from operators.risk.portfolio import Portfolio
from operators.risk.settings import MarketView, OrderIntent, RiskActions
from operators.signals.cost_gate import BLOCKED, edge_bps, gate
from operators.signals.levels import META, STRATEGY, TACTICAL
from operators.signals.sizing import fib_ladder
from operators.signals.strategy import Strategy, check_signal
from operators.signals.strategy_weights import COMPOSITE
from schemas.records import BUY, FLAT, SELL, Bar, Feature, Fill, RiskEvent, Signal

if TYPE_CHECKING:  # the loop's state types: the loop imports this module
    from operators.trading_loop import _SymbolState

STRATEGY_ERROR = "strategy_error"
"""Risk event kind of a strategy that raised or answered with no valid signal (it is then muted)."""
MODEL_CALIBRATION = "model_calibration"
"""Risk event kind of the calibration throttle: an online model's calibration drifts (or recovered)."""
DRIFT_SIZE_MULTIPLIER = 0.5
"""A symbol's size while an online model of it reports calibration drift (the seed's throttle)."""


def _one_line(exc: Exception, limit: int = 300) -> str:
    """``Type: message (file:line)`` of an exception on one line: at most ``limit``
    characters of message, and where it was raised (the innermost frame's file name and line).

    >>> _one_line(ZeroDivisionError("division by zero\\nsecond line"))
    'ZeroDivisionError: division by zero second line'
    """
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        out += f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
    return out


class LoopDecisions:
    """The decision steps of :class:`~operators.trading_loop.TradingLoop`, mixed into it.

    They use the loop's ``settings``, ``portfolio``, ``risk``, ``sizer``, ``weights``,
    ``levels``, ``stats``, ``symbols``, ``muted`` and ``throttled``, and its ``correlation``,
    ``_count``, ``_normalised_vol``, ``_pending_book`` and ``_send``.
    """

    def _upper_levels(self, ts: int, out: dict) -> None:
        """L4 (meta) and L3 (strategy) decisions when their cadence is due (levels on only)."""
        lv = self.levels
        if not lv.settings.enabled:
            return
        if lv.due(META, ts):
            out["strategy_updates"].extend(lv.meta(ts))
        if lv.due(STRATEGY, ts):
            regimes = {s: lv.regime(s, st.regime_now) for s, st in self.symbols.items()}
            out["targets"].extend(lv.strategy(ts, regimes))

    def _signals(
        self, ts: int, bars: dict[str, Bar], actions: RiskActions, view: MarketView, out: dict
    ) -> None:
        pf = self.portfolio
        tactical = self.levels.due(TACTICAL, ts)  # L2: signals go to orders at its cadence only
        pending: list[Portfolio] = []  # the what-if book, made at the step's first order check
        equity = pf.equity()
        held = [s for s, q in pf.positions.items() if q != 0]
        qvar_share = None if self.risk.last_risk is None else self.risk.last_risk.qvar_share
        for symbol in sorted(bars):
            sym = self.symbols[symbol]
            bar = bars[symbol]
            feat = sym.feature if sym.feature is not None and sym.feature.ts == bar.ts else None
            regime = sym.regime_now
            signals = []
            for strat in sym.strategies:
                if strat.name in self.muted:
                    continue
                sig = self._ask(strat, ts, bar, feat, regime, out, sym.coarse)
                if sig is not None:
                    signals.append(sig)
                    sym.last_dirs[strat.name] = sig.direction
            throttle = self._calibration(ts, symbol, sym, out)
            if not tactical:  # between tactical decisions the strategies follow the bars, nothing trades
                out["signals"].extend(signals)
                self.stats.signals += len(signals)
                continue
            if feat is None or regime is None:
                continue
            weights = self.levels.weights(self.weights.weights(symbol, regime, ts))
            composite = self.weights.compose(ts, symbol, regime, signals, weights)
            sym.last_dirs[COMPOSITE] = composite.direction
            self.stats.signals += len(signals) + 1
            if not actions.orders_allowed or equity <= 0 or bar.close <= 0:
                out["signals"].extend([*signals, composite])
                continue
            direction = composite.direction
            if direction < 0 and not self.settings.allow_short:
                direction = 0
            strength = composite.strength if direction else 0.0
            entries_ok = (
                actions.entries_allowed
                and symbol not in actions.blocked_symbols
                and regime not in actions.blocked_regimes
                and strength >= actions.min_strength
            )
            current = pf.position(symbol)
            target = 0.0
            if direction:
                moments = self.weights.moments(COMPOSITE, symbol)
                others = [self.correlation(symbol, h) for h in held if h != symbol]
                known = [abs(c) for c in others if c is not None]
                size = self.sizer.size(
                    strength,
                    feat.volatility,
                    mu=None if moments is None else moments[0],
                    var=None if moments is None else moments[1],
                    qvar_share=None if qvar_share is None else self.sizer.qvar_share(qvar_share),
                    entropy=feat.entropy,
                    max_corr=max(known) if known else None,
                    defensive=False,  # the engine's size_multiplier carries defensive mode's half size
                )
                fraction = min(size.fraction * actions.size_multiplier, self.levels.cap(symbol))  # L3's cap
                fraction *= throttle  # an online model's calibration drifts: half size
                target = direction * fraction * equity / bar.close
            order = self._rebalance(sym, current, target, entries_ok, bar.close)
            if order is not None:
                delta, reduces = order
                if not reduces and self.settings.cost_gate:
                    composite = self._cost_gate(composite, feat, sym, abs(delta), bar.close)
                if composite.gate != BLOCKED:
                    self._place(ts, symbol, sym, delta, reduces, bar.close, view, pending, out)
            out["signals"].extend([*signals, composite])

    def _calibration(self, ts: int, symbol: str, sym: _SymbolState, out: dict) -> float:
        """The symbol's size multiplier of the calibration throttle: :data:`DRIFT_SIZE_MULTIPLIER` while
        one of its strategies reports ``calibration_drift`` (an online model whose realised hit rate
        left its predicted probability, see ``operators.signals.online_model``), else 1; a
        ``model_calibration`` risk event when the throttle turns on (level 1, ``half_size``) and off
        (level 0, ``clear``). The strategies' ``take_rows()`` go to ``model_metrics``."""
        drifting = None
        for strat in sym.strategies:
            if strat.name in self.muted:
                continue
            try:
                if hasattr(strat, "take_rows"):
                    out["model_metrics"].extend(strat.take_rows())
                if getattr(strat, "calibration_drift", False) is True and drifting is None:
                    drifting = strat
            except Exception as exc:  # a user's strategy: contain whatever it raises
                self._mute(ts, symbol, strat.name, f"raised {_one_line(exc)}", out)
        was = symbol in self.throttled
        if (drifting is not None) != was:
            strat = (
                drifting
                if drifting is not None
                else next((s for s in sym.strategies if hasattr(s, "calibration_drift")), None)
            )
            gap = float(getattr(strat, "calibration_gap", math.nan))
            limit = float(getattr(getattr(strat, "settings", None), "drift_threshold", math.nan))
            name = getattr(strat, "name", "?")
            if drifting is not None:
                self.throttled.add(symbol)
                message = (
                    f"{name} on {symbol}: realised hit rate and predicted probability differ by "
                    f"{gap:.1%} over its calibration window (limit {limit:.0%}): half size until it recovers"
                )
                event = RiskEvent(ts, MODEL_CALIBRATION, 1, symbol, gap, limit, "half_size", message)
            else:
                self.throttled.discard(symbol)
                message = f"{name} on {symbol}: calibration recovered ({gap:.1%}): full size again"
                event = RiskEvent(ts, MODEL_CALIBRATION, 0, symbol, gap, limit, "clear", message)
            out["risk_events"].append(event)
        return DRIFT_SIZE_MULTIPLIER if symbol in self.throttled else 1.0

    def _model_rows(self) -> list:
        """The strategies' last ``model_metrics`` rows at the end of the input (``take_rows(final=True)``)."""
        rows: list = []
        for symbol in sorted(self.symbols):
            for strat in self.symbols[symbol].strategies:
                if strat.name not in self.muted and hasattr(strat, "take_rows"):
                    try:
                        rows.extend(strat.take_rows(final=True))
                    except Exception:  # a user's strategy at the end of the input: its rows are lost
                        continue
        return rows

    def _ask(
        self, strat: Strategy, ts: int, bar: Bar, feat: Feature | None, regime, out, coarse=None
    ) -> Signal | None:
        """The strategy's signal; a strategy that raises or answers with no valid signal is muted.

        A strategy with an ``informative`` method gets the symbol's coarser resolutions first
        (``coarse``: interval s -> its newest closed bar and feature row)."""
        try:
            if coarse is not None and hasattr(strat, "informative"):
                strat.informative(coarse)
            answer = strat.update(ts, bar, feat, regime)
        except Exception as exc:  # a user's strategy: contain whatever it raises
            self._mute(ts, bar.symbol, strat.name, f"raised {_one_line(exc)}", out)
            return None
        try:
            return check_signal(answer, ts, bar.symbol, strat.name, regime)
        except ValueError as exc:
            self._mute(ts, bar.symbol, strat.name, f"returned no valid signal: {exc}", out)
            return None

    def _mute(self, ts: int, symbol: str, name: str, problem: str, out: dict) -> None:
        """Silence a strategy on every symbol for the rest of the run: from now on it is flat."""
        self.muted.add(name)
        for sym in self.symbols.values():
            if name in sym.last_dirs:
                sym.last_dirs[name] = FLAT
        message = f"strategy {name} {problem} on {symbol}; muted for the rest of the run"
        event = RiskEvent(ts, STRATEGY_ERROR, 1, symbol, 0.0, 0.0, "mute", message)
        self._count([event])
        out["risk_events"].append(event)

    def _rebalance(
        self, sym: _SymbolState, current: float, target: float, entries_ok: bool, price: float
    ) -> tuple[float, bool] | None:
        """The order that moves ``current`` toward ``target``: (signed quantity, whether it only
        reduces the position), or None when nothing is to be sent (too small, within the band, an
        entry that is not allowed). An entry goes one ladder tranche at a time."""
        s = self.settings
        equity = self.portfolio.equity()
        delta = target - current
        if abs(delta) * price < s.min_trade_share * equity:
            return None
        reduces = abs(target) < abs(current) and target * current >= 0
        laddering = 0 < sym.tranches < s.ladder_levels and not reduces
        if target and target * current > 0 and abs(delta) <= s.rebalance_band * abs(target) and not laddering:
            return None
        if not reduces:
            if not entries_ok:
                return None
            if current == 0:
                sym.tranches = 0
            ladder = fib_ladder(abs(target), s.ladder_levels)
            step = ladder[min(sym.tranches, len(ladder) - 1)]
            delta = math.copysign(min(abs(delta), step), delta)
            if abs(delta) * price < s.min_trade_share * equity:
                return None
        return delta, reduces

    def _cost_gate(
        self, composite: Signal, feat: Feature, sym: _SymbolState, qty: float, price: float
    ) -> Signal:
        """The composite with the cost gate's verdict on an order of ``qty`` that adds exposure.

        Edge: :func:`~operators.signals.cost_gate.edge_bps` of the composite's strength and the
        symbol's per-bar volatility; cost: the venue's expected taker cost of ``qty`` at ``price``
        (:func:`~operators.execution.cost_model.taker_cost_bps`, with the normalised volatility the
        venue will see and the mean volume of the last bars). A blocked order counts in the summary
        with the cost it would have paid.
        """
        s = self.settings
        horizon = max(1.0, s.edge_horizon_s * 1000 / s.bar_interval_ms)
        edge = edge_bps(composite.strength, feat.volatility, horizon, s.edge_scale)
        volume = sum(sym.volumes) / len(sym.volumes) if sym.volumes else 0.0
        cost = taker_cost_bps(s.broker, qty, price, self._normalised_vol(feat.symbol), volume)
        verdict = gate(edge, cost, s.cost_ratio)
        if verdict == BLOCKED:
            self.stats.cost_blocked(cost / BP * qty * price)
        return replace(composite, edge_bps=edge, cost_bps=cost, gate=verdict)

    def _place(self, ts, symbol, sym, delta, reduces, price, view, pending, out) -> None:
        """Pre-trade check an order of the signed quantity ``delta`` and send what is approved."""
        side = BUY if delta > 0 else SELL
        intent = OrderIntent(
            symbol, side, abs(delta), price, "exit" if reduces else "entry", COMPOSITE, reduces
        )
        if not pending:
            pending.append(self._pending_book(ts))
        book = pending[0]
        approved, events = self.risk.check_order(intent, book, view)
        self._count(events)
        out["risk_events"].extend(events)
        if approved <= 0:
            return
        book.apply_fill(Fill(ts, "pending", symbol, side, approved, price, 0.0, 0.0))
        if not reduces:
            sym.tranches += 1
        self._send(ts, symbol, math.copysign(approved, delta), intent.reason, COMPOSITE, out)
