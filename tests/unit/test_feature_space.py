"""The clustering space learned from the data: scales, group weights, local dayparts, k."""

import math
import random
from dataclasses import replace

import numpy as np
import pytest

from models.clustering import ClusterTrainer, FeatureScaling, ModelSnapshot, population_key
from models.events import Event
from models.features import (
    FEATURE_GROUPS,
    FEATURE_VECTOR,
    STATE_VERSION,
    CustomerProfile,
    feature_vector,
)
from models.metrics import adjusted_rand_index
from stream.serving.report import cluster_count_evidence
from stream.settings import Settings

HOUR = 3_600_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % (24 * HOUR)  # a midnight UTC
# Three kinds of customer: (viewed price, order value, product views per session).
KINDS = ((8.0, 20.0, 12), (60.0, 90.0, 4), (400.0, 700.0, 2))


def shop(price_factor: float, n: int = 90, seed: int = 3) -> tuple[list[dict], list[int]]:
    """Feature vectors of ``n`` customers built from events, prices times ``price_factor``."""
    rng = random.Random(seed)
    vectors, truth = [], []
    for i in range(n):
        kind = i % len(KINDS)
        price, order, views = KINDS[kind]
        p = CustomerProfile(f"c{i}")
        ts = T0 + rng.randrange(20) * HOUR
        for s in range(4):
            for v in range(views + rng.randrange(2)):
                p.apply(
                    Event(
                        f"v{i}-{s}-{v}",
                        p.customer_id,
                        "product_view",
                        ts,
                        session_id=f"s{i}-{s}",
                        price=price * price_factor * rng.uniform(0.8, 1.25),
                        device="mobile",
                    )
                )
                ts += 60_000
            amount = order * price_factor * rng.uniform(0.8, 1.25)
            p.apply(Event(f"p{i}-{s}", p.customer_id, "purchase", ts, amount=amount))
            ts += 86_400_000
        vectors.append(feature_vector(p))
        truth.append(kind)
    return vectors, truth


def clusters(vectors: list[dict], k: int = 3) -> list[int]:
    trainer = ClusterTrainer(n_clusters=k, warmup=len(vectors), seed=5, min_share=0)
    for x in vectors:
        trainer.learn_one(x)
    snap = trainer.snapshot()
    return [snap.predict(x)[0] for x in vectors]


def test_a_shop_with_prices_a_hundred_times_higher_gets_the_same_clusters():
    cheap, truth = shop(1.0)
    dear, same_truth = shop(100.0)
    assert truth == same_truth
    # Under the old fixed scale (1,000, clipped) two kinds of the dear shop sat together at the
    # top; now its own range sets the scale and the partition is the same.
    assert sum(x["price_level"] > 1.0 for x in dear) == 2 * len(dear) // 3
    labels_cheap, labels_dear = clusters(cheap), clusters(dear)
    assert adjusted_rand_index(labels_cheap, labels_dear) == 1.0
    assert adjusted_rand_index(truth, labels_dear) == 1.0


def test_learned_scales_are_robust_quantiles_with_fallbacks():
    rng = np.random.default_rng(0)
    data = np.column_stack(
        [
            rng.uniform(0, 10, 2000),  # spread about 5 (p25-p75)
            np.r_[np.zeros(1800), rng.uniform(1, 3, 200)],  # p25 = p75: p5-p95 (about 2.6)
            np.r_[np.zeros(1990), np.ones(10)],  # p5 = p95 too: falls back to the full range
            np.full(2000, 0.3),  # constant: spread 1
        ]
    )
    data[0, 0] = 1e9  # one outlier moves no quantile
    s = FeatureScaling.learn(data, ("a", "b", "c", "d"))
    assert s.spreads[0] == pytest.approx(5.0, abs=0.3) and s.centres[0] == pytest.approx(5, abs=0.3)
    assert s.spreads[1] == pytest.approx(np.percentile(data[:, 1], 95), abs=1e-9)
    assert s.spreads[2:] == (1.0, 1.0)
    assert s.transform([1e9, 0.0, 0.0, 0.3])[0] == 2.0  # clipped two spreads out


