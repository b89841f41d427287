"""Typed settings from a TOML file plus ``--set section.key=value`` overrides.

Parsed once at start-up. Each section is a frozen settings dataclass built by
one loader (:func:`load_settings`) along one path: values from TOML, from
``QBTC_<SECTION>_<KEY>`` environment variables (how secrets should arrive)
and from ``--set`` strings are coerced by the field's annotation, then the
class checks itself (:func:`schemas.settings.check_settings`): one error
format, ``section.key must be RULE, got VALUE``. Precedence: defaults, the
file, the environment, then ``--set``.

The operator families read their own sections straight into their settings
classes: ``[risk]`` (with the ``[risk.qvar]`` subtable) is
:class:`~operators.risk.settings.RiskSettings`, ``[sizing]``
:class:`~operators.signals.sizing.SizingSettings`, ``[execution]`` the paper
venue's :class:`~operators.execution.cost_model.BrokerSettings`,
``[execution_limits]`` the execution service's hard limits
(:class:`~operators.execution.limits.ExecutionLimits`, ``qbtc execute``),
``[portfolio]``, ``[regime]``, ``[weights]``, ``[atr]``, ``[levels]`` (the decision levels'
cadences, :class:`~operators.signals.levels.LevelsSettings`) and ``[var_backtest]``
(:class:`~operators.risk.var_backtest.VarBacktestSettings`, the backtest of
``features.var_model``'s forecasts) likewise. Fields
derived from other keys (:data:`DERIVED`: every ``bar_interval_ms`` from
``features.bar_interval``, the QVaR's entropy coefficient and horizon) are
filled here and are not keys of their own. ``[kafka.consumer]`` and
``[kafka.producer]`` pass librdkafka settings through as they are.

>>> sets = ["features.window=60", "features.bar_interval=60", "risk.breaker_levels=0.01,0.02,0.03"]
>>> s = load_settings(None, sets, env={})
>>> (s.features.window, s.features.corr_every, s.risk.breaker_levels, s.risk.qvar.horizon_bars)
(60, 60, (0.01, 0.02, 0.03), 1440.0)
>>> load_settings(None, ["trading.ers_threshold=0.7"], env={})
Traceback (most recent call last):
...
flows.config_values.ConfigError: trading.ers_threshold moved to risk.ers_threshold
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flows.config_values import (
    ConfigError,
    Secret,
    build_settings,
    config_keys,
    field_default,
    is_table,
    toml_value,
)
from flows.config_values import coerce as coerce
from flows.config_values import settings_from_table as settings_from_table
from operators.execution.cost_model import BrokerSettings
from operators.execution.limits import ExecutionLimits
from operators.risk.portfolio import PortfolioSettings
from operators.risk.settings import RiskSettings
from operators.risk.var_backtest import VarBacktestSettings
from operators.risk.var_models import VAR_MODELS
from operators.signals.atr import ATRSettings
from operators.signals.levels import LevelsSettings
from operators.signals.regime import RegimeSettings
from operators.signals.sizing import SizingSettings
from operators.signals.strategy_weights import StrategyWeightsSettings
from schemas.settings import MAX_WINDOW, SettingsError, check_settings, field_types, setting, type_rule
from schemas.validation import exchange_problem, symbol_problem
from sinks.clickhouse_store import DEFAULT_DSN

MAX_BAR_INTERVAL = 366 * 86_400  # a year of seconds: grid times stay far inside int64 milliseconds
MAX_RESOLUTIONS = 8
"""Bar intervals a run computes at most (each adds its features and correlation grid)."""


@dataclass(frozen=True, slots=True)
class FeaturesConfig:
    """``[features]``: bars, features and correlations (see the metric spec).

    ``var_model`` names the next-bar VaR/ES forecaster behind the features'
    ``fvar95``/``fes95`` (:data:`~operators.risk.var_models.VAR_MODELS`).
    Windows are at most :data:`~schemas.settings.MAX_WINDOW`.

    Resolutions: ``bar_interval`` is the finest (the base: ticks become its
    bars, the trading loop's steps are its bars); ``bar_intervals`` adds
    coarser ones, each a multiple of it, listed once, in any order
    (``[1, 60, 900, 3600]``; the base is one whether listed or not; at most
    :data:`MAX_RESOLUTIONS` resolutions with it). Bars of every resolution
    roll up from the base's, and each has its own features and correlations,
    with the windows of ``interval_windows``, ``interval_corr_windows`` and
    ``interval_corr_every`` (one entry per resolution, finest first; empty:
    ``window``, ``corr_window`` and ``corr_every`` at every resolution).
    """

    bar_interval: int = setting(1, ge=1, le=MAX_BAR_INTERVAL, fixed=True)
    bar_intervals: tuple[int, ...] = setting((), ge=1, le=MAX_BAR_INTERVAL, fixed=True)
    window: int = setting(300, ge=3, le=MAX_WINDOW, fixed=True)
    corr_window: int = setting(300, ge=2, le=MAX_WINDOW, fixed=True)
    corr_every: int = setting(60, ge=1, le=MAX_WINDOW, fixed=True)
    interval_windows: tuple[int, ...] = setting((), ge=3, le=MAX_WINDOW, fixed=True)
    interval_corr_windows: tuple[int, ...] = setting((), ge=2, le=MAX_WINDOW, fixed=True)
    interval_corr_every: tuple[int, ...] = setting((), ge=1, le=MAX_WINDOW, fixed=True)
    allowed_lateness_ms: int = setting(0, ge=0)
    qvar_entropy_coef: float = setting(0.3, ge=0, le=1)
    dedup_horizon_ms: int = setting(600_000, ge=0)
    max_ahead_ms: int = setting(10_000, ge=1)
    max_behind_ms: int = setting(86_400_000, ge=1)
    max_symbols: int = setting(500, ge=1)
    confirm_ticks: int = setting(3, ge=1)
    var_model: str = setting("fhs", fixed=True)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.var_model not in VAR_MODELS:
            raise SettingsError.of(self, "var_model", f"one of {', '.join(VAR_MODELS)}")
        if any(i % self.bar_interval for i in self.bar_intervals):
            raise SettingsError.of(self, "bar_intervals", f"multiples of bar_interval ({self.bar_interval})")
        repeated = sorted({i for i in self.bar_intervals if self.bar_intervals.count(i) > 1})
        if repeated:
            rule = f"distinct intervals ({', '.join(map(str, repeated))} listed more than once)"
            raise SettingsError.of(self, "bar_intervals", rule)
        if len(self.intervals) > MAX_RESOLUTIONS:
            rule = f"at most {MAX_RESOLUTIONS} resolutions counting bar_interval ({self.bar_interval})"
            raise SettingsError.of(self, "bar_intervals", rule)
        n = len(self.intervals)
        for name in ("interval_windows", "interval_corr_windows", "interval_corr_every"):
            if getattr(self, name) and len(getattr(self, name)) != n:
                raise SettingsError.of(self, name, f"empty or {n} entries (one per resolution, finest first)")

    @property
    def intervals(self) -> tuple[int, ...]:
        """Every resolution's bar interval in seconds, the base (``bar_interval``) first."""
        return tuple(sorted({self.bar_interval, *self.bar_intervals}))

    def resolutions(self) -> tuple[tuple[int, int, int, int], ...]:
        """(interval s, window, corr_window, corr_every) of every resolution, finest first."""
        n = len(self.intervals)
        windows = self.interval_windows or (self.window,) * n
        corr_windows = self.interval_corr_windows or (self.corr_window,) * n
        corr_every = self.interval_corr_every or (self.corr_every,) * n
        return tuple(zip(self.intervals, windows, corr_windows, corr_every, strict=True))


@dataclass(frozen=True, slots=True)
class InputConfig:
    """``[input]``: how files and topics are read.

    ``symbols`` is an allow-list of ccxt-unified symbols (a TOML array, or
    comma-separated in ``--set input.symbols=BTC/USDT,ETH/USDT``); empty:
    every well-formed symbol. A tick or candle of another symbol is a
    ``value`` dead letter.
    """

    exchange: str = setting("unknown")
    block_bytes: int = setting(4 << 20, ge=4096)
    symbols: tuple[str, ...] = setting(())

    def __post_init__(self) -> None:
        check_settings(self)
        problem = exchange_problem(self.exchange)
        if problem is not None:
            raise SettingsError.of(self, "exchange", f"a name the readers accept ({problem})")
        for symbol in self.symbols:
            problem = symbol_problem(symbol)
            if problem is not None:
                raise SettingsError.of(self, "symbols", f"ccxt-unified symbols ({problem})")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: where results go."""

    dsn: str = setting(DEFAULT_DSN)
    batch_rows: int = setting(250_000, ge=1)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """``[simulator]``: the synthetic market of ``qbtc run``."""

    symbols: int = setting(10, ge=1)
    duration_s: float = setting(900.0, gt=0, le=1e9)  # ~31 years: the run ends long before 2200
    trades_per_s: float = setting(1000.0, gt=0)
    seed: int = setting(7)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """``[run]``: execution."""

    workers: int = setting(1, ge=1)
    progress: bool = setting(True)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """``[kafka]``: the cluster, topics, client security and tuning, recovery, metrics.

    Secrets (``sasl_password``, ``ssl_key_password``) belong in the
    environment: ``QBTC_KAFKA_SASL_PASSWORD``. ``consumer`` and ``producer``
    are librdkafka settings passed through (``[kafka.producer]`` tables or
    ``--set kafka.producer.linger.ms=20``).
    """

    brokers: str = setting("127.0.0.1:9092")
    topic_prefix: str = setting("")
    partitions: int = setting(4, ge=1)
    replication: int = setting(1, ge=1)
    consume_batch: int = setting(3_000, ge=1)
    timeout_s: float = setting(30.0, gt=0)
    security_protocol: str = setting("")
    sasl_mechanism: str = setting("")
    sasl_username: str = setting("")
    sasl_password: Secret = setting(Secret(), secret=True)
    ssl_ca_location: str = setting("")
    ssl_certificate_location: str = setting("")
    ssl_key_location: str = setting("")
    ssl_key_password: Secret = setting(Secret(), secret=True)
    consumer: dict = setting(default_factory=dict, secret=True)
    producer: dict = setting(default_factory=dict, secret=True)
    recovery_dir: str = setting("")
    recovery_partitions: int = setting(1, ge=1)
    snapshot_interval_s: float = setting(10.0, gt=0)
    metrics_port: int = setting(0, ge=0, le=65535)

    def __post_init__(self) -> None:
        check_settings(self)
        if not self.brokers.strip():
            raise SettingsError.of(self, "brokers", "at least one broker")
        for name in ("consumer", "producer"):
            if not all(isinstance(v, (str, int, float, bool)) for v in getattr(self, name).values()):
                raise SettingsError(type(self).__name__, name, "a table of librdkafka settings", "***")


@dataclass(frozen=True, slots=True)
class TradingConfig:
    """``[trading]``: the trading loop's own keys, and the operator control file.

    ``allow_short``, ``min_trade_share``, ``rebalance_band``,
    ``ladder_levels`` and the cost gate's ``cost_gate``, ``cost_ratio``,
    ``edge_scale`` and ``edge_horizon_s`` are those of
    :class:`~operators.trading_loop.TradingSettings` (same defaults and
    rules, tested); ``control_file`` is where ``qbtc
    control`` appends operator commands. The risk engine, sizing, the paper
    venue and the portfolio have their own sections.
    """

    allow_short: bool = setting(False)
    min_trade_share: float = setting(0.002, ge=0, lt=1)
    rebalance_band: float = setting(0.5, ge=0)
    ladder_levels: int = setting(3, ge=1)
    cost_gate: bool = setting(True)  # entries only when the expected edge beats the expected cost
    cost_ratio: float = setting(1.0, ge=0)  # the gate passes when edge_bps > cost_ratio x cost_bps
    edge_scale: float = setting(0.1, ge=0)  # k of edge_bps = k x strength x sigma x sqrt(H) x 10_000
    edge_horizon_s: int = setting(1800, ge=1)  # the expected holding period, seconds
    control_file: str = setting("var/control.jsonl")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class RiskKeys:
    """Keys of ``[risk]`` that are not fields of :class:`RiskSettings`.

    ``qvar_horizon_s`` is the portfolio QVaR's horizon: per-bar volatilities
    scale by the square root of the bars in it (default one day, the usual
    VaR limit horizon), so the breaker levels mean the same whatever the bar
    interval; it sets ``risk.qvar.horizon_bars``.
    """

    qvar_horizon_s: float = setting(86_400.0, gt=0)

    def __post_init__(self) -> None:
        check_settings(self)


BUILTIN_STRATEGIES = ("entropy_scalping", "trend_following", "mean_reversion", "breakout")


@dataclass(frozen=True, slots=True)
class StrategiesConfig:
    """``[strategies]``: which strategies trade, and each one's settings.

    ``use`` lists strategy specs (``builtin:NAME``, ``package.module:Class``
    or ``path/to/file.py:Class``); ``--strategy SPEC`` (repeatable) replaces
    it. ``params`` holds the ``[strategies.<name>]`` tables as given; each is
    checked against its strategy's settings class when the strategies load.
    """

    use: tuple[str, ...] = setting(tuple(f"builtin:{name}" for name in BUILTIN_STRATEGIES))
    params: dict = setting(default_factory=dict)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every section. Build it with :func:`load_settings` (which fills the derived fields)."""

    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    var_backtest: VarBacktestSettings = field(default_factory=VarBacktestSettings)
    input: InputConfig = field(default_factory=InputConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    run: RunConfig = field(default_factory=RunConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    trading: TradingConfig = field(default_factory=TradingConfig)
    risk: RiskSettings = field(default_factory=RiskSettings)
    sizing: SizingSettings = field(default_factory=SizingSettings)
    execution: BrokerSettings = field(default_factory=lambda: BrokerSettings(bar_interval_ms=1000))
    execution_limits: ExecutionLimits = field(default_factory=ExecutionLimits)
    portfolio: PortfolioSettings = field(default_factory=PortfolioSettings)
    regime: RegimeSettings = field(default_factory=RegimeSettings)
    weights: StrategyWeightsSettings = field(default_factory=StrategyWeightsSettings)
    atr: ATRSettings = field(default_factory=ATRSettings)
    strategies: StrategiesConfig = field(default_factory=StrategiesConfig)
    levels: LevelsSettings = field(default_factory=LevelsSettings)


EXTRA_KEYS: dict[str, type] = {"risk": RiskKeys}
"""Sections with keys that are not fields of their settings class (a settings class of those keys)."""

DERIVED: dict[str, tuple[str, Callable]] = {
    "execution.bar_interval_ms": ("features.bar_interval", lambda f, x: f.bar_interval * 1000),
    "sizing.bar_interval_ms": ("features.bar_interval", lambda f, x: f.bar_interval * 1000),
    "weights.bar_interval_ms": ("features.bar_interval", lambda f, x: f.bar_interval * 1000),
    "risk.qvar.entropy_coef": ("features.qvar_entropy_coef", lambda f, x: f.qvar_entropy_coef),
    "risk.qvar.horizon_bars": (
        "risk.qvar_horizon_s / features.bar_interval",
        lambda f, x: max(1.0, x["risk"].qvar_horizon_s / f.bar_interval),
    ),
}
"""Fields filled from other keys: ``section.field`` -> (where it comes from, f(features, extra keys))."""

MOVED: dict[str, str] = {
    "trading.initial_cash": "portfolio.initial_cash",
    "trading.risk_engine": "risk.enabled",
    "trading.qvar_horizon_s": "risk.qvar_horizon_s",
    "trading.max_leverage": "risk.max_leverage",
    "trading.max_position_share": "risk.max_position_share and sizing.max_fraction",
    "trading.max_order_notional": "risk.max_order_notional",
    "trading.ers_threshold": "risk.ers_threshold",
    "trading.taker_fee_bps": "execution.taker_fee_bps",
    "trading.maker_fee_bps": "execution.maker_fee_bps",
    "trading.spread_bps": "execution.spread_bps",
    "trading.twap_threshold": "execution.twap_threshold",
    "trading.target_daily_vol": "sizing.target_daily_vol",
    "trading.entropy_size_limit": "sizing.entropy_limit",
    # [execution] is the paper venue's cost model; the execution service's hard limits have their own
    "execution.max_order_notional": "execution_limits.max_order_notional",
    "execution.max_daily_notional": "execution_limits.max_daily_notional",
    "execution.max_open_orders": "execution_limits.max_open_orders",
    "execution.price_band_bps": "execution_limits.price_band_bps",
    "execution.deadman_s": "execution_limits.deadman_s",
}
"""Keys that moved: old key -> where it is now (an error names the new key)."""


def section_keys(section: str) -> list[tuple[str, object, dataclasses.Field]]:
    """The keys of a section (its extra keys included, derived fields left out)."""
    cls = field_types(Settings)[section]
    keys = config_keys(cls)
    if section in EXTRA_KEYS:
        keys += config_keys(EXTRA_KEYS[section])
    return [k for k in keys if f"{section}.{k[0]}" not in DERIVED]


ENV_PREFIX = "QBTC_"


def _env_names() -> dict[str, tuple[str, str]]:
    """``qbtc_section_key`` (lower case) -> (section, dotted key), moved keys included."""
    names = {}
    for section in field_types(Settings):
        for key, tp, _f in section_keys(section):
            if tp is not dict:
                names[f"{section}_{key.replace('.', '_')}"] = (section, key)
    for old in MOVED:
        section, _, key = old.partition(".")
        names[f"{section}_{key}"] = (section, key)
    return names


OTHER_ENV = frozenset(
    {
        "QBTC_KAFKA_CACHE",
        "QBTC_EXECUTION_API_KEY",
        "QBTC_EXECUTION_API_SECRET",
        "QBTC_VENUE_API_KEY",
        "QBTC_VENUE_API_SECRET",
        # the alert receivers (infra/prometheus/render.py)
        "QBTC_ALERT_SLACK_WEBHOOK_URL",
        "QBTC_ALERT_SLACK_CHANNEL",
        "QBTC_ALERT_TELEGRAM_BOT_TOKEN",
        "QBTC_ALERT_TELEGRAM_CHAT_ID",
        "QBTC_ALERT_SMTP_SMARTHOST",
        "QBTC_ALERT_SMTP_FROM",
        "QBTC_ALERT_SMTP_USERNAME",
        "QBTC_ALERT_SMTP_PASSWORD",
        "QBTC_ALERT_EMAIL_TO",
        "QBTC_ALERT_WEBHOOK_URL",
    }
)
"""``QBTC_*`` variables that are not config keys: the Kafka jar cache, the API keys and the alert
receivers' settings."""
TEST_ENV_PREFIXES = ("QBTC_TEST_", "QBTC_FUZZ_", "QBTC_KILL", "QBTC_SLOW")
"""``QBTC_*`` knobs of the test suite (``tests/``), which qbtc itself never reads."""


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``QBTC_SECTION_KEY=value`` variables as (section, key, value).

    Any other ``QBTC_*`` variable (but :data:`OTHER_ENV` and the test suite's) is a ConfigError naming
    it and the nearest known key: a typo never passes silently.

    >>> _env_overrides({"QBTC_FEATURES_WINDOW": "60", "QBTC_KAFKA_CACHE": "/c", "HOME": "/h"})
    [('features', 'window', '60')]
    >>> _env_overrides({"QBTC_FEATURES_WINDW": "60"})
    Traceback (most recent call last):
    ...
    flows.config_values.ConfigError: unknown environment variable QBTC_FEATURES_WINDW: did you mean \
QBTC_FEATURES_WINDOW (features.window)?
    """
    names = _env_names()
    out = []
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in OTHER_ENV or name.startswith(TEST_ENV_PREFIXES):
            continue
        found = names.get(name[len(ENV_PREFIX) :].lower())
        if found is None:
            raise ConfigError(_unknown_env(name, names))
        out.append((*found, value))
    return out


def _unknown_env(name: str, names: dict[str, tuple[str, str]]) -> str:
    """The message for an unknown ``QBTC_*`` variable: it, and the nearest key's variable."""
    import difflib

    wanted = name[len(ENV_PREFIX) :].lower()
    nearest = difflib.get_close_matches(wanted, list(names), n=1, cutoff=0.0)
    msg = f"unknown environment variable {name}"
    if nearest:
        section, key = names[nearest[0]]
        msg += f": did you mean {ENV_PREFIX}{nearest[0].upper()} ({section}.{key})?"
    return msg


def _put(raw: dict, section: str, key: str, value) -> None:
    """Set ``section.key`` (dotted: a subtable's key, a librdkafka key, a strategy's table) in ``raw``."""
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        return  # the section is not a table: an error when it is built
    cls = field_types(Settings).get(section)
    while cls is not None and "." in key:
        head, _, tail = key.partition(".")
        tp = field_types(cls).get(head)
        if tp is dict:  # librdkafka pass-through: the rest is one key
            table.setdefault(head, {})[tail] = value
            return
        if section == "strategies" and tp is None:  # [strategies.<name>]
            table.setdefault(head, {})[tail] = value
            return
        if not is_table(tp):
            break
        table = table.setdefault(head, {})
        cls, key = tp, tail
    table[key] = value


def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        msg = f"cannot read config {path}: {exc.strerror}"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"config {path} is not valid TOML: {exc}"
        raise ConfigError(msg) from None


def load_settings(
    path: str | None, overrides: list[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, the TOML file at ``path``, ``QBTC_*`` variables of ``env``
    (default ``os.environ``), then ``section.key=value`` overrides."""
    raw: dict[str, dict] = _read_toml(path) if path is not None else {}
    for section, key, value in _env_overrides(os.environ if env is None else env):
        _put(raw, section, key, value)
    for item in overrides or []:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            msg = f"--set {item.partition('=')[0]!r}=...: expected section.key=value"
            raise ConfigError(msg)
        _put(raw, section, key, value.strip())
    types = field_types(Settings)
    unknown = sorted(set(raw) - set(types))
    if unknown:
        msg = f"unknown section(s) {', '.join(unknown)}"
        raise ConfigError(msg)
    for section, table in raw.items():
        for key in table if isinstance(table, dict) else ():
            if f"{section}.{key}" in MOVED:
                msg = f"{section}.{key} moved to {MOVED[f'{section}.{key}']}"
                raise ConfigError(msg)
    if isinstance(raw.get("strategies"), dict):  # [strategies.<name>] tables: checked when strategies load
        given = raw["strategies"]
        params = {k: v for k, v in given.items() if isinstance(v, dict)}
        raw["strategies"] = {k: v for k, v in given.items() if not isinstance(v, dict)}
        if params:
            raw["strategies"]["params"] = params
    extras = {}
    for section, cls in EXTRA_KEYS.items():
        table = raw.get(section, {})
        if isinstance(table, dict):
            names = {f.name for f in dataclasses.fields(cls)}
            extras[section] = build_settings(cls, {k: v for k, v in table.items() if k in names}, section, {})
            raw[section] = {k: v for k, v in table.items() if k not in names}
    features = build_settings(FeaturesConfig, raw.get("features", {}), "features", {})
    derived: dict[str, dict[str, tuple[str, object]]] = {}
    for key, (source, make) in DERIVED.items():
        section, _, rest = key.partition(".")
        derived.setdefault(section, {})[rest] = (source, make(features, extras))
    sections = {"features": features}
    for section, cls in types.items():
        if section != "features":
            sections[section] = build_settings(cls, raw.get(section, {}), section, derived.get(section, {}))
    return Settings(**sections)


def _reference_lines(section: str, cls, extra=None) -> list[str]:
    lines, tables = [], []
    for f in dataclasses.fields(cls) + (dataclasses.fields(extra) if extra else ()):
        tp = field_types(cls if f in dataclasses.fields(cls) else extra)[f.name]
        if f"{section}.{f.name}" in DERIVED or tp is dict:
            continue  # filled from other keys; pass-through tables
        if is_table(tp):
            tables.append((f"{section}.{f.name}", tp))
            continue
        value = field_default(f)
        rule = "a string (a secret: set it in the environment)" if tp is Secret else type_rule(tp, f.metadata)
        fixed = "; fixed on resume" if f.metadata.get("fixed") else ""
        text = f"{f.name} = {toml_value(value)}" if value is not None else f"# {f.name} = (none)"
        lines.append(f"{text:<34} # {rule}{fixed}")
    for name, tp in tables:
        lines += ["", f"[{name}]", *_reference_lines(name, tp)]
    return lines


def config_reference() -> str:
    """Every section and key as TOML with its default, its rule as a comment (what ``README`` shows).

    Derived fields are left out (named at the end); an optional key whose
    default is None is commented out.
    """
    lines: list[str] = []
    for section, cls in field_types(Settings).items():
        lines += [f"[{section}]", *_reference_lines(section, cls, EXTRA_KEYS.get(section)), ""]
    lines.append("# not keys, filled from others:")
    lines += [f"#   {key} <- {source}" for key, (source, _) in DERIVED.items()]
    return "\n".join(lines) + "\n"


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


if __name__ == "__main__":  # python -m flows.config: the key reference the README shows
    print(config_reference(), end="")
