"""Segmentation quality on real data without labels: the CDNOW purchase log through the worker's
step, its online clusters against an offline k-means on the same final vectors.

The log (``stream.tools.cdnow``: 23,570 customers, 69,659 purchases, 1997-1998) is replayed
through the worker's own step and trainer by :class:`stream.tools.evaluate.Replay`, fed as a
worker is fed. At the end every customer's feature vector is put in the final snapshot's
learned space, and scikit-learn's k-means (k-means++, ten starts, as many clusters as the
online model) is fitted on those points: the best a batch method finds in the space the
worker uses. Three figures, each beside its target:

- inertia: the online model's (every point to its nearest online centre) over the offline
  optimum's, at most 1.10;
- agreement: adjusted Rand index of the online model's assignments against the offline labels,
  at least 0.8;
- id changes: as ``segmenter eval`` defines them for generated traffic: the customers known at
  half the log, frozen there (so their features do not change), scored by the model of the
  midpoint, then by the final model with the worker's hysteresis from that assignment; the
  share whose segment changes, below 2%.

What it does not show: that the clusters mean anything to a marketer (there are no labels),
nor that they are stable on click data (CDNOW has purchases only: of the vector, only the
order value and purchase frequency vary, and everything happens at midnight UTC).

scikit-learn is an eval-only extra (``pip install -e '.[eval]'``), imported here only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.clustering import ModelSnapshot
from models.features import CustomerProfile, feature_vector
from models.metrics import adjusted_rand_index
from models.segments import assign
from stream.errors import SegmenterError
from stream.settings import Settings
from stream.tools.cdnow import Purchase, cdnow_purchases
from stream.tools.evaluate import Replay

__all__ = ["INERTIA_RATIO", "MIN_ARI", "MAX_ID_CHANGES", "RealFigures", "real_settings", "run_real"]

INERTIA_RATIO = 1.10
MIN_ARI = 0.8
MAX_ID_CHANGES = 0.02


class EvalExtraMissing(SegmenterError):
    """scikit-learn is not installed: ``pip install -e '.[eval]'``."""


@dataclass
class RealFigures:
    """The real-data figures of one run (one seed)."""

    purchases: int
    customers: int
    k: int
    k_mode: str
    k_scores: dict[int, float]
    inertia_online: float
    inertia_offline: float
    ari: float
    id_changes: float
    midpoint_customers: int
    seed: int
    refits: int = 0  # the trainer's re-fits (a small segment) over the log

    @property
    def inertia_ratio(self) -> float:
        return self.inertia_online / self.inertia_offline if self.inertia_offline else math.inf

    def rows(self) -> list[tuple[str, str, str, bool]]:
        """(figure, value, target, met) for printing, as ``EvalResult.rows``."""
        return [
            (
                "CDNOW: online inertia / offline k-means optimum",
                f"{self.inertia_ratio:.3f}",
                f"<= {INERTIA_RATIO:.2f}",
                self.inertia_ratio <= INERTIA_RATIO,
            ),
            (
                "CDNOW: adjusted Rand index vs offline k-means",
                f"{self.ari:.3f}",
                f">= {MIN_ARI:.2f}",
                self.ari >= MIN_ARI,
            ),
            (
                "CDNOW: id changes, midpoint model vs final",
                f"{self.id_changes:.2%}",
                f"< {MAX_ID_CHANGES:.0%}",
                self.id_changes < MAX_ID_CHANGES,
            ),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "purchases": self.purchases,
            "customers": self.customers,
            "k": self.k,
            "k_mode": self.k_mode,
            "k_scores": {str(k): s for k, s in self.k_scores.items()},
            "inertia_online": round(self.inertia_online, 4),
            "inertia_offline": round(self.inertia_offline, 4),
            "inertia_ratio": round(self.inertia_ratio, 4),
            "ari": round(self.ari, 4),
            "id_changes": round(self.id_changes, 5),
            "midpoint_customers": self.midpoint_customers,
            "seed": self.seed,
            "refits": self.refits,
        }


def squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each point's squared distance to each centre, points by centres (the inertia of
    centres on points is the sum of each row's least).

    >>> squared_distances(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0]])).tolist()
    [[0.0], [25.0]]
    """
    return np.asarray(((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))


def real_settings(base: Settings | None = None, seed: int | None = None) -> Settings:
    """The worker's settings for a purchase-only log: a CDNOW customer's whole history is a
    handful of purchases, so every applied event of every customer is a training sample
    (``SEGMENTER_MIN_EVENTS_FOR_SAMPLE=1``, ``SEGMENTER_SAMPLE_EVERY=1``), and no cap on
    samples a second (``SEGMENTER_MAX_SAMPLES_PER_SECOND=0``): the replay plays 18 months in
    seconds, where the cap would keep about one purchase in five and so mostly the repeat
    buyers, while the shop live sends a few samples an hour. The rest as given."""
    base = base or Settings()
    update: dict[str, Any] = {
        "min_events_for_sample": 1,
        "sample_every": 1,
        "max_samples_per_second": 0,
    }
    if seed is not None:
        update["seed"] = seed
    return Settings(**{**base.model_dump(), **update})


def _kmeans() -> Any:
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise EvalExtraMissing(
            "the real-data eval needs scikit-learn: pip install -e '.[eval]'"
        ) from None
    return KMeans


def run_real(
    settings: Settings | None = None,
    purchases: Sequence[Purchase] | None = None,
    seed: int = 42,
    customers: int | None = None,
    cache_dir: Path | None = None,
    rate: float = 2000.0,
    on_progress: Callable[[int], None] | None = None,
) -> RealFigures:
    """Replay the CDNOW log (``purchases``, or the whole log fetched into ``cache_dir``;
    ``customers``: only the first that many customer ids) through the worker's step and
    compare the final online model with an offline k-means. ``seed`` seeds both the online
    trainer (``SEGMENTER_SEED``) and the offline k-means."""
    kmeans_class = _kmeans()
    log = list(purchases) if purchases is not None else cdnow_purchases(cache_dir)
    if customers is not None:
        keep = sorted({p.customer_id for p in log}, key=_id_order)[:customers]
        kept = set(keep)
        log = [p for p in log if p.customer_id in kept]
    if not log:
        raise ValueError("no purchases to replay")
    replay = Replay(real_settings(settings, seed), None, rate)
    half_model: ModelSnapshot | None = None
    half: dict[str, CustomerProfile] = {}
    for n, purchase in enumerate(log, 1):
        replay.send(purchase.message())
        if n % 1000 == 0:
            replay.drain()
            if on_progress:
                on_progress(n)
        if half_model is None and n >= len(log) // 2 and replay.model is not None:
            replay.drain()
            half_model = replay.model
            half = {c: CustomerProfile.from_state(p.to_state()) for c, p in replay.profiles.items()}
    replay.drain()
    final = replay.model
    if final is None or half_model is None:
        raise ValueError(
            f"{len(log):,} purchases gave the trainer too few samples for a model by the "
            f"midpoint (SEGMENTER_WARMUP_SAMPLES={replay.settings.warmup_samples})"
        )
    ids = sorted(replay.profiles)
    points = np.asarray([final.point(feature_vector(replay.profiles[c])) for c in ids])
    centres = np.asarray(final.centres)
    online = squared_distances(points, centres)
    online_labels = online.argmin(axis=1)
    inertia_online = float(online.min(axis=1).sum())
    offline = kmeans_class(
        n_clusters=len(centres), init="k-means++", n_init=10, random_state=seed
    ).fit(points)

    catalog = replay.step.catalog_for(final)
    changed = 0
    for profile in half.values():  # as `segmenter eval` counts id changes
        profile.segment = assign(profile, half_model, catalog).segment
        changed += assign(profile, final, catalog).segment != profile.segment
    return RealFigures(
        purchases=len(log),
        customers=len(ids),
        k=len(centres),
        k_mode=final.k_mode,
        k_scores=dict(final.k_scores),
        inertia_online=inertia_online,
        inertia_offline=float(offline.inertia_),
        ari=adjusted_rand_index(online_labels.tolist(), offline.labels_.tolist()),
        id_changes=changed / len(half) if half else 0.0,
        midpoint_customers=len(half),
        seed=seed,
        refits=replay.trainer.refits,
    )


def _id_order(customer_id: str) -> tuple[int, str]:
    return (int(customer_id), customer_id) if customer_id.isdigit() else (1 << 62, customer_id)


def summary(runs: Sequence[RealFigures]) -> list[tuple[str, str, str, str, bool]]:
    """(figure, median, worst, target, met over every run) of each figure over the runs.

    >>> a = RealFigures(100, 10, 5, "fixed", {}, 1.0, 1.0, 0.9, 0.01, 8, 1)
    >>> b = RealFigures(100, 10, 5, "fixed", {}, 1.2, 1.0, 0.7, 0.03, 8, 2)
    >>> [row[:3] for row in summary([a, b, a])][1]
    ('CDNOW: adjusted Rand index vs offline k-means', '0.900', '0.700')
    """
    table = [run.rows() for run in runs]
    out = []
    for i, (figure, _, target, _) in enumerate(table[0]):
        values = sorted((rows[i][1] for rows in table), key=lambda v: float(v.rstrip("%")))
        worst = values[0] if i == 1 else values[-1]  # ARI: the lowest; the others: the highest
        out.append(
            (figure, values[len(values) // 2], worst, target, all(rows[i][3] for rows in table))
        )
    return out


def rows(settings: Settings, seeds: int = 5) -> list[tuple[str, str, str, str, bool]]:
    """``make eval``'s real-data rows: ``summary`` of ``run_real`` with seeds 1..``seeds``."""
    return summary([run_real(settings, seed=seed) for seed in range(1, seeds + 1)])
