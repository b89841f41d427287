"""Start, stop and inspect a real Apache Kafka 4.x broker (KRaft) run from Maven Central jars.

No Docker and no release tarball: ``ensure_jars`` copies Kafka's runtime jars (plus log4j2) into a
cache once with ``mvn dependency:copy-dependencies``; ``up`` formats the storage and starts one or
more (three for fault tests) combined broker+controller JVMs in the background. Layout of ``data_dir``::

    cluster.json                cluster id and node count, reused on restart
    broker.json                 the ports, node count and heap ``up`` last started it with: the
                                command line's defaults for options not given
    node-<i>/server.properties  rewritten on every start
    node-<i>/data/              log.dirs: partitions and the KRaft metadata log
    node-<i>/logs/server.log    broker log (log4j2.yaml next to this module)
    node-<i>/console.log        the JVM's stdout and stderr
    node-<i>/kafka.pid

Ports: node ``i`` (1-based) serves clients on ``port + 2 * (i - 1)`` and the controller quorum on
``controller_port + 2 * (i - 1)``: the defaults give 9092/9093, 9094/9095 and 9096/9097. For tests of
client security a node can also serve SASL_PLAINTEXT clients (mechanism PLAIN, the users of
``sasl_users``) on ``sasl_port + 2 * (i - 1)``; the passwords are written to server.properties.
Command line: ``python -m infra.kafka.broker up|down|status``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra.kafka.jars import BrokerError, _java, ensure_jars, jars_ready, kafka_version
from infra.processes import process_alive

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.yaml"
PORT_STRIDE = 2
MAX_NODES = 9
QUORUM_LOST_GRACE_S = 8.0
log = logging.getLogger(__name__)
_QUIET = logging.getLogger(f"{__name__}.librdkafka")  # connection-refused chatter while polling
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


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
        Combined broker+controller nodes, 1 to 9 (all voters of the KRaft quorum). With ``n``
        nodes the internal topics and the default replication factor are ``min(n, 3)`` and
        min.insync.replicas ``max(1, min(n, 3) - 1)``: three nodes give replication 3 and
        min.insync.replicas 2, so one node may die without stopping ``acks=all`` producers.
    heap_mb
        JVM heap per node (-Xms and -Xmx), in MiB.
    host
        Address every listener binds to and advertises.
    startup_timeout_s
        How long ``up`` and ``start_node`` wait for the broker to answer a metadata request.
    sasl_port
        SASL_PLAINTEXT (PLAIN) client port of node 1, 0 for none; node ``i`` uses
        ``sasl_port + 2 * (i - 1)``. For tests: credentials travel in clear text.
    sasl_users
        ``(username, password)`` pairs the SASL listener accepts.

    Examples
    --------
    >>> BrokerSettings(nodes=3).client_ports
    (9092, 9094, 9096)
    >>> BrokerSettings(nodes=5).controller_ports
    (9093, 9095, 9097, 9099, 9101)
    >>> BrokerSettings(nodes=0)
    Traceback (most recent call last):
    ...
    ValueError: nodes must lie in 1..9, got 0
    >>> BrokerSettings(sasl_port=9192, sasl_users=(("qbtc", "s3cret"),)).sasl_ports
    (9192,)
    >>> BrokerSettings(sasl_port=9192)
    Traceback (most recent call last):
    ...
    ValueError: a SASL listener needs sasl_users
    """

    data_dir: str = "var/kafka"
    port: int = 9092
    controller_port: int = 9093
    nodes: int = 1
    heap_mb: int = 512
    host: str = "127.0.0.1"
    startup_timeout_s: float = 90
    sasl_port: int = 0
    sasl_users: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:  # before the ports: they depend on it
            msg = f"nodes must lie in 1..{MAX_NODES}, got {self.nodes}"
            raise ValueError(msg)
        ports = self.client_ports + self.controller_ports + self.sasl_ports
        plain = all(name and not set(name + password) & set('"\\;= ') for name, password in self.sasl_users)
        checks = (
            (bool(self.data_dir) and bool(self.host), "data_dir and host must not be empty"),
            (1 <= min(ports) and max(ports) <= 65535, f"ports {ports} must lie in 1..65535"),
            (
                len(set(ports)) == len(ports),
                f"client ports {self.client_ports} and controller ports {self.controller_ports} overlap "
                f"(node i adds {PORT_STRIDE} * (i - 1) to both): try controller_port = port + 1",
            ),
            (self.heap_mb >= 128, f"heap_mb must be at least 128, got {self.heap_mb}"),
            (self.startup_timeout_s > 0, f"startup_timeout_s must be positive, got {self.startup_timeout_s}"),
            (not self.sasl_port or bool(self.sasl_users), "a SASL listener needs sasl_users"),
            (plain, "SASL user names and passwords must be non-empty, without quotes, \\, ;, = or spaces"),
        )
        for ok, msg in checks:
            if not ok:
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

    @property
    def sasl_ports(self) -> tuple[int, ...]:
        """SASL_PLAINTEXT client port of each node (none without ``sasl_port``)."""
        if not self.sasl_port:
            return ()
        return tuple(self.sasl_port + PORT_STRIDE * (i - 1) for i in self.node_ids)

    def node_port(self, node_id: int) -> int:
        """Client port of one node."""
        return self.client_ports[_check_node(self, node_id) - 1]

    def node_dir(self, node_id: int) -> Path:
        """Directory of one node inside ``data_dir``."""
        return Path(self.data_dir) / f"node-{node_id}"


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


