"""The callback policy file (CONTRACT.md section 4): parsed and validated once at start."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.events import ClockTime, ReasonCode, Role, Stage


def _non_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative")
    return value


Duration = Annotated[timedelta, AfterValidator(_non_negative)]


def minutes_of_day(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CallingHours(_Section):
    start: ClockTime = "09:00"
    end: ClockTime = "20:00"
    holidays: Literal["CN", ""] = "CN"

    @model_validator(mode="after")
    def _ordered(self) -> CallingHours:
        if minutes_of_day(self.start) >= minutes_of_day(self.end):
            raise ValueError("start must be before end")
        return self


class Notice(_Section):
    lead: Duration = timedelta(hours=24)
    quiet_start: ClockTime = "21:00"
    quiet_end: ClockTime = "08:00"


class Attempts(_Section):
    first_call_within_business_days: int = Field(default=1, ge=0, le=60)
    deadline_business_days: int = Field(default=5, ge=1, le=120)
    max_calls: int = Field(default=3, ge=1, le=20)
    min_gap: Duration = timedelta(hours=4)
    max_calls_per_person_per_day: int = Field(default=2, ge=1, le=20)
    # Beyond the contract's keys: where one part of the day ends and the next begins (a retry goes to
    # another part than the failed call); [] makes the whole day one part.
    day_parts: list[ClockTime] = ["12:00", "18:00"]

    @model_validator(mode="after")
    def _parts_ordered(self) -> Attempts:
        minutes = [minutes_of_day(b) for b in self.day_parts]
        if minutes != sorted(set(minutes)):
            raise ValueError("day_parts must be distinct clock times in increasing order")
        return self


class Escalation(_Section):
    notify_officer_on_refusal: bool = True
    escalate_reasons: list[ReasonCode] = ["privacy_concern", "distrust", "suspected_fraud"]
    escalate_after_refusals_per_loan: int = Field(default=2, ge=1)
    ack_timeout: Duration = timedelta(hours=4)
    level1: str = Field(default="branch_supervisor", min_length=1)
    level2: str = Field(default="risk_compliance", min_length=1)
    questionnaire_url: str = ""  # "" = the party's own page (CONTRACT.md 3.1); else the bank's URL


class Bank(_Section):
    name: str = Field(default="Huifang Demo Bank", min_length=1, max_length=100)
    hotline: str = Field(default="95500", pattern=r"^\+?[0-9][0-9 -]{2,19}$")


class SelfService(_Section):
    enabled: bool = True
    confirm_closes: bool = True
    slots_offered: int = Field(default=6, ge=0, le=20)


ArmName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class Arm(_Section):
    """One arm of an experiment (CONTRACT.md 2.4): its share of loans and how its parties are told."""

    name: ArmName
    weight: float = Field(ge=0)
    caller_code: bool | None = None  # None: as without the experiment
    self_service: bool | None = None
    notice_lead: Duration | None = None
    message: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")


class Experiment(_Section):
    name: ArmName
    arms: list[Arm] = Field(min_length=1)

    @model_validator(mode="after")
    def _arms(self) -> Experiment:
        if sum(arm.weight for arm in self.arms) <= 0:
            raise ValueError("the arms' weights must add up to more than 0")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be distinct")
        return self


class Policy(_Section):
    stages: dict[Stage, list[Role]] = {"final_check": ["borrower", "co_borrower", "guarantor"]}
    calling_hours: CallingHours = CallingHours()
    notice: Notice = Notice()
    attempts: Attempts = Attempts()
    escalation: Escalation = Escalation()
    bank: Bank = Bank()
    self_service: SelfService = SelfService()
    experiments: list[Experiment] = []

    @model_validator(mode="after")
    def _experiments_distinct(self) -> Policy:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError("experiments: names must be distinct")
        return self

    def arm(self, *, experiment: str, name: str) -> Arm | None:
        """An arm of a running experiment; None once the experiment or the arm has left the policy."""
        found = next((e for e in self.experiments if e.name == experiment), None)
        return next((a for a in found.arms if a.name == name), None) if found else None

    def message_variant(self, arms: dict[str, str]) -> str | None:
        """The notice template variant a callback's arms ask for (a later experiment wins); None for the default."""
        variant = None
        for experiment, name in arms.items():
            arm = self.arm(experiment=experiment, name=name)
            if arm is not None and arm.message is not None:
                variant = arm.message
        return variant


class PolicyError(RuntimeError):
    """The policy file does not validate; the message names the key."""


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file, or raise PolicyError naming the offending key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path} is not valid TOML: {exc}") from None
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise PolicyError(f"policy file {path} is invalid: {problems}") from None
