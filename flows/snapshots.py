"""Step snapshots that hold state only: today's settings are applied on resume.

Bytewax's own pattern (``SlidingWindower`` and its state, ``build(resume_state)``)
keeps settings apart from state. Our operators keep their frozen settings in
an attribute, so a snapshot pickles the operators with every settings object
replaced by a reference (its path in the step's settings tree, e.g.
``trading.risk``); on resume the references resolve to the *current*
settings. The snapshot also records the settings' values, only to compare:

* a changed field marked ``fixed`` (a window, a lookback, the bar interval:
  anything that sizes saved buffers or defines the grid) stops the resume
  with a :class:`ResumeError` naming the key, the old and the new value;
* any other change is applied and reported once on stderr.

>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class S:
...     window: int = field(default=3, metadata={"fixed": True})
...     level: float = 0.5
>>> today = S()
>>> data = dump_state({"settings": today, "seen": [1, 2]}, {"demo": today})
>>> state = load_state(data, {"demo": S(level=0.7)}, report=lambda lines: None)
>>> state["settings"].level, state["seen"]
(0.7, [1, 2])
>>> load_state(data, {"demo": S(window=5)})
Traceback (most recent call last):
...
flows.snapshots.ResumeError: cannot resume: demo.window changed from 3 to 5 ...
"""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import sqlite3
import sys
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path

from schemas.errors import UsageProblem

_TAG = "qbtc-state-v1"


class ResumeError(UsageProblem):
    """A saved state that today's settings make meaningless."""


