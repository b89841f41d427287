"""Run Prometheus and Alertmanager locally with qbtc's rules: ``qbtc monitor up|down|status``.

``up`` writes ``<data-dir>/prometheus.yml`` (the shipped ``infra/prometheus/prometheus.yml`` with your
targets, ports and intervals, the rule files by absolute path), renders Alertmanager's config from the
``QBTC_ALERT_*`` environment (:mod:`infra.prometheus.render`) into ``<data-dir>/alertmanager/``, starts
Debian's ``prometheus`` and ``prometheus-alertmanager`` in the background (logs in the data directory)
and returns once both answer ``/-/ready``. ``down`` stops them (SIGTERM, SIGKILL after a timeout).
The processes and ports are recorded in ``<data-dir>/monitor.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from infra.processes import process_alive
from infra.prometheus import RULE_FILES
from infra.prometheus.render import ReceiverSettings, RenderError, Routing, render

STATE_FILE = "monitor.json"
SERVICES = ("alertmanager", "prometheus")
BINARIES = {"prometheus": ("prometheus",), "alertmanager": ("prometheus-alertmanager", "alertmanager")}
"""The executables tried for each service, in order (Debian names first)."""


class MonitorError(RuntimeError):
    """Prometheus or Alertmanager is missing or did not start (its log's tail in the message)."""


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """Where and how the local Prometheus and Alertmanager run.

    Parameters
    ----------
    data_dir
        Configs, TSDB, Alertmanager state, logs and ``monitor.json``.
    targets
        ``host:port`` of every qbtc ``/metrics`` endpoint (``--metrics-port``; process i of a
        cluster: port + i).
    prometheus_port, alertmanager_port
        Their web ports on ``host``.
    scrape_interval, evaluation_interval
        Prometheus durations (``15s``); tests use ``1s``.
    rule_files
        The recording and alert rules to load (default: the shipped ones).
    routing
        Alertmanager's grouping timers.
    """

    data_dir: str = "var/monitor"
    targets: tuple[str, ...] = ("127.0.0.1:9464",)
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    rule_files: tuple[Path, ...] = RULE_FILES
    routing: Routing = field(default_factory=Routing)
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        for name in ("prometheus_port", "alertmanager_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                msg = f"{name} must be in 1..65535, got {port}"
                raise ValueError(msg)
        if not self.targets or any(":" not in t for t in self.targets):
            msg = f"targets must be host:port, got {', '.join(self.targets) or 'none'}"
            raise ValueError(msg)

    def url(self, service: str) -> str:
        port = self.prometheus_port if service == "prometheus" else self.alertmanager_port
        return f"http://{self.host}:{port}"


def binary(service: str) -> str:
    """The path of ``service``'s executable, or a :class:`MonitorError` saying how to install it."""
    for name in BINARIES[service]:
        found = shutil.which(name)
        if found:
            return found
    msg = f"{' or '.join(BINARIES[service])} not found on PATH (bash infra/system-packages.sh installs it)"
    raise MonitorError(msg)


def prometheus_config(s: MonitorSettings) -> dict:
    """The scrape config of the shipped ``prometheus.yml`` with ``s``'s targets, ports and files."""
    return {
        "global": {
            "scrape_interval": s.scrape_interval,
            "evaluation_interval": s.evaluation_interval,
            "external_labels": {"system": "qbtc"},
        },
        "rule_files": [str(Path(p).resolve()) for p in s.rule_files],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"{s.host}:{s.alertmanager_port}"]}]}]
        },
        "scrape_configs": [{"job_name": "qbtc", "static_configs": [{"targets": list(s.targets)}]}],
    }


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _commands(s: MonitorSettings, root: Path, am_config: Path) -> dict[str, list[str]]:
    return {
        "alertmanager": [
            binary("alertmanager"),
            f"--config.file={am_config}",
            f"--storage.path={root / 'alertmanager' / 'data'}",
            f"--web.listen-address={s.host}:{s.alertmanager_port}",
            "--cluster.listen-address=",  # one instance: no gossip port
        ],
        "prometheus": [
            binary("prometheus"),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'prometheus'}",
            f"--web.listen-address={s.host}:{s.prometheus_port}",
            "--web.enable-lifecycle",
        ],
    }