def test_a_group_of_shares_weighs_like_one_feature():
    rng = np.random.default_rng(1)
    n = 500
    devices = np.eye(3)[rng.integers(0, 3, n)]  # everyone on one device
    dayparts = rng.dirichlet(np.ones(4), n)
    scalar = rng.uniform(0, 1, (n, len(FEATURE_VECTOR) - 7))
    names = [f for f in FEATURE_VECTOR if not any(f in g for g in FEATURE_GROUPS.values())]
    order = names + list(FEATURE_GROUPS["device"]) + list(FEATURE_GROUPS["daypart"])
    s = FeatureScaling.learn(np.hstack([scalar, devices, dayparts]), order)
    mobile, desktop = [0.0] * len(order), [0.0] * len(order)
    mobile[order.index("mobile_share")] = desktop[order.index("desktop_share")] = 1.0
    # Two customers on different devices, alike otherwise: as far apart as the p25 and the p75
    # customer of one scalar feature (1 spread), not as far as three features would put them.
    assert math.dist(s.transform(mobile), s.transform(desktop)) == pytest.approx(1.0)
    low, high = [0.0] * len(order), [0.0] * len(order)
    low[0], high[0] = np.percentile(scalar[:, 0], 25), np.percentile(scalar[:, 0], 75)
    assert math.dist(s.transform(low), s.transform(high)) == pytest.approx(1.0)
    night, evening = [0.0] * len(order), [0.0] * len(order)
    night[order.index("night_share")] = evening[order.index("evening_share")] = 1.0
    assert math.dist(s.transform(night), s.transform(evening)) == pytest.approx(1.0)


def test_a_group_weight_multiplies_its_distances():
    """The category mix weighs ``category_weight`` times a device or daypart mix: the
    distance between two customers' mixes is that many times as large."""
    rng = np.random.default_rng(3)
    n = 500
    scalar = rng.uniform(0, 1, (n, 1))
    categories = rng.dirichlet(np.full(4, 0.3), n)
    names = ["price_level", *(f"category_share.c{i}" for i in range(4))]
    groups = {"category": tuple(names[1:])}
    data = np.hstack([scalar, categories])
    one, three = (
        FeatureScaling.learn(data, names, groups, weights={"category": w}) for w in (1.0, 3.0)
    )
    a, b = [0.0, 0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5, 0.5]  # each over two categories
    assert math.dist(one.transform(a), one.transform(b)) == pytest.approx(math.sqrt(0.5))
    assert math.dist(three.transform(a), three.transform(b)) == pytest.approx(3 * math.sqrt(0.5))
    assert one.spreads[0] == three.spreads[0]  # a scalar keeps its unit
    with pytest.raises(ValueError, match="weight"):
        FeatureScaling.learn(data, names, groups, weights={"category": 0.0})


def test_the_trainer_learns_the_shops_categories_with_its_space():
    """The category mix: the most viewed categories are chosen with the space, kept in the
    snapshot's features, scored by name; a restored trainer keeps them; a snapshot from
    before the category mix is retrained from, with its ids."""
    rng = np.random.default_rng(4)
    base = {f: 0.5 for f in FEATURE_VECTOR}
    trainer = ClusterTrainer(n_clusters=2, warmup=200, seed=1, categories=2)
    samples: list[dict[str, float]] = []
    for i in range(400):
        group = i % 2  # two groups alike but for what they view
        shares = {"category_share.shoes": 0.9, "category_share.bags": 0.1}
        if group:
            shares = {"category_share.servers": 0.8, "category_share.cables": 0.2}
        x = {**base, **{k: v + rng.normal(0, 0.01) for k, v in shares.items()}}
        x["category_share.rare"] = 0.01
        samples.append(x)
        trainer.learn_one(x, key=i)
    snap = trainer.snapshot()
    assert snap.categories == 2
    assert snap.features == (*FEATURE_VECTOR, "category_share.servers", "category_share.shoes")
    shoes = {**base, "category_share.shoes": 1.0}
    servers = {**base, "category_share.servers": 1.0}
    assert snap.predict(shoes)[0] != snap.predict(servers)[0]
    assert "shoes" in snap.describe(snap.predict(shoes)[0])
    again = ModelSnapshot.from_dict(snap.to_dict())
    assert again == snap
    restored = ClusterTrainer(n_clusters=2, warmup=200, seed=1, categories=2)
    assert restored.restore(again) and restored.features == snap.features
    old = replace(snap, categories=None)  # stored before the category mix
    fresh = ClusterTrainer(n_clusters=2, warmup=200, seed=2, categories=2)
    assert not fresh.restore(old) and not fresh.ready
    for i, x in enumerate(reversed(samples)):  # retrained: its ids are the old snapshot's
        fresh.learn_one(x, key=i)
    again_snap = fresh.snapshot()
    assert again_snap.version > old.version
    for point in (shoes, servers):
        assert again_snap.predict(point)[0] == old.predict(point)[0]


