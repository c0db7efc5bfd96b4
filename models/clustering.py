"""Behavioral clusters: one River k-means trainer, and versioned snapshots that workers score."""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as _package_version
from typing import Any

from river import cluster

from models.features import FEATURE_VECTOR

__all__ = ["SNAPSHOT_SCHEMA", "ClusterTrainer", "ModelSnapshot", "describe_centre", "match_ids"]

SNAPSHOT_SCHEMA = 1


@dataclass(frozen=True)
class ModelSnapshot:
    """A versioned, plain copy of the cluster centres; scoring needs nothing else.

    Segment ids are the indexes of ``centres``: they stay with a centre while it moves.

    >>> snap = ModelSnapshot(1, ("a", "b"), ((0.0, 0.0), (1.0, 1.0)), (3, 3))
    >>> snap.predict({"a": 0.9, "b": 0.8})[0]
    1
    """

    version: int
    features: tuple[str, ...]
    centres: tuple[tuple[float, ...], ...]
    counts: tuple[int, ...]
    river_version: str = _package_version("river")
    trained_samples: int = 0
    rfm_cuts: dict[str, list[float]] | None = None  # population RFM quintiles, if known

    def predict(self, x: Mapping[str, float]) -> tuple[int, float, float]:
        """Return ``(segment_id, distance, confidence)`` for one feature dict.

        Confidence is ``d2 / (d1 + d2)`` over the two nearest centres: 1.0 on a centre,
        0.5 halfway between two.
        """
        point = [x.get(name, 0.0) for name in self.features]
        best, d1, d2 = -1, math.inf, math.inf
        for index, centre in enumerate(self.centres):
            d = math.dist(point, centre)
            if d < d1:
                best, d1, d2 = index, d, d1
            elif d < d2:
                d2 = d
        confidence = 1.0 if d1 + d2 == 0 or math.isinf(d2) else d2 / (d1 + d2)
        return best, d1, confidence

    def distance(self, x: Mapping[str, float], segment: int) -> float:
        """Euclidean distance from ``x`` to the centre of ``segment``."""
        point = [x.get(name, 0.0) for name in self.features]
        return math.dist(point, self.centres[segment])

    def describe(self, segment: int) -> str:
        return _describe(self.features, self.centres[segment])

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SNAPSHOT_SCHEMA,
            "version": self.version,
            "river_version": self.river_version,
            "features": list(self.features),
            "centres": [list(c) for c in self.centres],
            "counts": list(self.counts),
            "trained_samples": self.trained_samples,
            "rfm_cuts": self.rfm_cuts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSnapshot:
        if data.get("schema") != SNAPSHOT_SCHEMA:
            raise ValueError(f"unsupported snapshot schema {data.get('schema')!r}")
        return cls(
            version=int(data["version"]),
            features=tuple(data["features"]),
            centres=tuple(tuple(float(v) for v in c) for c in data["centres"]),
            counts=tuple(int(n) for n in data["counts"]),
            river_version=str(data["river_version"]),
            trained_samples=int(data.get("trained_samples", 0)),
            rfm_cuts=data.get("rfm_cuts"),
        )


