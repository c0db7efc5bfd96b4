"""The dashboard's browser test is a skip locally without Playwright or Chromium, but a failure
when ``SEGMENTER_REQUIRE_BROWSER`` is set (CI). Issue 14: ``importorskip("playwright...")``
ran before that check, so a CI without Playwright passed by skipping."""

from __future__ import annotations

import sys

import pytest

from .test_dashboard import playwright_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture
def no_playwright(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import playwright.sync_api` raise ImportError.
    monkeypatch.setitem(sys.modules, "playwright", None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # type: ignore[arg-type]


def test_missing_playwright_fails_when_the_browser_is_required(
    no_playwright: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGMENTER_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="Playwright is not installed"):
        playwright_or_skip()


def test_missing_playwright_is_a_skip_when_the_browser_is_not_required(
    no_playwright: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEGMENTER_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Playwright is not installed"):
        playwright_or_skip()


def test_missing_chromium_fails_when_the_browser_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEGMENTER_REQUIRE_BROWSER", "1")
    monkeypatch.setattr("tests.integration.test_dashboard.CHROMIUM", "/nonexistent/chromium")
    pytest.importorskip("playwright.sync_api")  # this case is about Chromium alone
    with pytest.raises(pytest.fail.Exception, match="no Chromium at /nonexistent/chromium"):
        playwright_or_skip()