def up(
    s: MonitorSettings, receivers: ReceiverSettings | None = None, timeout_s: float = 30
) -> dict[str, int]:
    """Write the configs, start Alertmanager and Prometheus, wait until both are ready; their pids.

    ``receivers`` default to the ``QBTC_ALERT_*`` environment. What started is stopped again when
    the other does not come up.
    """
    root = Path(s.data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    known = _state(root)
    if any(process_alive(pid) for pid in known.get("pids", {}).values()):
        msg = f"a monitor already runs from {root} (qbtc monitor down --data-dir {s.data_dir})"
        raise MonitorError(msg)
    am_config = render(root / "alertmanager", receivers, s.routing)
    (root / "prometheus.yml").write_text(json.dumps(prometheus_config(s), indent=2) + "\n")
    commands = _commands(s, root, am_config)
    pids: dict[str, int] = {}
    try:
        for service in SERVICES:
            with (root / f"{service}.log").open("ab") as log:
                proc = subprocess.Popen(
                    commands[service],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # outlives `qbtc monitor up`; Ctrl-C in the shell spares it
                )
            pids[service] = proc.pid
            _write_state(root, s, pids)
        deadline = time.monotonic() + timeout_s
        for service in SERVICES:
            while not _ready(s.url(service)):
                if not process_alive(pids[service]) or time.monotonic() > deadline:
                    why = "exited" if not process_alive(pids[service]) else f"not ready after {timeout_s:g} s"
                    log = root / f"{service}.log"
                    msg = f"{service} {why}; its log ({log}) ends:\n{_tail(log)}"
                    raise MonitorError(msg)
                time.sleep(0.1)
    except BaseException:
        _stop(pids, 10)
        raise
    return pids


def _write_state(root: Path, s: MonitorSettings, pids: dict[str, int]) -> None:
    state = {
        "pids": pids,
        "prometheus_port": s.prometheus_port,
        "alertmanager_port": s.alertmanager_port,
        "host": s.host,
        "targets": list(s.targets),
    }
    (root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _state(root: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((root / STATE_FILE).read_text())
    return {}


def _stop(pids: dict[str, int], timeout_s: float) -> list[str]:
    """SIGTERM each process, SIGKILL what still runs after ``timeout_s``; the services that ran."""
    ran = [name for name, pid in pids.items() if process_alive(pid)]
    for name in ran:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[name], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(process_alive(pids[n]) for n in ran) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in ran:
        if process_alive(pids[name]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[name], signal.SIGKILL)
    return ran


def down(data_dir: str, timeout_s: float = 30) -> list[str]:
    """Stop the monitor started from ``data_dir``; the services that were running."""
    return _stop(_state(Path(data_dir).resolve()).get("pids", {}), timeout_s)


def status(data_dir: str) -> dict[str, dict[str, object]]:
    """Each service's pid, URL, whether it runs and whether it is ready."""
    state = _state(Path(data_dir).resolve())
    host = state.get("host", "127.0.0.1")
    out = {}
    for service in SERVICES:
        pid = state.get("pids", {}).get(service)
        url = f"http://{host}:{state.get(f'{service}_port', 0)}"
        alive = pid is not None and process_alive(pid)
        out[service] = {"pid": pid, "url": url, "alive": alive, "ready": alive and _ready(url)}
    return out


# --- command line -----------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    s = MonitorSettings(
        data_dir=args.data_dir,
        targets=targets,
        prometheus_port=args.prometheus_port,
        alertmanager_port=args.alertmanager_port,
        scrape_interval=args.scrape_interval,
        evaluation_interval=args.scrape_interval,
    )
    pids = up(s)
    on = ReceiverSettings.from_env().configured()
    print(
        f"monitor: prometheus at {s.url('prometheus')} (pid {pids['prometheus']}) scraping "
        f"{', '.join(targets)}; alertmanager at {s.url('alertmanager')} (pid {pids['alertmanager']}, "
        f"receivers: {', '.join(on) if on else 'none'}); data {s.data_dir}"
    )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    ran = down(args.data_dir)
    print(f"monitor: {'stopped ' + ', '.join(ran) if ran else 'not running'} (data {args.data_dir})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = status(args.data_dir)
    for service, info in st.items():
        state = "ready" if info["ready"] else "running, not ready" if info["alive"] else "not running"
        print(f"monitor: {service} {state} at {info['url']} (pid {info['pid']}, data {args.data_dir})")
    return 0 if all(info["ready"] for info in st.values()) else 1


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (ValueError, MonitorError) as e:  # RenderError is a ValueError: exit 2
            print(f"monitor: error: {e}", file=sys.stderr)
            return 2 if isinstance(e, ValueError | RenderError) else 1

    return run


def configure(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``up``, ``down`` and ``status`` commands to ``subparsers`` (each sets ``func(args)``)."""
    d = MonitorSettings()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", default=d.data_dir, help=f"configs, data and logs (default {d.data_dir})"
    )
    upp = subparsers.add_parser(
        "up",
        parents=[common],
        help="start Prometheus and Alertmanager with qbtc's rules; wait until both are ready",
        description="Start Prometheus (scraping --targets with infra/prometheus's rules) and "
        "Alertmanager (receivers from the QBTC_ALERT_* environment) in the background.",
    )
    upp.add_argument(
        "--targets",
        default=",".join(d.targets),
        help="comma-separated host:port of qbtc /metrics endpoints (qbtc stream --metrics-port; "
        f"default {','.join(d.targets)})",
    )
    upp.add_argument("--prometheus-port", type=int, default=d.prometheus_port, help="default %(default)s")
    upp.add_argument("--alertmanager-port", type=int, default=d.alertmanager_port, help="default %(default)s")
    upp.add_argument(
        "--scrape-interval",
        default=d.scrape_interval,
        help="scrape and rule evaluation interval (%(default)s)",
    )
    upp.set_defaults(func=_guarded(_cmd_up))
    for name, func, text in (
        ("down", _cmd_down, "stop the local Prometheus and Alertmanager: SIGTERM, then SIGKILL after 30 s"),
        (
            "status",
            _cmd_status,
            "show whether Prometheus and Alertmanager run and are ready; exit 1 unless both",
        ),
    ):
        p = subparsers.add_parser(
            name, parents=[common], help=text, description=text[0].upper() + text[1:] + "."
        )
        p.set_defaults(func=_guarded(func))


def main(argv: list[str] | None = None) -> int:
    """Run ``up``, ``down`` or ``status``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.prometheus.monitor", description="A local Prometheus and Alertmanager for qbtc."
    )
    configure(parser.add_subparsers(dest="monitor_command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
