"""The record types that flow between qbtc's steps, topics and tables.

Times are integer epoch milliseconds UTC everywhere inside messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PARSE = "parse"
SCHEMA = "schema"
VALUE = "value"
LATE = "late"
DUPLICATE = "duplicate"
TIME = "time"
CAPACITY = "capacity"
REASONS = (PARSE, SCHEMA, VALUE, TIME, CAPACITY, DUPLICATE, LATE)
"""Dead-letter reasons, in the order the checks run."""

PAYLOAD_LIMIT = 64 * 1024
"""Dead-letter payloads are truncated to this many bytes."""


@dataclass(frozen=True, slots=True)
class Tick:
    """One trade print.

    Parameters
    ----------
    ts
        Event time, epoch milliseconds UTC.
    symbol
        ccxt-unified symbol, e.g. ``BTC/USDT``.
    price, qty
        Finite and > 0.
    side
        ``buy``, ``sell`` (the taker side) or ``""`` when unknown.
    trade_id
        The exchange's trade id, ``""`` when unknown.
    exchange
        Exchange id, e.g. ``binance``.
    """

    ts: int
    symbol: str
    price: float
    qty: float
    side: str = ""
    trade_id: str = ""
    exchange: str = ""


@dataclass(frozen=True, slots=True)
class Bar:
    """OHLCV bar of one symbol over [ts, ts + interval).

    ``interval`` is the bar's length in seconds (one of ``features.bar_intervals``);
    0 on a bar no bar step has stamped (a candle as read, a bar made by hand).
    """

    symbol: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    trades: int
    interval: int = 0


@dataclass(frozen=True, slots=True)
class Feature:
    """Per-symbol risk features at one actual bar (see the metric spec).

    ``fvar95`` and ``fes95`` are the next bar's VaR and ES forecasts (positive
    losses of the log return) of the model ``features.var_model`` chooses; NaN
    until that model is warm. ``interval`` is the length in seconds of the
    bars they were computed on (0: not stamped).
    """

    symbol: str
    ts: int
    ret: float
    volatility: float
    entropy: float
    var95: float
    es95: float
    qvar95: float
    drift: int
    fvar95: float = math.nan
    fes95: float = math.nan
    interval: int = 0


@dataclass(frozen=True, slots=True)
class Correlation:
    """Pearson correlation of two symbols' grid returns over the last window (of bars of
    ``interval`` seconds; 0: not stamped)."""

    ts: int
    symbol_a: str
    symbol_b: str
    corr: float
    interval: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input record, kept with why and where it came from.

    Parameters
    ----------
    ingest_ts
        When qbtc rejected it, epoch milliseconds UTC.
    source
        ``path:line`` for files, ``topic[partition]@offset`` for Kafka.
    reason
        One of :data:`REASONS`.
    message
        What was wrong, for a person.
    payload
        The raw record, truncated to 64 KiB.
    """

    ingest_ts: int
    source: str
    reason: str
    message: str
    payload: bytes

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            msg = f"unknown dead-letter reason {self.reason!r}"
            raise ValueError(msg)
        if len(self.payload) > PAYLOAD_LIMIT:
            object.__setattr__(self, "payload", self.payload[:PAYLOAD_LIMIT])


VAR_SCOPES = ("rolling", "cumulative")
"""Scopes of a VaR backtest row: the last ``window`` forecasts, or every forecast since the start."""
PORTFOLIO = ""
"""The symbol of portfolio-wide rows (VaR backtests, risk events)."""


