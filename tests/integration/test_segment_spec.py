"""The Segment spec, as RudderStack's Kafka destination sends it (JSON keyed by userId, else
anonymousId), through a worker on a real Tansu broker and a real redis-server: on one topic for
everything, or routed by type to our three topics; as single messages, a JSON array and the
batch shape. The records' canonical value features are checked exactly, and the messages that
do not map are in ``dead-letters`` with their reasons."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson
import pytest

from stream.kafka import make_producer, read_topic

from .conftest import Workers, make_settings, wait_until

pytestmark = pytest.mark.integration


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# RudderStack's JavaScript SDK on a phone (context.sessionId: the session's start, epoch ms)
# and analytics.js on a desktop with a campaign, both from the published spec's shapes.
PHONE = {
    "library": {"name": "RudderLabs JavaScript SDK", "version": "2.48.1"},
    "locale": "en-US",
    "page": {"referrer": "$direct", "url": "https://shop.example/", "title": "Shop"},
    "sessionId": 1791532800000,
    "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
}
DESKTOP = {
    "library": {"name": "analytics.js", "version": "2.11.1"},
    "campaign": {"name": "Autumn", "source": "Newsletter", "medium": "email"},
    "location": {"city": "Berlin", "country": "Germany"},
    "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/116",
}
GAME = {"product_id": "507f1f77bcf86cd799439011", "sku": "G-32", "category": "Games"}


def spec(call: str, message_id: str, at: str, user: str | None, anon: str | None, **fields: Any):
    out: dict[str, Any] = {
        "type": call,
        "messageId": message_id,
        "channel": "web",
        "context": PHONE,
        "integrations": {"All": True},
        "originalTimestamp": at,
        "sentAt": at,
        "receivedAt": at,
        "timestamp": at,
        "rudderId": "b2b6a1a5-0c4c-4d2f-a9bd-0a8b1a7c5d3e",
    }
    if user is not None:
        out["userId"] = user
    if anon is not None:
        out["anonymousId"] = anon
    out.update(fields)
    return out


def track(event: str, message_id: str, at: str, user: str | None, anon: str | None, **props):
    return spec("track", message_id, at, user, anon, event=event, properties=props)


def key_of(value: Any) -> str:
    """RudderStack's Kafka destination key: userId, else anonymousId."""
    first = value["batch"][0] if isinstance(value, dict) and "batch" in value else value
    first = first[0] if isinstance(first, list) else first
    return str(first.get("userId") or first.get("anonymousId"))


ORDER = {
    "order_id": "50314b8e9bcf000000000000",
    "total": 27.5,
    "revenue": 25.0,
    "currency": "USD",
    "products": [
        {**GAME, "price": 19, "quantity": 1},
        {"product_id": "505bd76785ebb509fc183733", "category": "Cards", "price": 3, "quantity": 2},
    ],
}

