"""The topic table: every topic the settings name, once, with its partition count and role."""

from __future__ import annotations

import pytest

from stream.settings import Settings
from stream.topology import INPUT_SOURCES, TOPICS, topology


def _topic_settings() -> set[str]:
    return {name for name in Settings.model_fields if name.endswith("_topic")}


def test_every_topic_the_settings_name_is_in_the_table_once():
    keys = [spec.setting for spec in TOPICS]
    assert len(keys) == len(set(keys))
    assert set(keys) == _topic_settings()
    settings = Settings(topic_prefix="p-")
    topics = topology(settings)
    names = [t.topic for t in topics]
    assert len(names) == len(set(names)) == len(TOPICS)
    for name in _topic_settings():
        assert names.count(settings.topic(getattr(settings, name))) == 1, name
    assert all(n.startswith("p-") for n in names)


def test_co_partitioned_topics_take_the_input_count_and_the_trainers_have_one():
    topics = topology(Settings(partitions=6))
    assert topics.input_partitions == 6
    inputs = topics.with_role("input")
    assert [t.source for t in inputs] == list(INPUT_SOURCES)
    assert {t.partitions for t in inputs} == {6}
    # forget requests and segment changes are keyed by customer, like the events
    assert topics["forget"].partitions == topics["changes"].partitions == 6
    # read by the single model trainer
    assert topics["samples"].partitions == topics["snapshots"].partitions == 1
    assert {t.key for t in topics.with_role("internal")} == {"samples", "snapshots", "definitions"}
    assert topics["definitions"].partitions == 1  # every worker reads it whole
    assert topics.compacted == {"segment-definitions"}


def test_the_counts_are_those_ensure_topics_always_created():
    topics = topology(Settings(partitions=4))
    assert topics.names == {
        "clickstream": 4,
        "purchases": 4,
        "identify": 4,
        "forget-requests": 4,
        "identity-merges": 4,
        "dead-letters": 1,
        "segment-changes": 4,
        "segment-samples": 1,
        "model-snapshots": 1,
        "segment-stats": 1,
        "segment-drift": 1,
        "trigger-dead-letters": 1,
        "segment-definitions": 1,
    }


def test_what_the_worker_and_the_producers_read():
    settings = Settings(topic_prefix="x.", clickstream_topic="clicks")
    topics = topology(settings)
    assert (
        topics.input_topics
        == settings.input_topics
        == {
            "x.clicks": "clickstream",
            "x.purchases": "purchases",
            "x.identify": "identify",
        }
    )
    assert topics.consumed == {
        **topics.input_topics,
        "x.forget-requests": "forget",
        "x.identity-merges": "identity",
    }
    assert topics.topic_of_source["clickstream"] == "x.clicks"
    assert topics["changes"].topic == "x.segment-changes" and topics["changes"].role == "output"
    assert topics.by_key["dead_letter"] == "x.dead-letters" and len(topics.by_key) == len(topics)
    with pytest.raises(KeyError, match="no topic 'nope'"):
        topics["nope"]
