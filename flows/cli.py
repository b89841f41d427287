"""The ``qbtc`` command line: run, replay, sql, simulate; kafka, publish, stream, record."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from bytewax.errors import BytewaxRuntimeError

from flows import watchdog
from flows.config import ConfigError, Settings, load_settings, scrub
from flows.interrupt import EXIT_CODE as EXIT_INTERRUPTED
from flows.interrupt import quiet_interrupt, stop_reading
from flows.report import run_summary, trading_summary, write_table
from schemas.ddl import TABLES
from schemas.errors import QbtcError, UsageProblem
from schemas.records import CONTROL_COMMANDS
from sinks.clickhouse_store import Store, StoreError, one_line, redact


class UsageError(UsageProblem):
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


def _cluster(p) -> None:
    p.add_argument("--recovery-dir", metavar="DIR", help="Bytewax recovery partitions (resume after a crash)")
    p.add_argument(
        "--snapshot-interval", type=float, metavar="S", help="seconds between snapshots (default 10)"
    )
    p.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1:PORT"
    )
    p.add_argument("--process-id", type=int, metavar="I", help="this process's index in a cluster")
    p.add_argument(
        "--addresses", metavar="HOST:PORT;...", help="every cluster process's address, in process-id order"
    )


def _kafka_parsers(sub) -> None:
    kafka = sub.add_parser(
        "kafka",
        help="a local Apache Kafka broker (up/down/status) and qbtc's topics",
        description="Start, stop or inspect a local Apache Kafka 4.x broker (KRaft, jars from Maven "
        "Central, cached after the first download), and create qbtc's topics.",
    )
    ksub = kafka.add_subparsers(dest="kafka_command", metavar="ACTION", required=True)
    try:
        from infra.kafka.broker import configure
    except ImportError:  # pragma: no cover - the broker module ships with qbtc
        configure = None
    if configure is not None:
        configure(ksub)
    topics = ksub.add_parser(
        "topics",
        help="create qbtc's topics where missing (ticks, the features flow's and the trading loop's outputs)",
        description="Create the topics idempotently; existing topics are left as they are.",
    )
    topics.add_argument("--kafka", metavar="BROKERS", help="bootstrap servers (default from config)")
    topics.add_argument("--partitions", type=int, help="partitions of new topics (default kafka.partitions)")
    _common(topics, store=False)
    topics.set_defaults(func=cmd_kafka_topics)

    pub = sub.add_parser(
        "publish",
        help="publish tick files or the simulator onto the ticks topic",
        description="Publish ticks (key = symbol, value = the codec's tick record) with delivery "
        "reports; records rejected while reading go to the dead-letters topic.",
    )
    pub.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="tick files (CSV or JSON Lines, optionally .gz)"
    )
    pub.add_argument(
        "--simulate", action="store_true", help="publish the [simulator] market instead of files"
    )
    pub.add_argument("--kafka", metavar="BROKERS", help="bootstrap servers (default from config)")
    pub.add_argument("--topic", help="tick topic (default: <prefix>ticks)")
    pub.add_argument(
        "--rate", type=float, metavar="N", help="ticks per second (default: as fast as possible)"
    )
    pub.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _common(pub, store=False)

    st = sub.add_parser(
        "stream",
        help="the features flow on Kafka: ticks topic -> bars/features/correlations topics + store",
        description="Run the features flow on the ticks topic until stopped (or --until-end), writing "
        "the output topics and the store. With --recovery-dir a restart resumes where it stopped.",
    )
    _common(st)
    st.add_argument("--kafka", metavar="BROKERS", help="bootstrap servers (default from config)")
    st.add_argument("--topic", help="tick topic (default: <prefix>ticks)")
    st.add_argument("--workers", type=int, help="worker threads per process (default 1)")
    st.add_argument("--null-sink", action="store_true", help="store nothing (topics still written)")
    st.add_argument("--until-end", action="store_true", help="stop at the end offsets found at start")
    st.add_argument("--from-offset", type=int, metavar="O", help="start every partition at offset O")
    st.add_argument(
        "--from-ts", metavar="T", help="start at record time T (epoch ms or ISO-8601 with offset)"
    )
    st.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _trade(st, default=False)
    _run_id(st)
    st.add_argument(
        "--execution",
        choices=("internal", "external"),
        default="internal",
        help="where the loop's orders go: internal (the paper broker in the flow, default) or external "
        "(the orders topic, for qbtc execute; the portfolio is booked from the fills topic)",
    )
    st.add_argument(
        "--lockstep",
        action="store_true",
        help="with --execution external: each step waits for the execution service's fills of the step "
        "before the next (with qbtc execute --venue paper --lockstep: the in-process backtest's results)",
    )
    _cluster(st)

    rec = sub.add_parser(
        "record",
        help="record live trades from an exchange (ccxt) to the ticks topic or a file",
        description="Watch an exchange's trades through ccxt (websocket watch_trades, or polling "
        "fetch_trades where that is unavailable) and write them as ticks.",
    )
    rec.add_argument("--exchange", required=True, help="ccxt exchange id, e.g. binance")
    rec.add_argument("--symbols", required=True, help="comma-separated ccxt symbols, e.g. BTC/USDT,ETH/USDT")
    rec.add_argument(
        "--to", required=True, metavar="TARGET", help="kafka://BROKERS[/TOPIC] or a file (.csv, .jsonl, .gz)"
    )
    rec.add_argument("--poll", action="store_true", help="poll fetch_trades instead of websockets")
    rec.add_argument("--max-ticks", type=int, help="stop after this many ticks")
    rec.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    _common(rec, store=False)


def _trade(p, default: bool) -> None:
    p.add_argument(
        "--trade",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="run the trading loop (signals, risk engine, paper broker) and print a backtest summary "
        f"(default {'on' if default else 'off'}; config sections [trading], [risk], [sizing], "
        "[execution], [portfolio], [regime], [weights], [atr], [strategies])",
    )
    p.add_argument(
        "--strategy",
        dest="strategies",
        metavar="SPEC",
        action="append",
        default=[],
        help="trade this strategy, instead of [strategies] use (repeatable): builtin:NAME, "
        "package.module:Class or path/to/file.py:Class",
    )


def _run_id(p) -> None:
    p.add_argument(
        "--run-id",
        metavar="ID",
        help="name this run in the store (its trading rows and its row in `qbtc runs`); default: 8 hex "
        "digits from the settings, the command and the input (the same run gets the same id)",
    )


def _report_option(p) -> None:
    p.add_argument(
        "--report",
        metavar="FILE",
        help="with --trade: write the run's HTML report (as qbtc report --run ID --out FILE) when it ends",
    )


def _check_report(args, dsn: str | None) -> None:
    if getattr(args, "report", None) is None:
        return
    if not args.trade:
        msg = "--report needs --trade (a report shows a trading run)"
        raise UsageError(msg)
    if dsn is None:
        msg = "--report needs a store (not --null-sink): the report is built from it"
        raise UsageError(msg)


def _write_report(args, store: Store | None, run, progress) -> None:
    """``--report FILE``: the finished run's report (not after a Ctrl-C: the run is incomplete)."""
    if getattr(args, "report", None) is None or store is None or progress.stop_requested:
        return
    from flows.html_report import write_report

    write_report(store, args.report, run=run.run_id)
    sys.stdout.write(f"report: {os.path.abspath(args.report)}\n")


