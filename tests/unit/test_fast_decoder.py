"""The worker's fast decoder (msgspec, then the core's decoder for anything unusual) against the
core's own: for every input, the same events or the same reason."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import DecodeError, decode_message
from stream.worker.decoding import FastDecoder

from .test_fuzz_decoder import LIMITS, json_values, payloads, timestamps, weird_text

FAST = FastDecoder(LIMITS, orjson.loads)

ids = st.sampled_from(["e-1", "e-2", " e", "", "   ", "x" * 64, "x" * 65, "é\u0301"]) | weird_text
texts = st.none() | st.sampled_from(["", "mobile", "DE", "s-1", "y" * 65]) | weird_text
amounts = st.none() | st.sampled_from([0, 0.0, -0.0, 1, 19.99, 1e9, 1e9 + 1, -1, 10**20, True])
click = st.fixed_dictionaries(
    {
        "event_id": ids,
        "customer_id": st.sampled_from(["c-1", "c-2"]),
        "ts": timestamps | st.sampled_from([1_795_428_000_000, "2026-11-23T10:00:00+01:00"]),
        "type": st.sampled_from(["page_view", "product_view", "add_to_cart", "buy", "", None]),
    },
    optional={
        "session_id": texts,
        "category": texts,
        "product_id": texts,
        "price": amounts,
        "device": texts,
        "country": texts,
        "channel": texts,
        "page": texts,
    },
)
item = st.fixed_dictionaries(
    {},
    optional={"category": texts, "price": amounts, "quantity": amounts, "product_id": texts},
)
purchase = st.fixed_dictionaries(
    {
        "event_id": ids,
        "customer_id": st.sampled_from(["c-1", "c-2"]),
        "ts": timestamps | st.just(1_795_428_000_000),
        "amount": amounts,
    },
    optional={
        "items": st.none() | st.lists(item | json_values, max_size=4) | json_values,
        "session_id": texts,
        "device": texts,
        "country": texts,
        "channel": texts,
        "currency": texts,
    },
)

# Segment spec messages (RudderStack sends the same): never accepted by msgspec's structs (they
# have no event_id), so the core decodes them; with event_id they are our contract's objects.
spec_ids = st.none() | st.sampled_from(["c-1", "c-2", "", " ", 42, True, "u" * 65]) | weird_text
spec_ts = st.none() | timestamps | st.sampled_from(["2026-11-23T10:00:00.123Z"])
product = st.fixed_dictionaries(
    {},
    optional={
        "product_id": spec_ids,
        "sku": texts,
        "category": texts,
        "price": amounts,
        "quantity": amounts,
    },
)
properties = st.fixed_dictionaries(
    {},
    optional={
        "category": texts,
        "product_id": spec_ids,
        "sku": spec_ids,
        "price": amounts,
        "revenue": amounts,
        "total": amounts,
        "session_id": spec_ids,
        "referrer": texts | st.sampled_from(["$direct", "https://www.google.com/"]),
        "url": texts | st.just("https://shop.example/"),
        "products": st.lists(product | json_values, max_size=3) | json_values,
    },
)
context = st.fixed_dictionaries(
    {},
    optional={
        "device": st.fixed_dictionaries(
            {},
            optional={
                "type": texts | st.sampled_from(["ios", "android", "tablet", "Desktop"]),
                "model": texts | st.just("iPad13,4"),
            },
        )
        | json_values,
        "userAgent": texts | st.sampled_from(["Mozilla/5.0 (iPad)", "x Mobile y", "Android"]),
        "location": st.fixed_dictionaries(
            {}, optional={"country": texts | st.sampled_from(["United States", "de", "UK"])}
        )
        | json_values,
        "locale": texts | st.sampled_from(["en-US", "pt_BR", "zh-Hant-TW", "en"]),
        "campaign": st.fixed_dictionaries({}, optional={"medium": texts, "source": texts})
        | json_values,
        "referrer": st.fixed_dictionaries({}, optional={"type": texts}) | json_values,
        "page": st.fixed_dictionaries(
            {},
            optional={
                "referrer": texts | st.sampled_from(["$direct", "https://t.co/x", "//[bad"]),
                "url": texts | st.just("https://shop.example/"),
            },
        )
        | json_values,
        "sessionId": spec_ids | st.just(1_795_428_000_000),
        "traits": st.dictionaries(weird_text, json_values, max_size=3) | json_values,
    },
)
events = st.sampled_from(
    [
        "Product Viewed",
        "Products Searched",
        "product_added",
        "Product Removed",
        "Checkout Started",
        "ORDER COMPLETED",
        "Signed Up",
        "",
    ]
)
calls = st.sampled_from(["track", "page", "screen", "identify", "alias", "group"])
# Mostly well-formed (so that many map, and the decoders agree on mapped events too) ...
mapped_message = st.fixed_dictionaries(
    {
        "type": calls,
        "messageId": st.sampled_from(["m-1", "m-2", 7]),
        "userId": st.sampled_from(["c-1", None, ""]),
        "anonymousId": st.sampled_from(["a-1", "c-1", None]),
        "timestamp": st.sampled_from(["2026-11-23T10:00:00.123Z", 1_795_428_000_000, None]),
        "event": events,
        "properties": properties,
        "context": context,
    },
    optional={
        "previousId": st.sampled_from(["a-0", "c-1"]),
        "originalTimestamp": spec_ts,
        "traits": st.dictionaries(weird_text, json_values, max_size=4),
        "category": texts,
    },
)
# ... and anything at all in the fields the mapping reads.
hostile_message = st.fixed_dictionaries(
    {
        "type": calls | st.sampled_from(["Track", "search", "", None]),
        "messageId": spec_ids,
    },
    optional={
        "userId": spec_ids,
        "anonymousId": spec_ids,
        "previousId": spec_ids,
        "event": events | json_values,
        "timestamp": spec_ts,
        "originalTimestamp": spec_ts,
        "sentAt": spec_ts,
        "receivedAt": spec_ts,
        "properties": properties | json_values,
        "context": context | json_values,
        "traits": st.dictionaries(weird_text, json_values, max_size=4) | json_values,
        "category": texts,
        "event_id": ids,
        "customer_id": st.sampled_from(["c-1", "c-2"]),
        "ts": timestamps,
        "amount": amounts,
    },
)
spec_message = mapped_message | hostile_message
spec_payloads = (
    spec_message
    | st.lists(spec_message | click | purchase, min_size=1, max_size=4)
    | st.fixed_dictionaries(
        {"batch": st.lists(spec_message | click, max_size=4) | json_values},
        optional={"sentAt": spec_ts, "context": context | json_values, "event_id": ids},
    )
)


def outcome(decode: Any, source: str, raw: bytes, key: bytes | None) -> Any:
    try:
        return [tuple(e) for e in decode(source, raw, key)]
    except DecodeError as exc:
        return exc.reason


def same(source: str, raw: bytes, key: bytes | None) -> None:
    core = outcome(lambda s, r, k: decode_message(s, r, k, LIMITS, orjson.loads), source, raw, key)
    assert outcome(FAST, source, raw, key) == core


CASES = settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@CASES
@given(st.lists(click, min_size=1, max_size=4) | click, st.sampled_from([None, b"c-1"]))
def test_clicks_decode_alike(payload, key):
    same("clickstream", json.dumps(payload).encode(), key)


@CASES
@given(st.lists(purchase, min_size=1, max_size=3) | purchase, st.sampled_from([None, b"c-1"]))
def test_purchases_decode_alike(payload, key):
    same("purchases", json.dumps(payload).encode(), key)


@CASES
@given(st.sampled_from(["clickstream", "purchases", "identify"]), payloads, st.just(b"c-1"))
def test_garbage_is_refused_alike(source, payload, key):
    same(source, json.dumps(payload, allow_nan=True).encode(), key)


@CASES
@given(st.sampled_from(["clickstream", "purchases", "identify"]), spec_payloads)
def test_segment_spec_messages_decode_alike(source, payload):
    for key in (None, b"c-1", b"c-2"):
        same(source, json.dumps(payload).encode(), key)


def test_segment_spec_fixtures_decode_alike():
    """A spec message that maps decodes alike on each topic (the generated ones rarely map)."""
    track = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-1",
        "userId": "c-1",
        "anonymousId": "a-1",
        "timestamp": "2026-11-23T10:00:00.123Z",
        "properties": {"revenue": 25.0, "products": [{"category": "Games", "price": 19}]},
        "context": {"device": {"type": "ios"}, "locale": "en-US", "sessionId": 1795428000000},
    }
    page = {**track, "type": "page", "properties": {"category": "Docs"}, "messageId": "m-2"}
    ours = {
        "event_id": "e",
        "type": "search",
        "customer_id": "c-1",
        "ts": 1_795_428_000_000,
        "amount": 5,
    }
    for payload in (track, page, [track, page], [ours, track], {"batch": [track, page]}):
        for source in ("clickstream", "purchases", "identify"):
            raw = json.dumps(payload).encode()
            assert outcome(FAST, source, raw, b"c-1") != outcome(FAST, source, raw, b"c-2")
            assert isinstance(outcome(FAST, source, raw, b"c-1"), list)
            same(source, raw, b"c-1")


def test_raw_oddities_alike():
    for raw in [
        b"",
        b"[]",
        b"{}",
        b"null",
        b'{"event_id":"e","type":"search","customer_id":"c-1","ts":1795428000000,"ts":5}',
        b'{"event_id":"e","type":"search","customer_id":"c-1","ts":1795428000000}  ',
        b'{"event_id":"\\ud800","type":"search","customer_id":"c-1","ts":1795428000000}',
        b'{"event_id":"e","type":"search","customer_id":"c-1","ts":1795428000000,"price":1e400}',
        b'{"event_id":1,"type":"search","customer_id":"c-1","ts":1795428000000}',
    ]:
        for source in ("clickstream", "purchases"):
            same(source, raw, b"c-1")
            same(source, raw, None)
