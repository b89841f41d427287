"""Start, stop and inspect a real Apache Kafka 4.x broker (KRaft) run from Maven Central jars.

No Docker and no release tarball: ``ensure_jars`` copies Kafka's runtime jars (plus log4j2) with
``mvn dependency:copy-dependencies`` once into a cache, and ``up`` formats the storage and starts one
or three combined broker+controller JVMs in the background.

Layout of ``data_dir``::

    cluster.json              cluster id and node count, reused on restart
    node-<i>/server.properties
    node-<i>/data/            log.dirs (partitions and the KRaft metadata log)
    node-<i>/logs/server.log  broker log (log4j2.yaml next to this module)
    node-<i>/console.log      the JVM's stdout and stderr
    node-<i>/kafka.pid

Ports: node ``i`` (1-based) listens for clients on ``port + 2 * (i - 1)`` and for the controller
quorum on ``controller_port + 2 * (i - 1)``, so the defaults give 9092/9093, 9094/9095, 9096/9097.

Also a command line: ``python -m infra.kafka.broker up|down|status``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.yaml"
PORT_STRIDE = 2
QUORUM_LOST_GRACE_S = 8.0
_MARKER = ".complete"
_QUIET = logging.getLogger("qbtc.kafka.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False
log = logging.getLogger(__name__)


class BrokerError(Exception):
    """The broker could not be fetched, started or stopped; the message says why."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to run the local Kafka broker (one node, or three for fault tests).

    Parameters
    ----------
    data_dir
        Directory for the cluster id, per-node config, data, logs and pid files.
    port
        Client (PLAINTEXT) port of node 1; node ``i`` uses ``port + 2 * (i - 1)``.
    controller_port
        Controller (KRaft quorum) port of node 1; node ``i`` uses ``controller_port + 2 * (i - 1)``.
    nodes
        1 (combined broker+controller) or 3 (three combined nodes, replication factor 3).
    heap_mb
        JVM heap per node (-Xms and -Xmx), in MiB.
    host
        Address every listener binds to and advertises.
    startup_timeout_s
        How long ``up`` and ``start_node`` wait for the broker to answer metadata requests.

    Examples
    --------
    >>> BrokerSettings(nodes=3).client_ports
    (9092, 9094, 9096)
    >>> BrokerSettings(nodes=2)
    Traceback (most recent call last):
    ...
    ValueError: nodes must be 1 or 3, got 2
    """

    data_dir: str = "var/kafka"
    port: int = 9092
    controller_port: int = 9093
    nodes: int = 1
    heap_mb: int = 512
    host: str = "127.0.0.1"
    startup_timeout_s: float = 90

    def __post_init__(self) -> None:
        if self.nodes not in (1, 3):
            msg = f"nodes must be 1 or 3, got {self.nodes}"
            raise ValueError(msg)
        if not self.data_dir:
            msg = "data_dir must not be empty"
            raise ValueError(msg)
        if not self.host:
            msg = "host must not be empty"
            raise ValueError(msg)
        ports = self.client_ports + self.controller_ports
        if min(ports) < 1 or max(ports) > 65535:
            msg = f"ports out of 1..65535: client {self.client_ports}, controller {self.controller_ports}"
            raise ValueError(msg)
        if len(set(ports)) != len(ports):
            msg = (
                f"client ports {self.client_ports} and controller ports {self.controller_ports} overlap; "
                f"node i uses port + {PORT_STRIDE} * (i - 1), e.g. use --controller-port {self.port + 1}"
            )
            raise ValueError(msg)
        if self.heap_mb < 128:
            msg = f"heap_mb must be at least 128, got {self.heap_mb}"
            raise ValueError(msg)
        if not self.startup_timeout_s > 0:
            msg = f"startup_timeout_s must be positive, got {self.startup_timeout_s}"
            raise ValueError(msg)

    @property
    def node_ids(self) -> range:
        """Node ids, 1-based."""
        return range(1, self.nodes + 1)

    @property
    def client_ports(self) -> tuple[int, ...]:
        """Client port of each node, in node order."""
        return tuple(self.port + PORT_STRIDE * (i - 1) for i in self.node_ids)

    @property
    def controller_ports(self) -> tuple[int, ...]:
        """Controller port of each node, in node order."""
        return tuple(self.controller_port + PORT_STRIDE * (i - 1) for i in self.node_ids)

    def node_port(self, node_id: int) -> int:
        """Client port of one node."""
        return self.port + PORT_STRIDE * (_check_node(self, node_id) - 1)

    def node_dir(self, node_id: int) -> Path:
        """Directory of one node inside ``data_dir``."""
        return _node_dir(self, _check_node(self, node_id))


def _node_dir(settings: BrokerSettings, node_id: int) -> Path:
    return Path(settings.data_dir) / f"node-{node_id}"


def _check_node(settings: BrokerSettings, node_id: int) -> int:
    if node_id not in settings.node_ids:
        msg = f"node_id must be one of {list(settings.node_ids)}, got {node_id}"
        raise ValueError(msg)
    return node_id


def bootstrap(settings: BrokerSettings) -> str:
    """Bootstrap servers string of all nodes, for Kafka clients.

    Examples
    --------
    >>> bootstrap(BrokerSettings())
    '127.0.0.1:9092'
    >>> bootstrap(BrokerSettings(port=19092, controller_port=19093, nodes=3))
    '127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096'
    """
    return ",".join(f"{settings.host}:{p}" for p in settings.client_ports)


# ---------------------------------------------------------------------------------------------------
# Jars


def kafka_version() -> str:
    """Kafka version pinned in ``pom.xml`` (the ``kafka.version`` property)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        msg = f"{POM} has no <kafka.version> property"
        raise BrokerError(msg)
    return node.text.strip()


