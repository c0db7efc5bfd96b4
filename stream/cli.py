"""The `segmenter` command line."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stream.settings import Settings

app = typer.Typer(
    name="segmenter",
    help="Streaming real-time customer segmentation: Kafka in, segments in Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # messages stay whole lines for scripts


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        console.print(f"[red]invalid configuration[/red]:\n{exc}")
        raise typer.Exit(2) from None


@app.command()
def demo(
    seconds: Annotated[
        float | None, typer.Option(help="stop after N seconds and print a summary")
    ] = None,
    rate: Annotated[
        float, typer.Option(help="events per second the generator sends (0: as fast as it can)")
    ] = 2000,
    customers: Annotated[int, typer.Option(help="customers in the simulated population")] = 2000,
    workers: Annotated[
        int, typer.Option(min=1, max=8, help="worker processes in one consumer group")
    ] = 1,
    truth: Annotated[
        Path | None, typer.Option(help="write customer_id,persona of seen customers here")
    ] = None,
    shift_at: Annotated[
        float | None,
        typer.Option(
            help="switch the generator's persona mix after N seconds (default: 90, or half of "
            "--seconds if that is shorter; 0: never)"
        ),
    ] = None,
    shift_mix: Annotated[
        str, typer.Option(help="the mix after the switch: 'PERSONA=WEIGHT,...'")
    ] = "Bargain Ben=0.6",
    port: Annotated[int, typer.Option(help="dashboard port (a free one if taken)")] = 8080,
) -> None:
    """Run everything locally (broker, Redis, worker, generator, dashboard); no Docker."""
    from stream.tools.demo import run_demo
    from stream.tools.embedded import EmbeddedError
    from stream.tools.generator import parse_mix

    try:
        mix = parse_mix(shift_mix)
    except ValueError as exc:
        console.print(f"[red]--shift-mix[/red]: {exc}")
        raise typer.Exit(2) from None
    if shift_at is None:
        shift_at = min(90.0, seconds / 2) if seconds else 90.0
    try:
        summary = run_demo(
            seconds,
            rate,
            customers,
            workers,
            console,
            truth,
            shift_at=shift_at or None,
            shift_mix=mix,
            dashboard_port=port,
        )
    except EmbeddedError as exc:
        console.print(f"[red]cannot start the embedded stack[/red]: {exc}")
        raise typer.Exit(2) from None  # as every error the shell reports (stream.errors)
    console.print(
        f"\n[b]summary[/b] after {summary.seconds:.0f}s: sent {summary.sent:,} events, "
        f"processed {summary.processed:,} ({summary.rate:,.0f} ev/s average over the whole run, "
        f"peak {summary.peak_rate:,.0f} ev/s), {summary.customers:,} customers, "
        f"{summary.dead_letters} dead letters, model v{summary.model_version or '-'}"
    )
    for seg, n in sorted(summary.sizes.items()):
        name = "unassigned" if seg == "-" else seg
        console.print(f"  segment {name:>10}: {n:6,}  {summary.labels.get(seg, '')}")
    if summary.purity is not None:
        console.print(f"  customers in their persona's majority segment: {summary.purity:.1%}")
    from collections import Counter

    kinds = Counter(a["kind"] for a in summary.drift_alerts)
    console.print(
        f"  drift alerts: {len(summary.drift_alerts)}"
        + (f" ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})" if kinds else "")
    )
    shares = [a for a in summary.drift_alerts if a["kind"] == "segment_share"]
    rest = [a for a in summary.drift_alerts if a["kind"] != "segment_share"]
    for alert in reversed(shares[:5] + rest[:5]):
        console.print(f"    {alert['kind']:<16} {alert['message']}")


@app.command()
def forget(
    customer_id: Annotated[str, typer.Argument(help="the customer to erase")],
    wait: Annotated[
        float, typer.Option(min=0.1, help="seconds to wait for a worker to confirm")
    ] = 30.0,
) -> None:
    """Erase a customer everywhere the project keeps data, and tell downstream systems.

    Sends an erasure request to the forget-requests topic; the worker that owns the customer
    deletes their Redis record (and their share of the segment sizes), deletes their profile
    from its table (a changelog tombstone), and publishes a tombstone (key = customer, no
    value) on segment-changes. Exit 0 once a worker confirmed it (its tombstone, whether the
    customer was known or not), 1 if none did within --wait seconds: the request stays queued
    and the worker that owns the customer applies it when it runs.
    """
    from stream.kafka import TombstoneWatch, ensure_topics, make_producer, wait_for_broker
    from stream.store import SegmentClient

    settings = _settings()
    if not customer_id or len(customer_id) > settings.max_id_length:
        console.print(f"[red]customer id must be 1 to {settings.max_id_length} characters[/red]")
        raise typer.Exit(2)
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    try:
        client.ping()  # the worker erases there first: fail fast, with the address
    finally:
        client.close()
    wait_for_broker(settings)
    ensure_topics(settings)
    changes = settings.topic(settings.changes_topic)
    # Watch for the worker's tombstone from before the request, so it cannot be missed.
    with TombstoneWatch(settings, changes, customer_id.encode()) as watch:
        producer = make_producer(settings, acks="all")
        request = {"customer_id": customer_id, "requested_at": int(time.time() * 1000)}
        producer.send(
            settings.topic(settings.forget_topic), key=customer_id, value=orjson.dumps(request)
        )
        producer.flush()
        producer.close()
        confirmed = watch.wait(wait)
    if not confirmed:
        console.print(
            f"[yellow]request sent, but no worker confirmed it within {wait:g}s (no tombstone "
            f"for {customer_id!r} on {changes}); is a worker running? The request stays "
            "queued: a worker applies it when it runs[/yellow]"
        )
        raise typer.Exit(1)
    console.print(f"forgotten: {customer_id} (confirmed by a worker)")


@app.command(name="rebuild-store")
def rebuild_store(
    wait: Annotated[
        float, typer.Option(min=1, help="seconds to wait for the workers to finish")
    ] = 600.0,
) -> None:
    """Rewrite every record, size counter and membership counter in Redis from the workers'
    state (after Redis lost data, or to check that it holds what they hold).

    Raises the app's rebuild request in Redis; each worker of SEGMENTER_APP_ID sees it on its
    next store check and rewrites its partitions' records from its table, in chunks between
    live batches (events keep flowing). Prints progress from the workers' heartbeats. Exit 0
    once every partition's marker says it was rebuilt for this request, 1 if not within --wait
    seconds: the request stays, and the workers (or one that starts later) finish it.
    """
    from stream.store import SegmentClient

    settings = _settings()
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    try:
        client.ping()  # StoreUnavailable: main() prints it, exits 2
        request = client.request_rebuild(settings.app_id)
        console.print(f"rebuild request {request} sent to the workers of {settings.app_id!r}")
        started = time.monotonic()
        said = ""
        while True:
            beats = [b for b in client.workers() if isinstance(b.get("rebuild"), dict)]
            count = max((int(b["rebuild"].get("table_partitions") or 0) for b in beats), default=0)
            count = count or settings.partitions
            _, marks = client.partition_marks(settings.app_id, range(count))
            rebuilt = [p for p, m in marks.items() if m and int(m.get("request", 0)) >= request]
            if len(rebuilt) == count:
                console.print(
                    f"rebuilt: all {count} partitions, by {len(beats)} worker(s), in "
                    f"{time.monotonic() - started:.1f}s"
                )
                return
            running = [b["rebuild"] for b in beats if b["rebuild"].get("running")]
            line = (
                f"{len(rebuilt)} of {count} partitions rebuilt; "
                f"{sum(r['done'] for r in running):,} of {sum(r['total'] for r in running):,} "
                f"customers in the rebuilds under way; {len(beats)} worker(s) live"
            )
            if line != said:
                console.print(line)
                said = line
            if time.monotonic() - started > wait:
                missing = sorted(set(range(count)) - set(rebuilt))
                console.print(
                    f"[yellow]not done within {wait:g}s: partitions {missing} not rebuilt yet"
                    + ("" if beats else " (no live worker)")
                    + "; the request stays, and the workers finish it (one that starts later "
                    "too)[/yellow]"
                )
                raise typer.Exit(1)
            time.sleep(0.5)
    finally:
        client.close()


@app.command()
def triggers(
    webhook: Annotated[str, typer.Option(help="URL that receives each change as a JSON POST")],
    segment: Annotated[
        list[str] | None,
        typer.Option(help="only this segment (repeatable): rule:vip, vip, persona:Bargain Ben"),
    ] = None,
    change: Annotated[
        list[str] | None, typer.Option(help="only 'entered' or 'exited' (repeatable)")
    ] = None,
    max_attempts: Annotated[int, typer.Option(min=1, help="attempts before dead-lettering")] = 6,
    backoff: Annotated[float, typer.Option(min=0, help="first retry delay, s; doubles")] = 0.5,
    max_backoff: Annotated[float, typer.Option(min=0, help="longest retry delay, s")] = 30.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per HTTP attempt")] = 5.0,
    header: Annotated[
        list[str] | None, typer.Option(help="extra request header 'Name: value' (repeatable)")
    ] = None,
    group: Annotated[str, typer.Option(help="consumer group (its offsets are the progress)")] = (
        "segmenter-triggers"
    ),
) -> None:
    """Deliver segment changes to a webhook: retries, backoff, idempotency key, dead letters."""
    import logging

    from stream.kafka import ensure_topics, wait_for_broker
    from stream.serving.triggers import TriggerStats, WebhookSender, run_triggers

    bad = [c for c in change or [] if c not in ("entered", "exited")]
    if bad:
        console.print(f"[red]--change[/red] must be 'entered' or 'exited', not {bad[0]!r}")
        raise typer.Exit(2)
    if not webhook.startswith(("http://", "https://")):
        console.print(f"[red]--webhook[/red] must be an http(s) URL, not {webhook!r}")
        raise typer.Exit(2)
    headers = {}
    for h in header or []:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            console.print(f"[red]--header[/red] must look like 'Name: value', not {h!r}")
            raise typer.Exit(2)
        headers[name.strip()] = value.strip()
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper().replace("WARN", "WARNING").replace("CRIT", "CRITICAL"),
        format="%(asctime)s %(levelname)s %(message)s",
    )
    wait_for_broker(settings)
    ensure_topics(settings)
    sender = WebhookSender(webhook, max_attempts, backoff, max_backoff, timeout, headers)

    def progress(stats: TriggerStats) -> None:
        console.print(stats.line())

    console.print(
        f"delivering {settings.topic(settings.changes_topic)} to the webhook; Ctrl-C stops"
    )
    stats = run_triggers(settings, sender, segment or [], change or [], group, on_progress=progress)
    console.print("stopped: " + stats.line())


@app.command()
def dashboard(
    host: Annotated[str | None, typer.Option(help="address (default SEGMENTER_HTTP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default SEGMENTER_HTTP_PORT)")] = None,
) -> None:
    """Serve the live dashboard and the read API (GET /customers/{id}, GET /segments)."""
    import uvicorn

    from stream.serving.web import build_web_app
    from stream.store import SegmentClient

    settings = _settings()
    SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix).ping()
    host = host or settings.http_host
    port = settings.http_port if port is None else port
    console.print(f"dashboard on http://{host}:{port}/  (API description: /docs)")
    uvicorn.run(build_web_app(settings), host=host, port=port, log_level="warning")


@app.command()
def worker() -> None:
    """Run one worker (consume, segment, write Redis); start several for one consumer group."""
    from stream.worker.run import run_worker

    run_worker(_settings())


@app.command()
def produce(
    rate: Annotated[float, typer.Option(help="events per second (0: as fast as possible)")] = 1000,
    events: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
    seconds: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    customers: Annotated[int, typer.Option(help="customers in the simulated population")] = 1000,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same traffic)")] = 7,
    arrays: Annotated[bool, typer.Option(help="send a session's clicks as one JSON array")] = True,
    truth: Annotated[Path, typer.Option(help="CSV side file: customer_id,persona,kind")] = Path(
        "truth.csv"
    ),
    out: Annotated[
        Path | None, typer.Option(help="write JSONL here instead of sending to Kafka")
    ] = None,
) -> None:
    """Generate persona-driven traffic; the true persona of each customer goes to --truth only."""
    from stream.kafka import ensure_topics, wait_for_broker
    from stream.tools.generator import Message, TrafficGenerator
    from stream.tools.producer import generated_messages, send_messages

    if events is None and seconds is None and out is not None:
        raise typer.BadParameter("writing to --out needs --events or --seconds")
    # Event time starts a day back and runs faster than the wall clock until it catches up,
    # never past it: workers dead-letter events dated ahead of their clock.
    generator = TrafficGenerator(
        customers=customers,
        seed=seed,
        arrays=arrays,
        start_ms=int(time.time() * 1000) - 86_400_000,
        not_after=lambda: int(time.time() * 1000),
    )
    seen: set[str] = set()

    def tracked() -> Iterator[Message]:
        for message in generated_messages(generator):
            seen.add(message.key)
            yield message

    if out is not None:
        # As fast as it can (--rate paces only sending), until --events or --seconds.
        n = 0
        started = time.monotonic()
        with open(out, "wb") as fh:
            for message in tracked():
                if events is not None and n >= events:
                    break
                if seconds is not None and time.monotonic() - started >= seconds:
                    break
                fh.write(orjson.dumps(message.value) + b"\n")
                n += message.events
        generator.write_truth(truth, only=seen)
        console.print(f"wrote {n:,} events to {out}; truth for {len(seen):,} customers in {truth}")
        return
    settings = _settings()
    wait_for_broker(settings)
    ensure_topics(settings)
    with Progress(
        TextColumn("[b]producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.0f} ev/s"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("send", total=events, rate=0.0)
        stats = send_messages(
            settings,
            tracked(),
            rate=rate,
            max_events=events,
            seconds=seconds,
            on_progress=lambda s: bar.update(task, completed=s.events, rate=s.rate),
        )
    generator.write_truth(truth, only=seen)
    console.print(
        f"sent {stats.events:,} events in {stats.messages:,} messages "
        f"({stats.rate:,.0f} ev/s); truth for {len(seen):,} customers in {truth}"
    )


@app.command()
def replay(
    file: Annotated[
        Path, typer.Argument(help="JSONL (event or array per line) or CSV with a header")
    ],
    rate: Annotated[float, typer.Option(help="events per second (0: as fast as possible)")] = 0,
) -> None:
    """Load events from a file into the input topics."""
    from stream.kafka import ensure_topics, wait_for_broker
    from stream.tools.producer import read_events_file, send_messages

    settings = _settings()
    if not file.exists():
        console.print(f"[red]{file}: no such file[/red]")
        raise typer.Exit(2)
    wait_for_broker(settings)
    ensure_topics(settings)
    # A bad line raises ReplayError: main() prints it (file and line) and exits 2.
    with Progress(
        TextColumn("[b]replaying"),
        TextColumn("{task.completed:,} events"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("replay", total=None)
        stats = send_messages(
            settings,
            read_events_file(file),
            rate=rate,
            on_progress=lambda s: bar.update(task, completed=s.events),
        )
    console.print(f"replayed {stats.events:,} events in {stats.messages:,} messages from {file}")


@app.command()
def get(
    customer_id: Annotated[str, typer.Argument(help="the customer id (the message key)")],
) -> None:
    """Print one customer's current segment record as JSON (exit 1 if unknown)."""
    from stream.store import SegmentClient

    settings = _settings()
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    record = client.get(customer_id)  # StoreUnavailable: main() prints it, exits 2
    if record is None:
        console.print(f"no record for customer {customer_id!r}")
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n")


