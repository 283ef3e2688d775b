"""Helpers for the party's page tests: a real notice on the topic, its link, and the page's hidden fields."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.outcomes_support import new_id
from tests.support import Huifang, loan_event, wait_for

FORM_FIELD = re.compile(r'name="form" value="([^"]+)"')
SLOT = re.compile(r'name="slot" value="([^"]+)"')


async def noticed(huifang: Huifang, *, language: str = "zh-CN", name: str = "张伟") -> tuple[str, dict[str, Any]]:
    """Publish a loan with one borrower; (loan_id, data of its callback.notice.requested read from the topic)."""
    loan = new_id("L")
    event = loan_event(loan, roles=("borrower",))
    event["parties"][0].update(language=language, name=name, email=f"{loan}@example.com")
    await huifang.publish_event("loan.stage.changed", event, key=loan)
    [notice] = await huifang.tap.wait_events("callback.notice.requested", loan)
    return loan, notice["data"]


def page_path(data: dict[str, Any]) -> str:
    """The path of the page link an event carries (the link's host is HUIFANG_PUBLIC_URL, not the test's port)."""
    url: str = data["self_service_url"]
    return "/p/" + url.rsplit("/p/", 1)[1]


async def open_page(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """GET the page once outcomes has consumed the notice (it learns of it from the topic)."""
    response: httpx.Response = await wait_for(lambda: _ok(client, path), 30, f"page {path}")
    return response


async def _ok(client: httpx.AsyncClient, path: str) -> httpx.Response | None:
    response = await client.get(path)
    return response if response.status_code == 200 else None


async def post(client: httpx.AsyncClient, path: str, page_html: str, **fields: Any) -> httpx.Response:
    """POST the form back as a browser would: the hidden anti-forgery field plus the chosen fields."""
    form_field = FORM_FIELD.search(page_html)
    assert form_field is not None, "the page carries its anti-forgery field"
    return await client.post(path, data={"form": form_field.group(1), **fields})


def slots(page_html: str) -> list[datetime]:
    return [datetime.fromisoformat(s).astimezone(UTC) for s in SLOT.findall(page_html)]
