"""The party's page in a real headless Chromium (Debian's, driven by Playwright) at a phone's size, no JavaScript."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.integration.test_dashboard_browser import CHROMIUM, FLAGS
from tests.party_support import noticed, open_page, page_path
from tests.support import Huifang

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"
PHONE = {"width": 390, "height": 844}
# Every control a person can use has a name a screen reader reads out.
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
  .filter(el => !(el.labels && el.labels.length) && !el.textContent.trim())
  .map(el => el.outerHTML)"""
OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


async def weigh_and_shoot(browser: Browser, url: str, shot: Path) -> tuple[int, int, list[str]]:
    """Load the page as a phone would: (bytes received, requests made, problems seen); save a screenshot."""
    context = await browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = await context.new_page()
    requests: list[str] = []
    sizes: list[int] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    response = await page.goto(url)
    assert response is not None and response.status == 200
    sizes.append(len(await response.body()))
    assert await page.evaluate(OVERFLOW) <= 0, "the page scrolls sideways on a phone"
    problems += await page.evaluate(UNLABELLED)
    assert await page.get_attribute("html", "lang") in ("zh-CN", "en")
    await page.screenshot(path=str(shot), full_page=True)
    await context.close()
    return sum(sizes), len(requests), problems


# The page's HTML does not depend on the database kind (test_party_page.py runs both): one browser run is enough.
@pytest.mark.parametrize("huifang", ["sqlite"], indirect=True)
async def test_the_page_fits_a_phone_and_works_without_javascript(huifang: Huifang) -> None:
    OUTPUT.mkdir(exist_ok=True)
    parties = {"zh-CN": await noticed(huifang), "en": await noticed(huifang, language="en", name="Anna Lee")}
    base = huifang.url("outcomes")
    async with huifang.client("outcomes", role=None) as client:
        for _, notice in parties.values():
            await open_page(client, page_path(notice))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            for lang, (_, notice) in parties.items():
                shot = OUTPUT / f"party-page-{lang}-{huifang.kind}.png"
                size, count, problems = await weigh_and_shoot(browser, base + page_path(notice), shot)
                assert problems == [], problems
                assert count == 1, "one request: no script, style sheet, font or image to fetch"
                print(f"party page {lang}: {size} bytes, {count} request(s)")
            # Without JavaScript a party still confirms: tick every item, press the button, read the result.
            loan, notice = parties["en"]
            context = await browser.new_context(viewport=PHONE, java_script_enabled=False)
            page = await context.new_page()
            await page.goto(base + page_path(notice))
            for box in await page.locator("input[name=item]").all():
                await box.check()
            await page.click("button[value=confirm]")
            await page.wait_for_load_state()
            assert "completed on this page" in await page.inner_text("main")
            await context.close()
        finally:
            await browser.close()
    [outcome] = await huifang.tap.wait_events("callback.outcome.recorded", loan)
    assert (outcome["data"]["disposition"], outcome["data"]["channel"]) == ("completed", "self_service")
