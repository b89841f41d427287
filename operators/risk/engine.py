"""The risk engine: breakers, kill switch, operating modes and pre-trade checks.

Like NautilusTrader's risk engine it denies, it does not raise: every decision
is a :class:`~schemas.records.RiskEvent` with a reason, and the clock is the
event time the caller passes in. Nothing here reads the wall clock.

How the trading loop uses it, at each step ``ts``:

1. ``portfolio.advance(ts)``, fills and marks, then ``assess(portfolio,
   market)`` after each phase of the bar path (``market.bar_close`` False)
   and at the bar close (``bar_close`` True). ``assess`` returns the events
   and a :class:`RiskActions` to apply now: ``flatten`` and
   ``deleverage_to`` are target states (repeated while they hold: close net
   of pending orders), ``cut_fraction`` is one-shot (only on the assess that
   crossed the line).
2. At the bar close, strategies run; signals weaker than
   ``actions.min_strength`` are ignored, sizes are multiplied by
   ``actions.size_multiplier`` (the loop does this, not ``check_order``),
   stops by ``actions.stop_multiplier``; each order is passed to
   ``check_order``, which returns the approved quantity (0 = denied).
3. ``control(ts, "resume" | "pause" | "flatten", reason)`` for an operator,
   ``on_error(ts, message)`` for an unrecoverable error.

Rules (thresholds are :class:`RiskSettings` fields; "h" is ``hysteresis``;
a level is entered when the value exceeds its threshold and left only when
it falls below threshold * (1 - h)):

- Breaker on the ``breaker_metric`` share of equity over the horizon (the
  calibrated portfolio VaR or ES, or the seed's QVaR, all from
  :func:`~operators.risk.portfolio_risk.portfolio_risk`; the events keep
  the seed's kind ``qvar_breaker``): level 1 warn,
  level 2 caution (a defensive trigger: half size, no entries in
  ``caution_blocked_regimes``), level 3 emergency (flatten while it holds).
  A level is held for ``breaker_hold_ms`` after the share last exceeded its
  threshold, even when a flatten took the share to 0.
- DLRI = leverage / max_leverage * max(1, sum |w_i| sigma_i / ref_i /
  sum |w_i|), ref_i an EWMA of sigma_i at bar closes (half-life
  ``vol_ref_halflife_bars``; ratio 1 for a symbol without ref or vol).
  Entering level 1 from 0: cut every position by ``dlri_cut_fraction``
  (once). Entering level 2: deleverage to safe_leverage / multiplier
  (so the DLRI lands at safe_leverage / max_leverage), a target while
  level 2 holds.
- ERS = 0.4 * mean entropy over ``market.entropies`` + 0.6 * position
  weighted entropy; while active: no entries, sizes x0.7, stops x0.75.
- Defensive triggers: drawdown, weekly loss (both with hysteresis), rolling
  Sharpe < 0.5 once warm (not None), breaker level >= 2, and
  ``model_risk`` (:meth:`set_model_risk`: the caller's VaR backtest in the
  red zone, the seed's "calibration degraded"). Defensive =
  sizes x0.5 and signals need strength >= 0.6.
- Kill switch: drawdown > 15%, daily loss > 3%, weekly > 5%, monthly > 8%
  or ``on_error``: flatten (mode emergency until the book is flat at an
  assess), then pause until ``control(ts, "resume", ...)``. It trips once
  and stays latched until the resume; a resume while a condition still
  holds is accepted, and the kill switch trips again at the next assess.
- Stale data: a symbol with ``ts - last_data_ts >= stale_after_ms`` takes no
  entries; when every symbol in ``market.last_data_ts`` is stale the mode
  is observation (signals, no strategy orders).
- Modes: emergency (flatten pending or breaker level 3) > pause > observation
  > defensive > normal; every change is a ``mode`` event.
- Pre-trade: an order splits into the part that reduces the position and
  the part that opens (adds to, or flips into) one. The reducing part is
  approved in every mode, observation included (protective exits are the
  safer choice). The opening part is denied in observation, pause and
  emergency, while ERS is active, for stale symbols, in blocked regimes and
  beyond ``max_orders_per_minute`` (event time; ``risk`` orders exempt); it
  is halved when rho * dir_new * dir_held > ``corr_threshold`` for a held
  position (unknown rho: ``risk.missing_corr``); then cut to fit, at the
  order price with the symbol marked there: position <= 20% of equity,
  gross leverage <= ``max_leverage``, order notional <= the cap, and for
  buys cash after the order (less ``cost_buffer_bps``) >= 10% of equity.

Event kinds, in their order within one ``assess``: ``stale_data``,
``kill_switch``, ``qvar_breaker``, ``dlri``, ``ers``, ``defensive`` (one per
defensive trigger set or cleared), ``mode``; ``control`` and ``pre_trade``
come from ``control``/``check_order``.

>>> eng = RiskEngine(RiskSettings())
>>> pf = Portfolio()
>>> mv = MarketView(0, {}, {}, {}, {"X": 0}, lambda a, b: None, True)
>>> eng.assess(pf, mv)[1].entries_allowed
True
>>> qty, events = eng.check_order(OrderIntent("X", BUY, 1.0, 50_000.0, "entry", "s"), pf, mv)
>>> qty, events[0].action, events[0].message
(0.4, 'reduce', 'position 0.500000 of equity > 0.200000')
"""

