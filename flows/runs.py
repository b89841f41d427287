"""Runs: every replay, run and stream has a run id, and a row in the ``runs`` table.

The trading tables (``signals``, ``orders``, ``fills``, ``risk_events``,
``portfolio``) carry the id of the run that wrote each row, first in their
keys, so runs in one store never overwrite each other and can be compared
(``qbtc report --run A --compare B``). Feature tables stay keyed as they
are: the same ticks make the same bars whatever the run.

A run's id is ``--run-id`` when given; otherwise 8 hex digits hashed from
what decides its rows (the trading loop's run tag, or the features settings
when it does not trade), its kind and its input (the files' paths and
sizes, or the topic): the same command on the same input gets the same id,
so a stream restarted from its recovery directory, or every process of a
cluster, goes on under one id, and a replay repeated into the same store is
recognised (refused unless ``--append``).

The ``runs`` row is written when the run starts (status ``running``) and
replaced when it ends (``finished``, ``interrupted`` or ``failed``) with
the rows it wrote and its backtest figures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shlex
import sys

from flows.config import Settings, scrub
from flows.trading_settings import canonical
from schemas.ddl import RUN_TABLES, RUNS
from schemas.errors import UsageProblem
from sinks.clickhouse_store import Store, quote, redact

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
"""What ``--run-id`` accepts: letters, digits, ``.``, ``_``, ``:``, ``-``; 64 at most."""

FIGURES = (
    "start_equity",
    "end_equity",
    "return",
    "sharpe",
    "sortino",
    "max_drawdown",
    "win_rate",
    "profit_factor",
    "var_exceedance_rate",
    "cost_saved",
)
COUNTS = ("orders", "fills", "signals", "kill_switches", "mode_changes", "orders_blocked_by_cost")


class RunIdError(UsageProblem):
    """A ``--run-id`` that cannot name a run: one line, exit code 2."""


def check_run_id(text: str) -> str:
    """``text`` if it can be a run id, else a :class:`RunIdError` saying what can.

    >>> check_run_id("engine-on")
    'engine-on'
    >>> check_run_id("a b")
    Traceback (most recent call last):
    ...
    flows.runs.RunIdError: --run-id 'a b': use 1-64 letters, digits, '.', '_', ':' or '-' (not first)
    """
    if not RUN_ID.match(text):
        msg = f"--run-id {text!r}: use 1-64 letters, digits, '.', '_', ':' or '-' (not first)"
        raise RunIdError(msg)
    return text


def file_source(paths: list[str]) -> str:
    """The input of a file run, for its id: each file's absolute path and size."""
    parts = []
    for path in paths:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        parts.append(f"{os.path.abspath(path)}:{size}")
    return ";".join(parts)


def default_run_id(kind: str, decides: str, source: str) -> str:
    """8 hex digits from the run's kind, what decides its rows and its input.

    >>> default_run_id("replay", "a1b2c3d4", "/data/x.csv:100")
    '81b924c0'
    >>> default_run_id("replay", "a1b2c3d4", "/data/y.csv:100") != default_run_id(
    ...     "replay", "a1b2c3d4", "/data/x.csv:100")
    True
    """
    return hashlib.sha256(f"{kind}|{decides}|{source}".encode()).hexdigest()[:8]


def what_decides(settings: Settings, run_tag: str) -> str:
    """The trading run's tag, or for a run that does not trade its features settings."""
    if run_tag:
        return run_tag
    return canonical((settings.features, settings.input, settings.simulator))


