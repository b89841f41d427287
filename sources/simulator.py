"""Seeded synthetic crypto market: correlated trade prints for runs and benchmarks.

The model, per fixed time slab of :data:`SLAB_S` seconds:

* a hidden regime (calm / normal / stressed) follows a Markov chain on
  1-second steps, and a log-volatility follows an AR(1) on the same steps;
  their product scales every symbol's volatility;
* a market index moves on a 10 ms grid (Gaussian steps plus compound-Poisson
  jumps whose rate, mean and spread depend on the regime: rare and symmetric
  when calm, frequent and negatively skewed under stress);
* each symbol's log price is ``beta * index + idiosyncratic`` (one-factor
  model), the idiosyncratic part a Brownian motion on the same volatility
  clock, sampled exactly at the symbol's trade times;
* trades arrive per symbol as a Poisson process whose rate grows with the
  symbol's liquidity weight and with volatility;
* the taker side follows the sign of the move since the symbol's previous
  trade (plus noise); buys print at the tick above the efficient price, sells
  at the tick below (a one-tick spread);
* notionals are lognormal (heavy-tailed), turned into a quantity in whole lots.

Random numbers are drawn slab by slab from one ``Generator(PCG64(seed))`` in
a fixed order, so the output does not depend on ``chunk_ticks`` and a shorter
run is a prefix of a longer one with the same settings.

>>> settings = SimulatorSettings(symbols=("BTC/USDT", "ETH/USDT"), duration_s=10, trades_per_s=200)
>>> chunks = list(simulate(settings, chunk_ticks=500))
>>> ticks = [tc for chunk in chunks for tc in chunk]
>>> sorted({tc.symbol for tc in ticks})
['BTC/USDT', 'ETH/USDT']
>>> 1500 < sum(len(tc) for tc in ticks) < 2500
True
>>> first = next(iter_ticks(settings))
>>> first.exchange, first.side in ("buy", "sell"), first.price > 0
('sim', True, True)
"""

from __future__ import annotations

import gzip as gzip_module
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from schemas.records import Tick
from schemas.tick_columns import SIDE_CODES, SIDES, TickColumns
from schemas.validation import MAX_SYMBOL_LEN, MAX_TS

ORIGIN = "simulator"
"""The ``origin`` of every simulated :class:`TickColumns`."""
SLAB_S = 4
"""Seconds generated per step; fixed so the random stream ignores chunk sizes."""
FACTOR_STEP_MS = 10
"""Resolution of the market index path."""
SECONDS_PER_YEAR = 365 * 86_400
REGIMES = ("calm", "normal", "stressed")
CSV_HEADER = b"ts,symbol,price,qty,side,trade_id,exchange\n"
_BUY = SIDE_CODES["buy"]
_SELL = SIDE_CODES["sell"]
_EXACT = 2.0**53
_LOG_VOL_LIMIT = 4.0

DEFAULT_PROFILES: dict[str, tuple[float, float, float, float]] = {
    # symbol: (start price, annual volatility, correlation to market, liquidity weight)
    "BTC/USDT": (37_000.0, 0.55, 0.85, 0.30),
    "ETH/USDT": (2_000.0, 0.65, 0.80, 0.20),
    "SOL/USDT": (60.0, 0.95, 0.70, 0.10),
    "BNB/USDT": (240.0, 0.60, 0.65, 0.08),
    "XRP/USDT": (0.6, 0.80, 0.60, 0.08),
    "DOGE/USDT": (0.075, 0.90, 0.60, 0.07),
    "ADA/USDT": (0.37, 0.85, 0.65, 0.05),
    "AVAX/USDT": (14.0, 1.00, 0.65, 0.04),
    "LINK/USDT": (14.5, 0.90, 0.65, 0.04),
    "LTC/USDT": (70.0, 0.75, 0.65, 0.04),
}
"""Per-symbol defaults; symbols not listed get :data:`GENERIC_PROFILE`."""
GENERIC_PROFILE = (100.0, 0.80, 0.60, 0.05)
DEFAULT_SYMBOLS = tuple(DEFAULT_PROFILES)


