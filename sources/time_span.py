"""The span of event times a file replay keeps (``--from-ts`` / ``--to-ts``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class TimeSpan:
    """Event times ``from_ts <= ts < to_ts`` in epoch ms; a bound of None is open.

    Readers skip the records outside the span and count them: they are not
    bad input, so they are not dead letters.

    Parameters
    ----------
    from_ts
        First time kept (inclusive), or None.
    to_ts
        First time no longer kept (exclusive), or None.

    >>> span = TimeSpan(from_ts=10, to_ts=20)
    >>> span.outside(np.array([9, 10, 19, 20])).tolist()
    [True, False, False, True]
    >>> span.excludes(20), TimeSpan().bounded
    (True, False)
    >>> TimeSpan(from_ts=20, to_ts=20)
    Traceback (most recent call last):
    ...
    ValueError: the span is empty: from_ts 20 is not before to_ts 20
    """

    from_ts: int | None = None
    to_ts: int | None = None

    def __post_init__(self) -> None:
        if self.from_ts is not None and self.to_ts is not None and self.from_ts >= self.to_ts:
            msg = f"the span is empty: from_ts {self.from_ts} is not before to_ts {self.to_ts}"
            raise ValueError(msg)

    @property
    def bounded(self) -> bool:
        """True when either bound is set (a filter applies)."""
        return self.from_ts is not None or self.to_ts is not None

    def outside(self, ts: np.ndarray) -> np.ndarray:
        """Boolean mask of the times outside the span (vectorised)."""
        out = np.zeros(len(ts), dtype=bool)
        if self.from_ts is not None:
            out |= ts < self.from_ts
        if self.to_ts is not None:
            out |= ts >= self.to_ts
        return out

    def excludes(self, ts: int) -> bool:
        """True when the one time ``ts`` is outside the span."""
        return (self.from_ts is not None and ts < self.from_ts) or (
            self.to_ts is not None and ts >= self.to_ts
        )
