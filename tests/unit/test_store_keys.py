"""Every Redis key name, pinned byte for byte: readers in other languages, dashboards and
operators' scripts depend on them (the layout is documented in ``stream/store/keys.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.store import Keys, record_key

ROOT = Path(__file__).resolve().parents[2]


def test_every_key_of_the_default_prefix():
    k = Keys()
    assert k.prefix == "seg:"
    assert k.record("c-42") == "seg:c:c-42"
    assert k.sizes == "seg:sizes"
    assert k.members == "seg:members"
    assert k.history == "seg:history"
    assert k.history_index == "seg:history:index"
    assert k.history_lock == "seg:history:lock"
    assert k.watermark == "seg:watermark"
    assert k.drift == "seg:drift"
    assert k.model == "seg:model"
    assert k.model_version == "seg:model:version"
    assert k.stats == "seg:stats"
    assert k.worker("w-1") == "seg:worker:w-1"
    assert k.records_pattern == "seg:c:*"
    assert k.workers_pattern == "seg:worker:*"


def test_another_prefix_and_unusual_ids_are_used_as_they_are():
    k = Keys("tenant1:")
    assert k.record("ü 7") == "tenant1:c:ü 7"
    assert k.record("a:b*") == "tenant1:c:a:b*"
    assert k.model_version == "tenant1:model:version"
    assert k.worker("host-1/2") == "tenant1:worker:host-1/2"
    assert Keys("").stats == "stats"
    assert record_key("tenant1:", "ü 7") == k.record("ü 7")
    assert record_key("seg:", "c-42") == "seg:c:c-42"


def test_scan_patterns_escape_glob_characters_of_the_prefix():
    k = Keys("t*[1]?\\:")
    assert k.records_pattern == "t\\*\\[1\\]\\?\\\\:c:*"
    assert k.workers_pattern == "t\\*\\[1\\]\\?\\\\:worker:*"
    assert k.record("x") == "t*[1]?\\:c:x"  # keys themselves are never escaped


def test_keys_are_a_frozen_value():
    k = Keys("p:")
    assert k == Keys("p:") and hash(k) == hash(Keys("p:"))
    with pytest.raises(AttributeError):
        k.prefix = "q:"  # type: ignore[misc]


KEY_FSTRING = re.compile(
    r"\{[^{}]*prefix[^{}]*\}"
    r"(c:|sizes|members|history|watermark|drift|model|stats|worker:)",
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
