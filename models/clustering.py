"""Behavioral clusters: a learned feature space, one River k-means trainer that also picks k,
and versioned snapshots that workers score."""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as _package_version
from typing import Any

import numpy as np
from river import cluster

from models.features import CATEGORY_SHARE, FEATURE_GROUPS, FEATURE_VECTOR
from models.frozen import Frozen

__all__ = [
    "CATEGORIES",
    "CATEGORY_WEIGHT",
    "K_RANGE",
    "PERSONA_QUANTILES",
    "SNAPSHOT_SCHEMA",
    "ClusterTrainer",
    "FeatureScaling",
    "ModelSnapshot",
    "describe_centre",
    "match_ids",
    "population_key",
    "silhouette",
]

#: 2: snapshots carry their learned feature space (``scaling``) and the evidence for k.
#: A schema 1 snapshot (before both) still loads, scored as it was (no scaling), and the
#: trainer retrains from it (``ClusterTrainer.restore``).
SNAPSHOT_SCHEMA = 2
#: The numbers of clusters the trainer compares on its warm-up samples.
K_RANGE = (2, 10)
#: The spread that is a scalar feature's unit: its interquartile range (p25-p75); where that
#: is flat (most customers alike), the p5-p95 range, then the full range, then 1.
_QUANTILES = (25.0, 75.0)
_WIDE_QUANTILES = (5.0, 95.0)
#: The unit of the space personas are matched in (``ModelSnapshot.persona_scaling``): p10 to
#: p90. The interquartile unit collapses when the middle half of the customers is alike (a
#: population of two clean groups whose quartiles fall in one): a hand-written catalog's
#: small errors on such a feature then outweigh everything else.
PERSONA_QUANTILES = (10.0, 90.0)
#: Scaled values are clipped this many spreads from the median: a handful of extreme
#: customers (a reseller's order) cannot pull a centre of their own.
_CLIP = 2.0
#: A group of shares is divided by this: two disjoint mixes (the largest difference a group
#: can express, at Euclidean distance sqrt(2)) then lie 1 apart, as the p25 and p75 customers
#: of a scalar feature do.
_GROUP_SPREAD = math.sqrt(2.0)
_SILHOUETTE_SAMPLE = 1000
_KEY_SPACE = 1 << 63
#: The categories whose shares the clustering space has, by default: the shop's most viewed,
#: learned with the space (``ClusterTrainer``). A category past them counts in no dimension.
CATEGORIES = 12
#: How much more the category mix weighs than the device or daypart mix, by default: the
#: distance between two customers' category mixes counts 3 times a device mix's. A customer's
#: views spread over several categories, so real mixes are far closer than disjoint ones. (A
#: share is clipped at two units like every feature: at 3, past a share of 0.94.)
CATEGORY_WEIGHT = 3.0

#: A sample as the trainer keeps it: its point in the trainer's features, and its category
#: mix (``category_share.*`` of the feature vector; None when the space has no categories),
#: from which the point is made again when the space's categories change.
_Entry = tuple[list[float], dict[str, float] | None]