def _cache_dir(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("QBTC_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "qbtc" / f"kafka-{kafka_version()}"


def _marker_text() -> str:
    return f"kafka {kafka_version()} pom-sha256 {hashlib.sha256(POM.read_bytes()).hexdigest()}\n"


def jars_ready(cache_dir: str | None = None) -> bool:
    """Whether the jar cache is complete for the pinned pom (so ``ensure_jars`` will not download)."""
    marker = _cache_dir(cache_dir) / "lib" / _MARKER
    return marker.is_file() and marker.read_text() == _marker_text()


def _duplicate_artifacts(lib: Path) -> list[str]:
    seen: dict[str, list[str]] = {}
    for jar in sorted(lib.glob("*.jar")):
        m = re.match(r"(.+?)-(\d[^-]*(?:-[A-Za-z0-9.]+)*)\.jar$", jar.name)
        seen.setdefault(m.group(1) if m else jar.stem, []).append(jar.name)
    return [", ".join(names) for names in seen.values() if len(names) > 1]


def ensure_jars(cache_dir: str | None = None) -> Path:
    """Kafka's runtime jars, downloaded with mvn on first use; returns the ``lib`` directory.

    The cache is ``cache_dir``, else ``$QBTC_KAFKA_CACHE``, else ``~/.cache/qbtc/kafka-<version>``;
    jars go to its ``lib/``. A marker written after a successful download (holding the pom's hash)
    makes an interrupted or outdated download start over.
    """
    root = _cache_dir(cache_dir)
    lib = root / "lib"
    if jars_ready(cache_dir):
        return lib
    _java()
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = f"mvn not found on PATH: Maven is needed once to fetch the Kafka jars into {lib}"
        raise BrokerError(msg)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be downloading the same cache
        if jars_ready(cache_dir):
            return lib
        shutil.rmtree(lib, ignore_errors=True)
        cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime"]
        cmd.append(f"-DoutputDirectory={lib}")
        log.info("fetching Kafka %s jars into %s", kafka_version(), lib)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        except subprocess.TimeoutExpired as e:
            msg = f"mvn timed out after {e.timeout:.0f}s fetching the Kafka jars: {' '.join(cmd)}"
            raise BrokerError(msg) from e
        if out.returncode != 0:
            tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-30:])
            msg = f"mvn failed (exit {out.returncode}) fetching the Kafka jars: {' '.join(cmd)}\n{tail}"
            raise BrokerError(msg)
        if not (lib / f"kafka_2.13-{kafka_version()}.jar").is_file():
            msg = f"mvn finished but {lib} has no kafka_2.13-{kafka_version()}.jar"
            raise BrokerError(msg)
        dups = _duplicate_artifacts(lib)
        if dups:
            msg = f"conflicting jar versions in {lib}: " + "; ".join(dups)
            raise BrokerError(msg)
        (lib / _MARKER).write_text(_marker_text())
    return lib


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").is_file() else None
    java = java or shutil.which("java")
    if java is None:
        msg = "java not found (set JAVA_HOME or put java on PATH): Kafka 4 needs a Java 17+ runtime"
        raise BrokerError(msg)
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = (int(m.group(2) or 0) if m.group(1) == "1" else int(m.group(1))) if m else 0
    if major < 17:
        first = (out.stderr + out.stdout).strip().splitlines()[:1]
        msg = f"{java} is not Java 17+ ({first[0] if first else 'no version output'}): Kafka 4 needs 17+"
        raise BrokerError(msg)
    return java


