"""The ceiling tool's figures on hand-made customers whose personas are known."""

import sys

import numpy as np
import pytest

from models.events import Event
from models.features import CustomerProfile
from stream.tools.eval_ceiling import CeilingDraw, ceiling, spaces, summarize
from stream.tools.eval_real import EvalExtraMissing

T0 = 1_795_000_000_000
KINDS = {  # persona: (device, category, viewed price, local hour)
    "cheap": ("mobile", "outlet", 10.0, 8),
    "dear": ("desktop", "servers", 900.0, 21),
    "home": ("tablet", "garden", 80.0, 14),
}


def customer(i: int, persona: str) -> CustomerProfile:
    device, category, price, hour = KINDS[persona]
    rng = np.random.default_rng(i)
    p = CustomerProfile(f"c{i}")
    for s in range(3):
        ts = T0 + s * 86_400_000 + hour * 3_600_000
        for v in range(4):
            p.apply(
                Event(
                    f"e{i}-{s}-{v}", p.customer_id, "product_view", ts + v * 60_000,
                    session_id=f"s{i}-{s}", device=device, category=category,
                    price=float(price * rng.uniform(0.8, 1.2)), channel="direct",
                )
            )  # fmt: skip
    return p


def draw(n: int = 90) -> CeilingDraw:
    names = list(KINDS)
    truth = [names[i % 3] for i in range(n)]
    profiles = [customer(i, t) for i, t in enumerate(truth)]
    raw = spaces(CeilingDraw(0, "x", [], profiles, truth, ["pure"] * n, [0] * n, np.zeros((n, 1))))[
        "raw"
    ]
    online = [names.index(t) for t in truth]  # a perfect online model
    return CeilingDraw(
        seed=1,
        size="test",
        ids=[p.customer_id for p in profiles],
        profiles=profiles,
        truth=truth,
        kinds=["pure"] * (n - 9) + ["mixed"] * 9,
        online=online,
        snapshot_points=raw,
        centres=np.asarray([raw[[t == name for t in truth]].mean(axis=0) for name in names]),
        final_nearest=online,
        final_scored=[(label + 1) % 3 if i == 0 else label for i, label in enumerate(online)],
    )


def test_separable_personas_have_a_ceiling_of_one_and_no_confusions():
    pytest.importorskip("sklearn")
    figures = ceiling(draw(), seed=1, boosted=())  # boosting is slow; the same wiring
    assert figures["customers"] == 90 and figures["online ARI"] == 1.0
    assert figures["k-means ARI snapshot"] == 1.0
    # Every clustering of the snapshot's space finds them, the online centres are the optimum.
    assert figures["gaussian mixture (full) ARI snapshot"] == 1.0
    assert figures["gaussian mixture (spherical) ARI snapshot"] == 1.0
    assert figures["weighted k-means (3) ARI snapshot"] == 1.0
    assert figures["weighted k-means (8) ARI snapshot"] == 1.0
    assert figures["online centres' inertia / offline k-means'"] == pytest.approx(1.0)
    # The final model against the records: one customer of 90 it would move elsewhere.
    assert figures["final model ARI (nearest centre)"] == 1.0
    assert figures["final model ARI (as at their last event)"] < 1.0
    assert figures["records the final model would move"] == pytest.approx(1 / 90)
    assert figures["logistic accuracy snapshot"] == 1.0
    assert (
        figures["logistic accuracy +traits"] == 1.0 and "boosting accuracy +traits" not in figures
    )
    assert figures["online accuracy mixed"] == 1.0 and figures["share mixed"] == 0.1
    assert not any(name.startswith("confused") for name in figures)
    sp = spaces(draw(30))
    # Category mix (3 categories), channel (1) and the 24 local hours widen the raw vector.
    assert sp["+channel+hours"].shape == (30, 14 + 3 + 1 + 24)


def test_summary_is_median_and_lowest_per_figure():
    rows = summarize([{"a": 0.5, "b": 1.0}, {"a": 0.9}, {"a": 0.7}])
    assert rows == [("a", 0.7, 0.5, 3), ("b", 1.0, 1.0, 1)]


def test_summary_takes_the_highest_as_worst_where_higher_is_worse():
    name = "records the final model would move"
    rows = summarize([{name: 0.01, "ari": 0.8}, {name: 0.03, "ari": 0.9}, {name: 0.02, "ari": 0.7}])
    assert rows == [(name, 0.02, 0.03, 3), ("ari", 0.8, 0.7, 3)]


def test_centres_off_the_optimum_show_in_the_inertia_ratio():
    pytest.importorskip("sklearn")
    d = draw()
    assert d.centres is not None
    d.centres = d.centres[[0, 0, 1]]  # two centres on one persona's
    figures = ceiling(d, seed=1, boosted=())
    assert figures["online centres' inertia / offline k-means'"] > 2.0


def test_without_scikit_learn_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(EvalExtraMissing, match=r"\.\[eval\]"):
        ceiling(draw(9))


def test_weighted_kmeans_finds_groups_that_differ_in_one_feature():
    pytest.importorskip("sklearn")
    from stream.tools.eval_ceiling import weighted_kmeans

    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.5, 60)
    signal = np.repeat([0.0, 1.0], 30) + rng.normal(0, 0.05, 60)
    labels = weighted_kmeans(np.column_stack([noise, signal]), 2, 3.0, seed=1)
    assert len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1 and labels[0] != labels[-1]
    # given the right start, it stays there
    start = np.repeat([1, 0], 30)
    kept = weighted_kmeans(np.column_stack([noise, signal]), 2, 3.0, seed=1, start=start)
    assert kept.tolist() == start.tolist()


def test_the_figures_worst_at_their_highest_are_figures_the_ceiling_gives():
    pytest.importorskip("sklearn")
    from stream.tools.eval_ceiling import HIGHER_IS_WORSE

    assert set(HIGHER_IS_WORSE) <= set(ceiling(draw(), seed=1, boosted=()))


def test_a_draw_keeps_the_records_and_the_final_models_choices_apart():
    """``collect`` on a small draw: the records are what the step left (placing everyone with
    the final model changed no profile), and an evaluation at the last event differs from the
    nearest centre only where hysteresis keeps the record's cluster."""
    from stream.settings import Settings
    from stream.tools.eval_ceiling import collect

    d = collect(Settings(), 60_000, 1_000, 1)
    assert d.centres is not None and len(d.ids) > 300
    assert d.online == [-1 if p.segment is None else p.segment for p in d.profiles]
    assert len(d.final_nearest) == len(d.final_scored) == len(d.ids)
    held = [
        i for i, (a, b) in enumerate(zip(d.final_nearest, d.final_scored, strict=True)) if a != b
    ]
    assert all(d.final_scored[i] == d.online[i] for i in held)
    assert d.online != d.final_scored  # some records are of an earlier model's choice