def _store_runs(p) -> None:
    """``--run-id``, ``--append`` / ``--fresh``: a run's id, and what a trading run does with a store
    that already holds that run."""
    _run_id(p)
    runs = p.add_mutually_exclusive_group()
    runs.add_argument(
        "--append",
        action="store_true",
        help="write a run the store already holds again (the same id: rows with the same keys replace "
        "each other); runs with other ids are always kept apart",
    )
    runs.add_argument(
        "--fresh", action="store_true", help="drop qbtc's tables in the store and create them empty first"
    )


def _venue_parser(sub) -> None:
    from infra.exchange.daemon import configure

    venue = sub.add_parser(
        "venue",
        help="a local exchange to rehearse on: Binance's spot REST API for ccxt (up/down/status/serve)",
        description="Start, stop or inspect a local exchange that speaks the part of Binance's spot REST "
        "API ccxt's binance class uses, matching orders against ticks from files or the ticks topic with "
        "the paper cost model.",
    )
    configure(venue.add_subparsers(dest="venue_command", metavar="ACTION", required=True))


def _monitor_parser(sub) -> None:
    from infra.prometheus.monitor import configure

    monitor = sub.add_parser(
        "monitor",
        help="a local Prometheus and Alertmanager with qbtc's rules and alerts (up/down/status)",
        description="Start, stop or inspect Prometheus scraping qbtc's --metrics-port endpoints with the "
        "rules of infra/prometheus, and Alertmanager with receivers from the QBTC_ALERT_* environment.",
    )
    configure(monitor.add_subparsers(dest="monitor_command", metavar="ACTION", required=True))


def _control_parser(sub) -> None:
    ctl = sub.add_parser(
        "control",
        help="operator commands to the trading loops and execution services: resume, pause, flatten",
        description="Without --kafka: append an operator command to the control file "
        "(trading.control_file) of embedded runs (run, replay); a running flow applies it at its next "
        "bar close, a replay at the first bar close at or after --at. With --kafka: put it on the "
        "<prefix>control topic, where every `qbtc stream --trade` and `qbtc execute` started before it "
        "applies it once (a stream at its next bar close, the execution service at once: pause and "
        "flatten hold new orders, resume releases them); exit 1 if the broker does not acknowledge it "
        "within kafka.timeout_s. Only `resume` re-enables trading after the kill switch. Every command "
        "and its reason becomes a risk event.",
    )
    ctl.add_argument("action", choices=CONTROL_COMMANDS)
    ctl.add_argument("--reason", required=True, help="why (recorded with the command)")
    ctl.add_argument(
        "--at", metavar="T", help="event time to apply it at (epoch ms or ISO-8601; file only); default now"
    )
    ctl.add_argument(
        "--kafka",
        nargs="?",
        const="",
        metavar="BROKERS",
        help="put the command on the control topic (not the file): at BROKERS, or at kafka.brokers of "
        "the config when given without a value; the topic only ever with --kafka",
    )
    _common(ctl, store=False)


def _execute_parser(sub) -> None:
    ex = sub.add_parser(
        "execute",
        help="the execution service: orders topic -> venue -> order-events and fills topics",
        description="Consume the orders topic (group qbtc-execute), check each order against "
        "[execution_limits], send it with its order id as the client order id and publish its order "
        "events and fills; offsets are committed after they are delivered. Without --sandbox or --live "
        "it is a dry run: would_send events, nothing sent. API keys: QBTC_EXECUTION_API_KEY and "
        "QBTC_EXECUTION_API_SECRET, or --secret-file.",
    )
    ex.add_argument(
        "--venue",
        default="dry-run",
        metavar="VENUE",
        help="dry-run (default), paper (the paper broker on the ticks topic) or ccxt:EXCHANGE",
    )
    ex.add_argument(
        "--lockstep",
        action="store_true",
        help="with --venue paper: fill on the bars of qbtc stream --execution external --lockstep, "
        "step by step",
    )
    mode = ex.add_mutually_exclusive_group()
    mode.add_argument("--sandbox", action="store_true", help="the exchange's test network or --venue-url")
    mode.add_argument("--live", action="store_true", help="real orders (needs execution_limits set)")
    ex.add_argument(
        "--venue-url", metavar="URL", help="base URL of a Binance-like venue (the local exchange)"
    )
    ex.add_argument("--secret-file", metavar="FILE", help="NAME=VALUE lines with the API key and secret")
    ex.add_argument("--kafka", metavar="BROKERS", help="bootstrap servers (default from config)")
    ex.add_argument("--idle-exit", type=float, metavar="S", help="stop after S seconds without a message")
    ex.add_argument(
        "--store", metavar="DSN", help="also write the records published to this store (default: topics only)"
    )
    _common(ex, store=False)


def _stress_parser(sub) -> None:
    st = sub.add_parser(
        "stress",
        help="Monte Carlo stress of the current (or a given) portfolio: VaR/ES, worst case, kill-switch odds",
        description="Simulate scenarios of the portfolio over a horizon from the store's bars (filtered "
        "historical simulation, or a t-copula): VaR/ES at 95%% and 99%%, the worst case, the chance of "
        "each kill-switch trigger ([risk] kill_* thresholds) and the time to recover a loss. Results go "
        "to the stress table. Without --position the book is the store's (net fills, latest portfolio "
        "row's equity).",
    )
    _common(st)
    st.add_argument(
        "--position",
        dest="positions",
        metavar="SYMBOL=QTY",
        action="append",
        default=[],
        help="a base quantity held (negative: short), valued at the last close (repeatable; needs --equity)",
    )
    st.add_argument("--equity", type=float, help="the portfolio's equity, quote units")
    st.add_argument("--scenarios", type=int, default=10_000, help="scenarios simulated (default 10000)")
    st.add_argument(
        "--horizon", metavar="N|Ts", help="bars (60) or a time (3600s, 90m, 4h, 1d); default 60 bars"
    )
    st.add_argument(
        "--method", choices=("fhs", "t-copula"), default="fhs", help="filtered historical simulation "
        "(whole residual rows: the history's correlations) or a t-copula (default fhs)",
    )  # fmt: skip
    st.add_argument("--dof", type=float, help="the t-copula's degrees of freedom (default: fitted)")
    st.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    st.add_argument("--since", metavar="T", help="history from time T (epoch ms or ISO-8601 with offset)")
    st.add_argument("--bars", type=int, metavar="N", help="history: the last N bars of returns")
    st.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _report_parser(sub) -> None:
    rep = sub.add_parser(
        "report",
        help="one self-contained HTML report of a trading run (or two runs side by side)",
        description="Write an HTML report of a trading run from the store: summary figures and costs, "
        "equity and drawdown, exposure and leverage, VaR against P&L with exceedances, breakers and "
        "mode, P&L by strategy, monthly returns, the return distribution, rolling Sharpe and one "
        "symbol's price with its fills. The file embeds Plotly and works offline.",
    )
    _common(rep)
    rep.add_argument("--run", metavar="ID", help="the run to report (default: the newest run that traded)")
    rep.add_argument("--compare", metavar="ID2", help="a second run drawn beside it (e.g. the engine off)")
    rep.add_argument("--symbol", metavar="S", help="the symbol whose price and fills are drawn (default: "
                     "the run's most traded)")  # fmt: skip
    rep.add_argument("--out", metavar="FILE", default="report.html", help="HTML file (default report.html)")


