"""qbtc's topic topology, created idempotently on a Kafka cluster.

``ticks`` carries trade ticks keyed by symbol (so one symbol's ticks stay in
order in one partition); ``bars``, ``features``, ``correlations`` and
``dead-letters`` carry the flows' output records, and ``signals``,
``risk-events``, ``orders``, ``fills``, ``portfolio`` and ``model-metrics`` the trading loop's
(``var-backtests`` both: per symbol and for the book), ``strategy-updates`` and
``targets`` its upper decision levels' (L4 and L3); ``order-events``
is the execution service's (``qbtc execute``, issue 12; the loop's
heartbeats are to travel on ``orders``); ``control`` carries operator
commands (``qbtc control --kafka``) to every loop and execution service.
Values are the codec's orjson records with the schema version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.errors import OutsideFailure, UsageProblem

OUTPUT_TABLES = {
    "bars": "bars",
    "features": "features",
    "correlations": "correlations",
    "dead_letters": "dead-letters",
    "signals": "signals",
    "risk_events": "risk-events",
    "orders": "orders",
    "fills": "fills",
    "order_events": "order-events",
    "execution_quality": "execution-quality",
    "var_backtests": "var-backtests",
    "portfolio": "portfolio",
    "model_metrics": "model-metrics",
    "strategy_updates": "strategy-updates",
    "targets": "targets",
}
"""Output topic name (before the prefix) of each store table."""

CONTROL_TOPIC = "control"
"""Operator commands (``qbtc control --kafka``) for every loop and execution service: written by
the command line only, never by a flow's sink (so it has no store table)."""


class TopicError(OutsideFailure):
    """A topic that cannot be created or read."""


class MissingTopic(UsageProblem):
    """A topic to read that is not on the cluster (a typo in ``kafka://BROKERS/TOPIC``): exit code 2."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int


def topology(prefix: str, partitions: int, replication: int) -> list[TopicSpec]:
    """Every qbtc topic with its partitions and replication.

    >>> [t.name for t in topology("t-", 4, 1)][:5]
    ['t-ticks', 't-bars', 't-features', 't-correlations', 't-dead-letters']
    >>> [t.name for t in topology("t-", 4, 1)][5:10]
    ['t-signals', 't-risk-events', 't-orders', 't-fills', 't-order-events']
    >>> [t.name for t in topology("t-", 4, 1)][10:]  # doctest: +NORMALIZE_WHITESPACE
    ['t-execution-quality', 't-var-backtests', 't-portfolio', 't-model-metrics',
     't-strategy-updates', 't-targets', 't-control']
    """
    names = ["ticks", *OUTPUT_TABLES.values(), CONTROL_TOPIC]
    return [TopicSpec(prefix + n, partitions, replication) for n in names]


def ensure_topics(admin_conf: dict, specs: list[TopicSpec], timeout_s: float = 30.0) -> dict[str, str]:
    """Create the topics that do not exist; returns name -> ``created`` or ``exists``.

    An existing topic is left as it is (its partition count included).
    """
    admin = AdminClient(admin_conf)
    try:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication) for s in specs], operation_timeout=timeout_s
        )
    except KafkaException as exc:
        msg = f"cannot create topics: {exc}"
        raise TopicError(msg) from None
    out = {}
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            out[name] = "created"
        except TimeoutError:
            msg = f"cannot create topic {name!r}: no answer from the cluster in {timeout_s:.0f} s"
            raise TopicError(msg) from None
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                out[name] = "exists"
                continue
            msg = f"cannot create topic {name!r}: {err.str() if isinstance(err, KafkaError) else exc}"
            raise TopicError(msg) from None
    _wait_for_leaders(admin, [n for n, state in out.items() if state == "created"], timeout_s)
    return out


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Return once every partition of the new topics has a leader (clients may use them)."""
    deadline = time.monotonic() + timeout_s
    while names:
        try:
            meta = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException:
            meta = None
        if meta is not None:
            names = [
                n
                for n in names
                if n not in meta.topics
                or not meta.topics[n].partitions
                or any(p.leader < 0 for p in meta.topics[n].partitions.values())
            ]
        if not names:
            return
        if time.monotonic() > deadline:
            msg = f"topics {', '.join(names)} have no leader after {timeout_s:.0f} s"
            raise TopicError(msg)
        time.sleep(0.1)


def describe(admin_conf: dict, names: list[str], timeout_s: float = 15.0) -> dict[str, int]:
    """Partition count of each existing topic among ``names``."""
    admin = AdminClient(admin_conf)
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        msg = f"cannot reach the cluster: {exc}"
        raise TopicError(msg) from None
    return {n: len(meta.topics[n].partitions) for n in names if n in meta.topics}


def require_topic(admin_conf: dict, name: str, timeout_s: float = 15.0) -> None:
    """Raise :class:`MissingTopic` when topic ``name`` does not exist (a read never creates it)."""
    if name not in describe(admin_conf, [name], timeout_s):
        msg = f"topic {name} does not exist on {admin_conf.get('bootstrap.servers', '')}"
        raise MissingTopic(msg)
