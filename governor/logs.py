"""Structured logging into the aux dir: one line per event, level set by `--log`."""

from __future__ import annotations

import logging
from typing import TextIO

import structlog

LEVELS = ("critical", "error", "warning", "info", "debug", "notset")


def setup(path: str, level: str = "info") -> TextIO:
    """Send every structlog event (and stdlib logging) to `path`; returns the open file."""
    out = open(path, "a", encoding="utf-8", buffering=1)
    numeric = logging.getLevelName(level.upper()) if level != "notset" else logging.DEBUG
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S.%f", utc=False),
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "logger", "event"],
                                                  drop_missing=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("timestamp=%(asctime)s level=%(levelname)s logger=%(name)s "
                                           "event=%(message)r"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    return out
