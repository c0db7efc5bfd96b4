"""The dashboard and the read API: one FastAPI app over the same Redis records the worker writes.

``segmenter dashboard`` serves it (127.0.0.1:8080 by default). Endpoints:

- ``GET /``: the live dashboard (HTML; its data comes from ``/api/overview``);
- ``GET /customers/{customer_id}``: one customer's segment record, as ``segmenter get``;
- ``GET /segments``: every segment with size, share and description, as ``segmenter segments``;
- ``GET /api/overview``: sizes over time, drift alerts, workers, throughput counters;
- ``GET /api/customers/{customer_id}``: the customer view: every segment with why (the
  persona's reasons, the facts a rule reads), recent changes, merged ids;
- ``GET /api/segments/{segment}``: the segment view: size, entries and exits per event-time
  bucket, definition and version, a few example members;
- ``GET /healthz``; ``GET /openapi.json`` and ``GET /docs`` describe all of them.

With ``SEGMENTER_API_TOKEN`` set, every data endpoint wants ``Authorization: Bearer <token>``
(the dashboard page takes it from its address: ``http://host:port/#token=<token>``).
"""

from __future__ import annotations

import secrets
import threading
import time
from importlib.resources import files
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from stream.serving.definitions import DefinitionsInForce
from stream.serving.lookup import (
    CustomerView,
    SegmentView,
    customer_view,
    resolve_segment,
    segment_view,
)
from stream.serving.report import segment_report
from stream.settings import Settings
from stream.store import SegmentClient, StoreUnavailable
from stream.store.views import customer_with_changes, segment_examples

__all__ = ["DashboardServer", "build_web_app"]


class SegmentRow(BaseModel):
    kind: str = Field(description="cluster, persona, or the rule segment's kind")
    segment: str = Field(description="cluster:<id>, a persona name or a rule segment name")
    customers: int
    share: float = Field(description="share of all customers with a record")
    description: str
    note: str = ""


class SegmentReport(BaseModel):
    customers: int = Field(description="customers with a record")
    model_version: int | None
    definitions: dict[str, Any] = Field(
        default_factory=dict,
        description="the definitions version in force on the live workers and the progress of "
        "their re-evaluation of every customer after new definitions (`segmenter segments "
        "apply`)",
    )
    segments: list[SegmentRow]


class Overview(BaseModel):
    report: SegmentReport
    history: list[dict[str, Any]] = Field(
        description="size snapshots per event-time bucket, oldest first"
    )
    drift: list[dict[str, Any]] = Field(description="newest drift alerts first")
    workers: list[dict[str, Any]] = Field(description="live workers' heartbeats")
    stats: dict[str, int] = Field(description="counters summed over all workers")


def build_web_app(settings: Settings, client: SegmentClient | None = None) -> FastAPI:
    """The ASGI app; ``client`` defaults to one on ``settings.redis_url``."""
    reader = client or SegmentClient(
        settings.redis_url.get_secret_value(), settings.redis_prefix, timeout=2.0
    )
    token = settings.api_token.get_secret_value() if settings.api_token else None
    definitions = DefinitionsInForce(settings)

    def authorized(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), token):
            raise HTTPException(
                401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    guarded = [Depends(authorized)]
    app = FastAPI(
        title="Segmenter read API",
        version="1",
        description="Customers' current segments and segment sizes, read from Redis.",
    )

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(StoreUnavailable)
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"Redis is not available: {exc}"}, status_code=503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return files("stream.serving").joinpath("static/dashboard.html").read_text()

    @app.get("/healthz", summary="Liveness and Redis reachability")
    def healthz() -> dict[str, str]:
        reader.client.ping()
        return {"status": "ok"}

    @app.get(
        "/customers/{customer_id}",
        dependencies=guarded,
        summary="One customer's current segments",
        responses={404: {"description": "no record for this customer"}},
    )
    def customer(customer_id: str) -> dict[str, Any]:
        checked(customer_id)
        record = reader.get(customer_id)
        if record is None:
            raise HTTPException(404, f"no record for customer {customer_id!r}")
        return record

    def checked(customer_id: str) -> None:
        if len(customer_id) > settings.max_id_length:
            raise HTTPException(422, f"customer_id longer than {settings.max_id_length}")

    @app.get(
        "/api/customers/{customer_id}",
        dependencies=guarded,
        summary="Why a customer is in each of their segments",
        description="The record, every segment with the persona's reasons and the facts a "
        "rule reads (the record's value, or `stored: false`), the rule or persona as written "
        "with its version, the customer's recent segment changes (newest first) and the ids "
        "merged into them.",
        responses={404: {"description": "no record for this customer"}},
    )
    def customer_lookup(customer_id: str) -> CustomerView:
        checked(customer_id)
        record, changes = customer_with_changes(reader, customer_id, settings.customer_changes_kept)
        if record is None:
            raise HTTPException(404, f"no record for customer {customer_id!r}")
        return customer_view(customer_id, record, changes, definitions.get(reader.workers()))

    @app.get(
        "/api/segments/{segment:path}",
        dependencies=guarded,
        summary="What a segment is doing",
        description="`cluster:<id>`, `rule:<name>` or `persona:<name>` (a bare name: a rule, "
        "else a persona). Its size, share, size with entries and exits per event-time bucket "
        "(from the size snapshots), its definition as written and version, and a few example "
        "members.",
        responses={404: {"description": "no such segment"}},
    )
    def segment_lookup(
        segment: str, history: Annotated[int, "event-time buckets"] = 200
    ) -> SegmentView:
        members = reader.members()
        defs = definitions.get(reader.workers())
        resolved = resolve_segment(segment, defs, reader.model(), members)
        if resolved is None:
            raise HTTPException(
                404,
                f"no segment {segment!r} (use cluster:<id>, rule:<name> or persona:<name>; "
                "GET /segments lists them)",
            )
        return segment_view(
            resolved,
            members,
            reader.customers(),
            reader.history(max(1, min(history, settings.stats_history))),
            segment_examples(reader, resolved.segment),
        )

    @app.get("/segments", dependencies=guarded, summary="Every segment with size and share")
    def segments() -> SegmentReport:
        return SegmentReport.model_validate(segment_report(reader, settings, definitions))

    @app.get("/api/overview", dependencies=guarded, summary="Everything the dashboard shows")
    def overview(
        history: Annotated[int, "size snapshots"] = 200, drift: Annotated[int, "alerts"] = 50
    ) -> Overview:
        workers = reader.workers()
        return Overview(
            report=SegmentReport.model_validate(segment_report(reader, settings, definitions)),
            history=[
                {k: v for k, v in snap.items() if k not in ("entered_total", "exited_total")}
                for snap in reader.history(max(1, min(history, settings.stats_history)))
            ],
            drift=reader.drift(max(1, min(drift, settings.drift_history))),
            workers=workers,
            stats=reader.stats(),
        )

    return app


class DashboardServer:
    """The web app on uvicorn in a background thread (the demo runs it beside its live view)."""

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        import uvicorn

        self.host, self.port = host, port
        config = uvicorn.Config(
            build_web_app(settings), host=host, port=port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