def _walkforward_parser(sub) -> None:
    wf = sub.add_parser(
        "walkforward",
        help="walk-forward analysis of a recording: train/test splits, a grid chosen on train only",
        description="Split a recording (tick or candle files) into consecutive test spans, each after a "
        "train span; replay each split with --trade in-process (the online state at a test span's start "
        "comes from the train span only) and report each test span's figures from the store, their "
        "spread and overfitting figures. With --grid, every candidate is replayed over the train span, "
        "the best by --metric is chosen and only it goes on into the test span.",
    )
    wf.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="tick or candle files, read in the order given"
    )
    _common(wf)
    wf.add_argument("--splits", type=int, default=3, metavar="N", help="test spans (default 3)")
    wf.add_argument(
        "--train", metavar="D", help="the first train span (3600s, 90m, 4h, 7d; default: what is left "
        "before the test spans)",
    )  # fmt: skip
    wf.add_argument(
        "--test", metavar="D", help="each test span (default: the recording / (N + 1); with --train, what "
        "follows the first train span / N)",
    )  # fmt: skip
    wf.add_argument(
        "--rolling", action="store_true", help="train spans of a fixed length right before their test "
        "span (default anchored: every train span starts with the recording)",
    )  # fmt: skip
    wf.add_argument(
        "--grid", metavar="SECTION.KEY=V1,V2", action="append", default=[],
        help="candidate values of a config key (repeatable; the cartesian product, at most 16)",
    )  # fmt: skip
    wf.add_argument(
        "--metric", choices=("sharpe", "return", "sortino", "profit_factor"), default="sharpe",
        help="what the choice maximises over the train span (default sharpe)",
    )  # fmt: skip
    wf.add_argument(
        "--pbo", action="store_true", help="also replay every other candidate into the test span, only to "
        "estimate the probability of backtest overfitting (never for the choice)",
    )  # fmt: skip
    wf.add_argument(
        "--out", metavar="FILE", help="write the splits and the summary as JSON (.json) or CSV (.csv)"
    )
    wf.add_argument(
        "--strategy", dest="strategies", metavar="SPEC", action="append", default=[],
        help="trade this strategy instead of [strategies] use (repeatable)",
    )  # fmt: skip
    wf.add_argument(
        "--run-id", metavar="PREFIX", help="the runs' ids are PREFIX-s<split>-c<candidate>[-train] "
        "(default wf- and 8 hex digits of the inputs, plan, grid and settings)",
    )  # fmt: skip
    runs = wf.add_mutually_exclusive_group()
    runs.add_argument("--append", action="store_true", help="write runs the store already holds again")
    runs.add_argument("--fresh", action="store_true", help="drop qbtc's tables in the store first")
    wf.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _version() -> str:
    """The installed package's version (its metadata), or ``unknown`` when qbtc is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qbtc")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qbtc",
        description="Streaming risk features for crypto markets: ticks -> bars, volatility, entropy, "
        "VaR/ES, QVaR, drift and correlations, through Bytewax into ClickHouse.",
    )
    parser.add_argument("--version", action="version", version=f"qbtc {_version()}")
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
    _trade(run, default=True)
    _store_runs(run)
    _report_option(run)

    rep = sub.add_parser(
        "replay",
        help="replay tick or candle files (or a recorded topic) through the pipeline as fast as possible",
        description="Replay tick files (CSV or JSON Lines, optionally .gz) or OHLCV candle files (CSV or "
        "ccxt/freqtrade JSON) through the pipeline into the store. Tick columns: "
        "ts,symbol,price,qty[,side,trade_id,exchange].",
    )
    rep.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="tick or candle files, read in the order given, or one recorded topic kafka://BROKERS/TOPIC",
    )
    _common(rep)
    rep.add_argument("--workers", type=int, help="worker threads (default 1)")
    rep.add_argument("--null-sink", action="store_true", help="compute everything, store nothing")
    rep.add_argument("--quiet", action="store_true", help="no progress on stderr")
    rep.add_argument(
        "--from-ts",
        metavar="T",
        help="files and topics: keep records at or after time T (epoch ms or ISO-8601 with offset): "
        "a tick's ts or a candle's open time in files (the others are skipped and counted), "
        "the Kafka record time on a topic",
    )
    rep.add_argument(
        "--to-ts", metavar="T", help="files and topics: keep records before time T (exclusive; same forms)"
    )
    _trade(rep, default=False)
    _store_runs(rep)
    _report_option(rep)
    topic = rep.add_argument_group("topic replays (kafka://)")
    topic.add_argument("--from-offset", type=int, metavar="O", help="start every partition at offset O")
    topic.add_argument(
        "--outputs", action="store_true", help="also write the bars/features/... topics (default: store only)"
    )
    _cluster(topic)

    _kafka_parsers(sub)
    _venue_parser(sub)
    _monitor_parser(sub)
    _execute_parser(sub)
    _control_parser(sub)
    _stress_parser(sub)
    _report_parser(sub)
    _walkforward_parser(sub)

    sql = sub.add_parser(
        "sql",
        help="run SQL against the store and print a table",
        description="Run one SQL statement against an existing store, read-only (SELECT, SHOW, DESCRIBE, "
        "EXPLAIN, WITH) unless --write. Tables: " + ", ".join(TABLES) + ". Use FINAL to read merged rows.",
    )
    sql.add_argument("query", help='e.g. "SELECT count() FROM features FINAL"')
    _common(sql)
    sql.add_argument("--write", action="store_true", help="allow statements that change the store (DDL, DML)")
    sql.add_argument("--format", choices=("table", "csv", "tsv"), default="table", help="output format")

    runs = sub.add_parser(
        "runs",
        help="list the runs in the store (ids, status, figures), newest first",
        description="List the store's runs: every replay, run and stream has a run id (--run-id, or "
        "derived from its settings and input) and a row in the runs table with its settings and "
        "backtest figures; its trading rows carry the id. Compare two with qbtc report --run A --compare B.",
    )
    _common(runs)
    runs.add_argument("--limit", type=int, metavar="N", help="the newest N runs only")
    runs.add_argument("--format", choices=("table", "csv", "tsv"), default="table", help="output format")

    sim = sub.add_parser(
        "simulate",
        help="write a simulated market to a tick CSV file",
        description="Write the [simulator] market to a canonical tick CSV (gzip if .gz).",
    )
    sim.add_argument("output", help="file to write, e.g. ticks.csv.gz")
    _common(sim, store=False)
    return parser


def _settings(args) -> Settings:
    """The config, with ``--strategy`` applied; with ``--trade`` the strategies load here,
    so a bad one stops the command before anything runs."""
    if getattr(args, "run_id", None) is not None:  # before anything is read
        from flows.runs import check_run_id

        check_run_id(args.run_id)
    settings = load_settings(args.config, args.overrides)
    specs = getattr(args, "strategies", None)
    if specs:
        if not args.trade:
            msg = "--strategy needs --trade"
            raise UsageError(msg)
        chosen = dataclasses.replace(settings.strategies, use=tuple(specs))
        settings = dataclasses.replace(settings, strategies=chosen)
    if getattr(args, "trade", False):
        from flows.trading_settings import trading_settings

        trading_settings(settings)
    return settings


def _dsn(args, settings: Settings) -> str:
    return args.store or settings.store.dsn


def _with_workers(settings: Settings, workers: int | None) -> Settings:
    if workers is None:
        return settings
    if workers < 1:
        msg = "--workers must be >= 1"
        raise UsageError(msg)
    return dataclasses.replace(settings, run=dataclasses.replace(settings.run, workers=workers))


def _wall_ms() -> int:
    from sources.chunk_source import wall_ms

    return wall_ms()


def cmd_run(args) -> int:
    from flows.inputs import simulator_inputs, stderr_progress
    from flows.pipeline import TradingReport, replay
    from sources.chunk_source import Progress

    settings = _with_workers(_settings(args), args.workers)
    dsn = _dsn(args, settings)
    _check_report(args, dsn)
    store = Store(dsn)
    run = _begin_run(args, settings, "run", "simulator", "", args.trade)
    _store_for_run(args, store, args.trade, run)
    watchdog.default_abort()
    inputs, expected = simulator_inputs(settings)
    progress = Progress(total_bytes=expected, report=None if args.quiet else stderr_progress)
    report = TradingReport()
    start = time.perf_counter()
    with _run_row(run, store, progress, report), stop_reading(progress, "run"):
        counter = replay(
            inputs,
            settings,
            dsn,
            progress,
            trade=args.trade,
            report=report,
            live_since=_wall_ms(),
            run_id=run.run_id,
        )
        run.rows = counter.rows
    seconds = time.perf_counter() - start
    run_summary("run", store, dsn, progress.records, seconds, dict(counter.rows), run_id=run.run_id)
    trading_summary(report)
    _write_report(args, store, run, progress)
    return _finished(args, progress)


def _begin_run(args, settings: Settings, kind: str, source: str, run_input: str, trade: bool):
    """The run this command makes (:mod:`flows.runs`): its id from ``--run-id`` or derived."""
    from flows.runs import Run, check_run_id, command_line, default_run_id, settings_json, what_decides

    tag = ""
    if trade:
        from flows.trading_settings import trading_settings

        tag = trading_settings(settings, run_input).run_tag
    given = getattr(args, "run_id", None)
    run_id = check_run_id(given) if given else default_run_id(kind, what_decides(settings, tag), source)
    return Run(run_id, kind, source, trade, tag, settings_json(settings), command_line(settings), _wall_ms())


class _run_row:  # noqa: N801 - used as a context manager, like contextlib's
    """Write the run's ``runs`` row when it starts (status running) and when it ends: finished,
    interrupted (Ctrl-C) or failed (an exception, which goes on). Without a store: nothing."""

    def __init__(self, run, store: Store | None, progress, report) -> None:
        self.run, self.store, self.progress, self.report = run, store, progress, report

    def __enter__(self):
        if self.store is not None:
            self.run.write(self.store)
        return self.run

    def __exit__(self, kind, exc, tb) -> None:
        run = self.run
        if exc is not None:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) or _interrupted(exc) else "failed"
        else:
            status = "interrupted" if getattr(self.progress, "stop_requested", False) else "finished"
        summary = self.report.summary if self.report is not None else None
        records = max(run.records, self.progress.records)
        try:
            run.finish(self.store, status, _wall_ms(), records, run.rows, summary)
        except Exception:
            if exc is None:
                raise
            # the run failed already (often the store itself): its first error is the one to show


def _store_for_run(args, store: Store | None, trading: bool, run=None) -> None:
    """``--fresh``: drop and recreate qbtc's tables. A trading run into a store that already holds
    that run (its id) stops here (one line) unless ``--append`` or ``--fresh`` says what to do."""
    append, fresh = getattr(args, "append", False), getattr(args, "fresh", False)
    if store is None:
        if append or fresh:
            msg = f"--{'append' if append else 'fresh'} needs a store (not --null-sink)"
            raise UsageError(msg)
        return
    if fresh:
        store.recreate()
        return
    if not trading or append or run is None:
        return
    held = {table: n for table, n in store.run_rows(run.run_id).items() if table != "runs"}
    if held:
        rows = ", ".join(f"{table} {n:,}" for table, n in held.items())
        msg = (
            f"store {redact(store.dsn)} already holds run {run.run_id} ({rows}): the same settings and input "
            "(or the same --run-id); add --append to write it again (rows with the same keys replace each "
            "other), --run-id NAME to keep both, or --fresh to drop qbtc's tables first"
        )
        raise UsageError(msg)


def _time_arg(name: str, value: str | None) -> int | None:
    from schemas.validation import Rejected, parse_ts

    if value is None:
        return None
    try:
        return parse_ts(value)
    except Rejected as exc:
        msg = f"{name}: {exc.message}"
        raise UsageError(msg) from None


def _kafka_settings(args, settings: Settings) -> Settings:
    """Settings with the command line's Kafka and cluster options applied."""
    from flows.kafka_flow import with_brokers

    settings = with_brokers(settings, getattr(args, "kafka", None))
    changes = {}
    if getattr(args, "recovery_dir", None):
        changes["recovery_dir"] = args.recovery_dir
    if getattr(args, "snapshot_interval", None) is not None:
        if args.snapshot_interval <= 0:
            msg = "--snapshot-interval must be > 0"
            raise UsageError(msg)
        changes["snapshot_interval_s"] = args.snapshot_interval
    if getattr(args, "metrics_port", None) is not None:
        changes["metrics_port"] = args.metrics_port
    if changes:
        settings = dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, **changes))
    return settings


