"""The trading loop: features to signals, sizes, risk checks and paper fills, in event time.

The loop runs on the bar grid. A grid step k is processed once every symbol's
bar k is final (the correlation grid decides that), so the result never
depends on how symbols or partitions interleave. For step k, with close time
``t = (k + 1) * D``:

1. **Venue.** Each symbol's bar k walks the paper broker's price path (open,
   the two extremes, close): orders decided at an earlier close fill at the
   open (the first trade after the decision), protective stops and targets
   fire along the path. Fills go to the portfolio, which is then marked at
   the closes and moved to ``t``.
2. **State.** ATR, regime, the strategies' paper records (each strategy's
   previous direction times the new return), drift flags.
3. **Risk.** The VaR backtests judge the forecasts (per symbol, from the
   features flow's ``var_backtests`` rows, and the portfolio's own: the last
   step's one-bar VaR against the P&L of the positions it was made for); a
   model in the red zone is a ``model_risk`` event and a defensive trigger.
   The risk engine assesses the portfolio (breakers on
   ``risk.breaker_metric``, DLRI, ERS, defensive mode, kill switch, stale
   data, modes) and its actions come first: flatten, cut or deleverage orders.
4. **Signals.** Every strategy updates on every bar; the weighted composite per
   symbol is sized (volatility target with fractional Kelly, then the risk
   adjustments), scaled in along a Fibonacci ladder, weighed against its
   cost (an order that adds exposure goes on only when its expected edge
   beats the venue's expected fee and slippage: ``cost_gate``; the composite
   signal records both and the verdict) and pre-trade checked.
   Approved orders go to the broker and fill from the next bar on; entries
   get ATR stops and targets once filled. A strategy that raises, or answers
   with no valid signal, is muted on every symbol for the rest of the run
   (one ``strategy_error`` risk event; from then on it counts as flat).
   While a strategy of a symbol reports ``calibration_drift`` (the River
   online model, ``operators.signals.online_model``) the symbol's size is
   halved (``model_calibration`` risk events when that starts and ends); the
   strategies' ``take_rows()`` are the ``model_metrics`` table.

After the step, a ``portfolio`` row records the book: equity, exposures,
leverage, drawdown, the next step's VaR and ES of the positions held (one
bar and the risk horizon), the QVaR, the breaker level and the mode.

Everything is deterministic: no clock, no randomness. An order id is
``f"{run_tag}-{ts}-{n}"``: the run's tag (``TradingSettings.run_tag``, derived
by the flows from what defines the run), the decision time and a counter
kept in the state; so two runs never share an id and a replay repeats its
ids. The paper broker's protective exits carry the tag too.

This module keeps the loop's state and steps 1 to 3 (and the risk orders and order
ids). The decisions of step 4 (and the L4/L3 level decisions of step 2) are the mixin
:class:`~operators.loop_decisions.LoopDecisions` in :mod:`operators.loop_decisions`,
which :class:`TradingLoop` inherits, so they work on the same instance; the settings
are :class:`~operators.loop_settings.TradingSettings` in :mod:`operators.loop_settings`.
Both, and the risk event kinds and the throttle's size multiplier, are re-exported here.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from operators.execution.paper_broker import PaperBroker
from operators.execution.venue import BarContext, Venue
from operators.loop_decisions import DRIFT_SIZE_MULTIPLIER, MODEL_CALIBRATION, STRATEGY_ERROR, LoopDecisions
from operators.loop_settings import TradingSettings
from operators.risk.engine import RiskEngine
from operators.risk.portfolio import Portfolio
from operators.risk.portfolio_risk import PortfolioRisk, portfolio_risk
from operators.risk.settings import MarketView, RiskActions
from operators.risk.var_backtest import ModelRiskMonitor, VarBacktestFeed
from operators.signals.atr import ATR
from operators.signals.levels import Levels
from operators.signals.regime import RegimeClassifier
from operators.signals.sizing import PositionSizer
from operators.signals.strategy import Strategy
from operators.signals.strategy_weights import StrategyWeights
from operators.trading_stats import TradingStats
from schemas.records import (
    BUY,
    MARKET,
    PORTFOLIO,
    SELL,
    Bar,
    Correlation,
    Feature,
    Fill,
    Order,
    PortfolioState,
    RiskEvent,
    VarBacktestRow,
)

__all__ = [
    "DRIFT_SIZE_MULTIPLIER", "MODEL_CALIBRATION", "RISK", "STRATEGY_ERROR", "TradingLoop", "TradingSettings",
]  # fmt: skip

RISK = "risk"
"""The ``strategy`` of the risk engine's own orders (flatten, cut, deleverage)."""


