"""A batch's points in the clustering and persona spaces, computed in one numpy pass: the same
floats as one customer at a time, so a record does not depend on the batch it was scored in."""

from __future__ import annotations

import random

import pytest

from models.clustering import ClusterTrainer
from models.features import FEATURE_VECTOR, CustomerProfile
from models.segments import BATCH_POINTS, SegmentCatalog, assign, score_points
from stream.catalog import load_personas, load_segments
from tests.unit.test_feature_space import shop


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
