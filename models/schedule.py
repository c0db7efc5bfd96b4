"""When each customer is next due for a time-driven evaluation, in event time: the earliest of
their lifecycle stage's next change and every rule's next threshold crossing on a fact that
moves with time (``models.segments.SegmentCatalog.next_change``)."""

from __future__ import annotations

import heapq

__all__ = ["DueSchedule"]


class DueSchedule:
    """A min-heap of (due time, key) where only each key's latest due time counts.

    >>> s = DueSchedule()
    >>> s.set("a", 50); s.set("b", 20); s.set("a", 10)
    >>> s.pop_due(15), s.pop_due(30), s.pop_due(100), len(s)
    (['a'], ['b'], [], 0)
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}

    def due_of(self, key: str) -> int | None:
        """The key's due time (None: none scheduled)."""
        return self._due.get(key)

    def set(self, key: str, due: int | None) -> None:
        if due is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))

    def has_due(self, watermark: int) -> bool:
        """Whether a key is due at or before ``watermark``.

        >>> s = DueSchedule(); s.set("a", 10); s.set("a", 50)
        >>> s.has_due(20), s.has_due(50)
        (False, True)
        """
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # a stale entry of a rescheduled or removed key
        return bool(heap) and heap[0][0] <= watermark

    def pop_due(self, watermark: int, limit: int | None = None) -> list[str]:
        """Keys whose due time is at or before ``watermark``, earliest first, at most
        ``limit`` of them; each leaves.

        >>> s = DueSchedule(); s.set("a", 1); s.set("b", 2); s.set("c", 3)
        >>> s.pop_due(10, limit=2), s.pop_due(10, limit=2)
        (['a', 'b'], ['c'])
        """
        out: list[str] = []
        while self._heap and self._heap[0][0] <= watermark:
            if limit is not None and len(out) >= limit:
                break
            due, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:  # stale entries of rescheduled keys are skipped
                del self._due[key]
                out.append(key)
        if len(self._heap) > 4 * len(self._due) + 1024:  # drop stale entries now and then
            self._heap = [(d, k) for k, d in self._due.items()]
            heapq.heapify(self._heap)
        return out

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def __len__(self) -> int:
        return len(self._due)
