"""docs/asyncapi.yaml: generated from the event models, accepted by the official AsyncAPI parser, never stale."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.asyncapi import DLQ_HEADERS, asyncapi_document, asyncapi_yaml
from shared.events import DLQ_SUFFIX, EVENT_MODELS, TOPICS

ROOT = Path(__file__).resolve().parents[2]
PARSER = ROOT / ".local" / "asyncapi" / "node_modules" / "@asyncapi" / "parser"
VALIDATE = ROOT / "infra" / "asyncapi" / "validate.cjs"

# CONTRACT.md 2.1: producers and consumers of each topic.
CONTRACT_TOPOLOGY = {
    "loan.stage.v1": (["los"], ["scheduler", "notifier"]),
    "callback.lifecycle.v1": (["scheduler"], ["outcomes", "notifier", "dialers"]),
    "callback.outcome.v1": (["outcomes"], ["scheduler", "analytics"]),
    "callback.refused.v1": (["outcomes"], ["notifier", "risk"]),
    "loan.verification.v1": (["outcomes"], ["los"]),
    "notification.v1": (["notifier"], ["outcomes", "audit"]),
}


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Run @asyncapi/parser (installed by `make asyncapi-parser`) once over the generated and a broken document."""
    assert PARSER.is_dir(), "the AsyncAPI parser is not installed: run `make asyncapi-parser` (make test does)"
    folder = tmp_path_factory.mktemp("asyncapi")
    generated = folder / "generated.yaml"
    generated.write_text(asyncapi_yaml())
    # A dangling channel reference, what a bad generator would write: the check must not be vacuous.
    doc = asyncapi_document()
    next(iter(doc["operations"].values()))["channel"] = {"$ref": "#/channels/noSuchChannel"}
    broken = folder / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc, allow_unicode=True))
    env = {**os.environ, "NODE_PATH": str(PARSER.parent.parent)}
    result = subprocess.run(
        ["node", str(VALIDATE), str(generated), str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {
        Path(v["file"]).stem: {**v, "errors_found": [d for d in lines if d["file"] == v["file"] and "code" in d]}
        for v in lines
        if "valid" in v
    }


def test_the_official_parser_accepts_the_generated_document(verdicts: dict[str, dict[str, Any]]) -> None:
    verdict = verdicts["generated"]
    assert verdict["valid"], verdict["errors_found"]
    assert (verdict["version"], verdict["channels"]) == ("3.0.0", 2 * len(TOPICS))


def test_the_official_parser_rejects_a_broken_document(verdicts: dict[str, dict[str, Any]]) -> None:
    verdict = verdicts["broken"]
    assert not verdict["valid"]
    assert any(d["severity"] == 0 for d in verdict["errors_found"])


def test_the_committed_document_is_what_the_generator_writes_now() -> None:
    committed = (ROOT / "docs" / "asyncapi.yaml").read_text()
    assert committed == asyncapi_yaml(), "docs/asyncapi.yaml is stale: run `make schemas` and commit it"


def _channel(doc: dict[str, Any], address: str) -> dict[str, Any]:
    found = [c for c in doc["channels"].values() if c["address"] == address]
    assert len(found) == 1, address
    return found[0]


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_topic_has_its_producers_consumers_and_a_dead_letter_channel() -> None:
    doc = asyncapi_document()
    for topic, (producers, consumers) in CONTRACT_TOPOLOGY.items():
        channel = _channel(doc, topic)
        assert channel["x-producers"] == producers, topic
        assert sorted(channel["x-consumers"]) == sorted(consumers), topic
        ops = [op for op in doc["operations"].values() if op["channel"]["$ref"].endswith("/" + _key(doc, topic))]
        assert sorted((op["action"], op["tags"][0]["name"]) for op in ops) == sorted(
            [("send", p) for p in producers] + [("receive", c) for c in consumers]
        )
        dead = _channel(doc, topic + DLQ_SUFFIX)
        message = _resolve(doc, dead["messages"]["DeadLetter"]["$ref"])
        assert set(message["headers"]["required"]) == set(DLQ_HEADERS)
        assert {"dlq.error", "dlq.consumer", "dlq.topic", "dlq.partition", "dlq.offset"} == set(DLQ_HEADERS)


def _key(doc: dict[str, Any], address: str) -> str:
    return next(k for k, c in doc["channels"].items() if c["address"] == address)


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.event_type)
def test_each_event_has_envelope_key_and_its_own_payload_schema(model: Any) -> None:
    doc = asyncapi_document()
    channel = _channel(doc, model.topic)
    message = _resolve(doc, channel["messages"][model.__name__]["$ref"])
    assert message["name"] == model.event_type
    assert message["contentType"] == "application/cloudevents+json"
    assert message["bindings"]["kafka"]["key"]["description"].startswith("The loan_id")
    envelope, specific = message["payload"]["allOf"]
    cloud_event = _resolve(doc, envelope["$ref"])
    assert {"specversion", "id", "source", "type", "traceparent", "tracestate"} <= set(cloud_event["properties"])
    assert specific["properties"]["type"]["const"] == model.event_type
    data = _resolve(doc, specific["properties"]["data"]["$ref"])
    # Every field of the model is in its schema: a field added to the model appears on regenerating.
    assert set(data["properties"]) == set(model.model_fields)
    assert set(data.get("required", [])) == {n for n, f in model.model_fields.items() if f.is_required()}