def test_a_refit_that_finds_other_categories_rebuilds_the_kept_points() -> None:
    """The categories are chosen again at each fit from scratch: when the shop's most viewed
    category changes, every kept sample is a point of the new categories, the centres too,
    and the snapshot scores by the new names."""
    rng = np.random.default_rng(6)
    base = {f: 0.5 for f in FEATURE_VECTOR}
    trainer = ClusterTrainer(n_clusters=2, warmup=60, seed=1, categories=1, check_every=50)

    def sample(i: int, category: str) -> None:
        x = {**base, "monetary": float(i % 2) + rng.normal(0, 0.01)}
        trainer.learn_one({**x, f"category_share.{category}": 1.0}, key=i)

    for i in range(60):
        sample(i, "shoes")
    assert trainer.features[-1:] == ("category_share.shoes",)
    for i in range(60, 400):  # the population doubles, now mostly servers
        sample(i, "servers")
    assert trainer.refits >= 1 and trainer.features[-1:] == ("category_share.servers",)
    assert trainer._data().shape[1] == len(trainer.features)
    snap = trainer.snapshot()
    assert snap.features == trainer.features and all(
        len(c) == len(snap.features) for c in snap.centres
    )
    assert snap.predict({**base, "monetary": 0.0, "category_share.servers": 1.0})[0] in (0, 1)


def test_a_snapshot_from_before_the_category_mix_continues_without_one() -> None:
    """``categories=0``: a snapshot stored before the category mix (``categories`` None) is
    the same space, continued, not retrained."""
    trainer = ClusterTrainer(n_clusters=2, warmup=20, seed=1, categories=0)
    for i in range(40):
        trainer.learn_one({f: float(i % 2) for f in FEATURE_VECTOR}, key=i)
    old = replace(trainer.snapshot(), categories=None)
    assert ClusterTrainer(n_clusters=2, warmup=20, seed=1, categories=0).restore(old)
    assert not ClusterTrainer(n_clusters=2, warmup=20, seed=1).restore(old)


def visit(p: CustomerProfile, hour: int, n: int = 3, country: str | None = None) -> None:
    for i in range(n):
        ts = T0 + hour * HOUR + i * 60_000
        p.apply(Event(f"e{hour}-{i}", p.customer_id, "page_view", ts, session_id=f"s{hour}"))
    if country:
        p.apply(Event(f"c{hour}", p.customer_id, "page_view", T0 + hour * HOUR, country=country))


def test_dayparts_are_in_local_time_from_the_time_zone_or_the_country():
    p = CustomerProfile("c")
    visit(p, 3)  # 03:00 UTC
    assert p.dayparts == {"night": 3.0}  # nothing known: UTC
    p.country = "JP"
    assert feature_vector(p)["afternoon_share"] == 1.0  # 12:00 in Tokyo
    p.apply(Event("id", "c", "identify", T0 + 4 * HOUR, traits={"timezone": "America/New_York"}))
    x = feature_vector(p)  # the trait wins over the country: 22:00 or 23:00 the day before
    assert x["evening_share"] == 1.0 and x["afternoon_share"] == 0.0
    p.traits["timezone"] = "Not/AZone"  # an unknown zone counts as none: the country again
    assert feature_vector(p)["afternoon_share"] == 1.0


def test_profile_state_v3_migrates_its_utc_dayparts():
    p = CustomerProfile("c")
    visit(p, 8, n=6)
    state = p.to_state()
    assert state["v"] == STATE_VERSION == 9 and sum(state["hr"].values()) == 6
    v3 = {k: v for k, v in state.items() if k not in ("hr", "ev", "et")}
    v3 |= {"v": 3, "dp": {"morning": 6, "night": 3}, "s": [*state["s"][:2], None, False]}
    migrated = CustomerProfile.from_state(v3)
    assert migrated.dayparts == pytest.approx({"morning": 6.0, "night": 3.0})
    assert CustomerProfile.from_state(migrated.to_state()).hours == migrated.hours


