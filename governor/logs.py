"""Structured logging into the aux dir: one line per event, level set by `--log`."""

from __future__ import annotations

import logging

import structlog

from qcg.pilotjob.governor.aux_dir import own_opener
from qcg.pilotjob.governor.lossy_stream import LossyStream

LEVELS = ("critical", "error", "warning", "info", "debug", "notset")

#: `--log debug`: a line for every start and end of a task. The code of every task event reads this flag
#: instead of calling `log.debug`, which costs microseconds even when the level drops the line (the lazy
#: logger binds itself on each call), tens of thousands of times in a sweep.
task_lines = False


def setup(path: str, level: str = "info") -> LossyStream:
    """Send every structlog event (and stdlib logging) to `path`; returns the open file."""
    global task_lines
    # a line that cannot be written (a full disk, a quota) is dropped: a failed write raised inside a task's
    # start or end and stalled the run
    out = LossyStream(open(path, "a", encoding="utf-8", buffering=1, opener=own_opener))
    numeric = logging.getLevelName(level.upper()) if level != "notset" else logging.DEBUG
    task_lines = numeric <= logging.DEBUG
    stamp = [structlog.processors.add_log_level,
             structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S.%f", utc=False)]
    render = [structlog.processors.format_exc_info,
              structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "logger", "event"],
                                                    drop_missing=True)]
    structlog.configure(
        processors=[*stamp, *render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # lines of libraries that use `logging` (zmq.auth, asyncio) in the same form as ours
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        foreign_pre_chain=[*stamp, structlog.stdlib.add_logger_name]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    return out
