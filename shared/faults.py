"""Crash points for tests: a process that reaches an armed point dies there, as `kill -9` would.

HUIFANG_FAULT_POINTS (test only; production refuses it) names the points, `name` or `name@N` for the Nth time
it is reached. Unarmed, `point` costs one dict lookup. The points:
- `outbox.published`: the relay's batch is acknowledged by the broker, its rows not yet deleted;
- `consumer.committed`: a consumer batch's database transaction is committed, its offsets not yet.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

POINTS = frozenset({"outbox.published", "consumer.committed"})
_armed: dict[str, int] = {}
_reached: Counter[str] = Counter()


def parse(spec: str) -> dict[str, int]:
    """`a,b@3` -> {"a": 1, "b": 3}; raises ValueError naming an unknown point or a bad count."""
    armed: dict[str, int] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = entry.partition("@")
        if name not in POINTS:
            raise ValueError(f"unknown fault point {name!r}; points are {', '.join(sorted(POINTS))}")
        if nth and (not nth.isdigit() or int(nth) < 1):
            raise ValueError(f"fault point {name}: the count after @ must be a whole number from 1")
        armed[name] = int(nth or 1)
    return armed


def arm(spec: str | None) -> None:
    """Arm the points of `spec` for this process (None or empty disarms all)."""
    _armed.clear()
    _reached.clear()
    _armed.update(parse(spec or ""))


def point(name: str) -> None:
    """Die here with SIGKILL if `name` is armed and this is the Nth time it is reached."""
    if name not in _armed:
        return
    _reached[name] += 1
    if _reached[name] == _armed[name]:
        # Written straight to stderr: the test reads it to know where the process died.
        sys.stderr.write(f'{{"event": "fault.point", "point": "{name}", "level": "warning"}}\n')
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
