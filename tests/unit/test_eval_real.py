"""The real-data eval on a slice of CDNOW: the worker's step, then an offline k-means."""

import sys
from pathlib import Path

import pytest

from stream.settings import Settings
from stream.tools.cdnow import CdnowUnavailable, Purchase, cdnow_purchases
from stream.tools.eval_real import EvalExtraMissing, run_real


@pytest.fixture(scope="module")
def cdnow(request: pytest.FixtureRequest) -> list[Purchase]:
    cache = getattr(request.config, "cache", None)
    try:
        return cdnow_purchases(Path(cache.mkdir("cdnow")) if cache is not None else None)
    except CdnowUnavailable as exc:
        pytest.skip(f"CDNOW not available: {exc}")


@pytest.mark.slow
def test_a_slice_of_cdnow_through_the_step_against_offline_kmeans(cdnow):
    pytest.importorskip("sklearn")
    settings = Settings(warmup_samples=300)
    figures = run_real(settings, cdnow, seed=3, customers=800)
    assert figures.customers == 800 and figures.k == settings.n_clusters
    assert figures.purchases == sum(int(p.customer_id) <= 800 for p in cdnow)
    assert 0 < figures.midpoint_customers <= 800
    # The offline optimum is a floor the online model cannot beat by much (both local optima).
    assert figures.inertia_ratio >= 0.98
    assert [row[0] for row in figures.rows()][1] == "CDNOW: adjusted Rand index vs offline k-means"
    assert -1.0 <= figures.ari <= 1.0 and 0.0 <= figures.id_changes <= 1.0


def test_without_scikit_learn_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(EvalExtraMissing, match=r"\.\[eval\]"):
        run_real(Settings(), purchases=[])
