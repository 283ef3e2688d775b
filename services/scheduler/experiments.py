"""Experiment arms (CONTRACT.md 2.4): which arm a loan is in, and what that arm changes.

A loan's arm is a stable hash of the experiment's name and the loan id (sha256, the same in every
process and on every machine), so all parties of a loan share it; once a callback holds an
assignment, the scheduler keeps it, so changing an experiment's weights does not move assigned loans.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.policy import Policy

SCALE = 2**64


def bucket(*, experiment: str, loan_id: str) -> float:
    """A loan's place in [0, 1) for one experiment, from sha256 of the experiment name and the loan id."""
    digest = hashlib.sha256(f"{experiment}\x00{loan_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / SCALE


def assign_arm(*, experiment: str, weights: Sequence[tuple[str, float]], loan_id: str) -> str:
    """The arm a loan falls in, each arm taking its weight's share of the [0, 1) line, in order."""
    total = sum(weight for _, weight in weights)
    if total <= 0:
        raise ValueError("the weights must add up to more than 0")
    point = bucket(experiment=experiment, loan_id=loan_id) * total
    upto = 0.0
    for name, weight in weights:
        upto += weight
        if point < upto and weight > 0:
            return name
    return next(name for name, weight in reversed(weights) if weight > 0)  # rounding at the very top


def assign(*, policy: Policy, loan_id: str, kept: Mapping[str, str]) -> dict[str, str]:
    """The loan's arm in each running experiment: the one it already holds if that arm still exists, else hashed."""
    arms = {}
    for experiment in policy.experiments:
        names = [arm.name for arm in experiment.arms]
        held = kept.get(experiment.name)
        arms[experiment.name] = (
            held
            if held in names
            else assign_arm(
                experiment=experiment.name, weights=[(a.name, a.weight) for a in experiment.arms], loan_id=loan_id
            )
        )
    return arms


@dataclass(frozen=True, kw_only=True)
class Treatment:
    """What a callback's arms change: the policy in force for it, and whether it carries a caller code."""

    policy: Policy
    caller_code: bool


def treatment(*, policy: Policy, arms: Mapping[str, str]) -> Treatment:
    """Apply the overrides of the callback's arms, in the policy's experiment order (a later one wins)."""
    notice, self_service = policy.notice, policy.self_service
    caller_code = True
    for experiment, name in arms.items():
        arm = policy.arm(experiment=experiment, name=name)
        if arm is None:
            continue  # the experiment or the arm has since left the policy: nothing to apply
        if arm.notice_lead is not None:
            notice = notice.model_copy(update={"lead": arm.notice_lead})
        if arm.self_service is not None:
            self_service = self_service.model_copy(update={"enabled": arm.self_service})
        if arm.caller_code is not None:
            caller_code = arm.caller_code
    effective = policy.model_copy(update={"notice": notice, "self_service": self_service})
    return Treatment(policy=effective, caller_code=caller_code)


def parse(raw: str | None) -> dict[str, str]:
    """A callback's stored arms (JSON object experiment → arm)."""
    value = json.loads(raw or "{}")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