def _run_topic(
    args,
    settings: Settings,
    topic: str,
    span,
    dsn: str | None,
    outputs: bool,
    kind: str,
    venue: str = "internal",
) -> int:
    from flows.inputs import stderr_progress
    from flows.kafka_flow import execution_from, stream
    from flows.pipeline import TradingReport
    from flows.trading_settings import span_input
    from sources.chunk_source import Progress

    _check_report(args, dsn)
    execution = execution_from(settings, args.process_id, args.addresses)
    run_input = span_input(span.from_ts, span.to_ts)
    run = _begin_run(args, settings, kind, f"kafka:{topic}|{run_input}", run_input, args.trade)
    store = None
    if dsn is not None and execution.process_id is None:
        store = Store(dsn)  # a bad DSN is a usage error now, not a failure inside the flow
        if kind == "replay" and not execution.recovery_dir:  # a resumed replay goes on with its own rows
            _store_for_run(args, store, args.trade, run)
        watchdog.default_abort()
    elif dsn is None:
        _store_for_run(args, None, args.trade)
    progress = Progress(report=None if args.quiet else stderr_progress)
    report = TradingReport() if args.trade else None
    start = time.perf_counter()
    with _run_row(run, store, progress, report), quiet_interrupt():
        metrics = stream(
            settings,
            topic,
            span,
            dsn,
            execution,
            outputs=outputs,
            progress=progress,
            report=report,
            venue=venue,
            run_id=run.run_id,
        )
        run.rows, run.records = metrics.rows, metrics.records
        if store is None and dsn is not None and metrics.writes_here:  # the cluster's process that stored
            summary = report.summary if report is not None else None
            run.finish(Store(dsn), "finished", _wall_ms(), metrics.records, metrics.rows, summary)
    seconds = time.perf_counter() - start
    if dsn is not None and not metrics.writes_here:
        # another process of the cluster held the sink (and the store)
        done = f"{metrics.records:,} records in {seconds:.1f} s"
        sys.stdout.write(f"\n{kind}: {done}; stored by another process (run {run.run_id})\n")
        return 0
    store = None if dsn is None else Store(dsn)
    run_summary(kind, store, dsn or "", metrics.records, seconds, dict(metrics.rows), run_id=run.run_id)
    if report is not None:
        trading_summary(report)
    _write_report(args, store, run, progress)
    return 0