@app.command()
def export(
    out: Annotated[Path | None, typer.Option(help="write here instead of standard output")] = None,
) -> None:
    """Write every customer's record as JSONL: an audience export."""
    from stream.store import SegmentClient

    settings = _settings()
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    sink = open(out, "wb") if out else sys.stdout.buffer  # noqa: SIM115
    n = 0
    try:
        for record in client.iter_records():
            sink.write(orjson.dumps(record) + b"\n")
            n += 1
    finally:  # StoreUnavailable: main() prints it and exits 2
        if out:
            sink.close()
        else:
            sink.flush()
    console.print(f"exported {n:,} records" + (f" to {out}" if out else ""))


segments_app = typer.Typer(
    help="Every segment with its size and description; `segments apply FILE` publishes new "
    "rule segments to the workers.",
    add_completion=False,
)
personas_app = typer.Typer(
    help="`personas apply FILE` publishes a new persona catalog to the workers.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(segments_app, name="segments")
app.add_typer(personas_app, name="personas")

_APPLY_WAIT = Annotated[
    float,
    typer.Option(
        min=0,
        help="seconds to wait until every live worker has the new version in force and has "
        "re-evaluated its customers (0: do not wait)",
    ),
]


@segments_app.command("apply")
def segments_apply(
    file: Annotated[Path, typer.Argument(help="a rule segments YAML file")],
    wait: _APPLY_WAIT = 0.0,
) -> None:
    """Validate a rule segments file as a worker's start-up does, then publish it as the next
    definitions version: every worker switches between two batches and re-evaluates every
    customer it holds in the background, publishing the entries and exits."""
    _apply("segments", file, wait)


@personas_app.command("apply")
def personas_apply(
    file: Annotated[Path, typer.Argument(help="a persona catalog YAML file")],
    wait: _APPLY_WAIT = 0.0,
) -> None:
    """Validate a persona catalog as a worker's start-up does, then publish it (as
    `segments apply`)."""
    _apply("personas", file, wait)


def _apply(kind: str, file: Path, wait: float) -> None:
    from stream.definitions import publish_definitions
    from stream.serving.report import definitions_status
    from stream.store import SegmentClient

    settings = _settings()
    # A bad file raises CatalogError: main() prints it (file, entry, line) and exits 2.
    published, new = publish_definitions(settings, kind, file)
    if not new:
        console.print(
            f"unchanged: {file} is {kind} version {published.version} ({published.sha256}), "
            "published already"
        )
    else:
        console.print(
            f"published {kind} from {file} as definitions version {published.version} "
            f"({published.sha256})"
        )
    if wait <= 0:
        return
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    deadline = time.monotonic() + wait
    while True:
        status = definitions_status(client.workers())
        if status["workers"] and status["complete"] >= published.version:
            console.print(f"in force on every worker, every customer re-evaluated: {status}")
            return
        if time.monotonic() > deadline:
            console.print(f"[yellow]not complete within {wait:g}s[/yellow]: {status}")
            raise typer.Exit(1)
        time.sleep(0.2)


@segments_app.callback(invoke_without_command=True)
def segments(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Every segment with its size and description: clusters, personas and rule segments."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from stream.serving.report import segment_report
    from stream.store import SegmentClient

    settings = _settings()
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    report = segment_report(client, settings)
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    version = report["model_version"] or "-"
    table = Table(
        title=f"{report['customers']:,} customers, model v{version}, "
        + report["definitions"]["line"]
    )
    for column in ("kind", "segment", "customers", "share", "description", ""):
        table.add_column(column, justify="right" if column in ("customers", "share") else "left")
    for r in report["segments"]:
        table.add_row(
            r["kind"],
            r["segment"],
            f"{r['customers']:,}",
            f"{r['share']:.1%}",
            r["description"],
            f"[yellow]{r['note']}[/yellow]",
        )
    Console().print(table)
    Console().print(report["clusters"]["line"])


@app.command(name="eval")
def evaluate_quality(
    seed: Annotated[
        int | None,
        typer.Option(help="one draw with this traffic seed (default: the many-draw report)"),
    ] = None,
    events: Annotated[int, typer.Option(help="one draw: generated events")] = 100_000,
    customers: Annotated[int, typer.Option(help="one draw: customers in the population")] = 2000,
    seeds: Annotated[
        int | None, typer.Option(help="many draws: seeds per size (default 10, --quick 5)")
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(help="a smoke run: 5 seeds at 100k and 300k events, not the measured figures"),
    ] = False,
    size: Annotated[
        list[str] | None,
        typer.Option(help="many draws: EVENTS:CUSTOMERS, repeatable (default 100k and 1M)"),
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="draws run in this many processes")] = 2,
    real_seeds: Annotated[
        int,
        typer.Option(
            min=0,
            help="many draws: also the CDNOW log against an offline k-means, seeds 1..N "
            "(the eval extra; 0: none, the default with --quick or --size)",
        ),
    ] = 5,
    markdown: Annotated[
        Path | None, typer.Option(help="also write the report as a Markdown table here")
    ] = None,
) -> None:
    """Segmentation quality against known personas, each figure beside its target.

    Without --seed: ten seeds at 100k and at 1M events, every figure's median and worst over
    the seeds (and the real-data rows when present). Exits 1 if a target is missed."""
    settings = _settings()
    if seed is not None:
        _one_draw(settings, events, customers, seed)
        return
    from rich.table import Table

    from stream.tools import eval_runs

    sizes, default_seeds = eval_runs.QUICK if quick else eval_runs.FULL
    if size:
        try:
            sizes = tuple(eval_runs.Size.parse(s) for s in size)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--size") from None
    chosen = tuple(range(1, seeds + 1)) if seeds else default_seeds
    todo = eval_runs.draws(sizes, chosen)
    console.print(
        f"{len(todo)} draws: seeds {chosen[0]}-{chosen[-1]} at "
        + ", ".join(f"{s.name} events ({s.customers:,} customers)" for s in sizes)
        + f", {jobs} at a time"
        + (" [yellow](--quick: a smoke run)[/yellow]" if quick else "")
    )
    started = time.monotonic()
    results = eval_runs.run_draws(settings, todo, jobs, say=console.print)
    rows, ok = eval_runs.report(results)
    real_seeds = 0 if quick or size else real_seeds
    real = []
    if real_seeds:
        with console.status(f"the CDNOW log through the step, seeds 1 to {real_seeds}..."):
            real = eval_runs.real_data_rows(settings, real_seeds)
        console.print(f"CDNOW: {real_seeds} seeds done, {time.monotonic() - started:,.0f} s in all")
    rows += real
    ok = ok and all(r.met for r in real)
    table = Table(title=f"median and worst over {len(chosen)} seeds per size")
    for column in ("figure", "draws", "median", "worst", "target", ""):
        table.add_column(column, justify="right" if column in ("median", "worst") else "left")
    for r in rows:
        table.add_row(
            r.figure, r.scope, r.median, r.worst, r.target, "met" if r.met else "[red]MISSED[/red]"
        )
    console.print(table)
    console.print(f"{len(todo)} draws in {time.monotonic() - started:,.0f} s")
    if markdown is not None:
        markdown.write_text(eval_runs.markdown(rows) + "\n")
    if not ok:
        raise typer.Exit(1)


def _one_draw(settings: Settings, events: int, customers: int, seed: int) -> None:
    from stream.tools.evaluate import evaluate

    with console.status("segmenting generated traffic...") as status:
        result = evaluate(
            settings,
            None,
            events,
            customers,
            seed,
            on_progress=lambda n: status.update(f"segmenting generated traffic... {n:,} events"),
        )
    console.print(
        f"{result.events:,} events, {result.customers:,} customers, {result.warm_customers:,} "
        f"scored (3+ sessions, bots left out), {result.stable_customers:,} in the id-change "
        f"figure (switchers left out), {result.segments_used} segments used"
    )
    for figure, value, target, met in result.rows():
        verdict = "met" if met else "[red]MISSED[/red]"
        console.print(f"  {figure:<48} {value:>16}   target {target:<8} {verdict}")
    if not all(row[3] for row in result.rows()):
        raise typer.Exit(1)


@app.command(name="eval-incidents")
def evaluate_incidents(
    seeds: Annotated[str, typer.Option(help="traffic seeds, comma-separated")] = "1,2,3",
    days: Annotated[int, typer.Option(help="days of event time per stream")] = 120,
    sessions_per_day: Annotated[int, typer.Option(help="sessions a day")] = 1000,
    jobs: Annotated[
        int, typer.Option(min=1, help="streams (two a seed) run in this many processes")
    ] = 2,
    outage_share: Annotated[
        float,
        typer.Option(
            help="share of the mobile checkouts the payment outage fails (of those the "
            "--failing-checkouts baseline leaves)"
        ),
    ] = 0.5,
    failing_checkouts: Annotated[
        float,
        typer.Option(
            help="share of every checkout that fails at all times, in both streams (a "
            "baseline of abandoned checkouts; the generator's own has none)"
        ),
    ] = 0.0,
    drain_every: Annotated[
        int,
        typer.Option(
            min=0,
            help="events the step takes at a time: 0, each session as it comes (a live worker "
            "keeping up); 1000 as a worker behind its topic",
        ),
    ] = 0,
) -> None:
    """Segment-flow drift against generator incidents (payment outage, visitor spike, checkout
    loop) and on the same stream without them; median and worst over the seeds.

    Exits 1 if a target is missed."""
    from stream.tools.eval_incidents import Scenario, eval_incidents, report_rows

    try:
        picked = [int(s) for s in seeds.split(",") if s.strip()]
        incidents = tuple(
            (kind, day, length, outage_share if kind == "payment_outage" else share)
            for kind, day, length, share in Scenario.incidents
        )
        scenario = Scenario(
            days=days,
            sessions_per_day=sessions_per_day,
            incidents=incidents,
            failing_checkouts=failing_checkouts,
            drain_every=drain_every,
        )
    except ValueError as exc:
        console.print(f"[red]bad option[/red]: {exc}")
        raise typer.Exit(2) from None
    if not picked:
        console.print("[red]bad option[/red]: no seeds")
        raise typer.Exit(2)
    settings = _settings()
    with console.status("replaying...") as status:
        runs = eval_incidents(
            settings,
            picked,
            scenario,
            on_progress=lambda label, n: status.update(f"replaying ({label})... {n:,} events"),
            jobs=jobs,
        )
    console.print(
        f"{len(runs)} seeds, {scenario.days} days each ({scenario.burn_in_days} of burn-in), "
        f"{sum(r.events + r.stationary_events for r in runs):,} events through the step; the "
        f"payment outage fails {outage_share:.0%} of the mobile checkouts left after "
        f"{failing_checkouts:.0%} of every checkout fails at all times; the flow monitor: "
        + ", ".join(
            f"SEGMENTER_{name.upper()}={getattr(settings, name):g}"
            for name in type(settings).model_fields
            if name.startswith("drift_flow_")
        )
    )
    rows = report_rows(runs)
    for figure, value, target, met in rows:
        verdict = "met" if met else "[red]MISSED[/red]"
        console.print(f"  {figure:<62} {value:>30}   target {target:<12} {verdict}")
    if not all(row[3] for row in rows):
        raise typer.Exit(1)


@app.command(name="eval-real")
def evaluate_real(
    seeds: Annotated[int, typer.Option(help="runs, seeds 1..N (online trainer and k-means)")] = 5,
    customers: Annotated[
        int | None, typer.Option(help="only the first N CDNOW customers (default: all)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON, one run a line")] = False,
) -> None:
    """Real data, no labels: the CDNOW purchase log through the worker's step, its online
    clusters against an offline k-means on the same final vectors (needs the `eval` extra).
    Prints each figure's median and worst over the seeds; exits 1 if a worst misses."""
    from stream.tools.eval_real import run_real, summary

    settings = _settings()
    runs = []
    for seed in range(1, seeds + 1):
        with console.status(f"replaying CDNOW, seed {seed}...") as status:

            def progress(n: int, seed: int = seed, status: Any = status) -> None:
                status.update(f"replaying CDNOW, seed {seed}: {n:,} purchases")

            result = run_real(settings, seed=seed, customers=customers, on_progress=progress)
        runs.append(result)
        if as_json:
            sys.stdout.write(orjson.dumps(result.to_dict()).decode() + "\n")
    if not as_json:
        first = runs[0]
        console.print(
            f"{first.purchases:,} purchases, {first.customers:,} customers, k = {first.k} "
            f"({first.k_mode}), {len(runs)} seeds: median / worst"
        )
    met = True
    for figure, median, worst, target, ok in summary(runs):
        met = met and ok
        if not as_json:
            verdict = "met" if ok else "[red]MISSED[/red]"
            console.print(f"  {figure:<48} {median:>8} / {worst:<8} target {target:<7} {verdict}")
    if not met:
        raise typer.Exit(1)


@app.command()
def status() -> None:
    """Show counters, workers, the model version and segment sizes."""
    from stream.store import SegmentClient

    settings = _settings()
    client = SegmentClient(settings.redis_url.get_secret_value(), settings.redis_prefix)
    model = client.model()
    sys.stdout.write(
        orjson.dumps(
            {
                "stats": client.stats(),
                "sizes": client.sizes(),
                "model_version": model["version"] if model else None,
                "workers": client.workers(),
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
        + "\n"
    )


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="the report to write (a PNG chart goes beside it)")] = (
        Path("docs/benchmarks.md")
    ),
    quick: Annotated[
        bool, typer.Option(help="small volumes: checks every phase runs, numbers not meaningful")
    ] = False,
    core: Annotated[
        bool,
        typer.Option(
            help="only the pure step alone, in-process (no broker, no Redis; seconds): "
            "print it, write no report"
        ),
    ] = False,
    only: Annotated[
        str | None,
        typer.Option(
            help="only the phases whose name holds this text, e.g. 'million' (the report then "
            "holds only their figures: write it elsewhere than docs/benchmarks.md)"
        ),
    ] = None,
) -> None:
    """Measure the step alone in-process, throughput, freshness, read latency, memory, recovery,
    scale-out and a million customers, each beside its baseline or target in the same run, on a
    broker and Redis of its own; write the report. Exit 0 whatever the numbers."""
    from stream.tools.bench import BenchConfig, run_bench

    config = BenchConfig.quick() if quick else BenchConfig()
    if core:
        from stream.tools.bench_core import print_core, run_core

        result = run_core(
            config.core, _settings(), say=lambda text: console.print(f"[dim]{text}[/dim]")
        )
        print_core(result, console)
        return
    command = (
        "segmenter bench"
        + (" --quick" if quick else "")
        + (f" --only '{only}'" if only else "")
        + f" --out {out}"
    )
    run_bench(config, out, console, command=command, only=only)


