"""The bench report's "What stops each missed target": a bullet per missed target, naming its
floor in numbers of the same run (the Report's figures, rates, core totals, profiles); and the
machine's busy cores the scale-out floor reads."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import psutil

from stream.tools.bench_report import STEP_ALONE, Figure, Floor, Report, what_stops, write_report
from stream.tools.bench_scale import cores_busy, cpu_seconds, process_seconds

SINGLES, ARRAYS = "one event per message", "arrays of 10"


def bullets(report: Report) -> list[str]:
    return [line for line in what_stops(report) if line.startswith("- ")]


def bullet(report: Report, what: str) -> str:
    (found,) = [b for b in bullets(report) if f": {what}**" in b]
    return found


def throughput(report: Report, run: str, ours: float, needs: float, met: bool) -> Figure:
    return report.add(
        Figure(
            f"Throughput, {run}",
            "our worker",
            ours,
            "events/s",
            target=f">= {needs:,.0f} events/s",
            met=met,
            floor=Floor.WORKER,
            run=run,
            extra={"needs": needs},
        )
    )


def rates(report: Report, run: str, ours: float, step: float, bare: float = 6_928.0) -> None:
    report.rates[run] = {"bare Faust agent, batches": bare, "our worker": ours, STEP_ALONE: step}


def test_a_met_target_gets_no_bullet_and_a_run_with_none_missed_says_so():
    report = Report()
    throughput(report, SINGLES, 9_000.0, 8_000.0, True)
    report.add(Figure("F", "p50", 3.0, "ms"))  # no target at all
    assert bullets(report) == []
    assert what_stops(report)[-1] == "Every target measured in this run was met."
    throughput(report, ARRAYS, 10_000.0, 50_000.0, False)
    assert (
        len(bullets(report)) == 1 and "Throughput, arrays of 10: our worker" in bullets(report)[0]
    )


def test_a_worker_below_a_target_its_step_alone_cannot_reach_is_told_it_cannot_pass_it():
    report = Report()
    throughput(report, SINGLES, 1_750.0, 8_000.0, False)
    rates(report, SINGLES, 1_750.0, 4_979.0)
    report.profiles[SINGLES] = (
        [("Redis writes (client side)", 0.107), ("our batching", 0.338), ("scoring", 0.228)],
        [],
    )
    text = bullet(report, "our worker")
    assert "(1,750 events/s; target >= 8,000 events/s)" in text
    assert "it needs 8,000 events/s (125.0 µs per event)" in text
    assert "ran 4,979 events/s (200.8 µs per event): below that" in text
    assert "cannot pass it" in text
    # what the worker adds beyond the step: 571.4 - 200.8 µs; Faust alone 144.3 µs
    assert "adds 370.6 µs per event beyond the step" in text
    assert "a bare Faust agent taking batches costs 144.3 µs" in text
    # the profile's three largest stages, largest first
    assert "largest stages: our batching 33.8%; scoring 22.8%; Redis writes" in text


def test_the_workers_cores_over_the_run_say_whether_what_it_adds_is_work_or_waiting():
    report = Report()
    throughput(report, SINGLES, 6_000.0, 8_000.0, False)
    rates(report, SINGLES, 6_000.0, 10_000.0)
    assert "of a core" not in bullet(report, "our worker")  # not measured: nothing said
    report.worker_cores[SINGLES] = (0.93, 1.61)
    text = bullet(report, "our worker")
    assert "the worker's process used 0.93 of a core (the machine's cores 1.61 busy)" in text
    assert "what it adds is its own work, not waiting" in text
    report.worker_cores[SINGLES] = (0.6, math.nan)
    text = bullet(report, "our worker")
    assert "used 0.60 of a core: idle about 40% of the time" in text
    assert "busy)" not in text


def test_a_ratio_target_needs_its_ratio_of_the_baseline_and_a_fast_step_blames_the_rest():
    report = Report()
    report.add(
        Figure(
            "Throughput, arrays of 10",
            "our worker vs plain aiokafka",
            10_957.0,
            "events/s",
            301_387.0,
            "aiokafka",
            ">= 0.02",
            False,
            floor=Floor.WORKER,
            run=ARRAYS,
            extra={"needs": 0.02 * 301_387.0},
        )
    )
    rates(report, ARRAYS, 10_957.0, 32_122.0, bare=51_575.0)
    text = bullet(report, "our worker vs plain aiokafka")
    assert "= 0.04 x 301,387 events/s; target >= 0.02)" in text
    assert "it needs 6,028 events/s" in text
    assert "above that, so what stops it is what the worker adds" in text
    assert "cannot pass" not in text
    assert "No profile of the worker was taken in this run." in text


def test_a_worker_target_without_the_step_alone_says_its_floor_is_not_known():
    report = Report()
    throughput(report, SINGLES, 1_750.0, 8_000.0, False)
    assert "The step alone was not measured in this run" in bullet(report, "our worker")


def test_a_second_target_on_the_same_run_refers_to_the_first_for_what_the_worker_adds():
    report = Report()
    throughput(report, SINGLES, 1_750.0, 8_000.0, False)
    report.add(
        Figure(
            "Throughput, one event per message",
            "our worker vs Quix Streams peer",
            1_750.0,
            "events/s",
            10_806.0,
            "Quix Streams peer",
            ">= 1.0",
            False,
            floor=Floor.WORKER,
            run=SINGLES,
            extra={"needs": 10_806.0},
        )
    )
    rates(report, SINGLES, 1_750.0, 4_979.0)
    first, second = bullets(report)
    assert "The worker adds 370.6 µs" in first
    assert "it needs 10,806 events/s (92.5 µs per event)" in second
    assert "below that, so the worker cannot pass it" in second
    assert "The worker adds" not in second and "as for the target above" in second


def test_a_worker_faster_than_its_step_alone_is_not_told_it_cannot_pass():
    report = Report()
    throughput(report, SINGLES, 3_575.0, 8_000.0, False)
    rates(report, SINGLES, 3_575.0, 2_869.0)
    text = bullet(report, "our worker")
    assert "ran 2,869 events/s (348.6 µs per event), yet our worker ran faster (279.7 µs" in text
    assert "this run does not say what stops the worker" in text
    assert "cannot pass" not in text and "adds" not in text


def test_the_step_alone_against_its_budget_with_its_three_largest_stages():
    report = Report()
    report.add(
        Figure(
            "The step alone",
            SINGLES,
            4_979.0,
            "events/s",
            target=">= 25,000 events/s",
            met=False,
            floor=Floor.STEP,
            run=SINGLES,
            extra={"needs": 25_000.0},
        )
    )
    report.core_stages[SINGLES] = [
        ("facts", 38.38),
        ("personas", 29.36),
        ("clusters", 17.58),
        ("the rest", 30.16),  # appended last, as bench_core does
    ]
    report.core_totals[SINGLES] = (232.0, 200.9)
    text = bullet(report, SINGLES)
    assert "its budget is 40.0 µs per event; it took 200.8 µs, 5.0x the budget" in text
    assert (
        "(the instrumented run, 232.0 µs per event in all): facts 38.4 µs; the rest 30.2 µs;"
        in text
    )
    assert "clusters" not in text


def freshness(report: Report, rate: float, run: str, p99: float, floor: bool = False) -> None:
    report.add(
        Figure(
            "Freshness",
            f"p99 at {rate:,.0f} events/s",
            p99,
            "ms",
            target="" if floor else "<= 50 ms",
            met=None if floor else p99 <= 50,
            floor=Floor.NO_QUEUE if floor else Floor.FRESHNESS,
            run=run,
            extra={"rate": rate, "p50": p99 / 2},
        )
    )


def test_freshness_names_the_load_against_the_workers_throughput_and_the_floor_without_queueing():
    report = Report()
    freshness(report, 2_000.0, SINGLES, 4_946.0)
    freshness(report, 10_000.0, ARRAYS, 2_318.0)
    report.rates[SINGLES] = {"our worker": 1_750.0}
    report.rates[ARRAYS] = {"our worker": 40_000.0}
    freshness(report, 200.0, SINGLES, 48.9, floor=True)  # measured later in the run
    assert len(bullets(report)) == 2  # the floor has no target
    singles = bullet(report, "p99 at 2,000 events/s")
    assert "the offered 2,000 events/s is 1.14 of one worker's throughput" in singles
    assert "one event per message in this run (1,750 events/s): above its capacity" in singles
    assert "(p50 2,473 ms)" in singles
    assert "The floor without queueing, p99 at 200 events/s: 48.9 ms." in singles
    arrays = bullet(report, "p99 at 10,000 events/s")
    assert "is 0.25 of one worker's" in arrays and "the load alone does not explain it" in arrays


def test_freshness_says_whether_the_worker_kept_up_while_the_probes_were_sent():
    report = Report()
    report.rates[ARRAYS] = {"our worker": 14_000.0}
    report.rates[SINGLES] = {"our worker": 3_000.0}
    behind = {"applied": 7_400.0, "offered": 10_150.0, "cores": 0.97, "busy": 1.96}
    kept_up = {"applied": 1_990.0, "offered": 2_020.0, "cores": 0.71, "busy": 1.2}
    for rate, run, window in ((10_000.0, ARRAYS, behind), (2_000.0, SINGLES, kept_up)):
        window["machine"] = 2.0
        freshness(report, rate, run, 1_400.0)
        report.figures[-1].extra.update(window)
    arrays = bullet(report, "p99 at 10,000 events/s")
    assert "is 0.71 of one worker's throughput on arrays of 10 in this run (14,000" in arrays
    assert "the load alone" not in arrays  # the window says what happened instead
    assert (
        "the worker applied 7,400 events/s of the 10,150 offered (0.73), on 0.97 of a core"
        in arrays
    )
    assert "with the machine's 2 cores 1.96 busy" in arrays
    assert "Of a probe's time" not in arrays  # no split measured
    report.figures[0].extra.update(
        to_broker_p50=1_800.0, to_broker_p99=2_900.0, to_redis_p50=210.0, to_redis_p99=380.0
    )
    arrays = bullet(report, "p99 at 10,000 events/s")
    assert (
        "acknowledged it (the bench's producer beside its load, and the broker) took p50 "
        "1,800 ms, p99 2,900 ms; from there until it was readable in Redis (the worker) p50 "
        "210 ms, p99 380 ms." in arrays
    )
    assert "it fell behind, and the probes queued behind the backlog." in arrays
    singles = bullet(report, "p99 at 2,000 events/s")
    assert "applied 1,990 events/s of the 2,020 offered (0.99), on 0.71 of a core" in singles
    assert "it kept up; each probe waited for the batch in progress" in singles
    # the boundary: 0.95 of the offered is keeping up, a little less is not
    for applied, verdict in ((0.95 * 2_000.0, "kept up"), (0.94 * 2_000.0, "fell behind")):
        report.figures[-1].extra.update(applied=applied, offered=2_000.0)
        assert verdict in bullet(report, "p99 at 2,000 events/s")


def test_freshness_of_a_worker_that_applied_nothing_says_it_fell_behind():
    report = Report()
    report.rates[SINGLES] = {"our worker": 3_000.0}
    freshness(report, 2_000.0, SINGLES, 9_000.0)
    report.figures[-1].extra.update(applied=0.0, offered=2_000.0, cores=0.1, busy=1.0, machine=2)
    text = bullet(report, "p99 at 2,000 events/s")
    assert "applied 0 events/s of the 2,000 offered (0.00)" in text and "fell behind" in text
    assert "the load alone" not in text


def test_freshness_without_the_workers_throughput_says_so():
    report = Report()
    freshness(report, 2_000.0, SINGLES, 80.0)
    text = bullet(report, "p99 at 2,000 events/s")
    assert "throughput on one event per message was not measured in this run" in text
    assert "The floor without queueing was not measured in this run." in text


def read(report: Report, ours: float, bare: float) -> str:
    report.add(
        Figure(
            "Read latency",
            "client get p99",
            ours,
            "ms",
            bare,
            "bare redis-py GET p99",
            "<= 1 ms and <= 1.5x bare",
            ours <= 1 and ours <= 1.5 * bare,
            floor=Floor.READ,
        )
    )
    return bullet(report, "client get p99")


def test_read_latency_names_the_bare_get_and_the_machine_when_it_alone_is_over_a_millisecond():
    slow = read(Report(), 6.2, 6.8)
    assert "a bare redis-py GET's p99, in the same reads, was 6.8 ms, itself above 1 ms" in slow
    assert "the machine" in slow
    ours = read(Report(), 0.9, 0.4)
    assert "was 0.400 ms: our client adds 0.500 ms over it at p99." in ours
    assert "the machine" not in ours


def scale(busy: float, one: float) -> Report:
    report = Report()
    report.add(
        Figure(
            "Scale-out",
            "two workers vs one",
            24_721.0,
            "events/s",
            18_277.0,
            "one worker",
            ">= 1.6",
            False,
            floor=Floor.SCALE,
            extra={
                "cores": 2,
                "busy": busy,
                "by workers": busy - 0.6,
                "busy with one": one,
                "by the one worker": one - 0.7,
            },
        )
    )
    return report


def test_two_workers_against_one_names_the_busy_cores_of_the_same_run():
    full = bullet(scale(1.93, 1.62), "two workers vs one")
    assert "(24,721 events/s = 1.35 x 18,277 events/s; target >= 1.6)" in full
    assert "the machine's cores were 1.9 of 2 busy during the two-worker run and 1.6" in full
    assert "the two workers themselves used 1.3 cores, the one worker 0.9" in full
    assert "(two had 1.45x the CPU of one)" in full  # 1.33 / 0.92
    assert "the machine's cores are the floor" in full
    idle = bullet(scale(1.2, 0.9), "two workers vs one")
    assert "1.2 of 2 busy" in idle and "they alone do not stop it" in idle
    assert "are the floor" not in idle
    unmeasured = bullet(scale(math.nan, math.nan), "two workers vs one")
    assert "CPU use was not measured in this run" in unmeasured


def definitions(customers: float, seconds: float, cap: float, lead: float = 0.4) -> str:
    report = Report()
    report.add(
        Figure(
            "Live definitions",
            "apply published to every customer re-evaluated",
            seconds + lead,
            "s",
            target="<= 10 s",
            met=False,
            floor=Floor.DEFINITIONS,
            extra={
                "customers": customers,
                "backfill seconds": seconds,
                "rate cap": cap,
                "seconds allowed": 10.0,
            },
        )
    )
    return bullet(report, "apply published to every customer re-evaluated")


def test_live_definitions_name_the_backfills_rate_the_time_before_it_and_its_cap():
    text = definitions(100_062, 15.7, 20_000)
    assert "backfill took 15.7 s of it: 100,062 customers re-evaluated at 6,373 a second" in text
    assert "the rest, 0.4 s, is from the publish" in text
    assert "10 s leaves the backfill 9.6 s: 10,423 a second" in text
    assert "The floor is the re-evaluation itself (below its rate cap" in text
    capped = definitions(100_062, 20.1, 5_000)
    assert "Its rate cap (SEGMENTER_BACKFILL_RATE 5,000/s) forbids that: 20.0 s at least" in capped
    assert "no rate cap" in definitions(100_062, 15.7, 0)
    # (a reviewer's case) at its cap, with a long lead: the cap forbids what is left
    late = definitions(100_000, 5.1, 20_000, lead=6.4)
    assert "leaves the backfill 3.6 s: 27,778 a second" in late and "forbids that" in late
    at_cap = definitions(100_000, 5.1, 20_000, lead=0.5)
    assert "ran at its rate cap" in at_cap and "re-evaluation itself" not in at_cap
    assert "time before the backfill starts" in definitions(100_000, 5.0, 20_000, lead=11.0)


def test_a_missed_figure_with_no_floor_measured_says_so_and_the_section_follows_the_table(
    tmp_path: Path,
):
    report = Report()
    report.add(
        Figure("Memory", "Redis per customer", 1_100.0, "bytes", target="<= 1 KB", met=False)
    )
    report.rates[SINGLES] = {"our worker": 1_000.0}
    out = tmp_path / "bench.md"
    write_report(report, out, "segmenter bench", 60.0)
    text = out.read_text()
    assert (
        "- **Memory: Redis per customer** (1,100 B; target <= 1 KB): no floor is measured for it "
        "in this bench." in text
    )
    table, after = text.split("\n## What stops each missed target\n")
    assert "| Memory | Redis per customer |" in table
    assert after.index("- **Memory") < after.index("## Floors: time per event")


def test_the_machines_busy_cores_count_a_core_kept_busy():
    cores = psutil.cpu_count() or 1
    before = cpu_seconds()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # one core busy, whatever else runs
        pass
    busy = cores_busy(before, cpu_seconds(), cores)
    assert 0.5 < busy <= cores + 0.01
    assert before[0] < before[1]


def test_a_processs_cpu_seconds_count_while_it_runs_and_not_once_it_is_gone():
    # 0.3 s of its own CPU time, however busy the machine, then it waits for its input to end
    spin = "import sys, time\nwhile time.process_time() < 0.3: pass\nsys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while process_seconds([proc]) <= 0.1:  # counted while it runs
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    assert process_seconds([proc]) == 0.0