def test_profile_state_v4_migrates_with_its_definitions_not_known():
    p = CustomerProfile("c", evaluated_under="0123456789abcdef")
    state = p.to_state()
    assert CustomerProfile.from_state(state).evaluated_under == "0123456789abcdef"
    v4 = {k: v for k, v in state.items() if k not in ("ev", "et")}
    v4 |= {"v": 4, "s": [0, 0, None, False]}
    assert CustomerProfile.from_state(v4).evaluated_under is None


def test_profile_state_v8_migrates_evaluated_as_of_no_time_yet():
    p = CustomerProfile("c", evaluated_through=1_795_000_000_000)
    state = p.to_state()
    assert CustomerProfile.from_state(state).evaluated_through == 1_795_000_000_000
    v8 = {k: v for k, v in state.items() if k != "et"} | {"v": 8}
    assert CustomerProfile.from_state(v8).evaluated_through == 0
    with pytest.raises(ValueError, match="unsupported profile state version 10"):
        CustomerProfile.from_state(state | {"v": 10})


def mixture(k: int, n: int, dims: int = 6, seed: int = 0) -> tuple[list[dict], list[int]]:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (k, dims)) * 4
    labels = rng.integers(0, k, n)
    points = centres[labels] + rng.normal(0, 0.15, (n, dims))
    names = [f"f{i}" for i in range(dims)]
    return [dict(zip(names, map(float, p), strict=True)) for p in points], labels.tolist()


@pytest.mark.parametrize("planted", [3, 4, 6])
def test_auto_picks_the_planted_number_of_clusters(planted):
    xs, truth = mixture(planted, 800, seed=planted)
    t = ClusterTrainer(n_clusters=None, warmup=600, features=[f"f{i}" for i in range(6)])
    for x in xs:
        t.learn_one(x)
    snap = t.snapshot()
    assert snap.k_mode == "auto" and snap.k_chosen == planted
    assert sorted(snap.k_scores) == list(range(2, 11))
    assert max(snap.k_scores, key=snap.k_scores.__getitem__) == planted
    assert adjusted_rand_index(truth[600:], [snap.predict(x)[0] for x in xs[600:]]) > 0.99


def test_a_fixed_k_is_used_and_the_evidence_kept():
    xs, _ = mixture(4, 700, seed=9)
    t = ClusterTrainer(n_clusters=6, warmup=600, features=[f"f{i}" for i in range(6)])
    for x in xs:
        t.learn_one(x)
    snap = t.snapshot()
    assert snap.k_mode == "fixed" and snap.k_chosen == 6
    evidence = cluster_count_evidence(snap)
    assert evidence["best"] == 4 and "SEGMENTER_N_CLUSTERS=6" in evidence["line"]


def trained_on_features() -> tuple[ClusterTrainer, list[dict]]:
    vectors, _ = shop(1.0, n=120)
    t = ClusterTrainer(n_clusters=3, warmup=100, seed=2)
    for x in vectors:
        t.learn_one(x)
    return t, vectors


def test_snapshot_round_trip_keeps_the_space_and_the_evidence():
    t, vectors = trained_on_features()
    snap = t.snapshot()
    assert snap.scaling is not None and snap.k_scores
    again = ModelSnapshot.from_dict(snap.to_dict())
    assert again == snap
    assert [again.predict(x) for x in vectors] == [snap.predict(x) for x in vectors]
    restored = ClusterTrainer(n_clusters=3, warmup=100, seed=2)
    assert restored.restore(again)
    assert restored.snapshot().scaling == snap.scaling


def test_an_old_snapshot_scores_as_it_did_and_the_trainer_retrains_from_it():
    t, vectors = trained_on_features()
    new = t.snapshot()
    # A schema 1 snapshot: centres in the vector's own space, no scaling, no k evidence.
    old_dict = new.to_dict() | {"schema": 1, "version": 7}
    old_dict["centres"] = [list(new.base_centre(i)) for i in range(3)]
    del old_dict["scaling"], old_dict["k"]
    old = ModelSnapshot.from_dict(old_dict)
    assert old.scaling is None and old.k_scores == {}
    point = [vectors[0][f] for f in FEATURE_VECTOR]
    nearest = min(range(3), key=lambda i: math.dist(point, old.centres[i]))
    assert old.predict(vectors[0])[0] == nearest  # scored in the space it was trained in
    fresh = ClusterTrainer(n_clusters=3, warmup=100, seed=2)
    assert not fresh.restore(old) and not fresh.ready  # retrains
    for x in vectors[:100]:
        fresh.learn_one(x)
    retrained = fresh.snapshot()
    assert retrained.version == 8 and retrained.scaling is not None
    # Ids follow the old centres: each new centre took the id of the old one nearest to it,
    # and customers keep their segment across the switch.
    for i in range(3):
        base = retrained.base_centre(i)
        assert min(range(3), key=lambda j: math.dist(base, old.centres[j])) == i
    kept = sum(retrained.predict(x)[0] == old.predict(x)[0] for x in vectors)
    assert kept >= 0.8 * len(vectors)  # not all: the learned space draws other borders


