"""How separable the generator's personas are at all: the ceiling for ``segmenter eval``'s ARI.

One draw (``stream.tools.evaluate.run_draw``: the same traffic, step and trainer as
``segmenter eval``) ends with the customers ``eval`` scores (3+ sessions; pure, mixed and
switching customers; labelled by the persona they are at the end). On their final profiles:

- **offline k-means** (scikit-learn, k = the true persona count, k-means++, ten starts): ARI
  against the true personas, in each space below; in the snapshot's space it is what a batch
  k-means finds where the online model works;
- **supervised classifiers** (logistic regression, gradient boosting), five-fold stratified
  cross-validation: accuracy and ARI of the out-of-fold predictions (gradient boosting in the
  snapshot's space and the richest only: it is the slow one). They are told the personas, so
  they bound what any clustering of the same features can reach (up to their own fit);
- the spaces: ``snapshot`` (the final snapshot's learned space, as the worker scores),
  ``raw`` (the feature vector before scaling), ``+categories`` (the raw vector and the
  customer's category mix of views), ``+channel+hours`` (also the channel and the 24 local
  hours) and ``+traits`` (also the identify traits the generator sends: age, gender, income
  band; demographic data a shop may not have);
- **other clusterings of the snapshot's space** (what the online model's k-means could be
  replaced by): Gaussian mixtures (full, diagonal and spherical covariances, five starts) and
  weighted k-means (Huang et al. 2005: feature weights learned from the clusters' own
  dispersion, exponent 3 and 8), with the true k;
- **where the online records lose**: the final model's centres against the offline
  optimum (their inertia over that of an offline k-means with as many centres), and the
  records against the final model: its nearest centre for every customer (no hysteresis),
  where an evaluation at their last event would place them with it (``assign``, hysteresis
  from their record's cluster), and the share of records that would move. A record is
  scored on its customer's events and due times, by the model of that moment;
- **confusions**: accuracy of the online clusters (each cluster named by its commonest true
  persona) and of the classifier by kind of customer and by sessions seen.

scikit-learn is an eval-only extra (``pip install -e '.[eval]'``), imported here only.
``python -m stream.tools.eval_ceiling --seeds 5 --size 100000:2000`` prints every figure's
median and worst over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.features import FEATURE_VECTOR, CustomerProfile, feature_vector, local_offset_hours
from models.metrics import adjusted_rand_index
from models.segments import assign
from stream.settings import Settings
from stream.tools.eval_real import EvalExtraMissing, squared_distances
from stream.tools.eval_runs import Size
from stream.tools.evaluate import run_draw
from stream.worker.app import build_catalog

__all__ = ["CeilingDraw", "ceiling", "collect", "main", "spaces"]

KINDS = ("pure", "mixed", "switcher")
BOOSTED = ("snapshot", "+traits")
SESSION_BUCKETS = ((3, 4), (5, 9), (10, 10**9))
#: Gaussian mixtures' covariance types fitted in the snapshot's space.
MIXTURES = ("full", "diag", "spherical")
#: Weighted k-means' exponents: a feature's weight w goes as its within-cluster dispersion to
#: the power -1 / (exponent - 1), and distances weigh w ** exponent; so the larger, the nearer
#: the distances come to each feature divided by its spread within the clusters.
WEIGHT_EXPONENTS = (3.0, 8.0)
INERTIA = "online centres' inertia / offline k-means'"
MOVED = "records the final model would move"
#: Figures whose worst is their highest (the rest: their lowest).
HIGHER_IS_WORSE = (INERTIA, MOVED)


@dataclass
class CeilingDraw:
    """The customers ``segmenter eval`` scores at the end of one draw, with their truth."""

    seed: int
    size: str
    ids: list[str]
    profiles: list[CustomerProfile]
    truth: list[str]
    kinds: list[str]
    online: list[int]  # the segment each record holds
    snapshot_points: np.ndarray  # feature vectors in the final snapshot's space
    figures: dict[str, float] = field(default_factory=dict)
    #: The final model's centres (its space; None when not known), its nearest centre for
    #: each customer, and where an evaluation at their last event would place them with it
    #: (hysteresis from their record's cluster) (both empty when not known).
    centres: np.ndarray | None = None
    final_nearest: list[int] = field(default_factory=list)
    final_scored: list[int] = field(default_factory=list)


def collect(
    settings: Settings, events: int, customers: int, seed: int, min_sessions: int = 3
) -> CeilingDraw:
    """Run one draw as ``segmenter eval`` does and keep its scored customers."""
    run = run_draw(settings, build_catalog(settings), events, customers, seed, min_sessions)
    final = run.replay.model
    assert final is not None
    ids = [
        c
        for c, p in run.replay.profiles.items()
        if p.sessions >= min_sessions and run.generator.kind(c) in KINDS
    ]
    profiles = [run.replay.profiles[c] for c in ids]
    online = [p.segment if p.segment is not None else -1 for p in profiles]
    catalog = run.replay.step.catalog_for(final)
    points, nearest, scored = [], [], []
    for p in profiles:
        x = feature_vector(p)
        point = final.point(x)
        points.append(point)
        nearest.append(final.predict(x, point)[0])
        # as an evaluation at their last event would place them (assign changes no profile)
        segment = assign(p, final, catalog, x=x).segment
        scored.append(-1 if segment is None else segment)
    return CeilingDraw(
        seed=seed,
        size=f"{events}:{customers}",
        ids=ids,
        profiles=profiles,
        truth=[run.generator.truth[c].name for c in ids],
        kinds=[run.generator.kind(c) for c in ids],
        online=online,
        snapshot_points=np.asarray(points),
        centres=np.asarray(final.centres),
        final_nearest=nearest,
        final_scored=scored,
    )


def _shares(counter: Mapping[str, float], keys: Sequence[str]) -> list[float]:
    total = sum(counter.values())
    return [counter.get(k, 0.0) / total if total else 0.0 for k in keys]


def _local_hours(p: CustomerProfile) -> list[float]:
    offset = local_offset_hours(p.traits, p.country, p.last_seen_ts or 0)
    hours = [0.0] * 24
    for hour, n in p.hours.items():
        hours[(int(hour) + offset) % 24] += n
    total = sum(hours)
    return [h / total if total else 0.0 for h in hours]


def _traits(p: CustomerProfile) -> list[float]:
    age = p.traits.get("age")
    band = {"low": 0.0, "medium": 0.5, "high": 1.0}.get(str(p.traits.get("income_band")), 0.5)
    gender = {"f": 0.0, "m": 1.0}.get(str(p.traits.get("gender")), 0.5)
    return [float(age) / 100 if isinstance(age, int | float) else 0.4, band, gender]


def spaces(draw: CeilingDraw) -> dict[str, np.ndarray]:
    """The feature spaces compared, one row per scored customer."""
    raw = np.asarray([[feature_vector(p)[f] for f in FEATURE_VECTOR] for p in draw.profiles])
    # the category mix as the model's vector has it: recent visits weighing more
    categories = sorted({c for p in draw.profiles for c in p.recent_categories})
    channels = sorted({p.channel for p in draw.profiles if p.channel})
    cats = np.asarray([_shares(p.recent_categories, categories) for p in draw.profiles])
    chan = np.asarray([[float(p.channel == c) for c in channels] for p in draw.profiles])
    hours = np.asarray([_local_hours(p) for p in draw.profiles])
    traits = np.asarray([_traits(p) for p in draw.profiles])
    return {
        "snapshot": draw.snapshot_points,
        "raw": raw,
        "+categories": np.hstack([raw, cats]),
        "+channel+hours": np.hstack([raw, cats, chan, hours]),
        "+traits": np.hstack([raw, cats, chan, hours, traits]),
    }


def weighted_kmeans(
    points: np.ndarray,
    k: int,
    exponent: float,
    seed: int,
    rounds: int = 10,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted k-means (Huang, Ng, Rong and Li 2005, "Automated variable weighting in
    k-means type clustering"): k-means from ten k-means++ starts, then rounds of learning
    each feature's weight from its dispersion within the clusters (a feature that varies
    less inside them weighs more; one that does not vary at all, nothing) and k-means again
    in the weighted space from the clusters' centres, until no customer moves (at most
    ``rounds``). The labels. ``start``: the first k-means' labels, when the caller has them.
    Like k-means, it keeps the optimum its start found: weights learned from clusters split on
    a noisy feature can leave them split there. (No doctest: scikit-learn is an extra;
    ``tests/unit/test_eval_ceiling.py`` has the example.)
    """
    from sklearn.cluster import KMeans

    labels = (
        start
        if start is not None
        else KMeans(k, init="k-means++", n_init=10, random_state=seed).fit_predict(points)
    )
    for _ in range(rounds):
        used = [j for j in range(k) if np.any(labels == j)]
        centres = np.asarray([points[labels == j].mean(axis=0) for j in used])
        index = np.searchsorted(used, labels)
        dispersion = ((points - centres[index]) ** 2).sum(axis=0)
        varies = dispersion > 0
        weights = np.zeros(points.shape[1])
        d = dispersion[varies]
        weights[varies] = 1.0 / ((d[:, None] / d[None, :]) ** (1.0 / (exponent - 1))).sum(axis=1)
        scale = weights ** (exponent / 2)
        fitted = KMeans(len(used), init=centres * scale, n_init=1).fit(points * scale)
        moved = fitted.labels_
        if np.array_equal(moved, index):
            break
        labels = moved
    return np.asarray(labels)


