"""`huifang demo`: a realistic stream of loans, and agents answering the calls that fall due."""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from rich.progress import Progress

from shared.events import CALLBACK_LIFECYCLE, LOAN_STAGE, Envelope, encode
from shared.kafka import client_options, make_producer
from shared.settings import Settings

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英", "建华", "丽"]
BRANCHES = ["BR-SH-001", "BR-SH-002", "BR-BJ-001", "BR-GZ-003", "BR-CD-001"]
ZONES = ["Asia/Shanghai"] * 8 + ["Asia/Hong_Kong", "America/New_York"]
ROLESETS = [
    ("borrower",),
    ("borrower", "co_borrower"),
    ("borrower", "guarantor"),
    ("borrower", "co_borrower", "guarantor"),
]
DISPOSITIONS = ["completed"] * 55 + ["refused"] * 15 + ["no_answer"] * 18 + ["busy"] * 7 + ["reschedule_requested"] * 5
REASONS = (
    ["distrust"] * 25
    + ["privacy_concern"] * 22
    + ["time_conflict"] * 20
    + ["process_misunderstanding"] * 15
    + ["communication_barrier", "emotional_distress"] * 4
    + ["suspected_fraud"] * 3
    + ["other"] * 5
)


def demo_loan(rng: random.Random) -> dict[str, Any]:
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
                "language": "en" if zone == "America/New_York" else "zh-CN",
                "preferred_window": {"start": "18:00", "end": "20:30"} if rng.random() < 0.3 else None,
                "contact_consent": rng.random() > 0.03,
            }
        )
    return {
        "loan_id": loan_id,
        "stage": "final_check",
        "previous_stage": "initial_review_passed",
        "branch_id": rng.choice(BRANCHES),
        "product": rng.choice(["first_home_mortgage", "second_home_mortgage"]),
        "amount": f"{rng.randrange(300, 3000) * 1000}.00",
        "currency": "CNY",
        "officer": {"id": f"EMP-{rng.randrange(100, 999)}", "name": rng.choice(SURNAMES) + rng.choice(GIVEN)},
        "parties": [{k: v for k, v in p.items() if v is not None} for p in parties],
    }


async def run_demo(settings: Settings, *, loans: int, agents: bool, api_key: str | None, seconds: float) -> None:
    rng = random.Random()
    producer = make_producer(settings)
    await producer.start()
    consumer = AIOKafkaConsumer(
        settings.topic(CALLBACK_LIFECYCLE),
        **client_options(settings),
        group_id=f"{settings.huifang_topic_prefix}huifang-demo-agents",
        enable_auto_commit=True,
        auto_offset_reset="latest",
    )
    if agents:
        await consumer.start()
    try:
        with Progress() as progress:
            publishing = progress.add_task("publishing loans", total=loans)
            for _ in range(loans):
                data = demo_loan(rng)
                envelope = Envelope(
                    specversion="1.0",
                    id=str(uuid.uuid4()),
                    source="/los/demo",
                    type="loan.stage.changed",
                    subject=data["loan_id"],
                    data=data,
                )
                await producer.send_and_wait(settings.topic(LOAN_STAGE), encode(envelope), key=data["loan_id"].encode())
                progress.advance(publishing)
            if consumer is None:
                return
            if not api_key:
                progress.console.print("no agent key (--api-key or HUIFANG_DEMO_API_KEY): not playing agents")
                return
            answering = progress.add_task("agents answering due calls", total=seconds)
            await _play_agents(settings, consumer, api_key, rng, progress, answering, seconds)
    finally:
        await producer.stop()
        if consumer is not None:
            await consumer.stop()


async def _play_agents(
    settings: Settings,
    consumer: AIOKafkaConsumer,
    api_key: str,
    rng: random.Random,
    progress: Progress,
    task: Any,
    seconds: float,
) -> None:
    base = f"http://127.0.0.1:{settings.huifang_outcomes_port}"
    started = time.monotonic()
    counts: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=10) as http:
        while (elapsed := time.monotonic() - started) < seconds:
            progress.update(task, completed=elapsed)
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = json.loads(record.value)
                    if event.get("type") != "callback.due":
                        continue
                    disposition = rng.choice(DISPOSITIONS)
                    body: dict[str, Any] = {
                        "disposition": disposition,
                        "agent_id": f"AG-{rng.randrange(1, 13):02d}",
                        "duration_s": rng.randrange(20, 600),
                    }
                    if disposition == "refused":
                        body["reason_code"] = rng.choice(REASONS)
                    if disposition == "reschedule_requested":
                        body["reschedule_to"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 120))
                    response = await http.post(f"/v1/callbacks/{event['data']['callback_id']}/attempts", json=body)
                    counts[str(response.status_code)] = counts.get(str(response.status_code), 0) + 1
        progress.update(task, completed=seconds)
    progress.console.print(f"agents recorded attempts: {counts}")
