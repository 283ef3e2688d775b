"""End to end: an agent records a refusal → the loan officer's signed webhook, at a steady 20/s.

Outcomes and the notifier run as `huifang run outcomes notifier` processes of their own, with the
repo's policy.toml (notify the officer on refusal). The bench paces refusal POSTs (one per open
callback, each of its own loan, a reason that escalates nothing), and its own webhook receiver
checks each delivery's signature and notes when it arrived. Latency: from sending the POST to the
webhook's arrival, p50 and p99.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx

from bench.attempts import seed
from bench.common import (
    API_KEY,
    WEBHOOK_SECRET,
    Figure,
    LoopStalls,
    Stack,
    collector_paused,
    drop,
    quantile,
    service,
    wait_until,
    worst,
)
from cli.devstack import free_port
from services.notifier.channels.webhook import verify

RATE = 20.0
SECONDS = 15.0
# Unmeasured refusals first: a freshly started broker spends its first minutes JIT-compiling (C1/C2
# threads took a third of the broker's CPU in `perf record -a`), and the services open their
# connections and fill their statement caches. The figure is the steady state a bank runs in.
WARM_SECONDS = 5.0
BODY = json.dumps({"disposition": "refused", "reason_code": "time_conflict"})


class Receiver:
    """A minimal HTTP/1.1 webhook receiver: verifies the signature, notes each refusal's arrival."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.unsigned = 0
        self.server: asyncio.Server | None = None
        self.port = free_port()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                at = time.perf_counter()
                signed = verify(WEBHOOK_SECRET, headers.get("x-huifang-id", ""), headers.get("x-huifang-timestamp", ""),
                                body, headers.get("x-huifang-signature", ""))  # fmt: skip
                payload = json.loads(body)
                if not signed:
                    self.unsigned += 1
                elif payload.get("type") == "callback.refused":
                    self.arrived.setdefault(payload["callback_id"], at)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"


async def paced_refusals(client: httpx.AsyncClient, ids: list[str], sent: dict[str, float]) -> None:
    """One refusal POST per callback at RATE/s, noting when each was sent."""

    async def refuse(callback_id: str) -> None:
        sent[callback_id] = time.perf_counter()
        headers = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
        response = await client.post(f"/v1/callbacks/{callback_id}/attempts", content=BODY, headers=headers)
        if response.status_code != 201:
            raise RuntimeError(f"refusal POST answered {response.status_code}: {response.text[:200]}")

    began, tasks = time.perf_counter(), []
    for index, callback_id in enumerate(ids):
        await asyncio.sleep(max(0.0, began + index / RATE - time.perf_counter()))
        tasks.append(asyncio.create_task(refuse(callback_id)))
    await asyncio.gather(*tasks)


def latencies_ms(receiver: Receiver, sent: dict[str, float]) -> list[float]:
    return [(receiver.arrived[cid] - sent[cid]) * 1000 for cid in sent]


async def measure(st: Stack, kind: str = "postgresql") -> list[Figure]:
    receiver = Receiver()
    await receiver.start()
    prefix = st.prefix()
    db = st.database(kind, prefix, "outcomes")
    count, warm = int(RATE * SECONDS), int(RATE * WARM_SECONDS)
    sent: dict[str, float] = {}
    warm_sent: dict[str, float] = {}
    try:
        hook = {"HUIFANG_NOTIFY_WEBHOOK_URL": receiver.url}
        async with service(st, kind, prefix, "notifier", **hook), service(st, kind, prefix, "outcomes") as svc:
            ids = await seed(db, warm + count, tag="e2e")
            auth = {"Authorization": f"Bearer {API_KEY}"}
            async with httpx.AsyncClient(base_url=svc.url, headers=auth, timeout=120) as client:
                for batch, notes in ((ids[:warm], warm_sent), (ids[warm:], sent)):

                    async def all_arrived(batch: list[str] = batch) -> bool:
                        return all(cid in receiver.arrived for cid in batch)

                    with collector_paused():  # the receiver notes arrivals in this process
                        async with LoopStalls() as watched:
                            await paced_refusals(client, batch, notes)
                            await wait_until(all_arrived, within=120, what=f"{len(batch)} officer webhooks")
    finally:
        await receiver.stop()
        await drop(db)
    if receiver.unsigned:
        raise RuntimeError(f"{receiver.unsigned} webhooks failed their signature check")
    latencies = latencies_ms(receiver, sent)
    p50, p99 = quantile(latencies, 50), quantile(latencies, 99)
    warmed = latencies_ms(receiver, warm_sent)
    print(f"  warm-up: p50 {quantile(warmed, 50):.0f} ms, p99 {quantile(warmed, 99):.0f} ms over {warm} refusals"
          " (not counted)")  # fmt: skip
    print(f"  end to end: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {count} refusals", flush=True)
    first = min(sent.values())  # when the worst ones were sent tells a warm-up from a stall
    print(f"  {worst([(at - first, receiver.arrived[c] - at) for c, at in sent.items()])}", flush=True)
    print(f"  {watched.summary(first)}", flush=True)  # the last watched is the counted batch
    return [
        Figure(f"refusal → signed officer webhook at {RATE:.0f}/s, p50 ({kind})", p50, "ms"),
        Figure(f"refusal → signed officer webhook at {RATE:.0f}/s, p99 ({kind})", p99, "ms", goal="≤ 300 ms"),
    ]
