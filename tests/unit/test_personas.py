"""Persona matching: in the model's learned space when there is one, the fixed space before."""

from __future__ import annotations

import re

import numpy as np

from models.clustering import PERSONA_QUANTILES, ClusterTrainer, FeatureScaling, ModelSnapshot
from models.features import FEATURE_VECTOR, CustomerProfile
from models.personas import Persona, PersonaCatalog
from models.segments import SegmentCatalog, Stability, assign

ELLA = Persona("Ella", "", {"avg_order_value": 320, "mobile_share": 0.5, "desktop_share": 0.5})
BEN = Persona("Ben", "", {"avg_order_value": 25, "mobile_share": 0.9, "desktop_share": 0.1})
CATALOG = PersonaCatalog([ELLA, BEN])


def _space(at: dict[str, tuple[float, float]]) -> FeatureScaling:
    """Centre and spread per feature (others: centre 0, spread 1)."""
    centres, spreads = zip(*(at.get(f, (0.0, 1.0)) for f in FEATURE_VECTOR), strict=True)
    return FeatureScaling(centres, spreads)


def _model(scaling: FeatureScaling | None, features=FEATURE_VECTOR) -> ModelSnapshot:
    centre = (0.0,) * len(features)
    return ModelSnapshot(1, tuple(features), (centre,), (1,), persona_scaling=scaling)


#: A shop whose customers' order values are close together (spread 0.2 of the vector's
#: monetary, around an order value of about 60): there, 120 against 25 is a large difference.
NARROW_AMOUNTS = _model(_space({"monetary": (0.6, 0.2)}))
#: A shop whose order values spread widely and whose customers' device mixes are close.
NARROW_DEVICES = _model(
    _space({"monetary": (0.6, 5.0), "mobile_share": (0.7, 0.1), "desktop_share": (0.3, 0.1)})
)


def _x(**prototype: float) -> dict[str, float]:
    return Persona("x", "", prototype).vector()


# Between the two: Ben's device mix, an order value nearer Ella's than Ben's on the log scale.
BETWEEN = _x(avg_order_value=120, mobile_share=0.85, desktop_share=0.15)


def test_the_models_space_decides_and_the_fixed_space_before_a_model() -> None:
    assert CATALOG.match(BETWEEN).name == "Ben"  # the device shares outweigh the amount
    assert CATALOG.match(BETWEEN, model=NARROW_AMOUNTS).name == "Ella"
    assert CATALOG.match(BETWEEN, model=NARROW_DEVICES).name == "Ben"


def test_a_model_without_a_learned_space_over_the_vector_leaves_the_fixed_space() -> None:
    fixed = CATALOG.match(BETWEEN)
    assert CATALOG.match(BETWEEN, model=_model(None)) == fixed  # a schema 1 snapshot
    scaling = FeatureScaling((0.6,), (0.2,))
    assert CATALOG.match(BETWEEN, model=_model(scaling, ("monetary",))) == fixed


def test_models_in_turn_each_get_their_own_space() -> None:
    """A catalog keeps a few spaces' persona points: alternating models (eval scores with the
    midpoint model, then the final one) and more models than it keeps never mix them up."""
    others = [_model(_space({"monetary": (0.5, 0.1 + i / 40)})) for i in range(6)]
    for model in [NARROW_AMOUNTS, NARROW_DEVICES, *others, NARROW_DEVICES, NARROW_AMOUNTS] * 2:
        expected = "Ben" if model is NARROW_DEVICES else "Ella"
        assert CATALOG.match(BETWEEN, model=model).name == expected


def test_hysteresis_and_confidence_in_the_models_space() -> None:
    found = CATALOG.match(BETWEEN, model=NARROW_AMOUNTS)
    assert 0.5 < found.confidence < 1.0
    kept = CATALOG.match(BETWEEN, current="Ben", hysteresis=0.9, model=NARROW_AMOUNTS)
    assert kept.name == "Ben" and kept.confidence < 0.5
    moved = CATALOG.match(BETWEEN, current="Ben", hysteresis=0.05, model=NARROW_AMOUNTS)
    assert moved.name == "Ella"
    assert CATALOG.match(ELLA.vector(), model=NARROW_AMOUNTS).confidence == 1.0


def test_reasons_rank_in_the_models_space_and_read_in_the_cards_units() -> None:
    """In the shop where amounts are narrow, the order value is what sets Ella apart; in the
    one where devices are, the device shares are. Values are shown as the card has them."""
    amounts = CATALOG.match(BETWEEN, model=NARROW_AMOUNTS).reasons
    assert amounts[0] == "avg_order_value near 320 (persona) vs 120"
    near_ella = _x(avg_order_value=120, mobile_share=0.55, desktop_share=0.45)
    devices = CATALOG.match(near_ella, model=NARROW_DEVICES)
    assert devices.name == "Ella" and devices.reasons[0].startswith(("mobile", "desktop"))
    for reason in amounts + devices.reasons:
        assert re.fullmatch(r"\w+ near [\d.]+ \(persona\) vs [\d.]+", reason)


