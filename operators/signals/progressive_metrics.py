"""Progressive-validation figures of a probabilistic binary forecast, and its calibration drift.

Each :meth:`ProgressiveMetrics.update` scores one forecast ``p`` = P(y = 1)
made *before* its outcome ``y`` was known (River's progressive validation).
Running over every forecast so far:

* log loss ``-mean(y log p + (1 - y) log(1 - p))`` (``p`` clipped to ``[1e-15, 1 - 1e-15]``);
* accuracy: the share of forecasts whose side (up when ``p >= 0.5``) was the outcome;
* expected calibration error over ``bins`` equal-width bins of ``p``:
  ``sum_b n_b / n * |mean(y)_b - mean(p)_b|``.

Over the last ``window_ms`` of event time (the forecasts whose ``ts`` is within
``window_ms`` of the newest): the realised hit rate of the side forecast and the
mean probability given to that side, ``q = max(p, 1 - p)``. The forecast is
*drifting* when at least ``min_count`` forecasts are in the window and
``|hit rate - mean q| > drift_threshold`` (the seed's throttle: 15 points over 30 days).

Everything is O(1) per update (amortised: the window is a deque keyed by time;
its float sum is recomputed from the deque every ``window`` evictions against drift).

>>> m = ProgressiveMetrics(MetricsSettings(window_ms=10, min_count=2))
>>> m.get() is None
True
>>> for ts, p, y in [(0, 0.9, 1), (5, 0.8, 0), (20, 0.3, 0)]:
...     m.update(ts, p, y)
>>> f = m.get()
>>> f.n, round(f.accuracy, 4), round(f.log_loss, 4)
(3, 0.6667, 0.6905)
>>> f.window_count, f.hit_rate, round(f.mean_prob, 4)  # only ts 20 is within 10 ms of ts 20
(1, 1.0, 0.7)
>>> f.drift  # below min_count
False
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from schemas.settings import check_settings, setting

DAY_MS = 86_400_000
EPS = 1e-15


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Parameters of :class:`ProgressiveMetrics`.

    Parameters
    ----------
    bins
        Equal-width probability bins of the expected calibration error.
    window_ms
        The rolling window of the hit rate and mean probability, event time (default 30 days).
    drift_threshold
        Drifting when the window's |hit rate - mean probability| exceeds this (default 0.15).
    min_count
        ... and the window holds at least this many forecasts.
    """

    bins: int = setting(10, ge=2, le=1000, fixed=True)
    window_ms: int = setting(30 * DAY_MS, ge=1)
    drift_threshold: float = setting(0.15, gt=0, le=1)
    min_count: int = setting(100, ge=1)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class Figures:
    """What :meth:`ProgressiveMetrics.get` answers: the running and the window's figures."""

    n: int
    log_loss: float
    accuracy: float
    calibration_error: float
    window_count: int
    hit_rate: float
    mean_prob: float
    drift: bool

    @property
    def gap(self) -> float:
        """|hit rate - mean probability| over the window."""
        return abs(self.hit_rate - self.mean_prob)


class ProgressiveMetrics:
    """Running log loss, accuracy and calibration error; the rolling hit rate and its drift flag."""

    def __init__(self, settings: MetricsSettings | None = None) -> None:
        self.settings = settings or MetricsSettings()
        b = self.settings.bins
        self.n = 0
        self.loss_sum = 0.0
        self.hits = 0
        self.bin_n = [0] * b
        self.bin_p = [0.0] * b
        self.bin_y = [0] * b
        self.window: deque[tuple[int, float, int]] = deque()  # (ts, q, hit)
        self.window_q = 0.0
        self.window_hits = 0
        self.evictions = 0

    def update(self, ts: int, p: float, y: int) -> None:
        """Score the forecast ``p`` = P(y = 1) of an outcome ``y`` (0 or 1) known at ``ts`` (epoch ms)."""
        y = 1 if y else 0
        pc = min(max(p, EPS), 1.0 - EPS)
        self.n += 1
        self.loss_sum -= math.log(pc) if y else math.log(1.0 - pc)
        side = 1 if p >= 0.5 else 0
        hit = 1 if side == y else 0
        self.hits += hit
        b = min(int(p * self.settings.bins), self.settings.bins - 1)
        self.bin_n[b] += 1
        self.bin_p[b] += p
        self.bin_y[b] += y
        q = p if side else 1.0 - p
        win = self.window
        win.append((ts, q, hit))
        self.window_q += q
        self.window_hits += hit
        start = ts - self.settings.window_ms
        while win and win[0][0] <= start:
            _, q_old, hit_old = win.popleft()
            self.window_q -= q_old
            self.window_hits -= hit_old
            self.evictions += 1
        if self.evictions >= max(len(win), 1):  # float drift: recompute the window's sum
            self.window_q = math.fsum(q for _, q, _ in win)
            self.evictions = 0

    def get(self) -> Figures | None:
        """The figures, None before the first forecast is scored."""
        if self.n == 0:
            return None
        n = self.n
        ece = (
            sum(abs(yb - pb) for nb, pb, yb in zip(self.bin_n, self.bin_p, self.bin_y, strict=True) if nb) / n
        )
        m = len(self.window)
        hit_rate = self.window_hits / m
        mean_prob = self.window_q / m
        s = self.settings
        drift = m >= s.min_count and abs(hit_rate - mean_prob) > s.drift_threshold
        return Figures(n, self.loss_sum / n, self.hits / n, ece, m, hit_rate, mean_prob, drift)
