"""Correlation rows as columns: a grid index's whole matrix without one object per pair.

At 500 symbols a grid index has 124,750 pairs; building a
:class:`~schemas.records.Correlation` per pair costs more than computing them.
A :class:`CorrelationBlock` holds one grid index (the ready symbols in string
order and the upper triangle of their matrix, row by row) and a
:class:`CorrelationRows` a run of blocks. Both read as a sequence of
:class:`~schemas.records.Correlation` records (made on demand, in the order
the grid emits them), so a consumer that iterates (the topic, the trading
loop) sees the same records as before; the store takes :meth:`CorrelationRows.columns`.

>>> import numpy as np
>>> b = CorrelationBlock(5000, ("A", "B", "C"), np.array([0.5, -0.25, 1.0]))
>>> len(b), list(b)[1]
(3, Correlation(ts=5000, symbol_a='A', symbol_b='C', corr=-0.25, interval=0))
>>> rows = CorrelationRows((b, CorrelationBlock(6000, ("A", "B"), np.array([0.75]))))
>>> len(rows), [(r.ts, r.symbol_a, r.symbol_b) for r in rows][-2:]
(4, [(5000, 'B', 'C'), (6000, 'A', 'B')])
>>> cols = rows.columns()
>>> cols["symbol_b"].to_pylist(), cols["corr"].tolist()
(['B', 'C', 'C', 'B'], [0.5, -0.25, 1.0, 0.75])
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np
import pyarrow as pa

from schemas.records import Correlation

_TRIU: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def pair_indices(m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` of every pair i < j of m items, row by row (shared, read-only arrays)."""
    got = _TRIU.get(m)
    if got is None:
        i, j = np.triu_indices(m, 1)
        i.flags.writeable = False
        j.flags.writeable = False
        got = _TRIU[m] = (i, j)
    return got


@dataclass(frozen=True, slots=True, eq=False)
class CorrelationBlock:
    """The correlations of one grid index.

    Parameters
    ----------
    ts
        Grid time, epoch ms.
    names
        The ready symbols, in string order.
    corr
        float64, one value per pair ``names[i] < names[j]``, in the order of
        :func:`pair_indices` (``len(names) * (len(names) - 1) / 2`` values).
    """

    ts: int
    names: tuple[str, ...]
    corr: np.ndarray
    interval: int = 0
    """The grid's bar length in seconds (0: not stamped)."""

    def __len__(self) -> int:
        return len(self.corr)

    def __iter__(self):
        i, j = pair_indices(len(self.names))
        names = np.array(self.names, dtype=object)
        return map(
            Correlation,
            repeat(self.ts),
            names[i].tolist(),
            names[j].tolist(),
            self.corr.tolist(),
            repeat(self.interval),
        )


@dataclass(frozen=True, slots=True, eq=False)
class CorrelationRows:
    """Blocks of correlation rows, read as one sequence of records (equal to a list of the same records)."""

    blocks: tuple[CorrelationBlock, ...]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (CorrelationRows, list)):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks)

    def __iter__(self):
        for block in self.blocks:
            yield from block

    def columns(self) -> dict:
        """The ``correlations`` table's columns (symbols as Arrow dictionary arrays)."""
        return block_columns(self.blocks)


def block_columns(blocks) -> dict:
    """Columns of the ``correlations`` table from blocks: interval, ts, symbol_a, symbol_b, corr."""
    names = sorted({n for b in blocks for n in b.names})
    code = {n: c for c, n in enumerate(names)}
    interval, ts, a, b, corr = [], [], [], [], []
    for block in blocks:
        i, j = pair_indices(len(block.names))
        codes = np.fromiter((code[n] for n in block.names), np.int32, len(block.names))
        interval.append(np.full(len(block), block.interval, np.uint32))
        ts.append(np.full(len(block), block.ts, np.int64))
        a.append(codes[i])
        b.append(codes[j])
        corr.append(block.corr)
    dictionary = pa.array(names, pa.string())
    cat = np.concatenate
    return {
        "interval": cat(interval) if interval else np.zeros(0, np.uint32),
        "ts": cat(ts) if ts else np.zeros(0, np.int64),
        "symbol_a": pa.DictionaryArray.from_arrays(pa.array(cat(a) if a else [], pa.int32()), dictionary),
        "symbol_b": pa.DictionaryArray.from_arrays(pa.array(cat(b) if b else [], pa.int32()), dictionary),
        "corr": cat(corr) if corr else np.zeros(0),
    }
