"""Load the rule-segment and persona catalogs from YAML, with errors that name the line."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from models.facts import is_known_fact
from models.personas import PROTOTYPE_FIELDS, Persona, PersonaCatalog
from models.rules import RuleError, RuleSegment
from stream.errors import SegmenterError

__all__ = ["CatalogError", "file_version", "load_personas", "load_segments"]

SEGMENT_KINDS = (
    "value",
    "behavioral",
    "needs",
    "technographic",
    "geographic",
    "demographic",
    "psychographic",
    "firmographic",
    "lifecycle",
)


class CatalogError(SegmenterError):
    """A segment or persona file that cannot be used; the message names file, entry and line."""


def file_version(text: str) -> str:
    """The version of a definitions file: its SHA-256, first 12 hex digits.

    >>> file_version("segments: {}\\n")
    'sha256:4f4e5ae17ac2'
    """
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _Entry:
    name: str
    line: int
    body: Any


def _entries(
    path: Path | None, package_file: str, section: str, text: str | None, source: str | None
) -> tuple[str, list[_Entry]]:
    if text is not None:
        source = source or f"(published) {package_file}"
    elif path is None:
        text = resources.files("stream").joinpath(package_file).read_text()
        source = f"(built-in) {package_file}"
    else:
        if not path.exists():
            raise CatalogError(f"{path}: no such file")
        text, source = path.read_text(), str(path)
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get(section), dict) or not data[section]:
        raise CatalogError(f"{source}: expected a top-level mapping '{section}:' with entries")
    lines: dict[str, int] = {}
    assert isinstance(root, yaml.MappingNode)
    for key, value in root.value:
        if key.value == section and isinstance(value, yaml.MappingNode):
            lines = {k.value: k.start_mark.line + 1 for k, _ in value.value}
    return source, [
        _Entry(str(name), lines.get(str(name), 0), body) for name, body in data[section].items()
    ]


def load_segments(
    path: Path | None = None, text: str | None = None, source: str | None = None
) -> list[RuleSegment]:
    """Compile every rule segment of a file (or the built-in defaults, or ``text`` read from
    ``source``: published definitions); fail on the first error."""
    source, entries = _entries(path, "segments.yaml", "segments", text, source)
    out = []
    for e in entries:
        try:
            if not isinstance(e.body, dict) or "when" not in e.body:
                raise RuleError(e.name, "needs a 'when:' condition", e.line)
            kind = e.body.get("kind", "behavioral")
            if kind not in SEGMENT_KINDS:
                raise RuleError(
                    e.name, f"kind {kind!r} is not one of {', '.join(SEGMENT_KINDS)}", e.line
                )
            extra = set(e.body) - {"when", "kind", "description"}
            if extra:
                raise RuleError(e.name, f"unknown keys {sorted(extra)}", e.line)
            segment = RuleSegment.compile(
                e.name,
                kind,
                str(e.body.get("description", "")),
                e.body["when"],
                e.line,
                is_known_fact,
            )
        except RuleError as exc:
            raise CatalogError(f"{source}: {exc}") from None
        out.append(segment)
    return out


def load_personas(
    path: Path | None = None, text: str | None = None, source: str | None = None
) -> PersonaCatalog:
    """The persona catalog of a file, the built-in one, or ``text`` (as ``load_segments``)."""
    source, entries = _entries(path, "personas.yaml", "personas", text, source)
    personas = []
    for e in entries:
        where = f"{source}: persona {e.name!r} (line {e.line})"
        if not isinstance(e.body, dict) or not isinstance(e.body.get("prototype"), dict):
            raise CatalogError(f"{where}: needs a 'prototype:' mapping")
        prototype = e.body["prototype"]
        for name, value in prototype.items():
            if name not in PROTOTYPE_FIELDS:
                raise CatalogError(
                    f"{where}: unknown prototype field {name!r} (use {', '.join(PROTOTYPE_FIELDS)})"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise CatalogError(
                    f"{where}: prototype field {name!r} needs a number >= 0, got {value!r}"
                )
        traits = e.body.get("traits", {})
        if not isinstance(traits, dict):
            raise CatalogError(f"{where}: 'traits' must be a mapping")
        personas.append(
            Persona(e.name, str(e.body.get("description", "")), dict(prototype), dict(traits))
        )
    return PersonaCatalog(personas)
