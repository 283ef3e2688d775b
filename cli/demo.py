"""`huifang demo`: a realistic stream of loans, and agents answering their callbacks, so the dashboard fills.

The story it tells in about a minute: in the first half agents call without much preparation and one of
them (AG-07) puts borrowers off; halfway through the team is retrained and calls are announced, and the
refusal rate falls, as the bank in the issue saw.

Agents call a callback when it falls due (`callback.due`), as a real desk does, so a party who answered on
their own page first is not phoned. With `--experiment` the running policy must have a caller-code
experiment (`policy.demo.toml`, which `make run` uses): the demo reads each loan's arm from
`callback.scheduled`, and its parties refuse less when their arm gives them a caller code. That effect is
made up by the demo (CODE_EFFECT), not measured.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared.events import CALLBACK_LIFECYCLE, LOAN_STAGE, LOAN_VERIFICATION, Envelope, encode
from shared.kafka import client_options, make_producer
from shared.settings import Settings

RETRY_FOR_S = 60.0  # how long a desk asks again after "not yet" (CONTRACT section 3)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = [
    "伟",
    "芳",
    "娜",
    "敏",
    "静",
    "磊",
    "洋",
    "勇",
    "艳",
    "杰",
    "娟",
    "涛",
    "明",
    "超",
    "秀英",
    "建华",
    "丽",
    "志强",
    "晓燕",
]
BRANCHES = ["BR-SH-001", "BR-SH-002", "BR-BJ-001", "BR-GZ-003", "BR-CD-001", "BR-SZ-002"]
# Mostly mainland China; some parties abroad (a guarantor in New York, a co-borrower in Sydney).
ZONES = ["Asia/Shanghai"] * 12 + ["Asia/Hong_Kong", "Asia/Singapore", "America/New_York", "Australia/Sydney"]
ROLESETS = [
    ("borrower",),
    ("borrower", "co_borrower"),
    ("borrower", "guarantor"),
    ("borrower", "co_borrower", "guarantor"),
]
# Where a loan enters the stream: most reach final_check (callbacks), some are earlier in the pipeline.
ENTRY_STAGES = ["final_check"] * 8 + ["application_submitted", "initial_review_passed"]
AGENTS = [f"AG-{n:02d}" for n in range(1, 11)]
WEAK_AGENT = "AG-07"
# Before retraining and advance notice, then after: dispositions and refusal reasons (weights).
DISPOSITIONS = {
    "before": {
        "completed": 52,
        "refused": 24,
        "no_answer": 12,
        "busy": 6,
        "reschedule_requested": 4,
        "wrong_number": 2,
    },
    "after": {"completed": 68, "refused": 11, "no_answer": 11, "busy": 5, "reschedule_requested": 4, "wrong_number": 1},
}
REASONS = {
    "before": {
        "distrust": 30,
        "process_misunderstanding": 22,
        "privacy_concern": 18,
        "time_conflict": 15,
        "communication_barrier": 5,
        "emotional_distress": 4,
        "suspected_fraud": 2,
        "other": 4,
    },
    "after": {
        "distrust": 14,
        "process_misunderstanding": 8,
        "privacy_concern": 20,
        "time_conflict": 32,
        "communication_barrier": 7,
        "emotional_distress": 7,
        "suspected_fraud": 3,
        "other": 9,
    },
}


# With --experiment: the refusal weight of a party whose arm gives a caller code is scaled by this (simulated).
CODE_EFFECT = 0.4
SIMULATED = (
    "SIMULATED EFFECT: the demo makes a party who got a caller code refuse less "
    f"(their refusal weight x {CODE_EFFECT}) because it says so. "
    "The dashboard shows what such an effect looks like; it measures nothing."
)


@dataclass(frozen=True)
class CodeExperiment:
    """The running policy's caller-code experiment: its name and which of its arms give parties a code."""

    name: str
    with_code: frozenset[str]
    arms: tuple[str, ...]


