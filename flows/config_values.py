"""Config text to typed settings: coercion by annotation and the one path every section takes.

Values come from TOML (typed), ``QBTC_*`` environment variables and
``--set`` (strings); :func:`coerce` turns either into a field's annotation,
:func:`build_settings` builds a settings dataclass from a table (subtables
for nested settings) and turns its :class:`~schemas.settings.SettingsError`
into a :class:`ConfigError` naming the key: ``section.key must be RULE, got
VALUE``. :func:`toml_value` writes a value back as TOML.

>>> from operators.risk.portfolio_risk import PortfolioRiskSettings
>>> build_settings(PortfolioRiskSettings, {"z": "2", "missing_vol": "none"}, "risk.qvar", {}).z
2.0
>>> build_settings(PortfolioRiskSettings, {"missing_corr": 2}, "risk.qvar", {})
Traceback (most recent call last):
...
flows.config_values.ConfigError: risk.qvar.missing_corr must be a finite number in [-1, 1], got 2.0
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

from schemas.errors import UsageProblem
from schemas.settings import SettingsError, field_types, optional_of, type_rule


class ConfigError(UsageProblem):
    """An unusable config file or override."""


class Secret:
    """A string that never shows itself in reprs, messages or logs.

    >>> s = Secret("hunter2")
    >>> s, str(s), s.reveal()
    (Secret('***'), '***', 'hunter2')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "***" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_NONE_WORDS = ("", "none")
_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")


class _NotCoercible(Exception):
    pass


def _scalar(tp, value):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif tp is Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _NotCoercible


def coerce(tp, value):
    """``value`` (from TOML, an environment variable or ``--set``) as annotation ``tp``.

    Strings are parsed (``"1_000"``, ``"true"``, ``"0.01,0.02"`` for tuples and
    sets, ``"none"`` or empty for an optional value); raises ``ValueError``
    when the value cannot be of that type (its range is the class's check).

    >>> coerce(tuple[float, float], "0.8, 0.9"), coerce(frozenset[str], ["crisis"])
    ((0.8, 0.9), frozenset({'crisis'}))
    >>> coerce(float | None, "none"), coerce(int, "1_000"), coerce(bool, "off")
    (None, 1000, False)
    """
    inner = optional_of(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        return coerce(inner, value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if origin in (tuple, frozenset):
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise _NotCoercible
            if args[0] is str or isinstance(value, str):
                items = [v.strip() if isinstance(v, str) else v for v in items]
                items = [v for v in items if v != ""]
            return origin(_scalar(args[0], v) for v in items)
        return _scalar(tp, value)
    except _NotCoercible:
        msg = f"not coercible to {tp}"
        raise ValueError(msg) from None


def is_table(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def build_settings(cls, table, where: str, derived: Mapping[str, tuple[str, object]]):
    """``cls`` from a config table: the one path every section takes.

    ``derived`` maps a dotted field (relative to ``cls``) to (its source key,
    its value); those fields are filled and may not be given.
    """
    if not isinstance(table, Mapping):
        msg = f"[{where}] must be a table"
        raise ConfigError(msg)
    types = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(types))
    if unknown:
        msg = f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}"
        raise ConfigError(msg)
    values = {}
    for name, tp in types.items():
        path = f"{where}.{name}"
        if name in derived:
            source, value = derived[name]
            if name in table:
                msg = f"{path} is not a key of its own: it comes from {source}"
                raise ConfigError(msg)
            values[name] = value
            continue
        inner = {k.partition(".")[2]: v for k, v in derived.items() if k.startswith(f"{name}.")}
        if is_table(tp) and (name in table or inner):
            values[name] = build_settings(tp, table.get(name, {}), path, inner)
        elif name in table:
            try:
                values[name] = coerce(tp, table[name])
            except ValueError:
                meta = fields[name].metadata
                shown = "***" if meta.get("secret") else table[name]
                msg = f"{path} must be {type_rule(tp, meta)}, got {shown!r}"
                raise ConfigError(msg) from None
    try:
        return cls(**values)
    except SettingsError as exc:
        msg = f"{where}.{exc.name} must be {exc.rule}, got {exc.value!r}"
        raise ConfigError(msg) from None
    except (TypeError, ValueError) as exc:
        msg = f"[{where}]: {exc}"
        raise ConfigError(msg) from None


def settings_from_table(cls, table: Mapping, where: str):
    """An operator's frozen settings dataclass from a config table (values from TOML or ``--set`` strings).

    The same path as every section of :func:`load_settings`: unknown keys and
    values of the wrong type or range are a :class:`ConfigError` naming
    ``where.key``.

    >>> from operators.signals.atr import ATRSettings
    >>> settings_from_table(ATRSettings, {"period": "20"}, "atr")
    ATRSettings(period=20)
    >>> from operators.signals.atr import ATRSettings
    >>> settings_from_table(ATRSettings, {"period": 0}, "strategies.mine")
    Traceback (most recent call last):
    ...
    flows.config_values.ConfigError: strategies.mine.period must be an int in [1, 10000000], got 0
    """
    return build_settings(cls, table, where, {})


def config_keys(cls, prefix: str = "") -> list[tuple[str, object, dataclasses.Field]]:
    """(dotted key, annotation, field) of every key of settings class ``cls``, subtables flattened."""
    out = []
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        if is_table(tp):
            out += config_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", tp, f))
    return out


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Secret):
        return '""'
    if isinstance(value, (tuple, frozenset)):
        items = sorted(value) if isinstance(value, frozenset) else value
        return "[" + ", ".join(toml_value(v) for v in items) + "]"
    if isinstance(value, dict):
        return (
            "{}"
            if not value
            else "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
        )
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return (
            repr(value) if value == value and abs(value) != float("inf") else ("inf" if value > 0 else "nan")
        )
    return repr(value)


def field_default(f: dataclasses.Field):
    """A field's default value (its factory's product)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default
