"""Every Redis key name, pinned byte for byte: readers in other languages, dashboards and
operators' scripts depend on them (the layout is documented in ``stream/store/keys.py``)."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest
from redis.crc import key_slot

from stream.store import COUNTER_SHARDS, Keys, RedisConfigError, record_key, shard_of

ROOT = Path(__file__).resolve().parents[2]


def test_every_key_of_the_default_prefix():
    k = Keys()
    assert k.prefix == "seg:"
    assert k.record("c-42") == "seg:c:{53}c-42"
    assert k.sizes(53) == "seg:sizes:{53}"
    assert k.members(53) == "seg:members:{53}"
    assert k.changes(53) == "seg:changes:{53}"
    assert k.flows(53) == "seg:flows:{53}" and k.examples(53) == "seg:examples:{53}"
    assert k.script_keys("c-42") == (
        "seg:c:{53}c-42",
        "seg:sizes:{53}",
        "seg:members:{53}",
        "seg:changes:{53}",
        "seg:flows:{53}",
        "seg:examples:{53}",
    )
    assert k.all_flows == tuple(f"seg:flows:{{{s}}}" for s in range(64))
    assert k.all_examples == tuple(f"seg:examples:{{{s}}}" for s in range(64))
    assert k.sizes(0) == "seg:sizes:{0}" and k.members(63) == "seg:members:{63}"
    assert k.all_sizes == tuple(f"seg:sizes:{{{s}}}" for s in range(64))
    assert k.all_members == tuple(f"seg:members:{{{s}}}" for s in range(64))
    assert k.history == "seg:history"
    assert k.history_index == "seg:history:index"
    assert k.history_lock == "seg:history:lock"
    assert k.watermark == "seg:watermark"
    assert k.drift == "seg:drift"
    assert k.model == "seg:model"
    assert k.model_version == "seg:model:version"
    assert k.stats == "seg:stats"
    assert k.worker("w-1") == "seg:worker:w-1"
    assert k.partition_mark("segmenter", 3) == "seg:partition:segmenter:3"
    assert k.rebuild_request("segmenter") == "seg:rebuild:segmenter"
    assert k.records_pattern == "seg:c:*"
    assert k.workers == "seg:workers"


def test_the_shard_is_zlib_crc32_of_the_utf8_id_mod_64_as_any_language_computes_it():
    assert COUNTER_SHARDS == 64
    # Fixed values: a reader in another language checks its CRC-32 against these.
    assert {c: shard_of(c) for c in ("c-42", "cust-5bc8fb-000823", "", "ü 7")} == {
        "c-42": 53,
        "cust-5bc8fb-000823": 8,
        "": 0,
        "ü 7": 45,
    }
    for cid in ("a", "b:c", "x" * 300, "客户-1"):
        assert shard_of(cid) == zlib.crc32(cid.encode("utf-8")) % 64


def test_a_record_and_its_counter_shards_share_one_cluster_hash_slot():
    for prefix in ("seg:", "tenant1:", "", "t*[1]?\\:"):
        k = Keys(prefix)
        for cid in ("c-42", "ü 7", "with{braces}inside", "}", "{", "a:b*", "x" * 200):
            slots = {key_slot(key.encode()) for key in k.script_keys(cid)}
            assert len(slots) == 1, (prefix, cid, k.script_keys(cid))
            assert slots == {key_slot(f"{{{shard_of(cid)}}}".encode())}
    # The 64 shards spread over the slots of a three-master cluster about evenly.
    thirds = [0, 0, 0]
    for key in Keys().all_sizes:
        thirds[min(2, key_slot(key.encode()) * 3 // 16384)] += 1
    assert thirds == [21, 22, 21]


def test_another_prefix_and_unusual_ids_are_used_as_they_are():
    k = Keys("tenant1:")
    assert k.record("ü 7") == "tenant1:c:{45}ü 7"
    assert k.record("a:b*") == f"tenant1:c:{{{shard_of('a:b*')}}}a:b*"
    assert k.model_version == "tenant1:model:version"
    assert k.worker("host-1/2") == "tenant1:worker:host-1/2"
    assert Keys("").stats == "stats"
    assert Keys("").record("c-42") == "c:{53}c-42"
    assert record_key("tenant1:", "ü 7") == k.record("ü 7")
    assert record_key("seg:", "c-42") == "seg:c:{53}c-42"


def test_a_prefix_with_braces_is_refused_because_it_would_be_the_hash_tag():
    for prefix in ("{seg}:", "a{b:", "a}b:"):
        with pytest.raises(RedisConfigError, match="braces are not allowed"):
            Keys(prefix)


def test_scan_patterns_escape_glob_characters_of_the_prefix():
    k = Keys("t*[1]?\\:")
    assert k.records_pattern == "t\\*\\[1\\]\\?\\\\:c:*"
    assert k.record("x") == "t*[1]?\\:c:{3}x"  # keys themselves are never escaped


def test_keys_are_a_frozen_value():
    k = Keys("p:")
    assert k == Keys("p:") and hash(k) == hash(Keys("p:"))
    with pytest.raises(AttributeError):
        k.prefix = "q:"  # type: ignore[misc]


KEY_FSTRING = re.compile(
    r"\{[^{}]*prefix[^{}]*\}"
    r"(c:|sizes|members|history|watermark|drift|model|stats|worker:|workers|partition:|rebuild:)",
    re.IGNORECASE,
)


def test_no_key_name_is_built_outside_keys_py():
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for top in ("stream", "tests")
        for path in sorted((ROOT / top).rglob("*.py"))
        if path != ROOT / "stream" / "store" / "keys.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if KEY_FSTRING.search(line)
    ]
    assert offenders == []
