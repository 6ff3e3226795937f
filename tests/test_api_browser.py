"""The review page in a real browser: Playwright for Python driving Debian's chromium.

Never `playwright install` (it downloads a browser, which CI cannot): the system chromium is
launched through ``executable_path``; `.ci/run` installs Debian's package when it is missing,
and these tests skip, saying why, when no chromium is on PATH. Each test saves a screenshot
of what it saw under its tmp folder (``PROMPTD_SCREENSHOTS=DIR`` copies them there too).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.api.deps import build_deps
from daemon.api.server import ApiServer
from daemon.pipeline import process_batch
from tests.daemon_helpers import wait_until, write_images
from tests.fixtures_api import ApiWorld
from tests.images import make_samples

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

if CHROMIUM is None:
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")


@pytest.fixture
def site(make_world: Callable[..., ApiWorld]) -> Iterator[tuple[ApiWorld, str]]:
    """A served API over an inbox with processed samples, an error, a pending image."""
    world = make_world(api={"listen": "127.0.0.1:0"})
    samples = make_samples(world.inbox / "samples")
    more = write_images(world.inbox / "set", 6, prefix="frame")
    process_batch([*samples, *more], world.view.ctx)
    broken = world.inbox / "set" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    process_batch([broken], world.view.ctx)
    write_images(world.inbox / "new", 1, prefix="fresh")
    server = ApiServer(build_deps(world.view))
    server.start()
    try:
        yield world, server.url
    finally:
        server.stop(10)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """A chromium page (1280x900), closed after the test."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        try:
            yield tab
        finally:
            browser.close()


def until(page: Any, script: str, what: str, timeout: float = 60) -> Any:
    """Poll ``script`` in the page until it is truthy (page.evaluate is not bound by the page's
    CSP, which forbids the eval that page.wait_for_function relies on)."""
    return wait_until(lambda: page.evaluate(script), timeout, what, interval=0.1)


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save what the browser shows; copied to $PROMPTD_SCREENSHOTS when set."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("PROMPTD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def test_page_upload_streams_the_stages_and_shows_the_prompt(
    site: tuple[ApiWorld, str], page: Any, tmp_path: Path
) -> None:
    """Pick an image, analyse it: every stage ticks, the prompt and the analysis appear."""
    world, url = site
    image = world.inbox / "samples" / "sunset.jpg"
    page.goto(url)
    page.set_input_files("#file", str(image))
    page.fill("#user-prompt", "a calm evening over the lake")
    page.click("#analyze")
    page.wait_for_selector("#stages li[data-stage=complete].done")
    prompt = page.inner_text("#prompt")
    assert len(prompt) > 10
    assert page.locator("#stages li.done").count() == 4
    assert page.locator("#analysis .category").count() == 5
    until(page, "document.getElementById('prompt-tokens').textContent.includes('/ 75')", "a count")
    last = world.ollama.bodies()[-1]["messages"][-1]["content"]
    assert "<user_instructions>\na calm evening over the lake\n</user_instructions>" in last
    assert screenshot(page, tmp_path, "review-analyze").stat().st_size > 10_000


def test_page_gallery_filters_by_status_and_text(
    site: tuple[ApiWorld, str], page: Any, tmp_path: Path
) -> None:
    """The gallery lists the inbox; a status chip and the search box narrow it."""
    _world, url = site
    page.goto(url + "#gallery")
    page.wait_for_selector("#grid figure")
    assert page.locator("#grid figure").count() == 10
    loaded = (
        "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    until(page, loaded, "the thumbnails")
    assert page.locator("#grid .placeholder").count() == 1  # the broken image has none
    screenshot(page, tmp_path, "review-gallery")
    page.click("#chips button[data-status=error]")
    until(page, "document.querySelectorAll('#grid figure').length === 1", "the page")
    assert "broken.png" in page.inner_text("#grid")
    page.click("#chips button[data-status=all]")
    page.fill("#search", "sunset")
    until(page, "document.querySelectorAll('#grid figure').length === 1", "the page")
    assert "sunset.jpg" in page.inner_text("#grid")


def test_page_caption_edit_counts_tokens_and_lands_on_disk(
    site: tuple[ApiWorld, str], page: Any, tmp_path: Path
) -> None:
    """Open an image, edit its caption (the counter turns red past 75), save: the .txt has it."""
    world, url = site
    page.goto(url + "#gallery")
    page.fill("#search", "still-life")
    until(page, "document.querySelectorAll('#grid figure').length === 1", "the page")
    page.click("#grid figure")
    page.wait_for_selector("#detail[open]")
    until(page, "document.getElementById('detail-image').naturalWidth > 0", "the page")
    page.fill("#caption", "red, " * 60)
    page.wait_for_selector("#caption-tokens.over")
    screenshot(page, tmp_path, "review-caption-over")
    page.fill("#caption", "a blue vase with three fruits on a wooden table, soft light")
    until(
        page,
        "!document.getElementById('caption-tokens').classList.contains('over') && document.getElementById('caption-tokens').textContent.includes('/ 75')",
        "the page",
    )
    page.click("#save")
    until(page, "document.getElementById('saved').textContent.startsWith('Saved')", "the page")
    txt = world.inbox / "samples" / "still-life.txt"
    assert txt.read_text("utf-8") == "a blue vase with three fruits on a wooden table, soft light\n"
    assert "yours" in page.inner_text("#caption-owner")
    screenshot(page, tmp_path, "review-caption")


def test_page_find_and_replace_previews_then_writes(
    site: tuple[ApiWorld, str], page: Any, tmp_path: Path
) -> None:
    """Find-and-replace shows each change first and writes only on Apply."""
    world, url = site
    page.goto(url + "#gallery")
    page.wait_for_selector("#grid figure")
    page.click("#chips button[data-status=ok]")
    page.click("#toggle-replace")
    word = (
        world.client.get("/api/gallery", params={"status": "ok"})
        .json()["items"][0]["caption"]
        .split(",")[0]
        .strip()
    )
    page.fill("#find", word)
    page.fill("#replace-with", "WORD")
    page.click("#preview-replace")
    page.wait_for_selector("#changes li")
    screenshot(page, tmp_path, "review-replace")
    assert not any("WORD" in p.read_text("utf-8") for p in world.inbox.rglob("*.txt"))
    page.click("#apply-replace")
    until(
        page, "document.getElementById('replace-note').textContent.startsWith('Wrote')", "the page"
    )
    assert any("WORD" in p.read_text("utf-8") for p in world.inbox.rglob("*.txt"))
