"""The root of every error the shell raises on purpose; each concern has its own small leaf.

A caller that wants "anything the segmenter reports by design" catches ``SegmenterError``; the
CLI turns one into a single line and exit code 2. Errors of the pure core (``models``) stay
``ValueError`` subclasses there (``DecodeError``, ``RuleError``): the core knows no shell.
"""

from __future__ import annotations

__all__ = ["SegmenterError"]


class SegmenterError(Exception):
    """Something the segmenter reports to its user: the message says what and where."""
