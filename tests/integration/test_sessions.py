"""In-session segments through a real worker on the real broker and Redis: a visitor enters
``cart_open_now`` on their events and leaves it when other customers' events carry event time
past the end of their session, with no event of their own."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream.kafka import make_producer, read_topic
from stream.settings import Settings

from .conftest import Workers, make_settings, wait_until

pytestmark = pytest.mark.integration

START = 1_795_000_000_000
MIN = 60_000


def send(settings: Settings, *events: dict[str, Any]) -> None:
    producer = make_producer(settings)
    try:
        for event in events:
            producer.send(
                settings.topic("clickstream"),
                key=event["customer_id"].encode(),
                value=orjson.dumps(event),
            )
        producer.flush()
    finally:
        producer.close()


def click(n: int, cid: str, ts: int, kind: str = "page_view", **extra: Any) -> dict[str, Any]:
    return {"event_id": f"{cid}-{n}", "customer_id": cid, "ts": ts, "type": kind, **extra}


def test_cart_open_now_ends_with_the_session_on_other_customers_event_time(stack, tmp_path):
    settings = make_settings(stack, partitions=2)
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        views = [
            click(i, "shopper", START + i * MIN, "product_view", category="shoes", price=60.0)
            for i in range(1, 4)
        ]
        send(
            settings,
            click(0, "shopper", START, session_id="s-1", channel="email"),
            *[{**v, "session_id": "s-1"} for v in views],
            click(4, "shopper", START + 4 * MIN, "add_to_cart", session_id="s-1", price=60.0),
        )

        def shopping() -> dict[str, Any] | None:
            record = workers.client.get("shopper")
            return record if record and record["events_applied"] == 5 else None

        record = wait_until(shopping, 60, "the shopper's five events")
        assert {"cart_open_now", "browsing_category_now"} <= set(record["rule_segments"])
        session = record["session"]
        assert (session["id"], session["cart_items"], session["cart_value"]) == ("s-1", 1, 60.0)
        assert (session["top_category"], session["entry_channel"]) == ("shoes", "email")
        end = START + 4 * MIN + 30 * MIN  # 30 minutes after the visit's last event

        def seen(ts: int) -> Any:
            return lambda: (workers.client.get("bystander") or {}).get("event_ts") == ts

        send(settings, click(0, "bystander", end - 1))  # event time short of the end
        wait_until(seen(end - 1), 30, "the bystander's first event")
        record = workers.client.get("shopper")
        assert record and "cart_open_now" in record["rule_segments"] and record["session"]

        send(settings, click(1, "bystander", end + MIN))  # past it: the session is over

        def gone() -> dict[str, Any] | None:
            record = workers.client.get("shopper")
            return record if record and "cart_open_now" not in record["rule_segments"] else None

        record = wait_until(gone, 30, "the shopper to leave cart_open_now")
        assert record["session"] is None and "browsing_category_now" not in record["rule_segments"]
        assert (record["event_ts"], record["events_applied"]) == (START + 4 * MIN, 5)
        assert record["evaluated_at"] == end + MIN

        def changes() -> list[tuple[str, str, str]] | None:
            found = [
                (v["segment"], v["change"], v["reason"])
                for k, v in read_topic(settings, settings.topic("segment-changes"))
                if k == b"shopper" and v and v["segment"] == "rule:cart_open_now"
            ]
            return found if len(found) == 2 else None

        assert wait_until(changes, 30, "the shopper's cart_open_now changes") == [
            ("rule:cart_open_now", "entered", "rule holds on a new event"),
            (
                "rule:cart_open_now",
                "exited",
                "rule no longer holds as event time passed a threshold",
            ),
        ]
    except BaseException:
        print(workers.log("w0"))
        raise
    finally:
        workers.stop()