def _file_span(args):
    """The ``--from-ts``/``--to-ts`` span of a file replay."""
    from sources.time_span import TimeSpan

    try:
        return TimeSpan(_time_arg("--from-ts", args.from_ts), _time_arg("--to-ts", args.to_ts))
    except ValueError as exc:
        msg = f"--from-ts/--to-ts: {exc}"
        raise UsageError(msg) from None


TOPIC_OPTIONS = (
    "from_offset",
    "outputs",
    "recovery_dir",
    "snapshot_interval",
    "metrics_port",
    "process_id",
    "addresses",
)
"""The options of ``qbtc replay`` that only a topic replay (``kafka://``) reads."""


def _only_for_topics(args) -> None:
    """A usage error naming the first topic-only option given to a file replay."""
    for name in TOPIC_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            option = "--" + name.replace("_", "-")
            msg = f"{option} applies to topic replays (kafka://BROKERS/TOPIC) only, not to files"
            raise UsageError(msg)


def cmd_replay(args) -> int:
    from flows.inputs import file_inputs, stderr_progress
    from flows.pipeline import TradingReport, replay
    from flows.runs import file_source
    from flows.trading_settings import span_input
    from sources.chunk_source import Progress

    if args.inputs[0].startswith("kafka://"):
        return _replay_topic(args)
    _only_for_topics(args)
    settings = _with_workers(_settings(args), args.workers)
    dsn = None if args.null_sink else _dsn(args, settings)
    span = _file_span(args)
    _check_report(args, dsn)
    inputs, total = file_inputs(args.inputs, settings, span)
    store = None if dsn is None else Store(dsn)
    run_input = span_input(span.from_ts, span.to_ts)
    spanned = span.from_ts is not None or span.to_ts is not None
    source = file_source(args.inputs) + (f"|{run_input}" if spanned else "")
    run = _begin_run(args, settings, "replay", source, run_input, args.trade)
    _store_for_run(args, store, args.trade, run)
    watchdog.default_abort()
    progress = Progress(total_bytes=total, report=None if args.quiet else stderr_progress)
    report = TradingReport()
    start = time.perf_counter()
    with _run_row(run, store, progress, report), stop_reading(progress, "replay"):
        counter = replay(
            inputs,
            settings,
            dsn,
            progress,
            trade=args.trade,
            report=report,
            run_input=run_input,
            run_id=run.run_id,
        )
        run.rows = counter.rows
    seconds = time.perf_counter() - start
    rows = dict(counter.rows)
    run_summary("replay", store, dsn or "", progress.records, seconds, rows, progress.skipped, run.run_id)
    trading_summary(report)
    _write_report(args, store, run, progress)
    return _finished(args, progress)


def _finished(args, progress) -> int:
    """A file run's exit code: 0, or 130 with one line when a Ctrl-C ended its input early."""
    if not progress.stop_requested:
        return 0
    kept = "flushed to the store"
    if getattr(args, "null_sink", False):
        kept = "computed, not stored (--null-sink)"
    sys.stdout.flush()
    sys.stderr.write(
        f"qbtc {args.command}: interrupted: stopped reading after {progress.records:,} records; "
        f"those are {kept} (summary above), the rest was not read\n"
    )
    return EXIT_INTERRUPTED


def cmd_control(args) -> int:
    from sources.chunk_source import wall_ms
    from sources.control_file import append_command

    settings = _settings(args)
    if args.kafka is not None:
        return _control_topic(args, settings)
    at = _time_arg("--at", args.at)
    path = settings.trading.control_file
    try:
        now = wall_ms()
        cmd = append_command(path, args.action, args.reason, now if at is None else at, issued=now)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    sys.stdout.write(f"control: {cmd.command} at {cmd.ts} ({args.reason}) -> {path}\n")
    return 0


