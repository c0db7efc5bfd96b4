"""The segments report (sizes, shares, descriptions) that the CLI and the read API both serve."""

from __future__ import annotations

from typing import Any

from models.clustering import ModelSnapshot
from stream.serving.definitions import DefinitionsInForce
from stream.settings import Settings
from stream.store import SegmentClient

__all__ = ["cluster_count_evidence", "definitions_status", "segment_report"]


def cluster_count_evidence(snapshot: ModelSnapshot | None) -> dict[str, Any]:
    """How the model's number of clusters was chosen: the silhouette per k on the trainer's
    warm-up samples, the k in use, and whether the setting was ``auto`` (best score) or a
    number (then the scores are advice).

    >>> from models.clustering import ModelSnapshot
    >>> snap = ModelSnapshot(1, ("a",), ((0.0,), (1.0,)), (1, 1), k_scores={2: 0.7, 3: 0.5})
    >>> cluster_count_evidence(snap)["line"]
    'k = 2 (SEGMENTER_N_CLUSTERS=2); silhouette per k: 2: 0.700*, 3: 0.500 (best: 2)'
    """
    if snapshot is None:
        return {"mode": None, "chosen": None, "best": None, "scores": {}, "line": "no model yet"}
    scores = snapshot.k_scores
    best = max(scores, key=lambda k: (scores[k], -k)) if scores else None
    chosen = snapshot.k_chosen
    setting = "auto, best silhouette" if snapshot.k_mode == "auto" else str(chosen)
    line = f"k = {chosen} (SEGMENTER_N_CLUSTERS={setting})"
    if scores:
        shown = ", ".join(
            f"{k}: {s:.3f}{'*' if k == chosen else ''}" for k, s in sorted(scores.items())
        )
        line += f"; silhouette per k: {shown} (best: {best})"
    else:
        line += "; no scores (a model trained before k was evaluated)"
    return {
        "mode": snapshot.k_mode,
        "chosen": chosen,
        "best": best,
        "scores": {str(k): s for k, s in sorted(scores.items())},
        "line": line,
    }


def definitions_status(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The definitions version in force over the live workers' heartbeats, and the progress
    of their backfills (``stream.worker.definitions``).

    ``complete`` is the version every worker holds with all its customers re-evaluated under
    it (0: the settings' files, or some worker still at work).

    >>> beat = {"version": 2, "complete": False, "backfill": {"version": 2, "done": 500,
    ...         "total": 2000, "running": True, "finished_at": None, "seconds": None}}
    >>> definitions_status([{"definitions": beat}])["line"]
    'definitions v2 (re-evaluating: 500 of 2,000 customers)'
    """
    beats = [w["definitions"] for w in workers if isinstance(w.get("definitions"), dict)]
    versions = sorted({int(b.get("version", 0)) for b in beats})
    backfills = [
        b["backfill"]
        for b in beats
        if b.get("backfill") and b["backfill"].get("version") == b.get("version")
    ]
    done = sum(int(f.get("done", 0)) for f in backfills)
    total = sum(int(f.get("total", 0)) for f in backfills)
    running = any(f.get("running") for f in backfills)
    finished = [f.get("finished_at") for f in backfills]
    complete = 0
    if beats and all(b.get("complete") for b in beats) and len(versions) == 1:
        complete = versions[0]
    if not versions:
        line = "definitions: no worker"
    elif versions == [0]:
        line = "definitions: the settings' files"
    else:
        line = "definitions " + ", ".join(f"v{v}" for v in versions)
        if len(versions) > 1:
            line += " (workers switching)"
        elif running or not complete:
            line += f" (re-evaluating: {done:,} of {total:,} customers)"
    seconds = [f["seconds"] for f in backfills if f.get("seconds") is not None]
    return {
        "versions": versions,
        "version": versions[-1] if versions else None,
        "complete": complete,
        "workers": len(beats),
        "backfill": {
            "running": running,
            "done": done,
            "total": total,
            "changes": sum(int(f.get("changes", 0)) for f in backfills),
            "written": sum(int(f.get("written", 0)) for f in backfills),
            "started_at": min(
                (f["started_at"] for f in backfills if f.get("started_at")), default=None
            ),
            "finished_at": None if running or None in finished else max(finished, default=None),
            "seconds": max(seconds, default=None),
        },
        "in_force": {k: beats[0].get(k) for k in ("segments", "personas")} if beats else {},
        "line": line,
    }


def segment_report(
    client: SegmentClient, settings: Settings, definitions: DefinitionsInForce | None = None
) -> dict[str, Any]:
    """Every segment of every kind with its size, share and description, under the
    definitions in force (``stream.serving.definitions``).

    Sizes come from the counters the write script keeps (``P sizes`` and ``P members``), so
    the report costs a few Redis round trips whatever the number of customers.
    """
    workers = client.workers()
    defs = (definitions or DefinitionsInForce(settings)).get(workers)
    total = client.customers()
    members = client.members()
    model = client.model()
    snapshot = ModelSnapshot.from_dict(model) if model else None
    rows: list[dict[str, Any]] = []

    def row(kind: str, segment: str, n: int, description: str, note: str = "") -> None:
        share = n / total if total else 0.0
        rows.append(
            {
                "kind": kind,
                "segment": segment,
                "customers": n,
                "share": round(share, 4),
                "description": description,
                "note": note,
            }
        )

    for seg, n in sorted(client.sizes().items()):
        if seg == "-":
            row("cluster", "unassigned", n, "no model yet")
            continue
        index = int(seg)
        known = snapshot is not None and index < len(snapshot.centres)
        label = snapshot.describe(index) if snapshot is not None and known else "no model yet"
        small = total and n / total < settings.min_segment_share
        row("cluster", f"cluster:{seg}", n, label, "below minimum size" if small else "")
    for persona in defs.personas:
        n = members.get(f"persona:{persona.name}", 0)
        row("persona", persona.name, n, persona.description)
    for rule in defs.rules:
        row(rule.kind, rule.name, members.get(f"rule:{rule.name}", 0), rule.description)
    return {
        "customers": total,
        "model_version": snapshot.version if snapshot else None,
        "clusters": cluster_count_evidence(snapshot),
        "definitions": definitions_status(workers),
        "segments": rows,
    }
