"""Typed settings from a TOML file plus ``--set section.key=value`` overrides.

Parsed once at start-up; every key has the metric spec's default.

>>> s = load_settings(None, ["features.window=60", "features.bar_interval=1"])
>>> (s.features.window, s.features.corr_every)
(60, 60)
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field

from sinks.clickhouse_store import DEFAULT_DSN


class ConfigError(Exception):
    """An unusable config file or override."""


@dataclass(frozen=True, slots=True)
class FeaturesConfig:
    """``[features]``: bars, features and correlations (see the metric spec)."""

    bar_interval: int = 1
    window: int = 300
    corr_window: int = 300
    corr_every: int = 60
    allowed_lateness_ms: int = 0
    qvar_entropy_coef: float = 0.3
    dedup_horizon_ms: int = 600_000


@dataclass(frozen=True, slots=True)
class InputConfig:
    """``[input]``: how files are read."""

    exchange: str = "unknown"
    block_bytes: int = 4 << 20


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: where results go."""

    dsn: str = DEFAULT_DSN
    batch_rows: int = 250_000


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """``[simulator]``: the synthetic market of ``qbtc run``."""

    symbols: int = 10
    duration_s: float = 900.0
    trades_per_s: float = 1000.0
    seed: int = 7


@dataclass(frozen=True, slots=True)
class RunConfig:
    """``[run]``: execution."""

    workers: int = 1
    progress: bool = True


@dataclass(frozen=True, slots=True)
class Settings:
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    input: InputConfig = field(default_factory=InputConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _coerce(section: str, key: str, ftype: str, value):
    where = f"{section}.{key}"
    if ftype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
    elif ftype == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif ftype == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif ftype == "str":
        if isinstance(value, str):
            return value
    msg = f"{where} must be {ftype}, got {value!r}"
    raise ConfigError(msg)


def load_settings(path: str | None, overrides: list[str] | None = None) -> Settings:
    """Defaults, then the TOML file at ``path``, then ``section.key=value`` overrides."""
    raw: dict[str, dict] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            msg = f"cannot read config {path}: {exc.strerror}"
            raise ConfigError(msg) from None
        except tomllib.TOMLDecodeError as exc:
            msg = f"config {path} is not valid TOML: {exc}"
            raise ConfigError(msg) from None
    for item in overrides or []:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            msg = f"--set {item!r}: expected section.key=value"
            raise ConfigError(msg)
        raw.setdefault(section, {})[key] = value.strip()
    sections = {}
    for sec_field in dataclasses.fields(Settings):
        cls = sec_field.default_factory
        given = raw.pop(sec_field.name, {})
        if not isinstance(given, dict):
            msg = f"[{sec_field.name}] must be a table"
            raise ConfigError(msg)
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = given.keys() - known.keys()
        if unknown:
            msg = f"unknown key(s) {', '.join(f'{sec_field.name}.{k}' for k in sorted(unknown))}"
            raise ConfigError(msg)
        sections[sec_field.name] = cls(
            **{k: _coerce(sec_field.name, k, known[k], v) for k, v in given.items()}
        )
    if raw:
        msg = f"unknown section(s) {', '.join(sorted(raw))}"
        raise ConfigError(msg)
    settings = Settings(**sections)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    f = s.features
    checks = [
        (f.bar_interval >= 1, "features.bar_interval must be >= 1 (seconds)"),
        (f.window >= 3, "features.window must be >= 3"),
        (f.corr_window >= 2, "features.corr_window must be >= 2"),
        (f.corr_every >= 1, "features.corr_every must be >= 1"),
        (f.allowed_lateness_ms >= 0, "features.allowed_lateness_ms must be >= 0"),
        (f.dedup_horizon_ms >= 0, "features.dedup_horizon_ms must be >= 0"),
        (0 <= f.qvar_entropy_coef <= 1, "features.qvar_entropy_coef must be in [0, 1]"),
        (s.run.workers >= 1, "run.workers must be >= 1"),
        (s.store.batch_rows >= 1, "store.batch_rows must be >= 1"),
        (s.input.block_bytes >= 4096, "input.block_bytes must be >= 4096"),
        (s.simulator.symbols >= 1, "simulator.symbols must be >= 1"),
        (s.simulator.duration_s > 0, "simulator.duration_s must be > 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