def _walk(obj, path: str, out: dict[str, object]) -> None:
    """Every settings dataclass under ``obj`` by its dotted path (tuples of them too)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out.setdefault(path, obj)
        for f in dataclasses.fields(obj):
            _walk(getattr(obj, f.name), f"{path}.{f.name}", out)
    elif isinstance(obj, tuple):
        for i, item in enumerate(obj):
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                name = getattr(item, "name", None)  # a named part (a strategy) goes by its name
                _walk(item, f"{path}.{name}" if isinstance(name, str) else f"{path}[{i}]", out)


def settings_paths(tree: Mapping[str, object]) -> dict[str, object]:
    """The settings objects of a step's tree, by path (roots are the tree's keys)."""
    out: dict[str, object] = {}
    for name, root in tree.items():
        if root is not None:
            _walk(root, name, out)
    return out


def _values(paths: dict[str, object]) -> dict[str, tuple[object, bool]]:
    """Every plain field of every settings object: ``path.field`` -> (value, fixed)."""
    out = {}
    for path, obj in paths.items():
        for f in dataclasses.fields(obj):
            if f.metadata.get("derived"):  # made from the other fields (a run tag): they are compared
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value) or (
                isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value)
            ):
                continue
            if isinstance(value, type) or callable(value):
                value = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
            out[f"{path}.{f.name}"] = (value, bool(f.metadata.get("fixed", False)))
    return out


class _Pickler(pickle.Pickler):
    def __init__(self, file, ids: dict[int, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.ids = ids

    def persistent_id(self, obj):
        return self.ids.get(id(obj)) if dataclasses.is_dataclass(obj) else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, paths: dict[str, object]) -> None:
        super().__init__(file)
        self.paths = paths

    def persistent_load(self, pid):
        try:
            return self.paths[pid]
        except KeyError:
            msg = f"cannot resume: the saved state refers to settings {pid}, which this run does not have"
            raise ResumeError(msg) from None


def dump_state(state, tree: Mapping[str, object]) -> bytes:
    """``state`` pickled with the settings of ``tree`` as references, plus their values."""
    paths = settings_paths(tree)
    ids = {id(obj): path for path, obj in paths.items()}
    buf = io.BytesIO()
    _Pickler(buf, ids).dump(state)
    return pickle.dumps((_TAG, {k: v for k, (v, _) in _values(paths).items()}, buf.getvalue()))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


_REPORTED: set[str] = set()


def _report_stderr(lines: list[str]) -> None:
    """Each change once per process (every symbol's step resumes with the same settings)."""
    fresh = [line for line in lines if line not in _REPORTED]
    _REPORTED.update(fresh)
    sys.stderr.write("".join(f"resume: {line}, applied\n" for line in fresh))


def config_key(path: str, keys: Mapping[str, str]) -> str:
    """The config key users know for a settings path: an exact entry of ``keys``,
    else its longest matching prefix (``"trading.broker."`` -> ``"execution."``).

    >>> config_key("trading.broker.spread_bps", {"trading.broker.": "execution."})
    'execution.spread_bps'
    >>> config_key("trading.strategies.breakout.settings.window", {"trading.strategies.": "strategies."})
    'strategies.breakout.window'
    """
    if path in keys:
        return keys[path]
    for prefix in sorted(keys, key=len, reverse=True):
        if prefix.endswith(".") and path.startswith(prefix):
            path = keys[prefix] + path[len(prefix) :]
            break
    return path.replace(".settings.", ".")  # a part's settings are its own table


def _compare(tag, old: dict, paths: dict, keys: Mapping[str, str], fixed_paths, report) -> None:
    if tag != _TAG:  # pragma: no cover - only this module writes snapshots
        msg = f"cannot resume: unknown snapshot format {tag!r}"
        raise ResumeError(msg)
    changed, refused = [], []
    for name, (value, fixed) in _values(paths).items():
        if name in old and not _same(old[name], value):
            line = f"{config_key(name, keys)} changed from {old[name]!r} to {value!r}"
            (refused if fixed or name in fixed_paths else changed).append(line)
    if refused:
        msg = (
            f"cannot resume: {'; '.join(refused)} (the saved state was built with the old value); "
            "keep the old value or start with a fresh recovery directory"
        )
        raise ResumeError(msg)
    if changed:
        report(sorted(set(changed)))


_NEWEST_SNAPSHOTS = """
SELECT step_id, ser_change FROM snaps s
WHERE ser_change IS NOT NULL
  AND snap_epoch = (
    SELECT MAX(snap_epoch) FROM snaps t WHERE t.step_id = s.step_id AND t.state_key = s.state_key
  )
"""


def check_saved(db_dir: str, steps: Mapping[str, tuple[Mapping, Mapping, frozenset]]) -> None:
    """Compare the newest snapshot of each step in a Bytewax recovery directory with today's settings.

    ``steps`` maps a step id (``qbtc.trading``) to its (tree, keys, fixed).
    Run before the flow starts, after the unfinished epochs were discarded,
    so a refused resume is one line before anything runs (the steps check
    again when they load, and report nothing twice).
    """
    for f in sorted(Path(db_dir).glob("part-*.sqlite3")):
        with closing(sqlite3.connect(f, timeout=30)) as conn:
            rows = conn.execute(_NEWEST_SNAPSHOTS).fetchall()
        done: set[str] = set()
        for step_id, blob in rows:
            if step_id not in steps or step_id in done:
                continue
            data = pickle.loads(blob)
            if not isinstance(data, bytes):
                continue
            tag, old, _state = pickle.loads(data)
            tree, keys, fixed = steps[step_id]
            _compare(tag, old, settings_paths(tree), keys, fixed, _report_stderr)
            done.add(step_id)


def saved_values(data: bytes) -> dict[str, object]:
    """The settings values a snapshot was saved with (``path.field`` -> value), in tree order."""
    return pickle.loads(data)[1]


def load_state(
    data: bytes,
    tree: Mapping[str, object],
    keys: Mapping[str, str] | None = None,
    report: Callable[[list[str]], None] = _report_stderr,
    fixed: frozenset[str] | set[str] = frozenset(),
):
    """The state saved by :func:`dump_state`, bound to today's settings in ``tree``.

    ``keys`` maps settings paths (or path prefixes ending in ``.``) to the
    config keys users know (see :func:`config_key`). Changed fields marked
    ``fixed`` in their metadata, or named in ``fixed`` (the step knows its
    grid), raise :class:`ResumeError`; other changes go to ``report``.
    """
    tag, old, blob = pickle.loads(data)
    paths = settings_paths(tree)
    _compare(tag, old, paths, keys or {}, fixed, report)
    return _Unpickler(io.BytesIO(blob), paths).load()