class ClusterTrainer:
    """Online k-means (River) over the fixed feature vector, seeded from data.

    The first ``warmup`` samples are buffered; the best of ten k-means++ starts (least
    inertia) picks the initial centres among them and a few Lloyd passes settle them, so no
    centre starts dead in a random corner. From then on River's incremental k-means moves the
    nearest centre toward each sample by a step of 1/n (n: samples that centre has taken),
    never less than ``halflife``. Only one trainer runs in a deployment, so every worker sees
    the same clusters.

    >>> trainer = ClusterTrainer(n_clusters=2, warmup=6, features=("a",), seed=1)
    >>> for v in (0.0, 0.1, 0.05, 0.9, 1.0, 0.95):
    ...     trainer.learn_one({"a": v})
    >>> snap = trainer.snapshot()
    >>> sorted(round(c[0], 2) for c in snap.centres)
    [0.05, 0.95]
    >>> snap.predict({"a": 0.0})[0] != snap.predict({"a": 1.0})[0]
    True
    """

    def __init__(
        self,
        n_clusters: int = 5,
        halflife: float = 0.02,
        warmup: int = 200,
        seed: int = 42,
        features: Sequence[str] = FEATURE_VECTOR,
        min_share: float = 0.02,
        window: int = 2000,
        check_every: int = 500,
    ) -> None:
        if n_clusters < 1:
            raise ValueError("n_clusters must be at least 1")
        if warmup < n_clusters:
            raise ValueError("warmup must be at least n_clusters")
        self.n_clusters = n_clusters
        self.halflife = halflife
        self.warmup = warmup
        self.seed = seed
        self.features = tuple(features)
        self.min_share = min_share
        self.window = window
        self.check_every = check_every
        self.refits = 0
        self._recent: deque[list[float]] = deque(maxlen=window)
        self._model = cluster.KMeans(n_clusters=n_clusters, halflife=halflife, seed=seed)
        self._buffer: list[list[float]] = []
        self._counts = [0] * n_clusters
        self._ready = False
        self._version = 0
        self._samples = 0

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def version(self) -> int:
        return self._version

    def learn_one(self, x: Mapping[str, float]) -> None:
        point = [float(x.get(name, 0.0)) for name in self.features]
        self._samples += 1
        self._recent.append(point)
        if not self._ready:
            self._buffer.append(point)
            if len(self._buffer) >= self.warmup:
                self._seed_from_buffer()
            return
        x = dict(zip(self.features, point, strict=True))
        nearest: int = self._model.predict_one(x)  # type: ignore[no-untyped-call]
        # MacQueen's step 1/n for a young centre, floored at `halflife` so that a settled
        # centre still follows drift; a fixed step alone keeps centres wandering with noise.
        self._model.halflife = max(self.halflife, 1.0 / (self._counts[nearest] + 1))
        self._model.learn_one(x)  # type: ignore[no-untyped-call]
        self._counts[nearest] += 1
        if self.min_share > 0 and self._samples % self.check_every == 0:
            self._guard_small_segments()

    def shares(self) -> list[float]:
        """Each segment's share of the recent samples."""
        centres = self._centres()
        counts = [0] * self.n_clusters
        for p in self._recent:
            counts[min(range(self.n_clusters), key=lambda i: _sq(p, centres[i]))] += 1
        total = max(1, len(self._recent))
        return [n / total for n in counts]

    def _guard_small_segments(self) -> None:
        """Re-fit when a segment holds less than ``min_share`` of recent customers.

        A segment that small is usually a centre stranded by drift or an over-split group. The
        re-fit runs k-means on the recent window and maps the new centres onto the old ids,
        so customers keep their segment id; it is kept only if it fixes the small segment.
        """
        if len(self._recent) < self.window // 2 or min(self.shares()) >= self.min_share:
            return
        old = self._centres()
        rng = random.Random(self.seed + self._samples)
        centres, counts = self._best_of(list(self._recent), rng)
        if min(counts) / max(1, sum(counts)) < self.min_share:
            return  # the data itself has a small group: keep the model as it is
        order = match_ids(old, centres)
        self._set_centres([centres[order.index(i)] for i in range(self.n_clusters)])
        self._counts = [counts[order.index(i)] for i in range(self.n_clusters)]
        self.refits += 1

    def _centres(self) -> list[list[float]]:
        return [
            [float(self._model.centers[i][f]) for f in self.features]
            for i in range(self.n_clusters)
        ]

    def snapshot(self) -> ModelSnapshot:
        """Freeze the current centres under a new version number."""
        if not self._ready:
            raise RuntimeError(f"model is warming up ({len(self._buffer)}/{self.warmup} samples)")
        self._version += 1
        centres = tuple(
            tuple(float(self._model.centers[i][name]) for name in self.features)
            for i in range(self.n_clusters)
        )
        return ModelSnapshot(
            version=self._version,
            features=self.features,
            centres=centres,
            counts=tuple(self._counts),
            trained_samples=self._samples,
        )

    def restore(self, snapshot: ModelSnapshot) -> None:
        """Continue from a published snapshot (after a restart or a move to another worker)."""
        if snapshot.features != self.features or len(snapshot.centres) != self.n_clusters:
            raise ValueError("snapshot does not match this trainer's features and cluster count")
        self._set_centres([list(c) for c in snapshot.centres])
        self._counts = list(snapshot.counts)
        self._version = snapshot.version
        self._samples = snapshot.trained_samples
        self._buffer.clear()
        self._ready = True

    def _seed_from_buffer(self, n_init: int = 10) -> None:
        # Several k-means++ starts, keeping the one with the least inertia (as batch k-means
        # does): one unlucky start can put two centres in one group and none in another.
        centres, counts = self._best_of(self._buffer, random.Random(self.seed), n_init)
        self._set_centres(centres)
        self._counts = counts
        self._buffer = []
        self._ready = True

    def _best_of(
        self, points: list[list[float]], rng: random.Random, n_init: int = 10
    ) -> tuple[list[list[float]], list[int]]:
        best: tuple[float, list[list[float]], list[int]] | None = None
        for _ in range(n_init):
            centres, counts = self._lloyd(points, rng)
            inertia = sum(min(_sq(p, c) for c in centres) for p in points)
            if best is None or inertia < best[0]:
                best = (inertia, centres, counts)
        assert best is not None
        return best[1], best[2]

    def _lloyd(
        self, points: list[list[float]], rng: random.Random
    ) -> tuple[list[list[float]], list[int]]:
        centres = [points[rng.randrange(len(points))]]
        while len(centres) < self.n_clusters:  # k-means++: far points are likelier seeds
            weights = [min(_sq(p, c) for c in centres) for p in points]
            total = sum(weights)
            if total == 0:
                centres.append(points[rng.randrange(len(points))])
                continue
            centres.append(rng.choices(points, weights=weights)[0])
        counts = [0] * len(centres)
        for _ in range(10):  # a few Lloyd passes over the buffer
            groups: list[list[list[float]]] = [[] for _ in centres]
            for p in points:
                groups[min(range(len(centres)), key=lambda i: _sq(p, centres[i]))].append(p)
            centres = [
                [sum(col) / len(g) for col in zip(*g, strict=True)] if g else centres[i]
                for i, g in enumerate(groups)
            ]
            counts = [len(g) for g in groups]
        return centres, counts

    def _set_centres(self, centres: Sequence[Sequence[float]]) -> None:
        for i, centre in enumerate(centres):
            self._model.centers[i].clear()
            self._model.centers[i].update(zip(self.features, centre, strict=True))