@dataclass(slots=True)
class _SymbolState:
    atr: ATR
    regime: RegimeClassifier
    strategies: list[Strategy]
    feature: Feature | None = None
    regime_now: str | None = None
    last_dirs: dict[str, int] = field(default_factory=dict)  # strategy -> direction at the last close
    tranches: int = 0  # ladder tranches taken since the position was flat
    volumes: deque[float] = field(default_factory=deque)  # the last bars' volumes (the cost gate's V)
    coarse: dict[int, tuple[Bar | None, Feature | None]] = field(default_factory=dict)
    """interval s -> the newest closed bar and feature row of that coarser resolution"""


class TradingLoop(LoopDecisions):
    """Signals, sizing and risk over finished grid steps, sending orders to ``venue``.

    ``venue`` is where orders go (default: a paper broker with
    ``settings.broker``). Feed each symbol's bars and features with :meth:`add`, correlation rows
    with :meth:`add_correlations`, then :meth:`advance` to the last final
    step; it returns ``(table, records)`` pairs for ``signals``,
    ``risk_events``, ``orders``, ``fills``, ``portfolio``, ``var_backtests`` and
    ``model_metrics`` (the online models' figures, see :meth:`_calibration`). The decision
    steps are inherited from :class:`~operators.loop_decisions.LoopDecisions`.
    """

    def __init__(self, settings: TradingSettings, venue: Venue | None = None) -> None:
        self.settings = settings
        self.portfolio = Portfolio(settings.portfolio)
        self.risk = RiskEngine(settings.risk)
        self.broker: Venue = venue if venue is not None else PaperBroker(settings.broker, settings.run_tag)
        self.sizer = PositionSizer(settings.sizing)
        self.weights = StrategyWeights.for_strategies(
            [spec.build() for spec in settings.strategies], settings.weights
        )
        self.muted: set[str] = set()  # strategies that raised or answered wrongly: silent from then on
        self.symbols: dict[str, _SymbolState] = {}
        self.bars: dict[int, dict[str, Bar]] = {}
        self.features: dict[int, dict[str, Feature]] = {}
        self.corr: dict[tuple[str, str], float] = {}
        self.pending_corr: list[Correlation] = []
        self.controls: list[tuple[int, str, str]] = []
        self.last_data_ts: dict[str, int] = {}
        self.done: int | None = None
        self.counter = 0
        self.backtests: dict[int, list[VarBacktestRow]] = {}  # per-symbol rows by grid step
        self.informative: dict[int, list[tuple[str, Bar | Feature]]] = {}  # coarser rows by closing step
        self.symbol_models: dict[str, ModelRiskMonitor] = {}
        vb = settings.var_backtest
        self.var_feed = VarBacktestFeed(vb, PORTFOLIO, settings.var_model)
        self.model_risk = ModelRiskMonitor(vb, PORTFOLIO)
        self.last_var: tuple[float, float] | None = None  # one-bar (VaR, ES) of the book, quote units
        self.last_breaker_var: float | None = None  # one-bar amount of the breaker metric
        self.stats = TradingStats()
        self.throttled: set[str] = set()  # symbols whose online model's calibration drifts
        self.levels = self._levels()

    def _levels(self) -> Levels:
        s = self.settings
        return Levels(
            s.levels, tuple(spec.name for spec in s.strategies), s.risk.max_position_share, s.regime
        )

    # -- input -------------------------------------------------------------------------

    def add(
        self,
        symbol: str,
        bars: list[Bar],
        features: list[Feature],
        backtests: tuple | list = (),
        coarse: tuple | list = (),
    ) -> None:
        """A symbol's newly closed bars, feature rows and ``var_backtests`` rows (any step order
        within the symbol), and the bars and feature rows of coarser resolutions (``coarse``, each
        stamped with its ``interval``): those take effect at the step that closes their window (or
        the next step to come, when a gap closed it late), never before."""
        d = self.settings.bar_interval_ms
        for bar in bars:
            self.bars.setdefault(bar.ts // d, {})[symbol] = bar
        for f in features:
            self.features.setdefault(f.ts // d, {})[symbol] = f
        for row in backtests:
            if row.scope == "rolling":
                self.backtests.setdefault(row.ts // d, []).append(row)
        for row in coarse:
            k = (row.ts + row.interval * 1000) // d - 1  # the finest step its window closes at
            if self.done is not None and k <= self.done:
                k = self.done + 1
            self.informative.setdefault(k, []).append((symbol, row))

    def add_correlations(self, rows: list[Correlation]) -> None:
        self.pending_corr.extend(rows)

    def add_control(self, ts: int, command: str, reason: str) -> None:
        """An operator command (``resume``, ``pause``, ``flatten``), applied at the first close >= ts."""
        self.controls.append((ts, command, reason))
        self.controls.sort(key=lambda c: c[0])

    def correlation(self, a: str, b: str) -> float | None:
        if a == b:
            return 1.0
        return self.corr.get((a, b) if a < b else (b, a))

    # -- processing ----------------------------------------------------------------------

    def advance(self, through: int) -> list[tuple[str, list]]:
        """Process every step up to grid index ``through``."""
        out: dict[str, list] = {
            "signals": [],
            "risk_events": [],
            "orders": [],
            "fills": [],
            "portfolio": [],
            "var_backtests": [],
            "model_metrics": [],
            "strategy_updates": [],
            "targets": [],
        }
        steps = sorted(k for k in self.bars if k <= through)
        for k in steps:
            if self.done is not None and k <= self.done:
                self.bars.pop(k, None)
                self.features.pop(k, None)
                self.backtests.pop(k, None)
                continue
            self._inform(k)
            self._step(k, self.bars.pop(k), self.features.pop(k, {}), out)
            self.done = k
        return [(table, rows) for table, rows in out.items() if rows]

    def __setstate__(self, state: dict) -> None:
        # a loop saved by an older qbtc: the state added since starts empty (coarser rows, levels,
        # the cost gate's volumes and counts, the model throttle)
        self.__dict__.update(state)
        self.__dict__.setdefault("informative", {})
        self.__dict__.setdefault("throttled", set())
        if "levels" not in self.__dict__:  # saved before decision levels
            self.levels = self._levels()
        for sym in self.symbols.values():
            if not hasattr(sym, "coarse"):
                sym.coarse = {}
            if not hasattr(sym, "volumes"):  # saved before the cost gate
                sym.volumes = deque(maxlen=self.settings.broker.recent_volume_bars)
        if not hasattr(self.stats, "orders_blocked_by_cost"):
            self.stats.orders_blocked_by_cost, self.stats.cost_saved = 0, 0.0

    def _inform(self, k: int) -> None:
        """The coarser bars and features due by step ``k`` into their symbols' state; the bars of
        L3's resolution (``levels.strategy_every_s``) also into L3's own regime."""
        lv = self.levels
        own = lv.settings.strategy_every_s if lv.settings.enabled else None
        for step in sorted(i for i in self.informative if i <= k):
            closed = []
            for symbol, row in self.informative.pop(step):
                sym = self._symbol(symbol)
                bar, feat = sym.coarse.get(row.interval, (None, None))
                sym.coarse[row.interval] = (row, feat) if isinstance(row, Bar) else (bar, row)
                if row.interval == own and isinstance(row, Bar):
                    closed.append(symbol)
            for symbol in closed:  # after the step's rows: a bar's feature row may follow it
                bar, feat = self.symbols[symbol].coarse[own]
                lv.observe(
                    bar, feat if feat is not None and feat.ts == bar.ts else None, self._avg_corr(symbol)
                )

    def _step(self, k: int, bars: dict[str, Bar], feats: dict[str, Feature], out: dict[str, list]) -> None:
        s = self.settings
        close_ts = (k + 1) * s.bar_interval_ms
        st = self.stats
        st.first_ts = close_ts if st.first_ts is None else st.first_ts
        st.last_ts = close_ts
        self._apply_correlations(k)
        pf = self.portfolio
        held_before = {sym: (q, pf.marks.get(sym)) for sym, q in pf.positions.items() if q}
        # 1. venue: fills at the open, protection along the path
        contexts = {symbol: BarContext(normalised_vol=self._normalised_vol(symbol)) for symbol in bars}
        self.broker.begin_step(k, bars, contexts)
        for symbol in sorted(bars):
            bar = bars[symbol]
            self._symbol(symbol)  # state for a symbol seen the first time
            result = self.broker.on_bar(bar, contexts[symbol])
            out["orders"].extend(result.new_orders)
            st.orders += len(result.new_orders)
            for c in result.cancelled:
                out["risk_events"].append(
                    RiskEvent(c.ts, "execution", 1, c.order.symbol, c.order.qty, 0.0, c.reason, c.message)
                )
            for fill in result.fills:
                self._book(fill, out)
            pf.mark(symbol, bar.close)
            self.last_data_ts[symbol] = close_ts
        pf.advance(close_ts)
        self._var_check(close_ts, held_before, out)
        # 2. state
        for symbol in sorted(bars):
            sym = self.symbols[symbol]
            bar = bars[symbol]
            feat = feats.get(symbol)
            sym.atr.update(bar)
            sym.volumes.append(float(bar.volume))
            self.levels.traded(symbol, bar.close * bar.volume)
            if feat is not None:
                for name, direction in sym.last_dirs.items():
                    self.weights.record(name, symbol, direction, feat.ret)
                    self.levels.record(name, symbol, close_ts, direction * feat.ret, direction)
                sym.feature = feat
                if feat.drift:
                    self.weights.on_drift(symbol, close_ts)
                    self.levels.on_drift(symbol)
            sym.regime_now = sym.regime.update(bar, feat, self._avg_corr(symbol))
        self._upper_levels(close_ts, out)
        # 3. risk
        self._model_risk(k, close_ts, out)
        view = self._view(close_ts)
        for when, command, reason in self._due_controls(close_ts):
            if command == "resume":
                # the operator has seen the loss: drawdown and period losses count from here
                pf.rebase()
            events = self.risk.control(when, command, reason, update_mode=False)
            self._count(events)
            out["risk_events"].extend(events)
        events, actions = self.risk.assess(pf, view)
        self._count(events)
        out["risk_events"].extend(events)
        self._risk_orders(close_ts, actions, view, out)
        # 4. signals and entries
        self._signals(close_ts, bars, actions, view, out)
        self.broker.end_step(k)
        st.equity_step(pf.equity())
        out["portfolio"].append(self._portfolio_row(close_ts, view))

    def _symbol(self, symbol: str) -> _SymbolState:
        sym = self.symbols.get(symbol)
        if sym is None:
            s = self.settings
            sym = self.symbols[symbol] = _SymbolState(
                ATR(s.atr),
                RegimeClassifier(s.regime),
                [spec.build() for spec in s.strategies],
                volumes=deque(maxlen=s.broker.recent_volume_bars),
            )
        return sym

    def _apply_correlations(self, k: int) -> None:
        d = self.settings.bar_interval_ms
        keep = []
        for c in self.pending_corr:
            if c.ts // d <= k:
                self.corr[(c.symbol_a, c.symbol_b)] = c.corr
            else:
                keep.append(c)
        self.pending_corr = keep

    def _avg_corr(self, symbol: str) -> float | None:
        values = [self.correlation(symbol, other) for other in self.symbols if other != symbol]
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    def _normalised_vol(self, symbol: str) -> float:
        sym = self.symbols.get(symbol)
        ref = self.risk.vol_ref.get(symbol)
        if sym is None or sym.feature is None or not ref:
            return 1.0
        return sym.feature.volatility / ref

    def _view(self, ts: int) -> MarketView:
        vols, ents, regimes, forecasts = {}, {}, {}, {}
        for symbol, sym in self.symbols.items():
            f = sym.feature
            if f is not None:
                vols[symbol] = f.volatility
                ents[symbol] = f.entropy
                forecasts[symbol] = (f.fvar95, f.fes95)
            if sym.regime_now is not None:
                regimes[symbol] = sym.regime_now
        return MarketView(ts, vols, ents, regimes, dict(self.last_data_ts), self.correlation, True, forecasts)

    def _due_controls(self, ts: int) -> list[tuple[int, str, str]]:
        due = [c for c in self.controls if c[0] <= ts]
        self.controls = [c for c in self.controls if c[0] > ts]
        return [(ts, command, reason) for _, command, reason in due]

    def _count(self, events: list[RiskEvent]) -> None:
        st = self.stats
        for e in events:
            if e.kind == "qvar_breaker" and e.level > 0:
                st.breaker_trips[e.level] = st.breaker_trips.get(e.level, 0) + 1
            elif e.kind == "kill_switch" and e.level > 0:
                st.kill_switches += 1
            elif e.kind == "mode":
                st.mode_changes += 1
            elif e.kind == "pre_trade" and e.action == "deny":
                st.denials += 1
            elif e.kind == STRATEGY_ERROR:
                st.strategy_errors += 1

    def _model_risk(self, k: int, ts: int, out: dict) -> None:
        """Judge the symbols' rolling VaR backtests of step ``k`` (and the portfolio's, counted in
        :meth:`_var_check`); the engine is defensive while any model is in the red zone."""
        events = out["risk_events"]
        for row in self.backtests.pop(k, ()):
            mon = self.symbol_models.get(row.symbol)
            if mon is None:
                mon = self.symbol_models[row.symbol] = ModelRiskMonitor(
                    self.settings.var_backtest, row.symbol
                )
            event = mon.update(ts, row)
            if event is not None:
                events.append(event)
                self.stats.model_risk_events += 1
        breached = self.model_risk.breached or any(m.breached for m in self.symbol_models.values())
        self.risk.set_model_risk(breached)

    def _book_risk(self, view: MarketView) -> PortfolioRisk | None:
        pf = self.portfolio
        equity = pf.equity()
        if not equity > 0:
            return None
        return portfolio_risk(
            pf.weights(),
            view.vols,
            view.entropies,
            view.corr,
            equity,
            self.settings.risk.qvar,
            view.forecasts,
        )

    def _portfolio_row(self, ts: int, view: MarketView) -> PortfolioState:
        """The book after the step, with the next step's VaR and ES of the positions held."""
        pf = self.portfolio
        equity = pf.equity()
        risk = self._book_risk(view)
        nan = math.nan
        if risk is None:
            var_h = es_h = qvar = share = nan
        else:
            var_h, es_h, qvar = risk.fvar_share * equity, risk.fes_share * equity, risk.qvar
            metric = self.settings.risk.breaker_metric
            share = {"var": risk.fvar_share, "es": risk.fes_share, "qvar": risk.qvar_share}[metric]
        root_h = math.sqrt(self.settings.risk.qvar.horizon_bars)
        var1, es1 = var_h / root_h, es_h / root_h
        held = risk is not None and bool(pf.positions)
        self.last_var = (var1, es1) if held else None
        self.last_breaker_var = share * equity / root_h if held else None
        leverage = pf.leverage()
        return PortfolioState(
            ts,
            equity,
            pf.cash,
            pf.gross_exposure(),
            pf.net_exposure(),
            leverage,
            pf.drawdown(),
            var1,
            es1,
            var_h,
            es_h,
            qvar,
            share,
            self.risk.breaker_level,
            self.risk.mode,
        )

    def _var_check(self, ts: int, held: dict[str, tuple[float, float | None]], out: dict) -> None:
        """VaR backtests on the hypothetical P&L: the previous close's positions, marked to this close.

        Trading costs and intra-bar trades are left out, as in a standard VaR
        backtest; only steps with positions and a forecast count. The
        portfolio's ``var_backtests`` rows judge the calibrated one-bar VaR
        and ES of the ``portfolio`` table; the summary's exceedance rate is
        that of the breaker metric.
        """
        if not held:
            return
        marks = self.portfolio.marks
        pnl = math.fsum(q * (marks.get(sym, p) - p) for sym, (q, p) in held.items() if p is not None)
        if self.last_var is not None:
            rows = self.var_feed.update(ts, *self.last_var, pnl)
            if rows:
                out["var_backtests"].extend(rows)
                event = self.model_risk.update(ts, rows[0] if rows[0].scope == "rolling" else None)
                if event is not None:
                    out["risk_events"].append(event)
                    self.stats.model_risk_events += 1
        breaker_var = self.last_breaker_var
        if breaker_var is None or not breaker_var > 0:
            return
        self.stats.var_checks += 1
        if -pnl > breaker_var:
            self.stats.var_exceedances += 1

    # -- orders ------------------------------------------------------------------------------

    def _order_id(self, ts: int) -> str:
        """``{run_tag}-{ts}-{n}`` (``{ts}-{n}`` untagged): at most 36 characters with a TWAP child's
        ``/n``, as exchanges' client order ids allow; symbol and reason are the order's own columns."""
        self.counter += 1
        tag = self.settings.run_tag
        return f"{tag}-{ts}-{self.counter}" if tag else f"{ts}-{self.counter}"

    def _send(self, ts: int, symbol: str, qty: float, reason: str, strategy: str, out: dict) -> None:
        """Send a market order for a signed quantity (> 0 buys)."""
        if qty == 0 or not math.isfinite(qty):
            return
        side = BUY if qty > 0 else SELL
        order = Order(ts, self._order_id(ts), "", symbol, side, abs(qty), MARKET, 0.0, reason, strategy)
        working = self.broker.submit(order)
        out["orders"].append(order)
        out["orders"].extend(o for o in working if o.order_id != order.order_id)
        self.stats.orders += 1 + sum(1 for o in working if o.order_id != order.order_id)

    def _risk_orders(self, ts: int, actions: RiskActions, view: MarketView, out: dict) -> None:
        pf = self.portfolio
        held = {s: q for s, q in sorted(pf.positions.items()) if q != 0}
        if not held:
            return
        self._cancel_entries(ts)
        if actions.flatten:
            for symbol, qty in held.items():
                self._send(ts, symbol, -qty, "flatten", RISK, out)
            return
        share = actions.cut_fraction
        if actions.deleverage_to is not None:
            lev = pf.leverage()
            if lev > actions.deleverage_to > 0:
                share = max(share, 1.0 - actions.deleverage_to / lev)
        if share > 0:
            for symbol, qty in held.items():
                self._send(ts, symbol, -qty * share, "cut", RISK, out)

    def _cancel_entries(self, ts: int) -> None:
        for order in self.broker.open_orders():
            if order.strategy != RISK:
                self.broker.cancel(order.order_id, ts)

    def _pending_book(self, ts: int) -> Portfolio:
        """The portfolio as if every working order had filled at its symbol's mark, without fees.

        Pre-trade checks run against it and each approved order is added to
        it, so the orders of one step (and TWAP remainders, and this step's
        risk orders) count against the limits together, not one at a time.
        """
        book = self.portfolio.copy()
        for order in self.broker.open_orders():
            left = self.broker.remaining(order.order_id)
            price = book.marks.get(order.symbol)
            if left and price:
                book.apply_fill(Fill(ts, order.order_id, order.symbol, order.side, left, price, 0.0, 0.0))
        return book

    def flush_backtests(self) -> list[tuple[str, list]]:
        """The portfolio backtest's figures at its last forecast, when not yet given, and the online
        models' last ``model_metrics`` rows (the end of a bounded run)."""
        rows = self.var_feed.flush()
        models = self._model_rows()
        return ([("var_backtests", rows)] if rows else []) + ([("model_metrics", models)] if models else [])

    def settle(self, fills: list[Fill]) -> list[tuple[str, list]]:
        """Book fills that arrived after the last step (an external venue's, at the end of a run).

        The portfolio takes them; nothing is decided and no protection is set.
        """
        out: dict[str, list] = {"fills": []}
        for fill in fills:
            self._book(fill, out, protect=False)
        return [("fills", out["fills"])] if out["fills"] else []

    def _book(self, fill: Fill, out: dict, protect: bool = True) -> None:
        pf = self.portfolio
        before = pf.position(fill.symbol)
        realised = pf.apply_fill(fill)
        out["fills"].append(fill)
        after = pf.position(fill.symbol)
        self.stats.fill(realised if abs(after) < abs(before) or before * after < 0 else None)
        if protect:
            self._protect(fill.ts, fill.symbol, after)

    def _protect(self, ts: int, symbol: str, qty: float) -> None:
        if qty == 0:
            self.broker.clear_protection(symbol)
            self.symbols[symbol].tranches = 0
            return
        sym = self.symbols[symbol]
        atr = sym.atr.get()
        entry = self.portfolio.avg_price.get(symbol)
        if atr is None or entry is None:
            return
        entropy = sym.feature.entropy if sym.feature is not None else 0.0
        stop, target = self.sizer.stop_target(
            entry, atr, 1 if qty > 0 else -1, entropy, self._stop_multiplier()
        )
        self.broker.set_protection(symbol, qty, stop, target, ts)

    def _stop_multiplier(self) -> float:
        return self.risk.settings.ers_stop_multiplier if self.risk.ers_active else 1.0

    # -- reporting ------------------------------------------------------------------------------

    def summary(self) -> dict:
        """Backtest figures: return, Sharpe, Sortino, drawdown, trades, breakers, VaR exceedances."""
        return self.stats.summary(
            self.settings.bar_interval_ms, self.risk.mode, self.settings.risk.breaker_metric
        )
