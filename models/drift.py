"""Drift detection: on the sample stream (segment shares, features, distance to centre,
centres) and on the flow of every segment (entries and exits per event-time bucket).

River's ADWIN does the statistics of the sample stream: it keeps a window of recent values and
cuts it where the means of the two parts differ beyond chance. Two additions make its alarms
usable by people watching a dashboard: a floor on the size of a change worth reporting (ADWIN
also cuts its window on tiny, statistically real changes) and the event time at which the
change began.

Samples are customers' cumulative feature vectors: an outage that halves checkout success for
three weeks barely moves a customer's lifetime conversion. ``FlowMonitor`` watches what
dashboards watch instead, the entries into and exits from every segment of every kind per
event-time bucket, each against its own recent baseline (see there).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from river.drift import ADWIN

from models.features import DAY_MS, FEATURE_VECTOR
from models.frozen import Frozen
from models.segments import SegmentChange

__all__ = ["ChangeDetector", "DriftAlert", "DriftMonitor", "FlowMonitor", "flow_counts"]

#: Recent values each detector keeps to place a change inside ADWIN's window (see update).
_RECENT = 512


@dataclass(frozen=True, slots=True)
class DriftAlert(Frozen):
    """One drift alert: the wire shape of the ``segment-drift`` topic.

    ``kind`` is ``segment_share``, ``feature``, ``distance``, ``centre_movement`` or
    ``segment_flow``; ``subject`` names what drifted (``cluster:3``, ``feature:price_level``,
    ``rule:cart_abandoner entered``, ...). ``before`` and ``after`` are the means on either side
    of the change (for a centre, ``magnitude`` is how far it moved; for a flow, they are the
    baseline and the observed rate in changes a day and ``magnitude`` is their ratio);
    ``since`` is the event time (epoch ms) at which the change began and ``detected_at`` the
    event time at which it was detected. A flow alert also names its ``segment``, its
    ``flow`` (``entered`` or ``exited``) and the segment's ``size`` when known.
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
    segment: str | None = None
    flow: str | None = None
    size: int | None = None

    @property
    def message(self) -> str:
        since = datetime.fromtimestamp(self.since / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        if self.kind == "segment_flow":
            verb = "entering" if self.flow == "entered" else "leaving"
            size = "" if self.size is None else f" (size {self.size:,})"
            return (
                f"{self.segment}{size}: customers {verb} at {self.magnitude:.2g}x the usual rate "
                f"({self.after:.1f} a day against {self.before:.1f}) since {since}"
            )
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
            "segment": self.segment,
            "flow": self.flow,
            "size": self.size,
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
        # Any, not River's ADWIN: its ``width`` is annotated int and returns a float, which the
        # compiled build's checks would refuse (a TypeError in the trainer).
        self.adwin: Any = ADWIN(delta=delta, grace_period=grace)  # type: ignore[no-untyped-call]
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
        adwin.update(x)
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
        self._space: object = None  # what the reference's centres are points of
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
        self, version: int, centres: Sequence[Sequence[float]], ts: int, space: object = None
    ) -> list[DriftAlert]:
        """Compare a new model version's centres with the reference; alert on big moves.

        ``space``: what the centres are points of (the snapshot's features and scaling); a
        version in another space (a refit learned a new one, other categories) becomes the
        reference: centres of two spaces are not comparable, nor always of one length.

        >>> m = DriftMonitor(centre_threshold=0.1)
        >>> m.model_moved(1, [[0.0, 0.0], [1.0, 1.0]], ts=10)
        []
        >>> [(a.subject, a.magnitude) for a in m.model_moved(2, [[0.0, 0.05], [1.0, 1.5]], ts=20)]
        [('cluster:1', 0.5)]
        """
        if (
            self.reference is None
            or (self.warmup and self.n <= self.warmup)
            or space != self._space
            or any(len(c) != len(r) for c, r in zip(centres, self.reference[1], strict=False))
        ):
            self.reference = (version, [list(c) for c in centres], ts)
            self._space = space
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


#: A flow: a segment (``rule:cart_abandoner``, ``cluster:2``, ``persona:...``) and a direction.
Flow = tuple[str, str]
_HOUR_MS = 3_600_000


