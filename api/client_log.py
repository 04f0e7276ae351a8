"""The client's log file (`cfg` keys `log_file`, `log_level`, `wdir`; reference 22.1.4).

Several managers of one process may log to the same file: they share one
handler, counted, so every line is written once and the file is closed when
the last of them is cleaned up.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
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
        if not cfg.get("log_file"):
            # the default place is in the current directory, maybe a shared one like /tmp
            os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
            _check_dir(os.path.dirname(log_file))
        return _acquire(str(log_file), level)
    except OSError as exc:
        raise errors.FileError(f"cannot open the client log file {log_file}: {exc}") from exc


def _acquire(path: str, level: int) -> logging.Handler:
    path = os.path.abspath(path)
    with _lock:
        entry = _handlers.get(path)
        if entry is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handler = _NoLinkFileHandler(path, mode="a")      # opened now: a refusal is a FileError here
            handler.setFormatter(logging.Formatter("%(asctime)-15s: %(message)s"))
            logger.addHandler(handler)
            entry = _handlers[path] = [handler, 0]
        entry[1] += 1
        if logger.level == logging.NOTSET or level < logger.level:
            logger.setLevel(level)
        return entry[0]


def _check_dir(directory: str) -> None:
    """The default log directory (`.qcgpjm-client`) is this user's: in one somebody else made first (in
    /tmp, say) a link named api.log would have the client append to any file of ours (a security review)."""
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"it is a link or another user's directory (owner uid {st.st_uid}); "
                                           f"pass cfg log_file, or log_file=None", directory)


class _NoLinkFileHandler(logging.FileHandler):
    """A log file opened without following a link, and made 0600 (the log names the service's keys)."""

    def _open(self):  # type: ignore[override]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


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
