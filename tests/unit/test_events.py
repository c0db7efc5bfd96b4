import json

import orjson
import pytest

from models.events import DecodeError, DecodeLimits, decode_message, parse_timestamp

TS = 1_795_428_000_000


def click(**over):
    base = {
        "event_id": "e1",
        "type": "product_view",
        "customer_id": "c1",
        "ts": TS,
        "session_id": "s1",
        "price": 10.0,
        "device": "mobile",
        "unknown_field": [1, 2],
    }
    base.update(over)
    return base


def enc(value):
    return json.dumps(value).encode()


@pytest.mark.parametrize("loads", [json.loads, orjson.loads], ids=["json", "orjson"])
def test_single_event_and_array_decode_with_either_parser(loads):
    one = decode_message("clickstream", enc(click()), b"c1", loads=loads)
    many = decode_message(
        "clickstream", enc([click(event_id="a"), click(event_id="b")]), b"c1", loads=loads
    )
    assert [e.event_id for e in one] == ["e1"]
    assert [e.event_id for e in many] == ["a", "b"]
    assert one[0].kind == "product_view" and one[0].price == 10.0 and one[0].ts == TS


def test_iso_and_epoch_timestamps_agree():
    assert parse_timestamp("2026-11-23T10:00:00Z") == parse_timestamp("2026-11-23T11:00:00+01:00")
    assert parse_timestamp("2026-11-23T10:00:00Z") == TS


def test_purchase_items_become_category_spend():
    value = {
        "event_id": "p",
        "customer_id": "c1",
        "ts": TS,
        "amount": 259.0,
        "items": [{"category": "dresses", "price": 129.5, "quantity": 2}],
    }
    [event] = decode_message("purchases", enc(value), b"c1")
    assert event.kind == "purchase" and event.amount == 259.0
    assert event.items == (("dresses", 259.0),)


def test_identify_keeps_scalar_traits():
    value = {
        "event_id": "i",
        "customer_id": "c1",
        "ts": TS,
        "traits": {"age": 45, "interests": ["fashion"], "income_band": "high"},
    }
    [event] = decode_message("identify", enc(value), b"c1")
    assert event.traits == {"age": 45, "interests": ["fashion"], "income_band": "high"}


BAD = [
    ("clickstream", b"{nope", "not valid JSON"),
    ("clickstream", b"42", "must be a JSON object or array"),
    ("clickstream", b"[]", "empty array"),
    (
        "clickstream",
        enc({k: v for k, v in click().items() if k != "ts"}),
        "missing required field 'ts'",
    ),
    ("clickstream", enc(click(type="teleport")), "type 'teleport' is not one of"),
    ("clickstream", enc(click(ts="yesterday")), "is not ISO 8601"),
    ("clickstream", enc(click(ts="2026-11-23T10:00:00")), "has no UTC offset"),
    ("clickstream", enc(click(ts=1_795_428_000)), "epoch seconds"),
    ("clickstream", enc(click(ts=True)), "timestamp must be"),
    ("clickstream", enc(click(price="cheap")), "price must be a number"),
    ("clickstream", enc(click(price=-1)), "price must not be negative"),
    ("clickstream", enc(click(customer_id="someone-else")), "does not match the message key"),
    ("clickstream", enc(click(event_id="")), "event_id is empty"),
    ("clickstream", enc(click(customer_id={"a": 1})), "customer_id must be a string"),
    ("clickstream", enc([click(), "x"]), "event[1]: event must be a JSON object"),
    (
        "purchases",
        enc({"event_id": "p", "customer_id": "c1", "ts": TS}),
        "missing required field 'amount'",
    ),
    (
        "purchases",
        b'{"event_id":"p","customer_id":"c1","ts":1795428000000,"amount":NaN}',
        "amount must be finite",
    ),
    (
        "purchases",
        enc({"event_id": "p", "customer_id": "c1", "ts": TS, "amount": 1e12}),
        "implausibly large",
    ),
    (
        "identify",
        enc({"event_id": "i", "customer_id": "c1", "ts": TS, "traits": [1]}),
        "traits must be an object",
    ),
    (
        "identify",
        enc({"event_id": "i", "customer_id": "c1", "ts": TS, "traits": {"a": {"b": 1}}}),
        "scalar",
    ),
]


@pytest.mark.parametrize(("source", "value", "reason"), BAD, ids=[b[2][:30] for b in BAD])
def test_each_bad_message_has_a_readable_reason(source, value, reason):
    with pytest.raises(DecodeError) as info:
        decode_message(source, value, b"c1")
    assert reason in info.value.reason


def test_limits_bound_message_size_array_length_and_id_length():
    limits = DecodeLimits(max_message_bytes=500, max_events_per_message=2, max_id_length=10)
    with pytest.raises(DecodeError, match="over the 500 limit"):
        decode_message("clickstream", enc([click()] * 10), b"c1", limits)
    with pytest.raises(DecodeError, match="array holds 3 events"):
        decode_message("clickstream", enc([click()] * 3), b"c1", limits)
    with pytest.raises(DecodeError, match="over the 10 limit"):
        decode_message("clickstream", enc(click(event_id="x" * 11)), b"c1", limits)


def test_unknown_source_is_a_programming_error_not_a_dead_letter():
    with pytest.raises(ValueError, match="unknown source"):
        decode_message("orders", b"{}")


def test_our_contract_is_read_as_before_beside_the_segment_spec():
    # An object with event_id is ours, whatever else it carries (a "type" of a Segment call,
    # a messageId): unknown fields are ignored, as always.
    value = {
        "event_id": "i",
        "customer_id": "c1",
        "ts": TS,
        "type": "identify",
        "messageId": "m",
        "traits": {"plan": "pro"},
    }
    [event] = decode_message("identify", enc(value), b"c1")
    assert (event.event_id, event.kind, event.traits) == ("i", "identify", {"plan": "pro"})
    assert (event.anonymous_id, event.previous_id) == (None, None)  # no identity signals
    purchase = {"event_id": "p", "customer_id": "c1", "ts": TS, "amount": 5, "type": "track"}
    assert decode_message("purchases", enc(purchase), b"c1")[0].amount == 5.0
    # Without event_id, a Segment call's type makes it a Segment message, with its reasons.
    with pytest.raises(DecodeError, match="^track message has no messageId$"):
        decode_message(
            "purchases",
            enc({"type": "track", "event": "Order Completed", "customer_id": "c1"}),
            b"c1",
        )


def test_a_segment_message_on_any_topic():
    value = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m1",
        "userId": "c1",
        "timestamp": "2026-11-23T10:00:00Z",
        "properties": {"revenue": 12.5},
    }
    for source in ("clickstream", "purchases", "identify"):
        [event] = decode_message(source, enc(value), b"c1")
        assert (event.event_id, event.customer_id, event.kind, event.ts, event.amount) == (
            "m1",
            "c1",
            "purchase",
            TS,
            12.5,
        )
