"""``qbtc record``: live trades from an exchange (ccxt) onto the ticks topic or into a file."""

from __future__ import annotations

import sys
import time

from flows.config import ConfigError, Settings, kafka_client_config
from flows.kafka_flow import KafkaUrl, ensure, topic_names, with_brokers
from schemas.codec import encode
from schemas.records import DeadLetter, Tick
from schemas.validation import symbol_problem
from sinks.kafka_producer import RecordProducer
from sinks.tick_file_writer import TickFileWriter
from sources.exchange_trades import RecordSettings, record


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class TopicTarget:
    """Ticks onto a topic (key = symbol), rejects onto the dead-letters topic."""

    def __init__(self, settings: Settings, topic: str) -> None:
        ensure(settings, topic)
        self.topic = topic
        self.dead_topic = topic_names(settings.kafka)["dead_letters"]
        self.producer = RecordProducer(kafka_client_config(settings.kafka, "producer"))

    def write(self, ticks: list[Tick]) -> None:
        self.producer.produce_many(self.topic, [encode(t) for t in ticks], [t.symbol.encode() for t in ticks])
        self.producer.poll()
        self.producer.check()

    def write_dead(self, dead: list[DeadLetter]) -> None:
        self.producer.produce_many(
            self.dead_topic, [encode(d) for d in dead], [d.source.encode() for d in dead]
        )

    def close(self) -> None:
        self.producer.flush()


def record_command(args, settings: Settings) -> int:
    """Run ``qbtc record`` with parsed arguments; returns the exit code."""
    symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
    for symbol in symbols:  # ccxt-unified, and in input.symbols when that is given
        problem = symbol_problem(symbol, frozenset(settings.input.symbols))
        if problem is not None:
            msg = f"--symbols: {problem}"
            raise ConfigError(msg)
    try:
        rec = RecordSettings(
            exchange=args.exchange,
            symbols=symbols,
            use_websocket=not args.poll,
            max_ticks=args.max_ticks,
            duration_s=args.duration,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.to.startswith("kafka://"):
        url = KafkaUrl.parse(args.to)
        settings = with_brokers(settings, url.brokers)
        target = TopicTarget(settings, url.topic or topic_names(settings.kafka)["ticks"])
        where = f"{target.topic} on {url.brokers}"
    else:
        target = TickFileWriter(args.to)
        where = args.to
    counts = {"dead": 0}

    def dead(letters: list[DeadLetter]) -> None:
        counts["dead"] += len(letters)
        target.write_dead(letters)

    sys.stderr.write(f"qbtc record: {args.exchange} {','.join(symbols)} -> {where} (Ctrl-C stops)\n")
    try:
        n = record(rec, target.write, dead, wall_ms)
    finally:
        target.close()
    sys.stdout.write(f"recorded {n:,} ticks to {where}; {counts['dead']:,} dead letters\n")
    return 0
