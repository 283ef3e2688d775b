"""The policy file (CONTRACT.md section 4): shipped defaults, ISO 8601 durations, errors that name the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shared.policy import Policy, PolicyError, load_policy

SHIPPED = Path(__file__).resolve().parents[2] / "policy.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def assert_contract_defaults(policy: Policy) -> None:
    """The defaults written in CONTRACT.md section 4, value by value."""
    assert policy.stages == {"final_check": ["borrower", "co_borrower", "guarantor"]}
    assert policy.calling_hours.start == "09:00"
    assert policy.calling_hours.end == "20:00"
    assert policy.calling_hours.holidays == "CN"
    assert policy.notice.lead == timedelta(hours=24)
    assert policy.notice.quiet_start == "21:00"
    assert policy.notice.quiet_end == "08:00"
    assert policy.attempts.first_call_within_business_days == 1
    assert policy.attempts.deadline_business_days == 5
    assert policy.attempts.max_calls == 3
    assert policy.attempts.min_gap == timedelta(hours=4)
    assert policy.attempts.max_calls_per_person_per_day == 2
    assert policy.escalation.notify_officer_on_refusal is True
    assert policy.escalation.escalate_reasons == ["privacy_concern", "distrust", "suspected_fraud"]
    assert policy.escalation.escalate_after_refusals_per_loan == 2
    assert policy.escalation.ack_timeout == timedelta(hours=4)
    assert policy.escalation.level1 == "branch_supervisor"
    assert policy.escalation.level2 == "risk_compliance"
    assert policy.escalation.questionnaire_url == ""
    assert policy.bank.name == "Huifang Demo Bank"
    assert policy.bank.hotline == "95500"
    assert policy.self_service.enabled is True
    assert policy.self_service.confirm_closes is True
    assert policy.self_service.slots_offered == 6


def test_shipped_policy_is_the_contract_defaults() -> None:
    assert_contract_defaults(load_policy(SHIPPED))


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, ""))
    assert_contract_defaults(policy)
    assert policy == load_policy(SHIPPED)


def test_model_defaults_are_the_contract_defaults() -> None:
    assert_contract_defaults(Policy())


def test_partial_section_keeps_other_defaults(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "[attempts]\nmax_calls = 5\n"))
    assert policy.attempts.max_calls == 5
    assert policy.attempts.min_gap == timedelta(hours=4)
    assert policy.calling_hours.start == "09:00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT24H", timedelta(hours=24)),
        ("PT4H", timedelta(hours=4)),
        ("PT30S", timedelta(seconds=30)),
        ("P1D", timedelta(days=1)),
        ("PT1H30M", timedelta(hours=1, minutes=30)),
        ("PT0S", timedelta(0)),
    ],
)
def test_durations_are_iso_8601(tmp_path: Path, text: str, expected: timedelta) -> None:
    policy = load_policy(write(tmp_path, f'[notice]\nlead = "{text}"\n[attempts]\nmin_gap = "{text}"\n'))
    assert policy.notice.lead == expected
    assert policy.attempts.min_gap == expected


def test_end_2400_is_accepted_for_calls_at_any_hour(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, '[calling_hours]\nstart = "00:00"\nend = "24:00"\n'))
    assert (policy.calling_hours.start, policy.calling_hours.end) == ("00:00", "24:00")


def test_equal_quiet_start_and_end_is_accepted(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, '[notice]\nquiet_start = "22:00"\nquiet_end = "22:00"\n'))
    assert policy.notice.quiet_start == policy.notice.quiet_end == "22:00"


def test_empty_holiday_calendar_is_accepted(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, '[calling_hours]\nholidays = ""\n')).calling_hours.holidays == ""


@pytest.mark.parametrize(
    ("text", "names"),
    [
        pytest.param('[calling_hours]\nstrat = "09:00"\n', ["calling_hours.strat"], id="unknown-key"),
        pytest.param('[callin_hours]\nstart = "09:00"\n', ["callin_hours"], id="unknown-section"),
        pytest.param('[calling_hours]\nstart = "25:00"\n', ["calling_hours.start"], id="bad-clock"),
        pytest.param('[calling_hours]\nend = "24:30"\n', ["calling_hours.end"], id="past-midnight"),
        pytest.param('[notice]\nquiet_end = "8am"\n', ["notice.quiet_end"], id="clock-not-hh-mm"),
        pytest.param(
            '[calling_hours]\nstart = "21:00"\nend = "20:00"\n', ["calling_hours", "start"], id="start-after-end"
        ),
        pytest.param(
            '[calling_hours]\nstart = "10:00"\nend = "10:00"\n', ["calling_hours", "start"], id="start-equals-end"
        ),
        pytest.param('[notice]\nlead = "-PT1H"\n', ["notice.lead"], id="negative-duration"),
        pytest.param('[notice]\nlead = "soon"\n', ["notice.lead"], id="invalid-duration"),
        pytest.param('[attempts]\nmin_gap = "four hours"\n', ["attempts.min_gap"], id="invalid-min-gap"),
        pytest.param('[escalation]\nack_timeout = "-PT4H"\n', ["escalation.ack_timeout"], id="negative-ack"),
        pytest.param('[stages]\nfinal_check = ["borrower", "boss"]\n', ["stages.final_check"], id="unknown-role"),
        pytest.param('[stages]\nfinal_chek = ["borrower"]\n', ["stages", "final_chek"], id="unknown-stage"),
        pytest.param(
            '[escalation]\nescalate_reasons = ["rude"]\n', ["escalation.escalate_reasons"], id="unknown-reason"
        ),
        pytest.param("[attempts]\nmax_calls = 0\n", ["attempts.max_calls"], id="max-calls-zero"),
        pytest.param('[calling_hours]\nholidays = "US"\n', ["calling_hours.holidays"], id="unknown-calendar"),
    ],
)
def test_invalid_policy_names_the_key(tmp_path: Path, text: str, names: list[str]) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, text))
    for name in names:
        assert name in str(caught.value)


def test_not_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "this is = = not toml\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "absent.toml")


def test_policy_is_immutable() -> None:
    policy = load_policy(SHIPPED)
    with pytest.raises(ValueError):
        policy.attempts.max_calls = 10  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[bank]\nhotline = \"call us\"\n", "bank.hotline"),
        ("[bank]\nname = \"\"\n", "bank.name"),
        ("[self_service]\nslots_offered = 99\n", "self_service.slots_offered"),
        ("[self_service]\nconfirms = true\n", "self_service.confirms"),
    ],
)
def test_bad_bank_or_self_service_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(PolicyError, match=key.replace(".", r"\.")):
        load_policy(write(tmp_path, text))