def flow_counts(changes: Iterable[SegmentChange]) -> Counter[Flow]:
    """Entries and exits per segment in a list of changes (a step's ``changes``).

    >>> c = SegmentChange("c", "rule:vip", "entered", False, True, 5, "r", 1)
    >>> dict(flow_counts([c, c]))
    {('rule:vip', 'entered'): 2}
    """
    return Counter((c.segment, c.change) for c in changes)


class _Side:
    """One side (rise or fall) of a flow's CUSUM: evidence, where it began, what it holds."""

    __slots__ = ("evidence", "expected", "muted_until", "observed", "start")

    def __init__(self) -> None:
        self.evidence = 0.0
        self.start = 0
        self.observed = 0
        self.expected = 0.0
        self.muted_until = 0


class _FlowSeries:
    """One flow's recent counts per bucket and its two CUSUMs."""

    __slots__ = (
        "day",
        "days",
        "dispersion",
        "fall",
        "filled",
        "history",
        "rise",
        "slot_n",
        "slot_sums",
        "total",
    )

    def __init__(self, length: int, slots: int, zeros: int) -> None:
        self.history: deque[int] = deque([0] * zeros, maxlen=length)
        self.slot_sums = [0] * slots
        self.slot_n = [0] * slots
        for i in range(zeros):  # the zero buckets closed before the flow was first seen
            self.slot_n[(-1 - i) % slots] += 1
        self.filled = zeros
        self.total = 0
        self.days: deque[int] = deque([0] * (zeros // slots), maxlen=length // slots)
        self.day = 0  # the changes of the day being filled
        self.dispersion = 1.0
        self.rise = _Side()
        self.fall = _Side()


class FlowMonitor:
    """Entries into and exits from every segment per event-time bucket, each against its own
    recent baseline; alerts carry the segment, its size, the start and the magnitude.

    Each flow (a segment and ``entered`` or ``exited``) keeps its counts of the last
    ``baseline_days`` days in buckets of ``bucket_ms`` of event time. A bucket's baseline is
    the mean of the same time of day over those days, shrunk toward the flow's mean over all
    buckets by ``shrink`` changes' worth (so a daily cycle is expected where the flow is busy
    enough to show it, and a sparse flow's quiet hour does not look empty), and, for a flow of
    at least ``robust_from`` changes a day, scaled to the median of its daily totals: an
    incident of a few days in the window neither lifts the baseline nor makes its own end
    look like a change, and a lasting change is the new normal after half the window. Two Poisson
    CUSUMs per flow weigh each closed bucket's count against it: one for a rise to ``rise``
    times the baseline, one for a fall to ``1 / rise``, each log-likelihood ratio divided by
    the flow's own dispersion (a slow average of squared Pearson residuals, at least 1: flows
    burstier than Poisson need more evidence). An alert fires when the
    evidence passes ``threshold``, the changes since the CUSUM left zero number at least
    ``min_count`` (observed for a rise, expected for a fall: tiny segments stay quiet), the
    ratio of observed to expected since then is at least ``min_ratio`` (or at most its
    inverse), and the flow has at least ``min_history_days`` of history. The alert's ``since``
    is the start of the first bucket after the evidence was last zero (the CUSUM's change
    point), ``magnitude`` the ratio since then. That side then stays quiet for
    ``baseline_days`` (by then the baseline holds the new level); the other side still speaks
    (a recovery is news too).

    Changes are counted in the bucket of the event time the stream has reached when they are
    made (the worker's watermark), so late events count when they arrive; a bucket closes
    ``lateness_ms`` after its end, and counts for a closed bucket go to the oldest open one.
    The work per change is one counter increment (``flow_counts``); per closed bucket it is
    a few operations per flow.

    >>> import random
    >>> rng, monitor, alerts = random.Random(0), FlowMonitor(), []
    >>> for hour in range(24 * 40):  # 40 days; from day 30 entries come at 3x the rate
    ...     rate = 6 if hour < 24 * 30 else 18
    ...     n = sum(rng.random() < rate / 60 for _ in range(60))
    ...     alerts += monitor.add({("rule:cart_abandoner", "entered"): n}, hour * 3_600_000)
    >>> [(a.subject, a.since // 3_600_000 - 24 * 30, round(a.magnitude, 1)) for a in alerts]
    [('rule:cart_abandoner entered', 0, 3.7)]
    """

    def __init__(
        self,
        bucket_ms: int = _HOUR_MS,
        baseline_days: int = 14,
        min_history_days: int = 7,
        rise: float = 2.0,
        threshold: float = 12.0,
        min_count: int = 20,
        min_ratio: float = 1.5,
        lateness_ms: int | None = None,
        shrink: float = 2.0,
        robust_from: float = 20.0,
    ) -> None:
        if bucket_ms <= 0 or DAY_MS % bucket_ms:
            raise ValueError("bucket_ms must divide a day")
        if not 1 <= min_history_days <= baseline_days:
            raise ValueError("min_history_days must be in [1, baseline_days]")
        if rise <= 1.0 or min_ratio < 1.0 or threshold <= 0 or min_count < 1:
            raise ValueError("rise must exceed 1; min_ratio at least 1; threshold, min_count > 0")
        self.bucket_ms = bucket_ms
        self.baseline_days = baseline_days
        self.min_history_days = min_history_days
        self.rise = rise
        self.threshold = threshold
        self.min_count = min_count
        self.min_ratio = min_ratio
        self.lateness_ms = bucket_ms if lateness_ms is None else lateness_ms
        self.shrink = shrink
        self.robust_from = robust_from
        self.alerts = 0
        self.clock = 0
        self.sizes: Counter[str] = Counter()  # entries less exits seen, per segment
        self._slots = DAY_MS // bucket_ms
        self._length = baseline_days * self._slots
        self._min_filled = min_history_days * self._slots
        self._series: dict[Flow, _FlowSeries] = {}
        self._open: dict[int, Counter[Flow]] = {}
        self._next: int | None = None  # the oldest bucket not closed yet
        self._closed = 0  # buckets closed so far
        self._up = (math.log(rise), rise - 1.0)
        self._down = (math.log(1.0 / rise), 1.0 / rise - 1.0)
        # Squared Pearson residuals are averaged over about a baseline's worth of buckets.
        self._decay = 1.0 / self._length

    def add(self, counts: Mapping[Flow, int], ts: int) -> list[DriftAlert]:
        """Count a step's changes (``flow_counts``) at event time ``ts`` (the watermark after
        the step) and close the buckets that time has left behind; returns their alerts."""
        bucket = ts // self.bucket_ms
        if self._next is None:
            self._next = bucket
        if counts:
            into = self._open.setdefault(max(bucket, self._next), Counter())
            for flow, n in counts.items():
                into[flow] += n
                self.sizes[flow[0]] += n if flow[1] == "entered" else -n
        return self.advance(ts)

    def restore(self, snapshots: Iterable[tuple[int, Mapping[str, int], Mapping[str, int]]]) -> int:
        """Learn the history of a fresh monitor from size snapshots taken once per bucket:
        (event time, entries so far, exits so far per segment), oldest first. Each bucket's
        flows are the differences from the snapshot before; alerts while learning are dropped
        (they went out before). Returns the buckets learnt.

        >>> m = FlowMonitor()
        >>> m.restore([(h * 3_600_000, {"rule:vip": 5 * h}, {}) for h in range(24 * 8)])
        191
        >>> hours = range(24 * 8, 24 * 8 + 6)  # then 40 an hour: alerted at once
        >>> [a.segment for h in hours for a in m.add({("rule:vip", "entered"): 40}, h * 3_600_000)]
        ['rule:vip']
        """
        if self._next is not None:
            raise ValueError("restore a fresh monitor only")
        before: tuple[Mapping[str, int], Mapping[str, int]] | None = None
        learnt = 0
        for ts, entered, exited in snapshots:
            if before is not None:
                counts: Counter[Flow] = Counter()
                for flow, now, then in (
                    ("entered", entered, before[0]),
                    ("exited", exited, before[1]),
                ):
                    for segment, total in now.items():
                        if total > then.get(segment, 0):
                            counts[(segment, flow)] = total - then.get(segment, 0)
                alerts = self.alerts
                self.add(counts, ts)
                self.alerts = alerts
                learnt += 1
            before = (entered, exited)
        return learnt

    def advance(self, ts: int) -> list[DriftAlert]:
        """Move event time to ``ts``: close every bucket that ended ``lateness_ms`` before."""
        self.clock = max(self.clock, ts)
        out: list[DriftAlert] = []
        if self._next is None:
            return out
        while (self._next + 1) * self.bucket_ms + self.lateness_ms <= self.clock:
            counts: Mapping[Flow, int] = self._open.pop(self._next, {})
            out += self._close(self._next, counts)
            self._next += 1
        self.alerts += len(out)
        return out

    def _close(self, bucket: int, counts: Mapping[Flow, int]) -> list[DriftAlert]:
        for flow in counts:
            if flow not in self._series:
                zeros = min(self._closed, self._length)
                for twin in ((flow[0], "entered"), (flow[0], "exited")):
                    if twin not in self._series:
                        self._series[twin] = _FlowSeries(self._length, self._slots, zeros)
        self._closed += 1
        slot = bucket % self._slots
        out = []
        for flow, series in self._series.items():
            count = counts.get(flow, 0)
            if series.filled >= self._min_filled:
                alert = self._weigh(flow, series, slot, bucket, count)
                if alert is not None:
                    out.append(alert)
            history = series.history
            if len(history) == history.maxlen:
                old = history[0]
                old_slot = (slot - len(history)) % self._slots
                series.slot_sums[old_slot] -= old
                series.slot_n[old_slot] -= 1
                series.total -= old
            history.append(count)
            series.slot_sums[slot] += count
            series.slot_n[slot] += 1
            series.total += count
            series.filled = len(history)
            series.day += count
            if slot == self._slots - 1:  # a day complete
                series.days.append(series.day)
                series.day = 0
        return out

    def _weigh(
        self, flow: Flow, series: _FlowSeries, slot: int, bucket: int, count: int
    ) -> DriftAlert | None:
        mean = series.total / series.filled
        expected = mean
        if mean > 0:  # the same time of day, with ``shrink`` changes' worth of the flat mean
            expected = (series.slot_sums[slot] + self.shrink) / (
                series.slot_n[slot] + self.shrink / mean
            )
            daily = mean * self._slots
            if daily >= self.robust_from and len(series.days) >= self.min_history_days:
                # The level is the median day's: an incident of a few days in the window
                # neither lifts nor lowers it (nor makes its own end look like a change).
                expected *= statistics.median(series.days) / daily
        if expected > 0:
            # Pearson residuals, with the expectation floored at one change: a flow that rises
            # from nothing (none entered for weeks) would otherwise read as wildly overdispersed
            # in the very buckets that show its rise, and hide it for days.
            residual = (count - expected) ** 2 / max(expected, 1.0)
            series.dispersion += self._decay * (residual - series.dispersion)
        scale = max(1.0, series.dispersion)
        found = None
        for side, (log_ratio, slope), rising in (
            (series.rise, self._up, True),
            (series.fall, self._down, False),
        ):
            if bucket < side.muted_until:  # quiet after an alert: no evidence gathers
                side.evidence = 0.0
                continue
            if side.evidence <= 0.0:
                side.start, side.observed, side.expected = bucket, 0, 0.0
            side.evidence = max(0.0, side.evidence + (count * log_ratio - slope * expected) / scale)
            side.observed += count
            side.expected += expected
            if side.evidence < self.threshold:
                continue
            base = max(side.expected, 1.0)
            ratio = side.observed / base
            if rising:
                big = side.observed >= self.min_count and ratio >= self.min_ratio
            else:
                big = side.expected >= self.min_count and ratio <= 1.0 / self.min_ratio
            if not big:
                continue
            days = (bucket + 1 - side.start) * self.bucket_ms / DAY_MS
            found = DriftAlert(
                "segment_flow",
                f"{flow[0]} {flow[1]}",
                ratio,
                side.expected / days,
                side.observed / days,
                side.start * self.bucket_ms,
                self.clock,
                side.observed,
                None,
                segment=flow[0],
                flow=flow[1],
                size=self.sizes.get(flow[0]),
            )
            side.evidence = 0.0
            side.muted_until = bucket + self._length
        return found
