"""The attempt POST: `POST /v1/callbacks/{id}/attempts` against `GET /healthz` of the same process.

Outcomes runs alone as `huifang run outcomes` over open callbacks the bench writes into its
callback_view (as the scheduler's events would). Each request records a `no_answer` with an
Idempotency-Key of its own, cycling over the callbacks (each of its own loan), so every request is
a real write: the attempt row, the callback's update and a `callback.outcome.recorded` in the
outbox, which the service's relay publishes meanwhile.

- peak: wrk (Debian's) at the same concurrency for the POST and for /healthz, closed loop; without
  wrk, a Python closed-loop client of as many connections stands in (the summary says which);
- p99 at half the POST's peak: open loop at a fixed rate, with vegeta (`make vegeta`, from the Go
  module proxy) timing each request from its send; without vegeta, a Python client paces the
  requests and times each from when it was due (so a slow response delays no later measurement),
  but its own CPU, about 3 ms a request, then competes with the service's for the two cores.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import re
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from bench.common import (
    API_KEY,
    RESULTS,
    ROOT,
    TRIALS,
    Figure,
    Service,
    Stack,
    alternate,
    collector_paused,
    drop,
    median,
    quantile,
    service,
    worst,
)
from services.outcomes.models import CallbackView
from shared import labels
from shared.db import Database

CONCURRENCY = 32
DURATION = 10  # seconds per wrk run
PACED_SECONDS = 10.0
CALLBACKS = 3000
ITEMS = json.dumps(list(labels.VERIFICATION_ITEMS))
BODY = json.dumps({"disposition": "no_answer", "duration_s": 30})
WRK_SCRIPT = """
local ids = {}
local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  local n = 0
  for line in io.lines(args[1]) do
    if n % tonumber(args[2]) == tid then ids[#ids + 1] = line end
    n = n + 1
  end
end
function request()
  counter = counter + 1
  local id = ids[(counter % #ids) + 1]
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key,
                   ["Idempotency-Key"] = "wrk-" .. run .. "-" .. tid .. "-" .. counter}
  return wrk.format("POST", "/v1/callbacks/" .. id .. "/attempts", headers, body)
end
"""


async def seed(db: Database, count: int, *, tag: str) -> list[str]:
    """`count` open callbacks in outcomes' view, each of its own loan; returns their ids."""
    now = datetime.now(UTC)
    rows = [
        {"callback_id": str(uuid.uuid4()), "loan_id": f"L-{tag}-{i}", "stage": "final_check", "branch_id": "BR-1",
         "party_id": f"P-{tag}-{i}", "role": "borrower", "state": "due", "attempt": 1, "verification_items": ITEMS,
         "due_at": now, "deadline": now + timedelta(days=5), "superseded": False, "updated_at": now}
        for i in range(count)
    ]  # fmt: skip
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(CallbackView.__table__), rows)  # type: ignore[attr-defined]
    return [str(r["callback_id"]) for r in rows]


async def wrk(url: str, *, path: str, ids_file: Path | None = None) -> tuple[float, int]:
    """Requests/s and non-2xx responses of one wrk run (POST attempts when `ids_file` is given)."""
    command = ["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{DURATION}s", "--timeout", "10s"]
    if ids_file is not None:
        script = RESULTS / "attempts.lua"
        run = uuid.uuid4().hex[:8]  # Idempotency-Keys of this run only
        header = f"body = {json.dumps(BODY)}\nkey = {json.dumps(API_KEY)}\nrun = {json.dumps(run)}\n"
        script.write_text(header + WRK_SCRIPT)
        command += ["-s", str(script), url, "--", str(ids_file), "2"]
    else:
        command += [url + path]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    out = (await process.communicate())[0].decode()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if process.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return float(rate.group(1)), int(bad.group(1)) if bad else 0


def post(client: httpx.AsyncClient, callback_id: str) -> asyncio.Future[httpx.Response]:
    headers = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    return asyncio.ensure_future(client.post(f"/v1/callbacks/{callback_id}/attempts", content=BODY, headers=headers))


async def closed_loop(url: str, *, ids: list[str] | None) -> tuple[float, int]:
    """Without wrk: CONCURRENCY workers each sending the next request when the last returns."""
    done, bad = 0, 0
    stop = time.perf_counter() + DURATION
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=10, limits=httpx.Limits(max_connections=64)) as c:

        async def worker(w: int) -> None:
            nonlocal done, bad
            i = w
            while time.perf_counter() < stop:
                response = await (post(c, ids[i % len(ids)]) if ids else c.get("/healthz"))
                done += 1
                bad += response.status_code >= 300
                i += CONCURRENCY

        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
    return done / (time.perf_counter() - began), bad


Timed = list[tuple[float, float]]  # (sent, seconds after the first send; latency, seconds)