from __future__ import annotations

import math
from collections import deque

from operators.risk.portfolio import Portfolio
from operators.risk.portfolio_risk import PortfolioRisk, portfolio_risk, weighted_entropy
from operators.risk.settings import (
    BREAKER_ACTIONS,
    COMMANDS,
    DEFENSIVE,
    EMERGENCY,
    MINUTE_MS,
    MODE_LEVEL,
    NO_ENTRY_MODES,
    NORMAL,
    OBSERVATION,
    PAUSE,
    PERMISSIVE,
    MarketView,
    OrderIntent,
    RiskActions,
    RiskSettings,
    hysteresis_level,
)
from schemas.records import BUY, SELL, RiskEvent


def _pct(x: float) -> str:
    return f"{x:.6f}"


class RiskEngine:
    """Holds the operating mode and breaker state; see the module docstring.

    Parameters
    ----------
    settings
        A :class:`RiskSettings`.
    """

    def __init__(self, settings: RiskSettings | None = None) -> None:
        self.settings = settings or RiskSettings()
        self.mode = NORMAL
        self.breaker_level = 0
        self._breaker_hot = 0  # when the share last exceeded the current level's threshold
        self.dlri_level = 0
        self.ers_active = False
        self.defensive: dict[str, bool] = {
            "drawdown": False,
            "weekly_loss": False,
            "sharpe": False,
            "model_risk": False,  # set by the caller: a VaR model in the red zone
        }
        self.stale: frozenset[str] = frozenset()
        self.all_stale = False
        self.vol_ref: dict[str, float] = {}
        self.last_risk: PortfolioRisk | None = None
        self.last_dlri = 0.0
        self.last_ers = 0.0
        self.killed = False
        self.paused = False
        self.flatten_pending = False
        self._why = {PAUSE: "", EMERGENCY: ""}
        self._order_ts: deque[int] = deque()

    # -- assessment ------------------------------------------------------------------

    def assess(self, portfolio: Portfolio, market: MarketView) -> tuple[list[RiskEvent], RiskActions]:
        """Evaluate every rule at ``market.ts``; returns the events and the actions to take."""
        s = self.settings
        if not s.enabled:
            return [], PERMISSIVE
        ts = market.ts
        events: list[RiskEvent] = []
        if self.flatten_pending and not portfolio.positions:
            self.flatten_pending = False
        self._check_stale(ts, market, events)
        equity = portfolio.equity()
        drawdown = portfolio.drawdown()
        losses = [-portfolio.period_pnl(p) for p in ("day", "week", "month")]
        kills = [("drawdown", drawdown, s.kill_drawdown)]
        limits = (s.kill_daily_loss, s.kill_weekly_loss, s.kill_monthly_loss)
        kills += zip(("daily_loss", "weekly_loss", "monthly_loss"), losses, limits, strict=True)
        holding = [(n, v, t) for n, v, t in kills if v > t]
        if holding and not self.killed:
            why = ", ".join(f"{n} {_pct(v)} > {_pct(t)}" for n, v, t in holding)
            self._trip(ts, holding[0][1], holding[0][2], f"kill switch: {why}", events)

        weights = portfolio.weights()
        vols, entropies = market.vols, market.entropies
        if equity > 0:
            risk = portfolio_risk(weights, vols, entropies, market.corr, equity, s.qvar, market.forecasts)
            self.last_risk = risk
            share = {"var": risk.fvar_share, "es": risk.fes_share, "qvar": risk.qvar_share}[s.breaker_metric]
        else:
            self.last_risk, share = None, math.inf
        old = self.breaker_level
        if sum(1 for t in s.breaker_levels if share > t) >= old:
            self._breaker_hot = ts  # the share still exceeds the current level's threshold
        new = hysteresis_level(old, share, s.breaker_levels, s.hysteresis)
        if new < old and ts - self._breaker_hot < s.breaker_hold_ms:
            new = old
        self.breaker_level = new
        self._level_event(
            ts,
            "qvar_breaker",
            old,
            new,
            share,
            s.breaker_levels,
            BREAKER_ACTIONS[new],
            events,
            s.breaker_metric,
        )

        cut, deleverage_to = self._dlri(ts, portfolio, weights, vols, events)
        mean_h = sum(entropies.values()) / len(entropies) if entropies else 0.0
        ers = s.ers_market_weight * mean_h + s.ers_position_weight * weighted_entropy(weights, entropies)
        self.last_ers, old = ers, int(self.ers_active)
        new = hysteresis_level(old, ers, (s.ers_threshold,), s.hysteresis)
        self.ers_active = new == 1
        action = "defer_entries" if new else "clear"
        self._level_event(ts, "ers", old, new, ers, (s.ers_threshold,), action, events)

        sharpe = portfolio.sharpe(s.sharpe_days)
        triggers = (  # the Sharpe is negated so that every trigger is "value > threshold"
            ("drawdown", drawdown, s.defensive_drawdown, s.hysteresis),
            ("weekly_loss", losses[1], s.defensive_weekly_loss, s.hysteresis),
            ("sharpe", -math.inf if sharpe is None else -sharpe, -s.defensive_sharpe, 0.0),
        )
        for name, value, threshold, h in triggers:
            was = self.defensive[name]
            self.defensive[name] = hysteresis_level(int(was), value, (threshold,), h) == 1
            if self.defensive[name] != was:
                shown, limit = (-value, -threshold) if name == "sharpe" else (value, threshold)
                now = self.defensive[name]
                msg = f"{name} {_pct(shown)} {'breaches' if now else 'clears'} {_pct(limit)}"
                action = "defensive" if now else "clear"
                events.append(RiskEvent(ts, "defensive", int(now), "", shown, limit, action, msg))

        if market.bar_close:
            alpha = 1.0 - 0.5 ** (1.0 / s.vol_ref_halflife_bars)
            for sym in sorted(vols):
                v = vols[sym]
                if math.isfinite(v) and v >= 0:
                    ref = self.vol_ref.get(sym)
                    self.vol_ref[sym] = v if ref is None else ref + alpha * (v - ref)
        self._update_mode(ts, events)
        return events, self._actions(portfolio, cut, deleverage_to)

    def _level_event(
        self,
        ts: int,
        kind: str,
        old: int,
        new: int,
        value: float,
        limits: tuple,
        action: str,
        events: list,
        what: str = "",
    ) -> None:
        """Record a change of a hysteresis level (nothing when ``new == old``); ``what`` names the value."""
        if new != old:
            up = new > old
            threshold = limits[new - 1] if up else limits[new] * (1.0 - self.settings.hysteresis)
            name = f"{kind} ({what})" if what else kind
            msg = f"{name} {_pct(value)} {'>' if up else '<'} {_pct(threshold)}: level {old} -> {new}"
            events.append(RiskEvent(ts, kind, new, "", value, threshold, action, msg))

    def _check_stale(self, ts: int, market: MarketView, events: list[RiskEvent]) -> None:
        limit = self.settings.stale_after_ms
        stale = frozenset(sym for sym, last in market.last_data_ts.items() if ts - last >= limit)
        for sym in sorted(stale ^ self.stale):
            last = market.last_data_ts.get(sym)
            age = float(ts - last) if last is not None else math.inf
            if sym in stale:
                msg = f"{sym}: no data for {age:.0f} ms >= {limit} ms: no entries"
                events.append(RiskEvent(ts, "stale_data", 1, sym, age, float(limit), "block_entries", msg))
            else:
                msg = f"{sym}: data again ({age:.0f} ms old)"
                events.append(RiskEvent(ts, "stale_data", 0, sym, age, float(limit), "clear", msg))
        self.stale = stale
        self.all_stale = bool(stale) and len(stale) == len(market.last_data_ts)

    def _dlri(
        self, ts: int, portfolio: Portfolio, weights: dict[str, float], vols: dict[str, float], events: list
    ) -> tuple[float, float | None]:
        s = self.settings
        total = sum(abs(w) for w in weights.values())
        multiplier = 1.0
        if total > 0 and math.isfinite(total):
            ratios = 0.0
            for sym, w in weights.items():
                v, ref = vols.get(sym), self.vol_ref.get(sym)
                ok = v is not None and ref is not None and ref > 0 and math.isfinite(v)
                ratios += abs(w) * (v / ref if ok else 1.0)
            multiplier = max(1.0, ratios / total)
        dlri = portfolio.leverage() / s.max_leverage * multiplier
        self.last_dlri = dlri
        old = self.dlri_level
        self.dlri_level = level = hysteresis_level(old, dlri, s.dlri_levels, s.hysteresis)
        if level < old:
            action = "clear" if level == 0 else "none"
        else:
            action = f"cut_{round(100 * s.dlri_cut_fraction)}pct" if level == 1 else "deleverage"
        self._level_event(ts, "dlri", old, level, dlri, s.dlri_levels, action, events)
        target = s.safe_leverage / multiplier
        cut = s.dlri_cut_fraction if old == 0 and level == 1 else 0.0
        return cut, (target if level == 2 else None)

    def _trip(self, ts: int, value: float, threshold: float, message: str, events: list) -> None:
        self.killed = self.paused = self.flatten_pending = True
        self._why[EMERGENCY] = self._why[PAUSE] = message
        msg = f"{message}; flatten, then pause until resume"
        events.append(RiskEvent(ts, "kill_switch", 3, "", value, threshold, "flatten", msg))

    def _target_mode(self) -> tuple[str, str]:
        if self.flatten_pending:
            return EMERGENCY, self._why[EMERGENCY]
        if self.breaker_level >= 3:
            return EMERGENCY, f"breaker level 3 ({self.settings.breaker_metric})"
        if self.paused:
            return PAUSE, self._why[PAUSE]
        if self.all_stale:
            return OBSERVATION, "every symbol is stale"
        triggers = [n for n, on in self.defensive.items() if on]
        if self.breaker_level >= 2:
            triggers.append("breaker_caution")
        if triggers:
            return DEFENSIVE, ", ".join(triggers)
        return NORMAL, "no trigger holds"

    def _update_mode(self, ts: int, events: list[RiskEvent]) -> None:
        mode, why = self._target_mode()
        if mode != self.mode:
            msg = f"{self.mode} -> {mode}: {why}"
            events.append(RiskEvent(ts, "mode", MODE_LEVEL[mode], "", 0.0, 0.0, mode, msg))
            self.mode = mode

    def _actions(self, portfolio: Portfolio, cut: float, deleverage_to: float | None) -> RiskActions:
        s = self.settings
        defensive = self.mode == DEFENSIVE or any(self.defensive.values()) or self.breaker_level >= 2
        size = s.defensive_size_multiplier if defensive else 1.0
        return RiskActions(
            flatten=self.mode == EMERGENCY and bool(portfolio.positions),
            cut_fraction=cut,
            deleverage_to=deleverage_to,
            size_multiplier=size * (s.ers_size_multiplier if self.ers_active else 1.0),
            stop_multiplier=s.ers_stop_multiplier if self.ers_active else 1.0,
            min_strength=s.defensive_min_strength if defensive else 0.0,
            entries_allowed=self.mode not in NO_ENTRY_MODES and not self.ers_active,
            blocked_symbols=self.stale,
            blocked_regimes=s.caution_blocked_regimes if self.breaker_level >= 2 else frozenset(),
            orders_allowed=self.mode != OBSERVATION,
        )

    def set_model_risk(self, breached: bool) -> None:
        """Whether a VaR model is in the red zone (a defensive trigger from the next assess on)."""
        self.defensive["model_risk"] = breached

    # -- operator and errors ---------------------------------------------------------

    def control(self, ts: int, command: str, reason: str, update_mode: bool = True) -> list[RiskEvent]:
        """An operator's ``resume``, ``pause`` or ``flatten``, recorded as a ``control`` event.

        ``resume`` clears the pause and re-arms the kill switch (a flatten in
        progress still completes); ``flatten`` closes everything without
        pausing. An unknown command is rejected (action ``reject``).
        ``update_mode=False`` leaves the mode change to the caller's next
        :meth:`assess` at the same time (one change, judged on fresh triggers).
        """
        if command not in COMMANDS:
            msg = f"unknown command {command!r} (expected one of {COMMANDS}): {reason}"
            return [RiskEvent(ts, "control", 1, "", 0.0, 0.0, "reject", msg)]
        if not self.settings.enabled:
            msg = f"{command}: {reason} (risk engine disabled: no effect)"
            return [RiskEvent(ts, "control", 0, "", 0.0, 0.0, command, msg)]
        events = [RiskEvent(ts, "control", 0, "", 0.0, 0.0, command, f"{command}: {reason}")]
        if command == "resume":
            self.paused = self.killed = False
        elif command == "pause":
            self.paused = True
            self._why[PAUSE] = f"operator pause: {reason}"
        else:
            self.flatten_pending = True
            self._why[EMERGENCY] = f"operator flatten: {reason}"
        if update_mode:
            self._update_mode(ts, events)
        return events

    def on_error(self, ts: int, message: str) -> list[RiskEvent]:
        """An unrecoverable error: trips the kill switch (flatten, then pause)."""
        if not self.settings.enabled:
            return []
        events: list[RiskEvent] = []
        self._trip(ts, 0.0, 0.0, f"kill switch: unrecoverable error: {message}", events)
        self._update_mode(ts, events)
        return events

    # -- pre-trade -------------------------------------------------------------------

    def check_order(
        self, intent: OrderIntent, portfolio: Portfolio, market: MarketView
    ) -> tuple[float, list[RiskEvent]]:
        """The approved quantity of ``intent`` (0.0 = denied) and why it was cut.

        Orders approved but not filled yet are not seen: pass a portfolio
        holding them (the trading loop checks against a copy with every working
        order and each earlier approval of the step applied at its price).
        """
        s = self.settings
        if not s.enabled:
            return intent.qty, []
        ts, sym, qty, price = market.ts, intent.symbol, intent.qty, intent.price
        events: list[RiskEvent] = []

        def note(value: float, threshold: float, approved: float, message: str) -> None:
            action = "deny" if approved <= 0.0 else "reduce"
            level = 2 if action == "deny" else 1
            events.append(RiskEvent(ts, "pre_trade", level, sym, value, threshold, action, message))

        if intent.side not in (BUY, SELL) or not (qty > 0 and price > 0 and math.isfinite(qty * price)):
            note(0.0, 0.0, 0.0, f"invalid order: side {intent.side!r}, qty {qty!r}, price {price!r}")
            return 0.0, events
        sign = 1.0 if intent.side == BUY else -1.0
        pos = portfolio.position(sym)
        reduce = min(qty, abs(pos)) if pos * sign < 0 else 0.0
        opening = qty - reduce
        if opening <= 0.0:
            return qty, events
        if intent.reduces_only:
            note(qty, reduce, reduce, f"reduce-only order clipped to the position {_pct(reduce)}")
            return reduce, events
        closed = self._gate(intent, market)
        if closed:
            note(0.0, 0.0, reduce, closed)
            return reduce, events

        worst = -math.inf  # the strongest same-direction correlation with a held position
        for other in sorted(portfolio.positions):
            if other != sym:
                rho = market.corr(*sorted((sym, other)))
                if rho is None or not math.isfinite(rho):
                    rho = s.qvar.missing_corr
                worst = max(worst, rho * sign * math.copysign(1.0, portfolio.positions[other]))
        if worst > s.corr_threshold:
            opening *= s.corr_reduce
            note(worst, s.corr_threshold, reduce + opening, f"correlation {_pct(worst)} with a held position")

        equity = portfolio.equity() + pos * (price - portfolio.marks.get(sym, price))
        if equity <= 0:
            note(equity, 0.0, reduce, f"equity {equity:.2f} <= 0: no new exposure")
            return reduce, events
        base = abs(pos) if pos * sign > 0 else 0.0  # what stays of the position before the opening part
        unit = price / equity
        gross = (portfolio.gross_exposure() - abs(portfolio.value(sym))) / price + base
        limits = [  # (a, b, limit, text): the measure is a + b * opening, so opening <= (limit - a) / b
            (base * unit, unit, s.max_position_share, "position {v} of equity > {t}"),
            (gross * unit, unit, s.max_leverage, "gross leverage {v} > {t}"),
            (reduce * price, price, s.max_order_notional, "order notional {v} > {t}"),
        ]
        if sign > 0:  # buys spend cash (b < 0: a floor); sells add cash
            cost = price * (1.0 + s.cost_buffer_bps / 10_000.0) / equity
            cash = portfolio.cash / equity - reduce * cost
            limits.append((cash, -cost, s.min_cash_share, "cash after the order {v} of equity < {t}"))
        for a, b, limit, text in limits:
            bound = (limit - a) / b
            if bound < opening:
                value = a + b * opening
                opening = bound if bound >= 1e-12 else 0.0
                note(value, limit, reduce + opening, text.format(v=_pct(value), t=_pct(limit)))
        if opening > 0.0 and intent.strategy != "risk":
            self._order_ts.append(ts)
        # reduce + opening can round one ulp above the order's quantity
        return min(reduce + opening, intent.qty), events

    def _gate(self, intent: OrderIntent, market: MarketView) -> str:
        """Why no opening order may pass now, or "" when it may."""
        s, sym, recent = self.settings, intent.symbol, self._order_ts
        while recent and recent[0] <= market.ts - MINUTE_MS:
            recent.popleft()
        regime = market.regimes.get(sym, "")
        if self.mode in NO_ENTRY_MODES:
            return f"mode {self.mode}: no new entries"
        if self.ers_active:
            return f"ERS {_pct(self.last_ers)} > {_pct(s.ers_threshold)}: entries deferred"
        if sym in self.stale:
            return f"{sym} is stale: no entries"
        if self.breaker_level >= 2 and regime in s.caution_blocked_regimes:
            level = self.breaker_level
            return f"breaker level {level} ({s.breaker_metric}): no entries in regime {regime}"
        if intent.strategy != "risk" and len(recent) >= s.max_orders_per_minute:
            return f"order rate {len(recent)} per minute >= {s.max_orders_per_minute}"
        return ""
