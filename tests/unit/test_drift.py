"""Golden tests of the drift detectors: known change points, and silence on stationary streams."""

from __future__ import annotations

import random

import pytest

from models.drift import ChangeDetector, DriftMonitor
from models.features import FEATURE_VECTOR

CHANGE_AT = 5_000
GOLDEN_INDEX = 5_375  # detected 375 samples after the change
GOLDEN_SINCE = 5_002  # dated within 2 samples of it


def _bernoulli_stream(seed: int, n: int, p_before: float, p_after: float) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < (p_before if i < CHANGE_AT else p_after)) for i in range(n)]


def test_a_share_change_fires_at_a_pinned_index_and_not_before() -> None:
    """Golden: seed 7, a share moving 0.25 -> 0.40 at index 5,000."""
    detector = ChangeDetector()
    fired = []
    for i, x in enumerate(_bernoulli_stream(7, 10_000, 0.25, 0.40)):
        detector.update(x, ts=1_000 * i)
        if detector.drift_detected:
            fired.append((i, detector.since // 1_000))
    assert fired == [(GOLDEN_INDEX, GOLDEN_SINCE)]
    assert detector.before == pytest.approx(0.25, abs=0.02)
    assert detector.after == pytest.approx(0.40, abs=0.05)


def _blobs(
    seed: int,
    n: int,
    weights: list[float],
    shift_at: int | None = None,
    shifted: list[float] | None = None,
):
    """Samples from five fixed blobs in the model's feature space, like the demo's personas."""
    rng = random.Random(seed)
    centres = [[rng.random() for _ in FEATURE_VECTOR] for _ in weights]
    for i in range(n):
        w = shifted if shift_at is not None and i >= shift_at and shifted else weights
        k = rng.choices(range(len(w)), w)[0]
        x = {
            f: min(1.0, max(0.0, rng.gauss(c, 0.08)))
            for f, c in zip(FEATURE_VECTOR, centres[k], strict=True)
        }
        distance = abs(rng.gauss(0.3, 0.05))
        yield i, x, k, distance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_stationary_stream_raises_no_alarm(seed: int) -> None:
    monitor = DriftMonitor()
    weights = [0.2, 0.25, 0.25, 0.15, 0.15]
    alerts = []
    for i, x, k, d in _blobs(seed, 20_000, weights):
        alerts += monitor.update(x, k, d, ts=i, n_segments=5)
    assert alerts == []


def test_a_persona_mix_switch_raises_share_alerts_soon_after_the_switch() -> None:
    monitor = DriftMonitor()
    switch = 10_000
    alerts = []
    for i, x, k, d in _blobs(
        3, 20_000, [0.2, 0.25, 0.25, 0.15, 0.15], switch, [0.1, 0.6, 0.1, 0.1, 0.1]
    ):
        alerts += monitor.update(x, k, d, ts=i, n_segments=5)
    shares = [a for a in alerts if a.kind == "segment_share"]
    assert shares, alerts
    assert all(a.detected_at >= switch for a in alerts), "an alert fired before the switch"
    first = min(shares, key=lambda a: a.detected_at)
    assert first.detected_at < switch + 1_000
    rose = next(a for a in shares if a.subject == "cluster:1")
    assert rose.before == pytest.approx(0.25, abs=0.03)
    assert rose.after == pytest.approx(0.6, abs=0.08)
    assert switch - 100 <= rose.since <= rose.detected_at
    assert "share of cluster:1 rose from" in rose.to_dict()["message"]


def test_centre_movement_is_measured_against_a_reference_that_moves_on_alert() -> None:
    monitor = DriftMonitor(centre_threshold=0.1)
    assert monitor.model_moved(1, [[0.0, 0.0]], ts=1) == []
    assert monitor.model_moved(2, [[0.06, 0.0]], ts=2) == []  # small steps add up ...
    (alert,) = monitor.model_moved(3, [[0.12, 0.0]], ts=3)  # ... against the reference
    assert (alert.subject, alert.since, alert.detected_at) == ("cluster:0", 1, 3)
    assert alert.magnitude == pytest.approx(0.12)
    assert monitor.model_moved(4, [[0.15, 0.0]], ts=4) == []  # the reference moved on


def test_a_model_in_another_space_becomes_the_reference_instead_of_a_move() -> None:
    """A refit learns a new space (and maybe other categories: centres of another length):
    its centres are not compared with the old ones, and nothing raises."""
    monitor = DriftMonitor(centre_threshold=0.1)
    assert monitor.model_moved(1, [[0.0, 0.0], [1.0, 1.0]], 10, space="a") == []
    assert monitor.model_moved(2, [[0.0, 0.0, 0.5], [1.0, 1.0, 0.5]], 20, space="b") == []
    assert monitor.model_moved(3, [[0.0, 0.0, 0.0], [1.0, 1.0, 0.5]], 30, space="c") == []
    moved = monitor.model_moved(4, [[0.0, 0.0, 0.9], [1.0, 1.0, 0.5]], 40, space="c")
    assert [a.subject for a in moved] == ["cluster:0"]
