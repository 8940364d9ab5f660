"""Structured logging (structlog): JSON lines when not on a terminal, readable on one.

Bad input is logged rate-limited (`RateLimited`): the first occurrence of each reason, then
at most one summary line per interval, so a flood of bad events cannot flood the logs.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import structlog


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Route structlog (and stdlib logging) to stderr; JSON unless stderr is a terminal."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # stdlib loggers (aiohttp, bytewax) render through the same pipeline
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # scrapes are not news
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestFilter) for f in server.filters):
        server.addFilter(BadRequestFilter())


class BadRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse at error level with the offending bytes, which
    may hold a client's token (`Got more than 8190 bytes when reading: b'Bearer …'`), and any
    client can send many. Keep one warning naming only the kind of problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        # here, not at the top: the dead-letter sink uses this module, and a replay, which
        # serves no HTTP, would import aiohttp (~0.1 s) for nothing
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = f"bad HTTP request refused: {type(exc).__name__}", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class RateLimited:
    """Logs an event's first occurrence per key, then one count per `interval` seconds."""

    def __init__(self, logger: Any, interval: float = 10.0) -> None:
        self._log = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, event: str, **kw: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            kw["suppressed_since_last"] = suppressed
        self._log.warning(event, **kw)
