"""The demo's caller-code experiment, without I/O: which experiment it runs, the simulated effect, when agents call."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from typing import Any

from cli.demo import CODE_EFFECT, CodeExperiment, Demo, _on_event, code_experiment
from shared.policy import load_policy
from shared.settings import DEFAULT_POLICY, ROOT, Settings

LEAD = [{"name": "short", "weight": 1, "notice_lead": "PT1H"}, {"name": "long", "weight": 1}]
POLICY: dict[str, Any] = {
    "experiments": [
        {"name": "lead", "arms": LEAD},
        {
            "name": "caller_code",
            "arms": [
                {"name": "control", "weight": 50, "caller_code": False},
                {"name": "with_code", "weight": 50, "caller_code": True},
            ],
        },
    ]
}
EXPERIMENT = CodeExperiment(name="caller_code", with_code=frozenset({"with_code"}), arms=("control", "with_code"))


def demo(experiment: CodeExperiment | None = EXPERIMENT) -> Demo:
    return Demo(settings=Settings(), rng=random.Random(11), seconds=3600, experiment=experiment)


def test_the_demo_finds_the_experiment_whose_arms_differ_in_the_caller_code() -> None:
    assert code_experiment(POLICY) == EXPERIMENT
    assert code_experiment({"experiments": POLICY["experiments"][:1]}) is None  # no arm turns the code off
    assert code_experiment({"experiments": []}) is None and code_experiment({}) is None


def test_parties_with_a_code_refuse_less_by_the_simulated_effect() -> None:
    run = demo()
    run.arm_of.update({"cb-control": "control", "cb-code": "with_code"})
    draws = 6000
    refused = {
        cb: Counter(run.attempt_body(cb)["disposition"] for _ in range(draws))["refused"]
        for cb in ("cb-control", "cb-code")
    }
    # Seeded draws: the refusal weight is scaled by CODE_EFFECT, so the share falls a little less than that.
    assert CODE_EFFECT * 0.9 < refused["cb-code"] / refused["cb-control"] < CODE_EFFECT + 0.2


def test_without_the_experiment_the_arm_changes_nothing() -> None:
    plain, coded = demo(None), demo(None)
    plain.arm_of["cb"] = "control"
    assert [plain.attempt_body("cb")["disposition"] for _ in range(200)] == [
        coded.attempt_body("cb")["disposition"] for _ in range(200)
    ]


async def test_agents_call_when_the_callback_falls_due_and_keep_its_arm() -> None:
    run = demo()
    run.loans["L-1"] = {"loan_id": "L-1"}
    ref = {"loan_id": "L-1", "callback_id": "cb-1", "attempt": 1}
    producer: Any = None  # these event kinds publish nothing
    await _on_event(run, producer, {"type": "callback.scheduled", "data": {**ref, "arms": {"caller_code": "control"}}})
    assert run.queue == [] and run.arm_of == {"cb-1": "control"}  # scheduled is not due: nobody calls yet
    await _on_event(run, producer, {"type": "callback.due", "data": ref})
    await _on_event(run, producer, {"type": "callback.due", "data": ref})  # a redelivery: one call
    assert [(cb, attempt) for _, cb, attempt in run.queue] == [("cb-1", 1)]
    await _on_event(run, producer, {"type": "callback.due", "data": {**ref, "loan_id": "L-other"}})
    assert len(run.queue) == 1  # not this run's loan


def test_make_run_uses_the_demo_policy_and_production_keeps_the_shipped_one() -> None:
    demo_policy = load_policy(ROOT / "policy.demo.toml")
    assert code_experiment(demo_policy.model_dump(mode="json")) == EXPERIMENT  # what `make demo` runs
    assert demo_policy.notice.lead <= timedelta(seconds=30)  # notices, page visits and due calls within the demo
    assert (demo_policy.calling_hours.start, demo_policy.calling_hours.end) == ("00:00", "24:00")
    assert "HUIFANG_POLICY_FILE=$${HUIFANG_POLICY_FILE:-policy.demo.toml}" in (ROOT / "Makefile").read_text()
    shipped = load_policy(DEFAULT_POLICY)
    assert DEFAULT_POLICY.name == "policy.toml" and shipped.experiments == []
    assert shipped.notice.lead == timedelta(hours=24)
