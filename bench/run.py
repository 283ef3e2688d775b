"""`make bench`: every figure of issue 13 in one run, each against its fair baseline.

    .venv/bin/python -m bench.run                  # everything (about 8 minutes on 2 cores)
    .venv/bin/python -m bench.run --only timers    # one or more parts, comma-separated

Starts its own broker and PostgreSQL (or uses KAFKA_BOOTSTRAP_SERVERS_TEST / TEST_DATABASE_URL),
writes bench/results/summary.json as {"figures": [{name, value, baseline, ratio, goal, unit}]} and
prints the same table. The machine's other load slows both sides of a ratio alike; absolute
figures are only comparable between runs on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from bench.attempts import vegeta_path
from bench.common import LOGS, Figure, Stack, print_table, stack, write_summary
from shared.logs import configure_logging

# Each part is a module of bench/ with `async def measure(stack) -> list[Figure]`, in the order they run.
PARTS = {"ingest": "ingest", "timers": "timers", "post": "attempts", "outbox": "outbox", "e2e": "end_to_end",
         "300k": "big_tables"}  # fmt: skip


async def run(st: Stack, parts: list[str], failed: dict[str, str]) -> list[Figure]:
    figures: list[Figure] = []
    for part in parts:
        began = time.perf_counter()
        print(f"{part}:", flush=True)
        measure: Callable[[Stack], Awaitable[list[Figure]]] = importlib.import_module(f"bench.{PARTS[part]}").measure
        try:
            figures += await measure(st)
        except Exception as exc:  # one broken part must not cost the others' figures
            print(f"  {part} failed: {type(exc).__name__}: {exc}", flush=True)
            failed[part] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"  ({time.perf_counter() - began:.0f}s)", flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        parser.error(f"unknown part(s) {', '.join(unknown)}")
    configure_logging("WARNING")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retries while new topics get leaders

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    began = time.perf_counter()
    shutil.rmtree(LOGS, ignore_errors=True)
    failed: dict[str, str] = {}
    try:
        with stack() as st:
            figures = asyncio.run(run(st, parts, failed))
    except KeyboardInterrupt:
        print("interrupted: stopping the broker and PostgreSQL", file=sys.stderr)
        return 130
    extra = {"parts": parts, "failed": failed, "load_generator": "wrk" if shutil.which("wrk") else "python",
             "open_loop_generator": "vegeta" if vegeta_path() else "python",
             "wall_seconds": round(time.perf_counter() - began)}  # fmt: skip
    path = write_summary(figures, extra)
    print_table(figures)
    for part, error in failed.items():
        print(f"FAILED {part}: {error}")
    print(f"\nsummary: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