@dataclass(frozen=True, slots=True)
class VarBacktestRow:
    """A VaR/ES forecast stream's backtest figures at one moment (the ``var_backtests`` table).

    Parameters
    ----------
    ts
        The bar close whose return was the last one counted, epoch ms.
    symbol
        The symbol, :data:`PORTFOLIO` (``""``) for the trading loop's book.
    model
        The forecasting model (``features.var_model``).
    scope
        ``rolling`` (the last ``window`` forecasts) or ``cumulative``.
    window
        The rolling window's size (also on cumulative rows, for reference).
    alpha
        The tail probability the forecasts promise (0.05 for VaR 95%).
    forecasts, exceedances, rate
        T, x and x / T.
    n00, n01, n10, n11
        Transitions of the exceedance indicator (n01: none, then one).
    pof_lr, pof_p
        Kupiec's proportion-of-failures LR and p-value.
    ind_lr, ind_p, cc_lr, cc_p
        Christoffersen's independence and conditional-coverage LRs and
        p-values (NaN below two forecasts).
    binom_cdf, zone
        P(X <= x), X ~ Binomial(T, alpha), and the Basel traffic-light zone
        (``green``, ``yellow``, ``red``).
    es_z2, es_p
        Acerbi-Székely Z2 (> 0: the ES understates the tail) and its one-sided p-value.
    interval
        The length in seconds of the bars whose returns were forecast (0: not stamped).
    """

    ts: int
    symbol: str
    model: str
    scope: str
    window: int
    alpha: float
    forecasts: int
    exceedances: int
    rate: float
    n00: int
    n01: int
    n10: int
    n11: int
    pof_lr: float
    pof_p: float
    ind_lr: float
    ind_p: float
    cc_lr: float
    cc_p: float
    binom_cdf: float
    zone: str
    es_z2: float
    es_p: float
    interval: int = 0


# -- the trading loop -----------------------------------------------------------

LONG = 1
SHORT = -1
FLAT = 0
REGIMES = ("trend_up", "trend_down", "range", "high_vol", "crisis")
"""Market regimes of a symbol (see ``operators.signals.regime``)."""

BUY = "buy"
SELL = "sell"
MARKET = "market"
LIMIT = "limit"
STOP = "stop"
ORDER_TYPES = (MARKET, LIMIT, STOP)

MODES = ("normal", "defensive", "observation", "pause", "emergency")
"""Operating modes of the risk engine, from least to most restrictive in effect."""


@dataclass(frozen=True, slots=True)
class Signal:
    """A strategy's (or the composite's) view of a symbol at a bar close.

    Parameters
    ----------
    ts
        The bar close it was made at, epoch ms.
    strategy
        The strategy's name, or ``composite`` for the weighted blend.
    direction
        1 long, -1 short, 0 flat.
    strength
        Conviction in [0, 1].
    regime
        The symbol's regime then (one of :data:`REGIMES`).
    edge_bps, cost_bps, gate
        The composite's cost gate (``operators.signals.cost_gate``): the
        expected edge and the expected cost (fee plus slippage) of the order
        it wanted to send, in bps of its notional, and ``pass`` (worth its
        cost: on to the pre-trade checks) or ``blocked`` (not sent: edge <=
        cost_ratio x cost); NaN, NaN and ""
        when no gated order was considered (no trade, a reduction, the gate
        off, a strategy's own signal).
    """

    ts: int
    symbol: str
    strategy: str
    direction: int
    strength: float
    regime: str
    edge_bps: float = math.nan
    cost_bps: float = math.nan
    gate: str = ""


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """An online model's progressive-validation figures on one symbol (the ``model_metrics`` table).

    Parameters
    ----------
    ts
        The bar close of the last forecast scored, epoch ms.
    symbol, model
        The symbol and the strategy whose model it is (``online_model``).
    n
        Forecasts scored so far (each made before its bar's outcome was known).
    log_loss, accuracy, calibration_error
        Over those n: mean log loss, the share whose side was right, and the
        expected calibration error (10 equal-width probability bins).
    hit_rate_30d, mean_prob_30d
        Over the last 30 days of event time: the realised hit rate of the side
        forecast and the mean probability given to that side.
    drift
        1 when they differ by more than 15 points (with enough forecasts): the
        trading loop then halves the symbol's size; else 0.
    """

    ts: int
    symbol: str
    model: str
    n: int
    log_loss: float
    accuracy: float
    calibration_error: float
    hit_rate_30d: float
    mean_prob_30d: float
    drift: int


