"""The benchmark's pure helpers: traffic shaping, percentiles, the profile summary, the report."""

from __future__ import annotations

import ast
import importlib
import io
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from rich.console import Console

import models.features
import models.segments
import stream.tools
from stream.build import core_compiled
from stream.tools.bench import BenchConfig, phases
from stream.tools.bench_context import BenchContext
from stream.tools.bench_profile import (
    LIBRARIES,
    STAGES,
    Mark,
    short_filename,
    stage_of,
    summarize_profile,
    summarize_stages,
)
from stream.tools.bench_report import Figure, Report, write_report
from stream.tools.bench_traffic import as_arrays, as_singles, click_streams, percentile
from stream.tools.embedded import EmbeddedStack

#: These read the pure core's frames, as py-spy shows them; the compiled core has none (its
#: time counts for its callers': ``Mark.of``).
pure_frames = pytest.mark.skipif(core_compiled(), reason="the compiled core has no Python frames")


def test_arrays_hold_exactly_ten_events_of_one_customer_in_order():
    per = click_streams(customers=50, events=3_000, seed=3)
    arrays = as_arrays(per, 2_000)
    assert len(arrays) == 200
    for message in arrays:
        assert isinstance(message.value, list) and len(message.value) == 10
        assert {e["customer_id"] for e in message.value} == {message.key}
    singles = as_singles(per, 500)
    assert len(singles) == 500 and all(isinstance(m.value, dict) for m in singles)
    assert len({m.key for m in singles}) > 10  # customers interleaved, not one after another


def test_percentile_and_profile_summary():
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile(list(range(1, 101)), 0.99) == 100
    raw = "main;loop;decode (a.py:1) 30\nmain;loop;score (b.py:2) 60\nmain;idle (c.py:3) 10\n"
    summary = summarize_profile(raw)
    assert summary[0] == ("score (b.py:2)", 0.6) and len(summary) == 3


@pure_frames
def test_stage_summary_counts_each_sample_for_the_innermost_stage_or_its_library():
    raw = "\n".join(
        [
            # our batch handler -> scoring -> a persona match: scoring, not the handler
            "t;Segmenter._handle (stream/worker/app.py:250);assign (models/segments.py:220);"
            "PersonaCatalog.match (models/personas.py:99) 40",
            # our handler's own line (orjson.loads of the state): the rest of the agent
            "t;run (asyncio/base_events.py:1);Segmenter._handle (stream/worker/app.py:249) 20",
            # the aiokafka thread unpacking records, nothing of ours on the stack
            "t;run (threading.py:1);PartitionRecords._unpack_records "
            "(aiokafka/consumer/fetcher.py:216) 30",
            "t;run_forever (asyncio/base_events.py:1);EpollSelector.select (selectors.py:468) 10",
            # the step's own loop, called by the agent: the step's stage, not the agent's
            "t;Segmenting._apply_batch (stream/worker/segmenting.py:200);"
            "SegmentStep.run (models/step.py:350) 25",
            # the profile's state encoded by the effects: a JSON stage
            "t;Effects.apply (stream/worker/effects.py:100);"
            "encode_profile (stream/worker/effects.py:38) 5",
        ]
    )
    stages = dict(summarize_stages(raw))
    assert stages == {
        "scoring: clusters, personas, rules, facts": 40 / 130,
        "our batching and the rest of the agent": 20 / 130,
        "aiokafka and kafka-python: fetch, unpack, send": 30 / 130,
        "asyncio event loop and sockets": 10 / 130,
        "the step's own work: due times, changes, samples, live profiles (models.step)": 25 / 130,
        "profile state to and from JSON": 5 / 130,
    }


@pure_frames
def test_every_stage_names_code_that_exists_where_py_spy_says_it_is():
    """A stage is named by objects, so naming something gone fails at import; here each mark's
    file must be a real source file, and a frame py-spy would print for it must land in its
    stage (or, for code also claimed by an earlier stage, in that one)."""
    names = [name for name, _ in STAGES + LIBRARIES]
    assert len(names) == len(set(names))
    roots = [Path(p) for p in sys.path if p]
    for table in (STAGES, LIBRARIES):
        for stage, marks in table:
            assert marks, stage
            for mark in marks:
                path = mark.file.rstrip("/")
                assert any((root / path).exists() for root in roots), (stage, mark)
                if mark.qualname and not mark.qualname.endswith("."):
                    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
                    obj: object = module
                    for part in mark.qualname.split("."):
                        obj = getattr(obj, part)
                    assert callable(obj), (stage, mark)
    earlier: list[str] = []
    for stage, marks in STAGES:
        for mark in marks:
            assert stage_of(["t (threading.py:1)", mark.frame()]) in {stage, *earlier}, mark
        earlier.append(stage)


@pure_frames
def test_marks_read_file_and_qualified_name_off_the_objects():
    apply = Mark.of(models.features.CustomerProfile.apply)
    assert apply == Mark("models/features.py", "CustomerProfile.apply")
    assert apply.matches("CustomerProfile.apply", "models/features.py")
    assert not apply.matches("CustomerProfile.apply_all", "models/features.py")
    assert not apply.matches("CustomerProfile.apply", "stream/features.py")
    assert apply.matches("CustomerProfile.apply.<locals>.f", "models/features.py")
    assert Mark.of(models.features.CustomerProfile.from_state).qualname == (
        "CustomerProfile.from_state"  # a classmethod
    )
    assert Mark.of(models.segments) == Mark("models/segments.py")
    package = Mark.of(models)
    assert package == Mark("models/") and package.matches("anything", "models/rules.py")
    cls = Mark.of(models.segments.SegmentAssignment)
    assert cls.matches("SegmentAssignment.record", "models/segments.py")
    assert not cls.matches("SegmentAssignmentX.record", "models/segments.py")
    assert short_filename(pytest.__file__) == "pytest/__init__.py"