def _majority_map(labels: Sequence[int], truth: Sequence[str]) -> dict[int, str]:
    votes: dict[int, Counter[str]] = {}
    for label, name in zip(labels, truth, strict=True):
        votes.setdefault(label, Counter())[name] += 1
    return {label: counter.most_common(1)[0][0] for label, counter in votes.items()}


def _accuracy_by(
    hits: Sequence[bool], groups: Sequence[str], prefix: str, out: dict[str, float]
) -> None:
    by: dict[str, list[bool]] = {}
    for hit, group in zip(hits, groups, strict=True):
        by.setdefault(group, []).append(hit)
    for group, values in by.items():
        out[f"{prefix} {group}"] = sum(values) / len(values)
        out[f"share {group}"] = len(values) / len(hits)


def _bucket(sessions: int) -> str:
    for low, high in SESSION_BUCKETS:
        if low <= sessions <= high:
            return f"{low}+ sessions" if high > 10**6 else f"{low}-{high} sessions"
    return "other"


def ceiling(draw: CeilingDraw, seed: int = 0, boosted: Sequence[str] = BOOSTED) -> dict[str, float]:
    """Every ceiling figure of one draw, by name; gradient boosting in the ``boosted`` spaces
    (the confusions by kind and evidence take the snapshot's, else the logistic model's)."""
    try:
        from sklearn.cluster import KMeans
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.mixture import GaussianMixture
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise EvalExtraMissing("the ceiling needs scikit-learn: pip install -e '.[eval]'") from None

    truth = draw.truth
    k = len(set(truth))
    out: dict[str, float] = {"customers": float(len(truth))}
    out["online ARI"] = adjusted_rand_index(truth, draw.online)
    if draw.final_nearest:  # the records against the final model
        out["final model ARI (nearest centre)"] = adjusted_rand_index(truth, draw.final_nearest)
        out["final model ARI (as at their last event)"] = adjusted_rand_index(
            truth, draw.final_scored
        )
        out[MOVED] = sum(a != b for a, b in zip(draw.online, draw.final_scored, strict=True)) / len(
            truth
        )
    pure = [i for i, kind in enumerate(draw.kinds) if kind == "pure"]
    out["online ARI pure"] = adjusted_rand_index(
        [truth[i] for i in pure], [draw.online[i] for i in pure]
    )
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    y = np.asarray(truth)
    best: np.ndarray | None = None
    for name, x in spaces(draw).items():
        for scaled in (False, True) if name != "snapshot" else (False,):
            points = StandardScaler().fit_transform(x) if scaled else x
            fitted = KMeans(k, init="k-means++", n_init=10, random_state=seed).fit(points)
            labels = fitted.labels_
            tag = f"{name} standardized" if scaled else name
            out[f"k-means ARI {tag}"] = adjusted_rand_index(truth, labels.tolist())
            if name == "snapshot":
                out["online vs k-means ARI snapshot"] = adjusted_rand_index(
                    draw.online, labels.tolist()
                )
                if draw.centres is not None:  # against an offline fit of as many centres
                    m = len(draw.centres)
                    offline = (
                        fitted if m == k else KMeans(m, n_init=10, random_state=seed).fit(points)
                    )
                    nearest = squared_distances(points, draw.centres).min(axis=1)
                    out[INERTIA] = float(nearest.sum() / offline.inertia_)
                for kind in MIXTURES:
                    mixture = GaussianMixture(
                        k, covariance_type=kind, n_init=5, reg_covar=1e-4, random_state=seed
                    )
                    out[f"gaussian mixture ({kind}) ARI snapshot"] = adjusted_rand_index(
                        truth, mixture.fit_predict(points).tolist()
                    )
                for exponent in WEIGHT_EXPONENTS:
                    weighted = weighted_kmeans(points, k, exponent, seed, start=labels)
                    out[f"weighted k-means ({exponent:g}) ARI snapshot"] = adjusted_rand_index(
                        truth, weighted.tolist()
                    )
        models: dict[str, Any] = {
            "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        }
        if name in boosted:  # the slow one: the model's own space and the richest
            models["boosting"] = HistGradientBoostingClassifier(random_state=seed)
        for model_name, model in models.items():
            predicted = cross_val_predict(model, x, y, cv=folds)
            out[f"{model_name} accuracy {name}"] = float(np.mean(predicted == y))
            out[f"{model_name} ARI {name}"] = adjusted_rand_index(truth, predicted.tolist())
            if name == "snapshot":  # boosting's when it runs (it comes last)
                best = predicted
    assert best is not None
    named = _majority_map(draw.online, truth)
    online_hits = [named[label] == t for label, t in zip(draw.online, truth, strict=True)]
    out["online accuracy (clusters named by majority)"] = sum(online_hits) / len(truth)
    boosted_hits = [bool(p == t) for p, t in zip(best, truth, strict=True)]
    buckets = [_bucket(p.sessions) for p in draw.profiles]
    _accuracy_by(online_hits, draw.kinds, "online accuracy", out)
    _accuracy_by(online_hits, buckets, "online accuracy", out)
    _accuracy_by(boosted_hits, draw.kinds, "boosting snapshot accuracy", out)
    _accuracy_by(boosted_hits, buckets, "boosting snapshot accuracy", out)
    pairs = Counter(
        tuple(sorted((t, named[label])))
        for label, t in zip(draw.online, truth, strict=True)
        if named[label] != t
    )
    for (a, b), n in pairs.most_common(3):
        out[f"confused {a} / {b}"] = n / len(truth)
    return out


def summarize(results: Sequence[Mapping[str, float]]) -> list[tuple[str, float, float, int]]:
    """(figure, median, worst, draws) over draws; worst is the lowest (for ARI, accuracy), the
    highest for the figures of ``HIGHER_IS_WORSE``."""
    names: list[str] = []
    for result in results:
        names.extend(n for n in result if n not in names)
    rows = []
    for name in names:
        values = [r[name] for r in results if name in r]
        worst = max(values) if name in HIGHER_IS_WORSE else min(values)
        rows.append((name, statistics.median(values), worst, len(values)))
    return rows


def main(argv: Sequence[str] | None = None, say: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream.tools.eval_ceiling")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N per size")
    parser.add_argument(
        "--size",
        action="append",
        default=None,
        help="EVENTS:CUSTOMERS, repeatable (default 100000:2000)",
    )
    args = parser.parse_args(argv)
    settings = Settings()
    for text in args.size or ["100000:2000"]:
        size = Size.parse(text)
        results = []
        for seed in range(1, args.seeds + 1):
            draw = collect(settings, size.events, size.customers, seed)
            figures = ceiling(draw, seed)
            results.append(figures)
            say(
                f"{size.name} seed {seed}: online ARI {figures['online ARI']:.3f}, "
                f"k-means snapshot {figures['k-means ARI snapshot']:.3f}, "
                f"boosting snapshot {figures['boosting accuracy snapshot']:.3f}"
            )
        say(
            f"\n{size.name} ({size.events:,} events, {size.customers:,} customers), "
            f"seeds 1-{args.seeds}: figure | median | worst"
        )
        for name, median, worst, n in summarize(results):
            say(f"| {name} | {median:.3f} | {worst:.3f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