def population_key(customer_id: str) -> int:
    """A training sample's customer key: a uniform 63-bit hash of the id (the trainer keeps
    each customer's newest vector under it, and never sees the id itself).

    >>> population_key("c-42") == population_key("c-42") != population_key("c-43")
    True
    """
    digest = hashlib.blake2b(customer_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _clipped(out: list[float]) -> list[float]:
    """A scaled point clipped at ``_CLIP`` spreads, copied only when a value needs it."""
    if min(out, default=0.0) < -_CLIP or max(out, default=0.0) > _CLIP:
        return [-_CLIP if v < -_CLIP else _CLIP if v > _CLIP else v for v in out]
    return out


@dataclass(frozen=True)
class FeatureScaling(Frozen):
    """The clustering space learned from one shop's customers: ``(x - centre) / spread``.

    A scalar feature is centred on its median and divided by its interquartile spread, p25 to
    p75 (clipped at ``_CLIP`` spreads), so the shop's own range sets what is large: a shop
    selling 5-unit items and one selling 500-unit items get the same clusters, up to the
    scale. Quantiles, not mean and deviation, so that a few extreme customers do not set the
    unit. A feature whose middle half is flat (p25 = p75: most customers alike) falls back to
    its p5-p95 spread, then its full range, then 1. (The p5-p95 spread was the unit before: on
    the overlapping generator, offline k-means on the same customers found the true personas
    at ARI 0.66-0.70 with it and 0.79-0.86 with the interquartile unit, seeds 1-5 at 100k
    events, ``stream/tools/eval_ceiling.py``; the wider unit shrank the scalar features, where
    the personas differ most, against the device and daypart mixes.)

    Shares that describe one thing together (``FEATURE_GROUPS``: the device mix, the daypart
    mix; the trainer adds the category mix) are not scaled one by one: they share a unit
    already (a share of visits), and scaling each would make a rare device weigh as much as
    the main split. The group is divided as a whole by sqrt(2), the distance between two
    disjoint mixes, so that the largest difference a group can make equals a scalar feature's
    interquartile spread: seven device and daypart shares weigh like two features, not seven.
    (Dividing by sqrt(group size) would instead equalise the group's summed variance; it makes
    the four dayparts weigh less than the three devices for the same difference in behaviour,
    which is why the mix bound is used.) ``weights`` multiply a group's: the category mix
    weighs ``ClusterTrainer``'s ``category_weight`` (see there why).

    >>> s = FeatureScaling.learn([[v, 0.0] for v in range(101)], ("price", "x"))
    >>> s.centres, s.spreads
    ((50.0, 0.0), (50.0, 1.0))
    >>> s.transform([75.0, 0.0])
    [0.5, 0.0]
    """

    centres: tuple[float, ...]
    spreads: tuple[float, ...]
    # Derived once, in ``__post_init__`` (not ``functools.cached_property``: the compiled
    # build's classes have no instance dict, and there it computed them again on every access).
    _terms: tuple[tuple[float, float], ...] = field(init=False, repr=False, compare=False)
    _arrays: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)
    _terms_by_names: dict[tuple[str, ...], tuple[tuple[str, tuple[float, float]], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        terms = tuple((c, 1.0 / s) for c, s in zip(self.centres, self.spreads, strict=True))
        object.__setattr__(self, "_terms", terms)
        arrays = (np.array([c for c, _ in terms]), np.array([i for _, i in terms]))
        object.__setattr__(self, "_arrays", arrays)
        object.__setattr__(self, "_terms_by_names", {})

    @classmethod
    def identity(cls, n: int) -> FeatureScaling:
        """No scaling: the space the vector comes in."""
        return cls((0.0,) * n, (1.0,) * n)

    @classmethod
    def learn(
        cls,
        points: Sequence[Sequence[float]] | np.ndarray,
        features: Sequence[str],
        groups: Mapping[str, Sequence[str]] = FEATURE_GROUPS,
        quantiles: tuple[float, float] = _QUANTILES,
        weights: Mapping[str, float] | None = None,
    ) -> FeatureScaling:
        """The space of ``points``; ``quantiles``: the percentiles whose distance is a scalar
        feature's unit (p25-p75 for the clusters, ``PERSONA_QUANTILES`` for personas);
        ``weights``: group name -> how many times its distances count (default 1)."""
        weights = weights or {}
        if any(not w > 0 for w in weights.values()):
            raise ValueError("a group's weight must be positive")
        data = np.asarray(points, dtype=float)
        if data.ndim != 2 or data.shape[1] != len(features) or not len(data):
            raise ValueError("scaling needs a non-empty 2-d array with one column per feature")
        wide_low, low, median, high, wide_high = np.percentile(
            data,
            (_WIDE_QUANTILES[0], quantiles[0], 50.0, quantiles[1], _WIDE_QUANTILES[1]),
            axis=0,
        )
        spread = high - low
        for fallback in (wide_high - wide_low, data.max(axis=0) - data.min(axis=0)):
            spread = np.where(spread > 1e-9, spread, fallback)
        spread = np.where(spread > 1e-9, spread, 1.0)
        centres, spreads = [float(v) for v in median], [float(v) for v in spread]
        index = {name: i for i, name in enumerate(features)}
        for name, members in groups.items():
            if members and all(m in index for m in members):
                unit = _GROUP_SPREAD / weights.get(name, 1.0)
                for m in members:
                    centres[index[m]], spreads[index[m]] = 0.0, unit
        return cls(tuple(centres), tuple(spreads))

    def transform(self, point: Sequence[float]) -> list[float]:
        """One base-space point in the clustering space (the scoring path: plain Python; the
        clip is applied only when a value needs it, a third of the time of clipping each)."""
        return _clipped([(v - c) * inv for v, (c, inv) in zip(point, self._terms, strict=True)])

    def transform_named(self, x: Mapping[str, float], names: tuple[str, ...]) -> list[float]:
        """``transform`` of ``[x.get(name, 0.0) for name in names]``, in one pass (every
        scoring does it twice: the clusters' space and the personas')."""
        terms = self._terms_by_names.get(names)
        if terms is None:
            terms = self._terms_by_names[names] = tuple(zip(names, self._terms, strict=True))
        return _clipped([(x.get(name, 0.0) - c) * inv for name, (c, inv) in terms])

    def transform_rows(self, base: np.ndarray) -> list[list[float]]:
        """``transform`` of each row of ``base``, as lists (the scoring path's batch)."""
        rows: list[list[float]] = self.transform_many(base).tolist()
        return rows

    def transform_many(self, points: np.ndarray) -> np.ndarray:
        """``transform`` of each row of ``points`` (numpy, the same floats as ``transform``:
        multiplied by the inverse spread, as there, so that the trainer's points and the
        scoring path's are equal to the bit)."""
        centres, inverse = self._arrays
        out: np.ndarray = (np.asarray(points, dtype=float) - centres) * inverse
        np.clip(out, -_CLIP, _CLIP, out=out)
        return out

    def inverse(self, point: Sequence[float]) -> tuple[float, ...]:
        """A clustering-space point back in base units (exact inside the clip)."""
        return tuple(v * s + c for v, c, s in zip(point, self.centres, self.spreads, strict=True))

    def to_dict(self) -> dict[str, list[float]]:
        return {"centres": list(self.centres), "spreads": list(self.spreads)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureScaling:
        centres = tuple(float(v) for v in data["centres"])
        spreads = tuple(float(v) for v in data["spreads"])
        if len(centres) != len(spreads) or any(not s > 0 for s in spreads):
            raise ValueError("scaling needs one positive spread per centre")
        return cls(centres, spreads)


@dataclass(frozen=True)
class ModelSnapshot(Frozen):
    """A versioned, plain copy of the cluster centres and the space they live in; scoring
    needs nothing else, so every worker scores alike.

    Segment ids are the indexes of ``centres``: they stay with a centre while it moves.
    ``centres`` are in the clustering space (``scaling`` applied to the feature vector);
    ``scaling`` None is the vector as it comes (a schema 1 snapshot, or one built by hand).
    ``k_scores`` is the evidence for the number of clusters (silhouette per k on the warm-up
    samples) and ``k_mode`` how it was chosen: ``auto`` (the best score) or ``fixed``.
    ``persona_scaling`` is the space personas are matched in (``models.personas``): the
    clusters' but with ``PERSONA_QUANTILES`` for unit, learned from the same customers when the
    clusters' space is (the first fit, a refit), so it holds still between fits; None (a
    snapshot stored before it, or one built by hand): personas are matched in the fixed space.

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
    scaling: FeatureScaling | None = None
    k_scores: dict[int, float] = field(default_factory=dict)
    k_mode: str = "fixed"
    persona_scaling: FeatureScaling | None = None
    #: How many categories the trainer kept when it learned this space (its ``categories``;
    #: the ones it found are the ``category_share.*`` of ``features``); None: a snapshot
    #: stored before the category mix, which the trainer retrains from.
    categories: int | None = None
    # Every centre's label, once: every scoring asks for one (set in ``__post_init__``, as
    # ``FeatureScaling._terms``: no cached_property)
    _labels: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        labels = tuple(
            _describe(self.features, self.base_centre(i)) for i in range(len(self.centres))
        )
        object.__setattr__(self, "_labels", labels)

    def point(self, x: Mapping[str, float]) -> list[float]:
        """A feature dict as a point of the clustering space."""
        if self.scaling is None:
            return [x.get(name, 0.0) for name in self.features]
        return self.scaling.transform_named(x, self.features)

    def points(self, xs: Sequence[Mapping[str, float]]) -> tuple[list[list[float]], np.ndarray]:
        """``point`` of each feature dict, in one numpy pass, and the dicts' values in
        ``features`` order (the base space, one row each). Each point equals ``point``'s to the
        bit: the same operations on the same floats, ``(v - centre) * (1 / spread)`` clipped."""
        names = self.features
        base = np.array([[x.get(name, 0.0) for name in names] for x in xs], dtype=float)
        if self.scaling is None:
            return base.tolist(), base
        return self.scaling.transform_rows(base), base

    def predict(
        self, x: Mapping[str, float], point: list[float] | None = None
    ) -> tuple[int, float, float]:
        """Return ``(segment_id, distance, confidence)`` for one feature dict (``point``: its
        ``point``, when the caller has it).

        Confidence is ``d2 / (d1 + d2)`` over the two nearest centres: 1.0 on a centre,
        0.5 halfway between two.
        """
        if point is None:
            point = self.point(x)
        best, d1, d2 = -1, math.inf, math.inf
        for index, centre in enumerate(self.centres):
            d = math.dist(point, centre)
            if d < d1:
                best, d1, d2 = index, d, d1
            elif d < d2:
                d2 = d
        confidence = 1.0 if d1 + d2 == 0 or math.isinf(d2) else d2 / (d1 + d2)
        return best, d1, confidence

    def distance(
        self, x: Mapping[str, float], segment: int, point: list[float] | None = None
    ) -> float:
        """Euclidean distance from ``x`` to the centre of ``segment``, in the clustering space
        (``point``: ``x``'s, when the caller has it)."""
        return math.dist(self.point(x) if point is None else point, self.centres[segment])

    def base_centre(self, segment: int) -> tuple[float, ...]:
        """The centre of ``segment`` in the feature vector's own units."""
        centre = self.centres[segment]
        return centre if self.scaling is None else self.scaling.inverse(centre)

    def describe(self, segment: int) -> str:
        return self._labels[segment]

    @property
    def k_chosen(self) -> int:
        return len(self.centres)

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
            "scaling": None if self.scaling is None else self.scaling.to_dict(),
            "persona_scaling": (
                None if self.persona_scaling is None else self.persona_scaling.to_dict()
            ),
            "categories": self.categories,
            "k": {
                "mode": self.k_mode,
                "chosen": len(self.centres),
                "scores": {str(k): s for k, s in sorted(self.k_scores.items())},
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSnapshot:
        schema = data.get("schema")
        if schema not in (1, SNAPSHOT_SCHEMA):
            raise ValueError(f"unsupported snapshot schema {schema!r}")
        scaling = data.get("scaling")  # absent in schema 1: centres in the vector's own space
        personas = data.get("persona_scaling")  # absent before it: personas in the fixed space
        k = data.get("k") or {}
        return cls(
            version=int(data["version"]),
            features=tuple(data["features"]),
            centres=tuple(tuple(float(v) for v in c) for c in data["centres"]),
            counts=tuple(int(n) for n in data["counts"]),
            river_version=str(data["river_version"]),
            trained_samples=int(data.get("trained_samples", 0)),
            rfm_cuts=data.get("rfm_cuts"),
            scaling=None if scaling is None else FeatureScaling.from_dict(scaling),
            k_scores={int(n): float(s) for n, s in (k.get("scores") or {}).items()},
            k_mode=str(k.get("mode", "fixed")),
            persona_scaling=None if personas is None else FeatureScaling.from_dict(personas),
            categories=None if data.get("categories") is None else int(data["categories"]),
        )


class ClusterTrainer:
    """Online k-means (River) in a space learned from the data, seeded from data.

    The first ``warmup`` samples are buffered. From them the trainer learns the clustering
    space (:class:`FeatureScaling`), then runs batch k-means (best of ten k-means++ starts,
    least inertia) for every k of ``k_range`` and scores each by its silhouette on a
    subsample: ``n_clusters=None`` ("auto") takes the best k, a number takes that number, and
    the scores are kept as evidence either way. From then on River's incremental k-means moves
    the nearest centre toward each sample by a step of 1/n (n: samples that centre has taken),
    never less than ``halflife``. The space stays fixed between re-fits, so successive
    snapshots are comparable; a re-fit (``min_share``) learns it again from the recent window.
    Only one trainer runs in a deployment, so every worker sees the same clusters.

    **The category mix.** Beside ``features``, the space has the shares of the ``categories``
    most viewed categories of the customers it was learned from (``category_share.<name>``,
    :func:`models.features.feature_vector`), one group weighing like one feature
    (:class:`FeatureScaling`). A shop's categories are its own, so they are chosen with the
    space (the first fit, a fit from scratch) and kept in the snapshot's ``features``; a
    worker reads the ones the snapshot names. ``categories=0``: no category mix.

    **The population, not the activity.** Samples come as customers act, so an active
    customer sends many and a lapsed one none: a model fitted to the sample stream describes
    recent activity (on CDNOW, where no new customer arrives after the first quarter, it
    drifted to the few repeat buyers). With a customer ``key`` per sample
    (:func:`population_key`), the trainer keeps each customer's newest vector (a uniform
    sample of at most ``population`` customers, chosen by key hash, so the same ones across
    restarts) and, once it holds ``warmup`` customers, the model is k-means over them: every
    ``check_every`` samples a few Lloyd passes from the current centres (each centre moves to
    the mean of its customers, so ids stay with centres) replace the per-sample steps. Without
    keys (or until the population refills after a restart) it learns online as above.
    While the population grows, the model is fitted from scratch (space and centres, ids
    matched) each time it has doubled since the last fit, since a young population is not yet
    the shop's; once it stops doubling, only the Lloyd passes move the centres, and no
    small-segment re-fit runs: on CDNOW such re-fits moved 37-41% of the customers between
    the midpoint and the end for a 1-5% better fit.

    >>> trainer = ClusterTrainer(n_clusters=2, warmup=6, features=("a",), seed=1)
    >>> for v in (0.0, 0.1, 0.05, 0.9, 1.0, 0.95):
    ...     trainer.learn_one({"a": v})
    >>> snap = trainer.snapshot()
    >>> sorted(round(c[0], 2) for c in (snap.base_centre(0), snap.base_centre(1)))
    [0.05, 0.95]
    >>> snap.predict({"a": 0.0})[0] != snap.predict({"a": 1.0})[0]
    True
    """

    def __init__(
        self,
        n_clusters: int | None = 5,
        halflife: float = 0.02,
        warmup: int = 200,
        seed: int = 42,
        features: Sequence[str] = FEATURE_VECTOR,
        min_share: float = 0.02,
        window: int = 2000,
        check_every: int = 500,
        k_range: tuple[int, int] = K_RANGE,
        groups: Mapping[str, Sequence[str]] = FEATURE_GROUPS,
        population: int = 20_000,
        categories: int = CATEGORIES,
        category_weight: float = CATEGORY_WEIGHT,
    ) -> None:
        if n_clusters is not None and n_clusters < 1:
            raise ValueError("n_clusters must be at least 1")
        if not 2 <= k_range[0] <= k_range[1]:
            raise ValueError("k_range must be (low, high) with 2 <= low <= high")
        if warmup < (n_clusters or k_range[0] + 1):
            raise ValueError("warmup must be at least n_clusters (auto: more than k_range's low)")
        if categories < 0:
            raise ValueError("categories must be 0 (no category mix) or more")
        if not category_weight > 0:
            raise ValueError("category_weight must be positive")
        self.n_clusters = n_clusters
        self.auto = n_clusters is None
        self.halflife = halflife
        self.warmup = warmup
        self.seed = seed
        self.base = tuple(features)
        self.categories = categories
        self.category_weight = category_weight
        #: The categories the space has (``category_share.<name>``), in name order.
        self.vocabulary: tuple[str, ...] = ()
        self.features = self.base
        self.min_share = min_share
        self.window = window
        self.check_every = check_every
        self.k_range = k_range
        self.groups = dict(groups)
        self.population = population
        self.refits = 0
        self.settles = 0
        self._members: dict[int, _Entry] = {}  # customer key -> newest sample
        self._cut = _KEY_SPACE  # keys at or above are not kept (a bottom-k sample by hash)
        self._fitted_population = 0  # the population's size at its last fit from scratch
        # Customers needed before the population drives the model: after a restart, enough
        # that the first customers to come back (the most active) do not bend it alone.
        self._population_needed = warmup
        self.k_scores: dict[int, float] = {}
        self.scaling: FeatureScaling | None = None
        self._persona_scaling: FeatureScaling | None = None
        #: Learn the persona space at the next snapshot: set when the clusters' space is
        #: learned (the first fit, a refit), so personas, like clusters, are matched in a space
        #: that holds still between fits (a space re-learned every snapshot would move
        #: customers near a boundary from one persona to another with no event of theirs).
        self._persona_due = True
        self._recent: deque[_Entry] = deque(maxlen=window)
        self._model: cluster.KMeans | None = None
        self._buffer: list[_Entry] = []
        self._counts: list[int] = []
        self._previous: ModelSnapshot | None = None  # a model to retrain from (ids to keep)
        self._ready = False
        self._version = 0
        self._samples = 0

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def version(self) -> int:
        return self._version

    @property
    def population_mode(self) -> bool:
        """True when the model is k-means over the customers' newest vectors."""
        return len(self._members) >= self._population_needed

    def learn_one(self, x: Mapping[str, float], key: int | None = None) -> None:
        """Learn from one sample; ``key``: its customer's :func:`population_key`, if known."""
        point = [float(x.get(name, 0.0)) for name in self.base]
        mix = None
        if self.categories:
            mix = {name: float(v) for name, v in x.items() if name.startswith(CATEGORY_SHARE)}
            point += [mix.get(name, 0.0) for name in self.vocabulary]
        entry = (point, mix)
        self._samples += 1
        self._recent.append(entry)
        if key is not None and key < self._cut:
            self._remember(key, entry)
        if not self._ready:
            self._buffer.append(entry)
            if len(self._buffer) >= self.warmup:
                self._seed_from_buffer()
            return
        if self.population_mode:
            if self._samples % self.check_every == 0:
                if len(self._members) >= 2 * self._fitted_population:
                    self._refit(list(self._members.values()))
                    self._fitted_population = len(self._members)
                self._settle()
            return
        assert self._model is not None and self.scaling is not None
        z = dict(zip(self.features, self.scaling.transform(point), strict=True))
        nearest: int = self._model.predict_one(z)  # type: ignore[no-untyped-call]
        # MacQueen's step 1/n for a young centre, floored at `halflife` so that a settled
        # centre still follows drift; a fixed step alone keeps centres wandering with noise.
        self._model.halflife = max(self.halflife, 1.0 / (self._counts[nearest] + 1))
        self._model.learn_one(z)  # type: ignore[no-untyped-call]
        self._counts[nearest] += 1
        if self.min_share > 0 and self._samples % self.check_every == 0:
            self._guard_small_segments()

    def _remember(self, key: int, entry: _Entry) -> None:
        members = self._members
        members[key] = entry
        if len(members) > self.population:  # keep the smallest keys: a uniform sample
            self._cut = sorted(members)[self.population * 3 // 4]
            self._members = {k: p for k, p in members.items() if k < self._cut}

    def _data(self) -> np.ndarray:
        """What the model describes: the population, else the recent samples."""
        entries = self._members.values() if self.population_mode else self._recent
        return np.asarray([point for point, _ in entries])

    def _vocabulary_of(self, entries: Sequence[_Entry]) -> tuple[str, ...]:
        """The ``categories`` categories with the largest summed share over ``entries``."""
        if not self.categories:
            return ()
        totals: dict[str, float] = {}
        for _, mix in entries:
            for name, share in (mix or {}).items():
                totals[name] = totals.get(name, 0.0) + share
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
        return tuple(sorted(name for name, _ in ranked[: self.categories]))

    def _rows(self, entries: Sequence[_Entry], vocabulary: tuple[str, ...]) -> np.ndarray:
        """``entries`` as points of the base features and ``vocabulary``."""
        if vocabulary == self.vocabulary:
            return np.asarray([point for point, _ in entries])
        n = len(self.base)
        return np.asarray([_with(point[:n], mix, vocabulary) for point, mix in entries])

    def _set_vocabulary(self, vocabulary: tuple[str, ...]) -> None:
        """Use these categories from now on: every kept sample's point is made again."""
        if vocabulary == self.vocabulary:
            return
        n = len(self.base)
        for key, (point, mix) in self._members.items():
            self._members[key] = (_with(point[:n], mix, vocabulary), mix)
        for kept in (self._recent, self._buffer):
            rebuilt = [(_with(point[:n], mix, vocabulary), mix) for point, mix in kept]
            kept.clear()
            kept.extend(rebuilt)
        self.vocabulary = vocabulary
        self.features = self.base + vocabulary

    def _groups(self, vocabulary: tuple[str, ...]) -> dict[str, Sequence[str]]:
        return {**self.groups, "category": vocabulary} if vocabulary else self.groups

    def _learn_space(self, data: np.ndarray, vocabulary: tuple[str, ...]) -> FeatureScaling:
        """The clusters' space of ``data`` (points of the base features and ``vocabulary``)."""
        return FeatureScaling.learn(
            data,
            self.base + vocabulary,
            self._groups(vocabulary),
            weights={"category": self.category_weight},
        )

    def _settle(self, passes: int = 100) -> None:
        """Lloyd passes over the population from the current centres, to convergence (on data
        without clear groups Lloyd creeps for many passes: stopping early leaves centres that
        keep moving, and customers with them, long after the data stopped changing)."""
        assert self.scaling is not None
        z = self.scaling.transform_many(self._data())
        centres = np.asarray(self._centres())
        k = len(centres)
        labels = _nearest(z, centres)
        for _ in range(passes):
            counts = np.bincount(labels, minlength=k).astype(float)
            sums = np.eye(k)[labels].T @ z
            centres = np.where(
                (counts > 0)[:, None], sums / np.maximum(counts, 1.0)[:, None], centres
            )
            new_labels = _nearest(z, centres)
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
        self._set_centres(centres.tolist())
        self._counts = [int(n) for n in np.bincount(labels, minlength=k)]
        self.settles += 1

    def shares(self) -> list[float]:
        """Each segment's share of the population (else of the recent samples)."""
        assert self.scaling is not None
        centres = np.asarray(self._centres())
        data = self._data()
        if not len(data):
            return [0.0] * len(centres)
        labels = _nearest(self.scaling.transform_many(data), centres)
        counts = np.bincount(labels, minlength=len(centres))
        return [float(n) / len(labels) for n in counts]

    def _guard_small_segments(self) -> None:
        """Re-fit when a segment holds less than ``min_share`` of the recent samples (without a
        population: with one, Lloyd passes move a stranded centre, and a small segment that
        k-means settled on is the data's, flagged by ``segmenter segments``).

        A segment that small is usually a centre stranded by drift or an over-split group. The
        re-fit learns the space again and runs k-means on the recent window, then maps the new
        centres onto the old ids, so customers keep their segment id; it is kept only if it
        fixes the small segment. k stays as it is: changing it would renumber segments.
        """
        if len(self._recent) < self.window // 2 or min(self.shares()) >= self.min_share:
            return
        self._refit(list(self._recent), self.min_share)

    def _refit(self, entries: Sequence[_Entry], min_share: float = 0.0) -> None:
        """k-means from scratch on ``entries`` in a space (and categories) learned again from
        them, the new centres taking the old ids by least total distance; not applied if a
        segment would still hold less than ``min_share``."""
        assert self.scaling is not None
        vocabulary = self._vocabulary_of(entries)
        features = self.base + vocabulary
        data = self._rows(entries, vocabulary)
        scaling = self._learn_space(data, vocabulary)
        rng = np.random.default_rng(self.seed + self._samples)
        centres, counts, _ = _best_of(scaling.transform_many(data), len(self._counts), rng)
        if min(counts) / max(1, sum(counts)) < min_share:
            return  # the data itself has a small group: keep the model as it is
        old = [
            scaling.transform(_named(self.features, self.scaling.inverse(c), features))
            for c in self._centres()
        ]
        order = match_ids(old, centres.tolist())
        self._set_vocabulary(vocabulary)
        self.scaling = scaling
        self._persona_due = True
        self._set_centres([centres[order.index(i)].tolist() for i in range(len(old))])
        self._counts = [int(counts[order.index(i)]) for i in range(len(old))]
        self.refits += 1

    def _centres(self) -> list[list[float]]:
        assert self._model is not None
        return [
            [float(self._model.centers[i][f]) for f in self.features]
            for i in range(len(self._counts))
        ]

    def snapshot(self) -> ModelSnapshot:
        """Freeze the current centres and space under a new version number."""
        if not self._ready:
            raise RuntimeError(f"model is warming up ({len(self._buffer)}/{self.warmup} samples)")
        self._version += 1
        data = self._data()
        due = self._persona_due or self._persona_scaling is None
        if due and len(data):  # else (just restored) the restored snapshot's
            self._persona_scaling = FeatureScaling.learn(  # personas read the base features
                data[:, : len(self.base)], self.base, self.groups, PERSONA_QUANTILES
            )
            self._persona_due = False
        return ModelSnapshot(
            version=self._version,
            features=self.features,
            centres=tuple(tuple(c) for c in self._centres()),
            counts=tuple(self._counts),
            trained_samples=self._samples,
            scaling=self.scaling,
            k_scores=dict(self.k_scores),
            k_mode="auto" if self.auto else "fixed",
            persona_scaling=self._persona_scaling,
            categories=self.categories,
        )

    def restore(self, snapshot: ModelSnapshot) -> bool:
        """Continue from a published snapshot (after a restart or a move to another worker).

        Returns False, and warms up again (retrains) instead, when the snapshot cannot be
        continued: one without a learned space (schema 1, stored before spaces were learned),
        other features or another number of categories (``categories``; a snapshot from
        before the category mix has none), or another number of clusters than a fixed
        ``n_clusters``. Versions continue from it, and the retrained model keeps its segment
        ids where it has as many centres (matched by nearest centre, by feature name), so
        workers scoring with it switch smoothly.
        """
        self._version = max(self._version, snapshot.version)
        self._samples = snapshot.trained_samples
        self._persona_scaling = snapshot.persona_scaling
        self._persona_due = snapshot.persona_scaling is None
        vocabulary = tuple(f for f in snapshot.features if f.startswith(CATEGORY_SHARE))
        same_base = snapshot.features == self.base + vocabulary  # categories come last
        fits = (
            snapshot.scaling is not None
            and same_base
            and (snapshot.categories or 0) == self.categories  # None: before categories
            and (self.auto or len(snapshot.centres) == self.n_clusters)
        )
        if not fits:
            self._previous = snapshot if same_base else None
            return False
        self._set_vocabulary(vocabulary)
        k = len(snapshot.centres)
        known = sum(snapshot.counts)  # the population it was fitted on (or samples taken)
        self._fitted_population = known
        self._population_needed = max(self.warmup, min(known, self.population) // 2)
        self.scaling = snapshot.scaling
        self.k_scores = dict(snapshot.k_scores)
        self._new_model(k)
        self._set_centres([list(c) for c in snapshot.centres])
        self._counts = list(snapshot.counts)
        self._buffer.clear()
        self._ready = True
        return True

    def _seed_from_buffer(self) -> None:
        # The customers' newest vectors when there are enough of them: each customer once.
        enough = max(2 * self.k_range[1], self.warmup // 4)
        population = len(self._members) >= enough
        self._set_vocabulary(
            self._vocabulary_of(list(self._members.values()) if population else self._buffer)
        )
        # the entries again: setting the categories made their points anew
        data = self._rows(
            list(self._members.values()) if population else self._buffer, self.vocabulary
        )
        self.scaling = self._learn_space(data, self.vocabulary)
        self._persona_due = True
        z = self.scaling.transform_many(data)
        rng = np.random.default_rng(self.seed)
        self.k_scores, fits = choose_k(z, self.k_range, rng)
        k = max(self.k_scores, key=lambda n: (self.k_scores[n], -n)) if self.auto else None
        k = k or self.n_clusters
        assert k is not None
        if k not in fits:  # a fixed k outside the range compared
            fits[k] = _best_of(z, k, np.random.default_rng(self.seed))[:2]
        centres, counts = fits[k]
        previous = self._previous
        if previous is not None and len(previous.centres) == k:
            old = [
                self.scaling.transform(
                    _named(previous.features, previous.base_centre(i), self.features)
                )
                for i in range(k)
            ]
            order = match_ids(old, centres.tolist())
            centres = np.asarray([centres[order.index(i)] for i in range(k)])
            counts = [counts[order.index(i)] for i in range(k)]
        self._new_model(k)
        self._set_centres(centres.tolist())
        self._counts = [int(n) for n in counts]
        self._buffer = []
        self._previous = None
        self._ready = True

    def _new_model(self, k: int) -> None:
        self._model = cluster.KMeans(n_clusters=k, halflife=self.halflife, seed=self.seed)

    def _set_centres(self, centres: Sequence[Sequence[float]]) -> None:
        assert self._model is not None
        for i, centre in enumerate(centres):
            self._model.centers[i].clear()
            self._model.centers[i].update(zip(self.features, centre, strict=True))


def choose_k(
    points: np.ndarray,
    k_range: tuple[int, int] = K_RANGE,
    rng: np.random.Generator | None = None,
    sample: int = _SILHOUETTE_SAMPLE,
) -> tuple[dict[int, float], dict[int, tuple[np.ndarray, list[int]]]]:
    """The silhouette of the best k-means (ten k-means++ starts) for each k of ``k_range``,
    on at most ``sample`` of the points, and each k's centres and counts.

    Silhouette (mean over points of ``(b - a) / max(a, b)``: a the mean distance to its own
    cluster, b to the nearest other) needs no reference distribution and is cheap on a
    subsample; it prefers compact, well separated groups, and may favour fewer clusters when
    groups touch.

    >>> rng = np.random.default_rng(0)
    >>> blobs = np.concatenate([rng.normal(c, 0.05, (40, 2)) for c in ((0, 0), (1, 0), (0, 1))])
    >>> scores, _ = choose_k(blobs, (2, 5), np.random.default_rng(1))
    >>> max(scores, key=scores.__getitem__)
    3
    """
    rng = rng or np.random.default_rng(0)
    n = len(points)
    subsample = rng.choice(n, size=min(n, sample), replace=False)
    sub = points[subsample]
    distances = np.sqrt(_sq_distances(sub, sub))
    np.fill_diagonal(distances, 0.0)
    scores: dict[int, float] = {}
    fits: dict[int, tuple[np.ndarray, list[int]]] = {}
    for k in range(k_range[0], min(k_range[1], n - 1) + 1):
        centres, counts, labels = _best_of(points, k, rng)
        fits[k] = (centres, counts)
        scores[k] = round(silhouette(sub, labels[subsample], distances), 4)
    return scores, fits


def silhouette(
    points: np.ndarray, labels: np.ndarray, distances: np.ndarray | None = None
) -> float:
    """Mean silhouette coefficient (0 for a point alone in its cluster, as usual).

    >>> round(silhouette(np.array([[0.0], [0.1], [1.0], [1.1]]), np.array([0, 0, 1, 1])), 2)
    0.9
    """
    n = len(points)
    ids, labels = np.unique(labels, return_inverse=True)
    if len(ids) < 2 or n < 3:
        return 0.0
    if distances is None:  # the pairwise distances (the same for every k: pass them once)
        distances = np.sqrt(_sq_distances(points, points))
        np.fill_diagonal(distances, 0.0)
    onehot = np.zeros((n, len(ids)))
    onehot[np.arange(n), labels] = 1.0
    sizes = onehot.sum(axis=0)
    sums = distances @ onehot
    own = sizes[labels]
    a = sums[np.arange(n), labels] / np.maximum(own - 1.0, 1.0)
    others = sums / sizes
    others[np.arange(n), labels] = np.inf
    b = others.min(axis=1)
    denominator = np.maximum(a, b)
    s = np.where(
        (own > 1) & (denominator > 0), (b - a) / np.where(denominator > 0, denominator, 1), 0
    )
    return round(float(s.mean()), 6)


def _with(
    base: list[float], mix: Mapping[str, float] | None, vocabulary: Sequence[str]
) -> list[float]:
    """A point of the base features and these categories' shares."""
    return (
        base + [mix.get(name, 0.0) for name in vocabulary]
        if mix
        else base + [0.0] * len(vocabulary)
    )


def _named(features: Sequence[str], values: Sequence[float], wanted: Sequence[str]) -> list[float]:
    """``values`` (one per ``features``) as a point of ``wanted``; a feature missing is 0."""
    by_name = dict(zip(features, values, strict=True))
    return [by_name.get(name, 0.0) for name in wanted]


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.asarray(_sq_distances(points, centres).argmin(axis=1))


def _sq_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distances, points by centres (the |x|^2 + |c|^2 - 2 x.c form: one matmul)."""
    d = (
        (points * points).sum(axis=1)[:, None]
        + (centres * centres).sum(axis=1)[None, :]
        - 2.0 * points @ centres.T
    )
    return np.asarray(np.maximum(d, 0.0))


def _best_of(
    points: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 10
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Batch k-means, best of ``n_init`` k-means++ starts (least inertia): one unlucky start
    can put two centres in one group and none in another. Centres, counts, labels."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centres, labels, inertia = _lloyd(points, k, rng)
        if best is None or inertia < best[0]:
            best = (inertia, centres, labels)
    assert best is not None
    _, centres, labels = best
    return centres, [int(n) for n in np.bincount(labels, minlength=k)], labels


def _lloyd(
    points: np.ndarray, k: int, rng: np.random.Generator, passes: int = 30
) -> tuple[np.ndarray, np.ndarray, float]:
    n = len(points)
    centres = np.empty((k, points.shape[1]))
    centres[0] = points[rng.integers(n)]
    d2 = ((points - centres[0]) ** 2).sum(axis=1)
    for j in range(1, k):  # k-means++: far points are likelier seeds
        total = d2.sum()
        index = (
            rng.integers(n) if total <= 0 else np.searchsorted(d2.cumsum(), rng.random() * total)
        )
        centres[j] = points[min(int(index), n - 1)]
        d2 = np.minimum(d2, ((points - centres[j]) ** 2).sum(axis=1))
    labels = _nearest(points, centres)
    for _ in range(passes):
        counts = np.bincount(labels, minlength=k).astype(float)
        sums = np.eye(k)[labels].T @ points
        filled = counts > 0  # an empty cluster keeps its centre
        centres = np.where(filled[:, None], sums / np.maximum(counts, 1.0)[:, None], centres)
        new_labels = _nearest(points, centres)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    inertia = float(((points - centres[labels]) ** 2).sum())
    return centres, labels, inertia


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
#: A category a centre's customers give this share of their views or more names the cluster
#: (the two largest at most).
_CATEGORY_CUT = 0.25
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
    >>> describe_centre({"monetary": 0.5, "conversion": 0.6, "category_share.shoes": 0.4})
    'converts, shoes'
    """
    words = [phrase for name, cut, phrase in _HIGH_PHRASES if centre.get(name, 0.0) >= cut]
    if centre.get("monetary", 0.0) < 0.35 and centre.get("conversion", 0.0) >= 0.2:
        words.insert(0, "low spend")
    if centre.get("conversion", 1.0) < 0.2:
        words.append("rarely buys")
    mix = sorted(
        (
            (share, name[len(CATEGORY_SHARE) :])
            for name, share in centre.items()
            if name.startswith(CATEGORY_SHARE) and share >= _CATEGORY_CUT
        ),
        reverse=True,
    )
    words += [category for _, category in mix[:2]]
    return ", ".join(words) if words else "mixed behavior"
