"""The Segment spec (RudderStack sends the same) on our input topics: every call mapped to our
events field by field, from fixtures written after the published spec (common fields, track,
page, screen, identify, alias, the e-commerce v2 events), and every message that does not map
refused with its reason."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import orjson
import pytest

from models.events import (
    SOURCES,
    SPEC_TRACK_EVENTS,
    DecodeError,
    DecodeLimits,
    Event,
    decode_message,
    parse_timestamp,
)
from models.schedule import DueSchedule
from models.segments import SegmentCatalog
from models.step import SegmentStep, SourceMessage
from stream.worker.decoding import FastDecoder

USER = "97980cfea0067"
ANON = "507f191e810c19729de860ea"
LIMITS = DecodeLimits()
FAST = FastDecoder(LIMITS, orjson.loads)

# The spec's common fields, as a browser (analytics.js) sends them for a known user who had
# browsed anonymously: userId and anonymousId, the campaign of the landing URL, a location.
BROWSER_CONTEXT: dict[str, Any] = {
    "active": True,
    "campaign": {
        "name": "TPS Innovation Newsletter",
        "source": "Newsletter",
        "medium": "email",
        "term": "tps reports",
        "content": "image link",
    },
    "ip": "8.8.8.8",
    "library": {"name": "analytics.js", "version": "2.11.1"},
    "locale": "en-US",
    "location": {"city": "San Francisco", "country": "United States"},
    "page": {
        "path": "/academy/",
        "referrer": "",
        "search": "",
        "title": "Analytics Academy",
        "url": "https://segment.com/academy/",
    },
    "timezone": "Europe/Amsterdam",
    "userAgent": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_12_6) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/61.0.3163.100 Safari/537.36"
    ),
}
# A mobile library's context: device.type "ios", no campaign.
IOS_CONTEXT: dict[str, Any] = {
    "app": {"name": "InitechGlobal", "version": "545", "build": "3.0.1.545"},
    "device": {
        "id": "B5372DB0-C21E-11E4-8DFC-AA07A5B093DB",
        "manufacturer": "Apple",
        "model": "iPhone7,2",
        "name": "maguro",
        "type": "ios",
    },
    "library": {"name": "analytics-ios", "version": "4.1.0"},
    "locale": "de-DE",
    "network": {"bluetooth": False, "carrier": "T-Mobile US", "cellular": True, "wifi": False},
    "os": {"name": "iPhone OS", "version": "8.1.3"},
    "screen": {"width": 320, "height": 568, "density": 2},
}
# RudderStack's JavaScript SDK: context.sessionId (epoch ms of the session's start), and
# "$direct" as the referrer of a visit without one.
RUDDER_CONTEXT: dict[str, Any] = {
    "app": {"name": "RudderLabs JavaScript SDK", "namespace": "com.rudderlabs.javascript"},
    "library": {"name": "RudderLabs JavaScript SDK", "version": "2.48.1"},
    "locale": "fr-FR",
    "page": {
        "path": "/",
        "referrer": "$direct",
        "referring_domain": "",
        "title": "Shop",
        "url": "https://shop.example/",
        "initial_referrer": "$direct",
    },
    "screen": {"density": 2, "width": 1680, "height": 1050},
    "sessionId": 1795428000000,
    "sessionStart": True,
    "traits": {},
    "userAgent": (
        "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/116.0.0.0 Mobile Safari/537.36"
    ),
}

T = "2026-11-23T10:00:00.111Z"
TS = parse_timestamp(T)


def message(call: str, message_id: str, context: dict[str, Any] | None = None, **fields: Any):
    """One spec message with the common fields (timestamps as a library sends them)."""
    out: dict[str, Any] = {
        "anonymousId": ANON,
        "channel": "browser",
        "context": copy.deepcopy(BROWSER_CONTEXT if context is None else context),
        "integrations": {"All": True},
        "messageId": message_id,
        "originalTimestamp": "2026-11-23T09:59:59.950Z",
        "receivedAt": "2026-11-23T10:00:00.300Z",
        "sentAt": "2026-11-23T10:00:00.000Z",
        "timestamp": T,
        "type": call,
        "userId": USER,
        "version": 2,
    }
    out.update(fields)
    return out


def track(event: str, message_id: str, properties: dict[str, Any], **fields: Any):
    return message("track", message_id, event=event, properties=properties, **fields)


PRODUCT = {
    "product_id": "507f1f77bcf86cd799439011",
    "sku": "G-32",
    "category": "Games",
    "name": "Monopoly: 3rd Edition",
    "brand": "Hasbro",
    "variant": "200 pieces",
    "price": 18.99,
    "quantity": 1,
    "coupon": "MAYDEALS",
    "currency": "usd",
    "position": 3,
    "value": 18.99,
    "url": "https://www.example.com/product/path",
    "image_url": "https://www.example.com/product/path.jpg",
}
ORDER_PRODUCTS = [
    {
        "product_id": "507f1f77bcf86cd799439011",
        "sku": "45790-32",
        "name": "Monopoly: 3rd Edition",
        "price": 19,
        "quantity": 1,
        "category": "Games",
    },
    {
        "product_id": "505bd76785ebb509fc183733",
        "sku": "46493-32",
        "name": "Uno Card Game",
        "price": 3,
        "quantity": 2,
        "category": "Cards",
    },
]
ORDER = {
    "checkout_id": "fksdjfsdjfisjf9sdfjsd9f",
    "order_id": "50314b8e9bcf000000000000",
    "affiliation": "Google Store",
    "total": 27.50,
    "subtotal": 22.50,
    "revenue": 25.00,
    "shipping": 3,
    "tax": 2,
    "discount": 2.5,
    "coupon": "hasbros",
    "currency": "USD",
    "products": ORDER_PRODUCTS,
}
# What the browser context maps to, on every click and purchase.
BROWSER = {"device": "desktop", "country": "US", "channel": "email", "anonymous_id": ANON}


def decode(value: Any, key: str = USER, source: str = "clickstream") -> list[Event]:
    """Decode with the core's decoder; the worker's fast decoder must say the same."""
    raw = json.dumps(value).encode()
    events = decode_message(source, raw, key.encode(), LIMITS, orjson.loads)
    assert FAST(source, raw, key.encode()) == events
    return events


def one(value: Any, key: str = USER) -> Event:
    """The one event a message decodes to, the same on every input topic."""
    found = {source: decode(value, key, source) for source in SOURCES}
    assert found["purchases"] == found["identify"] == found["clickstream"]
    [event] = found["clickstream"]
    return event


def refused(value: Any, key: str = USER, source: str = "clickstream") -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    with pytest.raises(DecodeError) as info:
        decode_message(source, raw, key.encode(), LIMITS, orjson.loads)
    with pytest.raises(DecodeError) as fast:
        FAST(source, raw, key.encode())
    assert fast.value.reason == info.value.reason
    return info.value.reason


# -- each call, mapped field by field ------------------------------------------------------


def test_page_is_a_page_view():
    value = message(
        "page",
        "ajs-f8ca1e4de5024d9430b3928bd8ac6b96",
        name="Home",
        category="Docs",
        properties={"title": "Welcome | Initech", "url": "http://www.initech.com"},
    )
    assert one(value) == Event(
        "ajs-f8ca1e4de5024d9430b3928bd8ac6b96", USER, "page_view", TS, category="Docs", **BROWSER
    )
    # properties.category wins over the call's own category
    value["properties"]["category"] = "Academy"
    assert one(value).category == "Academy"


def test_screen_is_a_page_view_with_the_mobile_device():
    value = message("screen", "s-1", IOS_CONTEXT, name="Home", properties={"variation": "blue"})
    del value["userId"]
    assert one(value, ANON) == Event("s-1", ANON, "page_view", TS, device="mobile", country="DE")


def test_product_viewed():
    value = track("Product Viewed", "m-view", PRODUCT)
    assert one(value) == Event(
        "m-view",
        USER,
        "product_view",
        TS,
        category="Games",
        product_id="507f1f77bcf86cd799439011",
        price=18.99,
        **BROWSER,
    )


def test_products_searched():
    value = track("Products Searched", "m-search", {"query": "blue roses"})
    assert one(value) == Event("m-search", USER, "search", TS, **BROWSER)


def test_product_added_from_rudderstack():
    value = track(
        "Product Added",
        "m-add",
        {"cart_id": "skdjsidjsdkdj29j", **PRODUCT},
        context=RUDDER_CONTEXT,
        channel="web",
        rudderId="b2b6a1a5-0c4c-4d2f-a9bd-0a8b1a7c5d3e",
        request_ip="8.8.8.8",
    )
    del value["userId"]  # anonymous: keyed by anonymousId
    assert one(value, ANON) == Event(
        "m-add",
        ANON,
        "add_to_cart",
        TS,
        session_id="1795428000000",
        category="Games",
        product_id="507f1f77bcf86cd799439011",
        price=18.99,
        device="mobile",
        country="FR",
        channel="direct",
    )


def test_product_removed():
    value = track("Product Removed", "m-remove", {"cart_id": "skdjsidjsdkdj29j", **PRODUCT})
    assert one(value) == Event(
        "m-remove",
        USER,
        "remove_from_cart",
        TS,
        category="Games",
        product_id="507f1f77bcf86cd799439011",
        price=18.99,
        **BROWSER,
    )


def test_checkout_started():
    properties = {k: v for k, v in ORDER.items() if k not in ("checkout_id", "total", "subtotal")}
    value = track("Checkout Started", "m-checkout", {**properties, "value": 30})
    assert one(value) == Event("m-checkout", USER, "checkout_start", TS, **BROWSER)


def test_order_completed_is_a_purchase_of_its_revenue():
    value = track("Order Completed", "m-order", ORDER)
    assert one(value) == Event(
        "m-order",
        USER,
        "purchase",
        TS,
        amount=25.0,
        items=(("Games", 19.0), ("Cards", 6.0)),
        **BROWSER,
    )


def test_order_amount_is_revenue_else_total_else_the_products():
    no_revenue = {k: v for k, v in ORDER.items() if k != "revenue"}
    assert one(track("Order Completed", "o1", no_revenue)).amount == 27.5
    only_products = {k: v for k, v in no_revenue.items() if k != "total"}
    assert one(track("Order Completed", "o2", only_products)).amount == 19.0 + 3 * 2
    # a product without a quantity is one, without a price nothing, without a category unknown
    bare = {"products": [{"price": 4.5}, {"category": "Cards", "quantity": 3}]}
    event = one(track("Order Completed", "o3", bare))
    assert event.amount == 4.5 and event.items == (("unknown", 4.5), ("Cards", 0.0))
    assert one(track("Order Completed", "o4", {"revenue": 0})).amount == 0.0


def test_identify_keeps_traits_flattened_one_level():
    value = message(
        "identify",
        "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        {"ip": "8.8.8.8", "userAgent": BROWSER_CONTEXT["userAgent"]},
        traits={
            "name": "Peter Gibbons",
            "email": "peter@example.com",
            "plan": "premium",
            "logins": 5,
            "age": 41,
            "interests": ["fashion", "deals"],
            "address": {
                "street": "6th St",
                "city": "San Francisco",
                "state": "CA",
                "postalCode": "94103",
                "country": "USA",
            },
            "company": {"name": "Initech", "industry": "Technology", "employee_count": 140},
            "deep": {"a": {"b": 1}, "c": [{"d": 1}]},
            "orders": [{"id": 1}],
        },
    )
    assert one(value) == Event(
        "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        USER,
        "identify",
        TS,
        country="US",  # traits.address.country, without a location in the context
        traits={
            "name": "Peter Gibbons",
            "email": "peter@example.com",
            "plan": "premium",
            "logins": 5,
            "age": 41,
            "interests": ["fashion", "deals"],
            "address.street": "6th St",
            "address.city": "San Francisco",
            "address.state": "CA",
            "address.postalCode": "94103",
            "address.country": "USA",
            "company.name": "Initech",
            "company.industry": "Technology",
            "company.employee_count": 140,
        },
        anonymous_id=ANON,
    )


def test_identify_of_rudderstack_reads_context_traits_the_call_traits_win():
    context = {**RUDDER_CONTEXT, "traits": {"plan": "free", "age": 30}}
    value = message("identify", "m-id", context, traits={"plan": "pro"})
    event = one(value)
    assert event.traits == {"plan": "pro", "age": 30}
    assert (event.country, event.device, event.session_id, event.channel) == (
        "FR",
        None,
        None,
        None,
    )


def test_alias_carries_the_previous_id_for_stitching():
    value = message(
        "alias",
        "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        {"ip": "8.8.8.8"},
        previousId="39239-239239-239239-23923",
        userId="507f191e81",
    )
    assert one(value, "507f191e81") == Event(
        "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        "507f191e81",
        "identify",
        TS,
        anonymous_id=ANON,
        previous_id="39239-239239-239239-23923",
    )


def test_an_anonymous_visitor_has_no_second_id():
    value = track("Products Searched", "m-anon", {"query": "x"})
    del value["userId"]
    assert one(value, ANON).anonymous_id is None
    value["userId"] = ""  # an empty userId is none, as RudderStack keys it
    assert one(value, ANON).customer_id == ANON
    value["userId"] = ANON  # the same id twice: nothing to stitch
    assert one(value, ANON).anonymous_id is None


def test_numeric_ids_are_read_as_text():
    value = track("Products Searched", 123456789, {"query": "x"}, userId=42)
    event = one(value, "42")
    assert (event.event_id, event.customer_id) == ("123456789", "42")


def test_track_event_names_match_case_insensitively_with_underscores():
    assert one(track("order_completed", "o", {"revenue": 5})).kind == "purchase"
    assert one(track("PRODUCT VIEWED", "v", {})).kind == "product_view"
    assert {name: one(track(name, "x", {"revenue": 1})).kind for name in SPEC_TRACK_EVENTS} == (
        dict(SPEC_TRACK_EVENTS)
    )


# -- timestamps -------------------------------------------------------------------------------


def test_timestamp_else_original_else_sent_else_received():
    value = track("Products Searched", "m", {})
    order = ["timestamp", "originalTimestamp", "sentAt", "receivedAt"]
    for name in order:
        assert one(value).ts == parse_timestamp(value[name]), name
        del value[name]
    assert "has no timestamp, originalTimestamp, sentAt or receivedAt" in refused(value)
    value["originalTimestamp"] = 1795428000000  # epoch ms, as our contract allows
    assert one(value).ts == 1795428000000


def test_a_bad_timestamp_is_refused_not_skipped():
    value = track("Products Searched", "m", {}, timestamp="2026-11-23T10:00:00")
    assert refused(value) == "timestamp: timestamp '2026-11-23T10:00:00' has no UTC offset"


# -- context ----------------------------------------------------------------------------------


def context_of(context: Any, call: str = "page", **properties: Any) -> Event:
    value = message(call, "m", properties=properties)
    value["context"] = context
    return one(value)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ({"type": "ios", "model": "iPhone7,2"}, "mobile"),
        ({"type": "ios", "model": "iPad13,4"}, "tablet"),
        ({"type": "Android"}, "mobile"),
        ({"type": "tablet"}, "tablet"),
        ({"type": "desktop"}, "desktop"),
        ({"type": "macos"}, "desktop"),
        ({"type": "TV"}, "tv"),
        ({"type": 7}, None),
    ],
)
def test_device_type_maps_to_mobile_tablet_desktop(device, expected):
    assert context_of({"device": device}).device == expected


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 9_1 like Mac OS X) Version/9.0 Mobile/13B143",
            "mobile",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; Pixel 7) Chrome/116.0.0.0 Mobile Safari/537.36",
            "mobile",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 12_2 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
            "tablet",
        ),
        ("Mozilla/5.0 (Linux; Android 12; SM-X700) AppleWebKit/537.36 Chrome/116 Safari", "tablet"),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/116", "desktop"),
    ],
)
def test_without_a_device_type_the_user_agent_tells(agent, expected):
    assert context_of({"userAgent": agent}).device == expected


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"location": {"country": "United States"}, "locale": "de-DE"}, "US"),
        ({"location": {"country": "de"}}, "DE"),
        ({"location": {"country": "UK"}}, "GB"),
        ({"location": {"country": "Atlantis"}, "locale": "pt_BR"}, "BR"),
        ({"locale": "zh-Hant-TW"}, "TW"),
        ({"locale": "en"}, None),
        ({"location": "Berlin"}, None),
    ],
)
def test_country_from_location_else_locale(context, expected):
    assert context_of(context).country == expected


@pytest.mark.parametrize(
    ("context", "properties", "expected"),
    [
        ({"campaign": {"source": "Newsletter", "medium": "Email"}}, {}, "email"),
        ({"campaign": {"source": "Partner-Site"}}, {}, "partner-site"),
        ({"referrer": {"id": "ABCD582CDEFFFF01919", "type": "dataxu"}}, {}, "dataxu"),
        ({"page": {"referrer": "$direct", "url": "https://shop.example/"}}, {}, "direct"),
        (
            {"page": {"referrer": "https://www.google.de/", "url": "https://shop.example/"}},
            {},
            "search",
        ),
        ({"page": {"referrer": "https://t.co/abc", "url": "https://shop.example/"}}, {}, "social"),
        (
            {"page": {"referrer": "https://m.facebook.com/", "url": "https://shop.example/"}},
            {},
            "social",
        ),
        (
            {"page": {"referrer": "https://blog.example/x", "url": "https://shop.example/"}},
            {},
            "referral",
        ),
        (
            {"page": {"referrer": "https://www.shop.example/a", "url": "https://shop.example/b"}},
            {},
            None,
        ),
        ({"page": {"referrer": "https://blog.example/x"}}, {}, None),  # own site unknown
        ({}, {"referrer": "https://duckduckgo.com/", "url": "https://shop.example/"}, "search"),
        ({}, {}, None),
    ],
)
def test_channel_from_campaign_else_referrer(context, properties, expected):
    assert context_of(context, **properties).channel == expected


def test_session_from_rudderstack_context_else_properties():
    assert context_of({"sessionId": 1795428000000}).session_id == "1795428000000"
    assert context_of({"sessionId": "s-9"}, session_id="s-1").session_id == "s-9"
    assert context_of({}, session_id="s-1").session_id == "s-1"
    assert context_of({"sessionId": True}).session_id is None


def test_a_context_that_cannot_be_read_is_ignored_not_refused():
    assert context_of("browser").device is None
    event = context_of({"device": [], "location": 5, "campaign": "x", "page": None})
    assert (event.device, event.country, event.channel) == (None, None, None)
    assert context_of({"campaign": {"medium": "x" * 300}}).channel is None


# -- batches and arrays -----------------------------------------------------------------------


def test_a_json_array_of_one_users_spec_messages():
    events = decode(
        [
            track("Product Viewed", "b1", PRODUCT),
            track("Product Added", "b2", PRODUCT),
            track("Order Completed", "b3", ORDER),
        ],
        source="purchases",
    )
    assert [(e.event_id, e.kind) for e in events] == [
        ("b1", "product_view"),
        ("b2", "add_to_cart"),
        ("b3", "purchase"),
    ]


def test_the_batch_shape_with_its_shared_context_and_sent_at():
    first = track("Products Searched", "b1", {"query": "x"}, context={"locale": "en-GB"})
    second = track("Order Completed", "b2", ORDER)
    del second["context"], second["timestamp"], second["originalTimestamp"], second["sentAt"]
    batch = {
        "batch": [first, second],
        "context": {"device": {"type": "android"}, "locale": "de-AT"},
        "sentAt": "2026-11-23T10:00:05Z",
    }
    events = decode(batch, source="identify")
    assert [(e.event_id, e.kind, e.device, e.country) for e in events] == [
        ("b1", "search", "mobile", "GB"),  # its own locale wins, the shared device fills in
        ("b2", "purchase", "mobile", "AT"),
    ]
    assert events[1].ts == parse_timestamp("2026-11-23T10:00:05Z")  # the batch's sentAt


def test_an_array_may_mix_our_contract_and_spec_messages():
    ours = {"event_id": "e1", "type": "search", "customer_id": USER, "ts": TS}
    events = decode([ours, track("Product Viewed", "m1", PRODUCT)])
    assert [(e.event_id, e.kind) for e in events] == [("e1", "search"), ("m1", "product_view")]
    # our contract keeps its per-topic rules: on purchases, our object needs an amount
    assert refused([ours, track("Product Viewed", "m1", PRODUCT)], source="purchases") == (
        "event[0]: missing required field 'amount'"
    )


def test_an_object_with_event_id_is_always_our_contract():
    value = {**track("Order Completed", "m", ORDER), "event_id": "e1"}
    assert refused(value, source="purchases") == "missing required field 'customer_id'"


# -- what does not map, with the reason -------------------------------------------------------


def without(value: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k not in names}


SEARCH = track("Products Searched", "m", {"query": "x"})
ALIAS = message("alias", "m", {}, previousId="old-1")

NOT_MAPPED = [
    (
        track("Signed Up", "m", {}),
        USER,
        "track event 'Signed Up' does not map to a segmenter event",
    ),
    (
        track("Order Refunded", "m", ORDER),
        USER,
        "track event 'Order Refunded' does not map to a segmenter event",
    ),
    (
        message("group", "m", groupId="0e8c78ea9d97a7b8185e8632", traits={"name": "Initech"}),
        USER,
        "group call does not map to a segmenter event (accounts are not kept)",
    ),
    (without(SEARCH, "event"), USER, "track message has no event name ('event')"),
    (without(SEARCH, "messageId"), USER, "track message has no messageId"),
    ({**SEARCH, "messageId": "  "}, USER, "messageId is blank"),
    ({**SEARCH, "messageId": {"id": 1}}, USER, "messageId must be a string, got an object"),
    ({**SEARCH, "userId": "u" * 300}, USER, "userId is 300 characters, over the 256 limit"),
    (
        without(SEARCH, "userId", "anonymousId"),
        USER,
        "track message has neither userId nor anonymousId",
    ),
    (
        SEARCH,
        ANON,
        f"userId '{USER}' does not match the message key '{ANON}' "
        "(a Segment/RudderStack message is keyed by userId, else anonymousId)",
    ),
    (
        without(SEARCH, "userId"),
        USER,
        f"anonymousId '{ANON}' does not match the message key '{USER}' "
        "(a Segment/RudderStack message is keyed by userId, else anonymousId)",
    ),
    (
        {**SEARCH, "timestamp": "yesterday"},
        USER,
        "timestamp: timestamp 'yesterday' is not ISO 8601",
    ),
    ({**SEARCH, "properties": [1]}, USER, "properties must be an object, got an array"),
    (
        track("Product Viewed", "m", {**PRODUCT, "price": "18.99"}),
        USER,
        "properties.price must be a number, got a string",
    ),
    (
        track("Product Viewed", "m", {**PRODUCT, "category": ["Games"]}),
        USER,
        "properties.category must be a string, got an array",
    ),
    (
        track("Product Viewed", "m", {**PRODUCT, "product_id": 1.5}),
        USER,
        "properties.product_id must be a string, got float",
    ),
    (
        message("page", "m", category=5, properties={}),
        USER,
        "category must be a string, got int",
    ),
    (
        track("Order Completed", "m", without(ORDER, "revenue", "total", "products")),
        USER,
        "track event 'Order Completed' has no properties.revenue, properties.total "
        "or properties.products",
    ),
    (
        track("Order Completed", "m", {**ORDER, "revenue": -25}),
        USER,
        "properties.revenue must not be negative, got -25",
    ),
    (
        track("Order Completed", "m", {**ORDER, "products": {"sku": "x"}}),
        USER,
        "properties.products must be an array, got an object",
    ),
    (
        track("Order Completed", "m", {**ORDER, "products": [ORDER_PRODUCTS[0], "x"]}),
        USER,
        "properties.products[1] must be an object, got a string",
    ),
    (
        track("Order Completed", "m", {**ORDER, "products": [{"price": 1, "quantity": -2}]}),
        USER,
        "properties.products[0].quantity must not be negative, got -2",
    ),
    (
        track(
            "Order Completed",
            "m",
            {"products": [{"price": 1e9, "quantity": 2}]},
        ),
        USER,
        "properties.products add up to 2000000000.0, implausibly large",
    ),
    (message("identify", "m", traits=["vip"]), USER, "traits must be an object, got an array"),
    (without(ALIAS, "userId"), ANON, "alias message has no userId"),
    (without(ALIAS, "previousId"), USER, "alias message has no previousId"),
    ({**ALIAS, "previousId": USER}, USER, "alias previousId is the same as userId"),
    ({"batch": []}, USER, "batch is an empty array"),
    ({"batch": {"type": "track"}}, USER, "batch must be an array, got an object"),
    (
        {"batch": [SEARCH, {"event_id": "e1", "type": "search", "customer_id": USER, "ts": TS}]},
        USER,
        "batch[1]: type 'search' is not a Segment call "
        "(alias, group, identify, page, screen, track)",
    ),
    ({"batch": [SEARCH, "x"]}, USER, "batch[1]: event must be a JSON object, got a string"),
    (
        {"batch": [SEARCH, without(SEARCH, "userId")]},
        USER,
        f"batch[1]: anonymousId '{ANON}' does not match the message key '{USER}' "
        "(a Segment/RudderStack message is keyed by userId, else anonymousId)",
    ),
    (
        [SEARCH, track("Signed Up", "m2", {})],
        USER,
        "event[1]: track event 'Signed Up' does not map to a segmenter event",
    ),
]


@pytest.mark.parametrize(
    ("value", "key", "reason"), NOT_MAPPED, ids=[case[2][:48] for case in NOT_MAPPED]
)
@pytest.mark.parametrize("source", SOURCES)
def test_what_does_not_map_is_refused_with_its_reason(value, key, reason, source):
    assert refused(value, key, source) == reason


def test_an_array_of_two_customers_is_refused():
    anonymous, known = without(SEARCH, "userId"), SEARCH
    for value, prefix in (
        ([anonymous, known], "event[1]"),
        ({"batch": [anonymous, known]}, "batch[1]"),
    ):
        raw = json.dumps(value).encode()
        with pytest.raises(
            DecodeError, match="^" + re.escape(f"{prefix}: an array must hold events of one ")
        ):
            decode_message("clickstream", raw, None)  # no key to compare with
        assert refused(value, ANON) == (
            f"{prefix}: userId '{USER}' does not match the message key '{ANON}' "
            "(a Segment/RudderStack message is keyed by userId, else anonymousId)"
        )


def test_limits_apply_to_batches_and_products():
    limits = DecodeLimits(max_events_per_message=2)
    with pytest.raises(DecodeError, match="batch holds 3 events, over the 2 limit"):
        decode_message("clickstream", json.dumps({"batch": [SEARCH] * 3}).encode(), None, limits)
    value = track("Order Completed", "m", {"products": ORDER_PRODUCTS * 2})
    with pytest.raises(DecodeError, match="properties.products holds 4 entries, over the limit"):
        decode_message("clickstream", json.dumps(value).encode(), None, limits)


# -- through the step: the topic a message came on does not matter ---------------------------


def test_spec_messages_on_any_topic_make_the_same_canonical_features():
    visit = [
        ("clickstream", track("Product Viewed", "s1", PRODUCT, timestamp="2026-11-20T08:00:00Z")),
        ("purchases", track("Order Completed", "s2", ORDER, timestamp="2026-11-21T09:00:00Z")),
        ("identify", track("Order Completed", "s3", {"total": 10}, timestamp=T)),
        ("clickstream", track("Order Completed", "s2", ORDER, timestamp=T)),  # a retry
        ("identify", message("identify", "s4", timestamp="2026-11-19T07:00:00Z", traits={})),
    ]
    step = SegmentStep(SegmentCatalog(), loads=orjson.loads, decode=FAST)
    messages = [
        SourceMessage(source, f"{source}/0", offset, USER.encode(), orjson.dumps(value))
        for offset, (source, value) in enumerate(visit)
    ]
    out = step.run(messages, {}, None, 0, DueSchedule(), now_ms=0, clock=0.0)
    assert out.dead == []
    assert out.states[USER].value_features() == {
        "orders_total": 2,
        "revenue_total": 35.0,
        "first_seen_ts": parse_timestamp("2026-11-19T07:00:00Z"),
        "last_seen_ts": TS,
        "last_purchase_ts": TS,
    }
