"""A short chaos soak (``segmenter soak --minutes 1.5``): each kind of fault once (a worker
SIGKILLed, Redis restarted with its append-only file, the broker connection cut) under steady
traffic with 5% garbage; nothing lost. The full run (about 10 minutes) is ``make soak``."""

from __future__ import annotations

import pytest

from stream.tools.cdnow import CdnowUnavailable, cdnow_purchases
from stream.tools.soak import SoakConfig, run_soak

pytestmark = pytest.mark.integration


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_short_soak_loses_nothing() -> None:
    try:
        cdnow_purchases()  # downloaded once into the cache, where the soak reads it
    except CdnowUnavailable as exc:
        pytest.skip(f"CDNOW not available: {exc}")
    result = run_soak(SoakConfig(minutes=1.5, seed=3), print)
    injected = result.injected
    assert (injected["kill"], injected["redis"], injected["cut"]) == (1, 1, 1)
    findings = result.findings
    assert findings is not None and findings.customers > 1000 and findings.garbage > 100
    assert result.caught_up is not None, result.lag
    assert not result.crashes
    assert not any(findings.wrong().values()), (findings.wrong(), result.details())
    assert result.ok