def _control_topic(args, settings: Settings) -> int:
    """``qbtc control --kafka``: the command onto ``<prefix>control``, acknowledged."""
    from flows.config import kafka_client_config
    from flows.kafka_flow import ensure, topic_names, with_brokers
    from schemas.records import OperatorCommand
    from sources.chunk_source import wall_ms
    from sources.control_topic import check_reachable, issuer, produce_command

    if args.at is not None:
        msg = "--at is for the control file: a command on the topic applies at each loop's next bar close"
        raise UsageError(msg)
    try:
        cmd = OperatorCommand(wall_ms(), args.action, args.reason.strip(), issuer())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings = with_brokers(settings, args.kafka)
    k = settings.kafka
    check_reachable(kafka_client_config(k, "admin"), k.timeout_s)
    ensure(settings)
    where = produce_command(kafka_client_config(k, "producer"), topic_names(k)["control"], cmd, k.timeout_s)
    sys.stdout.write(f"control: {cmd.command} at {cmd.ts} by {cmd.source} ({cmd.reason}) -> {where}\n")
    return 0


def _replay_topic(args) -> int:
    from flows.kafka_flow import KafkaUrl, topic_names
    from sources.kafka_ticks import TopicRange

    if len(args.inputs) != 1:
        msg = "a topic replay takes one kafka://BROKERS/TOPIC input"
        raise UsageError(msg)
    url = KafkaUrl.parse(args.inputs[0])
    args.kafka = url.brokers
    settings = _kafka_settings(args, _with_workers(_settings(args), args.workers))
    topic = url.topic or topic_names(settings.kafka)["ticks"]
    try:
        span = TopicRange(
            args.from_offset, _time_arg("--from-ts", args.from_ts), _time_arg("--to-ts", args.to_ts), True
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    dsn = None if args.null_sink else _dsn(args, settings)
    return _run_topic(args, settings, topic, span, dsn, args.outputs, "replay")


def cmd_stream(args) -> int:
    from flows.kafka_flow import topic_names
    from sources.kafka_ticks import TopicRange

    settings = _kafka_settings(args, _with_workers(_settings(args), args.workers))
    topic = args.topic or topic_names(settings.kafka)["ticks"]
    try:
        span = TopicRange(args.from_offset, _time_arg("--from-ts", args.from_ts), None, args.until_end)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    dsn = None if args.null_sink else _dsn(args, settings)
    if args.execution == "external" and not args.trade:
        msg = "--execution external needs --trade"
        raise UsageError(msg)
    if args.lockstep and args.execution != "external":
        msg = "--lockstep needs --execution external"
        raise UsageError(msg)
    venue = "lockstep" if args.lockstep else args.execution
    return _run_topic(args, settings, topic, span, dsn, True, "stream", venue)


def cmd_execute(args) -> int:
    from flows.execute import DRY_RUN, execute_options, execution_keys, run_execute, with_kafka

    settings = with_kafka(load_settings(args.config, args.overrides), args.kafka)
    if args.venue == "paper" or args.lockstep:
        from flows.paper_service import paper_options, run_paper

        lockstep = paper_options(args.venue, args.lockstep, args.sandbox, args.live, args.venue_url)
        return run_paper(settings, lockstep, args.idle_exit)
    options = execute_options(args.venue, args.sandbox, args.live, args.venue_url, args.idle_exit, settings)
    keys = None if options.mode == DRY_RUN else execution_keys(os.environ, args.secret_file)
    return run_execute(settings, options, keys, args.store)


def cmd_kafka(args) -> int:
    return args.func(args)


def cmd_kafka_topics(args) -> int:
    from flows.kafka_flow import ensure

    settings = _kafka_settings(args, _settings(args))
    if args.partitions is not None:
        if args.partitions < 1:
            msg = "--partitions must be >= 1"
            raise UsageError(msg)
        kafka = dataclasses.replace(settings.kafka, partitions=args.partitions)
        settings = dataclasses.replace(settings, kafka=kafka)
    for name, state in ensure(settings).items():
        sys.stdout.write(f"{name:<28}{state}\n")
    return 0


def _publish_progress(report) -> None:
    rate = report.ticks / report.seconds if report.seconds > 0 else 0.0
    end = "\r" if sys.stderr.isatty() else "\n"
    sys.stderr.write(f"qbtc: published {report.ticks:,} ticks, {rate:,.0f} ticks/s{end}")
    sys.stderr.flush()


def cmd_publish(args) -> int:
    from flows.inputs import file_inputs, simulator_inputs
    from flows.kafka_flow import ensure, publish, topic_names

    settings = _kafka_settings(args, _settings(args))
    if args.simulate == bool(args.inputs):
        msg = "give tick files or --simulate (one of the two)"
        raise UsageError(msg)
    if args.rate is not None and args.rate <= 0:
        msg = "--rate must be > 0"
        raise UsageError(msg)
    inputs = simulator_inputs(settings)[0] if args.simulate else file_inputs(args.inputs, settings)[0]
    topic = args.topic or topic_names(settings.kafka)["ticks"]
    ensure(settings, topic)
    report = publish(settings, inputs, topic, args.rate, None if args.quiet else _publish_progress)
    rate = report.ticks / report.seconds if report.seconds > 0 else 0.0
    sys.stdout.write(
        f"published {report.ticks:,} ticks to {topic} in {report.seconds:.1f} s ({rate:,.0f} ticks/s), "
        f"all acknowledged; {report.dead:,} dead letters to {topic_names(settings.kafka)['dead_letters']}\n"
    )
    return 0


def cmd_record(args) -> int:
    from flows.recording import record_command

    settings = _kafka_settings(args, _settings(args))
    return record_command(args, settings)


READ_STATEMENTS = frozenset({"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "EXISTS"})
"""What ``qbtc sql`` runs without ``--write``."""


def statement_kind(sql: str) -> str:
    """The first keyword of a statement, after comments and opening parentheses, in capitals.

    >>> statement_kind("  -- count\\n/* x */ (select 1)"), statement_kind("drop table fills")
    ('SELECT', 'DROP')
    """
    text = sql
    while True:
        text = text.lstrip().lstrip("(").lstrip()
        if text.startswith("--"):
            text = text.partition("\n")[2]
        elif text.startswith("/*"):
            text = text.partition("*/")[2]
        else:
            break
    word = ""
    for ch in text:
        if not (ch.isalpha() or ch == "_"):
            break
        word += ch
    return word.upper()


def cmd_sql(args) -> int:
    settings = _settings(args)
    kind = statement_kind(args.query)
    reads = kind in READ_STATEMENTS
    if not reads and not args.write:
        msg = (
            f"qbtc sql is read-only: {kind or 'this statement'} changes the store; SELECT, SHOW, "
            "DESCRIBE, EXPLAIN and WITH run as they are, add --write to run DDL or DML"
        )
        raise UsageError(msg)
    store = Store(_dsn(args, settings), must_exist=True)
    try:
        if reads:  # readonly=2 (the server refuses writes; settings may still change per query)
            result = store.query(args.query, settings=None if args.write else {"readonly": 2})
        else:
            store.command(args.query)
    except Exception as exc:  # the database's own message is the useful part
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"query failed: {first}"
        raise UsageError(msg) from None
    if not reads:
        sys.stdout.write(f"{kind}: done\n")
        return 0
    write_table(list(result.column_names), result.result_rows, args.format)
    return 0


def cmd_runs(args) -> int:
    from flows.runs import list_runs

    if args.limit is not None and args.limit < 1:
        msg = "--limit must be >= 1"
        raise UsageError(msg)
    store = Store(_dsn(args, _settings(args)), must_exist=True)
    names, rows = list_runs(store, args.limit)
    if args.format == "table":
        rows = [_run_cells(row) for row in rows]
    write_table(names, rows, args.format)
    return 0


def _run_cells(row: tuple) -> tuple:
    """A ``list_runs`` row for people: times without milliseconds, fractions as percent."""
    import math

    def pct(x):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"

    def num(x):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"

    run_id, kind, status, started, records, trade, ret, dd, sharpe, orders, fills, source = row
    when = started.strftime("%Y-%m-%d %H:%M:%S") if started is not None else ""
    if not trade or kind == "(before run ids)":
        ret = dd = sharpe = None
    if len(source) > 60:
        source = "..." + source[-57:]
    return (run_id, kind, status, when, records, trade, pct(ret), pct(dd), num(sharpe), orders, fills, source)


def cmd_simulate(args) -> int:
    from flows.inputs import simulator_settings
    from sources.simulator import write_csv

    settings = _settings(args)
    start = time.perf_counter()
    try:
        rows = write_csv(args.output, simulator_settings(settings))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        folder = os.path.dirname(os.path.abspath(args.output))
        hint = exc.strerror
        if not os.path.isdir(folder):
            hint = f"{folder} is not a directory" if os.path.exists(folder) else f"no directory {folder}"
        msg = f"cannot write {args.output}: {hint}"
        raise UsageError(msg) from None
    sys.stdout.write(f"wrote {rows:,} ticks to {args.output} in {time.perf_counter() - start:.1f} s\n")
    return 0


def cmd_stress(args) -> int:
    from flows.stress import StressRequest, parse_positions, run_stress
    from operators.risk.stress import StressSettings

    settings = _settings(args)
    if args.bars is not None and args.bars < 2:
        msg = "--bars must be >= 2"
        raise UsageError(msg)
    stress_settings = StressSettings(
        scenarios=args.scenarios, method=args.method.replace("-", "_"), seed=args.seed, dof=args.dof
    )
    request = StressRequest(
        parse_positions(args.positions),
        args.equity,
        _time_arg("--since", args.since),
        args.bars,
        args.horizon,
        stress_settings,
        args.quiet,
    )
    store = Store(_dsn(args, settings))
    sys.stdout.write(run_stress(store, request, settings.risk))
    return 0


def cmd_report(args) -> int:
    from flows.html_report import write_report

    settings = _settings(args)
    store = Store(_dsn(args, settings), must_exist=True)
    made = write_report(store, args.out, run=args.run, compare=args.compare, symbol=args.symbol)
    runs = " vs ".join(made.runs)
    sys.stdout.write(
        f"wrote {made.path} ({made.size / 1e6:.1f} MB): run {runs}, symbol {made.symbol or '(no fills)'}\n"
    )
    return 0


def cmd_walkforward(args) -> int:
    from flows.runs import check_run_id, file_source, settings_json
    from flows.walkforward import (
        check_data,
        parse_duration,
        parse_grid,
        plan_splits,
        prefix_for,
        run_ids,
        run_walkforward,
        summarize,
    )
    from flows.walkforward_figures import recording_span, span_figures, split_rows, text_report, write_out

    args.trade = True
    base = _settings(args)
    candidates = parse_grid(args.grid)
    settings = [_candidate_settings(args, c) for c in candidates]
    step = base.features.bar_interval * 1000
    test = None if args.test is None else parse_duration(args.test, "--test")
    train = None if args.train is None else parse_duration(args.train, "--train")
    if args.pbo and len(candidates) < 2:
        msg = "--pbo needs a --grid of 2 or more candidates (it ranks the choice among them)"
        raise UsageError(msg)
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        msg = f"--out {args.out}: no directory {os.path.dirname(os.path.abspath(args.out))}"
        raise UsageError(msg)
    recording = recording_span(args.inputs, base, step)
    plan = plan_splits(recording.first, recording.end, step, args.splits, test, train, args.rolling)
    check_data(recording, plan)
    source = file_source(args.inputs)
    prefix = args.run_id or prefix_for(source, plan, candidates, settings_json(base), args.metric)
    ids = run_ids(plan, candidates, prefix)
    for run_id in ids:
        check_run_id(run_id)
    dsn = _dsn(args, base)
    store = Store(dsn)
    _store_for_run(args, store, False)  # --fresh
    held = [] if args.append or args.fresh else [i for i in ids if store.run_rows(i)]
    if held:
        msg = (
            f"store {redact(store.dsn)} already holds run {held[0]} (and {len(held) - 1} more of this "
            "walk-forward): add --append to write them again, --run-id PREFIX to keep both, or --fresh"
        )
        raise UsageError(msg)
    watchdog.default_abort()
    replay_one = _walkforward_replay(args, settings, store, dsn)

    def figures(run_id: str, start: int, end: int) -> dict:
        return span_figures(store, run_id, start, end, step)

    def say(text: str) -> None:
        if not args.quiet:
            sys.stderr.write(f"qbtc walkforward: {text}\n")
            sys.stderr.flush()

    results = run_walkforward(plan, candidates, replay_one, figures, prefix, args.metric, args.pbo, say)
    rows = split_rows(results, candidates, args.metric)
    summary = summarize(results, args.pbo)
    sys.stdout.write(text_report(rows, summary, candidates, args.metric))
    if args.out:
        meta = {
            "inputs": list(args.inputs),
            "recording": {"first": recording.first, "end": recording.end, "step_ms": step},
            "splits_planned": args.splits,
            "rolling": args.rolling,
            "metric": args.metric,
            "candidates": [list(c) for c in candidates],
            "run_id_prefix": prefix,
        }
        try:
            write_out(args.out, rows, summary, meta, results)
        except OSError as exc:
            msg = f"--out {args.out}: cannot write: {exc.strerror}"
            raise UsageError(msg) from None
        sys.stdout.write(f"wrote {os.path.abspath(args.out)}\n")
    return 0


def _candidate_settings(args, candidate: tuple[str, ...]) -> Settings:
    """A grid candidate's settings: the command's, its ``--grid`` values over them."""
    overrides = args.overrides
    try:
        args.overrides = [*overrides, *candidate]
        return _settings(args)
    except ConfigError as exc:
        msg = f"--grid {' '.join(candidate)}: {one_line(exc)}"
        raise UsageError(msg) from None
    finally:
        args.overrides = overrides


def _walkforward_replay(args, settings: list[Settings], store: Store, dsn: str):
    """One trading replay of ``[from_ts, to_ts)`` of the files with a candidate's settings, in-process
    as ``qbtc replay --trade --from-ts --to-ts`` runs it, under the given run id."""
    from types import SimpleNamespace

    from flows.inputs import file_inputs
    from flows.pipeline import TradingReport, replay
    from flows.runs import file_source
    from flows.trading_settings import span_input
    from sources.chunk_source import Progress
    from sources.time_span import TimeSpan

    def replay_one(candidate: int, from_ts: int, to_ts: int, run_id: str) -> None:
        chosen = settings[candidate]
        inputs, total = file_inputs(args.inputs, chosen, TimeSpan(from_ts, to_ts), warn=lambda _: None)
        run_input = span_input(from_ts, to_ts)
        source = f"{file_source(args.inputs)}|{run_input}"
        run = _begin_run(SimpleNamespace(run_id=run_id), chosen, "walkforward", source, run_input, True)
        progress = Progress(total_bytes=total)
        report = TradingReport()
        with _run_row(run, store, progress, report), stop_reading(progress, "walkforward"):
            counter = replay(inputs, chosen, dsn, progress, trade=True, report=report, run_input=run_input,
                             run_id=run.run_id)  # fmt: skip
            run.rows = counter.rows
        if progress.stop_requested:
            raise KeyboardInterrupt

    return replay_one


COMMANDS = {
    "run": cmd_run,
    "replay": cmd_replay,
    "sql": cmd_sql,
    "runs": cmd_runs,
    "simulate": cmd_simulate,
    "kafka": cmd_kafka,
    "venue": cmd_kafka,  # both run the action their subcommand set
    "monitor": cmd_kafka,
    "publish": cmd_publish,
    "stream": cmd_stream,
    "record": cmd_record,
    "control": cmd_control,
    "execute": cmd_execute,
    "stress": cmd_stress,
    "report": cmd_report,
    "walkforward": cmd_walkforward,
}


def _known_cause(exc: BaseException) -> BaseException | None:
    """The first of qbtc's own errors (or a Kafka client error) in ``exc``'s chain of causes.

    Bytewax wraps an error raised inside a step; this finds what it wraps.
    """
    from confluent_kafka import KafkaException

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, QbtcError | KafkaException):
            return seen
        seen = seen.__cause__
    return None


def _interrupted(exc: BaseException) -> bool:
    """Whether a Ctrl-C (``KeyboardInterrupt``) is in ``exc``'s chain of causes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _interrupt_line(args) -> int:
    """Ctrl-C outside a file run's flow (a Kafka flow, or before a flow started): one line, exit 130."""
    resume = ""
    if getattr(args, "recovery_dir", None):
        resume = f" (a restart with --recovery-dir {args.recovery_dir} resumes from its last snapshot)"
    sys.stderr.write(f"qbtc {args.command}: interrupted{resume}\n")
    return EXIT_INTERRUPTED


def _failed(args, exc: BaseException, clean) -> int:
    """One line naming why the command failed; exit code 1.

    A Kafka failure names the clients' security failure first, if they saw
    one (a wrong password otherwise shows as a timeout), else adds their
    latest complaint (a timeout alone does not say what went wrong).
    """
    from confluent_kafka import KafkaException

    from flows.kafka_diagnostics import last_problem, security_problem
    from infra.kafka_topics import TopicError
    from sinks.kafka_producer import DeliveryError

    text = one_line(exc)
    if isinstance(exc, KafkaException | TopicError | DeliveryError):
        problem, last = security_problem(), last_problem()
        if problem is not None and problem not in text:
            text = f"{problem} ({text})"
        elif problem is None and last is not None and last not in text:
            text = f"{text} (last client error: {last})"
    sys.stderr.write(f"qbtc {args.command}: failed: {clean(text)}\n")
    return 1


def _arrow_without_pandas() -> None:
    """Spare the CLI pyarrow's import of pandas (a fifth of a short run's start-up).

    pyarrow imports pandas the first time it converts Python values, only to
    check whether they are pandas objects; qbtc never hands it any. Its first
    conversion runs here with pandas hidden, so pyarrow records "no pandas";
    an explicit pandas conversion later still imports pandas as usual.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    class NoPandas:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "pandas":
                raise ImportError(name)

    sys.meta_path.insert(0, NoPandas)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(NoPandas)


def main(argv: list[str] | None = None) -> int:
    _arrow_without_pandas()
    parser = build_parser()
    args = parser.parse_args(argv)
    settings_for_scrub = None
    try:
        settings_for_scrub = load_settings(getattr(args, "config", None), getattr(args, "overrides", []))
    except ConfigError:
        pass

    def clean(text: str) -> str:
        return text if settings_for_scrub is None else scrub(text, settings_for_scrub)

    disarm = watchdog.arm(args.command, clean)  # a failed sink ends the process with one line
    try:
        return _dispatch(args, clean)
    finally:
        disarm()


def _exit(args, exc: BaseException, clean, running: bool = False) -> int:
    """The one place errors become exit codes: a usage problem (exit 2) says
    ``error:``, a failure of the outside world (exit 1) says ``failed:``.
    A store that fails while the flow runs is a failure, whatever its kind."""
    if isinstance(exc, QbtcError) and exc.exit_code == 2 and not (running and isinstance(exc, StoreError)):
        sys.stderr.write(f"qbtc {args.command}: error: {clean(one_line(exc))}\n")
        return 2
    return _failed(args, exc, clean)


def _dispatch(args, clean) -> int:
    try:
        return COMMANDS[args.command](args)
    except QbtcError as exc:
        return _exit(args, exc, clean)
    except BytewaxRuntimeError as exc:
        # errors inside a dataflow arrive wrapped; say what the cause was
        if "signal received" in str(exc) or _interrupted(exc):
            return _interrupt_line(args)
        cause = _known_cause(exc)
        if cause is None:
            raise
        return _exit(args, cause, clean, running=True)
    except KeyboardInterrupt:
        return _interrupt_line(args)
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        # the Kafka client's errors; it is not imported for commands that do not use it
        kafka = sys.modules.get("confluent_kafka")
        if kafka is not None and isinstance(exc, kafka.KafkaException):
            return _exit(args, exc, clean)
        raise


if __name__ == "__main__":
    sys.exit(main())