def code_experiment(policy: dict[str, Any]) -> CodeExperiment | None:
    """The first experiment of a policy (as GET /v1/policy shows it) whose arms differ in `caller_code`."""
    for experiment in policy.get("experiments") or []:
        arms = experiment.get("arms") or []
        # An arm without the override gives the code, as a callback outside any experiment does.
        coded = frozenset(a["name"] for a in arms if a.get("caller_code") is not False)
        if coded and len(coded) < len(arms):
            return CodeExperiment(name=experiment["name"], with_code=coded, arms=tuple(a["name"] for a in arms))
    return None


# Parties who open the link in their notice, and what they do there (the callback is then not phoned).
PAGE_VISITORS = 0.25
PAGE_RELOADS = 4  # a page not there yet (outcomes has not read the notice) is reloaded a second later
PAGE_ACTIONS = {"confirm": 62, "reschedule": 20, "decline": 14, "not_me": 4}
FORM_FIELD = re.compile(r'name="form" value="([^"]+)"')
SLOT = re.compile(r'name="slot" value="([^"]+)"')
ITEM = re.compile(r'name="item" value="([^"]+)"')


def pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    """One key, drawn by weight."""
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def demo_loan(rng: random.Random, stage: str = "final_check") -> dict[str, Any]:
    """A loan.stage.changed payload with parties who have Chinese names, phones and time zones."""
    loan_id = f"L-{time.strftime('%Y')}-{rng.randrange(10**6):06d}-{uuid.uuid4().hex[:4]}"
    parties = []
    for i, role in enumerate(rng.choice(ROLESETS)):
        zone = rng.choice(ZONES)
        parties.append(
            {
                "party_id": f"{loan_id}-P{i + 1}",
                "role": role,
                "name": rng.choice(SURNAMES) + rng.choice(GIVEN),
                "phone": f"+861{rng.randrange(3, 9)}{rng.randrange(10**9):09d}",
                "timezone": zone,
                "language": "en" if zone in ("America/New_York", "Australia/Sydney") else "zh-CN",
                # Few: a party whose evening window is hours away is not called while the demo runs.
                "preferred_window": {"start": "18:00", "end": "20:30"} if rng.random() < 0.1 else None,
                "contact_consent": rng.random() > 0.05,
            }
        )
    previous = {"final_check": "initial_review_passed", "initial_review_passed": "application_submitted"}
    return {
        "loan_id": loan_id,
        "stage": stage,
        "previous_stage": previous.get(stage),
        "branch_id": rng.choice(BRANCHES),
        "product": rng.choice(["first_home_mortgage", "second_home_mortgage", "home_equity"]),
        "amount": f"{rng.randrange(300, 3000) * 1000}.00",
        "currency": "CNY",
        "officer": {"id": f"EMP-{rng.randrange(100, 999)}", "name": rng.choice(SURNAMES) + rng.choice(GIVEN)},
        "parties": [{k: v for k, v in p.items() if v is not None} for p in parties],
    }


@dataclass
class Demo:
    """One demo run: what it published and what its agents did."""

    settings: Settings
    rng: random.Random
    seconds: float
    started: float = field(default_factory=time.monotonic)
    loans: dict[str, dict[str, Any]] = field(default_factory=dict)
    answered: set[tuple[str, int]] = field(default_factory=set)
    queue: list[tuple[float, str, int]] = field(default_factory=list)  # (when, callback_id, attempt)
    visits: list[tuple[float, str, str]] = field(default_factory=list)  # (when, callback_id, page path)
    on_page: set[str] = field(default_factory=set)  # callbacks a party took to their own page
    page_actions: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    phases: dict[str, Counter[str]] = field(default_factory=lambda: {"before": Counter(), "after": Counter()})
    experiment: CodeExperiment | None = None
    arm_of: dict[str, str] = field(default_factory=dict)  # callback_id -> its arm, from callback.scheduled
    by_arm: dict[str, Counter[str]] = field(default_factory=dict)  # arm -> dispositions recorded

    def phase(self) -> str:
        return "before" if time.monotonic() - self.started < self.seconds / 2 else "after"

    def got_code(self, callback_id: str) -> bool:
        """Whether the callback's arm gave the party a caller code (always, outside an experiment)."""
        arm = self.arm_of.get(callback_id)
        return self.experiment is None or arm is None or arm in self.experiment.with_code

    def attempt_body(self, callback_id: str = "") -> dict[str, Any]:
        """What an agent records for one call, given the phase, the agent and (in an experiment) the arm."""
        phase, agent = self.phase(), self.rng.choice(AGENTS)
        weights: dict[str, float] = dict(DISPOSITIONS[phase])
        if agent == WEAK_AGENT and phase == "before":
            weights["refused"] *= 4
        if self.experiment is not None and self.got_code(callback_id):
            weights["refused"] *= CODE_EFFECT
        disposition = pick(self.rng, weights)
        body: dict[str, Any] = {
            "disposition": disposition,
            "agent_id": agent,
            "duration_s": self.rng.randrange(20, 600),
            "started_at": datetime.now(UTC).isoformat(),
        }
        if disposition == "refused":
            reasons = dict(REASONS[phase])
            if agent == WEAK_AGENT and phase == "before":
                reasons["distrust"] *= 3
            body["reason_code"] = pick(self.rng, reasons)
        if disposition == "reschedule_requested":
            body["reschedule_to"] = (datetime.now(UTC) + timedelta(days=self.rng.randrange(1, 3))).isoformat()
        if disposition == "completed":
            body["verification"] = {"identity": True, "loan_amount": True}
        return body


