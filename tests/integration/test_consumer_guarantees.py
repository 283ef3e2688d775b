"""At least once in, exactly one effect: duplicates are absorbed, poison goes to the DLQ, the consumer carries on."""

from __future__ import annotations

import json
import uuid

from tests.support import Huifang, loan_event, service_logs, wait_for


def new_loan() -> str:
    return f"L-{uuid.uuid4().hex[:12]}"


async def test_duplicate_event_has_one_effect(huifang: Huifang) -> None:
    loan = new_loan()
    before = await huifang.consumed("scheduler", "loan.stage.v1", "duplicate")
    event_id = await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)
    await huifang.tap.wait_events("callback.scheduled", loan, count=2)
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan, event_id=event_id)

    async def absorbed() -> bool:
        return await huifang.consumed("scheduler", "loan.stage.v1", "duplicate") > before

    await wait_for(absorbed, what="the scheduler to see the duplicate")
    async with huifang.client("scheduler") as client:
        page = (await client.get("/v1/callbacks", params={"loan_id": loan})).json()
    assert len(page["items"]) == 2
    assert len(huifang.tap.events("callback.scheduled", loan)) == 2


async def test_same_loan_event_with_new_id_does_not_reopen_callbacks(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)
    await huifang.tap.wait_events("callback.scheduled", loan, count=2)
    # Upstream re-sent the stage under a fresh id; a marker event after it on the same key shows it was read.
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)
    await huifang.publish_event("loan.stage.changed", loan_event(loan, stage="withdrawn"), key=loan)
    await huifang.tap.wait_events("callback.cancelled", loan, count=2)
    assert len(huifang.tap.events("callback.scheduled", loan)) == 2


POISON = {
    "not JSON": b"{this is not json",
    "not a CloudEvent": json.dumps({"hello": "world"}).encode(),
    "unknown event type": json.dumps(
        {"specversion": "1.0", "id": "x-1", "source": "/t", "type": "loan.exploded", "data": {}}
    ).encode(),
    "invalid data": json.dumps(
        {
            "specversion": "1.0",
            "id": "x-2",
            "source": "/t",
            "type": "loan.stage.changed",
            "data": {"loan_id": "L-bad", "stage": "final_check"},
        }
    ).encode(),
}
REASON_FRAGMENT = {
    "not JSON": "not valid JSON",
    "not a CloudEvent": "not a CloudEvent",
    "unknown event type": "unknown event type",
    "invalid data": "invalid data for loan.stage.changed",
}


async def test_poison_messages_go_to_dlq_and_the_next_event_is_processed(huifang: Huifang) -> None:
    loan = new_loan()
    for value in POISON.values():
        # The same key puts poison and the good event on one partition, in this order.
        await huifang.publish("loan.stage.v1", value, key=loan)
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)
    await huifang.tap.wait_events("callback.scheduled", loan, count=2)

    def scheduler_dlq() -> list:
        return [
            r
            for r in huifang.tap.dead_letters("loan.stage.v1")
            if r.key == loan and r.headers.get("dlq.consumer") == "scheduler"
        ]

    await wait_for(lambda: len(scheduler_dlq()) == 4, what="four dead letters from the scheduler")
    letters = scheduler_dlq()
    assert [r.value for r in letters] == list(POISON.values())  # the original message, unchanged
    for letter, kind in zip(letters, POISON, strict=True):
        assert REASON_FRAGMENT[kind] in letter.headers["dlq.error"]
        assert letter.headers["dlq.topic"] == huifang.settings.topic("loan.stage.v1")
        assert int(letter.headers["dlq.offset"]) >= 0 and letter.headers["dlq.partition"].isdigit()
    # The notifier reads loan.stage.v1 too and dead-letters the same four.
    await wait_for(
        lambda: (
            len(
                [
                    r
                    for r in huifang.tap.dead_letters("loan.stage.v1")
                    if r.key == loan and r.headers.get("dlq.consumer") == "notifier"
                ]
            )
            == 4
        ),
        what="four dead letters from the notifier",
    )


PHONE = "+8613812345678"
NAME = "欧阳娜娜"


def _stage(loan: str, **party: object) -> bytes:
    data = loan_event(loan, roles=("borrower",))
    data["parties"][0].update(party)
    envelope = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/t", "type": "loan.stage.changed"}
    return json.dumps({**envelope, "data": data}, ensure_ascii=False).encode()


async def test_dead_letter_reasons_and_logs_name_the_field_never_the_value(huifang: Huifang) -> None:
    loan = new_loan()
    breaking = {
        "parties.0.timezone": _stage(loan, timezone=PHONE),
        "parties.0.email": _stage(loan, email=f"{NAME}@a.example, spy@b.example"),
        "parties.0.phone": _stage(loan, phone=f"{PHONE} {NAME}"),
        "parties.0.name": _stage(loan, name=NAME * 30),
        "unknown event type": json.dumps({"specversion": "1.0", "id": "x-3", "source": "/t", "type": PHONE}).encode(),
    }
    with service_logs() as logs:
        for value in breaking.values():
            await huifang.publish("loan.stage.v1", value, key=loan)
        await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)
        await huifang.tap.wait_events("callback.scheduled", loan, count=2)

        def letters() -> list:
            return [r for r in huifang.tap.dead_letters("loan.stage.v1") if r.key == loan]

        await wait_for(lambda: len(letters()) == 2 * len(breaking), what="both consumers dead-letter every message")
        await wait_for(lambda: sum("consumer.dead_lettered" in line for line in logs) >= 2 * len(breaking))
    for consumer in ("scheduler", "notifier"):
        reasons = [r.headers["dlq.error"] for r in letters() if r.headers["dlq.consumer"] == consumer]
        assert [r.value for r in letters() if r.headers["dlq.consumer"] == consumer] == list(breaking.values())
        for reason, field in zip(reasons, breaking, strict=True):
            assert field in reason
    for text in [*(r.headers["dlq.error"] for r in letters()), *logs]:
        assert PHONE not in text and NAME not in text and "spy@" not in text
