"""The strategy protocol: what the trading loop asks of a strategy, and a base class that answers it.

A strategy follows one symbol: the trading loop makes one instance per symbol
(from a :class:`StrategySpec`) and, at every bar close of that symbol, in time
order and whatever the regime, calls

``update(ts, bar, feature, regime) -> Signal | None``

with

* ``ts``: the bar close time, epoch ms (the ``Signal.ts`` to return);
* ``bar``: the symbol's closed :class:`~schemas.records.Bar`;
* ``feature``: the symbol's :class:`~schemas.records.Feature` row of that bar
  (volatility, entropy, VaR ...), or None while the features are warming up;
* ``regime``: the symbol's regime (one of :data:`~schemas.records.REGIMES`),
  or None while it is unknown.

With several resolutions (``features.bar_intervals``) a strategy may also
define ``informative(coarse)``: the loop calls it just before every
``update`` with the symbol's coarser resolutions, ``coarse`` a mapping of
interval (seconds) to the newest *closed* (bar, feature row) of that
resolution (either None while not yet known); a coarse bar is handed over at
the finest step its window closes at, never before (Freqtrade calls these
informative timeframes).

It returns None while it has no view (warming up, no regime), else a
:class:`~schemas.records.Signal` ``(ts, bar.symbol, name, direction,
strength, regime)`` with direction 1 (long), -1 (short) or 0 (flat) and
strength in [0, 1]. Outside its ``regimes`` it should return a flat signal:
the loop weighs it 0 there anyway.

A strategy class (see :class:`Strategy`) has

* ``name``: a class attribute, unique in a run: it names the strategy's
  signals, its weights and its config table ``[strategies.<name>]``
  (letters, digits, ``_`` and ``-``);
* ``settings_class``: a frozen dataclass of its parameters, or None; the
  constructor takes one instance of it (``cls(settings)``; ``cls()`` when
  it has none) and keeps it in the attribute ``settings``;
* ``regimes``: an instance attribute, the regimes it may trade in;
* its state: everything else in the instance. Snapshots pickle the instance
  (so it must pickle: no open files, locks or lambdas); a resumed run pairs
  that state with the run's current settings through the attribute
  ``settings``, so keep the parameters there.

:class:`BarStrategy` does the bookkeeping (regimes from the settings, the
signal, standing aside): a subclass implements ``_step``. The built-in
strategies (``operators.signals.strategies``) are written that way.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class UpSettings:
...     regimes: frozenset = frozenset({"range"})
>>> class Up(BarStrategy):
...     '''Long after every rising close.'''
...     name = "up"
...     settings_class = UpSettings
...     def __init__(self, settings=None):
...         super().__init__(settings)
...         self.last = None
...     def _step(self, bar, feature, active):
...         last, self.last = self.last, bar.close
...         return None if last is None else (1 if bar.close > last else 0, 1.0)
>>> s = StrategySpec("up", Up, UpSettings()).build()
>>> isinstance(s, Strategy), s.regimes
(True, frozenset({'range'}))
>>> [s.update(i, Bar("X", i, c, c, c, c, 1, c, 1), None, "range") for i, c in enumerate([1.0, 2.0])]
... # doctest: +NORMALIZE_WHITESPACE
[None, Signal(ts=1, symbol='X', strategy='up', direction=1, strength=1.0, regime='range',
              edge_bps=nan, cost_bps=nan, gate='')]
>>> s.update(2, Bar("X", 2, 3.0, 3.0, 3.0, 3.0, 1, 3.0, 1), None, "crisis").direction  # stands aside
0
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from schemas.records import FLAT, REGIMES, Bar, Feature, Signal

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a strategy name may be: it is a config table name and a column value."""

RESERVED_NAMES = frozenset({"composite", "risk"})
"""Names the loop uses itself: the weighted blend's signals and the risk engine's orders."""


@runtime_checkable
class Strategy(Protocol):
    """What the trading loop needs of a strategy (see the module docstring).

    Attributes
    ----------
    name
        Unique in a run; names its signals and its ``[strategies.<name>]`` table.
    settings_class
        The frozen dataclass of its parameters, or None.
    settings
        Its parameters (an instance of ``settings_class``), or None.
    regimes
        The regimes it may trade in, a subset of :data:`~schemas.records.REGIMES`.
    """

    name: ClassVar[str]
    settings_class: ClassVar[type | None]
    settings: Any
    regimes: frozenset[str]

    def update(self, ts: int, bar: Bar, feature: Feature | None, regime: str | None) -> Signal | None:
        """Feed the bar closed at ``ts``; the signal, or None without a view."""
        ...


def check_regimes(regimes) -> frozenset[str]:
    """``regimes`` as a frozenset, or a ValueError naming the unknown ones.

    >>> sorted(check_regimes({"range", "crisis"}))
    ['crisis', 'range']
    >>> try:
    ...     check_regimes(["sideways"])
    ... except ValueError as exc:
    ...     print(str(exc)[:40])
    unknown regimes ['sideways'], expected a
    """
    if isinstance(regimes, str):
        regimes = [regimes]
    given = frozenset(regimes)
    unknown = sorted(str(r) for r in given - set(REGIMES))
    if unknown:
        msg = f"unknown regimes {unknown}, expected a subset of {REGIMES}"
        raise ValueError(msg)
    return given


