"""Drift detection on the sample stream: segment shares, features, distance to centre, centres.

River's ADWIN does the statistics: it keeps a window of recent values and cuts it where the
means of the two parts differ beyond chance. Two additions make its alarms usable by people
watching a dashboard: a floor on the size of a change worth reporting (ADWIN also cuts its
window on tiny, statistically real changes) and the event time at which the change began.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from river.drift import ADWIN

from models.features import FEATURE_VECTOR

__all__ = ["ChangeDetector", "DriftAlert", "DriftMonitor"]

#: Recent values each detector keeps to place a change inside ADWIN's window (see update).
_RECENT = 512


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """One drift alert: the wire shape of the ``segment-drift`` topic.

    ``kind`` is ``segment_share``, ``feature``, ``distance`` or ``centre_movement``;
    ``subject`` names what drifted (``cluster:3``, ``feature:price_level``, ...). ``before`` and
    ``after`` are the means on either side of the change (for a centre, ``magnitude`` is how
    far it moved); ``since`` is the event time (epoch ms) at which the change began and
    ``detected_at`` the event time at which it was detected.
    """

    kind: str
    subject: str
    magnitude: float
    before: float | None
    after: float | None
    since: int
    detected_at: int
    samples: int
    model_version: int | None

    @property
    def message(self) -> str:
        since = datetime.fromtimestamp(self.since / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        if self.kind == "centre_movement":
            return f"centre of {self.subject} moved {self.magnitude:.3f} since {since}"
        what = {
            "segment_share": f"share of {self.subject}",
            "feature": f"mean {self.subject.removeprefix('feature:')}",
            "distance": "mean distance to the assigned centre",
        }.get(self.kind, self.subject)
        way = "rose" if (self.after or 0) > (self.before or 0) else "fell"
        return f"{what} {way} from {self.before:.3f} to {self.after:.3f} since {since}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "magnitude": round(self.magnitude, 4),
            "before": None if self.before is None else round(self.before, 4),
            "after": None if self.after is None else round(self.after, 4),
            "since": self.since,
            "detected_at": self.detected_at,
            "samples": self.samples,
            "model_version": self.model_version,
            "message": self.message,
        }


class ChangeDetector:
    """ADWIN on one stream of numbers, reporting only changes of at least ``min_effect``.

    Same idiom as River's detectors: ``update(x, ts)``, then read ``drift_detected``; after a
    detection, ``before``, ``after``, ``since`` and ``samples`` describe the change.

    >>> import random
    >>> rng = random.Random(1)
    >>> detector = ChangeDetector(min_effect=0.1)
    >>> fired = []
    >>> for i in range(4000):
    ...     p = 0.2 if i < 2000 else 0.6
    ...     detector.update(float(rng.random() < p), ts=i)
    ...     if detector.drift_detected:
    ...         fired.append(i)
    >>> len(fired), 2000 <= detector.since <= fired[0] < 2200
    (1, True)
    >>> round(detector.before, 1), abs(detector.after - 0.6) < 0.15
    (0.2, True)
    """

    def __init__(self, delta: float = 1e-5, min_effect: float = 0.05, grace: int = 200) -> None:
        self.adwin = ADWIN(delta=delta, grace_period=grace)  # type: ignore[no-untyped-call]
        self.min_effect = min_effect
        self.n = 0
        self.drift_detected = False
        self.before = math.nan
        self.after = math.nan
        self.since = 0
        self.samples = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=_RECENT)

    def update(self, x: float, ts: int) -> None:
        adwin = self.adwin
        width, mean = adwin.width, adwin.estimation
        adwin.update(x)  # type: ignore[no-untyped-call]
        self.n += 1
        self._recent.append((x, ts))
        self.drift_detected = False
        if not adwin.drift_detected:
            return
        # ADWIN dropped the older part of its window; its mean follows from the totals.
        kept = int(adwin.width)
        dropped = width + 1 - kept
        if dropped <= 0:
            return
        dropped_mean = (mean * width + x - adwin.estimation * kept) / dropped
        # ADWIN cuts at the edge of one of its buckets, so the window it keeps usually starts
        # before the change. Place the change inside it (the split of the recent values that
        # best separates two means) to report a clean "after" and the time it began.
        recent = list(self._recent)[-kept:]
        split = _best_split([v for v, _ in recent])
        head, tail = recent[:split], recent[split:]
        before = (dropped_mean * dropped + sum(v for v, _ in head)) / (dropped + len(head))
        after = sum(v for v, _ in tail) / len(tail)
        if abs(after - before) < self.min_effect:
            return
        self.drift_detected = True
        self.before, self.after = before, after
        self.samples = len(tail)
        self.since = tail[0][1]


def _best_split(values: Sequence[float], min_tail: int = 16) -> int:
    """The index that splits ``values`` into two runs with the most different means.

    Maximizes ``k (n - k) (mean_left - mean_right)^2``, the classic single change-point
    statistic, keeping at least ``min_tail`` values after the split (so that one outlier
    cannot make a "change"); returns 0 (no split) when there are too few values.

    >>> _best_split([0, 0, 0, 1, 1], min_tail=2)
    3
    """
    n = len(values)
    if n < min_tail + 1:
        return 0
    total = sum(values)
    best, best_k, left = -1.0, 0, 0.0
    for k in range(1, n - min_tail + 1):
        left += values[k - 1]
        diff = left / k - (total - left) / (n - k)
        score = k * (n - k) * diff * diff
        if score > best:
            best, best_k = score, k
    return best_k


class DriftMonitor:
    """Every detector the dashboard shows, fed one training sample at a time.

    Per sample (a customer's feature vector, their cluster and distance to its centre):
    one detector per cluster on the indicator "this sample is in the cluster" (its share),
    one per feature, and one on the distance. Centre movement is checked per model version
    against a reference snapshot, which moves on when an alert fires. No alert comes in the
    first ``warmup`` samples, nor twice on one subject within ``cooldown`` samples.

    >>> monitor = DriftMonitor(features=("a",), grace=10)
    >>> alerts = [a for i in range(3000)
    ...           for a in monitor.update({"a": 0.1 if i < 1500 else 0.9}, i % 2, 0.2, ts=i)]
    >>> [(a.kind, a.subject) for a in alerts]
    [('feature', 'feature:a')]
    >>> 1500 <= alerts[0].since <= alerts[0].detected_at < 1600
    True
    """

    def __init__(
        self,
        features: Sequence[str] = FEATURE_VECTOR,
        delta: float = 1e-5,
        min_effect: float = 0.05,
        centre_threshold: float = 0.15,
        grace: int = 200,
        warmup: int = 0,
        cooldown: int = 0,
    ) -> None:
        self.features = tuple(features)
        self.delta = delta
        self.min_effect = min_effect
        self.centre_threshold = centre_threshold
        self.grace = grace
        self.shares: dict[int, ChangeDetector] = {}
        self.feature_detectors = {f: self._detector() for f in self.features}
        self.distance = self._detector()
        self.reference: tuple[int, Sequence[Sequence[float]], int] | None = None
        self.alerts = 0
        self.warmup = warmup
        self.cooldown = cooldown
        self.n = 0
        self._quiet_until: dict[str, int] = {}
        # Samples arrive roughly, not strictly, in event-time order (each carries its
        # customer's newest event); detectors are dated by the newest time seen so far.
        self.clock = 0

    def _detector(self) -> ChangeDetector:
        return ChangeDetector(self.delta, self.min_effect, self.grace)

    def update(
        self,
        x: Mapping[str, float],
        segment: int | None,
        distance: float | None,
        ts: int,
        model_version: int | None = None,
        n_segments: int = 0,
    ) -> list[DriftAlert]:
        """Feed one sample; returns the alerts it raised (usually none)."""
        out: list[DriftAlert] = []
        self.clock = ts = max(self.clock, ts)
        self.n += 1
        for name, detector in self.feature_detectors.items():
            detector.update(float(x.get(name, 0.0)), ts)
            if detector.drift_detected:
                out.append(self._alert("feature", f"feature:{name}", detector, ts, model_version))
        if segment is not None:
            for s in range(max(n_segments, segment + 1)):
                if s not in self.shares:
                    self.shares[s] = self._detector()
            for s, detector in self.shares.items():
                detector.update(1.0 if s == segment else 0.0, ts)
                if detector.drift_detected:
                    out.append(
                        self._alert("segment_share", f"cluster:{s}", detector, ts, model_version)
                    )
        if distance is not None:
            self.distance.update(distance, ts)
            if self.distance.drift_detected:
                out.append(self._alert("distance", "distance", self.distance, ts, model_version))
        out = [a for a in out if self._speaks(a.subject)]
        self.alerts += len(out)
        return out

    def _speaks(self, subject: str) -> bool:
        """Warm-up and cool-down: detectors learn all along but alert only when allowed.

        A young model and a young population change fast and for no reason a person should
        act on; a slow trend would otherwise alert each time it crosses ``min_effect`` again.
        """
        if self.n <= self.warmup or self.n < self._quiet_until.get(subject, 0):
            return False
        self._quiet_until[subject] = self.n + self.cooldown
        return True

    def _alert(
        self, kind: str, subject: str, d: ChangeDetector, ts: int, version: int | None
    ) -> DriftAlert:
        return DriftAlert(
            kind,
            subject,
            abs(d.after - d.before),
            d.before,
            d.after,
            d.since,
            ts,
            d.samples,
            version,
        )

    def model_moved(
        self, version: int, centres: Sequence[Sequence[float]], ts: int
    ) -> list[DriftAlert]:
        """Compare a new model version's centres with the reference; alert on big moves.

        >>> m = DriftMonitor(centre_threshold=0.1)
        >>> m.model_moved(1, [[0.0, 0.0], [1.0, 1.0]], ts=10)
        []
        >>> [(a.subject, a.magnitude) for a in m.model_moved(2, [[0.0, 0.05], [1.0, 1.5]], ts=20)]
        [('cluster:1', 0.5)]
        """
        if self.reference is None or (self.warmup and self.n <= self.warmup):
            self.reference = (version, [list(c) for c in centres], ts)
            return []
        _, reference, since = self.reference
        out = []
        for index, (old, new) in enumerate(zip(reference, centres, strict=False)):
            moved = math.dist(old, new)
            if moved >= self.centre_threshold:
                out.append(
                    DriftAlert(
                        "centre_movement",
                        f"cluster:{index}",
                        moved,
                        None,
                        None,
                        since,
                        ts,
                        0,
                        version,
                    )
                )
        if out:
            self.reference = (version, [list(c) for c in centres], ts)
        self.alerts += len(out)
        return out
