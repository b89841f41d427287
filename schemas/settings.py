"""Frozen settings dataclasses, checked one way: by each field's annotation and bounds.

A settings class declares its fields with :func:`setting` (the default, the
bounds, whether the field is ``fixed``) and calls :func:`check_settings` from
``__post_init__``. Every field is checked by its annotation:

- ``int``: an integer, not a bool; ``float``: a number, not a bool, finite
  (NaN always fails; ``+inf`` passes only with ``allow_inf=True``); ``bool``;
  ``str``;
- ``tuple[float, ...]`` / ``tuple[float, float]`` / ``frozenset[str]``: the
  container, its length when fixed, and every entry as above (bounds apply
  to every entry);
- ``X | None``: None, or an X;
- any other class (a nested settings dataclass, ``dict``): an instance of it
  (a nested settings dataclass checked itself when it was made).

A failure raises :class:`SettingsError` with one format,
``"{Class}.{field} must be {rule}, got {value!r}"``; cross-field rules use the
same class and format. ``fixed=True`` marks a field whose change makes saved
state meaningless (a window, a lookback, the bar interval: anything that sizes
a buffer or defines the grid); ``dataclasses.fields(cls)[i].metadata["fixed"]``.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True, slots=True)
... class Demo:
...     window: int = setting(10, ge=2, fixed=True)
...     share: float = setting(0.5, gt=0, le=1)
...     levels: tuple[float, float] = setting((0.1, 0.2), gt=0)
...     def __post_init__(self) -> None:
...         check_settings(self)
>>> Demo(window=3).window
3
>>> Demo(share=float("nan"))
Traceback (most recent call last):
...
schemas.settings.SettingsError: Demo.share must be a finite number in (0, 1], got nan
>>> Demo(levels=(0.1,))
Traceback (most recent call last):
...
schemas.settings.SettingsError: Demo.levels must be 2 finite numbers > 0, got (0.1,)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import MISSING

from schemas.errors import UsageProblem

MAX_WINDOW = 10_000_000
"""The bound of every window, lookback and period (``le=MAX_WINDOW``): a window's state must fit in
memory, and at the bound one symbol's feature windows hold about 1 GB."""


class SettingsError(UsageProblem, ValueError):
    """A settings field out of its type or range: ``"{owner}.{name} must be {rule}, got {value!r}"``.

    ``owner``, ``name``, ``rule`` and ``value`` are kept, so a config loader
    can name its own key instead of the class (``risk.max_leverage must be
    > 0, got 0.0``). ``value`` is ``'***'`` for a secret field.
    """

    def __init__(self, owner: str, name: str, rule: str, value: object) -> None:
        super().__init__(f"{owner}.{name} must be {rule}, got {value!r}")
        self.owner, self.name, self.rule, self.value = owner, name, rule, value

    def __reduce__(self):
        return (type(self), (self.owner, self.name, self.rule, self.value))

    @classmethod
    def of(cls, obj: object, name: str, rule: str) -> SettingsError:
        """The error for field ``name`` of the settings object ``obj`` (a cross-field rule)."""
        return cls(type(obj).__name__, name, rule, getattr(obj, name))


def setting(
    default=MISSING,
    *,
    default_factory=MISSING,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    fixed: bool = False,
    allow_inf: bool = False,
    secret: bool = False,
):
    """A settings field: its default (none: required), bounds and flags, as ``dataclasses.field`` metadata.

    Parameters
    ----------
    default, default_factory
        As for ``dataclasses.field``.
    gt, ge, lt, le
        Bounds of a number (of every entry of a tuple or set of numbers).
    fixed
        A change makes saved state meaningless (windows, lookbacks, bar intervals).
    allow_inf
        A float field may be ``+inf`` or ``-inf`` within its bounds (NaN never).
    secret
        Messages show ``'***'`` instead of the value.
    """
    meta = {"gt": gt, "ge": ge, "lt": lt, "le": le, "fixed": fixed, "allow_inf": allow_inf, "secret": secret}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


_HINTS: dict[type, dict[str, object]] = {}


def field_types(cls: type) -> dict[str, object]:
    """The resolved annotation of every dataclass field of ``cls`` (cached)."""
    hints = _HINTS.get(cls)
    if hints is None:
        all_hints = typing.get_type_hints(cls)
        hints = _HINTS[cls] = {f.name: all_hints[f.name] for f in dataclasses.fields(cls)}
    return hints


