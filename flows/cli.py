"""The ``qbtc`` command line: run, replay, sql, simulate."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time

from flows.config import ConfigError, Settings, load_settings
from schemas.ddl import TABLES
from sinks.clickhouse_store import DEFAULT_DSN, Store, StoreError, redact
from sources.tick_files import InputError

EXAMPLE_SQL = (
    "SELECT symbol, count() AS rows, round(avg(volatility), 6) AS avg_vol, "
    "round(max(qvar95), 6) AS max_qvar95, sum(drift) AS drifts "
    "FROM features FINAL GROUP BY symbol ORDER BY symbol"
)


class UsageError(Exception):
    """Unusable arguments: one line on stderr, exit code 2."""


def _common(p: argparse.ArgumentParser, store: bool = True) -> None:
    if store:
        p.add_argument(
            "--store",
            metavar="DSN",
            help="chdb://PATH (default from config: chdb://var/qbtc.chdb) "
            "or http(s)://user:password@host:port/db",
        )
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one config key, e.g. --set features.window=60 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qbtc",
        description="Streaming risk features for crypto markets: ticks -> bars, volatility, entropy, "
        "VaR/ES, QVaR, drift and correlations, through Bytewax into ClickHouse.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="the main job: a simulated market through the pipeline into the store",
        description="Simulate a market ([simulator] config) and run it through the "
        "pipeline into the store, then print a summary.",
    )
    _common(run)
    run.add_argument("--workers", type=int, help="worker threads (default 1)")
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")

    rep = sub.add_parser(
        "replay",
        help="replay tick files through the pipeline as fast as possible",
        description="Replay tick files (CSV or JSON Lines, optionally .gz) through the "
        "pipeline into the store. Columns: ts,symbol,price,qty[,side,trade_id,exchange].",
    )
    rep.add_argument("inputs", nargs="+", metavar="INPUT", help="tick files, read in the order given")
    _common(rep)
    rep.add_argument("--workers", type=int, help="worker threads (default 1)")
    rep.add_argument("--null-sink", action="store_true", help="compute everything, store nothing")
    rep.add_argument("--quiet", action="store_true", help="no progress on stderr")

    sql = sub.add_parser(
        "sql",
        help="run SQL against the store and print a table",
        description="Run one SQL statement against the store. Tables: "
        + ", ".join(TABLES)
        + ". Use FINAL to read merged rows.",
    )
    sql.add_argument("query", help='e.g. "SELECT count() FROM features FINAL"')
    _common(sql)
    sql.add_argument("--format", choices=("table", "csv", "tsv"), default="table", help="output format")

    sim = sub.add_parser(
        "simulate",
        help="write a simulated market to a tick CSV file",
        description="Write the [simulator] market to a canonical tick CSV (gzip if .gz).",
    )
    sim.add_argument("output", help="file to write, e.g. ticks.csv.gz")
    _common(sim, store=False)
    return parser


def _settings(args) -> Settings:
    return load_settings(args.config, args.overrides)


def _dsn(args, settings: Settings) -> str:
    return args.store or settings.store.dsn


def _with_workers(settings: Settings, workers: int | None) -> Settings:
    if workers is None:
        return settings
    if workers < 1:
        msg = "--workers must be >= 1"
        raise UsageError(msg)
    return dataclasses.replace(settings, run=dataclasses.replace(settings.run, workers=workers))


def _summary(kind: str, store: Store | None, dsn: str, records: int, seconds: float, written) -> None:
    out = sys.stdout
    rate = records / seconds if seconds > 0 else 0.0
    out.write(f"\n{kind}: {records:,} records in {seconds:.1f} s ({rate:,.0f} ticks/s)\n")
    if store is None:
        out.write("null sink: rows computed (not stored)\n")
        for table, n in sorted(written.items()):
            out.write(f"  {table:<14}{n:>12,}\n")
        return
    counts = store.counts()
    out.write(f"store: {redact(dsn)}\n")
    for table, n in counts.items():
        out.write(f"  {table:<14}{n:>12,} rows\n")
    path = dsn[len("chdb://") :] if dsn.startswith("chdb://") else None
    store_arg = "" if dsn == DEFAULT_DSN else f" --store {shlex.quote(dsn)}"
    if path:
        out.write(f"data: {os.path.abspath(path)}\n")
    out.write(f"try:  qbtc sql {shlex.quote(EXAMPLE_SQL)}{store_arg}\n")


def cmd_run(args) -> int:
    from flows.pipeline import Progress, replay, simulator_inputs, stderr_progress

    settings = _with_workers(_settings(args), args.workers)
    dsn = _dsn(args, settings)
    store = Store(dsn)
    inputs, expected = simulator_inputs(settings)
    progress = Progress(total_bytes=expected, report=None if args.quiet else stderr_progress)
    start = time.perf_counter()
    replay(inputs, settings, dsn, progress)
    _summary("run", store, dsn, progress.records, time.perf_counter() - start, {})
    return 0


def cmd_replay(args) -> int:
    from flows.pipeline import Progress, file_inputs, replay, stderr_progress

    settings = _with_workers(_settings(args), args.workers)
    dsn = None if args.null_sink else _dsn(args, settings)
    inputs, total = file_inputs(args.inputs, settings)
    store = None if dsn is None else Store(dsn)
    progress = Progress(total_bytes=total, report=None if args.quiet else stderr_progress)
    start = time.perf_counter()
    counter = replay(inputs, settings, dsn, progress)
    _summary("replay", store, dsn or "", progress.records, time.perf_counter() - start, dict(counter.rows))
    return 0


def _cell(value) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def cmd_sql(args) -> int:
    settings = _settings(args)
    store = Store(_dsn(args, settings))
    try:
        result = store.query(args.query)
    except Exception as exc:  # the database's own message is the useful part
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"query failed: {first}"
        raise UsageError(msg) from None
    names = list(result.column_names)
    rows = [[_cell(v) for v in row] for row in result.result_rows]
    if args.format in ("csv", "tsv"):
        import csv

        writer = csv.writer(sys.stdout, delimiter="," if args.format == "csv" else "\t", lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
        return 0
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    line = "+".join("-" * (w + 2) for w in widths)
    sys.stdout.write(" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)) + "\n")
    sys.stdout.write(line + "\n")
    for r in rows:
        sys.stdout.write(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + "\n")
    sys.stdout.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
    return 0


def cmd_simulate(args) -> int:
    from flows.pipeline import simulator_settings
    from sources.simulator import write_csv

    settings = _settings(args)
    start = time.perf_counter()
    rows = write_csv(args.output, simulator_settings(settings))
    sys.stdout.write(f"wrote {rows:,} ticks to {args.output} in {time.perf_counter() - start:.1f} s\n")
    return 0


COMMANDS = {"run": cmd_run, "replay": cmd_replay, "sql": cmd_sql, "simulate": cmd_simulate}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, InputError, StoreError) as exc:
        sys.stderr.write(f"qbtc {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"qbtc {args.command}: interrupted\n")
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