def match_ids(old: Sequence[Sequence[float]], new: Sequence[Sequence[float]]) -> list[int]:
    """For each new centre, the old id it takes: the assignment of least total distance.

    Exact (all permutations) up to 8 centres, greedy nearest pairs beyond.

    >>> match_ids([[0.0], [1.0], [2.0]], [[2.1], [-0.1], [0.9]])
    [2, 0, 1]
    """
    k = len(old)
    if len(new) != k:
        raise ValueError("old and new must have as many centres")
    if k <= 8:
        best = min(
            itertools.permutations(range(k)),
            key=lambda perm: sum(_sq(new[j], old[perm[j]]) for j in range(k)),
        )
        return list(best)
    pairs = sorted((_sq(n, o), j, i) for j, n in enumerate(new) for i, o in enumerate(old))
    taken_new: dict[int, int] = {}
    taken_old: set[int] = set()
    for _, j, i in pairs:
        if j not in taken_new and i not in taken_old:
            taken_new[j] = i
            taken_old.add(i)
    return [taken_new[j] for j in range(k)]


def _sq(a: Sequence[float], b: Sequence[float]) -> float:
    """Squared Euclidean distance (``math.dist`` runs in C: this is the model's inner loop)."""
    if len(a) != len(b):
        raise ValueError("points of different dimensions")
    return math.dist(a, b) ** 2


# Plain-language words for a centre: (feature, threshold above which the phrase applies).
_HIGH_PHRASES = (
    ("monetary", 0.75, "high spend"),
    ("frequency", 0.35, "buys often"),
    ("conversion", 0.5, "converts"),
    ("browse_depth", 0.6, "browses deeply"),
    ("search_share", 0.3, "searches a lot"),
    ("cart_abandonment", 0.5, "abandons carts"),
    ("desktop_share", 0.6, "desktop"),
    ("mobile_share", 0.6, "mobile"),
    ("tablet_share", 0.5, "tablet"),
    ("evening_share", 0.5, "evenings"),
)


@functools.lru_cache(maxsize=256)
def _describe(features: tuple[str, ...], centre: tuple[float, ...]) -> str:
    """``describe_centre`` of one centre, remembered: every scoring asks for its label."""
    return describe_centre(dict(zip(features, centre, strict=True)))


def describe_centre(centre: Mapping[str, float]) -> str:
    """A short plain-language label for a cluster centre.

    >>> describe_centre({"monetary": 0.9, "desktop_share": 0.8, "conversion": 0.1})
    'high spend, desktop, rarely buys'
    """
    words = [phrase for name, cut, phrase in _HIGH_PHRASES if centre.get(name, 0.0) >= cut]
    if centre.get("monetary", 0.0) < 0.35 and centre.get("conversion", 0.0) >= 0.2:
        words.insert(0, "low spend")
    if centre.get("conversion", 1.0) < 0.2:
        words.append("rarely buys")
    return ", ".join(words) if words else "mixed behavior"
