"""The segment definitions in force, as written, with a version: what the customer and segment
views and the segments report show beside a rule segment or a persona.

The version of a definition is the SHA-256 (first 12 hex digits) of the file it came from, so
two processes that show the same version use the same definitions. In force are the newest
definitions published (``segmenter segments apply``) that the live workers report in their
heartbeats, else the files of the settings (``SEGMENTER_SEGMENTS_FILE`` /
``SEGMENTER_PERSONAS_FILE``, or the built-in files); ``DefinitionsInForce`` loads them again
when that changes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from stream.catalog import file_version, load_personas, load_segments
from stream.definitions import KINDS, PublishedDefinitions, newest
from stream.settings import Settings

__all__ = ["Definition", "Definitions", "DefinitionsInForce", "file_version", "published_in_force"]


@dataclass(frozen=True, slots=True)
class Definition:
    """One rule segment or persona as its file has it."""

    segment: str  # rule:<name> or persona:<name>
    kind: str  # a rule segment's kind, or persona
    description: str
    text: str  # the entry as written (YAML)
    facts: tuple[str, ...]  # the facts a rule names, sorted (none for a persona)
    version: str
    source: str


def _read(path: Path | None, builtin: str) -> tuple[str, str]:
    if path is None:
        return resources.files("stream").joinpath(builtin).read_text(), f"(built-in) {builtin}"
    return path.read_text(), str(path)


def entries_as_written(text: str, section: str) -> dict[str, str]:
    """Each entry of a top-level mapping ``section`` as its lines in the file (dedented),
    without the blank and comment lines that follow it.

    >>> entries_as_written("s:\\n  a: {x: 1}\\n\\n  # next\\n  b:\\n    y: 2\\n", "s")
    {'a': 'a: {x: 1}', 'b': 'b:\\n  y: 2'}
    """
    root = yaml.compose(text)
    lines = text.splitlines()
    out: dict[str, str] = {}
    if not isinstance(root, yaml.MappingNode):
        return out
    for key, value in root.value:
        if key.value != section or not isinstance(value, yaml.MappingNode):
            continue
        starts = [k.start_mark.line for k, _ in value.value] + [value.end_mark.line + 1]
        for (k, _), start, end in zip(value.value, starts, starts[1:], strict=False):
            block = lines[start:end]
            while block and (not block[-1].strip() or block[-1].lstrip().startswith("#")):
                block.pop()
            out[str(k.value)] = textwrap.dedent("\n".join(block))
    return out


class Definitions:
    """The rule segments and personas in force, by segment name: the published definitions
    (``segmenter segments apply``) the workers report, else the files of the settings."""

    def __init__(
        self, settings: Settings, published: Mapping[str, PublishedDefinitions] | None = None
    ) -> None:
        published = published or {}
        self.by_segment: dict[str, Definition] = {}
        self.published_versions = {k: d.version for k, d in published.items()}
        text, source = self._text(settings.segments_file, "segments", published)
        written = entries_as_written(text, "segments")
        version = self.segments_version = file_version(text)
        self.rules = load_segments(text=text, source=source)
        for rule in self.rules:
            self.by_segment[f"rule:{rule.name}"] = Definition(
                f"rule:{rule.name}",
                rule.kind,
                rule.description,
                written.get(rule.name, ""),
                tuple(sorted(rule.fields)),
                version,
                source,
            )
        text, source = self._text(settings.personas_file, "personas", published)
        written = entries_as_written(text, "personas")
        version = self.personas_version = file_version(text)
        self.personas = load_personas(text=text, source=source).personas
        for persona in self.personas:
            self.by_segment[f"persona:{persona.name}"] = Definition(
                f"persona:{persona.name}",
                "persona",
                persona.description,
                written.get(persona.name, ""),
                (),
                version,
                source,
            )

    @staticmethod
    def _text(
        path: Path | None, kind: str, published: Mapping[str, PublishedDefinitions]
    ) -> tuple[str, str]:
        found = published.get(kind)
        if found is not None:
            return found.text, f"{found.source} (published as version {found.version})"
        return _read(path, f"{kind}.yaml")

    def get(self, segment: str) -> Definition | None:
        """``rule:<name>`` or ``persona:<name>``; a bare name is a rule's, else a persona's."""
        if ":" not in segment:
            return self.by_segment.get(f"rule:{segment}") or self.by_segment.get(
                f"persona:{segment}"
            )
        return self.by_segment.get(segment)


def published_in_force(workers: Iterable[Mapping[str, Any]]) -> dict[str, PublishedDefinitions]:
    """The newest published definitions the live workers' heartbeats report in force.

    >>> beat = {"definitions": {"segments": {"version": 2, "sha256": "s", "text": "t",
    ...                                      "source": "f.yaml"}, "personas": None}}
    >>> published_in_force([beat])["segments"].version
    2
    """
    found = []
    for worker in workers:
        reported = worker.get("definitions") or {}
        for kind in KINDS:
            d = reported.get(kind)
            if isinstance(d, dict) and "text" in d:
                found.append(
                    PublishedDefinitions(
                        kind,
                        int(d["version"]),
                        str(d["sha256"]),
                        str(d["text"]),
                        str(d["source"]),
                        0,
                    )
                )
    return newest(found)


class DefinitionsInForce:
    """``Definitions`` for the workers' heartbeats, built again only when what they report in
    force changes (a server shows what the workers score with)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current = Definitions(settings)

    def get(self, workers: Iterable[Mapping[str, Any]]) -> Definitions:
        published = published_in_force(workers)
        if {k: d.version for k, d in published.items()} != self.current.published_versions:
            self.current = Definitions(self.settings, published)
        return self.current
