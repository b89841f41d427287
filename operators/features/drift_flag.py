"""River's ADWIN on absolute returns in basis points, as a 0/1 flag.

The flag is 1 when ADWIN reported a drift after any update since the flag
was last taken.

>>> flag = DriftFlag()
>>> for i in range(400):
...     flag.update(0.0001 if i < 200 else 0.01)
>>> flag.take()
1
>>> flag.take()
0
"""

from __future__ import annotations

import importlib.util
import os
import sys

import river

BP = 10_000.0


def _adwin_class() -> type:
    """River's ``river.drift.ADWIN`` class, without running ``river.drift``'s package init.

    That init imports every detector, KSWIN among them and with it
    ``scipy.stats``: a second of start-up for one class. The
    module ``river/drift/adwin.py`` imports only River's Rust core and
    ``river.base``, so it is loaded on its own under its own name; a later
    ``import river.drift`` finds it in ``sys.modules`` and uses the same class.
    """
    name = "river.drift.adwin"
    module = sys.modules.get(name)
    if module is None:
        path = os.path.join(os.path.dirname(river.__file__), "drift", "adwin.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module.ADWIN


ADWIN = _adwin_class()


class DriftFlag:
    """One ``river.drift.ADWIN()`` (default parameters) fed ``|r| * 10000``.

    >>> import river.drift
    >>> river.drift.ADWIN is ADWIN
    True
    """

    __slots__ = ("_adwin", "_seen")

    def __init__(self) -> None:
        self._adwin = ADWIN()
        self._seen = False

    def update(self, ret: float) -> None:
        adwin = self._adwin
        adwin.update(abs(ret) * BP)
        if adwin.drift_detected:
            self._seen = True

    def update_zeros(self, n: int) -> None:
        """``n`` zero returns (a gap in the symbol's bars); each one is an ADWIN update.

        The same updates as ``n`` calls of :meth:`update`, without River's
        per-call wrapper: its window's own update is called directly while no
        drift is pending (after a drift River's next update starts a new
        window, and that update goes through :meth:`update`).

        >>> a, b = DriftFlag(), DriftFlag()
        >>> for i in range(300):
        ...     a.update(0.01 if i > 150 else 0.0); b.update(0.01 if i > 150 else 0.0)
        >>> for _ in range(5000):
        ...     a.update(0.0)
        >>> b.update_zeros(5000)
        >>> (a.take(), a._adwin.width, a._adwin.total) == (b.take(), b._adwin.width, b._adwin.total)
        True
        """
        adwin = self._adwin
        while n > 0:
            if adwin.drift_detected:
                self.update(0.0)
                n -= 1
                continue
            step = adwin._helper.update
            for i in range(n):
                if step(0.0):
                    adwin._drift_detected = True
                    self._seen = True
                    n -= i + 1
                    break
            else:
                n = 0

    def take(self) -> int:
        """1 if a drift was detected since the last take, else 0; resets."""
        seen = self._seen
        self._seen = False
        return int(seen)
