"""A batch's points in the clustering and persona spaces, computed in one numpy pass: the same
floats as one customer at a time, so a record does not depend on the batch it was scored in."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

import models.step
from models.clustering import ClusterTrainer, population_key
from models.features import FEATURE_VECTOR, CustomerProfile, feature_vector
from models.segments import BATCH_POINTS, SegmentCatalog, assign, score_points
from models.step import SegmentStep, SourceMessage
from stream.build import core_compiled
from stream.catalog import load_personas, load_segments
from tests.unit.test_feature_space import shop
from tests.unit.test_step import Harness

key_of = population_key


def vectors(n: int, seed: int) -> list[dict[str, float]]:
    """Feature dicts with values inside and far outside the learned spaces' clip, and some
    keys (categories) missing."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {name: rng.choice((0.0, rng.random(), rng.uniform(-50, 50))) for name in FEATURE_VECTOR}
        for category in ("shoes", "bags", "toys"):
            if rng.random() < 0.5:
                x[f"category_share.{category}"] = rng.random()
        out.append(x)
    return out


@pytest.fixture(scope="module")
def model():
    found, _ = shop(1.0)
    trainer = ClusterTrainer(n_clusters=3, warmup=len(found), seed=5, min_share=0)
    for x in found:
        trainer.learn_one({**x, "category_share.shoes": random.Random(len(x)).random()})
    snap = trainer.snapshot()
    assert snap.scaling is not None and snap.persona_scaling is not None
    return snap


def test_a_batchs_points_are_the_points_computed_one_by_one_to_the_bit(model):
    catalog = SegmentCatalog(personas=load_personas())
    xs = vectors(200, seed=11)
    points = score_points(model, catalog, xs)
    assert points is not None and len(points) == len(xs)
    space = catalog.personas._space_of(model)
    assert space.scaling is not None  # the learned persona space, not the fixed one
    for x, (point, persona_point) in zip(xs, points, strict=True):
        assert point == model.point(x)
        assert persona_point == space.point(x)
    # the clip was exercised both ways
    flat = [v for point, _ in points for v in point]
    assert min(flat) == -2.0 and max(flat) == 2.0


def test_a_customer_scored_in_a_batch_gets_the_assignment_scored_alone(model):
    catalog = SegmentCatalog(rules=tuple(load_segments()), personas=load_personas())
    xs = vectors(50, seed=12)
    points = score_points(model, catalog, xs)
    assert points is not None
    moved = 0
    for i, (x, pair) in enumerate(zip(xs, points, strict=True)):
        profile = CustomerProfile(f"c{i}", last_seen_ts=1_795_000_000_000, segment=i % 3)
        profile.persona = load_personas().personas[i % 3].name
        alone = assign(profile, model, catalog, x=x)
        batched = assign(profile, model, catalog, x=x, points=pair)
        assert batched == alone
        moved += alone.segment != profile.segment  # the hysteresis path ran too
    assert moved


def test_too_few_customers_or_no_model_are_scored_one_by_one(model):
    catalog = SegmentCatalog(personas=load_personas())
    assert score_points(model, catalog, vectors(BATCH_POINTS - 1, seed=1)) is None
    assert score_points(None, catalog, vectors(50, seed=1)) is None
    without_personas = score_points(model, SegmentCatalog(), vectors(BATCH_POINTS, seed=1))
    assert without_personas is not None
    assert all(persona is None for _, persona in without_personas)


T0 = 1_795_000_000_000
DEVICES = ("mobile", "desktop", "tablet")


def event(cid: str, n: int, i: int, ts: int) -> SourceMessage:
    """A product view or a purchase of customer ``cid``, the shop's mix varied by ``i``."""
    if n % 4 == 3:
        value = {"event_id": f"p{n}", "customer_id": cid, "ts": ts, "amount": 15.0 + 90 * i}
        return SourceMessage("purchases", "purchases/0", n, cid.encode(), orjson.dumps(value))
    value = {
        "event_id": f"c{n}",
        "type": "product_view",
        "customer_id": cid,
        "ts": ts,
        "session_id": f"s{cid}",
        "price": 5.0 + 40.0 * i,
        "device": DEVICES[(i + n) % 3],
        "category": ("shoes", "bags", "toys")[i % 3],
    }
    return SourceMessage("clickstream", "clickstream/0", n, cid.encode(), orjson.dumps(value))


