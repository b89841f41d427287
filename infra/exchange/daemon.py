"""``qbtc venue up|down|status|serve``: the local exchange as a background process, or in the foreground.

``up`` checks the settings and keys, starts ``python -m infra.exchange serve``
as a detached process (its own session: it outlives the terminal) and returns
once it listens; ``down`` stops it (SIGTERM, which saves the state, then
SIGKILL after 10 s); ``status`` asks it ``/api/v3/ping``. Layout of
``--data-dir`` (default ``var/venue``)::

    venue.pid       the server's pid
    venue.json      {"url": ..., "pid": ...}, written by the server once it listens
    venue.log       its log: one line per request (method, path, status, Binance code), feed errors
    api-keys.env    QBTC_VENUE_API_KEY / QBTC_VENUE_API_SECRET, made on first use when neither
                    the environment nor --secret-file gives keys (mode 0600)

Keys reach the server through its environment, never its command line;
nothing prints them. Fees, spread and impact are the paper broker's
``[execution]`` settings (``--config``, ``--set execution.taker_fee_bps=...``),
``kafka.*`` the topic feed's client settings.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from infra.exchange.api_keys import KEY_ENV, SECRET_ENV, resolve_keys
from infra.processes import process_alive
from schemas.errors import OutsideFailure, QbtcError, UsageProblem

if TYPE_CHECKING:  # the server's modules load when a command runs, not with the `qbtc` parser
    from infra.exchange.server import VenueSettings

DEFAULT_DIR = "var/venue"
START_TIMEOUT_S = 30.0


class VenueUsage(UsageProblem):
    """Unusable venue options."""


class VenueFailure(OutsideFailure):
    """A venue that would not start or stop."""


# name, flags, argparse keywords: the options of `up` and `serve`; `up` forwards them to `serve`
_OPTIONS: tuple[tuple[str, tuple[str, ...], dict], ...] = (
    ("host", ("--host",), {"default": "127.0.0.1", "help": "address to listen on (default 127.0.0.1)"}),
    ("port", ("--port",), {"type": int, "default": 8765, "help": "port (default 8765; 0: any free port)"}),
    (
        "markets",
        ("--market",),
        {
            "action": "append",
            "default": [],
            "metavar": "SPEC",
            "help": "a market, BASE/QUOTE[:tick=X,step=X,min_qty=X,max_qty=X,min_notional=X,max_price=X] "
            "(repeatable; default BTC/USDT and ETH/USDT, tick 0.01, step 0.00001, min notional 5)",
        },
    ),
    (
        "balances",
        ("--balance",),
        {
            "action": "append",
            "default": [],
            "metavar": "ASSET=AMOUNT",
            "help": "starting free balance (repeatable; default USDT=100000; a new state only)",
        },
    ),
    (
        "ticks",
        ("--ticks",),
        {
            "action": "append",
            "default": [],
            "metavar": "SOURCE",
            "help": "tick file (CSV/JSONL, .gz) replayed once, or kafka://BROKERS[/TOPIC] followed live "
            "(repeatable)",
        },
    ),
    (
        "rate",
        ("--rate",),
        {
            "type": float,
            "default": 100.0,
            "metavar": "N",
            "help": "ticks/s from files (default 100; inf: no pause)",
        },
    ),
    ("from_beginning", ("--from-beginning",), {"action": "store_true", "help": "read topics from the start"}),
    (
        "partial_fills",
        ("--partial-fills",),
        {
            "action": argparse.BooleanOptionalAction,
            "default": True,
            "help": "a tick fills resting limits up to its quantity (default on; off: whole)",
        },
    ),
    (
        "client_ids",
        ("--client-ids",),
        {
            "choices": ("all", "open"),
            "default": "all",
            "help": "refuse a client order id used by any earlier order (all, default) or by an open one "
            "(open: Binance's rule)",
        },
    ),
    (
        "state",
        ("--state",),
        {"metavar": "FILE", "default": "", "help": "keep orders, balances and trades here"},
    ),
    ("secret_file", ("--secret-file",), {"metavar": "FILE", "help": "file with the two key lines"}),
    ("config", ("--config",), {"metavar": "FILE", "help": "TOML config ([execution] fees, [kafka] client)"}),
    (
        "overrides",
        ("--set",),
        {"action": "append", "default": [], "metavar": "SECTION.KEY=VALUE", "help": "override a config key"},
    ),
)


def _paths(data_dir: str) -> dict[str, Path]:
    d = Path(data_dir)
    return {
        "pid": d / "venue.pid",
        "ready": d / "venue.json",
        "log": d / "venue.log",
        "keys": d / "api-keys.env",
    }


def venue_settings(args: argparse.Namespace) -> VenueSettings:
    """The settings the options give (config sections ``[execution]`` and ``[kafka]`` included)."""
    from flows.config import load_settings
    from infra.exchange.markets import MarketSpec
    from infra.exchange.matching_engine import EngineSettings
    from infra.exchange.server import DEFAULT_MARKETS, VenueSettings

    config = load_settings(args.config, args.overrides)
    try:
        markets = tuple(MarketSpec.parse(s) for s in args.markets) or DEFAULT_MARKETS
    except ValueError as exc:
        raise VenueUsage(str(exc)) from None
    balances = {}
    for item in args.balances or ["USDT=100000"]:
        asset, eq, value = item.partition("=")
        try:
            balances[asset.strip()] = float(value) if eq else math.nan
        except ValueError:
            balances[asset.strip()] = math.nan
        if not math.isfinite(balances[asset.strip()]):
            msg = f"--balance {item!r}: give ASSET=AMOUNT, e.g. USDT=100000"
            raise VenueUsage(msg)
    for source in args.ticks:
        if not source.startswith("kafka://") and not os.path.isfile(source):
            msg = f"--ticks {source}: no such file (give a tick file or kafka://BROKERS[/TOPIC])"
            raise VenueUsage(msg)
    engine = EngineSettings(config.execution, args.partial_fills, args.client_ids)
    return VenueSettings(
        engine=engine,
        markets=markets,
        balances=balances,
        host=args.host,
        port=args.port,
        ticks=tuple(args.ticks),
        rate=args.rate,
        from_beginning=args.from_beginning,
        kafka=config.kafka,
        state_file=args.state,
    )


def _forwarded(args: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    for name, flags, kw in _OPTIONS:
        value = getattr(args, name)
        if kw.get("action") == "append":
            for v in value:
                argv += [flags[0], v]
        elif kw.get("action") == "store_true":
            argv += [flags[0]] if value else []
        elif kw.get("action") is argparse.BooleanOptionalAction:
            argv.append(flags[0] if value else "--no-" + flags[0].removeprefix("--"))
        elif value is not None and value != "":
            argv += [flags[0], str(value)]
    return argv + ["--data-dir", args.data_dir]


def running_pid(data_dir: str) -> int | None:
    """The pid in the data dir's pid file, if that process is a live venue of this data dir."""
    path = _paths(data_dir)["pid"]
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if process_alive(pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return pid
        if b"infra.exchange" in cmdline and str(_paths(data_dir)["ready"].resolve()).encode() in cmdline:
            return pid
    path.unlink(missing_ok=True)  # stale
    return None


def _url(data_dir: str) -> str | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return str(orjson.loads(_paths(data_dir)["ready"].read_bytes())["url"])
    return None


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether a venue at ``url`` answers ``/api/v3/ping``."""
    try:
        with urllib.request.urlopen(url + "/api/v3/ping", timeout=timeout) as r:  # noqa: S310 - our own URL
            return r.status == 200
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return f"(no log in {path})"


def up(args: argparse.Namespace) -> int:
    paths = _paths(args.data_dir)
    pid, url = running_pid(args.data_dir), _url(args.data_dir)
    if pid is not None and url is not None and answers(url):
        print(f"venue: already up at {url} (pid {pid}, log {paths['log']})")
        return 0
    if pid is not None:
        msg = f"a venue runs (pid {pid}) but does not answer at {url}: see {paths['log']}, or run down first"
        raise VenueFailure(msg)
    venue_settings(args)  # bad options stop here, before anything starts
    keys = resolve_keys(os.environ, args.secret_file, str(paths["keys"]))
    paths["ready"].unlink(missing_ok=True)
    paths["log"].parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, KEY_ENV: keys.key.reveal(), SECRET_ENV: keys.secret.reveal()}
    cmd = [
        sys.executable,
        "-m",
        "infra.exchange",
        "serve",
        *_forwarded(args),
        "--ready-file",
        str(paths["ready"].resolve()),
    ]
    with open(paths["log"], "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    paths["pid"].write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while (url := _url(args.data_dir)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(args.data_dir)
            msg = f"the venue did not start (see {paths['log']}):\n{_tail(paths['log'])}"
            raise VenueFailure(msg)
        time.sleep(0.05)
    where = (
        "--secret-file"
        if args.secret_file
        else "the environment"
        if os.environ.get(KEY_ENV)
        else paths["keys"]
    )
    print(f"venue: up at {url} (pid {proc.pid}, log {paths['log']}, API keys from {where})")
    return 0


def _stop(data_dir: str, timeout_s: float = 10.0) -> bool:
    paths = _paths(data_dir)
    pid = running_pid(data_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while process_alive(pid):
                time.sleep(0.05)
    paths["pid"].unlink(missing_ok=True)
    paths["ready"].unlink(missing_ok=True)
    return pid is not None


def down(args: argparse.Namespace) -> int:
    stopped = _stop(args.data_dir)
    print(f"venue: {'stopped' if stopped else 'not running'} (data {args.data_dir})")
    return 0


def status(args: argparse.Namespace) -> int:
    pid, url = running_pid(args.data_dir), _url(args.data_dir)
    if pid is None:
        print(f"venue: not running (data {args.data_dir})")
        return 1
    if url is not None and answers(url):
        print(f"venue: up at {url} (pid {pid}, log {_paths(args.data_dir)['log']})")
        return 0
    print(f"venue: running but not answering at {url} (pid {pid}, log {_paths(args.data_dir)['log']})")
    return 1


def serve(args: argparse.Namespace) -> int:
    """Run the venue in this process until SIGTERM or SIGINT; prints its URL once it listens."""
    import logging

    from infra.exchange.server import start_venue
    from infra.exchange.state_file import StateFileError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = venue_settings(args)
    keys = resolve_keys(os.environ, args.secret_file, str(_paths(args.data_dir)["keys"]))
    try:
        venue = start_venue(settings, keys)
    except StateFileError as exc:
        raise VenueUsage(str(exc)) from None
    except OSError as exc:
        msg = f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        raise VenueFailure(msg) from None
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if args.ready_file:  # written whole, then renamed: a reader never sees half of it
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_bytes(orjson.dumps({"url": venue.url, "pid": os.getpid()}))
        tmp.replace(args.ready_file)
    print(f"venue: serving at {venue.url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        venue.stop()
    return 0


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except QbtcError as exc:
            print(f"venue: error: {exc}", file=sys.stderr)
            return exc.exit_code

    return run


_COMMANDS = (
    ("up", up, "start the local exchange in the background; wait until it listens and print its URL"),
    ("down", down, "stop the local exchange: SIGTERM (it saves its --state), SIGKILL after 10 s"),
    ("status", status, "whether the local exchange runs and answers; exit 1 unless it answers"),
    ("serve", serve, "run the local exchange in the foreground until Ctrl-C (what `up` starts)"),
)


def configure(subparsers: argparse._SubParsersAction) -> None:
    """Add ``up``, ``down``, ``status`` and ``serve`` to ``subparsers`` (each sets ``func(args)``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=DEFAULT_DIR, help=f"pid, log and keys (default {DEFAULT_DIR})")
    options = argparse.ArgumentParser(add_help=False)
    for dest, flags, kw in _OPTIONS:
        options.add_argument(*flags, dest=dest, **kw)
    for name, func, text in _COMMANDS:
        parents = [common, options] if name in ("up", "serve") else [common]
        p = subparsers.add_parser(
            name, parents=parents, help=text, description=text[0].upper() + text[1:] + "."
        )
        if name == "serve":
            p.add_argument("--ready-file", metavar="FILE", help="write {url, pid} here once listening")
        p.set_defaults(func=_guarded(func))


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.exchange up|down|status|serve ...``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.exchange", description="A local exchange speaking Binance's spot REST API."
    )
    configure(parser.add_subparsers(dest="venue_command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))