# One shop sends everything to one topic (clickstream): customer u-one.
ONE_TOPIC = [
    spec("page", "one-1", "2026-10-01T08:00:00.000Z", "u-one", "anon-one", properties={}),
    track("Product Viewed", "one-2", "2026-10-01T08:01:00.000Z", "u-one", "anon-one", **GAME),
    track("Product Added", "one-3", "2026-10-01T08:02:00.000Z", "u-one", "anon-one", **GAME),
    track("Checkout Started", "one-4", "2026-10-01T08:03:00.000Z", "u-one", "anon-one", **ORDER),
    track("Order Completed", "one-5", "2026-10-01T08:04:00.000Z", "u-one", "anon-one", **ORDER),
    # the collector's retry of the same message: counted once
    track("Order Completed", "one-5", "2026-10-01T08:04:00.000Z", "u-one", "anon-one", **ORDER),
    spec(
        "identify",
        "one-6",
        "2026-10-01T08:05:00.000Z",
        "u-one",
        "anon-one",
        traits={"plan": "pro", "address": {"city": "Boston", "country": "US"}},
    ),
]
# Another routes by type: tracks and pages to clickstream, orders to purchases, identify and
# alias to identify. A visitor browses as anon-r, then logs in as u-routed.
ROUTED = [
    ("clickstream", spec("page", "r-1", "2026-10-02T09:00:00Z", None, "anon-r", properties={})),
    ("identify", spec("identify", "r-2", "2026-10-02T09:30:00Z", "u-routed", "anon-r", traits={})),
    (
        "identify",
        spec("alias", "r-3", "2026-10-02T09:31:00Z", "u-routed", "anon-r", previousId="anon-r"),
    ),
    (
        "clickstream",
        track("Product Viewed", "r-4", "2026-10-02T10:00:00Z", "u-routed", "anon-r", price=40.0),
    ),
    (
        "purchases",
        track("Order Completed", "r-5", "2026-10-02T10:05:00Z", "u-routed", "anon-r", total=40.0),
    ),
    (
        "purchases",
        {
            **track(
                "Order Completed",
                "r-6",
                "2026-10-02T11:00:00Z",
                "u-routed",
                None,
                products=[{"category": "Games", "price": 10, "quantity": 3}, {"price": 2.5}],
            ),
            "context": DESKTOP,
        },
    ),
]
# The batch shape (shared context and sentAt) and a JSON array.
BATCH = {
    "batch": [
        {
            **track("Product Viewed", "b-1", "2026-10-03T12:00:00Z", "u-batch", None, **GAME),
            "context": {},
        },
        {
            k: v
            for k, v in track("Order Completed", "b-2", "x", "u-batch", None, revenue=99.99).items()
            if k not in ("timestamp", "originalTimestamp", "sentAt", "receivedAt", "context")
        },
    ],
    "context": DESKTOP,
    "sentAt": "2026-10-03T12:10:00Z",
}
ARRAY = [
    spec("page", "a-1", "2026-10-04T07:00:00Z", None, "anon-arr", properties={}),
    {
        **track("Order Completed", "a-2", "2026-10-04T07:30:00Z", None, "anon-arr", total=15.0),
        "timestamp": None,
    },
]
GOOD: list[tuple[str, Any]] = [
    *(("clickstream", value) for value in ONE_TOPIC),
    *ROUTED,
    ("purchases", BATCH),
    ("clickstream", ARRAY),
]
EVENTS = len(ONE_TOPIC) + len(ROUTED) + 2 + 2  # decoded, the retry included

EXPECTED = {
    "u-one": {
        "orders_total": 1,
        "revenue_total": 25.0,
        "first_seen_ts": ms("2026-10-01T08:00:00Z"),
        "last_seen_ts": ms("2026-10-01T08:05:00Z"),
        "last_purchase_ts": ms("2026-10-01T08:04:00Z"),
    },
    # anon-r's page view is merged into u-routed when the identify names both (stitching)
    "u-routed": {
        "orders_total": 2,
        "revenue_total": 40.0 + 32.5,
        "first_seen_ts": ms("2026-10-02T09:00:00Z"),
        "last_seen_ts": ms("2026-10-02T11:00:00Z"),
        "last_purchase_ts": ms("2026-10-02T11:00:00Z"),
    },
    "u-batch": {
        "orders_total": 1,
        "revenue_total": 99.99,
        "first_seen_ts": ms("2026-10-03T12:00:00Z"),
        "last_seen_ts": ms("2026-10-03T12:10:00Z"),
        "last_purchase_ts": ms("2026-10-03T12:10:00Z"),
    },
    "anon-arr": {
        "orders_total": 1,
        "revenue_total": 15.0,
        "first_seen_ts": ms("2026-10-04T07:00:00Z"),
        "last_seen_ts": ms("2026-10-04T07:30:00Z"),
        "last_purchase_ts": ms("2026-10-04T07:30:00Z"),
    },
}