def test_assign_matches_personas_in_the_models_space() -> None:
    """The worker's scoring (and so eval's and the definitions backfill's, which share it)."""
    profile = CustomerProfile("c", first_seen_ts=0, last_seen_ts=0)
    catalog = SegmentCatalog(personas=CATALOG, stability=Stability(hysteresis=0.0))
    assert assign(profile, None, catalog, x=BETWEEN).persona == "Ben"
    scored = assign(profile, NARROW_AMOUNTS, catalog, x=BETWEEN)
    assert scored.persona == "Ella" and scored.facts["persona"] == "Ella"


def test_the_definitions_backfill_matches_personas_as_the_worker_scores() -> None:
    """A backfill (``SegmentStep.reevaluate``) decides who moved with the same matching as
    scoring: under new definitions that move nobody (a trait added to every persona), it
    writes no one, although the fixed space would put some customers elsewhere."""
    import copy
    from dataclasses import replace

    from models.features import feature_vector
    from models.schedule import DueSchedule
    from stream.settings import Settings
    from stream.tools.evaluate import Replay
    from stream.tools.generator import TrafficGenerator

    replay = Replay(Settings(warmup_samples=50))
    generator = TrafficGenerator(customers=300, seed=5)
    for _ in range(3):
        for cid in generator.customer_ids:
            for message in generator.session(cid):
                replay.send(message)
    replay.drain()
    step, model = replay.step, replay.model
    assert model is not None and model.persona_scaling is not None and step.catalog.personas
    ids = sorted(replay.profiles)
    args = (replay.profiles, model, replay.watermark)
    # Everyone scored by the final model, personas the nearest (no hysteresis, no dwell).
    step.use_catalog(replace(step.catalog, stability=Stability(hysteresis=0.0)))
    step.rescore(ids, *args, DueSchedule(), 0)
    personas = step.catalog.personas
    fixed = [personas.match(feature_vector(replay.profiles[c])).name for c in ids]
    assert sum(f != replay.profiles[c].persona for f, c in zip(fixed, ids, strict=True)) > 0
    edited = PersonaCatalog(
        [replace(p, traits={**p.traits, "edited": True}) for p in personas.personas]
    )
    step.use_catalog(replace(step.catalog, personas=edited, version=2))
    out = step.reevaluate(ids, copy.deepcopy(replay.profiles), *args[1:], DueSchedule(), 0)
    assert out.writes == [] and out.changes == []


def test_the_persona_unit_spans_two_groups_whose_middle_half_is_one() -> None:
    """Two groups of customers, 80 and 20 of 100, each alike: the interquartile unit (the
    clusters') falls inside the larger group and shrinks to its noise; p10-p90 spans both."""
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.4, 0.005, 80), rng.normal(0.8, 0.005, 20)])
    points = np.column_stack([values, np.zeros(100)])
    iqr = FeatureScaling.learn(points, ("conversion", "x")).spreads[0]
    wide = FeatureScaling.learn(points, ("conversion", "x"), quantiles=PERSONA_QUANTILES)
    assert iqr < 0.05 and 0.35 < wide.spreads[0] < 0.45


def test_the_trainer_ships_the_persona_space_in_its_snapshots() -> None:
    """Learned from the trainer's customers at each snapshot (p10-p90, groups as the
    clusters'), it travels in the snapshot; a restored trainer ships it until customers come;
    a snapshot stored without one matches personas in the fixed space."""
    rng = np.random.default_rng(2)
    data = rng.random((300, len(FEATURE_VECTOR)))
    trainer = ClusterTrainer(n_clusters=3, warmup=100, seed=2)
    for i, row in enumerate(data):
        trainer.learn_one(dict(zip(FEATURE_VECTOR, row, strict=True)), key=i)
    snap = trainer.snapshot()
    expected = FeatureScaling.learn(data, FEATURE_VECTOR, quantiles=PERSONA_QUANTILES)
    assert snap.persona_scaling == expected != snap.scaling
    # It holds still between fits, like the clusters' space: customers who come later (here
    # far from the others) do not move it, nor anyone's persona with it.
    refits = trainer.refits
    for i, row in enumerate(rng.random((100, len(FEATURE_VECTOR))) * 3, start=len(data)):
        trainer.learn_one(dict(zip(FEATURE_VECTOR, row, strict=True)), key=i)
    assert trainer.refits == refits and trainer.snapshot().persona_scaling == expected
    again = ModelSnapshot.from_dict(snap.to_dict())
    assert again.persona_scaling == snap.persona_scaling
    restored = ClusterTrainer(n_clusters=3, warmup=100, seed=2)
    assert restored.restore(again) and restored.snapshot().persona_scaling == expected
    stored = snap.to_dict()
    del stored["persona_scaling"]
    old = ModelSnapshot.from_dict(stored)
    assert old.persona_scaling is None
    assert CATALOG.match(BETWEEN, model=old) == CATALOG.match(BETWEEN)
