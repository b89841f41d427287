"""Wilder's Average True Range of one symbol's bars, updated in O(1).

The true range of bar t is ``max(H_t - L_t, |H_t - C_(t-1)|, |L_t - C_(t-1)|)``;
the first bar has no previous close, so its true range is ``H_1 - L_1``
(Wilder's own convention). The ATR is the mean of the first ``period`` true
ranges, then Wilder's smoothing ``ATR_t = ATR_(t-1) + (TR_t - ATR_(t-1)) / n``
(an EWMA with alpha = 1/n). Bars are counted as given: a gap in the bar grid
is not a bar.

>>> atr = ATR(ATRSettings(period=2))
>>> atr.update(Bar("X", 0, 10.0, 11.0, 9.0, 10.0, 1.0, 10.0, 1)) is None  # TR 2
True
>>> atr.update(Bar("X", 1000, 10.0, 13.0, 10.0, 12.0, 1.0, 12.0, 1))  # TR 3
2.5
>>> atr.update(Bar("X", 2000, 12.0, 12.0, 8.0, 9.0, 1.0, 9.0, 1))  # TR 4
3.25
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.records import Bar
from schemas.settings import MAX_WINDOW, check_settings, setting


@dataclass(frozen=True, slots=True)
class ATRSettings:
    """Parameters of :class:`ATR`.

    Parameters
    ----------
    period
        n, the number of bars of the first mean and the smoothing length (>= 1).
    """

    period: int = setting(14, ge=1, le=MAX_WINDOW, fixed=True)

    def __post_init__(self) -> None:
        check_settings(self)


class ATR:
    """Wilder's ATR over ``settings.period`` bars; None until that many bars.

    Parameters
    ----------
    settings
        The period.
    """

    __slots__ = ("_atr", "_n", "_prev_close", "_sum", "settings")

    def __init__(self, settings: ATRSettings | None = None) -> None:
        self.settings = settings or ATRSettings()
        self._prev_close: float | None = None
        self._n = 0
        self._sum = 0.0
        self._atr: float | None = None

    def update(self, bar: Bar) -> float | None:
        """Feed the next closed bar; the ATR once ``period`` bars were seen, else None."""
        hl = bar.high - bar.low
        prev = self._prev_close
        tr = hl if prev is None else max(hl, abs(bar.high - prev), abs(bar.low - prev))
        self._prev_close = bar.close
        n = self.settings.period
        if self._atr is None:
            self._n += 1
            self._sum += tr
            if self._n == n:
                self._atr = self._sum / n
        else:
            self._atr += (tr - self._atr) / n
        return self._atr

    def get(self) -> float | None:
        """The current ATR, None until warm."""
        return self._atr
