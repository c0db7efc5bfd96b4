"""The bench's core section (`segmenter bench --core`): the step alone, in-process. A tiny run
checks its structure, not its numbers."""

from __future__ import annotations

import gc
import io
from pathlib import Path

import pytest
from rich.console import Console

import models.events
import models.features
import models.step
from models.schedule import DueSchedule
from models.step import SourceMessage
from stream.build import core_compiled
from stream.settings import Settings
from stream.tools.bench_core import (
    CORE_SECTION,
    DECODE,
    GC,
    REST,
    SHELL_PARTS,
    STEP_ALONE,
    STEP_PARTS,
    CoreConfig,
    CoreResult,
    StageClock,
    add_to_report,
    instrumented,
    print_core,
    run_core,
    time_decoder,
)
from stream.tools.bench_report import Report, write_report
from stream.worker.app import build_step

_CLICK = b'{"event_id": "e-1", "type": "page_view", "customer_id": "c-1", "ts": 1795000000000}'


@pytest.fixture(scope="module")
def result() -> CoreResult:
    config = CoreConfig(
        customers=40,
        single_events=200,
        array_events=600,
        warm_events=1,
        repeats=2,
        train_events=500,
    )
    # a model after a few samples, and small batches so a tiny run has several
    settings = Settings(warmup_samples=20, batch_size=50, max_samples_per_second=0)
    return run_core(config, settings, say=lambda _: None)


def test_a_tiny_run_gives_positive_rates_for_both_runs_and_every_stage(result: CoreResult):
    assert [run.label for run in result.runs] == ["one event per message", "arrays of 10"]
    assert result.batch_size == 50 and result.model_version >= 1
    singles, arrays = result.runs
    assert singles.events == singles.messages == 200
    assert arrays.events == 600 and arrays.messages == 60  # exactly ten events a message
    for run in result.runs:
        assert len(run.rates) == 2 and all(rate > 0 for rate in run.rates)
        assert run.worst <= run.median and run.us_per_event == pytest.approx(1e6 / run.median)
        assert run.batches == -(-run.messages // 50)
        assert isinstance(run.met, bool)
        assert 0 < run.records <= run.events
        if core_compiled():  # its functions call each other past the timers: not measured
            assert run.stages == [] and run.instrumented_us == 0
            continue
        stages = dict(run.stages)
        expected = {stage for stage, _, _ in STEP_PARTS} | {s for s, _ in SHELL_PARTS} | {DECODE}
        assert set(stages) - {REST, GC} <= expected and REST in stages
        for stage in (
            DECODE,
            "scoring: rules (evaluate_rules)",
            "scoring: facts (customer_facts)",
            "profile in (live, else orjson.loads, from_state)",
            "live profiles kept (TableProfiles.saved)",
            "record encode (record_value: JSON, zstd)",
            "profile state out (encode_profile)",
        ):
            assert stages[stage] > 0, stage
        assert sum(stages.values()) == pytest.approx(run.instrumented_us, rel=0.01)
    # one customer per message in a batch of singles: about one scoring per event; arrays: 1/10
    assert singles.records / singles.events > arrays.records / arrays.events


def test_the_instrumented_parts_exist_and_are_restored_after_a_run(result: CoreResult):
    originals = {(id(owner), name): vars(owner)[name] for _, owner, name in STEP_PARTS}
    callbacks = list(gc.callbacks)
    with instrumented(StageClock()):
        assert models.step.assign is not originals[(id(models.step), "assign")]
        assert len(gc.callbacks) == len(callbacks) + 1
    assert gc.callbacks == callbacks
    for _, owner, name in STEP_PARTS:
        assert vars(owner)[name] is originals[(id(owner), name)], name
    assert models.features.CustomerProfile.apply.__qualname__ == "CustomerProfile.apply"


def test_the_decoder_the_step_runs_is_timed_whichever_it_is():
    step = build_step(Settings())
    clock = StageClock()
    extra = time_decoder(step, clock)
    with instrumented(clock, extra):
        step.run(
            [SourceMessage("clickstream", "clickstream/0", 0, b"c-1", _CLICK)],
            {},
            None,
            0,
            DueSchedule(),
            0,
            0.0,
        )
    assert clock.ns[DECODE] > 0
    core_decoder = vars(models.step).get("decode_message", models.events.decode_message)
    assert core_decoder is models.events.decode_message  # restored, if it was wrapped


def test_stage_clock_counts_the_garbage_collector_apart_from_the_stage_it_interrupts():
    clock = StageClock()

    def collect() -> None:
        clock.on_gc("start", {})
        sum(range(50_000))
        clock.on_gc("stop", {})

    clock.wrap("work", collect)()
    assert clock.ns[GC] > clock.ns["work"] >= 0


def test_stage_clock_counts_each_stage_without_the_stages_inside_it():
    clock = StageClock()
    inner = clock.wrap("inner", lambda: sum(range(20_000)))
    outer = clock.wrap("outer", lambda: [inner() for _ in range(3)])
    outer()
    assert clock.ns["inner"] > 0 and clock.ns["outer"] >= 0
    assert clock.ns["outer"] < clock.ns["inner"]  # the outer's own work is a list of three


def test_the_section_goes_into_the_report_and_prints(result: CoreResult, tmp_path: Path):
    report = Report()
    add_to_report(result, report)
    out = tmp_path / "reports" / "bench.md"  # a directory that does not exist yet
    write_report(report, out, "segmenter bench", 1.0)
    text = out.read_text()
    assert out.with_suffix(".png").exists()
    assert f"| {CORE_SECTION} | one event per message (median of 2 runs" in text
    assert ">= 25,000 events/s" in text and ">= 120,000 events/s" in text
    assert f"| arrays of 10 | {STEP_ALONE} |" in text
    compiled = core_compiled()
    assert f"The core (`models/`): {'compiled (mypyc)' if compiled else 'pure Python'}." in text
    # the time by stage: measured in the pure build only
    assert ("## Where the step's time goes (in-process)" in text) is not compiled
    assert (f"| {DECODE} |" in text) is not compiled
    buffer = io.StringIO()
    print_core(result, Console(file=buffer, width=200))
    printed = buffer.getvalue()
    assert "one event per message" in printed and ">= 120,000 events/s" in printed
    assert "µs per event by stage" in printed
    assert ("by stage: not measured" in printed) is compiled
    assert all(len(line) < 110 for line in printed.splitlines()[2:])
