"""What the dataflow's steps pass each other, by name.

    read ─ Chunk ─ event_time ─ Routed ─┬─ SymbolInput ─ bars_features ─ SymbolOut ─┬─ StoreRows ─ store
                                        └─ StoreRows (dead letters) ──── store      └─ SymbolProgress
    SymbolProgress ─ correlations ─ GridOut ─┬─ StoreRows (correlations) ─ store
                                             └─ GridStep ─ trading ─ StoreRows (signals, orders, ...) ─ store

Each step's output is one named record whose fields are its output streams;
the flow splits them by field (``Bytewax``'s ``KafkaOpOut(oks, errs)``
pattern), never by a string tag. Only the store sink takes a table name,
because that is where the rows go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from schemas.correlation_rows import CorrelationRows
from schemas.records import Bar, DeadLetter, Feature
from schemas.tick_columns import TickColumns


class StoreRows(NamedTuple):
    """Rows for one table of the store (the sinks take these)."""

    table: str
    rows: object


@dataclass(frozen=True, slots=True)
class BarBatch:
    """Finished bars of one symbol from a candle input, and the source of each (its first candle)."""

    bars: list[Bar]
    sources: list[str]


@dataclass(frozen=True, slots=True)
class SymbolInput:
    """One symbol's ticks (or candle bars) of a chunk, and every symbol of that chunk (``peers``)."""

    batch: TickColumns | BarBatch
    peers: tuple[str, ...]
    final: bool = False
    """Made by the end of a bounded read (held ticks released), not by new input."""


@dataclass(frozen=True, slots=True)
class Routed:
    """The event-time step's output for one symbol (``symbol`` "" for dead letters only)."""

    symbol: str
    input: SymbolInput | None = None
    dead: list[DeadLetter] | None = None


@dataclass(frozen=True, slots=True)
class TradeInput:
    """A symbol's newly closed bars, their feature rows and the backtest rows of its VaR
    forecasts made with them (``var_backtests``), for the trading loop."""

    bars: list[Bar]
    features: list[Feature]
    backtests: tuple = ()
    coarse: tuple = ()
    """The bars and feature rows of the coarser resolutions that closed with them (each stamped
    with its ``interval``), finest first."""


@dataclass(frozen=True, slots=True)
class SymbolProgress:
    """How far a symbol's bars are final, for the correlation grid.

    ``closes`` are (grid step, close) of the bars just closed;
    ``closed_through`` the last step that can no longer change; ``peers``
    the symbols read in the same chunk; ``trade`` the bars and features when
    the run trades.
    """

    symbol: str
    closes: list[tuple[int, float]]
    closed_through: int | None
    peers: tuple[str, ...]
    trade: TradeInput | None = None
    final: bool = False
    """Made by the end of a bounded read (open bars closed), not by new input."""
    coarse: tuple[tuple[list[tuple[int, float]], int], ...] = ()
    """(closes, closed_through) at each coarser resolution, finest first (``features.bar_intervals``)."""


@dataclass(frozen=True, slots=True)
class SymbolOut:
    """The bars-and-features step's output: rows to store, and its progress."""

    rows: tuple[StoreRows, ...] = ()
    progress: SymbolProgress | None = None


@dataclass(frozen=True, slots=True)
class GridStep:
    """What the trading loop needs from a batch of the grid step, in the grid's order.

    ``trades`` are each symbol's new bars and features, ``correlations`` the
    rows just made (they read as :class:`~schemas.records.Correlation` records),
    ``done`` the last grid step every symbol has made final (None: no new final step).
    """

    trades: tuple[tuple[str, TradeInput], ...]
    correlations: CorrelationRows
    done: int | None
    final: bool = False
    """Made by the end of a bounded read, not by new input."""


@dataclass(frozen=True, slots=True)
class GridOut:
    """The correlation step's output: rows to store and, when trading, the loop's input."""

    rows: StoreRows | None = None
    step: GridStep | None = None