@dataclass(frozen=True, slots=True)
class StrategyUpdate:
    """An L4 (meta) decision about one strategy: its share of capital and why.

    Parameters
    ----------
    ts
        The finest bar close it was made at, epoch ms.
    strategy
        The strategy's name.
    share
        Its share of capital (the shares of a decision sum to 1).
    factor
        ``min(1, n * share)``: what its composite weight is multiplied by until the next decision.
    sharpe, drawdown
        Of its daily paper returns over the last ``levels.meta_days`` days.
    drift
        The share of the symbols it held that flagged drift since the last decision.
    days
        Days of track behind the figures.
    reason
        ``track``, ``warming up`` or ``no strategy earns`` (the last two: equal shares).
    """

    ts: int
    strategy: str
    share: float
    factor: float
    sharpe: float
    drawdown: float
    drift: float
    days: int
    reason: str


@dataclass(frozen=True, slots=True)
class Target:
    """An L3 (strategy) decision about one symbol: its regime, universe and exposure cap.

    Parameters
    ----------
    ts
        The finest bar close it was made at, epoch ms.
    symbol, regime
        The symbol and its regime then (``""`` while unknown).
    in_universe
        1 when it passed the liquidity filter, else 0.
    quote_volume
        Quote volume (close * volume) traded since the previous L3 decision.
    max_exposure
        The cap on the position's value as a share of equity until the next decision
        (never above ``risk.max_position_share``; 0 outside the universe).
    reason
        Why the cap is what it is, for a person.
    """

    ts: int
    symbol: str
    regime: str
    in_universe: int
    quote_volume: float
    max_exposure: float
    reason: str


@dataclass(frozen=True, slots=True)
class RiskEvent:
    """Something the risk engine saw or did: a breaker, a mode change, a denial.

    Parameters
    ----------
    kind
        What it is about, e.g. ``qvar_breaker``, ``dlri``, ``ers``,
        ``kill_switch``, ``mode``, ``stale_data``, ``pre_trade``, ``control``,
        ``execution``, ``strategy_error`` (a strategy raised or answered with
        no valid signal: it is muted, ``action`` ``mute``),
        ``model_calibration`` (an online model's calibration drifts: the
        symbol's size is halved, ``action`` ``half_size``; ``clear`` when it recovers); from the
        execution service's parts: ``venue`` (venue health), ``slippage``
        (execution quality), ``reconcile`` (start-up reconciliation).
    level
        Severity: 0 info or cleared, 1 warning, 2 caution, 3 emergency.
    symbol
        The symbol concerned, ``""`` for the portfolio.
    value, threshold
        The measured value and the limit it was compared with.
    action
        What was done (``none``, ``defensive``, ``flatten``, ``cut_25pct``,
        ``deny``, ``reduce``, ``pause``, ...).
    message
        For a person.
    """

    ts: int
    kind: str
    level: int
    symbol: str
    value: float
    threshold: float
    action: str
    message: str


@dataclass(frozen=True, slots=True)
class PortfolioState:
    """The trading loop's book after one grid step (the ``portfolio`` table).

    Parameters
    ----------
    ts
        The step's bar close, epoch ms.
    equity, cash
        Marked equity and cash, quote units.
    gross_exposure, net_exposure
        Sum of |position value| and of signed position value, quote units.
    leverage
        gross_exposure / equity.
    drawdown
        1 - equity / peak equity, in [0, 1].
    var95, es95
        The next step's VaR and ES of the positions held, quote units (loss
        > 0), from the ``features.var_model`` forecasts and the correlations.
    var95_horizon, es95_horizon
        The same over the risk horizon (``risk.qvar_horizon_s``).
    qvar95
        The seed's entropy-adjusted portfolio QVaR over the horizon, quote units.
    breaker_share
        The share of equity the breakers compared with their levels
        (``risk.breaker_metric``).
    breaker_level, mode
        The breaker level (0-3) and the engine's operating mode after the step.
    """

    ts: int
    equity: float
    cash: float
    gross_exposure: float
    net_exposure: float
    leverage: float
    drawdown: float
    var95: float
    es95: float
    var95_horizon: float
    es95_horizon: float
    qvar95: float
    breaker_share: float
    breaker_level: int
    mode: str