def sasl_bootstrap(settings: BrokerSettings) -> str:
    """Bootstrap servers of the SASL_PLAINTEXT listeners ("" without one).

    >>> sasl_bootstrap(BrokerSettings(sasl_port=9192, sasl_users=(("u", "p"),)))
    '127.0.0.1:9192'
    """
    return ",".join(f"{settings.host}:{p}" for p in settings.sasl_ports)


# --- config and processes ---------------------------------------------------------------------------


def _cluster_id(settings: BrokerSettings, create: bool = True) -> str | None:
    """Cluster id kept in ``data_dir`` (made on first use), refusing a cluster of another node count."""
    path = Path(settings.data_dir) / "cluster.json"
    if path.is_file():
        meta = json.loads(path.read_text())
        if meta.get("nodes") != settings.nodes:
            msg = (
                f"{settings.data_dir} holds a {meta.get('nodes')}-node cluster, not {settings.nodes} "
                f"node(s): pass --nodes {meta.get('nodes')}, or use another --data-dir"
            )
            raise BrokerError(msg)
        return str(meta["cluster_id"])
    if not create:
        return None
    cid = "-"
    while cid.startswith("-"):  # as Kafka's Uuid.randomUuid: never starts with a dash
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cluster_id": cid, "nodes": settings.nodes}) + "\n")
    return cid


def server_properties(settings: BrokerSettings, node_id: int) -> dict[str, str]:
    """Broker+controller config of one node, as the strings written to its server.properties."""
    host, cports = settings.host, settings.controller_ports
    voters = ",".join(f"{i}@{host}:{p}" for i, p in zip(settings.node_ids, cports, strict=True))
    listeners = f"PLAINTEXT://{host}:{settings.node_port(node_id)},CONTROLLER://{host}:{cports[node_id - 1]}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if settings.sasl_port:
        listeners += f",SASL_PLAINTEXT://{host}:{settings.sasl_ports[node_id - 1]}"
        protocols += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
    rf = min(settings.nodes, 3)
    isr = max(1, rf - 1)
    props = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "controller.quorum.voters": voters,
        "listeners": listeners,
        "advertised.listeners": listeners,
        "listener.security.protocol.map": protocols,
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "log.dirs": settings.node_dir(node_id).resolve() / "data",
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
    if settings.sasl_port:  # brokers talk PLAINTEXT among themselves; SASL is for clients only
        users = " ".join(f'user_{name}="{password}"' for name, password in settings.sasl_users)
        props |= {
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            ),
        }
    if settings.nodes > 1:  # notice a dead node within seconds, for fault tests
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
    lines = [f"# written by infra/kafka/broker.py for node {node_id}; rewritten on every start"]
    lines += [f"{k}={v}" for k, v in server_properties(settings, node_id).items()]
    (node / "server.properties").write_text("\n".join(lines) + "\n")
    return (node / "server.properties").resolve()


def _jvm(
    java: str, lib: Path, settings: BrokerSettings, node_id: int, heap_mb: int | None = None
) -> list[str]:
    logs = settings.node_dir(node_id).resolve() / "logs"
    heap = [f"-Xms{heap_mb or settings.heap_mb}m", f"-Xmx{heap_mb or settings.heap_mb}m"]
    gc = ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35"]
    gc += ["-XX:+ExplicitGCInvokesConcurrent", f"-XX:ErrorFile={logs}/hs_err_pid%p.log"]
    props = [
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={logs}",
    ]
    return [java, *heap, *gc, *props, "-cp", f"{lib}/*"]  # one argv item: java expands the wildcard