async def run_demo(
    settings: Settings,
    *,
    loans: int,
    agents: bool,
    api_key: str | None,
    seconds: float,
    experiment: CodeExperiment | None = None,
) -> None:
    """Publish `loans` loans over the first part of `seconds`, and (with an agent key) answer their calls."""
    demo = Demo(settings=settings, rng=random.Random(), seconds=seconds, experiment=experiment)
    producer = make_producer(settings)
    await producer.start()
    consumer = await _listen(settings) if agents and api_key else None
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns) as progress:
            if agents and not api_key:
                progress.console.print("no agent key (--api-key or HUIFANG_DEMO_API_KEY): publishing loans only")
            if experiment is not None:
                progress.console.print(f"experiment {experiment.name!r}: arms {', '.join(experiment.arms)}")
                progress.console.print(f"[bold yellow]{SIMULATED}[/bold yellow]")
            published = progress.add_task("loans published", total=loans)
            clock = progress.add_task("seconds of agents' work", total=int(seconds) if consumer else 0)
            calls = progress.add_task("calls recorded", total=None)
            publisher = asyncio.create_task(_publish(demo, producer, loans, progress, published, consumer is not None))
            if consumer is None or api_key is None:
                await publisher
                return
            await _play_agents(demo, consumer, producer, api_key, progress, clock, calls)
            await publisher
        _summary(demo)
    finally:
        await producer.stop()
        if consumer is not None:
            await consumer.stop()


