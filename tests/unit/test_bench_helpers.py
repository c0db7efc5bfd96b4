"""The benchmark's pure helpers: traffic shaping, percentiles, the profile summary, the report."""

from __future__ import annotations

from pathlib import Path

from stream.tools.bench import (
    Figure,
    Report,
    _percentile,
    as_arrays,
    as_singles,
    click_streams,
    summarize_profile,
    summarize_stages,
    write_report,
)


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
    assert _percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert _percentile(list(range(1, 101)), 0.99) == 100
    raw = "main;loop;decode (a.py:1) 30\nmain;loop;score (b.py:2) 60\nmain;idle (c.py:3) 10\n"
    summary = summarize_profile(raw)
    assert summary[0] == ("score (b.py:2)", 0.6) and len(summary) == 3


def test_stage_summary_counts_each_sample_for_the_innermost_stage_or_its_library():
    raw = "\n".join(
        [
            # our batch handler -> scoring -> a persona match: scoring, not the handler
            "t;Segmenter._handle (stream/app.py:250);assign (models/segments.py:220);"
            "PersonaCatalog.match (models/personas.py:99) 40",
            # our handler's own line (orjson.loads of the state): the rest of the agent
            "t;run (asyncio/base_events.py:1);Segmenter._handle (stream/app.py:249) 20",
            # the aiokafka thread unpacking records, nothing of ours on the stack
            "t;run (threading.py:1);PartitionRecords._unpack_records "
            "(aiokafka/consumer/fetcher.py:216) 30",
            "t;run_forever (asyncio/base_events.py:1);EpollSelector.select (selectors.py:468) 10",
        ]
    )
    stages = dict(summarize_stages(raw))
    assert stages == {
        "scoring: clusters, personas, rules, facts": 0.4,
        "our batching and the rest of the agent": 0.2,
        "aiokafka and kafka-python: fetch, unpack, send": 0.3,
        "asyncio event loop and sockets": 0.1,
    }


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