@dataclass(frozen=True, slots=True)
class Order:
    """An order sent to the execution sink; ids are deterministic.

    Parameters
    ----------
    order_id
        Unique and reproducible: the same run makes the same ids.
    parent_id
        The parent order of a TWAP child, ``""`` otherwise.
    side
        ``buy`` or ``sell``.
    qty
        Base-asset quantity, > 0.
    order_type
        ``market``, ``limit`` or ``stop``.
    limit_price
        Limit or stop price; 0.0 for market orders.
    reason
        Why: ``entry``, ``exit``, ``stop``, ``target``, ``flatten``, ``cut``, ``twap``, ...
    strategy
        The strategy behind it, ``risk`` for risk-engine orders.
    """

    ts: int
    order_id: str
    parent_id: str
    symbol: str
    side: str
    qty: float
    order_type: str
    limit_price: float
    reason: str
    strategy: str


@dataclass(frozen=True, slots=True)
class Fill:
    """An order's execution (one fill per order) with its costs.

    Parameters
    ----------
    price
        Execution price, slippage included.
    fee
        Fee in quote units.
    slippage_bps
        Slippage against the reference price, in basis points, positive when it
        cost us (the paper venue's is >= 0; a real venue's can be negative, a
        fill better than the last trade when the order went).
    """

    ts: int
    order_id: str
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    slippage_bps: float


# -- operator commands (the ``control`` topic) -----------------------------------

RESUME = "resume"
PAUSE = "pause"
FLATTEN = "flatten"
CONTROL_COMMANDS = (RESUME, PAUSE, FLATTEN)
"""What an operator may tell the trading loops and the execution service (``qbtc control``)."""


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    """An operator's command on the ``control`` topic, for every loop and execution service.

    Parameters
    ----------
    ts
        When it was issued, epoch ms UTC (the issuer's wall clock).
    command
        One of :data:`CONTROL_COMMANDS`: ``resume`` (lift a pause or a hold),
        ``pause`` (no new orders), ``flatten`` (close everything).
    reason
        Why, for the record; not empty.
    source
        Who issued it, e.g. ``user@host``.

    >>> OperatorCommand(0, "halt", "why", "me@here")
    Traceback (most recent call last):
    ...
    ValueError: unknown control command 'halt' (expected resume, pause, flatten)
    """

    ts: int
    command: str
    reason: str
    source: str

    def __post_init__(self) -> None:
        if self.command not in CONTROL_COMMANDS:
            msg = f"unknown control command {self.command!r} (expected {', '.join(CONTROL_COMMANDS)})"
            raise ValueError(msg)
        if not self.reason.strip():
            msg = "a control command needs a reason"
            raise ValueError(msg)


# -- the execution service -------------------------------------------------------

