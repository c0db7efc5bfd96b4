"""The segment definitions this server loaded, as written, with a version: what the customer and
segment views show beside a rule segment or a persona.

The version of a definition is the SHA-256 (first 12 hex digits) of the file it came from
(``SEGMENTER_SEGMENTS_FILE`` / ``SEGMENTER_PERSONAS_FILE``, or the built-in files), so two
processes that show the same version loaded the same definitions. The files are read once,
when the web app is built (definitions do not change while a deployment runs).
"""

from __future__ import annotations

import hashlib
import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from stream.catalog import load_personas, load_segments
from stream.settings import Settings

__all__ = ["Definition", "Definitions", "file_version"]


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


def file_version(text: str) -> str:
    """The version of a definitions file: its SHA-256, first 12 hex digits.

    >>> file_version("segments: {}\\n")
    'sha256:4f4e5ae17ac2'
    """
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


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
    """The rule segments and personas of a deployment's settings, by segment name."""

    def __init__(self, settings: Settings) -> None:
        self.by_segment: dict[str, Definition] = {}
        text, source = _read(settings.segments_file, "segments.yaml")
        written = entries_as_written(text, "segments")
        version = self.segments_version = file_version(text)
        for rule in load_segments(settings.segments_file):
            self.by_segment[f"rule:{rule.name}"] = Definition(
                f"rule:{rule.name}",
                rule.kind,
                rule.description,
                written.get(rule.name, ""),
                tuple(sorted(rule.fields)),
                version,
                source,
            )
        text, source = _read(settings.personas_file, "personas.yaml")
        written = entries_as_written(text, "personas")
        version = self.personas_version = file_version(text)
        for persona in load_personas(settings.personas_file).personas:
            self.by_segment[f"persona:{persona.name}"] = Definition(
                f"persona:{persona.name}",
                "persona",
                persona.description,
                written.get(persona.name, ""),
                (),
                version,
                source,
            )

    def get(self, segment: str) -> Definition | None:
        """``rule:<name>`` or ``persona:<name>``; a bare name is a rule's, else a persona's."""
        if ":" not in segment:
            return self.by_segment.get(f"rule:{segment}") or self.by_segment.get(
                f"persona:{segment}"
            )
        return self.by_segment.get(segment)
