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
