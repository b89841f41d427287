"""Load the strategies of a run from ``[strategies] use`` (or ``--strategy``) at start-up.

A spec names a strategy class:

* ``builtin:NAME``: one of the built-ins (``operators.signals.strategies.BUILTINS``);
* ``package.module:Class``: a class in an importable module (installed, or on ``PYTHONPATH``);
* ``path/to/file.py:Class``: a class in a Python file anywhere (relative paths
  from the working directory). The file is loaded once per process as the
  module ``qbtc_strategy_<stem>_<hash of its resolved path>`` and registered
  in ``sys.modules``, so its instances pickle, and a snapshot taken by one
  run unpickles in the next (the module name does not change while the file
  stays where it is).

Each class must follow the strategy protocol (``operators.signals.strategy``);
its settings come from ``[strategies.<name>]`` (or ``--set
strategies.<name>.key=value``) through its ``settings_class``. Every problem
(bad spec, missing file, import error, no such class, not a strategy,
duplicate names, a table for a strategy not in use, bad settings, an
instance that cannot be made or pickled) is a :class:`StrategyLoadError`
with one line naming the spec, before the flow runs.

>>> from flows.config import StrategiesConfig
>>> specs = load_strategies(StrategiesConfig(params={"breakout": {"window": "90"}}))
>>> [(s.name, s.cls.__name__) for s in specs]
[('entropy_scalping', 'EntropyScalping'), ('trend_following', 'TrendFollowing'), \
('mean_reversion', 'MeanReversion'), ('breakout', 'Breakout')]
>>> specs[3].settings.window
90
>>> load_strategies(StrategiesConfig(use=("builtin:nope",)))
Traceback (most recent call last):
...
flows.strategy_loader.StrategyLoadError: strategy 'builtin:nope': no built-in strategy 'nope' \
(built-ins: entropy_scalping, trend_following, mean_reversion, breakout, online_model)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import pickle
import re
import sys
import traceback
from pathlib import Path

from flows.config import ConfigError, StrategiesConfig, settings_from_table
from operators.signals.strategies import BUILTINS
from operators.signals.strategy import NAME, RESERVED_NAMES, StrategySpec
from schemas.errors import UsageProblem
from schemas.records import REGIMES

BUILTIN = "builtin:"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class StrategyLoadError(ConfigError, UsageProblem):
    """A strategy spec that cannot be loaded, or a strategy that cannot run: exit code 2."""


def _fail(spec: str, problem: str) -> StrategyLoadError:
    return StrategyLoadError(f"strategy {spec!r}: {problem}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def module_name(path: Path) -> str:
    """The module name a strategy file is loaded as: stable for a resolved path.

    >>> module_name(Path("/home/me/strategies/ma-cross.py"))
    'qbtc_strategy_ma_cross_4659d0abeb'
    """
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    return f"qbtc_strategy_{stem}_{digest}"


def _failure(exc: BaseException, path: Path | None) -> str:
    """What went wrong running code of the file at ``path``: ``Type: message (line N)``, N of the
    deepest traceback frame in that file (the line of a syntax error)."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    lines = [f.lineno for f in frames if path is not None and Path(f.filename) == path]
    return _one_line(exc) + (f" (line {lines[-1]})" if lines else "")


def _source(cls: type) -> Path | None:
    """The file a class was defined in, if it has one."""
    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return Path(file).resolve() if file else None


def _load_file(spec: str, given: str):
    path = Path(given).expanduser().resolve()
    if not path.is_file():
        raise _fail(spec, f"no such file {given}")
    name = module_name(path)
    known = sys.modules.get(name)
    if known is not None and getattr(known, "__file__", None) == str(path):
        return known
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:  # pragma: no cover - a .py path always has one
        raise _fail(spec, f"cannot load {given} as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # before running it: dataclasses and pickle look the module up
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: any error is theirs to fix
        del sys.modules[name]
        raise _fail(spec, f"cannot load {given}: {_failure(exc, path)}") from None
    return module


def _load_module(spec: str, dotted: str):
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (dotted == exc.name or dotted.startswith(exc.name + ".")):
            raise _fail(spec, f"no module named {exc.name!r} (install it or put it on PYTHONPATH)") from None
        raise _fail(spec, f"cannot import {dotted}: {_one_line(exc)}") from None
    except Exception as exc:  # the user's module: any error is theirs to fix
        raise _fail(spec, f"cannot import {dotted}: {_one_line(exc)}") from None


def strategy_class(spec: str) -> type:
    """The class a spec names, checked against the strategy protocol (not yet its settings)."""
    where, colon, attr = spec.strip().rpartition(":")
    if not colon or not where or not attr:
        raise _fail(spec, "expected builtin:NAME, package.module:Class or path/to/file.py:Class")
    if where == "builtin":
        cls = BUILTINS.get(attr)
        if cls is None:
            raise _fail(spec, f"no built-in strategy {attr!r} (built-ins: {', '.join(BUILTINS)})")
        return cls
    if not attr.isidentifier():
        raise _fail(spec, f"{attr!r} is not a class name")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module, origin = _load_file(spec, where), where
    elif _DOTTED.fullmatch(where):
        module, origin = _load_module(spec, where), where
    else:
        raise _fail(spec, f"{where!r} is neither a module name (package.module) nor a .py file")
    cls = getattr(module, attr, None)
    if cls is None:
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and callable(getattr(v, "update", None)) and getattr(v, "name", None)
        )
        also = f" (strategies there: {', '.join(found)})" if found else ""
        raise _fail(spec, f"{origin} has no class {attr}{also}")
    _check_class(spec, attr, cls)
    return cls


