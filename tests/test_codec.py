"""Codec round trips (hypothesis) and strictness."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import (
    REASONS,
    SCHEMA_VERSION,
    Bar,
    Correlation,
    DeadLetter,
    ExecutionQuality,
    Feature,
    Fill,
    Heartbeat,
    Order,
    OrderEvent,
    RiskEvent,
    SchemaError,
    Signal,
    Tick,
    decode,
    encode,
)
from schemas.ddl import TABLES
from schemas.records import (
    CONTROL_COMMANDS,
    LOOP_MARK,
    ORDER_EVENT_KINDS,
    VENUE_MARK,
    CancelRequest,
    OperatorCommand,
    Protection,
    StepMark,
    VenueBar,
)
from sinks.store_sink import record_columns

finite = st.floats(allow_nan=False, allow_infinity=False)
ints = st.integers(min_value=-(2**53), max_value=2**53)
text = st.text(max_size=20)

RECORDS = st.one_of(
    st.builds(Tick, ints, text, finite, finite, st.sampled_from(["", "buy", "sell"]), text, text),
    st.builds(Bar, text, ints, finite, finite, finite, finite, finite, finite, ints),
    st.builds(Feature, text, ints, finite, finite, finite, finite, finite, finite, st.integers(0, 1)),
    st.builds(Correlation, ints, text, text, finite),
    st.builds(DeadLetter, ints, text, st.sampled_from(REASONS), text, st.binary(max_size=100)),
    st.builds(Signal, ints, text, text, st.sampled_from([-1, 0, 1]), finite, text, finite, finite, text),
    st.builds(RiskEvent, ints, text, st.integers(0, 3), text, finite, finite, text, text),
    st.builds(
        Order, ints, text, text, text, st.sampled_from(["buy", "sell"]), finite, text, finite, text, text
    ),
    st.builds(Fill, ints, text, text, st.sampled_from(["buy", "sell"]), finite, finite, finite, finite),
    st.builds(
        OrderEvent,
        ints,
        text,
        text,
        text,
        st.sampled_from(["buy", "sell"]),
        st.sampled_from(ORDER_EVENT_KINDS),
        finite,
        finite,
        finite,
        text,
        text,
        ints,
        finite,
    ),
    st.builds(Heartbeat, ints, text, ints, ints),
    st.builds(CancelRequest, ints, text, text),
    st.builds(Protection, ints, text, finite, finite, finite),
    st.builds(VenueBar, ints, text, ints, finite, finite, finite, finite, finite, finite, ints, finite),
    st.builds(StepMark, ints, text, st.sampled_from([LOOP_MARK, VENUE_MARK]), ints),
    st.builds(
        OperatorCommand, ints, st.sampled_from(CONTROL_COMMANDS), text.filter(lambda s: s.strip()), text
    ),
    st.builds(
        ExecutionQuality,
        ints,
        text,
        text,
        st.sampled_from(["buy", "sell"]),
        finite,
        finite,
        finite,
        finite,
        finite,
    ),
)


@given(RECORDS)
def test_every_record_type_round_trips(record):
    assert decode(encode(record)) == record


def test_the_schema_version_is_in_every_message():
    assert orjson.loads(encode(Tick(1, "A", 1.0, 1.0)))["v"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.pop("qty"), "missing field"),
        (lambda m: m.update(extra=1), "unknown field"),
        (lambda m: m.update(v=99), "schema version"),
        (lambda m: m.update(price="1.0"), "must be float"),
        (lambda m: m.update(ts=True), "must be int"),
        (lambda m: m.update(type="nope"), "unknown record type"),
    ],
)
def test_decode_is_strict(change, words):
    msg = orjson.loads(encode(Tick(1, "A", 1.0, 1.0)))
    change(msg)
    with pytest.raises(SchemaError, match=words):
        decode(orjson.dumps(msg))


def test_decode_pins_the_type():
    with pytest.raises(SchemaError, match="expected a bar"):
        decode(encode(Tick(1, "A", 1.0, 1.0)), Bar)


def test_an_unknown_order_event_kind_is_a_schema_error():
    event = OrderEvent(1, "o1", "", "A/B", "buy", "filled", 1.0, 1.0, 2.0, "", "paper", 0, 0.0)
    msg = orjson.loads(encode(event))
    msg["kind"] = "exploded"
    with pytest.raises(SchemaError, match="unknown order event kind 'exploded'"):
        decode(orjson.dumps(msg))


@pytest.mark.parametrize(
    ("table", "record"),
    [
        (
            "order_events",
            OrderEvent(1, "o1", "v9", "A/B", "buy", "accepted", 1.0, 0.0, 2.0, "", "paper", 3, 1.0),
        ),
        ("execution_quality", ExecutionQuality(1, "o1", "A/B", "sell", 1.0, 3.0, 4.5, 100.0, 99.955)),
    ],
)
def test_execution_records_have_their_table(table, record):
    """The store writes a record's fields as its table's columns, in the table's order."""
    assert tuple(record_columns(table, [record])) == TABLES[table].column_names
    assert set(TABLES[table].key) <= set(TABLES[table].column_names)
