"""The whole product path on a real Tansu broker and a real redis-server: events in, records out."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson
import pytest

from stream.kafka import make_producer, read_topic
from stream.settings import Settings
from stream.tools.generator import Message, TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, run_cli, wait_until
from .oracle import expected_value_features

pytestmark = pytest.mark.integration

CUSTOMERS = 300
SESSIONS_EACH = 8
BAD = [
    (b"cust-bad-1", b'{"event_id": "x1", "type": "product_view", "customer_id": "cust-bad-1"}'),
    (b"cust-bad-2", b"{this is not json"),
    (
        b"someone-else",
        b'{"event_id": "x3", "type": "search", "customer_id": "cust-bad-3", "ts": 1795000000000}',
    ),
]


@dataclass
class Run:
    settings: Settings
    workers: Workers
    generator: TrafficGenerator
    messages: list[Message]
    events: int


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory, request):  # type: ignore[no-untyped-def]
    settings = make_settings(stack)
    workers = Workers(settings, tmp_path_factory.mktemp("logs"))
    workers.start(1)
    generator = TrafficGenerator(customers=CUSTOMERS, seed=11, session_gap_ms=60_000)
    messages = [
        m
        for _ in range(SESSIONS_EACH)
        for cid in generator.customer_ids
        for m in generator.session(cid)
    ]
    producer = make_producer(settings)
    try:
        stats = send_messages(settings, iter(messages), producer=producer)
        for key, value in BAD:
            producer.send(settings.topic("clickstream"), key=key, value=value)
        producer.flush()
    finally:
        producer.close()

    def done() -> bool:
        workers.check_alive()
        s = workers.client.stats()
        return s.get("events", 0) >= stats.events and s.get("dead_letters", 0) >= len(BAD)

    try:
        wait_until(done, 120, f"{stats.events} events and {len(BAD)} dead letters to be processed")
        yield Run(settings, workers, generator, messages, stats.events)
    except BaseException:
        print(workers.log("w0"))
        raise
    finally:
        workers.stop()


def test_every_customer_has_a_record_with_exactly_the_independent_value_features(run):
    expected = expected_value_features(run.messages)
    assert len(expected) == CUSTOMERS
    for customer_id, features in expected.items():
        record = run.workers.client.get(customer_id)
        assert record is not None, customer_id
        got = {k: record["features"][k] for k in features}
        assert got == {
            **features,
            "revenue_total": pytest.approx(features["revenue_total"], rel=1e-9),
        }
        assert record["event_ts"] == features["last_seen_ts"]
        assert record["customer_id"] == customer_id


def test_every_customer_is_assigned_a_segment_from_a_published_model(run):
    def all_assigned() -> bool:
        return all(r["segment"] is not None for r in run.workers.client.iter_records())

    wait_until(all_assigned, 30, "every customer to have a segment")
    records = list(run.workers.client.iter_records())
    model = run.workers.client.model()
    assert model is not None and model["version"] >= 1
    # The trainer's population quintiles of buyers' RFM travel with the snapshot.
    cuts = wait_until(
        lambda: (run.workers.client.model() or {}).get("rfm_cuts"), 30, "RFM cut points"
    )
    for name in ("recency", "frequency", "monetary"):
        assert len(cuts[name]) == 4 and cuts[name] == sorted(cuts[name]), (name, cuts[name])
    assert {r["model_version"] for r in records} <= set(range(1, model["version"] + 1))
    # Below 0.5 only for a customer kept in their cluster by hysteresis (see Stability).
    assert all(0.0 < r["confidence"] <= 1.0 and r["segment_label"] for r in records)
    sizes = run.workers.client.sizes()
    assert sum(sizes.values()) == CUSTOMERS  # size counters agree with the records
    assert len({r["segment"] for r in records}) >= 3  # personas are not lumped into one segment


def test_malformed_messages_land_in_dead_letters_with_bytes_position_and_reason(run):
    # Redis is written before the dead letters are sent: wait for them, not for the counters.
    letters = wait_until(
        lambda: (
            (ls := [v for _, v in read_topic(run.settings, run.settings.topic("dead-letters"))])
            and len(ls) >= len(BAD)
            and ls
        ),
        30,
        "the dead letters",
    )
    assert len(letters) == len(BAD)
    by_value = {base64.b64decode(letter["value_b64"]): letter for letter in letters}
    assert set(by_value) == {value for _, value in BAD}  # the original bytes, exactly
    reasons = [by_value[value]["reason"] for _, value in BAD]
    assert "missing required field 'ts'" in reasons[0]
    assert "not valid JSON" in reasons[1]
    assert "does not match the message key" in reasons[2]
    for letter in letters:
        assert letter["topic"] == run.settings.topic("clickstream")
        assert letter["partition"] in range(run.settings.partitions) and letter["offset"] >= 0


def test_segment_changes_announce_entries_in_the_design_shape(run):
    changes = [v for _, v in read_topic(run.settings, run.settings.topic("segment-changes"))]
    keys = {
        "customer_id",
        "segment",
        "change",
        "previous",
        "current",
        "event_ts",
        "reason",
        "model_version",
        "change_id",
        "events_applied",
        "evaluated_at",
        "definitions_version",
    }
    assert all(set(c) == keys for c in changes)
    ids = [c["change_id"] for c in changes]
    assert len(set(ids)) == len(ids), "a change id names one change"
    by_kind: dict[str, list[dict]] = {}
    for c in changes:
        by_kind.setdefault(c["segment"].split(":", 1)[0], []).append(c)
    assert set(by_kind) == {"cluster", "rule", "persona"}  # every kind of segment announces
    for kind in ("cluster", "persona"):
        entered = {c["customer_id"] for c in by_kind[kind] if c["change"] == "entered"}
        assert entered == set(run.generator.customer_ids), kind
    for c in by_kind["cluster"]:
        held = c["previous"] if c["change"] == "exited" else c["current"]
        assert c["segment"] == f"cluster:{held}"
    for c in by_kind["rule"]:
        assert (c["previous"], c["current"]) == (
            (False, True) if c["change"] == "entered" else (True, False)
        )
    for c in by_kind["persona"]:
        held = c["previous"] if c["change"] == "exited" else c["current"]
        assert c["segment"] == f"persona:{held}"
    # Per customer, what was entered and not exited since is what the record holds now.
    held: dict[str, set[str]] = {}
    for c in changes:
        (
            held.setdefault(c["customer_id"], set()).add
            if c["change"] == "entered"
            else held.setdefault(c["customer_id"], set()).discard
        )(c["segment"])
    for cid in run.generator.customer_ids[:50]:
        record = run.workers.client.get(cid)
        expected = {f"cluster:{record['segment']}", f"persona:{record['persona']}"}
        expected |= {f"rule:{name}" for name in record["rule_segments"]}
        assert held[cid] == expected, cid


def test_events_sent_again_change_nothing(run):
    # A producer that retries re-sends its recent events under new offsets: the last session
    # of every customer (within the event-id window) is sent a second time.
    client = run.workers.client
    before = {cid: client.get(cid) for cid in run.generator.customer_ids}
    messages_before = client.stats()["messages"]
    per_session = len(run.messages) // SESSIONS_EACH
    # Bots' sessions (60 to 250 clicks) are longer than the window of recent click ids kept
    # per customer (64), so only the others' last sessions are within it.
    replay = [m for m in run.messages[-per_session:] if run.generator.kind(m.key) != "bot"]
    assert any(run.generator.kind(c) == "bot" for c in run.generator.customer_ids)
    send_messages(run.settings, iter(replay))
    wait_until(
        lambda: client.stats()["messages"] >= messages_before + len(replay),
        60,
        "the replayed messages to be consumed",
    )
    for cid, record in before.items():
        again = client.get(cid)
        assert again["features"] == record["features"], cid
        assert again["events_applied"] == record["events_applied"]


def test_cli_get_and_export_print_the_records(run):
    cid = run.generator.customer_ids[0]
    got = run_cli(run.settings, "get", cid)
    assert got.returncode == 0, got.stderr
    record = orjson.loads(got.stdout)
    for field in ("segment", "segment_label", "model_version", "event_ts", "features"):
        assert field in record
    assert (
        record["features"]["orders_total"]
        == expected_value_features(run.messages)[cid]["orders_total"]
    )

    missing = run_cli(run.settings, "get", "nobody")
    assert missing.returncode == 1 and "no record" in missing.stderr

    exported = run_cli(run.settings, "export")
    assert exported.returncode == 0, exported.stderr
    lines = [orjson.loads(line) for line in exported.stdout.splitlines()]
    assert {r["customer_id"] for r in lines} == set(run.generator.customer_ids)
    assert all("revenue_total" in r["features"] and "event_ts" in r for r in lines)


def test_segments_report_lists_every_segment_with_sizes_that_add_up(run):
    wait_until(
        lambda: all(r["segment"] is not None for r in run.workers.client.iter_records()),
        30,
        "every customer to have a segment",
    )
    done = run_cli(run.settings, "segments", "--json")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["customers"] == CUSTOMERS and report["model_version"] >= 1
    by_kind: dict[str, list[dict]] = {}
    for row in report["segments"]:
        by_kind.setdefault(row["kind"], []).append(row)
    assert sum(r["customers"] for r in by_kind["cluster"]) == CUSTOMERS
    assert all(r["description"] for r in by_kind["cluster"])
    assert sum(r["customers"] for r in by_kind["persona"]) == CUSTOMERS
    assert "Executive Ella" in {r["segment"] for r in by_kind["persona"]}
    lifecycle = sum(r["customers"] for r in by_kind["lifecycle"])
    assert lifecycle == CUSTOMERS  # every customer is in exactly one lifecycle stage
    table = run_cli(run.settings, "segments")
    assert table.returncode == 0 and "cluster:" in table.stdout and "vip" in table.stdout