def _check_class(spec: str, attr: str, cls: object) -> None:
    if not isinstance(cls, type):
        raise _fail(spec, f"{attr} is not a class (it is a {type(cls).__name__})")
    missing = [a for a in ("name", "update") if not hasattr(cls, a)]
    if missing:
        raise _fail(spec, f"{cls.__name__} is not a strategy: it has no {' and no '.join(missing)}")
    if not callable(cls.update):
        raise _fail(spec, f"{cls.__name__} is not a strategy: its update is not a method")
    name = cls.name
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _fail(spec, f"{cls.__name__}.name must be 1-64 letters, digits, _ or -, got {name!r}")
    if name in RESERVED_NAMES:
        raise _fail(spec, f"{cls.__name__}.name {name!r} is reserved")
    settings_class = getattr(cls, "settings_class", None)
    if settings_class is not None and not (
        isinstance(settings_class, type) and dataclasses.is_dataclass(settings_class)
    ):
        problem = f"{cls.__name__}.settings_class must be a dataclass or None, got {settings_class!r}"
        raise _fail(spec, problem)


def _settings(spec: str, cls: type, table: dict | None):
    settings_class = getattr(cls, "settings_class", None)
    if settings_class is None:
        if table:
            raise _fail(spec, f"[strategies.{cls.name}]: {cls.__name__} takes no settings")
        return None
    try:
        return settings_from_table(settings_class, table or {}, f"strategies.{cls.name}")
    except ConfigError as exc:
        raise StrategyLoadError(str(exc)) from None
    except Exception as exc:  # the user's settings class: any error is theirs to fix
        raise _fail(spec, f"[strategies.{cls.name}]: {_one_line(exc)}") from None


def _probe(spec: str, made: StrategySpec) -> None:
    """Make one instance as the loop will, and check what only an instance shows."""
    cls = made.cls
    try:
        strategy = made.build()
    except Exception as exc:  # the user's constructor
        raise _fail(spec, f"{cls.__name__}(settings) raised {_failure(exc, _source(cls))}") from None
    regimes = getattr(strategy, "regimes", None)
    if not isinstance(regimes, (set, frozenset)) or not regimes <= set(REGIMES):
        problem = f"its regimes must be a subset of {REGIMES}, got {regimes!r}"
        raise _fail(spec, f"{cls.__name__} is not a strategy: {problem}")
    if getattr(strategy, "name", None) != made.name:
        raise _fail(spec, f"{cls.__name__} instances must keep the class's name {made.name!r}")
    try:
        pickle.loads(pickle.dumps(strategy, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        raise _fail(spec, f"{cls.__name__} instances must pickle (snapshots): {_one_line(exc)}") from None


def load_strategies(config: StrategiesConfig) -> tuple[StrategySpec, ...]:
    """The strategies of ``[strategies] use`` with their settings from ``[strategies.<name>]``."""
    if not config.use:
        msg = "[strategies] use is empty: name at least one strategy (e.g. builtin:trend_following)"
        raise StrategyLoadError(msg)
    specs: list[StrategySpec] = []
    by_name: dict[str, str] = {}
    for spec in config.use:
        cls = strategy_class(spec)
        if cls.name in by_name:
            raise _fail(spec, f"the name {cls.name!r} is already used by {by_name[cls.name]!r}")
        by_name[cls.name] = spec
        made = StrategySpec(cls.name, cls, _settings(spec, cls, config.params.get(cls.name)))
        _probe(spec, made)
        specs.append(made)
    unused = sorted(set(config.params) - set(by_name))
    if unused:
        msg = (
            f"[strategies.{unused[0]}] is set, but no strategy named {unused[0]!r} is in use "
            f"(in use: {', '.join(by_name)})"
        )
        raise StrategyLoadError(msg)
    return tuple(specs)
