"""deploy/monitoring/: the alert rules and the Grafana board use only metrics the services expose."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Huifang, wait_for

SERVICES = ("scheduler", "outcomes", "notifier")

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
# Grafana's own variables, given values so the query parses as plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (raises on a query that does not parse)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if type(node).__name__ == "VectorSelector":
            assert node.name, f"select metrics by name, not by matchers alone: {expr}"
            names.add(node.name)
        for attribute in ("lhs", "rhs", "expr", "param", "vector_selector", "args"):
            child = getattr(node, attribute, None)
            for item in child if isinstance(child, list) else [child]:
                if type(item).__module__.startswith("promql_parser"):
                    walk(item)

    walk(promql_parser.parse(expr))
    return names


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def board_queries() -> Iterator[str]:
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            yield expr


async def exposed(huifang: Huifang) -> dict[str, list[Any]]:
    """Every metric family on the three services' /metrics, by every name its samples may take."""
    families: dict[str, list[Any]] = {}
    for service in ("scheduler", "outcomes", "notifier"):
        async with httpx.AsyncClient(base_url=huifang.url(service)) as client:
            text = (await client.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for suffix in SUFFIXES:
                families.setdefault(family.name + suffix, []).extend(family.samples)
    return families


async def test_every_metric_the_alerts_and_the_board_use_is_exposed(huifang: Huifang) -> None:
    rules = alert_rules()
    used_by_alerts = {name for rule in rules for name in metric_names(str(rule["expr"]))}
    used_by_board = {name for expr in board_queries() for name in metric_names(expr)}
    families = await exposed(huifang)
    assert used_by_alerts - families.keys() == set()
    assert used_by_board - families.keys() == set()
    # The alerts: lag, dead letters, outbox age, timer lateness, failed deliveries, level 2, readiness.
    assert {
        "huifang_consumer_lag_messages",
        "huifang_dlq_messages_total",
        "huifang_outbox_oldest_age_seconds",
        "huifang_timer_lateness_seconds_bucket",
        "huifang_notifications_total",
        "huifang_escalations_open",
        "huifang_ready",
    } <= used_by_alerts
    assert used_by_alerts <= used_by_board | {"huifang_consumer_up"}
    for rule in rules:
        assert rule["alert"].startswith("Huifang") and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


async def test_the_new_gauges_report_from_the_running_services(huifang: Huifang) -> None:
    """Lag per partition, the outbox's oldest row, open escalations and readiness have live samples."""

    services = {"scheduler", "outcomes", "notifier"}

    def ours(families: dict[str, list[Any]]) -> list[Any]:
        prefix = huifang.settings.huifang_topic_prefix
        return [s for s in families.get("huifang_consumer_lag_messages", []) if s.labels["topic"].startswith(prefix)]

    async def reported() -> dict[str, list[Any]] | None:
        families = await exposed(huifang)
        every = {s.labels["service"] for s in ours(families)} == services
        return families if every and families.get("huifang_outbox_oldest_age_seconds") else None

    families = await wait_for(reported, what="lag of every service's partitions and the outbox age")
    assert all(s.value >= 0 and s.labels["partition"].isdigit() for s in ours(families))
    ages = {s.labels["service"]: s.value for s in families["huifang_outbox_oldest_age_seconds"]}
    assert {"scheduler", "outcomes", "notifier"} <= ages.keys() and all(v >= 0 for v in ages.values())
    assert {s.labels["level"] for s in families["huifang_escalations_open"]} == {"1", "2"}
    # Other apps in this test process (unit tests' own) report too: these three are the system's.
    ready = {s.labels["service"]: s.value for s in families["huifang_ready"] if s.labels["service"] in SERVICES}
    assert ready == {"scheduler": 1.0, "outcomes": 1.0, "notifier": 1.0}