async def _listen(settings: Settings) -> AIOKafkaConsumer:
    """A consumer of the lifecycle and verification topics from their current end (no group: nothing missed)."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    parts = []
    for topic in (settings.topic(CALLBACK_LIFECYCLE), settings.topic(LOAN_VERIFICATION)):
        found = consumer.partitions_for_topic(topic)
        if not found:
            await consumer._client.force_metadata_update()
            found = consumer.partitions_for_topic(topic) or set()
        parts += [TopicPartition(topic, p) for p in found]
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)  # resolve the end offsets now, before the first loan goes out
    return consumer


async def _publish(
    demo: Demo, producer: AIOKafkaProducer, loans: int, progress: Progress, task: Any, spread: bool
) -> None:
    """Publish the loans, spread over the first three quarters of the run so every minute has calls."""
    pause = demo.seconds * 0.75 / loans if spread else 0.0
    for _ in range(loans):
        data = demo_loan(demo.rng, demo.rng.choice(ENTRY_STAGES))
        demo.loans[data["loan_id"]] = data
        await _send(demo.settings, producer, data)
        progress.advance(task)
        await asyncio.sleep(pause * demo.rng.uniform(0.5, 1.5))
        if demo.rng.random() < 0.04:
            # Now and then a borrower withdraws before anyone called: the loan's callbacks are cancelled.
            await _send(demo.settings, producer, {**data, "stage": "withdrawn", "previous_stage": data["stage"]})


async def _send(settings: Settings, producer: AIOKafkaProducer, data: dict[str, Any]) -> None:
    envelope = Envelope(
        specversion="1.0",
        id=str(uuid.uuid4()),
        source=f"/los/branch/{data['branch_id']}",
        type="loan.stage.changed",
        time=datetime.now(UTC),
        subject=data["loan_id"],
        data=data,
    )
    await producer.send_and_wait(settings.topic(LOAN_STAGE), encode(envelope), key=data["loan_id"].encode())


async def _play_agents(
    demo: Demo,
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    api_key: str,
    progress: Progress,
    clock: Any,
    calls: Any,
) -> None:
    """Answer each of the demo's callbacks a second or two after it falls due, unless its party used their page."""
    base = f"http://127.0.0.1:{demo.settings.huifang_outcomes_port}"
    announced = False
    desks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=10) as http:
        while (elapsed := time.monotonic() - demo.started) < demo.seconds:
            progress.update(clock, completed=min(int(elapsed), int(demo.seconds)))
            if not announced and demo.phase() == "after":
                announced = True
                progress.console.print("[bold]agents retrained; calls are now announced in advance[/bold]")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    await _on_event(demo, producer, json.loads(record.value))
            while demo.visits and demo.visits[0][0] <= time.monotonic():
                _, callback_id, path = heapq.heappop(demo.visits)
                desks.add(asyncio.create_task(visit_page(demo, base, path, callback_id=callback_id)))
            while demo.queue and demo.queue[0][0] <= time.monotonic():
                _, callback_id, attempt = heapq.heappop(demo.queue)
                if callback_id in demo.on_page:
                    continue  # the party answered on their own page
                body = {**demo.attempt_body(callback_id), "attempt": attempt}
                # Each call on its own task: one waiting out a Retry-After holds up no other desk.
                desks.add(asyncio.create_task(_call(demo, http, callback_id, body, lambda: progress.advance(calls))))
                desks = {d for d in desks if not d.done()}
        await asyncio.gather(*desks)
        progress.update(clock, completed=int(demo.seconds))


async def _call(
    demo: Demo, http: httpx.AsyncClient, callback_id: str, body: dict[str, Any], done: Callable[[], None]
) -> None:
    phase = demo.phase()
    response = await post_attempt(http=http, callback_id=callback_id, body=body)
    demo.statuses[str(response.status_code)] += 1
    if response.status_code == 201:
        demo.phases[phase][body["disposition"]] += 1
        arm = demo.arm_of.get(callback_id)
        if demo.experiment is not None and arm is not None:
            demo.by_arm.setdefault(arm, Counter())[body["disposition"]] += 1
    done()


async def post_attempt(
    *, http: httpx.AsyncClient, callback_id: str, body: dict[str, Any], patience: float = RETRY_FOR_S
) -> httpx.Response:
    """Record one call as a desk should: one Idempotency-Key, and a 404 or 409 with Retry-After asked again."""
    key, give_up = str(uuid.uuid4()), time.monotonic() + patience
    while True:
        response = await http.post(f"/v1/callbacks/{callback_id}/attempts", json=body, headers={"Idempotency-Key": key})
        retry_after = response.headers.get("Retry-After")
        # Outcomes learns of callbacks from the scheduler's events: "not yet" is not "never".
        if response.status_code not in (404, 409) or retry_after is None or time.monotonic() >= give_up:
            return response
        await asyncio.sleep(float(retry_after))