# ---------------------------------------------------------------------------------------------------
# Config and processes


def _stored_cluster_id(settings: BrokerSettings) -> str | None:
    """Cluster id kept in ``data_dir``, checking that it holds a cluster of ``settings.nodes`` nodes."""
    path = Path(settings.data_dir) / "cluster.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if meta.get("nodes") != settings.nodes:
        msg = (
            f"{settings.data_dir} holds a {meta.get('nodes')}-node cluster, not {settings.nodes} "
            f"node(s): pass --nodes {meta.get('nodes')}, or use another --data-dir"
        )
        raise BrokerError(msg)
    return str(meta["cluster_id"])


def _cluster_id(settings: BrokerSettings) -> str:
    stored = _stored_cluster_id(settings)
    if stored is not None:
        return stored
    path = Path(settings.data_dir) / "cluster.json"
    cid = "-"
    while cid.startswith("-"):  # as Kafka's Uuid.randomUuid: ids never start with a dash
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cluster_id": cid, "nodes": settings.nodes}) + "\n")
    return cid


def server_properties(settings: BrokerSettings, node_id: int) -> dict[str, str]:
    """Broker+controller config of one node (all values as strings, as in server.properties)."""
    node = settings.node_dir(node_id).resolve()
    host = settings.host
    cport = settings.controller_port + PORT_STRIDE * (node_id - 1)
    voters = ",".join(
        f"{i}@{host}:{p}" for i, p in zip(settings.node_ids, settings.controller_ports, strict=True)
    )
    listeners = f"PLAINTEXT://{host}:{settings.node_port(node_id)},CONTROLLER://{host}:{cport}"
    rf, isr = (3, 2) if settings.nodes == 3 else (1, 1)
    props = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "controller.quorum.voters": voters,
        "listeners": listeners,
        "advertised.listeners": listeners,
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "log.dirs": node / "data",
        "num.partitions": 1,
        "auto.create.topics.enable": "false",
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "transaction.state.log.num.partitions": 4,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        "group.initial.rebalance.delay.ms": 0,
        "log.cleaner.dedupe.buffer.size": 4 * 1024 * 1024,
        "log.cleaner.threads": 1,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 1,
    }
    if settings.nodes == 3:  # notice a dead node within seconds, for fault tests
        props |= {
            "broker.heartbeat.interval.ms": 1000,
            "broker.session.timeout.ms": 6000,
            "controller.quorum.fetch.timeout.ms": 2000,
            "controller.quorum.election.timeout.ms": 500,
            "controller.quorum.election.backoff.max.ms": 500,
            "replica.lag.time.max.ms": 10000,
        }
    return {k: str(v) for k, v in props.items()}


def _write_properties(settings: BrokerSettings, node_id: int) -> Path:
    node = settings.node_dir(node_id)
    (node / "logs").mkdir(parents=True, exist_ok=True)
    path = node / "server.properties"
    lines = [f"# written by infra/kafka/broker.py for node {node_id}; rewritten on every start"]
    lines += [f"{k}={v}" for k, v in server_properties(settings, node_id).items()]
    path.write_text("\n".join(lines) + "\n")
    return path.resolve()


def _jvm(java: str, lib: Path, settings: BrokerSettings, node_id: int) -> list[str]:
    node = settings.node_dir(node_id).resolve()
    return [
        java,
        f"-Xms{settings.heap_mb}m",
        f"-Xmx{settings.heap_mb}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={node / 'logs'}",
        "-cp",
        f"{lib}/*",  # one argv item: java expands the wildcard itself, no shell involved
    ]


