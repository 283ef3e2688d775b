"""Logs (structlog): JSON for machines, console lines for a person at a terminal.

Log ids, never names, phones, emails or notes: both renderers print the same fields.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

from shared.tracing import log_ids

LogFormat = Literal["auto", "json", "console"]
_configured = False


def renders_console(*, log_format: LogFormat, stream: TextIO) -> bool:
    """Console lines when asked for, or when `auto` and the stream is a terminal; JSON otherwise."""
    if log_format == "auto":
        return stream.isatty()
    return log_format == "console"


def processors(*, console: bool) -> list[structlog.typing.Processor]:
    """The processor chain: context, level, time, trace ids, then one renderer."""
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if console else structlog.processors.JSONRenderer(ensure_ascii=False)
    )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        log_ids,
        # The console renderer prints tracebacks itself; JSON wants them as a string field.
        *([] if console else [structlog.processors.format_exc_info]),
        renderer,
    ]


def configure_logging(level: str = "INFO", *, log_format: LogFormat = "auto") -> None:
    global _configured
    if _configured:
        return
    _configured = True
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level)
    for noisy in ("aiokafka", "kafka", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=processors(console=renders_console(log_format=log_format, stream=sys.stderr)),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