async def _on_event(demo: Demo, producer: AIOKafkaProducer, event: dict[str, Any]) -> None:
    """Keep each callback's arm, queue a call for each due callback of the demo's loans; move verified loans on."""
    data = event.get("data") or {}
    loan = demo.loans.get(data.get("loan_id", ""))
    if loan is None:
        return  # not this run's loan
    kind = event.get("type")
    if kind == "loan.verification.completed":
        # Upstream reacts to the verification: approve verified loans, reject those the party disowned.
        parties = {p["disposition"] for p in data.get("parties", [])}
        if data.get("status") == "verified":
            await _send(demo.settings, producer, {**loan, "stage": "approved", "previous_stage": "final_check"})
        elif "refused" in parties and demo.rng.random() < 0.3:
            await _send(demo.settings, producer, {**loan, "stage": "rejected", "previous_stage": "final_check"})
        return
    if kind == "callback.notice.requested" and data.get("self_service_url") and demo.rng.random() < PAGE_VISITORS:
        demo.on_page.add(data["callback_id"])
        path = "/p/" + data["self_service_url"].rsplit("/p/", 1)[1]
        heapq.heappush(demo.visits, (time.monotonic() + demo.rng.uniform(1.0, 4.0), data["callback_id"], path))
        return
    if kind == "callback.scheduled":
        arm = (data.get("arms") or {}).get(demo.experiment.name) if demo.experiment else None
        if arm is not None:
            demo.arm_of[data["callback_id"]] = arm
        return
    if kind != "callback.due":
        return  # a desk calls when the call is due: a party without consent gets the questionnaire instead
    ticket = (data["callback_id"], int(data["attempt"]))
    if ticket in demo.answered:
        return
    demo.answered.add(ticket)
    heapq.heappush(demo.queue, (time.monotonic() + demo.rng.uniform(0.5, 2.0), *ticket))


async def visit_page(
    demo: Demo, base_url: str, path: str, actions: dict[str, int] = PAGE_ACTIONS, callback_id: str | None = None
) -> None:
    """A party opens their page (no API key: the link is the credential) and takes one action, as a browser would."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        for _ in range(PAGE_RELOADS):
            page = await http.get(path)
            if page.status_code != 404:
                break
            await asyncio.sleep(1.0)  # outcomes may not have read the notice yet: the party reloads
        form = FORM_FIELD.search(page.text)
        if page.status_code != 200 or form is None:
            demo.page_actions[f"page {page.status_code}"] += 1
            demo.on_page.discard(callback_id or "")  # no action taken: the agent calls after all
            return
        fields = _page_form(demo, page.text, form.group(1), actions)
        response = await http.post(path, data=fields)
    demo.page_actions[f"{fields['action']} {response.status_code}"] += 1


def _page_form(demo: Demo, html: str, form: str, actions: dict[str, int]) -> dict[str, Any]:
    """What a party fills in: one action, every item ticked, an offered time or a reason."""
    action = pick(demo.rng, actions)
    fields: dict[str, Any] = {"form": form, "action": action, "item": ITEM.findall(html)}
    slots = SLOT.findall(html)
    if action == "reschedule" and slots:
        fields["slot"] = demo.rng.choice(slots)
    elif action == "reschedule":
        fields["action"] = "confirm"  # no time left to offer
    if action == "decline":
        fields["reason"] = pick(demo.rng, REASONS[demo.phase()] | {"suspected_fraud": 0})
    return fields


async def running_experiment(settings: Settings, api_key: str) -> CodeExperiment | None:
    """The caller-code experiment of the policy the running scheduler uses (GET /v1/policy)."""
    base = f"http://127.0.0.1:{settings.huifang_scheduler_port}"
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=10) as http:
        response = await http.get("/v1/policy")
    response.raise_for_status()
    return code_experiment(response.json())


def _summary(demo: Demo) -> None:
    """Print what the agents did and where to look."""
    from rich.console import Console

    console = Console()

    def rate(counts: Counter[str]) -> str:
        answered = counts["completed"] + counts["refused"]
        return f"{100 * counts['refused'] / answered:.0f}%" if answered else "n/a"

    console.print(f"HTTP answers to recorded attempts: {dict(demo.statuses)}")
    console.print(f"parties on their own page: {dict(demo.page_actions)}")
    console.print(f"refusal rate before retraining {rate(demo.phases['before'])}, after {rate(demo.phases['after'])}")
    if demo.experiment is not None:
        for arm in demo.experiment.arms:
            counts = demo.by_arm.get(arm, Counter())
            code = "with a caller code" if arm in demo.experiment.with_code else "without a caller code"
            answered = counts["completed"] + counts["refused"]
            console.print(f"arm {arm} ({code}): {answered} calls answered, refusal rate {rate(counts)}")
        console.print(f"[bold yellow]{SIMULATED}[/bold yellow]")
    port = demo.settings.huifang_outcomes_port
    console.print(f"dashboard: http://127.0.0.1:{port}/dashboard?window=10m  (log in with a supervisor key)")
