"""Typed settings from a TOML file plus ``--set section.key=value`` overrides.

Parsed once at start-up; every key has the metric spec's default. Precedence:
defaults, then the file, then ``QBTC_<SECTION>_<KEY>`` environment variables
(how secrets should arrive), then ``--set``. ``[kafka.consumer]`` and
``[kafka.producer]`` pass librdkafka settings through as they are.

>>> s = load_settings(None, ["features.window=60", "features.bar_interval=1"])
>>> (s.features.window, s.features.corr_every)
(60, 60)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.validation import exchange_problem, symbol_problem
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
    max_ahead_ms: int = 10_000
    max_behind_ms: int = 86_400_000
    max_symbols: int = 500
    confirm_ticks: int = 3


@dataclass(frozen=True, slots=True)
class InputConfig:
    """``[input]``: how files and topics are read.

    ``symbols`` is an allow-list of ccxt-unified symbols (a TOML array, or
    comma-separated in ``--set input.symbols=BTC/USDT,ETH/USDT``); empty:
    every well-formed symbol. A tick or candle of another symbol is a
    ``value`` dead letter.
    """

    exchange: str = "unknown"
    block_bytes: int = 4 << 20
    symbols: tuple[str, ...] = ()


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


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """``[kafka]``: the cluster, topics, client security and tuning, recovery, metrics.

    Secrets (``sasl_password``, ``ssl_key_password``) belong in the
    environment: ``QBTC_KAFKA_SASL_PASSWORD``. ``consumer`` and ``producer``
    are librdkafka settings passed through (``[kafka.producer]`` tables or
    ``--set kafka.producer.linger.ms=20``).
    """

    brokers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = 4
    replication: int = 1
    consume_batch: int = 3_000
    timeout_s: float = 30.0
    security_protocol: str = ""
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: Secret = Secret()
    ssl_ca_location: str = ""
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""
    ssl_key_password: Secret = Secret()
    consumer: dict = field(default_factory=dict)
    producer: dict = field(default_factory=dict)
    recovery_dir: str = ""
    recovery_partitions: int = 1
    snapshot_interval_s: float = 10.0
    metrics_port: int = 0


@dataclass(frozen=True, slots=True)
class TradingConfig:
    """``[trading]``: the trading loop (signals, sizing, risk engine, paper broker).

    ``risk_engine = false`` turns the risk engine off (it then approves every
    order and never trips), for comparison runs. ``qvar_horizon_s`` is the
    portfolio QVaR's horizon: per-bar volatilities scale by the square root of
    the bars in it (default one day, the usual VaR limit horizon), so the breaker levels mean the same
    whatever the bar interval.
    ``control_file`` is where ``qbtc control`` appends operator commands.
    """

    initial_cash: float = 100_000.0
    allow_short: bool = False
    risk_engine: bool = True
    qvar_horizon_s: float = 86400.0
    max_leverage: float = 3.0
    max_position_share: float = 0.20
    max_order_notional: float = 250_000.0
    taker_fee_bps: float = 10.0
    maker_fee_bps: float = 2.0
    spread_bps: float = 2.0
    twap_threshold: float = 50_000.0
    target_daily_vol: float = 0.02
    min_trade_share: float = 0.002
    ers_threshold: float = 0.6
    entropy_size_limit: float = 0.6
    control_file: str = "var/control.jsonl"


BUILTIN_STRATEGIES = ("entropy_scalping", "trend_following", "mean_reversion", "breakout")


@dataclass(frozen=True, slots=True)
class StrategiesConfig:
    """``[strategies]``: which strategies trade, and each one's settings.

    ``use`` lists strategy specs (``builtin:NAME``, ``package.module:Class``
    or ``path/to/file.py:Class``); ``--strategy SPEC`` (repeatable) replaces
    it. ``params`` holds the ``[strategies.<name>]`` tables as given; each is
    checked against its strategy's settings class when the strategies load.
    """

    use: tuple[str, ...] = tuple(f"builtin:{name}" for name in BUILTIN_STRATEGIES)
    params: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settings:
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    input: InputConfig = field(default_factory=InputConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    run: RunConfig = field(default_factory=RunConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    trading: TradingConfig = field(default_factory=TradingConfig)
    strategies: StrategiesConfig = field(default_factory=StrategiesConfig)


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
    elif ftype == "tuple[str, ...]":
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return tuple(v.strip() for v in items if v.strip())
        ftype = "a list of strings"
    elif ftype == "Secret":
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
        msg = f"{where} must be a string"  # never echo a secret
        raise ConfigError(msg)
    elif ftype == "dict" and section == "strategies":
        return {str(k): dict(v) for k, v in value.items()}
    elif ftype == "dict":
        if isinstance(value, dict) and all(
            isinstance(v, (str, int, float, bool)) and not isinstance(v, dict) for v in value.values()
        ):
            return {str(k): v for k, v in value.items()}
        msg = f"{where} must be a table of librdkafka settings"
        raise ConfigError(msg)
    msg = f"{where} must be {ftype}, got {value!r}"
    raise ConfigError(msg)


def settings_from_table(cls, table: Mapping, where: str):
    """An operator's frozen settings dataclass from a config table (values from TOML or ``--set`` strings).

    Unknown keys and values of the wrong type or range are a :class:`ConfigError`
    naming ``where.key``.

    >>> from operators.signals.atr import ATRSettings
    >>> settings_from_table(ATRSettings, {"period": "20"}, "atr")
    ATRSettings(period=20)
    """
    known = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        msg = f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}"
        raise ConfigError(msg)
    values = {k: _coerce(where, k, known[k], v) for k, v in table.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        msg = f"[{where}]: {exc}"
        raise ConfigError(msg) from None


ENV_PREFIX = "QBTC_"


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``QBTC_SECTION_KEY=value`` variables as (section, key, value)."""
    sections = {
        f.name: {g.name for g in dataclasses.fields(f.default_factory)} for f in dataclasses.fields(Settings)
    }
    out = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section, keys in sections.items():
            key = rest[len(section) + 1 :]
            if rest.startswith(section + "_") and key in keys:
                out.append((section, key, value))
    return out


