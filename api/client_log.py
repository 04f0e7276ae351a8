"""The client's log file (`cfg` keys `log_file`, `log_level`, `wdir`; reference 22.1.4).

Several managers of one process may log to the same file: they share one
handler, counted, so every line is written once and the file is closed when
the last of them is cleaned up.
"""

from __future__ import annotations

import logging
import os
import threading

from qcg.pilotjob.api import errors

logger = logging.getLogger("qcg.pilotjob.api")

DEFAULT_LOG_FILE = os.path.join(".qcgpjm-client", "api.log")    # under `wdir`

_handlers: dict[str, list] = {}     # absolute path -> [handler, users]
_lock = threading.Lock()


def open_client_log(cfg: dict) -> logging.Handler | None:
    """The handler of the log file `cfg` asks for (None: `log_file=None`, no file).

    Raises FileError when the file cannot be opened.
    """
    if "log_file" in cfg and not cfg["log_file"]:
        return None
    log_file = cfg.get("log_file") or os.path.join(cfg.get("wdir", "."), DEFAULT_LOG_FILE)
    level = logging.DEBUG if str(cfg.get("log_level", "info")).lower() == "debug" else logging.INFO
    try:
        return _acquire(str(log_file), level)
    except OSError as exc:
        raise errors.FileError(f"cannot open the client log file {log_file}: {exc}") from exc


def _acquire(path: str, level: int) -> logging.Handler:
    path = os.path.abspath(path)
    with _lock:
        entry = _handlers.get(path)
        if entry is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handler = logging.FileHandler(path, mode="a", delay=True)
            handler.setFormatter(logging.Formatter("%(asctime)-15s: %(message)s"))
            logger.addHandler(handler)
            entry = _handlers[path] = [handler, 0]
        entry[1] += 1
        if logger.level == logging.NOTSET or level < logger.level:
            logger.setLevel(level)
        return entry[0]


def close_client_log(handler: logging.Handler) -> None:
    """One user less of `handler`; the last one closes the file."""
    with _lock:
        for path, entry in list(_handlers.items()):
            if entry[0] is handler:
                entry[1] -= 1
                if entry[1] <= 0:
                    logger.removeHandler(handler)
                    handler.close()
                    del _handlers[path]
                return
