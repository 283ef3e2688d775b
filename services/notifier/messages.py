"""What people read: Jinja2 templates per language, and who gets a message at which address."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from services.notifier.contacts import Contacts, Person
from shared import labels
from shared.events import message_language
from shared.policy import Policy, PolicyError

TEMPLATES = Path(__file__).parent / "templates"
LANGUAGES = ("zh-CN", "en")
DEFAULT_LANGUAGE = "zh-CN"
DEFAULT_TIMEZONE = "Asia/Shanghai"
NOTICE_OPTIONAL = ("bank", "hotline", "caller_code", "url", "variant")
# Kinds a person reads (the rest go to systems by webhook only).

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    undefined=StrictUndefined,
    autoescape=False,  # plain-text SMS and email bodies
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Message:
    subject: str
    body: str


@dataclass(frozen=True)
class Composed:
    address: str
    message: Message


def variant_path(*, kind: str, language: str, variant: str) -> str:
    """A message variant's template: the paragraphs an experiment arm adds to the kind's text."""
    return f"{language}/{kind}.{variant}.j2"


def check_variants(policy: Policy) -> None:
    """Stop the start when an arm names a notice variant without a template in every language."""
    for e, experiment in enumerate(policy.experiments):
        for a, arm in enumerate(experiment.arms):
            if arm.message is None:
                continue
            missing = [
                path
                for lang in LANGUAGES
                if not (TEMPLATES / (path := variant_path(kind="notice", language=lang, variant=arm.message))).is_file()
            ]
            if missing:
                raise PolicyError(
                    f"policy key experiments.{e}.arms.{a}.message: no notice variant {arm.message!r} "
                    f"(expected services/notifier/templates/{', '.join(missing)})"
                )


def render(*, kind: str, channel: str, language: str, context: dict[str, Any]) -> Message:
    """Render one message in the recipient's language (zh-CN when we do not have theirs).

    A context `variant` (an experiment arm's message) adds that variant's `sms` or `email` paragraph.
    """
    lang = language if language in LANGUAGES else message_language(language)
    template = _env.get_template(f"{lang}/{kind}.j2")
    # A notice without a caller code or link (an experiment arm, or self-service off) still reads well.
    optional = dict.fromkeys(NOTICE_OPTIONAL) if kind == "notice" else {}
    # Names of roles, reasons and the rest come from the one label table, in the template's language.
    values = {**optional, **context, **labels.names(lang)}
    body = "sms" if channel == "sms" else "email"
    if values.get("variant"):
        extra = _env.get_template(variant_path(kind=kind, language=lang, variant=values["variant"]))
        values["variant_text"] = "".join(extra.blocks[body](extra.new_context(values))).strip()
    ctx = template.new_context({"variant_text": "", **values})

    def block(name: str) -> str:
        return "".join(template.blocks[name](ctx)).strip()

    return Message(subject=block("subject"), body=block(body))


def find_party(contacts: Contacts, party_id: str | None) -> Person | None:
    """The party of the loan's contacts with this id."""
    return next((p for p in contacts.get("parties", []) if p.get("party_id") == party_id), None)


def person_of(contacts: Contacts, recipient: str) -> Person | None:
    """The person a recipient key (`officer:ID` or `party:ID`) names, from the loan's contacts."""
    who, _, ident = recipient.partition(":")
    if who == "officer":
        officer = contacts.get("officer")
        return officer if officer and officer.get("id") == ident else None
    return find_party(contacts, ident) if who == "party" else None


def compose(
    *, kind: str, channel: str, recipient: str, payload: dict[str, Any], contacts: Contacts
) -> Composed | None:
    """Address and text for one email or SMS; None while the recipient or their address is unknown."""
    person = person_of(contacts, recipient)
    if person is None:
        return None
    address = person.get("email") if channel == "email" else person.get("phone")
    if not address:
        return None
    party: Person = find_party(contacts, payload.get("party_id")) or {}
    timezone = person.get("timezone") or DEFAULT_TIMEZONE
    context = {**payload, "name": person.get("name") or "", "party_name": party.get("name") or "", "timezone": timezone}
    if "due_at" in payload:
        due = datetime.fromisoformat(payload["due_at"]).astimezone(ZoneInfo(timezone))
        context["due_local"] = due.strftime("%Y-%m-%d %H:%M")
    language = person.get("language") or DEFAULT_LANGUAGE
    return Composed(address=address, message=render(kind=kind, channel=channel, language=language, context=context))
