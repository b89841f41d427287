"""Columnar batches of one symbol's ticks: the hot path's unit of work.

A :class:`TickColumns` holds what a :class:`~schemas.records.Tick` holds, as
numpy columns, plus where each tick came from (``origin`` and ``arrival``,
the line number or offset) and a handle on its raw bytes for dead letters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from schemas.codec import SCHEMA_VERSION, encode
from schemas.records import Tick

SIDES = ("", "buy", "sell")
"""Side codes: index in this tuple."""
SIDE_CODES = {name: code for code, name in enumerate(SIDES)}


@dataclass(frozen=True, slots=True)
class RawSlices:
    """The raw records of a batch: slices ``block[starts[i]:ends[i]]``."""

    block: bytes
    starts: np.ndarray
    ends: np.ndarray

    def get(self, i: int) -> bytes:
        return self.block[self.starts[i] : self.ends[i]]

    def take(self, idx: np.ndarray) -> RawSlices:
        return RawSlices(self.block, self.starts[idx], self.ends[idx])


class RawValues:
    """The raw records of a batch as separate byte strings (Kafka values).

    Rows are ``values[idx[i]]``: taking rows only narrows ``idx``, so a batch
    split by symbol shares one list; a pickled copy holds only its own rows.
    """

    __slots__ = ("idx", "values")

    def __init__(self, values: list, idx: np.ndarray | None = None) -> None:
        self.values = values
        self.idx = idx

    def get(self, i: int) -> bytes:
        value = self.values[i if self.idx is None else int(self.idx[i])]
        return b"" if value is None else value

    def take(self, idx: np.ndarray) -> RawValues:
        if self.idx is None:
            return RawValues(self.values, np.arange(len(self.values))[idx])
        return RawValues(self.values, self.idx[idx])

    def __len__(self) -> int:
        return len(self.values) if self.idx is None else len(self.idx)

    def __reduce__(self):
        own = self.values if self.idx is None else [self.values[i] for i in self.idx.tolist()]
        return (RawValues, (own,))


@dataclass(frozen=True, slots=True)
class TickColumns:
    """Valid-looking ticks of one symbol, in arrival order.

    Parameters
    ----------
    symbol
        The one symbol of every row.
    ts, price, qty
        int64 epoch ms, float64, float64.
    side
        int8 codes into :data:`SIDES`.
    trade_id, exchange
        object arrays of str (``""`` when unknown).
    origin
        Where the batch came from: a file path or ``topic[partition]``.
    arrival
        int64 line numbers (files) or offsets (topics).
    raw
        The raw records, or None when the ticks were made in-process.
    received
        int64 epoch ms each record reached qbtc's input (Kafka record
        timestamps), or None to use the wall clock when it is needed.
    """

    symbol: str
    ts: np.ndarray
    price: np.ndarray
    qty: np.ndarray
    side: np.ndarray
    trade_id: np.ndarray
    exchange: np.ndarray
    origin: str
    arrival: np.ndarray
    raw: RawSlices | RawValues | None = None
    received: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: np.ndarray) -> TickColumns:
        """The rows at ``idx`` (an index array or boolean mask)."""
        return TickColumns(
            self.symbol,
            self.ts[idx],
            self.price[idx],
            self.qty[idx],
            self.side[idx],
            self.trade_id[idx],
            self.exchange[idx],
            self.origin,
            self.arrival[idx],
            None if self.raw is None else self.raw.take(idx),
            None if self.received is None else self.received[idx],
        )

    @staticmethod
    def concat(parts: list[TickColumns]) -> TickColumns:
        """One batch of the rows of ``parts`` (one symbol and origin), in order.

        >>> a = TickColumns.from_ticks([Tick(1, "A/B", 2.0, 3.0)], "t[0]")
        >>> b = TickColumns.from_ticks([Tick(2, "A/B", 2.0, 3.0)], "t[0]", 1)
        >>> c = TickColumns.concat([a, b])
        >>> c.ts.tolist(), c.arrival.tolist()
        ([1, 2], [0, 1])
        """
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        cat = np.concatenate
        raw = None
        if any(p.raw is not None for p in parts):
            raw = RawValues([p.payload(i) for p in parts for i in range(len(p))])
        received = None
        if all(p.received is not None for p in parts):
            received = cat([p.received for p in parts])
        return TickColumns(
            first.symbol,
            cat([p.ts for p in parts]),
            cat([p.price for p in parts]),
            cat([p.qty for p in parts]),
            cat([p.side for p in parts]),
            cat([p.trade_id for p in parts]),
            cat([p.exchange for p in parts]),
            first.origin,
            cat([p.arrival for p in parts]),
            raw,
            received,
        )

    def tick(self, i: int) -> Tick:
        """Row ``i`` as a :class:`Tick`."""
        return Tick(
            int(self.ts[i]),
            self.symbol,
            float(self.price[i]),
            float(self.qty[i]),
            SIDES[self.side[i]],
            self.trade_id[i],
            self.exchange[i],
        )

    def source(self, i: int) -> str:
        """Row ``i``'s place in its input, for a dead letter."""
        if self.origin.endswith("]"):
            return f"{self.origin}@{self.arrival[i]}"
        return f"{self.origin}:{self.arrival[i]}"

    def payload(self, i: int) -> bytes:
        """Row ``i``'s raw record (its encoding when made in-process)."""
        if self.raw is None:
            return encode(self.tick(i))
        return self.raw.get(i)

    def encoded(self) -> list[bytes]:
        """Every row in the codec's encoding (what :func:`encode` gives a Tick), fast.

        >>> cols = TickColumns.from_ticks([Tick(1, "A/B", 2.0, 3.0, "buy", "7", "x")], "test")
        >>> cols.encoded() == [encode(cols.tick(0))]
        True
        """
        dumps = orjson.dumps
        sym = self.symbol
        return [
            dumps(
                {
                    "v": SCHEMA_VERSION,
                    "type": "tick",
                    "ts": t,
                    "symbol": sym,
                    "price": p,
                    "qty": q,
                    "side": SIDES[s],
                    "trade_id": i,
                    "exchange": e,
                }
            )
            for t, p, q, s, i, e in zip(
                self.ts.tolist(),
                self.price.tolist(),
                self.qty.tolist(),
                self.side.tolist(),
                self.trade_id.tolist(),
                self.exchange.tolist(),
                strict=True,
            )
        ]

    @staticmethod
    def from_ticks(ticks: list[Tick], origin: str, first_arrival: int = 0) -> TickColumns:
        """Build one symbol's columns from records (tests, simulator)."""
        symbols = {t.symbol for t in ticks}
        if len(symbols) != 1:
            msg = f"from_ticks needs ticks of one symbol, got {sorted(symbols)}"
            raise ValueError(msg)
        n = len(ticks)
        return TickColumns(
            symbols.pop(),
            np.fromiter((t.ts for t in ticks), np.int64, n),
            np.fromiter((t.price for t in ticks), np.float64, n),
            np.fromiter((t.qty for t in ticks), np.float64, n),
            np.fromiter((SIDE_CODES[t.side] for t in ticks), np.int8, n),
            np.array([t.trade_id for t in ticks], dtype=object),
            np.array([t.exchange for t in ticks], dtype=object),
            origin,
            np.arange(first_arrival, first_arrival + n, dtype=np.int64),
        )