def _floats(name: str, values: Sequence[float], size: int) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    _check(len(out) == size, f"{name} needs {size} numbers, got {values!r}")
    _check(all(math.isfinite(v) for v in out), f"{name} must be finite, got {values!r}")
    return out


_PER_SYMBOL = ("start_prices", "volatility", "market_correlation", "liquidity")
_PER_REGIME = ("regime_volatility", "jump_rate", "jump_mean", "jump_sd")
_BOUNDS: dict[str, tuple[str, float, float]] = {
    # name: (interval brackets, low, high)
    "start_prices": ("()", 0, math.inf),
    "volatility": ("(]", 0, 10),
    "market_correlation": ("[)", 0, 1),
    "liquidity": ("()", 0, math.inf),
    "seed": ("[)", 0, math.inf),
    "start_ms": ("[]", 0, MAX_TS),
    "duration_s": ("[)", 0.001, math.inf),
    "trades_per_s": ("()", 0, math.inf),
    "market_volatility": ("(]", 0, 10),
    "regime_volatility": ("(]", 0, 20),
    "initial_regime": ("[]", 0, 2),
    "vol_of_vol": ("[]", 0, 1),
    "vol_mean_reversion": ("(]", 0, 1),
    "jump_rate": ("[]", 0, 10),
    "jump_mean": ("[]", -0.2, 0.2),
    "jump_sd": ("[]", 0, 0.2),
    "activity_elasticity": ("[]", 0, 4),
    "side_noise": ("[)", 0, math.inf),
    "median_notional": ("()", 0, math.inf),
    "notional_sigma": ("[]", 0, 4),
    "price_digits": ("[]", 1, 12),
    "lot_notional": ("()", 0, math.inf),
}
"""Allowed range of each numeric setting (of every element, for tuples)."""


