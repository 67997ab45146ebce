"""The DevTools helper itself: what a console shows in red is reported, and nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.report import browser
from tests.report.browser import chromium


@pytest.mark.parametrize(
    ("script", "kind", "text"),
    [
        ('console.error("boom")', "console.error", "boom"),
        ('console.assert(1 === 2, "off")', "console.assert", "off"),
        ('throw new Error("bang")', "exception", "Error: bang"),
    ],
)
async def test_an_error_in_the_page_is_reported(
    tmp_path: Path, script: str, kind: str, text: str
) -> None:
    page_file = tmp_path / "page.html"
    page_file.write_text(f"<!doctype html><title>t</title><script>{script}</script>")
    async with chromium(tmp_path) as b:
        page = await b.open(page_file.as_uri())
    assert [(e.kind, e.text.splitlines()[0]) for e in page.errors] == [(kind, text)]


async def test_a_resource_that_fails_to_load_is_reported(tmp_path: Path) -> None:
    page_file = tmp_path / "page.html"
    page_file.write_text('<!doctype html><title>t</title><img src="missing.png">')
    async with chromium(tmp_path) as b:
        page = await b.open(page_file.as_uri())
    assert [(e.kind, e.url) for e in page.errors] == [("log", (tmp_path / "missing.png").as_uri())]


async def test_a_clean_page_reports_nothing_and_evaluates(tmp_path: Path) -> None:
    page_file = tmp_path / "page.html"
    page_file.write_text('<!doctype html><p>hi</p><script>console.log("fine")</script>')
    async with chromium(tmp_path) as b:
        page = await b.open(page_file.as_uri())
        assert await page.evaluate("document.body.innerText") == "hi"
    assert page.errors == []


def test_without_chromium_the_test_fails_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        browser.chromium_path()