def test_a_batch_scored_together_writes_what_its_customers_scored_one_batch_each_write(
    model, monkeypatch
):
    catalog = SegmentCatalog(rules=tuple(load_segments()), personas=load_personas())
    names = [p.name for p in catalog.personas.personas]
    warm = Harness(SegmentStep(catalog, worker_id="w"))
    warm.model = model
    customers = [f"c{i}" for i in range(2 * BATCH_POINTS)]
    for n in range(4):  # a few events each, then a current cluster and persona of our choosing
        warm.run(*(event(c, n, i, T0 + n * 60_000 + i) for i, c in enumerate(customers)))
    for i, c in enumerate(customers):
        warm.profiles[c].segment, warm.profiles[c].persona = i % 3, names[i % len(names)]
    # The points score_points gave (None: one by one), seen through the step's module
    # attribute: the compiled core calls it directly, so there it is not seen and the spy's
    # checks are left out; the records and changes below are compared in both builds.
    batched = []
    spied = not core_compiled()
    real = models.step.score_points
    monkeypatch.setattr(
        models.step, "score_points", lambda *a: batched.append(real(*a)) or batched[-1]
    )

    def harness() -> Harness:
        h = Harness(SegmentStep(catalog, worker_id="w"))
        h.model, h.watermark = model, warm.watermark
        h.profiles = {c: CustomerProfile.from_state(p.to_state()) for c, p in warm.profiles.items()}
        return h

    messages = [event(c, 4, i, T0 + 5 * 60_000 + i) for i, c in enumerate(customers)]
    together = harness().run(*messages)
    if spied:
        assert batched == [batched[0]] and batched[0] is not None  # the numpy pass ran
    batched.clear()
    alone, outcomes = harness(), []
    for message in messages:
        outcomes.append(alone.run(message))
    if spied:
        assert batched and all(points is None for points in batched)  # one by one
    assert [w.record for w in together.writes] == [w.record for o in outcomes for w in o.writes]
    assert together.changes == [c for o in outcomes for c in o.changes]
    assert any(c.segment.startswith("cluster:") for c in together.changes)  # clusters moved
    assert any(c.segment.startswith("persona:") for c in together.changes)
    assert len(together.writes) == len(customers)
    for sample in together.samples:  # the vector the step reused is the profile's
        profile = together.states[next(c for c in customers if sample["key"] == key_of(c))]
        assert sample["x"] == feature_vector(profile)


def test_assign_scores_the_points_it_is_given(model):
    catalog = SegmentCatalog(personas=load_personas())
    x = vectors(1, seed=3)[0]
    profile = CustomerProfile("c", last_seen_ts=T0)
    point, persona_point = score_points(model, catalog, [x] * BATCH_POINTS)[0]
    own = assign(profile, model, catalog, x=x)
    for c in range(len(model.centres)):  # a point on each centre: that cluster
        moved = assign(profile, model, catalog, x=x, points=(list(model.centres[c]), persona_point))
        assert moved.segment == c
    space = catalog.personas._space_of(model)
    for p, name in zip(space.points, catalog.personas.personas, strict=True):
        moved = assign(profile, model, catalog, x=x, points=(point, list(p)))
        assert moved.persona == name.name
    assert own == assign(profile, model, catalog, x=x, points=(point, persona_point))


def test_the_trainers_points_are_the_scoring_paths_to_the_bit(model):
    """The trainer puts its buffer into the space with ``transform_many``: the same floats as
    ``transform`` of each row, so the centres it fits are of the points workers score."""
    scaling = model.scaling
    assert scaling is not None
    rows = [[x.get(name, 0.0) for name in model.features] for x in vectors(200, seed=12)]
    many = scaling.transform_many(np.asarray(rows))
    assert many.tolist() == [scaling.transform(row) for row in rows]
    assert many.min() == -2.0 and many.max() == 2.0