def test_report_marks_targets_and_writes_a_chart(tmp_path: Path):
    report = Report()
    report.add(Figure("T", "ours vs bare", 700.0, "events/s", 1000.0, "bare", ">= 0.7", True))
    report.add(Figure("T", "ours vs raw", 100.0, "events/s", 1000.0, "raw", ">= 0.25", False))
    report.add(Figure("F", "p99", 12.5, "ms", target="<= 50 ms", met=True))
    report.profiles["arrays of 10"] = ([("decoding events", 0.25)], [("f (a.py:1)", 0.1)])
    report.rates["arrays of 10"] = {"bare Faust agent, batches": 20_000, "our worker": 5_000}
    out = tmp_path / "bench.md"
    write_report(report, out, "segmenter bench", 60.0)
    text = out.read_text()
    assert (
        "| T | ours vs bare | 700 events/s | 1,000 events/s (bare) | 0.70 | >= 0.7 | yes |" in text
    )
    assert "**no**" in text and "| 12.5 ms |" in text
    assert "## Where the worker's time goes (arrays of 10)" in text
    assert "| arrays of 10 | our worker | 5,000 | 200.0 µs |" in text
    assert (
        "| arrays of 10 | our logic (our worker less bare Faust with batches) | | 150.0 µs |"
        in text
    )
    assert "| 25.0% | decoding events |" in text and "| 10.0% | `f (a.py:1)` |" in text
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_the_bench_runs_the_step_alone_first_then_every_phase_with_a_quick_config(tmp_path):
    stack = SimpleNamespace(
        workdir=tmp_path, kafka_url="kafka://127.0.0.1:1", redis_url="redis://127.0.0.1:1"
    )
    config = BenchConfig.quick()
    ctx = BenchContext(cast(EmbeddedStack, stack), Console(file=io.StringIO()), Report(), config)
    try:
        names = [name for name, _ in phases(ctx)]
    finally:
        ctx.close()
    assert names[0] == "the step alone, in-process"
    assert names[1:3] == ["throughput, one event per message", "throughput, arrays of 10"]
    assert names[-4:] == [
        "memory and recovery",
        "live definitions: apply and backfill",
        "two workers against one",
        "a million customers",
    ]
    assert len(names) == 10
    assert config.million_customers < BenchConfig().million_customers == 1_000_000
    assert config.core.single_events < BenchConfig().core.single_events


def test_no_class_of_the_bench_is_longer_than_about_two_hundred_lines():
    tools = Path(stream.tools.__file__).parent
    files = sorted(tools.glob("bench*.py"))
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= 210, f"{path.name}: {node.name} has {length} lines"


def test_a_figure_not_measured_reads_as_such_and_has_no_ratio(tmp_path: Path):
    report = Report()
    nan = float("nan")
    report.add(
        Figure("T", "Quix Streams peer", nan, "events/s", 1000.0, "raw", note="not measured: x")
    )
    report.add(Figure("T", "ours vs peer", 500.0, "events/s", nan, "Quix Streams peer", ">= 1.0"))
    report.rates["arrays of 10"] = {"Quix Streams peer": nan, "our worker": 5_000}
    assert all(f.ratio is None for f in report.figures)
    out = tmp_path / "bench.md"
    write_report(report, out, "segmenter bench", 60.0)
    text = out.read_text()
    assert (
        "| T | Quix Streams peer (not measured: x) | not measured | 1,000 events/s (raw) |" in text
    )
    assert "| 500 events/s | not measured (Quix Streams peer) |  | >= 1.0 |  |" in text
    assert "Quix Streams peer |" not in text.split("## Floors")[1]  # no NaN in the floors


def test_the_quix_peer_script_needs_nothing_of_ours_and_imports_quix_only_when_run():
    """It runs in a virtualenv of its own (no stream, models, orjson...), and pytest imports it
    for its doctests in ours, where quixstreams is not installed."""
    path = Path(stream.tools.__file__).parent / "bench_peer_quix.py"
    top = {"__future__", "argparse", "json", "tempfile", "time", "typing", "urllib"}
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            assert {str(n).split(".")[0] for n in names} <= top, names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            assert {str(n).split(".")[0] for n in names} <= top | {"quixstreams"}, names
    importlib.import_module("stream.tools.bench_peer_quix")


def test_a_peer_virtualenv_that_cannot_be_made_is_a_reason_once(tmp_path, monkeypatch):
    import subprocess

    from stream.tools import bench_peer

    calls: list[list[str]] = []

    def run(args, **_kw):
        calls.append(list(args))
        return subprocess.CompletedProcess(args, 1 if "pip" in args else 0)

    monkeypatch.setattr(bench_peer.subprocess, "run", run)
    said: list[str] = []
    venv = tmp_path / "cache" / "quix3"
    peer = bench_peer.peer_python(said.append, venv)
    assert peer.python is None
    assert "could not be made" in peer.reason and "exited with 1" in peer.reason
    assert "failed" not in peer.reason  # the slow bench test reads "failed" as a phase failing
    assert not venv.exists() and said
    assert bench_peer.peer_python(said.append, venv) is peer  # not tried again in this run
    assert len([c for c in calls if "pip" in c]) == 1
    run_ = bench_peer.run_peer(cast(BenchContext, None), peer, cast(Any, None), ["t"], 10, "tp1")
    assert not run_.measured and run_.reason == peer.reason
