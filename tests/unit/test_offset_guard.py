"""The worker's report of partitions whose offsets jump ahead (stream.app.OffsetGuard)."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

from stream.app import OffsetGuard

TP = namedtuple("TP", "topic partition")


def _events(tp: str, *offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(message=SimpleNamespace(tp=TP(tp, 0), offset=o)) for o in offsets]


def test_a_jump_is_reported_once_and_a_reread_is_not():
    guard = OffsetGuard()
    assert guard.gaps(_events("a", 5, 6, 7), generation=1) == {}
    assert guard.gaps(_events("a", 10, 11), generation=1) == {TP("a", 0): (8, 10)}
    assert guard.gaps(_events("a", 12), generation=1) == {}
    assert guard.gaps(_events("a", 9, 10, 13), generation=1) == {}  # read again: no jump


def test_a_new_assignment_starts_afresh_and_partitions_are_independent():
    guard = OffsetGuard()
    guard.gaps(_events("a", 1, 2), generation=1)
    assert guard.gaps(_events("a", 40), generation=2) == {}
    assert guard.gaps(_events("b", 7) + _events("a", 43), generation=2) == {TP("a", 0): (41, 43)}