class BarStrategy:
    """Base class of strategies: a subclass implements ``_step``.

    ``__init__(settings)`` keeps ``settings`` (default: ``settings_class()``)
    and takes ``regimes`` from its ``regimes`` field (every regime when it
    has none). ``_step(bar, feature, active)`` advances the indicators on
    every bar and returns (direction, strength), or None while not warm;
    ``active`` is False when the regime is not one of ``regimes``: the
    strategy must then stand aside (drop any position it holds; its return
    value is ignored, the signal is flat). Signals need a regime:
    without one ``update`` returns None (``_step`` still runs).
    """

    __slots__ = ("regimes", "settings")
    name: ClassVar[str] = ""
    settings_class: ClassVar[type | None] = None

    def __init__(self, settings: Any = None) -> None:
        if settings is None and self.settings_class is not None:
            settings = self.settings_class()
        self.settings = settings
        regimes = getattr(settings, "regimes", None)
        self.regimes = check_regimes(REGIMES if regimes is None else regimes)

    def _step(self, bar: Bar, feature: Feature | None, active: bool) -> tuple[int, float] | None:
        raise NotImplementedError

    def update(self, ts: int, bar: Bar, feature: Feature | None, regime: str | None) -> Signal | None:
        """Feed bar t (made at ``ts``); this strategy's signal, or None while warming or without a regime."""
        active = regime is not None and regime in self.regimes
        view = self._step(bar, feature, active)
        if view is None or regime is None:
            return None
        direction, strength = view if active else (FLAT, 0.0)
        return Signal(ts, bar.symbol, self.name, direction, strength, regime)


@dataclass(frozen=True, slots=True)
class StrategySpec:
    """One strategy of a run: its name, its class and its settings.

    Picklable (the class pickles by reference). :meth:`build` makes a fresh
    instance for one symbol; every instance shares ``settings``.

    Parameters
    ----------
    name
        The strategy's ``name``.
    cls
        Its class; ``cls(settings)`` (``cls()`` when ``settings`` is None) makes an instance.
    settings
        An instance of ``cls.settings_class``, or None.
    """

    name: str
    cls: type
    settings: Any = None

    def build(self) -> Strategy:
        """A fresh instance, for one symbol."""
        return self.cls() if self.settings is None else self.cls(self.settings)


def check_signal(sig: Any, ts: int, symbol: str, name: str, regime: str | None) -> Signal | None:
    """A strategy's answer to ``update(ts, bar, feature, regime)`` if it is valid, else a ValueError.

    Valid: None, or a :class:`~schemas.records.Signal` of this ``ts``,
    ``symbol``, strategy ``name`` and ``regime`` (not None), with direction
    -1, 0 or 1 and a strength in [0, 1]. numpy numbers come back as Python's.

    >>> import numpy as np
    >>> sig = check_signal(Signal(5, "X", "a", np.int64(1), np.float64(0.5), "range"), 5, "X", "a", "range")
    >>> sig  # doctest: +NORMALIZE_WHITESPACE
    Signal(ts=5, symbol='X', strategy='a', direction=1, strength=0.5, regime='range',
           edge_bps=nan, cost_bps=nan, gate='')
    >>> check_signal(Signal(5, "X", "a", 1, 1.5, "range"), 5, "X", "a", "range")
    Traceback (most recent call last):
    ...
    ValueError: strength must be in [0, 1], got 1.5
    """
    if sig is None:
        return None
    if (  # the usual answer, checked in one go (the loop asks every strategy at every bar)
        type(sig) is Signal
        and type(sig.direction) is int
        and type(sig.strength) is float
        and -1 <= sig.direction <= 1
        and 0.0 <= sig.strength <= 1.0
        and sig.ts == ts
        and sig.symbol == symbol
        and sig.strategy == name
        and sig.regime == regime
        and regime is not None
    ):
        return sig
    if type(sig) is not Signal:
        msg = f"update must return a Signal or None, got {type(sig).__name__}"
        raise ValueError(msg)
    d, s = sig.direction, sig.strength
    if not (type(d) is int and type(s) is float and d in (-1, 0, 1) and 0.0 <= s <= 1.0):
        try:
            direction = int(d) if not isinstance(d, bool | str) and int(d) == d else None
        except (TypeError, ValueError, OverflowError):
            direction = None
        if direction not in (-1, 0, 1):
            msg = f"direction must be -1, 0 or 1, got {d!r}"
            raise ValueError(msg)
        try:
            strength = float(s) if not isinstance(s, bool | str) else math.nan
        except (TypeError, ValueError):
            strength = math.nan
        if not 0.0 <= strength <= 1.0:
            msg = f"strength must be in [0, 1], got {s!r}"
            raise ValueError(msg)
        sig = Signal(sig.ts, sig.symbol, sig.strategy, direction, strength, sig.regime)
    wrong = [
        (what, got, want)
        for what, got, want in (
            ("ts", sig.ts, ts),
            ("symbol", sig.symbol, symbol),
            ("strategy", sig.strategy, name),
            ("regime", sig.regime, regime),
        )
        if got != want
    ]
    if regime is None:
        msg = "a signal needs a regime: return None while the regime is None"
        raise ValueError(msg)
    if wrong:
        what, got, want = wrong[0]
        msg = f"signal {what} must be {want!r}, got {got!r}"
        raise ValueError(msg)
    return sig
