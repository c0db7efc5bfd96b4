"""The worker's guard against a stream that skips offsets (see stream.app.OffsetGuard)."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

from stream.app import OffsetGuard

TP = namedtuple("TP", "topic partition")


def _events(tp: str, *offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(message=SimpleNamespace(tp=TP(tp, 0), offset=o)) for o in offsets]


def _offsets(events: list) -> list[int]:  # type: ignore[type-arg]
    return [e.message.offset for e in events]


def test_a_skipped_offset_is_read_again_and_what_ran_ahead_is_dropped():
    guard = OffsetGuard()
    admitted, dropped, rewind = guard.admit(_events("a", 5, 6, 7), generation=1)
    assert _offsets(admitted) == [5, 6, 7] and not dropped and not rewind
    # 8 and 9 went missing: read again from 8; 10 and 11 wait for it.
    admitted, dropped, rewind = guard.admit(_events("a", 10, 11), generation=1)
    assert (
        not admitted
        and _offsets(dropped) == [10, 11]
        and {tp.topic: o for tp, o in rewind.items()} == {"a": 8}
    )
    admitted, dropped, rewind = guard.admit(_events("a", 12, 8, 9, 10), generation=1)
    assert _offsets(dropped) == [12] and _offsets(admitted) == [8, 9, 10] and not rewind
    # Offsets already seen come again after a seek: admitted (the profiles skip them).
    admitted, _, _ = guard.admit(_events("a", 9, 11), generation=1)
    assert _offsets(admitted) == [9, 11]


def test_a_new_assignment_starts_afresh_and_a_lasting_gap_is_accepted():
    guard = OffsetGuard(patience=0.0)
    guard.admit(_events("a", 1, 2), generation=1)
    admitted, _, rewind = guard.admit(_events("a", 40), generation=2)  # rebalanced
    assert _offsets(admitted) == [40] and not rewind
    _, dropped, rewind = guard.admit(_events("a", 45), generation=2)
    assert {tp.topic: o for tp, o in rewind.items()} == {"a": 41} and _offsets(dropped) == [45]
    admitted, dropped, rewind = guard.admit(_events("a", 45, 46), generation=2)
    assert _offsets(admitted) == [45, 46] and not dropped and not rewind  # a real gap
    # Partitions are independent.
    admitted, _, rewind = guard.admit(_events("b", 7) + _events("a", 47), generation=2)
    assert _offsets(admitted) == [7, 47] and not rewind
