"""Who can be reached about a loan: its officer and parties, kept encrypted from loan.stage.v1."""

from __future__ import annotations

from typing import TypedDict, cast

from shared.crypto import Cipher


class Person(TypedDict, total=False):
    """An officer (`id`) or a party (`party_id`, `role`), with whatever of their address we know."""

    id: str
    party_id: str
    role: str
    name: str | None
    phone: str | None
    email: str | None
    language: str | None
    timezone: str | None


class Contacts(TypedDict, total=False):
    officer: Person
    parties: list[Person]


def open_contacts(cipher: Cipher, sealed: str) -> Contacts:
    """The loan's contacts from their encrypted column (written by seal_contacts)."""
    return cast(Contacts, cipher.decrypt_json(sealed))


def seal_contacts(cipher: Cipher, contacts: Contacts) -> str:
    return cipher.encrypt_json(dict(contacts))