def _format(java: str, lib: Path, settings: BrokerSettings, node_ids: list[int], cluster_id: str) -> None:
    procs = {}
    for i in node_ids:
        cmd = [
            *_jvm(java, lib, settings, i, heap_mb=128),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
        ]
        cmd.append("-g")
        cmd += ["-c", str(_write_properties(settings, i))]
        procs[i] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for i, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            msg = f"formatting the storage of kafka node {i} failed (exit {proc.returncode}):\n{out[-3000:]}"
            raise BrokerError(msg)


def _pid_file(settings: BrokerSettings, node_id: int) -> Path:
    return settings.node_dir(node_id) / "kafka.pid"


def _running_pid(settings: BrokerSettings, node_id: int) -> int | None:
    """Pid of the node's JVM if its pid file names a live process running this node's config."""
    path = _pid_file(settings, node_id)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if process_alive(pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return pid  # no /proc: trust the pid file
        # Empty while exec is under way or once the main thread has ended: not a reused pid.
        props = str((settings.node_dir(node_id) / "server.properties").resolve()).encode()
        if not cmdline.strip(b"\0") or props in cmdline.split(b"\0"):
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
    """Broker ids in a metadata response from ``servers``, or None if none came in time."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": servers, "logger": _QUIET, "socket.timeout.ms": 2000})
    try:
        return set(admin.list_topics(timeout=timeout).brokers)
    except KafkaException:
        return None


def _tail(settings: BrokerSettings, node_id: int, lines: int = 30) -> str:
    node, parts = settings.node_dir(node_id), []
    for name, n in (("logs/server.log", lines), ("console.log", 15)):
        with contextlib.suppress(OSError):
            text = (node / name).read_text(errors="replace").strip().splitlines()[-n:]
            if text:
                parts.append(f"--- {node / name} (last {len(text)} lines) ---\n" + "\n".join(text))
    return "\n".join(parts) or f"(no log in {node})"


def _launch(java: str, lib: Path, settings: BrokerSettings, node_id: int) -> int:
    ports = [settings.node_port(node_id), settings.controller_ports[node_id - 1]]
    ports += [settings.sasl_ports[node_id - 1]] if settings.sasl_port else []
    for port in ports:
        if _port_open(settings.host, port, timeout=0.2):
            msg = f"kafka node {node_id}: {settings.host}:{port} is already in use by another process"
            raise BrokerError(msg)
    props = _write_properties(settings, node_id)
    with open(settings.node_dir(node_id) / "console.log", "ab") as console:
        proc = subprocess.Popen(
            [*_jvm(java, lib, settings, node_id), "kafka.Kafka", str(props)],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the caller's terminal and its Ctrl-C
        )
    _pid_file(settings, node_id).write_text(f"{proc.pid}\n")
    return proc.pid


def _wait_ready(settings: BrokerSettings, node_ids: list[int], servers: str) -> None:
    """Wait until every node of ``node_ids`` is in a metadata response from ``servers``."""
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
                f"(waiting for nodes {node_ids}):\n{_tail(settings, slow[0])}"
            )
            raise BrokerError(msg)
        if all(_port_open(settings.host, settings.node_port(i)) for i in node_ids):
            brokers = _metadata_brokers(servers, timeout=min(5.0, max(left, 0.5)))
            if brokers is not None and set(node_ids) <= brokers:
                return
        time.sleep(0.25)


def up(settings: BrokerSettings) -> str:
    """Start the broker (all nodes) unless it already runs; return the bootstrap servers string.

    Formats the storage on first use (keeping the cluster id in ``data_dir``), starts each node as
    a detached JVM and waits until every node is in a metadata response. Nodes this call started are
    stopped again if start-up fails; the error carries the tail of the node's log.
    """
    servers = bootstrap(settings)
    _cluster_id(settings, create=False)  # refuse a data_dir holding another node count, even if running
    running = {i: _running_pid(settings, i) for i in settings.node_ids}
    if all(running.values()) and all(_port_open(settings.host, p) for p in settings.client_ports):
        brokers = _metadata_brokers(servers, timeout=5)
        if brokers is not None and set(settings.node_ids) <= brokers:
            _write_state(settings)
            return servers
    lib, java = ensure_jars(), _java()
    cluster_id = str(_cluster_id(settings))
    todo = [i for i, pid in running.items() if pid is None]
    unformatted = [i for i in todo if not (settings.node_dir(i) / "data" / "meta.properties").is_file()]
    if unformatted:
        _format(java, lib, settings, unformatted, cluster_id)
    started: list[int] = []
    try:
        for i in todo:
            _launch(java, lib, settings, i)
            started.append(i)
        _wait_ready(settings, list(settings.node_ids), servers)
    except BaseException:
        _stop(settings, started, timeout_s=10, kill=False)
        raise
    _write_state(settings)
    return servers


STATE_FILE = "broker.json"
STATE_KEYS = ("port", "controller_port", "nodes", "heap_mb")


def _write_state(settings: BrokerSettings) -> None:
    """Record in ``data_dir`` how ``up`` started the broker, for ``status`` and ``down`` without options."""
    state = {key: getattr(settings, key) for key in STATE_KEYS}
    path = Path(settings.data_dir) / STATE_FILE
    path.write_text(json.dumps(state, sort_keys=True) + "\n")


def started_with(data_dir: str) -> dict[str, int]:
    """The options ``up`` last started the broker in ``data_dir`` with (empty if none are recorded).

    >>> started_with("/nonexistent")
    {}
    """
    try:
        state = json.loads((Path(data_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict):
        return {}
    return {k: v for k, v in state.items() if k in STATE_KEYS and type(v) is int}


def _known_nodes(settings: BrokerSettings) -> list[int]:
    """Nodes of the cluster in ``data_dir``: configured, listed in cluster.json or with a pid file."""
    ids = set(settings.node_ids)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        ids |= set(
            range(1, int(json.loads((Path(settings.data_dir) / "cluster.json").read_text())["nodes"]) + 1)
        )
    for pid_file in Path(settings.data_dir).glob("node-*/kafka.pid"):
        with contextlib.suppress(ValueError):
            ids.add(int(pid_file.parent.name.removeprefix("node-")))
    return sorted(ids)


def _stop(settings: BrokerSettings, node_ids: list[int], timeout_s: float, kill: bool) -> list[int]:
    """Signal the nodes, wait for them to exit, SIGKILL stragglers; returns the ids that were running.

    A broker's controlled shutdown needs the controller quorum's approval, for which Kafka waits up
    to five minutes. Once a majority of the voters is gone no approval can come, so the remaining
    nodes get ``QUORUM_LOST_GRACE_S`` to finish and are killed after that.
    """
    pids = {i: pid for i in node_ids if (pid := _running_pid(settings, i)) is not None}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    voters = _known_nodes(settings)
    others = [i for i in voters if i not in pids]
    deadline, quorum_lost = time.monotonic() + timeout_s, False
    while any(process_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        alive = sum(map(process_alive, pids.values())) + sum(
            _running_pid(settings, i) is not None for i in others
        )
        if not quorum_lost and alive < len(voters) // 2 + 1:
            quorum_lost, deadline = True, min(deadline, time.monotonic() + QUORUM_LOST_GRACE_S)
        time.sleep(0.1)
    stuck = []
    for i, pid in pids.items():
        if process_alive(pid):
            why = (
                "cannot finish without a controller quorum"
                if quorum_lost
                else f"ignored SIGTERM for {timeout_s}s"
            )
            (log.info if quorum_lost else log.warning)("kafka node %d (pid %d) %s: killing it", i, pid, why)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            end = time.monotonic() + 10
            while process_alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
        if process_alive(pid):
            stuck.append(f"node {i} (pid {pid})")
        else:
            _pid_file(settings, i).unlink(missing_ok=True)
    if stuck:
        msg = f"kafka {', '.join(stuck)} survived SIGKILL"
        raise BrokerError(msg)
    return sorted(pids)


def down(settings: BrokerSettings, timeout_s: float = 30) -> bool:
    """Stop every node of ``data_dir`` (SIGTERM, SIGKILL after ``timeout_s``); True if any was running."""
    return bool(_stop(settings, _known_nodes(settings), timeout_s, kill=False))


def stop_node(settings: BrokerSettings, node_id: int, kill: bool = False) -> bool:
    """Stop one node (SIGKILL at once when ``kill``, else SIGTERM); True if it was running."""
    return bool(_stop(settings, [_check_node(settings, node_id)], timeout_s=30, kill=kill))


def start_node(settings: BrokerSettings, node_id: int) -> str:
    """Start one (formatted) node again and wait until it answers; returns its ``host:port``."""
    servers = f"{settings.host}:{settings.node_port(node_id)}"
    if _running_pid(settings, node_id) is None:
        if not (settings.node_dir(node_id) / "data" / "meta.properties").is_file():
            msg = (
                f"kafka node {node_id} has no formatted storage in {settings.node_dir(node_id)}: run up first"
            )
            raise BrokerError(msg)
        _launch(_java(), ensure_jars(), settings, node_id)
    try:
        _wait_ready(settings, [node_id], servers)
    except BaseException:
        _stop(settings, [node_id], timeout_s=10, kill=False)
        raise
    return servers


def status(settings: BrokerSettings) -> dict[int, dict[str, object]]:
    """Per node id: ``pid`` (or None), ``alive``, ``answering`` (metadata on its own port), ``port``."""
    out: dict[int, dict[str, object]] = {}
    for i in settings.node_ids:
        pid, port = _running_pid(settings, i), settings.node_port(i)
        answering = False
        if pid is not None and _port_open(settings.host, port):
            brokers = _metadata_brokers(f"{settings.host}:{port}", timeout=5)
            answering = brokers is not None and i in brokers
        out[i] = {"pid": pid, "alive": pid is not None, "answering": answering, "port": port}
    return out


# --- command line -----------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    s = _settings(args)
    if not jars_ready():
        print(f"kafka: fetching the Kafka {kafka_version()} jars with mvn (first run only)", file=sys.stderr)
    t0 = time.monotonic()
    servers = up(s)
    nodes = "1 node" if s.nodes == 1 else f"{s.nodes} nodes"
    print(f"kafka: up at {servers} ({nodes}, data {s.data_dir}) in {time.monotonic() - t0:.1f}s")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    s = _settings(args)
    print(f"kafka: {'stopped' if down(s) else 'not running'} (data {s.data_dir})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    s = _settings(args)
    nodes = status(s)
    for i, st in nodes.items():
        where, pid = f"{s.host}:{st['port']}", f"pid {st['pid']}, data {s.data_dir}"
        if st["answering"]:
            print(f"kafka: node {i} up at {where} ({pid})")
        elif st["alive"]:
            print(f"kafka: node {i} running but not answering at {where} ({pid})")
        else:
            print(f"kafka: node {i} not running ({where}, data {s.data_dir})")
    return 0 if all(st["answering"] for st in nodes.values()) else 1


def _settings(args: argparse.Namespace) -> BrokerSettings:
    """The options given; the others as ``up`` last started the broker in ``--data-dir``, else defaults."""
    given = {name: getattr(args, name) for name in STATE_KEYS if getattr(args, name) is not None}
    return BrokerSettings(data_dir=args.data_dir, **{**started_with(args.data_dir), **given})


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (ValueError, BrokerError) as e:  # bad settings exit 2 as argparse does; broker trouble 1
            print(f"kafka: error: {e}", file=sys.stderr)
            return 2 if isinstance(e, ValueError) else 1

    return run


_COMMANDS = (
    ("up", _cmd_up, "start the local Kafka broker (fetching the jars on first use); wait until it answers"),
    ("down", _cmd_down, "stop the local Kafka broker: SIGTERM, then SIGKILL after 30 s"),
    ("status", _cmd_status, "show each node's pid and whether it answers; exit 1 unless all answer"),
)


def configure(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``up``, ``down`` and ``status`` commands to ``subparsers`` (each sets ``func(args)``)."""
    d = BrokerSettings()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=d.data_dir, help=f"cluster directory (default {d.data_dir})")
    last = f"as the last `up` in the data directory ({STATE_FILE}), else"
    common.add_argument("--port", type=int, help=f"client port of node 1 (default: {last} {d.port})")
    common.add_argument(
        "--controller-port",
        type=int,
        help=f"controller port of node 1 (default: {last} {d.controller_port}); node i adds 2*(i-1) to "
        "both ports",
    )
    common.add_argument(
        "--nodes",
        type=int,
        choices=range(1, MAX_NODES + 1),
        metavar="N",
        help=f"nodes, 1..{MAX_NODES}; 3 for fault tests (default: {last} {d.nodes})",
    )
    common.add_argument("--heap-mb", type=int, help=f"JVM heap per node (default: {last} {d.heap_mb})")
    for name, func, text in _COMMANDS:
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
