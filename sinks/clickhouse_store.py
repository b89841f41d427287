"""The ClickHouse store: embedded chDB by default, a server over HTTP(S) when configured.

DSNs: ``chdb://PATH`` (``chdb:///abs/path`` or a relative ``chdb://var/x``;
``chdb://:memory:`` for a throw-away store; ``chdb://`` without a path is
refused) or ``http(s)://user:password@host:port/database``. Tables are
created idempotently when a store opens (``must_exist`` refuses a chdb path
that does not exist instead). Writes go through Arrow in column batches.

One process at a time opens a chdb path (chDB's own lock); a second one is
told which process holds it (:class:`StoreInUse`, from the ``status`` file
chDB keeps in the store with its holder's pid).

A store made by an older qbtc is brought up to date when it opens: a column
this version added is added to the table (``ALTER TABLE ... ADD COLUMN``;
a Float64 reads NaN on the old rows, "not known then", any other type its
default). A trading table made before run ids (its key without ``run_id``)
is rebuilt under the new key, its rows kept with ``run_id`` ``""`` (listed by
``qbtc runs`` as rows from before run ids). Any other table whose sorting key
changed cannot be altered in place: it stays readable, and a write into it
fails with one line saying so.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Sequence
from urllib.parse import unquote, urlparse

import clickhouse_connect
import numpy as np
import pyarrow as pa

from schemas.ddl import RUN_TABLES, RUNS, TABLES, TS, Table
from schemas.errors import OutsideFailure, UsageProblem

DEFAULT_DSN = "chdb://var/qbtc.chdb"


class StoreError(UsageProblem):
    """A store that cannot be opened or written, with the reason."""


class StoreWriteError(StoreError, OutsideFailure):
    """A write the store refused (a failure while running, not a usage problem)."""

    exit_code = 1


class StoreInUse(StoreError, OutsideFailure):
    """A chdb store another process holds open (exit 1: wait for it or use another store)."""

    exit_code = 1


def quote(text: str) -> str:
    r"""``text`` as a ClickHouse string literal.

    >>> print(quote("it's a\\b"))
    'it\'s a\\b'
    """
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def one_line(exc: BaseException, limit: int = 1000) -> str:
    """An exception's message on one line, without a stack trace, at most ``limit`` characters.

    A ClickHouse server's error reads "HTTPDriver ... received ClickHouse error
    code 243" on its first line and says what went wrong on the next.

    >>> one_line(RuntimeError("HTTPDriver for h: error code 243\\n Code: 243. No space\\nStack trace: ..."))
    'HTTPDriver for h: error code 243 Code: 243. No space'
    >>> one_line(KeyError())
    'KeyError'
    """
    text = str(exc).split("Stack trace:", 1)[0]
    text = " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def chdb_path(dsn: str) -> str | None:
    """The on-disk path of a chdb DSN (None for memory or non-chdb DSNs).

    >>> chdb_path("chdb:///tmp/q.chdb")
    '/tmp/q.chdb'
    >>> chdb_path("chdb://var/q.chdb") == os.path.abspath("var/q.chdb")
    True
    >>> chdb_path("chdb://:memory:") is None
    True
    """
    if not dsn.startswith("chdb://"):
        return None
    rest = dsn[len("chdb://") :]
    if rest in ("", ":memory:", "memory"):
        return None
    return os.path.abspath(rest)


def _holder(path: str) -> int | None:
    """The pid of another process holding the chdb store at ``path``, else None.

    chDB keeps a ``status`` file in the store, locked (flock) while a process has the store
    open, with that process's pid on its first line.
    """
    try:
        fd = os.open(os.path.join(path, "status"), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            first = os.read(fd, 200).decode("utf-8", "replace").partition("\n")[0]
            name, _, value = first.partition(":")
            if name.strip() == "PID" and value.strip().isdigit() and int(value) != os.getpid():
                return int(value)
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def redact(dsn: str) -> str:
    """The DSN with its password hidden, for messages and logs.

    >>> redact("https://u:secret@h:8443/db")
    'https://u:***@h:8443/db'
    """
    parsed = urlparse(dsn)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return parsed._replace(netloc=netloc).geturl()
    return dsn


_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def _client(dsn: str, must_exist: bool = False):
    """One client per DSN per process (chdb allows one engine per process)."""
    with _clients_lock:
        client = _clients.get(dsn)
        if client is not None:
            return client
        path = chdb_path(dsn)
        if dsn == "chdb://":
            msg = "store chdb:// has no path: give chdb://PATH (chdb://:memory: for a throw-away store)"
            raise StoreError(msg)
        if must_exist and path is not None and not os.path.isdir(path):
            msg = f"store {path} does not exist (check --store; qbtc run or replay creates a store)"
            raise StoreError(msg)
        pid = None if path is None else _holder(path)
        if pid is not None:  # before chDB tries: it would print its own lines on stderr
            msg = f"store {path} in use by another qbtc process (pid {pid})"
            raise StoreInUse(msg)
        try:
            if dsn.startswith("chdb://"):
                if path is not None:
                    os.makedirs(path, exist_ok=True)
                    client = clickhouse_connect.get_client(interface="chdb", path=path)
                else:
                    client = clickhouse_connect.get_client(interface="chdb")
            elif dsn.startswith(("http://", "https://")):
                p = urlparse(dsn)
                client = clickhouse_connect.get_client(
                    host=p.hostname,
                    port=p.port or (8443 if p.scheme == "https" else 8123),
                    username=unquote(p.username or "default"),
                    password=unquote(p.password or ""),
                    database=(p.path.strip("/") or "default"),
                    secure=p.scheme == "https",
                )
            else:
                msg = f"store DSN {redact(dsn)!r} is neither chdb://PATH nor http(s)://..."
                raise StoreError(msg)
        except StoreError:
            raise
        except Exception as exc:
            pid = None if path is None else _holder(path)
            if pid is not None:
                msg = f"store {path} in use by another qbtc process (pid {pid})"
                raise StoreInUse(msg) from None
            msg = f"cannot open store {redact(dsn)}: {exc}"
            raise StoreError(msg) from exc
        _clients[dsn] = client
        return client


LATER_KEYS = ("run_id", "interval")
"""Key columns older stores' tables lack: such a table is rebuilt under today's key, its rows kept with
the column's default (run_id ``""``: before run ids; interval 0: before several resolutions)."""


