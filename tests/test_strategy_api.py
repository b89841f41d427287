"""The strategy API: loading specs (every form, every error), muting a strategy that fails,
snapshots of user strategies, and a user strategy file trading in ``qbtc replay --trade``."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.config import ConfigError, StrategiesConfig, load_settings
from flows.strategy_loader import StrategyLoadError, load_strategies, module_name, strategy_class
from flows.trading_settings import trading_settings
from operators.signals.strategies import BUILTINS, Breakout, BreakoutSettings, default_specs
from operators.signals.strategy import BarStrategy, Strategy, StrategySpec, check_signal
from operators.trading_loop import STRATEGY_ERROR, TradingLoop, TradingSettings
from schemas.errors import UsageProblem
from schemas.records import Bar, Feature, Signal

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "strategies" / "ma_crossover.py"

GOOD = '''
from __future__ import annotations

from dataclasses import dataclass

from operators.signals.strategy import BarStrategy


@dataclass(frozen=True, slots=True)
class MomentumSettings:
    lookback: int = 3
    regimes: frozenset[str] = frozenset({"trend_up", "trend_down", "range", "high_vol"})


class Momentum(BarStrategy):
    """Long after a rise over ``lookback`` bars, short after a fall."""

    name = "momentum"
    settings_class = MomentumSettings

    def __init__(self, settings=None):
        super().__init__(settings)
        self.closes = []

    def _step(self, bar, feature, active):
        self.closes = [*self.closes[-self.settings.lookback :], bar.close]
        if len(self.closes) <= self.settings.lookback:
            return None
        move = self.closes[-1] - self.closes[0]
        return (1 if move > 0 else -1 if move < 0 else 0), 1.0


class Helper:
    pass
'''

FAULTY = '''
from operators.signals.strategy import BarStrategy
from schemas.records import Signal


class Faulty(BarStrategy):
    """Long everywhere, until its 5th bar: then it raises."""

    name = "faulty"

    def __init__(self, settings=None):
        super().__init__(settings)
        self.bars = 0

    def _step(self, bar, feature, active):
        self.bars += 1
        if self.bars == 5:
            raise ZeroDivisionError("bar 5\\nhas no answer")
        return 1, 1.0


class Overconfident:
    """The protocol by hand (no base class): answers with strength 2 on its 5th bar."""

    name = "overconfident"
    settings_class = None

    def __init__(self):
        self.settings = None
        self.regimes = frozenset({"range", "trend_up", "trend_down"})
        self.bars = 0

    def update(self, ts, bar, feature, regime):
        self.bars += 1
        if self.bars == 5:
            return Signal(ts, bar.symbol, self.name, 1, 2.0, "range")
        return None
'''


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _load(*use: str, params: dict | None = None):
    return load_strategies(StrategiesConfig(use=use, params=params or {}))


# --------------------------------------------------------------------------- specs


def test_the_default_is_the_four_builtins_in_order_with_default_settings():
    specs = _load(*StrategiesConfig().use)
    assert specs == default_specs() == TradingSettings(bar_interval_ms=1000).strategies
    assert [s.name for s in specs] == ["entropy_scalping", "trend_following", "mean_reversion", "breakout"]
    assert trading_settings(load_settings(None, [])).strategies == default_specs()


def test_builtin_module_and_file_specs_load_the_named_classes(tmp_path, monkeypatch):
    assert strategy_class("builtin:breakout") is Breakout
    assert strategy_class("operators.signals.strategies:Breakout") is Breakout
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    _write(pkg, "momo.py", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = strategy_class("mypkg.momo:Momentum")
    assert from_module.__module__ == "mypkg.momo" and from_module.name == "momentum"
    path = _write(tmp_path, "momentum.py", GOOD)
    from_file = strategy_class(f"{path}:Momentum")
    assert from_file.__module__ == module_name(path.resolve())
    assert sys.modules[from_file.__module__].__file__ == str(path.resolve())
    # loaded once per process: a second load (a resumed run, the CLI's early check) gives the same class
    monkeypatch.chdir(tmp_path)
    assert strategy_class("momentum.py:Momentum") is from_file
    assert isinstance(from_file(), Strategy) and isinstance(from_file(), BarStrategy)


def test_settings_come_from_the_strategy_table_with_coercion(tmp_path):
    path = _write(tmp_path, "momentum.py", GOOD)
    specs = _load(
        "builtin:breakout",
        f"{path}:Momentum",
        params={"breakout": {"window": "90", "full_strength_sigmas": 2}, "momentum": {"lookback": "7"}},
    )
    assert specs[0] == StrategySpec(
        "breakout", Breakout, BreakoutSettings(window=90, full_strength_sigmas=2.0)
    )
    assert specs[1].name == "momentum" and specs[1].settings.lookback == 7
    built = specs[1].build()
    assert built.settings is specs[1].settings  # one settings object: a resume re-applies it
    cfg = load_settings(None, ["strategies.momentum.lookback=4"])
    assert cfg.strategies.params == {"momentum": {"lookback": "4"}}


ERRORS = [
    (("nocolon",), "expected builtin:NAME, package.module:Class or path/to/file.py:Class"),
    ((":Momentum",), "expected builtin:NAME"),
    (("builtin:",), "expected builtin:NAME"),
    (("builtin:nope",), "no built-in strategy 'nope' (built-ins: entropy_scalping, trend_following"),
    (("bad module!:Cls",), "'bad module!' is neither a module name (package.module) nor a .py file"),
    (("x.py:1Cls",), "'1Cls' is not a class name"),
    (("missing/nowhere.py:Cls",), "no such file missing/nowhere.py"),
    (("nosuch_pkg_qbtc.mod:Cls",), "no module named 'nosuch_pkg_qbtc' (install it or put it on PYTHONPATH)"),
    (("operators.signals.strategies:Nope",), "strategies has no class Nope (strategies there: Breakout, "),
    (("operators.signals.strategies:BUILTINS",), "BUILTINS is not a class (it is a dict)"),
    (("operators.signals.strategies:RollingExtreme",), "not a strategy: it has no name and no update"),
    (("builtin:breakout", "builtin:breakout"), "the name 'breakout' is already used by 'builtin:breakout'"),
    ((), "[strategies] use is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("use", "words"), ERRORS)
def test_bad_specs_are_one_line_usage_errors(use, words):
    with pytest.raises(StrategyLoadError) as caught:
        _load(*use)
    text = str(caught.value)
    assert words in text
    assert "\n" not in text
    assert isinstance(caught.value, UsageProblem) and isinstance(caught.value, ConfigError)
    assert caught.value.exit_code == 2


def test_user_files_that_fail_name_the_file_the_exception_and_the_line(tmp_path):
    raising = _write(tmp_path, "raising.py", "import math\n\nx = 1 / 0\n")
    broken = _write(tmp_path, "broken.py", "def f(:\n    pass\n")
    importing = _write(tmp_path, "importing.py", "import nosuch_dependency_qbtc\n")
    cases = [
        (raising, "Cls", f"cannot load {raising}: ZeroDivisionError: division by zero (line 3)"),
        (broken, "Cls", f"cannot load {broken}: SyntaxError: "),
        (importing, "Cls", "ModuleNotFoundError: No module named 'nosuch_dependency_qbtc' (line 1)"),
    ]
    for path, cls, words in cases:
        with pytest.raises(StrategyLoadError) as caught:
            _load(f"{path}:{cls}")
        assert words in str(caught.value) and "\n" not in str(caught.value)
        assert module_name(path.resolve()) not in sys.modules  # a failed load leaves nothing behind
    good = _write(tmp_path, "good.py", GOOD)
    with pytest.raises(StrategyLoadError, match=r"good.py has no class Nope \(strategies there: Momentum\)$"):
        _load(f"{good}:Nope")
    with pytest.raises(StrategyLoadError, match="Helper is not a strategy: it has no name and no update"):
        _load(f"{good}:Helper")


NOT_STRATEGIES = {
    "BadName": ("class BadName(BarStrategy):\n    name = 'a b'\n", "BadName.name must be 1-64 letters"),
    "Reserved": ("class Reserved(BarStrategy):\n    name = 'composite'\n", "name 'composite' is reserved"),
    "NoSettings": ("class NoSettings(BarStrategy):\n    name = 'ns'\n    settings_class = dict\n",
                   "NoSettings.settings_class must be a dataclass or None"),
    "Regimes": ("class Regimes:\n    name = 'rg'\n    regimes = frozenset({'sideways'})\n"
                "    def update(self, ts, bar, feature, regime):\n        return None\n",
                "Regimes is not a strategy: its regimes must be a subset of"),
    "Raises": ("class Raises(BarStrategy):\n    name = 'rs'\n"
               "    def __init__(self, settings=None):\n        raise RuntimeError('no config')\n",
               "Raises(settings) raised RuntimeError: no config (line 6)"),
    "Unpicklable": ("class Unpicklable(BarStrategy):\n    name = 'up'\n"
                    "    def __init__(self, settings=None):\n"
                    "        super().__init__(settings)\n        self.f = lambda x: x\n",
                    "Unpicklable instances must pickle (snapshots): "),
}  # fmt: skip


@pytest.mark.parametrize("cls", list(NOT_STRATEGIES))
def test_classes_that_break_the_protocol_are_refused_at_start_up(tmp_path, cls):
    source, words = NOT_STRATEGIES[cls]
    path = _write(
        tmp_path, f"{cls.lower()}.py", "from operators.signals.strategy import BarStrategy\n\n" + source
    )
    with pytest.raises(StrategyLoadError) as caught:
        _load(f"{path}:{cls}")
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_bad_strategy_tables_are_refused(tmp_path):
    faulty = _write(tmp_path, "faulty.py", FAULTY)
    cases = [
        ({"breakout": {"nope": 1}}, ("builtin:breakout",), "unknown key(s) strategies.breakout.nope"),
        ({"breakout": {"window": "abc"}}, ("builtin:breakout",), "strategies.breakout.window"),
        ({"breakout": {"window": 5}}, ("builtin:breakout",), "strategies.breakout"),
        ({"faulty": {"x": 1}}, (f"{faulty}:Faulty",), "[strategies.faulty]: Faulty takes no settings"),
        (
            {"trend_following": {"fast": 5}},
            ("builtin:breakout",),
            "[strategies.trend_following] is set, but no strategy named 'trend_following' is in use "
            "(in use: breakout)",
        ),
    ]
    for params, use, words in cases:
        with pytest.raises(ConfigError) as caught:
            _load(*use, params=params)
        assert words in str(caught.value), str(caught.value)
        assert isinstance(caught.value, UsageProblem) and "\n" not in str(caught.value)


# --------------------------------------------------------------------------- the loop

D = 60_000
T0 = 1_620_000_000_000 // D * D
SYMBOLS = ("A/USDT", "B/USDT")


def _market(steps: int):
    """Per step, each symbol's bar and feature row: a slow sine trend with a little wobble."""
    for k in range(steps):
        ts = T0 + k * D
        rows = []
        for j, s in enumerate(SYMBOLS):
            price = 100.0 * (1 + j) * math.exp(0.02 * math.sin(k / 40 + j) + 0.001 * math.sin(k * 1.7))
            bar = Bar(s, ts, price, price * 1.0005, price * 0.9995, price, 1000.0, price, 10)
            rows.append((s, bar, Feature(s, ts, 0.0, 0.001, 0.9, 0.0, 0.0, 0.0, 0)))
        yield k, rows


