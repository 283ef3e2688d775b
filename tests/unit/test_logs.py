"""Logs: console lines for a person at a terminal, JSON otherwise; the same fields either way."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import subprocess
import sys

import structlog

from shared.logs import processors, renders_console


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_picks_the_console_for_a_terminal_and_json_for_anything_else() -> None:
    assert renders_console(log_format="auto", stream=Terminal()) is True
    assert renders_console(log_format="auto", stream=io.StringIO()) is False
    assert renders_console(log_format="console", stream=io.StringIO()) is True
    assert renders_console(log_format="json", stream=Terminal()) is False


def _render(*, console: bool) -> str:
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(file=out),
        processors=processors(console=console),
        context_class=dict,
        wrapper_class=structlog.BoundLogger,  # not the session's level filter
    )
    logger.info("callback.opened", callback_id="CB-1", loan_id="L-1")
    return out.getvalue().strip()


def test_console_lines_read_like_a_log_not_like_json() -> None:
    line = _render(console=True)
    assert "\x1b[" in line  # in colour
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
    assert re.fullmatch(r"20\S+Z \[info\s*\] callback\.opened\s+callback_id=CB-1 loan_id=L-1", plain), plain


def test_json_lines_stay_json_with_the_same_fields() -> None:
    record = json.loads(_render(console=False))
    assert record["event"] == "callback.opened" and record["callback_id"] == "CB-1" and record["level"] == "info"


LOG_ONE_LINE = """
import structlog
from shared.logs import configure_logging
configure_logging()
structlog.get_logger().info("callback.opened", callback_id="CB-1")
"""


def _stderr_of_a_process(*, terminal: bool) -> str:
    """What `configure_logging()` prints on stderr when stderr is a terminal (a pty) or a pipe."""
    env = {k: v for k, v in os.environ.items() if k != "HUIFANG_LOG_FORMAT"}
    if not terminal:
        result = subprocess.run(
            [sys.executable, "-c", LOG_ONE_LINE], env=env, capture_output=True, text=True, timeout=60, check=True
        )
        return result.stderr
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", LOG_ONE_LINE], env=env, stderr=follower, timeout=60, check=True)
        os.close(follower)
        chunks = []
        with contextlib.suppress(OSError):  # EIO once the pty is drained
            while chunk := os.read(leader, 65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(leader)


def test_a_terminal_gets_console_lines_and_a_pipe_gets_json() -> None:
    at_terminal = re.sub(r"\x1b\[[0-9;]*m", "", _stderr_of_a_process(terminal=True)).strip()
    assert re.fullmatch(r"20\S+Z \[info\s*\] callback\.opened\s+callback_id=CB-1", at_terminal), at_terminal
    piped = json.loads(_stderr_of_a_process(terminal=False))
    assert piped["event"] == "callback.opened" and piped["callback_id"] == "CB-1"