def test_settings_take_auto_and_refuse_a_warmup_below_k(monkeypatch):
    monkeypatch.setenv("SEGMENTER_N_CLUSTERS", "auto")
    assert Settings().n_clusters == "auto"
    monkeypatch.setenv("SEGMENTER_N_CLUSTERS", "8")
    monkeypatch.setenv("SEGMENTER_WARMUP_SAMPLES", "7")
    with pytest.raises(ValueError, match="WARMUP_SAMPLES"):
        Settings()


def phases(keyed: bool) -> ClusterTrainer:
    """Groups A and B act together, then only A does (B lapsed): 600 then 6,000 samples."""
    rng = random.Random(4)
    t = ClusterTrainer(n_clusters=2, warmup=400, features=("a", "b"), check_every=200)

    def send(group: str, i: int) -> None:
        at = 0.0 if group == "A" else 1.0
        x = {"a": at + rng.gauss(0, 0.05), "b": at + rng.gauss(0, 0.05)}
        t.learn_one(x, population_key(f"{group}{i}") if keyed else None)

    for i in range(300):
        send("A", i)
        send("B", i)
    for n in range(6000):
        send("A", n % 300)
    return t


def test_with_customer_keys_the_model_describes_the_population_not_the_activity():
    keyed, unkeyed = phases(True), phases(False)
    snap = keyed.snapshot()
    assert keyed.population_mode and keyed.settles > 0
    assert snap.predict({"a": 1.0, "b": 1.0})[0] != snap.predict({"a": 0.0, "b": 0.0})[0]
    assert keyed.shares() == [0.5, 0.5] and sorted(snap.counts) == [300, 300]
    # From the samples alone, the lapsed half is a stranded centre: re-fitted onto the active.
    assert not unkeyed.population_mode and unkeyed.refits >= 1
    old = unkeyed.snapshot()
    assert old.predict({"a": 1.0, "b": 1.0})[0] == old.predict({"a": 0.1, "b": 0.1})[0]


def test_the_population_is_a_bounded_uniform_sample_by_key():
    t = ClusterTrainer(n_clusters=2, warmup=50, features=("a",), population=100)
    keys = [population_key(f"c{i}") for i in range(1000)]
    for key in keys:
        t.learn_one({"a": 0.5}, key)
    kept = set(t._members)
    assert 75 <= len(kept) <= 100 and kept == set(sorted(keys)[: len(kept)])


def test_a_training_sample_carries_its_customer_key_not_the_id():
    from models.step import _sample

    p = CustomerProfile("c-42")
    visit(p, 9)
    sample = _sample(p)
    assert sample["key"] == population_key("c-42") and "c-42" not in str(sample)


def test_after_a_restore_the_population_refills_before_it_moves_the_model():
    t = phases(True)
    snap = t.snapshot()
    assert sum(snap.counts) == 600  # fitted on 600 customers
    back = ClusterTrainer(n_clusters=2, warmup=100, features=("a", "b"), check_every=200)
    assert back.restore(snap)
    rng = random.Random(9)
    for i in range(299):  # the first to come back: only A's, half the population less one
        x = {"a": rng.gauss(0, 0.05), "b": rng.gauss(0, 0.05)}
        back.learn_one(x, population_key(f"A{i}"))
    assert not back.population_mode
    for i in range(60):
        x = {"a": 1 + rng.gauss(0, 0.05), "b": 1 + rng.gauss(0, 0.05)}
        back.learn_one(x, population_key(f"B{i}"))
    assert back.population_mode
    again = back.snapshot()
    assert again.predict({"a": 1.0, "b": 1.0})[0] == snap.predict({"a": 1.0, "b": 1.0})[0]
