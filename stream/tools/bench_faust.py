"""The bare Faust baseline of `segmenter bench`: an agent that does nothing with its messages.

Run as ``python -m stream.tools.bench_faust worker -l warn`` with the worker's SEGMENTER_* settings
(the same broker, security and consumer settings as a real worker) and:

- ``BENCH_TARGET``: messages to consume before writing the result and stopping;
- ``BENCH_RESULT``: where to write ``{"first": t, "last": t, "messages": n}`` (time.time());
- ``BENCH_MODE``: ``each`` (``async for`` message by message) or ``take`` (``noack_take`` batches
  of the worker's batch size, acknowledged afterwards, as the real worker does).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import faust
import orjson

from stream.kafka import faust_credentials
from stream.settings import Settings

settings = Settings()
target = int(os.environ.get("BENCH_TARGET", "0"))
result = Path(os.environ.get("BENCH_RESULT", "bench-faust.json"))
mode = os.environ.get("BENCH_MODE", "each")

# Faust makes the directory when the worker starts (not on import: a doctest run imports this
# module), and it is removed once measured.
datadir = Path(tempfile.gettempdir()) / f"segmenter-bench-{uuid.uuid4().hex[:12]}"
app = faust.App(
    f"{settings.app_id}-bare-{mode}",  # a group of its own: each run reads the topic from 0
    broker=settings.kafka_url,
    broker_credentials=faust_credentials(settings),
    store="memory://",
    datadir=datadir,
    autodiscover=False,
    topic_partitions=settings.partitions,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval,
    web_enabled=False,
    worker_redirect_stdouts=False,
)
source = app.topic(*settings.input_topics, value_serializer="raw", key_serializer="raw")
state = {"n": 0, "first": 0.0}


def _seen(n: int) -> None:
    if not state["n"]:
        state["first"] = time.time()
    state["n"] += n
    if state["n"] >= target:
        result.write_bytes(
            orjson.dumps({"first": state["first"], "last": time.time(), "messages": state["n"]})
        )
        shutil.rmtree(datadir, ignore_errors=True)
        os._exit(0)  # measured; nothing else to clean up in a throwaway group


@app.agent(source, name="bare")
async def bare(stream: faust.StreamT[bytes]) -> None:
    if mode == "take":
        batches = stream.noack_take(settings.batch_size, within=settings.batch_within)  # type: ignore[attr-defined]
        async for batch in batches:
            _seen(len(batch))
            for event in batch:
                await stream.ack(event)
    else:
        async for _ in stream:
            _seen(1)


if __name__ == "__main__":
    app.main()
