"""The one label table: human names, in zh-CN and en, of the contract's vocabulary.

The notifier's templates (the only prose a person reads), the ops dashboard and the scheduler (the
`purpose` and `topics` CONTRACT.md 2.3 puts on a notice) all read their names here. Python rather than
a data file: mypy checks every code against the contract's Literals and every label for both languages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, TypedDict

from shared.events import ExpiryReason, ReasonCode, Role, Stage, message_language

Language = Literal["zh-CN", "en"]
# What the agent must confirm on a call (`verification_items` on the callback events).
VerificationItem = Literal["identity", "loan_amount", "loan_purpose", "role_consent"]
VERIFICATION_ITEMS: Final[tuple[VerificationItem, ...]] = ("identity", "loan_amount", "loan_purpose", "role_consent")

# One name in every language we write in; a missing translation is a type error.
Label = TypedDict("Label", {"zh-CN": str, "en": str})

ROLES: Final[Mapping[Role, Label]] = {
    "borrower": {"zh-CN": "借款人", "en": "borrower"},
    "co_borrower": {"zh-CN": "共同借款人", "en": "co-borrower"},
    "guarantor": {"zh-CN": "担保人", "en": "guarantor"},
}
STAGES: Final[Mapping[Stage, Label]] = {
    "application_submitted": {"zh-CN": "申请已提交", "en": "application submitted"},
    "initial_review_passed": {"zh-CN": "初审通过", "en": "initial review passed"},
    "final_check": {"zh-CN": "终审核查", "en": "final check"},
    "approved": {"zh-CN": "已审批", "en": "approved"},
    "rejected": {"zh-CN": "已拒绝", "en": "rejected"},
    "withdrawn": {"zh-CN": "已撤回", "en": "withdrawn"},
    "disbursed": {"zh-CN": "已放款", "en": "disbursed"},
}
# Why a callback opened at this stage is made, as the party is told (policy decides which stages call).
PURPOSES: Final[Mapping[Stage, Label]] = {
    "application_submitted": {
        "zh-CN": "您的房贷申请受理后的核实回访",
        "en": "Verification call about your new mortgage application",
    },
    "initial_review_passed": {
        "zh-CN": "您的房贷申请初审通过后的核实回访",
        "en": "Verification call for your mortgage application after its initial review",
    },
    "final_check": {
        "zh-CN": "您的房贷申请审批前的核实回访",
        "en": "Verification call for your mortgage application before approval",
    },
    "approved": {
        "zh-CN": "您的房贷获批后、放款前的核实回访",
        "en": "Verification call for your approved mortgage before it is paid out",
    },
    "rejected": {"zh-CN": "关于您的房贷申请的核实回访", "en": "Verification call about your mortgage application"},
    "withdrawn": {"zh-CN": "关于您的房贷申请的核实回访", "en": "Verification call about your mortgage application"},
    "disbursed": {"zh-CN": "您的房贷放款后的回访", "en": "Follow-up call after your mortgage was paid out"},
}
VERIFICATION_ITEM_NAMES: Final[Mapping[VerificationItem, Label]] = {
    "identity": {"zh-CN": "身份核实", "en": "your identity"},
    "loan_amount": {"zh-CN": "贷款金额", "en": "the loan amount"},
    "loan_purpose": {"zh-CN": "贷款用途", "en": "the purpose of the loan"},
    "role_consent": {
        "zh-CN": "您在贷款中的角色及是否同意继续办理",
        "en": "your role in the loan and consent to proceed",
    },
}
REASONS: Final[Mapping[ReasonCode, Label]] = {
    "distrust": {"zh-CN": "不信任来电或银行", "en": "does not trust the caller or the bank"},
    "privacy_concern": {"zh-CN": "担心个人信息泄露", "en": "worried about personal data"},
    "time_conflict": {"zh-CN": "时间不便", "en": "wrong time"},
    "communication_barrier": {"zh-CN": "沟通障碍", "en": "language or communication barrier"},
    "process_misunderstanding": {"zh-CN": "认为回访没有必要", "en": "thinks the callback is unnecessary"},
    "emotional_distress": {"zh-CN": "情绪紧张", "en": "stressed or anxious"},
    "suspected_fraud": {"zh-CN": "称从未申请贷款", "en": "says they never applied"},
    "other": {"zh-CN": "其他原因", "en": "other reason"},
}
EXPIRY_REASONS: Final[Mapping[ExpiryReason, Label]] = {
    "deadline": {"zh-CN": "回访期限已过", "en": "the callback deadline passed"},
    "attempts_exhausted": {"zh-CN": "多次致电未能联系上", "en": "could not be reached after several calls"},
}
# The tables by the name templates use for them.
TABLES: Final[Mapping[str, Mapping[Any, Label]]] = {
    "roles": ROLES,
    "stages": STAGES,
    "purposes": PURPOSES,
    "items": VERIFICATION_ITEM_NAMES,
    "reasons": REASONS,
    "expiry_reasons": EXPIRY_REASONS,
}


def names(language: str) -> dict[str, dict[str, str]]:
    """Every table as code -> name in one language (English for any en-*, otherwise Chinese)."""
    lang = message_language(language)
    return {table: {code: label[lang] for code, label in labels.items()} for table, labels in TABLES.items()}


def name(table: Mapping[Any, Label], code: str, language: str) -> str:
    """One code's name; a code without a label is a KeyError, never a silent raw code."""
    # Keys typed Any: one accessor for every table, each keyed by its own Literal.
    return table[code][message_language(language)]


def purpose(*, stage: str, language: str) -> str:
    """Why the party is called, in their language."""
    return name(PURPOSES, stage, language)


def topics(*, items: Iterable[VerificationItem], language: str) -> list[str]:
    """What the call will cover, in the party's language."""
    return [name(VERIFICATION_ITEM_NAMES, item, language) for item in items]
