"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): log in, charts, refresh, log out."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.async_api import async_playwright

from tests.outcomes_support import due_callbacks
from tests.support import KEYS, Huifang

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHART_HAS_DATA = """id => {
  const chart = Chart.getChart(id);
  return !!chart && chart.data.datasets.some(d => d.data.some(v => v !== null && v > 0));
}"""
CANVAS_IS_DRAWN = """id => {
  const c = document.getElementById(id);
  const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) return true;
  return false;
}"""


async def answer(huifang: Huifang, roles: tuple[str, ...], dispositions: list[dict[str, str]]) -> None:
    """Publish a loan and record one attempt per party."""
    _, callbacks = await due_callbacks(huifang, roles=roles)
    async with huifang.client("outcomes") as client:
        for role, body in zip(roles, dispositions, strict=True):
            response = await client.post(f"/v1/callbacks/{callbacks[role]}/attempts", json={**body})
            assert response.status_code == 201, response.text


async def test_dashboard_renders_charts_and_refreshes_in_chromium(huifang: Huifang) -> None:
    started = time.monotonic()
    await answer(
        huifang,
        ("borrower", "guarantor"),
        [{"disposition": "completed"}, {"disposition": "refused", "reason_code": "distrust"}],
    )
    OUTPUT.mkdir(exist_ok=True)
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 1100})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            await page.goto(huifang.url("outcomes") + "/dashboard")
            assert "/dashboard/login?next=" in page.url
            await page.fill("#key", KEYS["supervisor"])
            await page.click("button[type=submit]")
            await page.wait_for_url("**/dashboard")
            [cookie] = [c for c in await page.context.cookies() if c["name"] == "huifang_session"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            await page.goto(huifang.url("outcomes") + "/dashboard?refresh=2")
            for chart in ("chart-trend", "chart-reasons", "chart-branches", "chart-agents"):
                await page.wait_for_function(CHART_HAS_DATA, arg=chart, timeout=10_000)
                assert await page.evaluate(CANVAS_IS_DRAWN, chart), f"{chart} drew nothing"
            closed = int(await page.inner_text("#kpi-closed"))

            # Auto-refresh: a call closed now shows up without reloading the page.
            await answer(huifang, ("borrower",), [{"disposition": "refused", "reason_code": "privacy_concern"}])
            await page.wait_for_function(
                f"() => Number(document.getElementById('kpi-closed').textContent) > {closed}", timeout=15_000
            )
            await page.wait_for_function(CHART_HAS_DATA, arg="chart-reasons")
            await page.screenshot(path=str(OUTPUT / f"dashboard-{huifang.kind}.png"), full_page=True)

            await page.click("text=Log out")
            await page.wait_for_url("**/dashboard/login")
            await page.goto(huifang.url("outcomes") + "/dashboard")
            assert "/dashboard/login" in page.url
        finally:
            await browser.close()
    assert problems == []  # no script errors, no Content-Security-Policy violations
    print(f"browser test on {huifang.kind}: {time.monotonic() - started:.1f}s")
