"""The soak's traffic: every garbage kind is refused by the worker's decoder (so it must land
in dead-letters), every other message is accepted whole."""

from __future__ import annotations

from datetime import date

import orjson

from models.events import DecodeLimits
from models.step import Intake, SourceMessage, StepOutcome
from stream.tools.cdnow import Purchase
from stream.tools.soak_traffic import GARBAGE_KINDS, SoakTraffic
from stream.worker.decoding import FastDecoder


def _intake() -> Intake:
    return Intake(decode=FastDecoder(DecodeLimits(), orjson.loads))


def test_every_garbage_kind_is_refused_with_a_reason() -> None:
    intake = _intake()
    for kind, make in GARBAGE_KINDS.items():
        source, key, value = make(1, "c-1")
        out = StepOutcome(watermark=0)
        message = SourceMessage(source, f"{source}/0", 0, key, value)
        assert intake.events(message, 0, out) is None, kind
        assert [bool(d.reason) for d in out.dead] == [True], kind


def test_the_traffic_is_cdnow_clicks_and_about_five_percent_garbage_of_every_kind() -> None:
    purchases = [
        Purchase(i, f"{i % 50}", date(1997, 1 + i % 12, 1 + i % 28), 1, 9.5) for i in range(3000)
    ]
    out = list(SoakTraffic(purchases, seed=3))
    garbage = [o for o in out if o.garbage]
    assert 0.04 < len(garbage) / len(out) < 0.06
    assert {o.garbage for o in garbage} == set(GARBAGE_KINDS)
    assert len({o.value for o in garbage}) == len(garbage)  # each one recognizable
    intake = _intake()
    valid = [o for o in out if o.message is not None]
    assert sum(o.source == "purchases" for o in valid) == len(purchases)
    assert any(o.source == "clickstream" for o in valid)
    for n, o in enumerate(valid):
        result = StepOutcome(watermark=0)
        events = intake.events(SourceMessage(o.source, "x/0", n, o.key, o.value), 0, result)
        assert events is not None and len(events) == o.message.events, result.dead