def _run_loop(loop: TradingLoop, steps: range) -> list[tuple[str, object]]:
    out = []
    for k, rows in _market(steps.stop):
        if k < steps.start:
            continue
        for s, bar, feat in rows:
            loop.add(s, [bar], [feat])
        for table, records in loop.advance(T0 // D + k):
            out.extend((table, r) for r in records)
    return out


def _specs(tmp_path, *use):
    _write(tmp_path, "faulty.py", FAULTY)
    _write(tmp_path, "momentum.py", GOOD)
    return _load(*(u if u.startswith("builtin:") else f"{tmp_path / u}" for u in use))


@pytest.mark.parametrize(
    ("cls", "problem"),
    [
        ("Faulty", "raised ZeroDivisionError: bar 5 has no answer (faulty.py:{line})"),
        ("Overconfident", "returned no valid signal: strength must be in [0, 1], got 2.0"),
    ],
)
def test_a_failing_strategy_is_muted_everywhere_with_one_risk_event_and_the_run_goes_on(
    tmp_path, cls, problem
):
    specs = _specs(tmp_path, "builtin:trend_following", f"faulty.py:{cls}", "momentum.py:Momentum")
    name = specs[1].name
    loop = TradingLoop(TradingSettings(bar_interval_ms=D, cost_gate=False, strategies=specs))
    out = _run_loop(loop, range(400))
    errors = [r for t, r in out if t == "risk_events" and r.kind == STRATEGY_ERROR]
    assert len(errors) == 1
    (e,) = errors
    assert e.ts == T0 + 5 * D and e.symbol == "A/USDT" and e.action == "mute" and e.level == 1
    line = next(i for i, text in enumerate(textwrap.dedent(FAULTY).splitlines(), 1) if "raise Zero" in text)
    problem = problem.format(line=line)  # the line of the user's file where it raised
    assert e.message == f"strategy {name} {problem} on A/USDT; muted for the rest of the run"
    assert loop.muted == {name} and loop.summary()["strategy_errors"] == 1
    assert pickle.loads(pickle.dumps(loop)).muted == {name}  # a resumed run keeps it muted
    signals = [r for t, r in out if t == "signals"]
    assert not [s for s in signals if s.strategy == name and s.ts >= e.ts]
    later = {s.strategy for s in signals if s.ts > e.ts}
    assert {"momentum", "composite"} <= later  # the others go on
    assert [r for t, r in out if t == "orders"], "the run still trades"
    assert all(sym.last_dirs.get(name, 0) == 0 for sym in loop.symbols.values())  # flat from then on


def test_a_muted_strategy_makes_the_same_run_as_one_that_stands_aside(tmp_path):
    """Muted means silent: the run equals one whose failing strategy never answered at all."""
    specs = _specs(tmp_path, "momentum.py:Momentum", "faulty.py:Faulty")
    muted = _run_loop(
        TradingLoop(TradingSettings(bar_interval_ms=D, cost_gate=False, strategies=specs)), range(300)
    )
    # no regime before bar 61, so nothing the faulty strategy said before its 5th bar reached a signal
    trades = [(t, r) for t, r in muted if t in ("orders", "fills")]
    assert trades
    never = (*specs[:1], StrategySpec("faulty", _NeverAnswers))
    quiet = _run_loop(
        TradingLoop(TradingSettings(bar_interval_ms=D, cost_gate=False, strategies=never)), range(300)
    )
    assert trades == [(t, r) for t, r in quiet if t in ("orders", "fills")]


class _NeverAnswers(BarStrategy):
    name = "faulty"

    def _step(self, bar, feature, active):
        return None


def test_the_loop_with_a_user_strategy_pickles_mid_stream_and_continues_identically(tmp_path):
    specs = _specs(tmp_path, "builtin:trend_following", "momentum.py:Momentum")
    loop = TradingLoop(TradingSettings(bar_interval_ms=D, cost_gate=False, strategies=specs))
    _run_loop(loop, range(200))
    copy = pickle.loads(pickle.dumps(loop, protocol=pickle.HIGHEST_PROTOCOL))
    ahead = _run_loop(loop, range(200, 400))
    again = _run_loop(copy, range(200, 400))
    assert ahead == again
    assert [r for t, r in ahead if t == "signals" and r.strategy == "momentum"]


def test_a_user_strategy_unpickles_after_the_loader_ran_again_in_a_new_process(tmp_path):
    """A resumed run: a fresh process loads the file again and the snapshot's instances come back."""
    path = _write(tmp_path, "momentum.py", GOOD)
    script = textwrap.dedent(
        f"""
        import pickle, sys
        from flows.config import StrategiesConfig
        from flows.strategy_loader import load_strategies
        from schemas.records import Bar

        (spec,) = load_strategies(StrategiesConfig(use=({str(path) + ":Momentum"!r},)))
        bars = [Bar("X", i, c, c, c, c, 1.0, c, 1) for i, c in enumerate([1.0, 2, 3, 2, 1, 2, 3, 4])]
        if sys.argv[1] == "save":
            s = spec.build()
            for b in bars[:4]:
                s.update(b.ts, b, None, "range")
            open({str(tmp_path / "snap.pkl")!r}, "wb").write(pickle.dumps(s))
        else:
            s = pickle.loads(open({str(tmp_path / "snap.pkl")!r}, "rb").read())
            print([s.update(b.ts, b, None, "range").direction for b in bars[4:]])
        """
    )
    for step in ("save", "resume"):
        run = subprocess.run([sys.executable, "-c", script, step], capture_output=True, text=True, cwd=ROOT)
        assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[-1, -1, 1, 1]"  # the 3-bar momentum over 2, 1, 2, 3, 4 after 1, 2, 3


def test_check_signal_accepts_numpy_numbers_and_refuses_the_rest():
    np = pytest.importorskip("numpy")
    ok = check_signal(Signal(5, "X", "a", np.int64(-1), np.float64(0.25), "range"), 5, "X", "a", "range")
    assert ok == Signal(5, "X", "a", -1, 0.25, "range")
    assert type(ok.direction) is int and type(ok.strength) is float
    bad = [
        ((1, 0.5), "update must return a Signal or None, got tuple"),
        (Signal(5, "X", "a", 2, 0.5, "range"), "direction must be -1, 0 or 1, got 2"),
        (Signal(5, "X", "a", True, 0.5, "range"), "direction must be -1, 0 or 1, got True"),
        (Signal(5, "X", "a", 1, float("nan"), "range"), "strength must be in [0, 1], got nan"),
        (Signal(4, "X", "a", 1, 0.5, "range"), "signal ts must be 5, got 4"),
        (Signal(5, "Y", "a", 1, 0.5, "range"), "signal symbol must be 'X', got 'Y'"),
        (Signal(5, "X", "b", 1, 0.5, "range"), "signal strategy must be 'a', got 'b'"),
        (Signal(5, "X", "a", 1, 0.5, "crisis"), "signal regime must be 'range', got 'crisis'"),
    ]
    for sig, words in bad:
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(")):
            check_signal(sig, 5, "X", "a", "range")
    with pytest.raises(ValueError, match="a signal needs a regime"):
        check_signal(Signal(5, "X", "a", 1, 0.5, "range"), 5, "X", "a", None)


def test_builtins_are_registered_under_their_names():
    assert {name: cls.name for name, cls in BUILTINS.items()} == {n: n for n in BUILTINS}
    for name, cls in BUILTINS.items():
        assert strategy_class(f"builtin:{name}") is cls and cls.settings_class is not None


# --------------------------------------------------------------------------- the command line

SHORT = ["features.window=60", "features.corr_window=60", "features.corr_every=10", "trading.cost_gate=false"]
"""The cost gate off: these tests are about loading and running strategies, not costs."""


def _qbtc(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def ticks(tmp_path_factory) -> Path:
    """15 minutes of a simulated 4-symbol market, 100 trades a second."""
    from sources.simulator import DEFAULT_SYMBOLS, SimulatorSettings, write_csv

    path = tmp_path_factory.mktemp("ticks") / "ticks.csv"
    write_csv(path, SimulatorSettings(symbols=DEFAULT_SYMBOLS[:4], seed=7, duration_s=900, trades_per_s=100))
    return path


def _sets(tmp_path: Path) -> list[str]:
    return [x for kv in [*SHORT, f"trading.control_file={tmp_path / 'none.jsonl'}"] for x in ("--set", kv)]


def _orders(stdout: str) -> int:
    line = next(x for x in stdout.splitlines() if x.strip().startswith("orders "))
    return int(line.split()[1].rstrip(",").replace(",", ""))


def test_replay_trades_with_the_example_strategy_file(tmp_path, ticks):
    spec = f"{EXAMPLE.relative_to(ROOT)}:MovingAverageCrossover"
    store = f"chdb://{tmp_path}/store.chdb"
    args = ["--trade", "--strategy", spec, "--store", store, "--quiet", *_sets(tmp_path)]
    out = _qbtc("replay", str(ticks), *args, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert _orders(out.stdout) > 0
    rows = _qbtc("sql", "SELECT strategy, count() FROM signals FINAL GROUP BY strategy ORDER BY strategy",
                 "--store", store, "--format", "csv", cwd=ROOT)  # fmt: skip
    assert rows.returncode == 0, rows.stderr
    counts = dict(line.split(",") for line in rows.stdout.splitlines()[1:])
    assert set(counts) == {"composite", "ma_crossover"} and int(counts["ma_crossover"]) > 0
    orders = _qbtc("sql", "SELECT count() FROM orders FINAL", "--store", store, "--format", "csv", cwd=ROOT)
    assert int(orders.stdout.splitlines()[1]) == _orders(out.stdout)


def test_replay_with_a_strategy_that_raises_completes_with_one_risk_event(tmp_path, ticks):
    faulty = _write(tmp_path, "faulty.py", FAULTY)
    args = [
        "--strategy",
        "builtin:trend_following",
        "--strategy",
        f"{faulty}:Faulty",
        "--null-sink",
        "--quiet",
    ]
    out = _qbtc("replay", str(ticks), "--trade", *args, *_sets(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "strategies muted after an error: 1 (see the strategy_error risk events)" in out.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--trade", "--strategy", "nowhere.py:Cls"], "strategy 'nowhere.py:Cls': no such file nowhere.py"),
        (["--trade", "--strategy", "builtin:nope"], "no built-in strategy 'nope'"),
        (["--strategy", "builtin:breakout"], "--strategy needs --trade"),
        (
            ["--trade", "--set", "strategies.nope.x=1"],
            "[strategies.nope] is set, but no strategy named 'nope'",
        ),
        (["--trade", "--set", "strategies.breakout.window=abc"], "strategies.breakout.window"),
    ],
)
def test_bad_strategies_stop_replay_at_start_up_with_one_line(tmp_path, ticks, args, words):
    out = _qbtc("replay", str(ticks), "--null-sink", *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert words in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("qbtc replay: error: ")
    assert "records in" not in out.stdout  # nothing ran


def test_run_and_stream_take_the_strategy_option():
    for command in ("run", "stream"):
        out = subprocess.run(
            [sys.executable, "-m", "flows.cli", command, "--help"], capture_output=True, text=True, cwd=ROOT
        )
        assert "--strategy SPEC" in out.stdout
