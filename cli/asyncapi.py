"""The AsyncAPI 3.0 document of every topic, generated from the event models and the services' handlers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic.json_schema import models_json_schema

from shared.events import CONTENT_TYPE, DLQ_SUFFIX, EVENT_MODELS, TOPICS, EventData

KAFKA_BINDING = "0.5.0"
REF = "#/components/schemas/{model}"

# Producers and consumers outside Huifang (CONTRACT.md 2.1); Huifang's own come from the code.
EXTERNAL_PRODUCERS: Mapping[str, str] = {"loan.stage.v1": "los"}
EXTERNAL_CONSUMERS: Mapping[str, tuple[str, ...]] = {
    "callback.lifecycle.v1": ("dialers",),
    "callback.outcome.v1": ("analytics",),
    "callback.refused.v1": ("risk",),
    "loan.verification.v1": ("los",),
    "notification.v1": ("audit",),
}
PARTIES: Mapping[str, str] = {
    "los": "Upstream loan-origination systems",
    "dialers": "Dialers and agent desks",
    "analytics": "Analytics",
    "risk": "Downstream risk systems",
    "audit": "Audit and other downstream systems",
    "scheduler": "Huifang scheduler",
    "outcomes": "Huifang outcomes",
    "notifier": "Huifang notifier",
}
DLQ_HEADERS: Mapping[str, str] = {
    "dlq.error": "Why the message could not be processed (names fields, never their values)",
    "dlq.consumer": "The service whose consumer refused it",
    "dlq.topic": "The topic it came from",
    "dlq.partition": "Its partition there (decimal)",
    "dlq.offset": "Its offset there (decimal)",
}


def service_topics() -> dict[str, dict[str, set[str]]]:
    """Per Huifang service, the topics it consumes (its handlers) and produces (events it emits)."""
    from services.notifier.handlers import HANDLERS as notifier
    from services.outcomes.handlers import HANDLERS as outcomes
    from services.scheduler.handlers import HANDLERS as scheduler

    consumed = {"scheduler": scheduler, "outcomes": outcomes, "notifier": notifier}
    produced = {
        "scheduler": {"callback.lifecycle.v1"},
        "outcomes": {"callback.outcome.v1", "callback.refused.v1", "loan.verification.v1"},
        "notifier": {"notification.v1"},
    }
    return {
        name: {"consumes": {model.topic for model in handlers}, "produces": produced[name]}
        for name, handlers in consumed.items()
    }


def _camel(name: str) -> str:
    parts = name.replace("-", ".").replace("_", ".").split(".")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _channel_id(topic: str) -> str:
    return _camel(topic.removesuffix(".v1").replace(".v1.", "."))


def _message_id(model: type[EventData]) -> str:
    return model.__name__


def envelope_schema() -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode envelope with the distributed-tracing extension."""
    return {
        "type": "object",
        "description": "A CloudEvents 1.0 event in structured JSON mode; `data` holds the event's payload.",
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": {
            "specversion": {"type": "string", "const": "1.0"},
            "id": {"type": "string", "minLength": 1, "description": "Unique per event; consumers dedupe on it"},
            "source": {"type": "string", "minLength": 1, "examples": ["/huifang/outcomes"]},
            "type": {"type": "string", "minLength": 1},
            "time": {"type": "string", "format": "date-time", "description": "RFC 3339 with an offset"},
            "subject": {"type": "string", "description": "The loan_id"},
            "datacontenttype": {"type": "string", "const": "application/json"},
            "traceparent": {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "CloudEvents distributed-tracing extension: W3C trace context of the producer",
            },
            "tracestate": {"type": "string", "description": "W3C tracestate accompanying traceparent"},
            "data": {"type": "object"},
        },
    }


def _parties(topic: str, topology: Mapping[str, Mapping[str, set[str]]]) -> tuple[list[str], list[str]]:
    producers = [s for s, t in topology.items() if topic in t["produces"]]
    if topic in EXTERNAL_PRODUCERS:
        producers.append(EXTERNAL_PRODUCERS[topic])
    consumers = [s for s, t in topology.items() if topic in t["consumes"]] + list(EXTERNAL_CONSUMERS.get(topic, ()))
    return producers, consumers