def _put(raw: dict, section: str, key: str, value) -> None:
    table = raw.setdefault(section, {})
    head, dot, tail = key.partition(".")
    if section == "kafka" and dot and head in ("consumer", "producer"):
        table.setdefault(head, {})[tail] = value
    elif section == "strategies" and dot:
        table.setdefault(head, {})[tail] = value
    else:
        table[key] = value


def load_settings(
    path: str | None, overrides: list[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, the TOML file at ``path``, ``QBTC_*`` variables of ``env``
    (default ``os.environ``), then ``section.key=value`` overrides."""
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
    for section, key, value in _env_overrides(os.environ if env is None else env):
        _put(raw, section, key, value)
    for item in overrides or []:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            msg = f"--set {item.partition('=')[0]!r}=...: expected section.key=value"
            raise ConfigError(msg)
        _put(raw, section, key, value.strip())
    sections = {}
    for sec_field in dataclasses.fields(Settings):
        cls = sec_field.default_factory
        given = raw.pop(sec_field.name, {})
        if not isinstance(given, dict):
            msg = f"[{sec_field.name}] must be a table"
            raise ConfigError(msg)
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        if sec_field.name == "strategies":  # [strategies.<name>] tables: checked when strategies load
            params = {k: v for k, v in given.items() if isinstance(v, dict)}
            given = {k: v for k, v in given.items() if not isinstance(v, dict)}
            if params:
                given["params"] = params
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
        (f.max_ahead_ms >= 1, "features.max_ahead_ms must be >= 1"),
        (f.max_behind_ms >= 1, "features.max_behind_ms must be >= 1"),
        (f.max_symbols >= 1, "features.max_symbols must be >= 1"),
        (f.confirm_ticks >= 1, "features.confirm_ticks must be >= 1"),
        (0 <= f.qvar_entropy_coef <= 1, "features.qvar_entropy_coef must be in [0, 1]"),
        (s.run.workers >= 1, "run.workers must be >= 1"),
        (s.store.batch_rows >= 1, "store.batch_rows must be >= 1"),
        (s.input.block_bytes >= 4096, "input.block_bytes must be >= 4096"),
        (s.simulator.symbols >= 1, "simulator.symbols must be >= 1"),
        (s.simulator.duration_s > 0, "simulator.duration_s must be > 0"),
        (s.kafka.partitions >= 1, "kafka.partitions must be >= 1"),
        (s.kafka.replication >= 1, "kafka.replication must be >= 1"),
        (s.kafka.consume_batch >= 1, "kafka.consume_batch must be >= 1"),
        (s.kafka.timeout_s > 0, "kafka.timeout_s must be > 0"),
        (s.kafka.recovery_partitions >= 1, "kafka.recovery_partitions must be >= 1"),
        (s.kafka.snapshot_interval_s > 0, "kafka.snapshot_interval_s must be > 0"),
        (0 <= s.kafka.metrics_port <= 65535, "kafka.metrics_port must be 0 (off) or a port"),
        (bool(s.kafka.brokers.strip()), "kafka.brokers must name at least one broker"),
        (s.trading.initial_cash > 0, "trading.initial_cash must be > 0"),
        (s.trading.qvar_horizon_s > 0, "trading.qvar_horizon_s must be > 0"),
        (s.trading.max_leverage > 0, "trading.max_leverage must be > 0"),
        (0 < s.trading.max_position_share <= 1, "trading.max_position_share must be in (0, 1]"),
        (s.trading.max_order_notional > 0, "trading.max_order_notional must be > 0"),
        (s.trading.twap_threshold > 0, "trading.twap_threshold must be > 0"),
        (s.trading.target_daily_vol > 0, "trading.target_daily_vol must be > 0"),
        (0 <= s.trading.min_trade_share < 1, "trading.min_trade_share must be in [0, 1)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    _validate_input(s.input)


def _validate_input(i: InputConfig) -> None:
    """``input.exchange`` and ``input.symbols`` must be names the readers accept."""
    found = [("exchange", exchange_problem(i.exchange))] + [("symbols", symbol_problem(x)) for x in i.symbols]
    for key, problem in found:
        if problem is not None:
            msg = f"input.{key}: {problem}"
            raise ConfigError(msg)


_SECURITY_KEYS = (
    ("security_protocol", "security.protocol"),
    ("sasl_mechanism", "sasl.mechanism"),
    ("sasl_username", "sasl.username"),
    ("sasl_password", "sasl.password"),
    ("ssl_ca_location", "ssl.ca.location"),
    ("ssl_certificate_location", "ssl.certificate.location"),
    ("ssl_key_location", "ssl.key.location"),
    ("ssl_key_password", "ssl.key.password"),
)
SECRET_WORDS = ("password", "secret", "token", "jaas")
"""librdkafka keys containing these words are never shown."""


def kafka_client_config(k: KafkaConfig, role: str) -> dict:
    """The librdkafka settings of a ``consumer``, ``producer`` or ``admin`` client.

    librdkafka's log lines and errors go to Python logging (``qbtc.librdkafka``),
    not to stderr; the first security failure is kept (``flows.kafka_diagnostics``).

    >>> conf = kafka_client_config(KafkaConfig(sasl_password=Secret("s3")), "producer")
    >>> conf["sasl.password"], conf["enable.idempotence"], conf["logger"].name
    ('s3', True, 'qbtc.librdkafka')
    """
    from flows.kafka_diagnostics import LIBRDKAFKA, on_error

    conf: dict = {
        "bootstrap.servers": k.brokers,
        "client.id": f"qbtc-{role}",
        "logger": LIBRDKAFKA,
        "error_cb": on_error,
    }
    for name, key in _SECURITY_KEYS:
        value = getattr(k, name)
        value = value.reveal() if isinstance(value, Secret) else value
        if value:
            conf[key] = value
    if role == "producer":
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        conf.update(k.producer)
    elif role == "consumer":
        conf.update(
            {
                "group.id": "qbtc",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.max.bytes": 64 << 20,
                "max.partition.fetch.bytes": 16 << 20,
                "queued.min.messages": 200_000,
            }
        )
        conf.update(k.consumer)
    return conf


def redacted(conf: Mapping) -> dict:
    """A client config safe to print: secret values replaced by ``***``.

    >>> redacted({"sasl.password": "s3", "linger.ms": 5})
    {'sasl.password': '***', 'linger.ms': 5}
    """
    return {key: "***" if any(w in key.lower() for w in SECRET_WORDS) else v for key, v in conf.items()}


def scrub(text: str, settings: Settings) -> str:
    """``text`` with every configured secret value replaced by ``***``."""
    k = settings.kafka
    secrets = [k.sasl_password.reveal(), k.ssl_key_password.reveal()]
    secrets += [
        str(v)
        for conf in (k.consumer, k.producer)
        for key, v in conf.items()
        if any(w in key.lower() for w in SECRET_WORDS)
    ]
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
