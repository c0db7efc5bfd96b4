"""Identity stitching end to end: two workers on a real Tansu broker and a real redis-server.

Anonymous visitors browse and buy, known customers buy; then each logs in (our identify with
``anonymous_id``, a Segment-spec identify with ``userId`` and ``anonymousId``, or an
``alias``), and more events still arrive under the anonymous ids. One worker is SIGKILLed
while the merges are in flight and a new one takes its place. At the end every known
customer's canonical value features are exactly those of the union of both event logs, a read
of an anonymous id answers the known customer's record, the anonymous ids have no record and
have exited every segment they entered, and the size counters match a recount of the records.
Then a chain: a known customer is aliased into another, and every id reads the last one.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from stream.kafka import client_options, read_topic
from stream.store import Keys
from stream.store.codec import decode_record, sum_counts
from stream.tools import faults
from stream.tools.generator import Message
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, wait_until
from .oracle import expected_value_features

pytestmark = pytest.mark.integration

PAIRS = 40
T0 = 1_790_000_000_000
MIN = 60_000


def click(customer: str, event_id: str, ts: int, price: float) -> Message:
    event = {
        "event_id": event_id,
        "type": "product_view",
        "customer_id": customer,
        "ts": ts,
        "category": "games",
        "price": price,
        "device": "mobile",
    }
    return Message("clickstream", customer, event)


def buy(customer: str, event_id: str, ts: int, amount: float) -> Message:
    return Message(
        "purchases",
        customer,
        {"event_id": event_id, "customer_id": customer, "ts": ts, "amount": amount},
    )


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat().replace("+00:00", "Z")


def login(i: int, ts: int) -> Message:
    """Three ways a collector says who the visitor is."""
    user, anon = f"u-{i}", f"anon-{i}"
    if i % 3 == 0:
        body: dict[str, Any] = {
            "event_id": f"login-{i}",
            "customer_id": user,
            "ts": ts,
            "anonymous_id": anon,
        }
    elif i % 3 == 1:
        body = {
            "type": "identify",
            "messageId": f"login-{i}",
            "userId": user,
            "anonymousId": anon,
            "timestamp": iso(ts),
            "traits": {"plan": "pro"},
        }
    else:
        body = {
            "type": "alias",
            "messageId": f"login-{i}",
            "userId": user,
            "previousId": anon,
            "timestamp": iso(ts),
        }
    return Message("identify", user, body)


def before_login() -> list[Message]:
    out = []
    for i in range(PAIRS):
        at = T0 + i * MIN
        out += [click(f"anon-{i}", f"a{i}-{k}", at + k * 1000, 20.0 + k) for k in range(3)]
        out.append(buy(f"anon-{i}", f"ap{i}", at + 5000, 10.0 + i))
        out.append(buy(f"u-{i}", f"up{i}", at - 86_400_000, 100.0))
        out.append(click(f"u-{i}", f"uc{i}", at - 86_400_000 + 1000, 300.0))
    # A customer with a long history (more events than the event-id windows hold).
    old = T0 - 400 * 86_400_000
    out += [click("u-1", f"long-c{k}", old + k * 3_600_000, 50.0) for k in range(200)]
    out += [buy("u-1", f"long-p{k}", old + k * 86_400_000, 3.0) for k in range(80)]
    return out


def after_login() -> list[Message]:
    out = []
    for i in range(PAIRS):
        at = T0 + i * MIN + 30_000
        out.append(login(i, at))
        # Still sent under the anonymous id (a tab opened before the login, a retry).
        out.append(buy(f"anon-{i}", f"late{i}", at + 1000, 5.0))
        out.append(click(f"anon-{i}", f"a{i}-0", T0 + i * MIN, 20.0))  # a duplicate
    return out


def merged(messages: list[Message], into: dict[str, str]) -> list[Message]:
    """The messages as if each merged id's events had been sent under the customer's id."""
    out = []
    for m in messages:
        events = m.value if isinstance(m.value, list) else [m.value]
        if not all("event_id" in e for e in events):
            continue  # spec identify/alias: no value feature
        moved = [{**e, "customer_id": into.get(e["customer_id"], e["customer_id"])} for e in events]
        out.append(
            Message(m.source, moved[0]["customer_id"], moved if len(moved) > 1 else moved[0])
        )
    return out


def test_anonymous_histories_merge_into_known_customers_across_workers_and_a_sigkill(
    stack, tmp_path
):
    settings = make_settings(stack, partitions=4)
    workers = Workers(settings, tmp_path)
    keys = Keys(settings.redis_prefix)
    raw = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        workers.start(2)
        workers.wait_joined(2)
        first, then = before_login(), after_login()
        sent = send_messages(settings, iter(first))

        def applied(n: int) -> bool:
            workers.check_alive()
            return workers.client.stats().get("events", 0) >= n

        wait_until(lambda: applied(sent.events), 90, "the anonymous histories")
        assert workers.client.get("anon-3")["customer_id"] == "anon-3"

        # Half the logins; once the first merges are through, the other half and the late
        # events, and w0 killed while those are in flight.
        half = len(then) // 2
        send_messages(settings, iter(then[:half]))
        wait_until(
            lambda: any(raw.get(keys.alias(f"anon-{i}")) for i in range(PAIRS)),
            60,
            "a first merge",
        )
        send_messages(settings, iter(then[half:]))
        victim = workers.procs["w0"]
        victim.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        victim.wait()  # type: ignore[attr-defined]
        del workers.procs["w0"]
        workers.start(1)

        into = {f"anon-{i}": f"u-{i}" for i in range(PAIRS)}
        expected = expected_value_features(merged(first + then, into))

        differ: dict[str, Any] = {}

        def exact() -> bool:
            workers.check_alive()
            differ.clear()
            for user, features in expected.items():
                record = workers.client.get(user)
                if record is None or record["customer_id"] != user:
                    differ[user] = (None if record is None else record["customer_id"], features)
                    continue
                got = {k: record["features"][k] for k in features}
                if got != {**features, "revenue_total": got["revenue_total"]} or (
                    abs(got["revenue_total"] - features["revenue_total"]) > 1e-6
                ):
                    differ[user] = (got, features)
            for anon in into:
                if raw.get(keys.record(anon)) is not None:
                    differ[anon] = ("a record", "none (merged)")
            return not differ

        try:
            faults.wait_until(
                exact, 180, "every known customer's features to be the union of both logs"
            )
        except faults.WaitTimeout as exc:
            beats = "\n".join(f"  {b}" for b in workers.client.workers())
            pytest.fail(f"{exc}\n{diagnosis(settings, differ, into)}\nheartbeats:\n{beats}")
        assert set(expected) == {f"u-{i}" for i in range(PAIRS)}
        for anon, user in into.items():
            record = workers.client.get(anon)  # one hop: the alias, then the record
            assert record is not None and record["customer_id"] == user, (anon, record)
            assert raw.get(keys.alias(anon)) == user.encode()

        # Counters match a recount of the records: the merged ids left them. Read in one
        # transaction: the workers may still be writing (a first model's assignments), and a
        # write between a read of the records and one of the counters would tell them apart.
        assert len(list(workers.client.iter_records())) == PAIRS
        assert workers.client.customers() == PAIRS
        records, counted = records_and_counters(raw, keys, [*expected, *into])
        assert len(records) == PAIRS
        members: dict[str, int] = {}
        for r in records:
            for name in r["rule_segments"]:
                members[f"rule:{name}"] = members.get(f"rule:{name}", 0) + 1
        assert {k: v for k, v in counted.items() if k.startswith("rule:")} == members

        # The anonymous ids exited everything they had entered, saying why.
        state: dict[tuple[str, str], bool] = {}
        reasons: dict[str, set[str]] = {}
        for _, change in read_topic(settings, settings.topic(settings.changes_topic), quiet=2.0):
            if change is None or not change["customer_id"].startswith("anon-"):
                continue
            state[(change["customer_id"], change["segment"])] = change["change"] == "entered"
            if change["change"] == "exited":
                reasons.setdefault(change["customer_id"], set()).add(change["reason"])
        still_in = sorted(k for k, inside in state.items() if inside)
        assert not still_in, still_in
        entered_any = {anon for anon, _ in state}
        assert entered_any, "no anonymous visitor entered a segment: the test proves nothing"
        for anon in entered_any:
            assert f"merged into {into[anon]}" in reasons.get(anon, set()), (
                anon,
                reasons.get(anon),
            )

        # A chain: u-0 (holding anon-0) is aliased into u-chain; every id reads u-chain's record.
        chain = [
            buy("u-chain", "chain-1", T0 + 3_600_000, 1.0),
            Message(
                "identify",
                "u-chain",
                {
                    "type": "alias",
                    "messageId": "chain-alias",
                    "userId": "u-chain",
                    "previousId": "u-0",
                    "timestamp": iso(T0 + 3_600_000 + 1000),
                },
            ),
        ]
        send_messages(settings, iter(chain))
        want = expected["u-0"]["orders_total"] + 1

        def chained() -> bool:
            record = workers.client.get("u-chain")
            return record is not None and record["features"]["orders_total"] == want

        wait_until(chained, 90, "u-0's merged history to reach u-chain")
        wait_until(
            lambda: raw.get(keys.alias("anon-0")) == b"u-chain",
            30,
            "anon-0's alias to point at the end of the chain",
        )
        for anon in ("anon-0", "u-0"):
            record = workers.client.get(anon)
            assert record is not None and record["customer_id"] == "u-chain", (anon, record)
        late = [buy("anon-0", "after-chain", T0 + 3_700_000, 2.0)]
        send_messages(settings, iter(late))
        wait_until(
            lambda: workers.client.get("u-chain")["features"]["orders_total"] == want + 1,
            90,
            "an event under the first id of the chain to reach its end",
        )
    except BaseException:
        for worker_id in workers.procs:
            print(f"--- {worker_id}\n{workers.log(worker_id, 120)}")
        raise
    finally:
        raw.close()
        workers.stop()


def records_and_counters(
    raw: redis.Redis, keys: Keys, ids: list[str]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The records of these ids (those that have one) and the summed membership counters, as
    of one instant: one MULTI/EXEC on the one redis-server."""
    pipe = raw.pipeline(transaction=True)
    pipe.mget([keys.record(c) for c in ids])
    for name in keys.all_members:
        pipe.hgetall(name)
    values, *hashes = pipe.execute()
    return [decode_record(v) for v in values if v is not None], sum_counts(hashes)