async def paced(url: str, ids: list[str], rate: float) -> tuple[Timed, int]:
    """Open loop at `rate` requests/s: each latency from the request's due time to its response."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    timed: Timed = []
    bad = 0
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=30, limits=limits) as client:

        async def one(index: int, due: float) -> None:
            nonlocal bad
            response = await post(client, ids[index % len(ids)])
            timed.append((due - began, time.perf_counter() - due))
            bad += response.status_code != 201

        with collector_paused():
            began = time.perf_counter()
            tasks = []
            for index in range(int(rate * PACED_SECONDS)):
                due = began + index / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(one(index, due)))
            await asyncio.gather(*tasks)
    return timed, bad


def vegeta_path() -> str | None:
    """vegeta on the PATH, or where `make vegeta` puts it."""
    local = ROOT / ".local" / "bin" / "vegeta"
    return shutil.which("vegeta") or (str(local) if local.exists() else None)


async def vegeta(url: str, ids: list[str], rate: float) -> tuple[Timed, int]:
    """Open loop at `rate` requests/s with vegeta (Go): as `paced`, but a load generator whose own
    CPU does not compete with the service's (the Python client took about 3 ms of CPU a request, on
    two cores). Each latency runs from the request's send; vegeta adds workers rather than let a
    slow answer hold up the next send."""
    run = uuid.uuid4().hex[:8]
    body = base64.b64encode(BODY.encode()).decode()
    targets = RESULTS / "paced-targets.jsonl"
    with targets.open("w") as out:
        for index in range(int(rate * PACED_SECONDS)):
            header = {"Content-Type": ["application/json"], "Authorization": [f"Bearer {API_KEY}"],
                      "Idempotency-Key": [f"vegeta-{run}-{index}"]}  # fmt: skip
            out.write(json.dumps({"method": "POST", "url": f"{url}/v1/callbacks/{ids[index % len(ids)]}/attempts",
                                  "body": body, "header": header}) + "\n")  # fmt: skip
    binary = vegeta_path()
    assert binary is not None
    attack = await asyncio.create_subprocess_exec(
        binary, "attack", "-format=json", f"-targets={targets}", f"-rate={round(rate * 10)}/10s",
        f"-duration={PACED_SECONDS:.0f}s", "-timeout=30s", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    results = (await attack.communicate())[0]
    encode = await asyncio.create_subprocess_exec(
        binary, "encode", "-to=csv", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    rows = list(csv.reader(io.StringIO((await encode.communicate(results))[0].decode())))
    if attack.returncode != 0 or not rows:
        raise RuntimeError(f"vegeta attack failed (exit {attack.returncode})")
    # CSV columns: timestamp, status code, latency in ns, bytes out, bytes in, error, ...
    first = min(int(row[0]) for row in rows)
    timed = [((int(row[0]) - first) / 1e9, int(row[2]) / 1e9) for row in rows]
    return timed, sum(row[1] != "201" for row in rows)


async def run_on(svc: Service, ids: list[str], group: str) -> dict[str, float]:
    ids_file = RESULTS / "callback-ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    if shutil.which("wrk"):
        runs = await alternate(f"{group} POST vs /healthz", post=lambda: wrk(svc.url, path="", ids_file=ids_file),
                               healthz=lambda: wrk(svc.url, path="/healthz"))  # fmt: skip
    else:
        runs = await alternate(f"{group} POST vs /healthz", post=lambda: closed_loop(svc.url, ids=ids),
                               healthz=lambda: closed_loop(svc.url, ids=None))  # fmt: skip
    post_rate, health_rate = median([r for r, _ in runs["post"]]), median([r for r, _ in runs["healthz"]])
    post_bad = sum(bad for _, bad in runs["post"])
    pace = vegeta if vegeta_path() else paced
    timed, paced_bad = await pace(svc.url, ids, post_rate / 2)
    print(f"  {worst(timed)}", flush=True)
    latencies = [lat for _, lat in timed]
    result = {"post": post_rate, "healthz": health_rate, "p50": quantile(latencies, 50),
              "p99": quantile(latencies, 99), "post_errors": post_bad + paced_bad}  # fmt: skip
    print(f"  attempts: {', '.join(f'{k} {v:.3f}' for k, v in result.items())}", flush=True)
    if result["post_errors"] > 0.01 * post_rate * DURATION * len(runs["post"]):
        raise RuntimeError(f"{result['post_errors']} attempt POSTs failed; see {RESULTS / 'logs'}")
    return result


async def outcomes_run(st: Stack, kind: str, *, open_callbacks: int = 0) -> dict[str, float]:
    """The figures on one outcomes service, with `open_callbacks` more open callbacks in its tables."""
    prefix = st.prefix()
    db = st.database(kind, prefix, "outcomes")
    try:
        async with service(st, kind, prefix, "outcomes") as svc:
            ids = await seed(db, CALLBACKS * TRIALS, tag="hot")  # a few attempts each at most
            if open_callbacks:
                await bulk_open_callbacks(db, open_callbacks)
            return await run_on(svc, ids, f"{kind}, {open_callbacks:,} more open" if open_callbacks else kind)
    finally:
        await drop(db)


async def bulk_open_callbacks(db: Database, count: int) -> None:
    """`count` open callbacks in outcomes' view, written by PostgreSQL itself (generate_series)."""
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO callback_view (callback_id, loan_id, stage, branch_id, party_id, role, state, attempt,"
                " verification_items, due_at, deadline, superseded, updated_at)"
                " SELECT md5('cb' || i), 'L-bulk-' || i, 'final_check', 'BR-1', 'P-bulk-' || i, 'borrower',"
                " 'scheduled', 1, :items, now() + interval '1 day', now() + interval '5 days', false, now()"
                " FROM generate_series(1, :n) AS i"
            ),
            {"items": ITEMS, "n": count},
        )
        await conn.execute(sa.text("ANALYZE callback_view"))


def figures(result: dict[str, float], kind: str) -> list[Figure]:
    return [
        Figure(f"POST attempt vs /healthz, c={CONCURRENCY} ({kind})", result["post"], "req/s",
               baseline=result["healthz"], goal="ratio ≥ 0.35"),
        Figure(f"POST attempt p99 at half peak, open loop ({kind})", result["p99"] * 1000, "ms", goal="≤ 50 ms"),
    ]  # fmt: skip


LAST: dict[str, float] = {}  # the small-table PostgreSQL figures of this run, for the 300k run


async def measure(st: Stack) -> list[Figure]:
    out = []
    for kind in ("postgresql", "sqlite"):
        result = await outcomes_run(st, kind)
        if kind == "postgresql":
            LAST.update(result)
        out += figures(result, kind)
    return out
