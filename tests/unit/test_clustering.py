import random

import pytest

from models.clustering import ClusterTrainer, FeatureScaling, ModelSnapshot
from models.features import CustomerProfile
from models.segments import SegmentAssignment, changes_between

FEATURES = ("a", "b")
BLOBS = [(0.1, 0.1), (0.9, 0.1), (0.5, 0.9)]
IDENTITY = FeatureScaling.identity(len(FEATURES))


def blob_stream(n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        i = rng.randrange(len(BLOBS))
        cx, cy = BLOBS[i]
        yield i, {"a": cx + rng.gauss(0, 0.03), "b": cy + rng.gauss(0, 0.03)}


def trained(seed=42, n=600):
    t = ClusterTrainer(n_clusters=3, warmup=60, seed=seed, features=FEATURES)
    for _, x in blob_stream(n):
        t.learn_one(x)
    return t


def test_seeded_training_is_deterministic():
    assert trained().snapshot().centres == trained().snapshot().centres


def test_every_centre_is_used_and_recovers_the_blobs():
    snap = trained().snapshot()
    assert all(n > 0 for n in snap.counts)
    labels = {}
    for truth, x in blob_stream(300, seed=1):
        labels.setdefault(truth, set()).add(snap.predict(x)[0])
    assert all(len(s) == 1 for s in labels.values())  # each blob is one segment
    assert len({next(iter(s)) for s in labels.values()}) == 3  # and no two share one


def test_segment_ids_stay_with_their_centres_while_the_model_learns():
    t = trained()
    before = t.snapshot()
    for _, x in blob_stream(600, seed=2):
        t.learn_one(x)
    after = t.snapshot()
    assert after.version == before.version + 1
    for _, x in blob_stream(200, seed=3):
        assert before.predict(x)[0] == after.predict(x)[0]


def test_snapshot_round_trips_and_restores_a_trainer():
    snap = trained().snapshot()
    again = ModelSnapshot.from_dict(snap.to_dict())
    assert again == snap
    fresh = ClusterTrainer(n_clusters=3, warmup=60, features=FEATURES)
    fresh.restore(again)
    assert fresh.ready and fresh.snapshot().centres == snap.centres


def test_warming_up_model_refuses_a_snapshot():
    with pytest.raises(RuntimeError, match="warming up"):
        ClusterTrainer(n_clusters=3, warmup=60, features=FEATURES).snapshot()


def test_confidence_is_high_on_a_centre_and_half_between_two():
    snap = ModelSnapshot(1, FEATURES, ((0.0, 0.0), (1.0, 0.0)), (1, 1))
    assert snap.predict({"a": 0.0, "b": 0.0})[2] == 1.0
    assert snap.predict({"a": 0.5, "b": 0.0})[2] == 0.5


def test_changes_between_assignments():
    now = SegmentAssignment("c", 2, "x", 0.9, 7, 100, 5)
    first = changes_between(CustomerProfile("c"), now)
    assert [(c.segment, c.change) for c in first] == [("cluster:2", "entered")]
    moved = changes_between(CustomerProfile("c", segment=1), now)
    assert [c.to_dict()["change"] for c in moved] == ["exited", "entered"]
    exited = moved[0].to_dict()
    assert len(exited.pop("change_id")) == 24
    assert exited == {
        "customer_id": "c",
        "segment": "cluster:1",
        "change": "exited",
        "previous": 1,
        "current": 2,
        "event_ts": 100,
        "reason": "behavior moved nearer another centre",
        "model_version": 7,
        "events_applied": 5,
        "evaluated_at": 0,
        "definitions_version": 0,
    }


def test_a_stranded_centre_is_refitted_and_the_others_keep_their_ids():
    t = ClusterTrainer(
        n_clusters=3, warmup=60, features=FEATURES, min_share=0.1, window=300, check_every=100
    )
    # Centre 2 is stranded far from every blob; centres 0 and 1 sit on blobs 0 and 1.
    stranded = ((0.1, 0.1), (0.9, 0.1), (5.0, 5.0))
    snap = ModelSnapshot(
        1, FEATURES, stranded, (1, 1, 1), scaling=IDENTITY, categories=t.categories
    )
    assert t.restore(snap)
    for _, x in blob_stream(600, seed=4):
        t.learn_one(x)
    assert t.refits >= 1
    snap = t.snapshot()
    assert min(t.shares()) >= 0.1
    assert snap.predict({"a": 0.1, "b": 0.1})[0] == 0  # ids stayed with their groups
    assert snap.predict({"a": 0.9, "b": 0.1})[0] == 1
    assert snap.predict({"a": 0.5, "b": 0.9})[0] == 2  # the stranded id now holds blob 2


def test_a_genuinely_small_group_does_not_cause_endless_refits():
    t = ClusterTrainer(
        n_clusters=3, warmup=60, features=FEATURES, min_share=0.2, window=300, check_every=100
    )
    for _, x in blob_stream(900, seed=5):  # three equal blobs: each about a third
        t.learn_one(x)
    assert t.refits == 0