def diagnosis(settings: Any, differ: dict[str, Any], into: dict[str, str]) -> str:
    """What a failed wait for exact features saw: each customer that differs (got, expected),
    the newest table states of them and their anonymous ids (from the changelog) and the
    identity messages about them, so that a failure says which step of a merge went wrong."""
    users = set(differ) | {into.get(c, c) for c in differ}
    ids = users | {a for a, u in into.items() if u in users}
    lines = [f"{len(differ)} differ (id: got, expected):"]
    lines += [f"  {c}: {got} != {want}" for c, (got, want) in sorted(differ.items())]
    states: dict[str, Any] = {}
    changelog = f"{settings.app_id}-profiles-changelog"
    for key, state in read_topic(settings, changelog, quiet=2.0):
        customer = orjson.loads(key) if key else None
        if customer in ids:
            states[customer] = state
    lines.append("newest table states (orders, applied, merged ids, asked, into, positions):")
    for c in sorted(ids):
        s = states.get(c)
        lines.append(
            f"  {c}: "
            + (
                "none"
                if s is None
                else f"{s['o']} {s['n']} mid={s['mid']} ask={s['ask']} into={s['into']} "
                f"pos={s['pos']} purchases={s['ids'].get('purchase')}"
            )
        )
    lines.append("identity messages (partition@offset op from into):")
    for tp, offset, body in _identity_messages(settings):
        if body.get("from") in ids or body.get("into") in ids:
            lines.append(f"  {tp}@{offset} {body.get('op')} {body.get('from')} {body.get('into')}")
    return "\n".join(lines)


def _identity_messages(settings: Any) -> list[tuple[int, int, dict[str, Any]]]:
    consumer = KafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    try:
        topic = settings.topic(settings.identity_topic)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out = []
        deadline, quiet = time.monotonic() + 15, time.monotonic() + 2
        while time.monotonic() < min(deadline, quiet):
            for tp, records in consumer.poll(timeout_ms=200).items():
                out += [(tp.partition, r.offset, orjson.loads(r.value)) for r in records]
                quiet = time.monotonic() + 2
        return out
    finally:
        consumer.close()