KEYED = "(a Segment/RudderStack message is keyed by userId, else anonymousId)"
BAD: list[tuple[str, str, Any, str]] = [
    (
        "clickstream",
        "u-one",
        track("Signed Up", "x-1", "2026-10-01T08:06:00Z", "u-one", "anon-one"),
        "track event 'Signed Up' does not map to a segmenter event",
    ),
    (
        "identify",
        "u-group",
        spec("group", "x-2", "2026-10-01T08:06:00Z", "u-group", None, groupId="g-1"),
        "group call does not map to a segmenter event (accounts are not kept)",
    ),
    (
        "purchases",
        "anon-x",  # keyed by the anonymous id although the message has a userId
        track("Order Completed", "x-3", "2026-10-01T08:06:00Z", "u-x", "anon-x", revenue=5.0),
        f"userId 'u-x' does not match the message key 'anon-x' {KEYED}",
    ),
    (
        "purchases",
        "u-nomid",
        {
            k: v
            for k, v in track(
                "Order Completed", "x", "2026-10-01T08:06:00Z", "u-nomid", None, revenue=5.0
            ).items()
            if k != "messageId"
        },
        "track message has no messageId",
    ),
    (
        "clickstream",
        "u-noamount",
        track("Order Completed", "x-5", "2026-10-01T08:06:00Z", "u-noamount", None),
        "track event 'Order Completed' has no properties.revenue, properties.total "
        "or properties.products",
    ),
    (
        "identify",
        "u-badbatch",
        {
            "batch": [
                track("Products Searched", "x-6", "2026-10-01T08:06:00Z", "u-badbatch", None),
                track("Cart Viewed", "x-7", "2026-10-01T08:07:00Z", "u-badbatch", None),
            ]
        },
        "batch[1]: track event 'Cart Viewed' does not map to a segmenter event",
    ),
]


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):  # type: ignore[no-untyped-def]
    settings = make_settings(stack)
    workers = Workers(settings, tmp_path_factory.mktemp("logs"))
    workers.start(1)
    producer = make_producer(settings)
    try:
        for topic, value in GOOD:
            producer.send(settings.topic(topic), key=key_of(value), value=orjson.dumps(value))
        for topic, key, value, _ in BAD:
            producer.send(settings.topic(topic), key=key, value=orjson.dumps(value))
        producer.flush()
    finally:
        producer.close()

    def done() -> bool:
        workers.check_alive()
        s = workers.client.stats()
        routed = workers.client.get("u-routed")
        merged = routed is not None and routed["features"]["first_seen_ts"] == ms(
            "2026-10-02T09:00:00Z"
        )
        return s.get("events", 0) >= EVENTS and s.get("dead_letters", 0) >= len(BAD) and merged

    try:
        wait_until(done, 120, f"{EVENTS} events and {len(BAD)} dead letters to be processed")
        yield settings, workers
    except BaseException:
        print(workers.log("w0"))
        raise
    finally:
        workers.stop()


def test_the_keys_are_rudderstacks():
    assert [key_of(v) for _, v in ROUTED] == ["anon-r"] + ["u-routed"] * 5
    assert (key_of(BATCH), key_of(ARRAY)) == ("u-batch", "anon-arr")


def test_records_have_exactly_the_canonical_value_features(run):
    settings, workers = run
    assert workers.client.stats()["events"] == EVENTS
    for customer_id, expected in EXPECTED.items():
        record = workers.client.get(customer_id)
        assert record is not None, customer_id
        got = {name: record["features"][name] for name in expected}
        assert got == {**expected, "revenue_total": pytest.approx(expected["revenue_total"])}
        assert record["event_ts"] == expected["last_seen_ts"]
    assert {r["customer_id"] for r in workers.client.iter_records()} == set(EXPECTED)
    # The anonymous ids read as the customers they were merged into.
    assert workers.client.get("anon-r")["customer_id"] == "u-routed"  # type: ignore[index]
    assert workers.client.get("anon-one")["customer_id"] == "u-one"  # type: ignore[index]


def test_context_and_properties_reach_the_features(run):
    _, workers = run
    one = workers.client.get("u-one")
    assert one is not None
    features = one["features"]
    assert (features["primary_device"], features["country"], features["channel"]) == (
        "mobile",
        "US",
        "direct",
    )
    assert (features["sessions"], features["page_views"], features["product_views"]) == (1, 1, 1)
    assert (features["cart_adds"], features["top_spend_categories"][0]) == (1, "Games")
    assert one["traits"] == {"plan": "pro", "address.city": "Boston", "address.country": "US"}
    routed = workers.client.get("u-routed")
    assert routed is not None
    assert routed["features"]["country"] == "DE"  # the newest event's: the desktop order's
    batch = workers.client.get("u-batch")
    assert batch is not None  # the batch's shared context
    assert (batch["features"]["primary_device"], batch["features"]["country"]) == ("desktop", "DE")
    assert batch["features"]["channel"] == "email"


def test_messages_that_do_not_map_are_dead_letters_with_their_reasons(run):
    settings, _ = run
    topic = settings.topic("dead-letters")
    letters = wait_until(
        lambda: (ls := [v for _, v in read_topic(settings, topic)]) and len(ls) >= len(BAD) and ls,
        30,
        "the dead letters",
    )
    assert len(letters) == len(BAD)  # none of the good messages
    by_value = {base64.b64decode(letter["value_b64"]): letter for letter in letters}
    for source, key, value, reason in BAD:
        letter = by_value[orjson.dumps(value)]
        assert letter["reason"] == reason
        assert letter["topic"] == settings.topic(source)
        assert base64.b64decode(letter["value_b64"]) == orjson.dumps(value)
        assert letter["key"] == key
