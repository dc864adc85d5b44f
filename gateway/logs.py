"""structlog set-up: JSON lines in production, a readable console in a terminal.

The loops bind `task_id` with structlog.contextvars in the asyncio task that runs a claimed task
or delivery, so every line of it carries the id (also lines logged from the engine's threads,
which run in a copy of that context).
"""

from __future__ import annotations

import logging
import sys

import structlog

from gateway.config import LogConfig


def configure_logging(cfg: LogConfig, stream=None) -> None:
    stream = stream or sys.stderr
    use_json = cfg.format == "json" or (cfg.format == "auto" and not stream.isatty())
    renderer = (structlog.processors.JSONRenderer() if use_json
                else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    level = getattr(logging, cfg.level.upper())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(),
                    structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Standard-library loggers (aiohttp, alembic) go through the same renderer.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer, foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for noisy in ("faster_whisper", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
