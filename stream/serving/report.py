"""The segments report (sizes, shares, descriptions) that the CLI and the read API both serve."""

from __future__ import annotations

from typing import Any

from models.clustering import ModelSnapshot
from stream.catalog import load_personas, load_segments
from stream.settings import Settings
from stream.store import SegmentClient

__all__ = ["segment_report"]


def segment_report(client: SegmentClient, settings: Settings) -> dict[str, Any]:
    """Every segment of every kind with its size, share and description.

    Sizes come from the counters the write script keeps (``P sizes`` and ``P members``), so
    the report costs a few Redis round trips whatever the number of customers.
    """
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
    for persona in load_personas(settings.personas_file).personas:
        n = members.get(f"persona:{persona.name}", 0)
        row("persona", persona.name, n, persona.description)
    for rule in load_segments(settings.segments_file):
        row(rule.kind, rule.name, members.get(f"rule:{rule.name}", 0), rule.description)
    return {
        "customers": total,
        "model_version": snapshot.version if snapshot else None,
        "segments": rows,
    }
