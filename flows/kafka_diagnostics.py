"""librdkafka's log lines and errors in Python logging; the first security failure kept to name it.

A librdkafka client without a ``logger`` prints its own log lines on stderr
from its threads: a wrong password shows as one ``SASL authentication
error`` line every 300 ms, and the command then fails on a timeout that
names no cause. ``flows.config.kafka_client_config`` gives every client
``logger=LIBRDKAFKA`` and ``error_cb=on_error``: the lines go to the
``qbtc.librdkafka`` logger (silent unless the program configures logging),
and the first authentication or TLS failure is kept (:func:`security_problem`).
:func:`check_cluster` fails fast with it before a command starts, and the
command line names it when a Kafka operation fails later.

Both callbacks run when a client is polled (``poll``, ``consume``,
``flush``); an ``AdminClient`` that is never polled serves neither, which is
why :func:`check_cluster` polls its own.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from schemas.errors import OutsideFailure

LIBRDKAFKA = logging.getLogger("qbtc.librdkafka")
"""Where librdkafka's log lines go (the library convention: no output unless configured)."""
LIBRDKAFKA.addHandler(logging.NullHandler())

_SECURITY_CODES = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}
_SECURITY_WORDS = ("SASL", "SSL", "security.protocol", "authentication")


class ClusterAccessError(OutsideFailure):
    """The cluster refused this client: credentials, TLS or the security protocol."""


class ClusterUnreachable(OutsideFailure):
    """No broker of the bootstrap list answered in ``kafka.timeout_s``."""


class _ProblemWatch(logging.Handler):
    """Keeps the first security failure and the latest warning of librdkafka's log lines and errors."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None
        self.last: str | None = None
        self._lock = threading.Lock()

    def keep(self, text: str, security: bool) -> None:
        with self._lock:
            self.last = text
            if security and self.first is None:
                self.first = text

    def emit(self, record: logging.LogRecord) -> None:
        # "FAIL [rdkafka#producer-1] [thrd:...]: sasl_plaintext://h:p/bootstrap: SASL authentication ..."
        text = record.getMessage().split("]: ", 1)[-1]
        if not text.startswith("_ALL_BROKERS_DOWN"):  # a count that hides the reason
            self.keep(text, any(w in text for w in _SECURITY_WORDS))


_WATCH = _ProblemWatch()
LIBRDKAFKA.addHandler(_WATCH)


def _is_security(err: KafkaError) -> bool:
    return err.code() in _SECURITY_CODES or any(w in err.str() for w in _SECURITY_WORDS)


def on_error(err: KafkaError) -> None:
    """librdkafka's ``error_cb``: keep a security failure, log every error."""
    if _is_security(err):
        _WATCH.keep(err.str(), security=True)
    LIBRDKAFKA.log(logging.ERROR if err.fatal() else logging.WARNING, "%s: %s", err.name(), err.str())


def security_problem() -> str | None:
    """The first authentication/TLS failure any client of this process saw (None: none)."""
    return _WATCH.first


def last_problem() -> str | None:
    """The latest warning or error of any client of this process (None: none)."""
    return _WATCH.last


def _short(problem: str | None) -> str:
    """``; REASON`` from a client error such as ``...: Connect to ipv4#h:1 failed: Connection refused (after
    0ms in state CONNECT)``, or nothing.

    >>> _short("_TRANSPORT: h:1/bootstrap: Connect to ipv4#h:1 failed: Connection refused (after 0ms)")
    '; Connection refused'
    """
    if not problem:
        return ""
    return "; " + problem.rsplit("failed: ", 1)[-1].split(" (after ", 1)[0]


def check_cluster(conf: dict, timeout_s: float) -> None:
    """Ask the cluster for metadata with ``conf``; return once it answers.

    Raises :class:`ClusterAccessError` on a security failure (at once) and
    :class:`ClusterUnreachable`, naming the bootstrap servers and the
    clients' latest complaint, when nothing answered in ``timeout_s``.
    """
    refused: list[str] = []

    def error_cb(err: KafkaError) -> None:
        on_error(err)
        if _is_security(err):
            refused.append(err.str())

    admin = AdminClient(dict(conf) | {"logger": LIBRDKAFKA, "error_cb": error_cb})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(0.5, max(0.05, deadline - time.monotonic())))
            return
        except KafkaException:
            pass
        admin.poll(0)  # serves error_cb and the log lines
        if refused:
            msg = f"cannot use the Kafka cluster at {conf.get('bootstrap.servers', '')}: {refused[0]}"
            raise ClusterAccessError(msg)
        if time.monotonic() >= deadline:
            servers = conf.get("bootstrap.servers", "")
            why = _short(last_problem())
            msg = (
                f"no Kafka broker answered at {servers} in {timeout_s:g} s (kafka.timeout_s{why}): "
                "start one (qbtc kafka up) or give the right --kafka HOST:PORT"
            )
            raise ClusterUnreachable(msg)