@app.command()
def soak(
    minutes: Annotated[float, typer.Option(min=1.0, help="length of the whole run")] = 10.0,
    seed: Annotated[int, typer.Option(help="seeds the traffic and the fault schedule")] = 1,
    out: Annotated[
        Path | None, typer.Option(help="write the run into this file's soak section")
    ] = None,
) -> None:
    """Chaos soak: steady traffic (the CDNOW log, clicks, 5% garbage) while workers are
    SIGKILLed, Redis restarted and the broker cut off; then check that nothing was lost.
    Exit 0 only if nothing was."""
    from stream.tools.soak import SoakConfig, run_soak

    result = run_soak(SoakConfig(minutes=minutes, seed=seed), console.print, out)
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def topics() -> None:
    """Create the project's topics if missing (workers do this too)."""
    from stream.kafka import ensure_topics, wait_for_broker
    from stream.topology import topology

    settings = _settings()
    wait_for_broker(settings)
    ensure_topics(settings)
    console.print("topics ready: " + ", ".join(topology(settings).names))


def main() -> None:
    from stream.errors import SegmenterError

    try:
        app()
    except SegmenterError as exc:
        # Kafka or Redis not there, a bad segment or persona file, a bad replay file, a local
        # broker that would not start: one line that says what and where, and exit code 2.
        console.print(f"[red]error[/red]: {exc}")
        sys.exit(2)