def _bounded(name: str, value: object, interval: str, low: float, high: float) -> None:
    items = value if isinstance(value, tuple) else (value,)
    ok = all(
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and (low < v if interval[0] == "(" else low <= v)
        and (v < high if interval[1] == ")" else v <= high)
        for v in items
    )
    _check(ok, f"{name} must be in {interval[0]}{low}, {high}{interval[1]}, got {value!r}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _plain_text(name: str, value: str) -> None:
    _check(
        isinstance(value, str)
        and 0 < len(value) <= MAX_SYMBOL_LEN
        and value.isprintable()
        and not any(c in value for c in ',"'),
        f"{name} must be 1..{MAX_SYMBOL_LEN} printable characters without comma or quote, got {value!r}",
    )


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """What to simulate; validated at construction.

    Parameters
    ----------
    symbols
        ccxt-style symbols, distinct.
    seed
        Seed of the ``PCG64`` generator, >= 0.
    start_ms, duration_s
        First event time (epoch ms UTC) and length of the run in seconds.
    trades_per_s
        Mean total trade rate over all symbols.
    exchange
        The ``exchange`` field of every tick.
    start_prices, volatility, market_correlation, liquidity
        Per symbol: first efficient price, annualised volatility, correlation
        with the market index (in [0, 1)) and trade-rate weight. None takes
        :data:`DEFAULT_PROFILES` (or :data:`GENERIC_PROFILE`).
    market_volatility
        Annualised volatility of the market index in the normal regime.
    regime_volatility
        Volatility multiplier in the calm, normal and stressed regimes.
    regime_transitions
        Per-second transition probabilities between regimes (rows sum to 1).
    initial_regime
        Index into :data:`REGIMES` of the first second.
    vol_of_vol, vol_mean_reversion
        AR(1) log-volatility: ``h' = (1 - vol_mean_reversion) * h + vol_of_vol * z``
        per second, clipped to [-4, 4].
    jump_rate, jump_mean, jump_sd
        Per regime: index jumps per second and the mean and spread of their log size.
    activity_elasticity
        Trade rates scale with ``volatility_multiplier ** activity_elasticity``.
    side_noise
        Spread of the noise between the move since a symbol's last trade and the
        taker side, relative to that move's standard deviation (0: side = sign of move).
    median_notional, notional_sigma
        Lognormal trade notional in quote currency: median and log spread.
    price_digits
        Significant digits of prices: tick = 10 ** (floor(log10(start price)) - price_digits).
    lot_notional
        Lot = the power of ten at or below ``lot_notional / start price``.
    """

    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    seed: int = 7
    start_ms: int = 1_700_000_000_000
    duration_s: float = 900.0
    trades_per_s: float = 2000.0
    exchange: str = "sim"
    start_prices: tuple[float, ...] | None = None
    volatility: tuple[float, ...] | None = None
    market_correlation: tuple[float, ...] | None = None
    liquidity: tuple[float, ...] | None = None
    market_volatility: float = 0.6
    regime_volatility: tuple[float, float, float] = (0.6, 1.0, 2.2)
    regime_transitions: tuple[tuple[float, float, float], ...] = (
        (0.996, 0.004, 0.0),
        (0.002, 0.997, 0.001),
        (0.0, 0.01, 0.99),
    )
    initial_regime: int = 1
    vol_of_vol: float = 0.08
    vol_mean_reversion: float = 0.02
    jump_rate: tuple[float, float, float] = (0.0005, 0.002, 0.01)
    jump_mean: tuple[float, float, float] = (0.0, 0.0, -0.0015)
    jump_sd: tuple[float, float, float] = (0.0008, 0.0008, 0.002)
    activity_elasticity: float = 0.5
    side_noise: float = 1.0
    median_notional: float = 200.0
    notional_sigma: float = 1.5
    price_digits: int = 5
    lot_notional: float = 1.0

    def __post_init__(self) -> None:
        symbols = self.symbols
        _check(
            isinstance(symbols, (tuple, list)) and len(symbols) > 0,
            f"symbols must be a non-empty tuple, got {symbols!r}",
        )
        symbols = tuple(symbols)
        for symbol in symbols:
            _plain_text("symbol", symbol)
        _check(len(set(symbols)) == len(symbols), f"symbols must be distinct, got {symbols}")
        object.__setattr__(self, "symbols", symbols)
        _plain_text("exchange", self.exchange)
        profiles = [DEFAULT_PROFILES.get(s, GENERIC_PROFILE) for s in symbols]
        for column, name in enumerate(_PER_SYMBOL):
            given = getattr(self, name)
            values = tuple(p[column] for p in profiles) if given is None else given
            object.__setattr__(self, name, _floats(name, values, len(symbols)))
        for name in _PER_REGIME:
            object.__setattr__(self, name, _floats(name, getattr(self, name), 3))
        for name in ("seed", "start_ms", "price_digits", "initial_regime"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool),
                f"{name} must be an int, got {value!r}",
            )
        for name, (interval, low, high) in _BOUNDS.items():
            _bounded(name, getattr(self, name), interval, low, high)
        _check(
            self.start_ms + self.duration_s * 1000 <= MAX_TS,
            f"the run must end by 2200, got start_ms {self.start_ms} and duration_s {self.duration_s}",
        )
        transitions = self.regime_transitions
        _check(
            isinstance(transitions, (tuple, list)) and len(transitions) == 3,
            f"regime_transitions must be 3 rows, got {transitions!r}",
        )
        rows = tuple(_floats("regime_transitions row", row, 3) for row in transitions)
        for row in rows:
            _check(
                all(p >= 0 for p in row) and abs(sum(row) - 1) < 1e-9,
                f"each regime_transitions row must be probabilities summing to 1, got {row}",
            )
        object.__setattr__(self, "regime_transitions", rows)

    @property
    def end_ms(self) -> int:
        """First epoch ms after the run."""
        return self.start_ms + round(self.duration_s * 1000)


