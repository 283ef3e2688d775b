"""Experiment arms (CONTRACT.md 2.4): the stable hash assignment, the arms' overrides, the policy's rules."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from services.scheduler.experiments import assign, assign_arm, treatment
from shared.policy import Policy, PolicyError, load_policy

IDS = [f"LN-{n:07d}" for n in range(100_000)]
CALLER_CODE = [("control", 50.0), ("with_code", 50.0)]


def experiment_policy(**arms: dict[str, object]) -> Policy:
    return Policy.model_validate(
        {"experiments": [{"name": "caller_code", "arms": [{"name": k, **v} for k, v in arms.items()]}]}
    )


def test_the_assignment_is_the_same_in_another_process() -> None:
    here = [assign_arm(experiment="caller_code", weights=CALLER_CODE, loan_id=i) for i in IDS[:200]]
    script = (
        "from services.scheduler.experiments import assign_arm\n"
        f"weights, ids = {CALLER_CODE!r}, {IDS[:200]!r}\n"
        "print(','.join(assign_arm(experiment='caller_code', weights=weights, loan_id=i) for i in ids))"
    )
    # A fresh interpreter with another hash seed: Python's hash() would differ, sha256 does not.
    other = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert other.stdout.strip().split(",") == here
    assert set(here) == {"control", "with_code"}


@pytest.mark.parametrize(
    "weights",
    [[("a", 50.0), ("b", 50.0)], [("a", 10.0), ("b", 30.0), ("c", 60.0)], [("a", 1.0), ("b", 0.0), ("c", 3.0)]],
)
def test_arms_get_their_weights_share_within_two_points(weights: list[tuple[str, float]]) -> None:
    seen = Counter(assign_arm(experiment="split", weights=weights, loan_id=i) for i in IDS)
    total = sum(w for _, w in weights)
    for name, weight in weights:
        assert abs(seen[name] / len(IDS) - weight / total) < 0.02, (name, seen)
    assert seen["b"] > 0 or dict(weights)["b"] == 0


def test_two_experiments_split_loans_independently() -> None:
    """Chi-square test of independence on the 2×2 table of the two experiments' arms."""
    table = Counter(
        (
            assign_arm(experiment="caller_code", weights=CALLER_CODE, loan_id=i),
            assign_arm(experiment="notice_lead", weights=[("short", 30.0), ("long", 70.0)], loan_id=i),
        )
        for i in IDS
    )
    rows = {r for r, _ in table}
    cols = {c for _, c in table}
    n = len(IDS)
    chi2 = 0.0
    for r in rows:
        for c in cols:
            expected = sum(table[r, x] for x in cols) * sum(table[y, c] for y in rows) / n
            chi2 += (table[r, c] - expected) ** 2 / expected
    assert chi2 < 10.83  # df = 1, p = 0.001: no sign of dependence


def test_a_kept_assignment_survives_a_changed_experiment() -> None:
    before = experiment_policy(control={"weight": 50}, with_code={"weight": 50})
    after = experiment_policy(control={"weight": 1}, with_code={"weight": 99})
    moved = [
        i for i in IDS[:2000] if assign(policy=before, loan_id=i, kept={}) != assign(policy=after, loan_id=i, kept={})
    ]
    assert moved  # the new weights alone would move some loans...
    for loan in moved:
        kept = assign(policy=before, loan_id=loan, kept={})
        assert assign(policy=after, loan_id=loan, kept=kept) == kept  # ...the kept assignment does not move
    # an arm that has left the experiment is reassigned among the arms that remain
    assert assign(policy=after, loan_id="LN-1", kept={"caller_code": "gone"})["caller_code"] in {"control", "with_code"}


def test_no_experiment_gives_no_arms() -> None:
    assert assign(policy=Policy(), loan_id="LN-1", kept={"old": "arm"}) == {}


def test_the_arm_overrides_apply() -> None:
    policy = experiment_policy(
        control={"weight": 50, "caller_code": False, "self_service": False, "notice_lead": "PT2H", "message": "short"},
        with_code={"weight": 50, "caller_code": True},
    )
    off = treatment(policy=policy, arms={"caller_code": "control"})
    assert (off.caller_code, off.policy.self_service.enabled, off.policy.notice.lead) == (
        False, False, timedelta(hours=2),
    )  # fmt: skip
    # The message variant is the notifier's to apply (it keeps the arms from callback.scheduled).
    assert policy.message_variant({"caller_code": "control"}) == "short"
    on = treatment(policy=policy, arms={"caller_code": "with_code"})
    assert (on.caller_code, on.policy.self_service.enabled, on.policy.notice.lead) == (
        True, True, timedelta(hours=24),
    )  # fmt: skip
    assert policy.message_variant({"caller_code": "with_code"}) is None
    assert treatment(policy=policy, arms={"caller_code": "gone"}).policy == policy


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ('name = "x"\narms = [{name = "a", weight = 1, colour = "red"}]', "experiments.0.arms.0.colour"),
        ('name = "x"\narms = [{name = "a", weight = 0}, {name = "b", weight = 0}]', "weights"),
        ('name = "x"\narms = [{name = "a", weight = -1}]', "experiments.0.arms.0.weight"),
        ('name = "x"\narms = [{name = "a", weight = 1, notice_lead = "soon"}]', "experiments.0.arms.0.notice_lead"),
        ('name = "x"\narms = []', "experiments.0.arms"),
    ],
)
def test_a_bad_experiment_stops_the_service_naming_the_key(tmp_path: Path, toml: str, names: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(f"[[experiments]]\n{toml}\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=names.replace(".", r"\.")):
        load_policy(path)
