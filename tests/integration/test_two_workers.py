"""Two workers in one consumer group score with the one global model: same behavior, same id."""

from __future__ import annotations

from collections import Counter

import pytest

from stream.tools.generator import TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, wait_until

pytestmark = pytest.mark.integration


def test_two_workers_split_the_partitions_and_agree_on_segment_ids(stack, tmp_path):
    settings = make_settings(stack, partitions=4)
    workers = Workers(settings, tmp_path)
    try:
        workers.start(2)
        workers.wait_joined(2)
        beats = workers.client.workers()
        assert len(beats) == 2 and all(b["partitions"] for b in beats)

        generator = TrafficGenerator(customers=400, seed=5, session_gap_ms=60_000)
        messages = [
            m for _ in range(8) for cid in generator.customer_ids for m in generator.session(cid)
        ]
        stats = send_messages(settings, iter(messages))

        def processed() -> bool:
            workers.check_alive()
            return workers.client.stats().get("events", 0) >= stats.events

        wait_until(processed, 120, f"{stats.events} events to be processed")
        wait_until(
            lambda: all(r["segment"] is not None for r in workers.client.iter_records()),
            30,
            "every customer to have a segment",
        )
        records = list(workers.client.iter_records())
        assert len(records) == 400

        by_worker: dict[str, dict[str, Counter[int]]] = {}
        for r in records:
            persona = generator.truth[r["customer_id"]].name
            by_worker.setdefault(r["worker_id"], {}).setdefault(persona, Counter())[
                r["segment"]
            ] += 1
        assert len(by_worker) == 2, f"one worker did everything: {list(by_worker)}"

        # The segment that holds most of each persona, over both workers together.
        overall: dict[str, Counter[int]] = {}
        for personas in by_worker.values():
            for persona, counts in personas.items():
                overall.setdefault(persona, Counter()).update(counts)
        majority = {p: c.most_common(1)[0][0] for p, c in overall.items()}
        assert len(set(majority.values())) >= 3, majority

        # Each worker on its own puts a persona's customers in the same segments as the other
        # does: per persona, the total variation distance between the two workers' shares of
        # segments is small. Workers with models of their own would number clusters
        # independently and agree only by chance; so would ids renumbered, which the same
        # distance tells apart (a persona split between two clusters on the overlapping
        # generator, as often happens, splits alike on both workers). Before, this asserted
        # agreement with the overall majority, a clustering-quality figure: 0.59 to 0.88
        # in runs, which failed a busy CI run.
        (w0, a), (w1, b) = sorted(by_worker.items())
        shared = [p for p in a if p in b and a[p].total() >= 10 and b[p].total() >= 10]
        assert len(shared) >= 3, (a, b)
        ids = sorted({s for c in overall.values() for s in c})

        def distance(mapping: dict[int, int]) -> float:
            total = 0.0
            for p in shared:
                x = {s: n / a[p].total() for s, n in a[p].items()}
                y = Counter({mapping[s]: n / b[p].total() for s, n in b[p].items()})
                total += 0.5 * sum(abs(x.get(s, 0.0) - y.get(s, 0.0)) for s in set(x) | set(y))
            return total / len(shared)

        same = distance({s: s for s in ids})
        shifted = distance({s: ids[(i + 1) % len(ids)] for i, s in enumerate(ids)})
        print("segment shares per persona, distance between workers", round(same, 3), shifted)
        assert same <= 0.3 and same < shifted, (same, shifted, a, b)
        versions = {r["model_version"] for r in records}
        assert all(v is not None for v in versions)
    except BaseException:
        for worker_id in workers.procs:
            print(f"--- {worker_id}\n{workers.log(worker_id)}")
        raise
    finally:
        workers.stop()