ACCEPTED = "accepted"
REJECTED = "rejected"
PARTIALLY_FILLED = "partially_filled"
FILLED = "filled"
CANCELLED = "cancelled"
EXPIRED = "expired"
EXTERNAL = "external"
WOULD_SEND = "would_send"
ORDER_EVENT_KINDS = (ACCEPTED, REJECTED, PARTIALLY_FILLED, FILLED, CANCELLED, EXPIRED, EXTERNAL, WOULD_SEND)
"""What happened to an order at the venue (see :class:`OrderEvent`)."""
FINAL_ORDER_EVENTS = (REJECTED, FILLED, CANCELLED, EXPIRED)
"""Kinds after which an order is no longer working."""


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """What the execution service learnt about one order at its venue.

    Parameters
    ----------
    ts
        When the service observed it, epoch ms UTC (its own clock).
    order_id
        Our client order id (the loop's deterministic ``Order.order_id``); for
        an ``external`` order, the venue's client id, ``""`` when it has none.
    venue_order_id
        The venue's id, ``""`` when there is none yet (dry runs, rejections
        before the venue answered).
    symbol, side
        As in the order.
    kind
        One of :data:`ORDER_EVENT_KINDS`: ``accepted``, ``rejected`` (``reason``
        says why), ``partially_filled``, ``filled``, ``cancelled``,
        ``expired``, ``external`` (an order at the venue that is not ours, found
        by reconciliation) or ``would_send`` (a dry run: recorded, not sent).
        Anything else is a schema error.
    qty
        The order's quantity.
    filled_qty
        Cumulative filled quantity at this event.
    price
        The order's limit or stop price, or the average fill price of a fill
        event; 0.0 when there is none.
    reason
        Text for a person; for ``rejected`` the reason (the service's limit or
        the venue's error), ``""`` when there is nothing to say.
    venue
        Where: ``paper``, ``ccxt:binance``, ...
    venue_ts
        The venue's timestamp of the event, epoch ms; 0 when it gave none.
    leaves_qty
        The quantity still working after this event (FIX ``LeavesQty``): 0.0
        once the order is final; for a TWAP or iceberg parent, what its
        children have not filled yet. Exact as the venue holds it, so a loop
        that mirrors the venue's working orders from events sizes against
        the same numbers.

    The store keys rows by (venue, order_id, venue_order_id, kind, filled_qty),
    not ``ts``: an event emitted again after a restart replaces the first.
    """

    ts: int
    order_id: str
    venue_order_id: str
    symbol: str
    side: str
    kind: str
    qty: float
    filled_qty: float
    price: float
    reason: str
    venue: str
    venue_ts: int
    leaves_qty: float

    def __post_init__(self) -> None:
        if self.kind not in ORDER_EVENT_KINDS:
            msg = f"unknown order event kind {self.kind!r}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A trading loop's sign of life, published with its orders (on the ``orders`` topic).

    The execution service's dead man's switch (``operators.execution.deadman``)
    times the gaps between heartbeats on its own clock, not by ``ts``.

    Parameters
    ----------
    ts
        When the loop sent it, epoch ms UTC (its clock: event time in a replay).
    source
        Who sent it, e.g. ``stream`` or a process id; one sequence per source.
    seq
        1, 2, 3, ... per source: a gap means a lost heartbeat.
    last_order_ts
        ``ts`` of the last order the source published before this heartbeat,
        0 when none yet (a lockstep consumer knows it has every order up to it).
    """

    ts: int
    source: str
    seq: int
    last_order_ts: int


@dataclass(frozen=True, slots=True)
class ExecutionQuality:
    """Expected against realised slippage of one fill.

    Parameters
    ----------
    ts
        The fill's ts, epoch ms.
    order_id, symbol, side, qty
        As in the fill.
    expected_slippage_bps
        What the cost model expected when the order was sent, bps (>= 0).
    realised_slippage_bps
        The fill price against ``reference_price``, bps, positive when it cost
        us (a buy above, a sell below the reference), negative when it gained.
    reference_price
        The last trade price when the order was sent.
    fill_price
        The fill's price.
    """

    ts: int
    order_id: str
    symbol: str
    side: str
    qty: float
    expected_slippage_bps: float
    realised_slippage_bps: float
    reference_price: float
    fill_price: float


# -- the loop's requests to an external venue (on the ``orders`` topic, beside orders) ---------


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """The loop asks the execution service to cancel a working order (or stop a TWAP parent).

    Parameters
    ----------
    ts
        The loop's decision time, epoch ms (event time in a replay).
    order_id
        The client order id to cancel.
    symbol
        Its symbol (the message's key: it travels in the order's partition, after it).
    """

    ts: int
    order_id: str
    symbol: str


@dataclass(frozen=True, slots=True)
class Protection:
    """The loop asks the execution service to protect a position with a stop and/or a target.

    The service works it (the venue need not support stops): when a trade
    reaches a level, it sends a market exit of the protected quantity.

    Parameters
    ----------
    ts
        From when it applies, epoch ms.
    symbol
        The position's symbol.
    position_qty
        The position to protect, signed (> 0 long); 0.0 clears the protection.
    stop, target
        The levels, 0.0 for none (both 0.0 clear it).
    """

    ts: int
    symbol: str
    position_qty: float
    stop: float
    target: float


@dataclass(frozen=True, slots=True)
class VenueBar:
    """A bar the loop hands to a lockstep paper venue, with what the in-process venue would get.

    Only ``qbtc stream --execution external --lockstep`` publishes these (on
    the ``orders`` topic): the paper service then fills on exactly the bars
    and context the loop saw, so orders and fills equal an in-process backtest.

    Parameters
    ----------
    step
        The grid step (``ts // bar_interval_ms``).
    symbol, ts, open, high, low, close, volume, vwap, trades
        The bar (as :class:`Bar`).
    normalised_vol
        The symbol's volatility over its reference volatility at the loop (1.0 when unknown).
    """

    step: int
    symbol: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    trades: int
    normalised_vol: float


LOOP_MARK = "loop"
VENUE_MARK = "venue"
LOOP_END = "loop_end"
VENUE_END = "venue_end"


@dataclass(frozen=True, slots=True)
class StepMark:
    """A lockstep barrier, written to every partition of a topic.

    ``kind`` ``loop`` (on ``orders``): the loop has published everything it
    decided before step ``step`` and the step's :class:`VenueBar` records.
    ``kind`` ``venue`` (on ``fills`` and ``order-events``): the venue has
    published everything the bars of step ``step`` did.

    The end of a free-running loop's bounded run: ``kind`` ``loop_end`` (on
    partition ``step`` of ``orders``): the loop has sent everything; ``kind``
    ``venue_end`` (on every partition of ``fills`` and ``order-events``, with
    the loop's ``source`` and the ``step`` it answers): the service has handled
    all that came before that mark and published what it did (the exits of
    protections already crossed included).

    Parameters
    ----------
    ts
        The step's bar open time, epoch ms.
    source
        Who wrote it (the loop's or the service's name).
    kind
        ``loop``, ``venue``, ``loop_end`` or ``venue_end``.
    step
        The grid step (for the end marks: the ``orders`` partition).
    """

    ts: int
    source: str
    kind: str
    step: int

    def __post_init__(self) -> None:
        if self.kind not in (LOOP_MARK, VENUE_MARK, LOOP_END, VENUE_END):
            msg = f"unknown step mark kind {self.kind!r}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class StressResult:
    """One ``qbtc stress`` run (the ``stress`` table: one wide row per run).

    Losses are positive, quote units; ``*_share`` are fractions of ``equity``.

    Parameters
    ----------
    run_id
        Deterministic from the inputs (returns, book, equity, settings, seed):
        the same run stored again replaces its row.
    ts
        Close time of the last bar of the history (the horizon starts there), epoch ms.
    method
        ``fhs`` or ``t_copula``.
    scenarios, horizon_bars, bar_ms, seed
        The simulation's size, horizon, bar interval and seed.
    history_bars
        Bars of returns the residuals came from.
    positions
        The book: ``SYMBOL=value`` (signed quote units), comma-separated.
    equity
        The equity stressed.
    dof
        The t-copula's degrees of freedom (NaN for ``fhs``; inf: Gaussian).
    var95, es95, var99, es99, worst
        VaR, ES and the largest loss over the horizon.
    var95_share, es95_share, var99_share, es99_share, worst_share
        The same over equity.
    mean_pnl, p_loss
        Mean P&L and the share of losing scenarios.
    p_kill_drawdown, p_kill_daily_loss, p_kill_weekly_loss, p_kill_monthly_loss, p_kill_any
        Probability that each kill-switch trigger (any of them) fires within the horizon.
    recovery_mean_bars, recovery_unrecovered, recovery_cap_bars
        Mean bars to recover a horizon loss among the scenarios that recover
        within the cap, and the share of losing scenarios that do not.
    """

    run_id: str
    ts: int
    method: str
    scenarios: int
    horizon_bars: int
    bar_ms: int
    seed: int
    history_bars: int
    positions: str
    equity: float
    dof: float
    var95: float
    es95: float
    var99: float
    es99: float
    worst: float
    var95_share: float
    es95_share: float
    var99_share: float
    es99_share: float
    worst_share: float
    mean_pnl: float
    p_loss: float
    p_kill_drawdown: float
    p_kill_daily_loss: float
    p_kill_weekly_loss: float
    p_kill_monthly_loss: float
    p_kill_any: float
    recovery_mean_bars: float
    recovery_unrecovered: float
    recovery_cap_bars: int