def _format(java: str, lib: Path, settings: BrokerSettings, node_ids: list[int], cluster_id: str) -> None:
    procs = {}
    for i in node_ids:
        props = _write_properties(settings, i)
        cmd = [*_jvm(java, lib, settings, i), "kafka.tools.StorageTool", "format", "-t", cluster_id]
        cmd += ["-c", str(props), "-g"]
        procs[i] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for i, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            tail = "\n".join(out.strip().splitlines()[-30:])
            msg = f"formatting the storage of kafka node {i} failed (exit {proc.returncode}):\n{tail}"
            raise BrokerError(msg)


def _pid_file(settings: BrokerSettings, node_id: int) -> Path:
    return _node_dir(settings, node_id) / "kafka.pid"


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that has exited: reap it
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _running_pid(settings: BrokerSettings, node_id: int) -> int | None:
    """Pid of the node's JVM if its pid file names a live process running this node's config."""
    path = _pid_file(settings, node_id)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if _alive(pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return pid  # no /proc: trust the pid file
        props = str((_node_dir(settings, node_id) / "server.properties").resolve()).encode()
        if b"kafka.Kafka" in cmdline and props in cmdline:
            return pid
    path.unlink(missing_ok=True)  # stale: the process is gone or the pid was reused
    return None


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _metadata_brokers(servers: str, timeout: float) -> set[int] | None:
    """Broker ids in a metadata response from ``servers``, or None when no answer came in time."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": servers, "logger": _QUIET, "socket.timeout.ms": 2000})
    try:
        return set(admin.list_topics(timeout=timeout).brokers)
    except KafkaException:
        return None


def _tail(settings: BrokerSettings, node_id: int, lines: int = 30) -> str:
    node = settings.node_dir(node_id)
    parts = []
    for name, n in (("logs/server.log", lines), ("console.log", 15)):
        with contextlib.suppress(OSError):
            text = (node / name).read_text(errors="replace").strip().splitlines()[-n:]
            if text:
                parts.append(f"--- {node / name} (last {len(text)} lines) ---\n" + "\n".join(text))
    return "\n".join(parts) or f"(no log in {node})"


def _launch(java: str, lib: Path, settings: BrokerSettings, node_id: int) -> int:
    host, port = settings.host, settings.node_port(node_id)
    cport = settings.controller_port + PORT_STRIDE * (node_id - 1)
    for p in (port, cport):
        if _port_open(host, p, timeout=0.2):
            msg = f"kafka node {node_id}: {host}:{p} is already in use by another process"
            raise BrokerError(msg)
    props = _write_properties(settings, node_id)
    node = settings.node_dir(node_id)
    with open(node / "console.log", "ab") as console:
        proc = subprocess.Popen(
            [*_jvm(java, lib, settings, node_id), "kafka.Kafka", str(props)],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the caller's terminal and Ctrl-C
        )
    _pid_file(settings, node_id).write_text(f"{proc.pid}\n")
    return proc.pid


def _wait_ready(settings: BrokerSettings, node_ids: list[int], servers: str, expect: set[int]) -> None:
    deadline = time.monotonic() + settings.startup_timeout_s
    while True:
        for i in node_ids:
            if _running_pid(settings, i) is None:
                msg = f"kafka node {i} exited during start-up:\n{_tail(settings, i)}"
                raise BrokerError(msg)
        left = deadline - time.monotonic()
        if left <= 0:
            slow = [i for i in node_ids if not _port_open(settings.host, settings.node_port(i))] or node_ids
            msg = (
                f"kafka did not answer at {servers} within {settings.startup_timeout_s:.0f}s "
                f"(waiting for brokers {sorted(expect)}):\n{_tail(settings, slow[0])}"
            )
            raise BrokerError(msg)
        if all(_port_open(settings.host, settings.node_port(i)) for i in node_ids):
            brokers = _metadata_brokers(servers, timeout=min(5.0, max(left, 0.5)))
            if brokers is not None and expect <= brokers:
                return
        time.sleep(0.25)


def _answering(settings: BrokerSettings) -> bool:
    if not all(_port_open(settings.host, p) for p in settings.client_ports):
        return False
    brokers = _metadata_brokers(bootstrap(settings), timeout=5)
    return brokers is not None and set(settings.node_ids) <= brokers


def up(settings: BrokerSettings) -> str:
    """Start the broker (all nodes) unless it already runs; return the bootstrap servers string.

    Formats the storage on first use (the cluster id is kept in ``data_dir``), starts each node as
    a detached JVM and waits until every node appears in a metadata response. Nodes started by this
    call are stopped again if start-up fails, and the error carries the tail of the node's log.
    """
    servers = bootstrap(settings)
    _stored_cluster_id(settings)
    running = {i: _running_pid(settings, i) for i in settings.node_ids}
    if all(running.values()) and _answering(settings):
        return servers
    lib = ensure_jars()
    java = _java()
    cluster_id = _cluster_id(settings)
    todo = [i for i, pid in running.items() if pid is None]
    unformatted = [i for i in todo if not (settings.node_dir(i) / "data" / "meta.properties").is_file()]
    if unformatted:
        _format(java, lib, settings, unformatted, cluster_id)
    started: list[int] = []
    try:
        for i in todo:
            _launch(java, lib, settings, i)
            started.append(i)
        _wait_ready(settings, list(settings.node_ids), servers, set(settings.node_ids))
    except BaseException:
        _stop(settings, started, timeout_s=10, kill=False)
        raise
    return servers


def _stop(settings: BrokerSettings, node_ids: list[int], timeout_s: float, kill: bool) -> list[int]:
    """Signal the nodes, wait for them to exit, SIGKILL stragglers; returns the ids that were running.

    A broker's controlled shutdown needs the controller quorum's approval and Kafka waits up to five
    minutes for it. Once a majority of the voters is gone, the remaining nodes can no longer get it,
    so they get ``QUORUM_LOST_GRACE_S`` to finish and are killed after that.
    """
    pids = {i: pid for i in node_ids if (pid := _running_pid(settings, i)) is not None}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    voters = _known_nodes(settings)
    others = [i for i in voters if i not in pids]
    majority = len(voters) // 2 + 1
    deadline = time.monotonic() + timeout_s
    quorum_lost = False
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        alive = sum(_alive(p) for p in pids.values()) + sum(
            _running_pid(settings, i) is not None for i in others
        )
        if alive < majority and not quorum_lost:
            quorum_lost = True
            deadline = min(deadline, time.monotonic() + QUORUM_LOST_GRACE_S)
        time.sleep(0.1)
    for i, pid in pids.items():
        if _alive(pid):
            if quorum_lost:
                log.info(
                    "kafka node %d (pid %d) cannot finish without a controller quorum: killing it", i, pid
                )
            else:
                log.warning("kafka node %d (pid %d) ignored SIGTERM for %.0fs: killing it", i, pid, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            end = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
        _pid_file(settings, i).unlink(missing_ok=True)
    return sorted(pids)


def _known_nodes(settings: BrokerSettings) -> list[int]:
    """Nodes of the cluster in ``data_dir`` (per cluster.json), configured or holding a pid file."""
    ids = set(settings.node_ids)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        ids |= set(
            range(1, int(json.loads((Path(settings.data_dir) / "cluster.json").read_text())["nodes"]) + 1)
        )
    for pid_file in Path(settings.data_dir).glob("node-*/kafka.pid"):
        with contextlib.suppress(ValueError):
            ids.add(int(pid_file.parent.name.removeprefix("node-")))
    return sorted(ids)


def down(settings: BrokerSettings, timeout_s: float = 30) -> bool:
    """Stop every node of ``data_dir`` (SIGTERM, then SIGKILL after ``timeout_s``); True if any ran."""
    return bool(_stop(settings, _known_nodes(settings), timeout_s, kill=False))


def stop_node(settings: BrokerSettings, node_id: int, kill: bool = False) -> bool:
    """Stop one node (SIGKILL at once when ``kill``, else SIGTERM); True if it was running."""
    return bool(_stop(settings, [_check_node(settings, node_id)], timeout_s=30, kill=kill))


def start_node(settings: BrokerSettings, node_id: int) -> str:
    """Start one (formatted) node again and wait until it answers; returns its ``host:port``."""
    _check_node(settings, node_id)
    servers = f"{settings.host}:{settings.node_port(node_id)}"
    if _running_pid(settings, node_id) is None:
        if not (settings.node_dir(node_id) / "data" / "meta.properties").is_file():
            msg = (
                f"kafka node {node_id} has no formatted storage in {settings.node_dir(node_id)}: run up first"
            )
            raise BrokerError(msg)
        _launch(_java(), ensure_jars(), settings, node_id)
    try:
        _wait_ready(settings, [node_id], servers, {node_id})
    except BaseException:
        _stop(settings, [node_id], timeout_s=10, kill=False)
        raise
    return servers


def status(settings: BrokerSettings) -> dict[int, dict[str, object]]:
    """Per node: ``pid`` (or None), ``alive``, ``answering`` (metadata answered on its port), ``port``."""
    out: dict[int, dict[str, object]] = {}
    for i in settings.node_ids:
        pid = _running_pid(settings, i)
        port = settings.node_port(i)
        answering = False
        if pid is not None and _port_open(settings.host, port):
            brokers = _metadata_brokers(f"{settings.host}:{port}", timeout=5)
            answering = brokers is not None and i in brokers
        out[i] = {"pid": pid, "alive": pid is not None, "answering": answering, "port": port}
    return out


# ---------------------------------------------------------------------------------------------------
# Command line


def _settings(args: argparse.Namespace) -> BrokerSettings:
    return BrokerSettings(
        data_dir=args.data_dir,
        port=args.port,
        controller_port=args.controller_port,
        nodes=args.nodes,
        heap_mb=args.heap_mb,
    )


def _plural(n: int) -> str:
    return f"{n} node" + ("" if n == 1 else "s")


def _cmd_up(args: argparse.Namespace) -> int:
    s = _settings(args)
    if not jars_ready():
        print(f"kafka: fetching Kafka {kafka_version()} jars with mvn (first run only)", file=sys.stderr)
    t0 = time.monotonic()
    servers = up(s)
    took = time.monotonic() - t0
    print(f"kafka: up at {servers} ({_plural(s.nodes)}, data {s.data_dir}) in {took:.1f}s")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    s = _settings(args)
    if down(s):
        print(f"kafka: stopped (data {s.data_dir})")
    else:
        print(f"kafka: not running (data {s.data_dir})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    s = _settings(args)
    ok = True
    for i, st in status(s).items():
        where = f"{s.host}:{st['port']}"
        if st["answering"]:
            print(f"kafka: node {i} up at {where} (pid {st['pid']}, data {s.data_dir})")
        elif st["alive"]:
            print(
                f"kafka: node {i} running but not answering at {where} (pid {st['pid']}, data {s.data_dir})"
            )
        else:
            print(f"kafka: node {i} not running ({where}, data {s.data_dir})")
        ok = ok and bool(st["answering"])
    return 0 if ok else 1


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ValueError as e:
            print(f"kafka: error: {e}", file=sys.stderr)
            return 2
        except BrokerError as e:
            print(f"kafka: error: {e}", file=sys.stderr)
            return 1

    return run


def configure(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``up``, ``down`` and ``status`` commands to ``subparsers`` (each sets ``func(args)``)."""
    common = argparse.ArgumentParser(add_help=False)
    d = BrokerSettings()
    common.add_argument("--data-dir", default=d.data_dir, help=f"cluster directory (default {d.data_dir})")
    common.add_argument(
        "--port",
        type=int,
        default=d.port,
        help=f"client port of node 1; node i adds 2*(i-1) (default {d.port})",
    )
    common.add_argument(
        "--controller-port",
        type=int,
        default=d.controller_port,
        help=f"controller port of node 1; node i adds 2*(i-1) (default {d.controller_port})",
    )
    common.add_argument(
        "--nodes", type=int, choices=(1, 3), default=d.nodes, help="1 node, or 3 for fault tests (default 1)"
    )
    common.add_argument(
        "--heap-mb", type=int, default=d.heap_mb, help=f"JVM heap per node (default {d.heap_mb})"
    )
    commands = (
        (
            "up",
            _cmd_up,
            "start the local Kafka broker (downloads the jars on first use) and wait until it answers",
        ),
        ("down", _cmd_down, "stop the local Kafka broker (SIGTERM, then SIGKILL after 30 s)"),
        ("status", _cmd_status, "show each node's pid and whether it answers (exit 1 unless all answer)"),
    )
    for name, func, text in commands:
        p = subparsers.add_parser(
            name, parents=[common], help=text, description=text[0].upper() + text[1:] + "."
        )
        p.set_defaults(func=_guarded(func))


def main(argv: list[str] | None = None) -> int:
    """Run ``up``, ``down`` or ``status``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.kafka.broker",
        description=f"A local Apache Kafka {kafka_version()} broker (KRaft) from Maven Central jars.",
    )
    configure(parser.add_subparsers(dest="kafka_command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
