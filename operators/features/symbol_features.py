"""Per-symbol risk features from closed bars (see the metric spec)."""

from __future__ import annotations

from dataclasses import dataclass

from operators.features.drift_flag import DriftFlag
from operators.features.grid_returns import GridReturns
from operators.features.permutation_entropy import PermutationEntropy
from operators.features.rolling_tail import RollingTail
from operators.features.rolling_variance import RollingVariance
from schemas.records import Bar, Feature
from schemas.settings import check_settings, setting

Z95 = 1.6448536269514722


@dataclass(frozen=True, slots=True)
class FeatureSettings:
    """Parameters of the feature operators.

    Parameters
    ----------
    bar_interval_ms
        Grid step D in ms.
    window
        W, returns per feature window (>= 3).
    qvar_entropy_coef
        c in QVaR = 1.6449 * vol * (1 - c * entropy).
    """

    bar_interval_ms: int = setting(1000, gt=0, fixed=True)
    window: int = setting(300, ge=3, fixed=True)
    qvar_entropy_coef: float = setting(0.3, ge=0, le=1)

    def __post_init__(self) -> None:
        check_settings(self)


class SymbolFeatures:
    """Turns one symbol's closed bars, in time order, into feature rows.

    >>> sf = SymbolFeatures(FeatureSettings(bar_interval_ms=1000, window=3))
    >>> bars = [Bar("X", i * 1000, 0, 0, 0, c, 1, c, 1) for i, c in
    ...         enumerate([100.0, 101.0, 100.0, 102.0])]
    >>> [sf.update(b) for b in bars[:3]]
    [None, None, None]
    >>> f = sf.update(bars[3])
    >>> (f.ts, round(f.ret, 9), f.entropy)
    (3000, 0.019802627, 0.0)
    """

    __slots__ = ("_drift", "_entropy", "_grid", "_n", "_tail", "_var", "settings", "symbol")

    def __init__(self, settings: FeatureSettings, symbol: str = "") -> None:
        self.settings = settings
        self.symbol = symbol
        w = settings.window
        self._grid = GridReturns()
        self._var = RollingVariance(w)
        self._entropy = PermutationEntropy(w)
        self._tail = RollingTail(w, 0.05)
        self._drift = DriftFlag()
        self._n = 0

    def _push(self, r: float) -> None:
        self._var.update(r)
        self._entropy.update(r)
        self._tail.update(r)
        self._drift.update(r)
        self._n += 1

    def _push_zeros(self, n: int) -> None:
        """``n`` zero returns (a gap): the windows take at most W of them, ADWIN every one."""
        w = self.settings.window
        for _ in range(min(n, w)):
            self._var.update(0.0)
            self._entropy.update(0.0)
            self._tail.update(0.0)
        self._drift.update_zeros(n)
        self._n += n

    def update(self, bar: Bar) -> Feature | None:
        """Feed bar k; the feature row at k once W returns exist, else None."""
        k = bar.ts // self.settings.bar_interval_ms
        step = self._grid.update(k, bar.close)
        if step is None:
            return None
        zeros, ret = step
        if zeros:
            self._push_zeros(zeros)
        self._push(ret)
        if self._n < self.settings.window:
            return None
        vol = self._var.std()
        entropy = self._entropy.get()
        var95, es95 = self._tail.get()
        qvar = Z95 * vol * (1.0 - self.settings.qvar_entropy_coef * entropy)
        return Feature(
            bar.symbol,
            bar.ts,
            ret,
            vol,
            entropy,
            var95,
            es95,
            qvar,
            self._drift.take(),
        )