FINEST_BARS = "interval = (SELECT if(max(interval) = 0, 0, minIf(interval, interval > 0)) FROM bars)"
"""A WHERE condition on ``bars`` that keeps the finest resolution the store holds (rows from before
several resolutions, interval 0, only when there are no others)."""


class Store:
    """Tables of one ClickHouse database.

    Parameters
    ----------
    dsn
        Where the data lives (see the module docstring).
    must_exist
        Refuse a chdb path that does not exist (instead of creating the store).
    """

    def __init__(self, dsn: str = DEFAULT_DSN, must_exist: bool = False) -> None:
        self.dsn = dsn
        self.client = _client(dsn, must_exist)
        self.lock = threading.Lock()
        db = "database = currentDatabase()"
        keys = dict(self.query(f"SELECT name, sorting_key FROM system.tables WHERE {db}").result_rows)
        for table in TABLES.values():
            if table.name not in keys:
                self.command(table.create_sql())
        self.stale_keys: dict[str, str] = self._migrate(keys) if keys.keys() & TABLES.keys() else {}

    def _migrate(self, keys: dict[str, str]) -> dict[str, str]:
        """Add the columns an older qbtc's tables lack; the tables whose key differs, with that key.

        ``keys``: the sorting key of every table the store held when it opened.
        """
        have: dict[str, set[str]] = {}
        for table, column in self.query(
            "SELECT table, name FROM system.columns WHERE database = currentDatabase()"
        ).result_rows:
            have.setdefault(table, set()).add(column)
        for table in TABLES.values():
            for name, ctype in table.columns:
                if name not in have.get(table.name, {name}):
                    column = f"`{name}` {ctype}" + (" DEFAULT nan" if ctype == "Float64" else "")
                    self.command(f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {column}")
        stale = {}
        for name, key in keys.items():
            table = TABLES.get(name)
            key = key.replace(" ", "").removeprefix("(").removesuffix(")")  # "(source)" for one column
            if table is None or key == ",".join(table.key):
                continue
            if key == ",".join(k for k in table.key if k not in LATER_KEYS):
                # made before run ids or intervals: rebuilt, its rows kept under run_id "" / interval 0
                self._rekey(table)
            else:
                stale[name] = key.replace(",", ", ")
        return stale

    def _rekey(self, table: Table) -> None:
        """Rebuild ``table`` under its current key, rows kept (a sorting key cannot be altered)."""
        new, old = f"{table.name}__rekeyed", f"{table.name}__before_rekey"
        cols = ", ".join(f"`{c}`" for c in table.column_names)
        self.command(f"DROP TABLE IF EXISTS {new}")
        self.command(table.create_sql().replace(f"EXISTS {table.name} (", f"EXISTS {new} (", 1))
        self.command(f"INSERT INTO {new} ({cols}) SELECT {cols} FROM {table.name}")
        self.command(f"RENAME TABLE {table.name} TO {old}, {new} TO {table.name}")
        self.command(f"DROP TABLE {old}")

    def command(self, sql: str):
        with self.lock:
            return self.client.command(sql)

    def query(self, sql: str, settings: dict | None = None):
        """Run a query; the clickhouse-connect result (column_names, result_rows)."""
        with self.lock:
            return self.client.query(sql, settings=settings)

    def run_rows(self, run_id: str) -> dict[str, int]:
        """Rows of run ``run_id`` per trading table (tables without any left out), plus ``runs``
        when the run has its row there."""
        names = (*RUN_TABLES, RUNS.name)
        where = f"run_id = {quote(run_id)}"
        sql = " UNION ALL ".join(f"SELECT '{name}', count() FROM {name} WHERE {where}" for name in names)
        got = dict(self.query(sql).result_rows)
        return {name: int(got[name]) for name in names if got.get(name)}

    def recreate(self) -> None:
        """Drop qbtc's tables and create them empty (``--fresh``)."""
        for table in TABLES.values():
            self.command(f"DROP TABLE IF EXISTS {table.name}")
            self.command(table.create_sql())
        self.stale_keys = {}

    def insert(self, table: Table, columns: dict[str, Sequence]) -> int:
        """Insert one column batch; returns the row count."""
        arrays = []
        for name, ctype in table.columns:
            values = columns[name]
            if isinstance(values, (pa.Array, pa.ChunkedArray)):
                arr = values
            elif ctype == TS:
                arr = pa.array(np.asarray(values, dtype=np.int64)).cast(pa.timestamp("ms", tz="UTC"))
            elif isinstance(values, np.ndarray) and values.dtype != object:
                arr = pa.array(values)
            else:
                arr = pa.array(values if isinstance(values, list) else list(values))
            arrays.append(arr)
        batch = pa.table(arrays, names=list(table.column_names))
        if batch.num_rows == 0:
            return 0
        old_key = self.stale_keys.get(table.name)
        if old_key is not None:
            msg = (
                f"store write failed: {table.name}: the table in {redact(self.dsn)} is keyed by ({old_key}), "
                f"this qbtc writes it keyed by ({', '.join(table.key)}): the store was made by an older "
                "qbtc; write to a new store (--store) or drop the table"
            )
            raise StoreWriteError(msg)
        with self.lock:
            # Deduplication is the ReplacingMergeTree's job at merge and FINAL
            # time; doing it on insert as well triples the cost of a batch.
            try:
                self.client.insert_arrow(table.name, batch, settings={"optimize_on_insert": 0})
            except Exception as exc:  # the database's own message is the useful part
                msg = f"store write failed: {table.name}: {one_line(exc)}"
                raise StoreWriteError(msg) from exc
        return batch.num_rows

    def counts(self, final: bool = True) -> dict[str, int]:
        """Rows per table (merged with FINAL unless told otherwise)."""
        fin = " FINAL" if final else ""
        sql = " UNION ALL ".join(f"SELECT '{name}', count() FROM {name}{fin}" for name in TABLES)
        got = {name: int(n) for name, n in self.query(sql).result_rows}
        return {name: got[name] for name in TABLES}
