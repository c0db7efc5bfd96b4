"""How the dictionary that records are compressed with was made (``z2:`` records,
``stream/store/record-v2.zdict``), and what it buys.

``python -m stream.tools.record_dict train OUT`` runs generator traffic through the worker's
step (``segmenter eval``'s ``Replay``, seeds 101 to 103, 30,000 events of 2,000 customers
each, default realism) and trains a zstd dictionary of 4 KB on a sample of the records it
writes, as the worker's encoder sees them (JSON, before compression). The dictionary holds
what every record repeats: the field names, the rule and persona names of the shipped
catalogs, typical numbers. A shop's own category names and catalogs are not in it, so its
records compress a little less (``compare`` on its own records says how much).

``python -m stream.tools.record_dict compare`` compresses held-out records (seeds 1 and 2,
not trained on) both ways, ``z1:`` (deflate with a preset dictionary) and ``z2:``, and prints
the median bytes and the best-of-three µs per record of each.

The shipped dictionary is frozen: a record written with it must stay readable, so a new one
needs a new prefix (``z3:``) and the reader keeps the old ones.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from stream.settings import Settings
from stream.tools.evaluate import Replay
from stream.tools.generator import TrafficGenerator

__all__ = ["main", "records", "train"]

DICT_SIZE = 4096
TRAIN_SEEDS = (101, 102, 103)
HELD_OUT_SEEDS = (1, 2)


def records(seed: int, events: int = 30_000, customers: int = 2_000) -> list[bytes]:
    """The JSON of every record the step writes over ``events`` generated events (the last
    write of each customer, as Redis holds it)."""
    replay = Replay(Settings(warmup_samples=200))
    replay.feed(TrafficGenerator(customers=customers, seed=seed, session_gap_ms=60_000), events)
    return [orjson.dumps(dict(w.record)) for w in replay.records.values()]


def train(samples_per_seed: int = 1_000) -> bytes:
    """A zstd dictionary of :data:`DICT_SIZE` bytes trained on the records of
    :data:`TRAIN_SEEDS` (``samples_per_seed`` of each, drawn with a fixed seed)."""
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # before Python 3.14
        from backports import zstd

    samples: list[bytes] = []
    for seed in TRAIN_SEEDS:
        written = records(seed)
        samples += random.Random(seed).sample(written, min(samples_per_seed, len(written)))
    return bytes(zstd.train_dict(samples, DICT_SIZE).dict_content)


def _best_us(encode: Callable[[bytes], bytes], bodies: Sequence[bytes]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for body in bodies:
            encode(body)
        best = min(best, (time.perf_counter() - started) / len(bodies) * 1e6)
    return best


def compare(say: Callable[[str], None] = print) -> None:
    """Held-out records compressed both ways: median bytes and µs per record."""
    from stream.store import codec

    bodies = [body for seed in HELD_OUT_SEEDS for body in records(seed)]
    say(
        f"{len(bodies):,} records of seeds {HELD_OUT_SEEDS}, JSON median "
        f"{statistics.median(map(len, bodies)):,.0f} B"
    )
    for name, encode in (("z1 (deflate)", codec.deflate_v1), ("z2 (zstd)", codec.zstd_v2)):
        size = statistics.median(len(encode(b)) for b in bodies)
        say(f"  {name}: median {size:,.0f} B, {_best_us(encode, bodies):.1f} µs per record")


def main(argv: Sequence[str] | None = None, say: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream.tools.record_dict")
    sub = parser.add_subparsers(dest="command", required=True)
    trainer = sub.add_parser("train", help="train a dictionary and write it to OUT")
    trainer.add_argument("out", type=Path)
    sub.add_parser("compare", help="held-out records compressed both ways")
    args = parser.parse_args(argv)
    if args.command == "train":
        content = train()
        args.out.write_bytes(content)
        say(f"wrote {len(content):,} B to {args.out}")
    else:
        compare(say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
