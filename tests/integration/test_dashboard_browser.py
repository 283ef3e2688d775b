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
# The agents' and branches' bars carry their 95% intervals (drawn as error bars) and n.
RATE_BARS_HAVE_INTERVALS = """id => {
  const set = Chart.getChart(id).data.datasets[0];
  return set.data.length > 0 && set.data.every((r, i) => set.low[i] <= r && r <= set.high[i] && set.n[i] > 0);
}"""
# The experiments panel: each arm of the test policy's A/A experiment, an error bar on every arm with data.
ARMS = """() => [...document.querySelectorAll('[data-experiment="aa_check"] g.arm')].map(g => {
  const bar = g.querySelector('.errorbar line'), box = bar ? bar.getBoundingClientRect() : null;
  return {arm: g.dataset.arm, n: Number(g.dataset.n), low: g.dataset.low, high: g.dataset.high,
          errorbars: g.querySelectorAll('.errorbar line').length, width: box ? box.width : 0,
          label: g.querySelector('.name').textContent};
})"""
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
            response = await client.post(f"/v1/callbacks/{callbacks[role]}/attempts", json=body)
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
            for chart in ("chart-branches", "chart-agents"):
                assert await page.evaluate(RATE_BARS_HAVE_INTERVALS, chart), f"{chart} bars lack intervals"
            arms = await page.evaluate(ARMS)
            assert [a["arm"] for a in arms] == ["a", "b"]
            assert sum(a["n"] for a in arms) >= 2  # this test's two answered calls, at least
            for arm in arms:
                assert arm["label"] == f"{arm['arm']} (n={arm['n']})"
                if arm["n"]:  # the interval's whisker and its two caps, drawn with a visible width
                    assert arm["errorbars"] == 3 and arm["width"] > 0 and float(arm["low"]) < float(arm["high"]), arm
            [verdict] = await page.locator("[data-experiment=aa_check] [data-verdict]").all_inner_texts()
            assert " · " in verdict and ("p" in verdict or "not enough data yet" in verdict)

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
