"""`segmenter eval` runs the worker's step: for the same input and model, its replay writes the
same records as a worker on the real broker and Redis.

The input is generator traffic over three topics, purchases with their visit's ``session_id``:
the worker's interleaving of the topics is the broker's, the replay's its own, and neither the
visits, the features counted from them nor the current visit's facts depend on it (a purchase
read before its visit's clicks waits for them). Hysteresis is 0 so a customer's
cluster and persona depend on their final behavior, not on where batches happened to end.
Customers are all in one time zone here: with several, a customer's session often ends (comes
due) while other customers' events move the watermark, and the step re-evaluates it at the
watermark of the batch it lands in, so ``evaluated_at`` and the facts as of it (days since the
last purchase, decayed values) depend on where batches end, in the worker as in the replay.
The same holds, rarely, in one time zone: a customer's last event (a purchase) applied while
the other topics' events have already moved the watermark past the end of its session has no
session end to come due; applied before, it has, and is evaluated again at a later watermark
(seen in 2 of 10 runs on a busy machine: one customer's record written at the traffic's end by the
worker, at its last event by the replay; 4 of 120 customers in a CI rehearsal beside a busy
loop). Such a customer's record may differ in those evaluation-time fields alone (``_AS_OF``),
for at most a tenth of the customers (a systematic difference in them, say every customer
evaluated at another time, still fails); everything else must be the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.store import RedisSegmentStore
from stream.tools.evaluate import Replay
from stream.tools.generator import Message, Realism, TrafficGenerator
from stream.tools.producer import send_messages

from .conftest import Workers, make_settings, wait_until

pytestmark = pytest.mark.integration

#: Fields that name the process or the wall clock, not the customer.
_LOCAL = {"updated_at", "worker_id"}
#: Fields of a record that are as of its evaluation time (``evaluated_at``), by section.
_AS_OF = {
    "": {"evaluated_at"},
    "facts": {
        "days_since_last_purchase",
        "days_since_first_seen",
        "days_since_last_seen",
        "customer_value_estimate",
        "frequency_decayed",
        "monetary_decayed",
    },
    "features": {"recency_days", "frequency_decayed", "monetary_decayed"},
}


def _timeless(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the fields that are as of its evaluation time."""
    out = {k: v for k, v in record.items() if k not in _LOCAL and k not in _AS_OF[""]}
    for section in ("facts", "features"):
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in _AS_OF[section]}
    return out


def _input() -> list[Message]:
    generator = TrafficGenerator(
        customers=120, seed=5, session_gap_ms=60_000, realism=Realism(zones=False)
    )
    messages = []
    for _ in range(6):
        for customer_id in generator.customer_ids:
            messages.extend(generator.session(customer_id))
    return messages


def test_eval_replay_and_the_worker_write_the_same_records(stack, tmp_path):  # type: ignore[no-untyped-def]
    settings = make_settings(
        stack, hysteresis=0.0, snapshot_interval=3600.0, model_refresh_interval=0.5
    )
    messages = _input()

    # A model learned by the replay's own trainer, then fixed for both sides.
    learner = Replay(settings.model_copy(update={"warmup_samples": 60}))
    for m in messages:
        learner.send(m)
    learner.drain()
    assert learner.trainer.ready, "the input is too small for a model"
    model = learner.trainer.snapshot()

    async def publish() -> None:
        store = RedisSegmentStore(settings.redis_url.get_secret_value(), settings.redis_prefix)
        await store.publish_model(model.to_dict())
        await store.close()

    asyncio.run(publish())

    replay = Replay(settings, model=model)
    for m in messages:
        replay.send(m)
    replay.drain()

    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        # The worker scores with the model from its first batch on, as the replay does.
        wait_until(
            lambda: any(w.get("model_version") == model.version for w in workers.client.workers()),
            90,
            "the worker to load the model",
        )
        stats = send_messages(settings, iter(messages))
        wait_until(
            lambda: workers.client.stats().get("events", 0) >= stats.events,
            120,
            f"{stats.events} events",
        )
        stored = {r["customer_id"]: r for r in workers.client.iter_records()}
    except BaseException:
        print(workers.log("w0"))
        raise
    finally:
        workers.stop()

    expected = {c: dict(w.record) for c, w in replay.records.items()}
    assert set(stored) == set(expected)
    assert len(expected) == 120
    differ = [
        c
        for c in expected
        if {k: v for k, v in expected[c].items() if k not in _LOCAL}
        != {k: v for k, v in stored[c].items() if k not in _LOCAL}
    ]
    fields = {
        c: {
            k: (expected[c].get(k), stored[c].get(k))
            for k in set(expected[c]) | set(stored[c])
            if k not in _LOCAL and expected[c].get(k) != stored[c].get(k)
        }
        for c in differ[:3]
    }
    # Only in the fields as of the evaluation time, and rarely (see the module's docstring).
    assert all(_timeless(expected[c]) == _timeless(stored[c]) for c in differ), fields
    assert len(differ) <= len(expected) // 10, fields

    assert len({r["segment"] for r in stored.values()}) > 1  # the model did separate them