def _decimal_grid(step_exponent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, divisor) with ``k * mul / div`` the exact double nearest ``k * 10**e``."""
    mul = np.where(step_exponent >= 0, 10.0 ** np.maximum(step_exponent, 0), 1.0)
    div = np.where(step_exponent < 0, 10.0 ** np.maximum(-step_exponent, 0), 1.0)
    return mul, div


class _Model:
    """Per-run constants derived from the settings, per symbol or per regime as arrays."""

    def __init__(self, s: SimulatorSettings) -> None:
        per_s = 1 / math.sqrt(SECONDS_PER_YEAR)
        vol = np.asarray(s.volatility) * per_s
        rho = np.asarray(s.market_correlation)
        self.beta = rho * np.asarray(s.volatility) / s.market_volatility
        self.idio_sd = vol * np.sqrt(1 - rho**2)
        self.side_sd = vol * s.side_noise
        self.index_cell_sd = s.market_volatility * per_s * math.sqrt(FACTOR_STEP_MS / 1000)
        self.log_start = np.log(np.asarray(s.start_prices))
        self.regime_volatility = np.asarray(s.regime_volatility)
        self.jump_rate = np.asarray(s.jump_rate)
        self.jump_mean = np.asarray(s.jump_mean)
        self.jump_sd = np.asarray(s.jump_sd)
        self.transition_cdf = [np.cumsum(row).tolist() for row in s.regime_transitions]
        self.log_vol_keep = 1 - s.vol_mean_reversion
        self.vol_of_vol = s.vol_of_vol
        self.elasticity = s.activity_elasticity
        self.log_median_notional = math.log(s.median_notional)
        self.notional_sigma = s.notional_sigma

        # Long-run mean of multiplier ** elasticity, so the expected total trade rate is
        # trades_per_s: the regime law reached from the first regime, averaged over six
        # steps so periodic chains work too.
        matrix = np.asarray(s.regime_transitions)
        law = np.linalg.matrix_power(matrix, 1 << 20)[s.initial_regime]
        long_run = np.zeros(3)
        for _ in range(6):
            long_run += law / 6
            law = law @ matrix
        keep = 1 - s.vol_mean_reversion
        log_vol_var = s.vol_of_vol**2 / max(1 - keep**2, 1e-12)
        e = s.activity_elasticity
        norm = float(long_run @ self.regime_volatility**e) * math.exp(e * e * log_vol_var / 2)
        weights = np.asarray(s.liquidity) / sum(s.liquidity)
        self.rate = s.trades_per_s * weights / norm

        price_exponent = np.floor(np.log10(s.start_prices)).astype(np.int64) - s.price_digits
        self.price_mul, self.price_div = _decimal_grid(price_exponent)
        lot_exponent = np.floor(np.log10(s.lot_notional / np.asarray(s.start_prices))).astype(np.int64)
        self.lot_mul, self.lot_div = _decimal_grid(lot_exponent)


class _State:
    """What carries from one slab to the next."""

    __slots__ = ("clock", "idio", "index", "last_clock", "last_index", "log_vol", "next_id", "regime")

    def __init__(self, n_symbols: int, regime: int) -> None:
        self.regime = regime
        self.log_vol = 0.0
        self.index = 0.0
        self.clock = 0.0  # integrated squared volatility multiplier, in seconds
        self.last_clock = np.zeros(n_symbols)
        self.last_index = np.zeros(n_symbols)
        self.idio = np.zeros(n_symbols)
        self.next_id = np.ones(n_symbols, dtype=np.int64)


class _Batch(NamedTuple):
    """Ticks of all symbols merged in time order (ties: symbol index, then trade id)."""

    ts: np.ndarray
    symbol: np.ndarray
    price: np.ndarray
    qty: np.ndarray
    side: np.ndarray
    trade_id: np.ndarray

    def cut(self, start: int, stop: int) -> _Batch:
        return _Batch(*(column[start:stop] for column in self))

    @staticmethod
    def join(batches: list[_Batch]) -> _Batch:
        if len(batches) == 1:
            return batches[0]
        return _Batch(*(np.concatenate(parts) for parts in zip(*batches, strict=True)))


def _hidden_path(
    m: _Model, st: _State, rng: np.random.Generator, seconds: int
) -> tuple[np.ndarray, np.ndarray]:
    """Regime index and volatility multiplier of each second of a slab."""
    uniforms = rng.random(seconds).tolist()
    shocks = rng.standard_normal(seconds).tolist()
    regimes = np.empty(seconds, dtype=np.intp)
    log_vols = np.empty(seconds)
    regime, log_vol, cdf = st.regime, st.log_vol, m.transition_cdf
    keep, vol_of_vol = m.log_vol_keep, m.vol_of_vol
    for second in range(seconds):
        row, u = cdf[regime], uniforms[second]
        regime = 0 if u < row[0] else (1 if u < row[1] else 2)
        log_vol = min(max(keep * log_vol + vol_of_vol * shocks[second], -_LOG_VOL_LIMIT), _LOG_VOL_LIMIT)
        regimes[second] = regime
        log_vols[second] = log_vol
    st.regime, st.log_vol = regime, log_vol
    return regimes, m.regime_volatility[regimes] * np.exp(log_vols)


def _index_path(
    m: _Model, st: _State, rng: np.random.Generator, regimes: np.ndarray, multiplier: np.ndarray
) -> np.ndarray:
    """Market index log level at the end of each 10 ms cell of a slab, jumps included."""
    seconds = len(regimes)
    cells_per_s = 1000 // FACTOR_STEP_MS
    n_cells = seconds * cells_per_s
    jumps = rng.poisson(m.jump_rate[regimes])
    n_jumps = int(jumps.sum())
    steps = rng.standard_normal(n_cells)
    steps *= np.repeat(multiplier * m.index_cell_sd, cells_per_s)
    if n_jumps:
        jump_second = np.repeat(np.arange(seconds), jumps)
        jump_ms = jump_second * 1000 + rng.integers(0, 1000, n_jumps)
        jump_regime = regimes[jump_second]
        sizes = m.jump_mean[jump_regime] + m.jump_sd[jump_regime] * rng.standard_normal(n_jumps)
        steps += np.bincount(jump_ms // FACTOR_STEP_MS, weights=sizes, minlength=n_cells)
    path = np.cumsum(steps)
    path += st.index
    st.index = float(path[-1])
    return path


def _slab(m: _Model, st: _State, rng: np.random.Generator, slab_start_ms: int) -> _Batch:
    """All trades of the :data:`SLAB_S` seconds from ``slab_start_ms``, merged in time order."""
    seconds = SLAB_S
    span = seconds * 1000
    n_symbols = len(m.rate)
    regimes, multiplier = _hidden_path(m, st, rng, seconds)
    index_path = _index_path(m, st, rng, regimes, multiplier)
    clock_speed = multiplier**2
    clock_at_second = np.cumsum(clock_speed) - clock_speed + st.clock

    # Arrivals: Poisson counts per (symbol, second), uniform ms inside the second,
    # laid out symbol-major and time-sorted by one sort of a combined key.
    counts = rng.poisson(np.outer(m.rate, multiplier**m.elasticity))
    per_symbol = counts.sum(axis=1)
    n = int(per_symbol.sum())
    base = (np.arange(n_symbols)[:, None] * span + np.arange(seconds)[None, :] * 1000).ravel()
    key = np.repeat(base, counts.ravel()) + rng.integers(0, 1000, n)
    key.sort()
    symbol = key // span
    t = key - symbol * span
    starts = np.cumsum(per_symbol) - per_symbol
    present = per_symbol > 0
    first = starts[present]

    second = t // 1000
    clock = clock_at_second[second] + clock_speed[second] * ((t - second * 1000) * 1e-3)
    index = index_path[t // FACTOR_STEP_MS]
    prev_clock = np.empty(n)
    prev_clock[1:] = clock[:-1]
    prev_clock[first] = st.last_clock[present]
    prev_index = np.empty(n)
    prev_index[1:] = index[:-1]
    prev_index[first] = st.last_index[present]
    root = np.sqrt(np.maximum(clock - prev_clock, 0.0))

    idio_step = m.idio_sd[symbol] * root * rng.standard_normal(n)
    beta = m.beta[symbol]
    move = beta * (index - prev_index) + idio_step
    running = np.cumsum(idio_step)
    before = np.concatenate(([0.0], running))[starts]
    idio = running - np.repeat(before - st.idio, per_symbol)

    noise = (m.side_sd[symbol] * root + 1e-300) * rng.standard_normal(n)
    buy = move + noise > 0
    # Whole numbers of ticks and lots, at most 2**53, so prices and sizes are exact
    # decimals, finite and > 0 even under extreme settings.
    price_mul, price_div = m.price_mul[symbol], m.price_div[symbol]
    with np.errstate(over="ignore", under="ignore"):
        efficient = np.exp(m.log_start[symbol] + beta * index + idio) * (price_div / price_mul)
        tick_count = np.clip(np.where(buy, np.ceil(efficient), np.floor(efficient)), 1.0, _EXACT)
        price = tick_count * price_mul / price_div
        notional = np.exp(m.log_median_notional + m.notional_sigma * rng.standard_normal(n))
        lot_mul, lot_div = m.lot_mul[symbol], m.lot_div[symbol]
        lot_count = np.clip(np.rint(notional / price * (lot_div / lot_mul)), 1.0, _EXACT)
    qty = lot_count * lot_mul / lot_div

    side = np.where(buy, np.int8(_BUY), np.int8(_SELL))
    trade_id = np.arange(n, dtype=np.int64) - np.repeat(starts, per_symbol) + st.next_id[symbol]

    last = (starts + per_symbol - 1)[present]
    st.last_clock[present] = clock[last]
    st.last_index[present] = index[last]
    st.idio[present] = idio[last]
    st.next_id += per_symbol
    st.clock = float(clock_at_second[-1] + clock_speed[-1])

    order = np.argsort(t * n_symbols + symbol, kind="stable")
    return _Batch(
        (t + slab_start_ms)[order],
        symbol[order].astype(np.int32),
        price[order],
        qty[order],
        side[order],
        trade_id[order],
    )


def _batches(settings: SimulatorSettings) -> Iterator[_Batch]:
    """The run slab by slab, the last slab cut at ``settings.end_ms``."""
    model = _Model(settings)
    state = _State(len(settings.symbols), settings.initial_regime)
    rng = np.random.Generator(np.random.PCG64(settings.seed))
    end_ms = settings.end_ms
    for slab_start in range(settings.start_ms, end_ms, SLAB_S * 1000):
        batch = _slab(model, state, rng, slab_start)
        if slab_start + SLAB_S * 1000 > end_ms:
            batch = batch.cut(0, int(np.searchsorted(batch.ts, end_ms)))
        if len(batch.ts):
            yield batch


def _merged_chunks(settings: SimulatorSettings, chunk_ticks: int) -> Iterator[tuple[int, _Batch]]:
    """(arrival of the first tick, batch) of exactly ``chunk_ticks`` ticks, the last one shorter."""
    pending: list[_Batch] = []
    pending_ticks = 0
    arrival = 0
    for batch in _batches(settings):
        pending.append(batch)
        pending_ticks += len(batch.ts)
        if pending_ticks < chunk_ticks:
            continue
        joined = _Batch.join(pending)
        start = 0
        while pending_ticks - start >= chunk_ticks:
            yield arrival, joined.cut(start, start + chunk_ticks)
            arrival += chunk_ticks
            start += chunk_ticks
        pending = [joined.cut(start, pending_ticks)]
        pending_ticks -= start
    if pending_ticks:
        yield arrival, _Batch.join(pending)


def simulate(settings: SimulatorSettings, chunk_ticks: int = 65536) -> Iterator[list[TickColumns]]:
    """The simulated ticks as chunks of about ``chunk_ticks`` ticks over all symbols.

    Parameters
    ----------
    settings
        What to simulate.
    chunk_ticks
        Ticks per chunk (the last chunk may be shorter); the ticks themselves
        do not depend on it.

    Yields
    ------
    list[TickColumns]
        One :class:`TickColumns` per symbol with ticks in the chunk's time span,
        in symbol order. ``arrival`` numbers the ticks of the merged stream
        from 0 in time order; ``trade_id`` counts ``"1"``, ``"2"``, ... per symbol.

    >>> settings = SimulatorSettings(symbols=("BTC/USDT",), duration_s=2, trades_per_s=50)
    >>> columns = next(simulate(settings))[0]
    >>> columns.symbol, columns.origin, columns.trade_id[:3].tolist(), columns.arrival[:3].tolist()
    ('BTC/USDT', 'simulator', ['1', '2', '3'], [0, 1, 2])
    """
    _check(
        isinstance(chunk_ticks, int) and not isinstance(chunk_ticks, bool) and chunk_ticks >= 1,
        f"chunk_ticks must be an int >= 1, got {chunk_ticks!r}",
    )
    return _column_chunks(settings, chunk_ticks)


def _column_chunks(settings: SimulatorSettings, chunk_ticks: int) -> Iterator[list[TickColumns]]:
    symbols = settings.symbols
    exchange = settings.exchange
    for arrival, batch in _merged_chunks(settings, chunk_ticks):
        order = np.argsort(batch.symbol, kind="stable")
        counts = np.bincount(batch.symbol, minlength=len(symbols)).tolist()
        chunk: list[TickColumns] = []
        start = 0
        for code, count in enumerate(counts):
            if not count:
                continue
            rows = order[start : start + count]
            start += count
            exchanges = np.empty(count, dtype=object)
            exchanges.fill(exchange)
            trade_ids = np.empty(count, dtype=object)
            first_id = int(batch.trade_id[rows[0]])
            trade_ids[:] = list(map(str, range(first_id, first_id + count)))
            chunk.append(
                TickColumns(
                    symbols[code],
                    batch.ts[rows],
                    batch.price[rows],
                    batch.qty[rows],
                    batch.side[rows],
                    trade_ids,
                    exchanges,
                    ORIGIN,
                    rows.astype(np.int64) + arrival,
                )
            )
        yield chunk


def iter_ticks(settings: SimulatorSettings) -> Iterator[Tick]:
    """The simulated ticks one :class:`Tick` at a time, in time order (slow; tests and small runs).

    >>> ticks = list(iter_ticks(SimulatorSettings(symbols=("ETH/USDT",), duration_s=1, trades_per_s=20)))
    >>> all(a.ts <= b.ts for a, b in zip(ticks, ticks[1:]))
    True
    """
    symbols = settings.symbols
    exchange = settings.exchange
    for _, batch in _merged_chunks(settings, 65536):
        for ts, code, price, qty, side, trade_id in zip(*(c.tolist() for c in batch), strict=True):
            yield Tick(ts, symbols[code], price, qty, SIDES[side], str(trade_id), exchange)


def _csv_block(batch: _Batch, symbol_names: pa.Array, side_names: pa.Array, exchange: pa.Array) -> pa.Buffer:
    table = pa.table(
        {
            "ts": batch.ts,
            "symbol": symbol_names.take(batch.symbol),
            "price": batch.price,
            "qty": batch.qty,
            "side": side_names.take(batch.side),
            "trade_id": batch.trade_id,
            "exchange": exchange.take(np.zeros(len(batch.ts), dtype=np.int8)),
        }
    )
    sink = pa.BufferOutputStream()
    # Arrow writes doubles in shortest round-trip form, so readers get the exact floats back.
    pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
    return sink.getvalue()


def write_csv(
    path: str | PathLike[str],
    settings: SimulatorSettings,
    gzip: bool | None = None,
    compresslevel: int = 1,
) -> int:
    """Write the simulated ticks to a canonical tick CSV, merged in time order.

    Parameters
    ----------
    path
        Target file, overwritten.
    settings
        What to simulate.
    gzip
        Compress with gzip; None: when ``path`` ends with ``.gz``.
    compresslevel
        gzip level, 1 (fast) .. 9 (small). The gzip header carries neither time
        nor file name, so the same settings give the same bytes.

    Returns
    -------
    int
        Rows written (the header not counted).

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = pathlib.Path(folder, "ticks.csv")
    ...     rows = write_csv(target, SimulatorSettings(duration_s=1, trades_per_s=50))
    ...     lines = target.read_text().splitlines()
    >>> rows == len(lines) - 1 > 0, lines[0]
    (True, 'ts,symbol,price,qty,side,trade_id,exchange')
    """
    name = str(path)
    if gzip is None:
        gzip = name.endswith(".gz")
    if not 1 <= compresslevel <= 9:
        msg = f"compresslevel must be in 1..9, got {compresslevel!r}"
        raise ValueError(msg)
    symbol_names = pa.array(settings.symbols, pa.string())
    side_names = pa.array(SIDES, pa.string())
    exchange = pa.array([settings.exchange], pa.string())
    rows = 0
    with open(name, "wb") as raw:
        out = gzip_module.GzipFile("", "wb", compresslevel, raw, mtime=0) if gzip else raw
        try:
            out.write(CSV_HEADER)
            for _, batch in _merged_chunks(settings, 65536):
                out.write(_csv_block(batch, symbol_names, side_names, exchange))
                rows += len(batch.ts)
        finally:
            if out is not raw:
                out.close()
    return rows