def settings_json(settings: Settings) -> str:
    """The run's resolved config as JSON, secrets left out (``***`` where one is set)."""
    out = {}
    for section in dataclasses.fields(settings):
        value = getattr(settings, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        keys = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.metadata.get("secret"):
                keys[f.name] = "***" if v else v.__class__() if isinstance(v, dict) else ""
            else:
                keys[f.name] = v
        out[section.name] = keys
    return scrub(json.dumps(out, default=_plain, sort_keys=True), settings)


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return canonical(value)


def command_line(settings: Settings, argv: list[str] | None = None) -> str:
    """How the run was started, store passwords and configured secrets masked."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if "://" in arg:
            args[i] = redact(arg)
    return scrub("qbtc " + shlex.join(args), settings)


@dataclasses.dataclass
class Run:
    """One run's row in ``runs``: made at the start, completed at the end (:meth:`finish`)."""

    run_id: str
    kind: str
    input: str
    trade: bool
    run_tag: str
    settings: str
    command: str
    started: int
    status: str = "running"
    finished: int = 0
    records: int = 0
    rows: dict = dataclasses.field(default_factory=dict)
    summary: dict | None = None

    def columns(self) -> dict[str, list]:
        """The row as the ``runs`` table's columns."""
        s = self.summary or {}
        row = {
            "run_id": self.run_id,
            "kind": self.kind,
            "status": self.status,
            "started": self.started,
            "finished": self.finished,
            "command": self.command,
            "input": self.input,
            "trade": int(self.trade),
            "run_tag": self.run_tag,
            "settings": self.settings,
            "records": self.records,
            "rows": json.dumps(dict(sorted(self.rows.items()))),
            "breaker_trips": sum(s.get("breaker_trips", {}).values()),
            "first_ts": s.get("first_ts") or 0,
            "last_ts": s.get("last_ts") or 0,
            "summary": json.dumps(s, default=str, sort_keys=True),
        }
        for name in FIGURES:
            value = s.get(name)
            row[name] = math.nan if value is None else float(value)
        for name in COUNTS:
            row[name] = int(s.get(name) or 0)
        return {name: [row[name]] for name in RUNS.column_names}

    def write(self, store: Store) -> None:
        store.insert(RUNS, self.columns())

    def finish(self, store: Store | None, status: str, now: int, records: int, rows, summary) -> None:
        """The run ended: its row replaced with the figures (nothing to write without a store)."""
        self.status, self.finished, self.records = status, now, records
        self.rows = {table: n for table, n in dict(rows).items() if n}
        self.summary = summary
        if store is not None:
            self.write(store)


def held(store: Store, run_id: str) -> dict[str, int]:
    """Rows of ``run_id`` already in the store, per table (empty: a new run)."""
    return store.run_rows(run_id)


LIST_COLUMNS = (
    "run_id",
    "kind",
    "status",
    "started",
    "records",
    "trade",
    "return",
    "max_drawdown",
    "sharpe",
    "orders",
    "fills",
    "input",
)


def list_runs(store: Store, limit: int | None = None) -> tuple[list[str], list[tuple]]:
    """The runs in the store, newest first, and one line for trading rows made before run ids.

    Columns: :data:`LIST_COLUMNS` (``return`` and ``max_drawdown`` as fractions).
    """
    # an annualised ratio of less than a day of returns says nothing (as in the backtest summary)
    short = "if(dateDiff('second', first_ts, last_ts) < 86400, nan, sharpe) AS sharpe"
    cols = ", ".join(short if c == "sharpe" else f"`{c}`" for c in LIST_COLUMNS)
    sql = f"SELECT {cols} FROM {RUNS.name} FINAL ORDER BY started DESC, run_id"
    if limit:
        sql += f" LIMIT {int(limit)}"
    rows = [tuple(r) for r in store.query(sql).result_rows]
    where = f"run_id = {quote('')}"
    legacy = " UNION ALL ".join(f"SELECT count() AS n FROM {t} WHERE {where}" for t in RUN_TABLES)
    old = sum(int(n) for (n,) in store.query(legacy).result_rows)
    if old:
        count = f"{old:,} row{'s' * (old != 1)}"
        before = ("", "(before run ids)", "", None, None, 1, None, None, None, None, None, count)
        rows.append(before)
    return list(LIST_COLUMNS), rows
