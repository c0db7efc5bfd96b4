import pytest

from models.facts import LifecyclePolicy
from models.features import DAY_MS, CustomerProfile, feature_vector
from models.schedule import DueSchedule
from models.segments import SegmentCatalog, assign, changes_between, remember
from stream.catalog import CatalogError, load_personas, load_segments
from stream.tools.generator import GENERATOR_PERSONAS


def test_built_in_catalogs_load_and_cover_every_kind():
    segments = load_segments()
    kinds = {s.kind for s in segments}
    assert {
        "value",
        "behavioral",
        "needs",
        "technographic",
        "geographic",
        "demographic",
        "psychographic",
        "firmographic",
        "lifecycle",
    } <= kinds
    personas = load_personas()
    assert "Executive Ella" in [p.name for p in personas.personas]
    assert {p.name for p in personas.personas} == {p.name for p in GENERATOR_PERSONAS}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "segments:\n  vip:\n    kind: value\n    when: {ordrs_total: {gte: 3}}\n",
            "segment 'vip' (line 2): when: unknown field 'ordrs_total'",
        ),
        (
            "segments:\n  a:\n    when: {orders_total: 1}\n"
            "  b:\n    kind: astrology\n    when: {orders_total: 1}\n",
            "segment 'b' (line 4): kind 'astrology' is not one of",
        ),
        ("segments:\n  a:\n    kind: value\n", "segment 'a' (line 2): needs a 'when:' condition"),
        (
            "segments:\n  a:\n    when: {orders_total: {between: [5, 1]}}\n",
            "(line 2): when.orders_total: 'between' bounds are reversed",
        ),
        ("segments: [oops\n", "not valid YAML"),
        ("nothing: here\n", "expected a top-level mapping 'segments:'"),
    ],
)
def test_segment_file_errors_name_the_segment_and_line(tmp_path, text, message):
    path = tmp_path / "segments.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_segments(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_persona_file_errors_name_the_field(tmp_path):
    path = tmp_path / "personas.yaml"
    path.write_text("personas:\n  Ann:\n    prototype: {avg_order_vlaue: 3}\n")
    with pytest.raises(
        CatalogError, match=r"persona 'Ann' \(line 2\): unknown prototype field 'avg_order_vlaue'"
    ):
        load_personas(path)
    with pytest.raises(CatalogError, match="no such file"):
        load_personas(tmp_path / "missing.yaml")


def test_each_persona_prototype_is_its_own_nearest_persona():
    catalog = load_personas()
    for persona in catalog.personas:
        match = catalog.match(persona.vector())
        assert match.name == persona.name and match.confidence == 1.0
        assert len(match.reasons) == 3


T0 = 1_795_000_000_000


def buyer() -> CustomerProfile:
    return CustomerProfile(
        "c",
        orders_total=2,
        first_seen_ts=T0 - 100 * DAY_MS,
        last_seen_ts=T0,
        last_purchase_ts=T0,
        sessions=4,
    )


def test_lifecycle_moves_at_exactly_its_thresholds_with_no_new_event():
    policy = LifecyclePolicy(new_days=30, at_risk_days=60, lapsed_days=180)
    p = buyer()
    assert policy.stage(p, T0) == "active"
    assert policy.stage(p, T0 + 60 * DAY_MS - 1) == "active"
    assert policy.stage(p, T0 + 60 * DAY_MS) == "at_risk"
    assert policy.stage(p, T0 + 180 * DAY_MS) == "lapsed"
    assert policy.next_change(p, T0) == T0 + 60 * DAY_MS
    assert policy.next_change(p, T0 + 60 * DAY_MS) == T0 + 180 * DAY_MS
    assert policy.next_change(p, T0 + 180 * DAY_MS) is None


def test_a_watermark_past_the_due_time_exits_active_and_enters_at_risk():
    catalog = SegmentCatalog(rules=load_segments())
    p = buyer()
    remember(p, assign(p, None, catalog))
    assert p.lifecycle == "active" and "lifecycle_active" in p.rule_segments
    schedule = DueSchedule()
    schedule.set("c", catalog.lifecycle.next_change(p, T0))
    assert schedule.pop_due(T0 + 59 * DAY_MS) == []  # not yet
    watermark = T0 + 61 * DAY_MS  # the first advance past the due time
    assert schedule.pop_due(watermark) == ["c"]
    later = assign(p, None, catalog, now=watermark)
    changes = [(c.segment, c.change) for c in changes_between(p, later, "watermark")]
    assert ("rule:lifecycle_active", "exited") in changes
    assert ("rule:lifecycle_at_risk", "entered") in changes
    assert changes.index(("rule:lifecycle_active", "exited")) < changes.index(
        ("rule:lifecycle_at_risk", "entered")
    )
    reasons = {c.reason for c in changes_between(p, later, "watermark")}
    assert reasons == {
        "rule no longer holds as event time passed a threshold",
        "rule holds as event time passed a threshold",
    }
    assert later.event_ts == T0  # the record still dates from the customer's last event


def test_persona_and_facts_reach_the_record():
    p = buyer()
    p.traits = {"age": 45, "income_band": "high"}
    p.country = "AT"
    record = assign(
        p, None, SegmentCatalog(rules=load_segments(), personas=load_personas())
    ).record(p, 0)
    assert record["persona"] in {x.name for x in GENERATOR_PERSONAS}
    assert 0.5 <= record["persona_confidence"] <= 1.0 and record["persona_reasons"]
    assert {"dach", "europe", "high_income", "lifecycle_active"} <= set(record["rule_segments"])
    assert record["facts"]["region"] == "Western Europe" and record["facts"]["age_band"] == "45-54"
    assert feature_vector(p)  # the vector is defined for a profile with no clicks