def _operation(*, action: str, party: str, channel: str, messages: list[dict[str, str]], title: str) -> dict[str, Any]:
    """One AsyncAPI operation of one party on one channel."""
    return {
        "action": action,
        "title": title,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": messages,
        "tags": [{"name": party}],
    }


def asyncapi_document() -> dict[str, Any]:
    """The whole AsyncAPI 3.0 document as plain data (dump it as YAML or JSON)."""
    topology = service_topics()
    _, top = models_json_schema([(m, "validation") for m in EVENT_MODELS], ref_template=REF)
    schemas: dict[str, Any] = {"CloudEvent": envelope_schema(), **top.get("$defs", {})}
    key = {"type": "string", "description": "The loan_id: all events of one loan keep their order"}
    messages: dict[str, Any] = {}
    for model in EVENT_MODELS:
        personal = " Carries personal data (name, phone, email)." if model.personal else " Ids only."
        messages[_message_id(model)] = {
            "name": model.event_type,
            "title": model.event_type,
            "summary": f"`{model.event_type}` on `{model.topic}`.{personal}",
            "contentType": CONTENT_TYPE,
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/CloudEvent"},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string", "const": model.event_type},
                            "data": {"$ref": REF.format(model=model.__name__)},
                        },
                    },
                ]
            },
            "bindings": {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING}},
        }
    messages["DeadLetter"] = {
        "name": "dead-letter",
        "title": "dead letter",
        "summary": "The original message, unchanged, with headers saying why and where it came from.",
        "headers": {
            "type": "object",
            "required": list(DLQ_HEADERS),
            "properties": {name: {"type": "string", "description": text} for name, text in DLQ_HEADERS.items()},
        },
        "payload": {"description": "The original message value, byte for byte (it may not even be JSON)."},
        "bindings": {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING}},
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in TOPICS:
        models = [m for m in EVENT_MODELS if m.topic == topic]
        producers, consumers = _parties(topic, topology)
        cid = _channel_id(topic)
        refs = {_message_id(m): {"$ref": f"#/components/messages/{_message_id(m)}"} for m in models}
        channels[cid] = {
            "address": topic,
            "title": topic,
            "description": (
                f"Produced by {', '.join(PARTIES[p] for p in producers)}; "
                f"consumed by {', '.join(PARTIES[c] for c in consumers)}. "
                "Prefixed with HUIFANG_TOPIC_PREFIX when set."
            ),
            "messages": refs,
            "x-producers": producers,
            "x-consumers": consumers,
        }
        dlq = cid + "DeadLetter"
        channels[dlq] = {
            "address": topic + DLQ_SUFFIX,
            "title": topic + DLQ_SUFFIX,
            "description": f"Messages of {topic} that a consumer could not process; read by ops.",
            "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
        }
        channel_messages = [{"$ref": f"#/channels/{cid}/messages/{m}"} for m in refs]
        for party in producers:
            operations[_camel(f"{party}.send.{cid}")] = _operation(
                action="send", party=party, channel=cid, messages=channel_messages, title=f"{PARTIES[party]} publishes"
            )
        for party in consumers:
            operations[_camel(f"{party}.receive.{cid}")] = _operation(
                action="receive",
                party=party,
                channel=cid,
                messages=channel_messages,
                title=f"{PARTIES[party]} consumes",
            )
        for party in (c for c in consumers if c in topology):
            operations[_camel(f"{party}.send.{dlq}")] = _operation(
                action="send",
                party=party,
                channel=dlq,
                messages=[{"$ref": f"#/channels/{dlq}/messages/DeadLetter"}],
                title=f"{PARTIES[party]} dead-letters what it cannot process",
            )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Huifang (回访) events",
            "version": "1",
            "description": (
                "Every topic of Huifang's public contract (CONTRACT.md section 2). Every message is a "
                "CloudEvents 1.0 event in structured JSON mode, keyed by loan_id. Generated by "
                "`huifang schemas` from the event models; do not edit by hand."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The single-node broker of `make run`; set KAFKA_BOOTSTRAP_SERVERS elsewhere",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def asyncapi_yaml() -> str:
    """The document as YAML, keys in a stable order so regenerating it changes nothing."""
    import yaml

    text: str = yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=120)
    return "# Generated by `huifang schemas` from shared/events.py; do not edit by hand.\n" + text
