"""The customer and segment views built from records, changes and size snapshots (no I/O);
through a real worker, Redis and Chromium: ``tests/integration/test_dashboard.py``."""

from __future__ import annotations

from stream.serving.definitions import Definitions
from stream.serving.lookup import buckets, customer_view, fact_value, resolve_segment
from stream.settings import Settings

DEFS = Definitions(Settings())
RECORD = {
    "customer_id": "u-1",
    "segment": 2,
    "segment_label": "buys often",
    "confidence": 0.8,
    "persona": "Bargain Ben",
    "persona_confidence": 0.7,
    "persona_reasons": ["search_share near 0.30 (persona) vs 0.28"],
    "rule_segments": ["vip", "mobile_first", "high_income", "not_in_this_file"],
    "model_version": 4,
    "features": {"orders_total": 5, "country": "DE"},
    "facts": {"value_tier": "gold"},
    "traits": {"income_band": "high"},
}


def test_every_segment_with_why_and_the_facts_its_rule_reads():
    view = customer_view("u-1", RECORD, [], DEFS)
    assert [m.segment for m in view.segments] == [
        "cluster:2",
        "persona:Bargain Ben",
        "rule:vip",
        "rule:mobile_first",
        "rule:high_income",
        "rule:not_in_this_file",
    ]
    cluster, persona, vip, mobile, income, unknown = view.segments
    assert cluster.description == "buys often" and cluster.version == "model 4"
    assert persona.reasons == RECORD["persona_reasons"] and persona.definition
    assert [f.model_dump() for f in vip.facts] == [
        {"fact": "value_tier", "value": "gold", "stored": True, "where": "facts"}
    ]
    assert vip.definition.startswith("vip:") and vip.version == DEFS.segments_version
    assert [(f.fact, f.stored) for f in mobile.facts] == [("device_share.mobile", False)]
    assert [(f.fact, f.value) for f in income.facts] == [("traits.income_band", "high")]
    assert unknown.kind == "rule" and "not in this server's segments file" in unknown.description
    assert view.merged_ids == [] and view.merged_into is None and view.note == ""


def test_merged_ids_are_shown_and_a_merged_id_says_where_it_went():
    view = customer_view("u-1", {**RECORD, "merged_ids": ["a-1", "a-2"]}, [], DEFS)
    assert view.merged_ids == ["a-1", "a-2"] and view.merged_into is None
    # Read by a merged id, the record is the customer's it was merged into.
    view = customer_view("a-1", RECORD, [], DEFS)
    assert view.customer_id == "a-1" and view.merged_into == "u-1"
    assert "a-1 was merged into u-1" in view.note
    view = customer_view("a-3", {**RECORD, "customer_id": "a-3", "merged_into": "u-9"}, [], DEFS)
    assert view.merged_into == "u-9"


def test_facts_the_record_carries_and_those_it_does_not():
    assert fact_value(RECORD, "orders_total").where == "features"
    assert fact_value(RECORD, "cluster").value == 2
    assert fact_value(RECORD, "persona").value == "Bargain Ben"
    assert fact_value(RECORD, "traits.age").model_dump() == {
        "fact": "traits.age",
        "value": None,
        "stored": True,
        "where": "traits",
    }
    assert not fact_value(RECORD, "search_share").stored


def test_entries_and_exits_per_bucket_from_the_snapshots_totals():
    history = [
        {"bucket": 0, "sizes": {"rule:a": 2}, "entered_total": {"rule:a": 2}, "exited_total": {}},
        {"bucket": 60, "sizes": {}, "entered_total": {"rule:a": 3}, "exited_total": {"rule:a": 3}},
        {"bucket": 120, "sizes": {"rule:a": 1}},  # a snapshot of an older worker: no totals
        {"bucket": 180, "sizes": {"rule:a": 1}, "entered_total": {"rule:a": 1}, "exited_total": {}},
    ]
    got = [(b.bucket, b.size, b.entered, b.exited) for b in buckets("rule:a", history)]
    assert got == [(0, 2, None, None), (60, 0, 1, 3), (120, 1, None, None), (180, 1, None, None)]


def test_segments_resolve_by_full_or_bare_name_and_unknown_ones_do_not():
    assert resolve_segment("vip", DEFS, None, {}).segment == "rule:vip"
    assert resolve_segment("Bargain Ben", DEFS, None, {}).kind == "persona"
    assert resolve_segment("rule:nope", DEFS, None, {}) is None
    assert resolve_segment("cluster:7", DEFS, None, {}) is None
    assert resolve_segment("cluster:7", DEFS, None, {"cluster:7": 3}).version is None