def optional_of(tp: object) -> object | None:
    """X for ``X | None`` (``Optional[X]``), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _num(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else str(x)


def bounds_rule(meta: typing.Mapping) -> str:
    """The bounds of a field as text: ``> 0``, ``in [0, 1]``, ``in (0, 1]``, ``>= 2`` (empty: none)."""
    lo = ("(", meta["gt"]) if meta.get("gt") is not None else ("[", meta.get("ge"))
    hi = (")", meta["lt"]) if meta.get("lt") is not None else ("]", meta.get("le"))
    if lo[1] is not None and hi[1] is not None:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo[1] is not None:
        return f"{'>' if lo[0] == '(' else '>='} {_num(lo[1])}"
    if hi[1] is not None:
        return f"{'<' if hi[0] == ')' else '<='} {_num(hi[1])}"
    return ""


def _bounds_check(meta: typing.Mapping) -> typing.Callable[[float], bool]:
    gt, ge, lt, le = meta.get("gt"), meta.get("ge"), meta.get("lt"), meta.get("le")
    lo = -math.inf if gt is None and ge is None else (gt if gt is not None else ge)
    hi = math.inf if lt is None and le is None else (lt if lt is not None else le)
    if gt is not None:
        return (lambda x: lo < x < hi) if lt is not None else (lambda x: lo < x <= hi)
    return (lambda x: lo <= x < hi) if lt is not None else (lambda x: lo <= x <= hi)


def _scalar_check(tp: object, meta: typing.Mapping) -> typing.Callable[[object], bool]:
    """A function telling whether a value is a valid ``tp`` within the bounds of ``meta``."""
    if tp is typing.Any:
        return lambda x: True
    if tp is bool:
        return lambda x: x is True or x is False
    inside = _bounds_check(meta)
    if tp is int:
        return lambda x: (
            (type(x) is int or (isinstance(x, numbers.Integral) and not isinstance(x, bool))) and inside(x)
        )
    if tp is float:
        allow_inf = bool(meta.get("allow_inf"))

        def ok(x: object) -> bool:
            if type(x) is not float and (not isinstance(x, numbers.Real) or isinstance(x, bool)):
                return False
            v = float(x)
            if v != v or (not allow_inf and v in (math.inf, -math.inf)):
                return False
            return inside(v)

        return ok
    if isinstance(tp, type):
        return lambda x: isinstance(x, tp)
    return lambda x: True  # an annotation this module does not know (a protocol, a callable): not checked


def _scalar_rule(tp: object, meta: typing.Mapping, plural: bool = False) -> str:
    if tp is bool:
        words = "true or false"
    elif tp is int:
        words = "ints" if plural else "an int"
    elif tp is float:
        finite = "" if meta.get("allow_inf") else "finite "
        words = f"{finite}numbers" if plural else f"a {finite}number"
    elif tp is str:
        words = "strings" if plural else "a string"
    else:
        name = getattr(tp, "__name__", str(tp))
        words = f"{name}s" if plural else f"a {name}"
    bounds = bounds_rule(meta) if tp in (int, float) else ""
    return f"{words} {bounds}" if bounds else words


def type_rule(tp: object, meta: typing.Mapping) -> str:
    """What a field of annotation ``tp`` with metadata ``meta`` must be, as text."""
    inner = optional_of(tp)
    if inner is not None:
        return f"{type_rule(inner, meta)} or None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_scalar_rule(args[0], meta, plural=True)}"
        return f"{len(args)} {_scalar_rule(args[0], meta, plural=True)}"
    if origin is frozenset:
        return f"a set of {_scalar_rule(args[0], meta, plural=True)}"
    return _scalar_rule(tp, meta)


def value_check(tp: object, meta: typing.Mapping) -> typing.Callable[[object], bool]:
    """A function telling whether a value is valid for annotation ``tp`` within the bounds of ``meta``."""
    inner = optional_of(tp)
    if inner is not None:
        check = value_check(inner, meta)
        return lambda x: x is None or check(x)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            each = _scalar_check(args[0], meta)
            return lambda x: isinstance(x, tuple) and all(each(v) for v in x)
        checks = [_scalar_check(a, meta) for a in args]
        return lambda x: (
            isinstance(x, tuple)
            and len(x) == len(checks)
            and all(c(v) for c, v in zip(checks, x, strict=True))
        )
    if origin is frozenset:
        each = _scalar_check(args[0], meta)
        return lambda x: isinstance(x, frozenset) and all(each(v) for v in x)
    if origin is not None:
        return lambda x: isinstance(x, origin)
    return _scalar_check(tp, meta)


def value_ok(tp: object, x: object, meta: typing.Mapping) -> bool:
    """Whether ``x`` is a valid value of annotation ``tp`` within the bounds of ``meta``."""
    return value_check(tp, meta)(x)


_CHECKS: dict[type, list[tuple[str, typing.Callable[[object], bool]]]] = {}


def _checks(cls: type) -> list[tuple[str, typing.Callable[[object], bool]]]:
    checks = _CHECKS.get(cls)
    if checks is None:
        hints = field_types(cls)
        checks = _CHECKS[cls] = [
            (f.name, value_check(hints[f.name], f.metadata)) for f in dataclasses.fields(cls)
        ]
    return checks


def check_settings(obj: object) -> None:
    """Check every field of the settings dataclass ``obj`` by its annotation and bounds.

    Raises :class:`SettingsError` at the first field that fails.
    """
    cls = type(obj)
    for name, ok in _checks(cls):
        value = getattr(obj, name)
        if not ok(value):
            meta = cls.__dataclass_fields__[name].metadata
            shown = "***" if meta.get("secret") else value
            raise SettingsError(cls.__name__, name, type_rule(field_types(cls)[name], meta), shown)


def is_settings_class(cls: object) -> bool:
    """True for a dataclass whose every field was declared with :func:`setting`."""
    return (
        isinstance(cls, type)
        and dataclasses.is_dataclass(cls)
        and all("fixed" in f.metadata for f in dataclasses.fields(cls))
    )
