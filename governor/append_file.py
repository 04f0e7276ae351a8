"""The run's record files (`jobs.report`, `track.states`, `track.reqs`): written to the end, nothing dropped.

Python's buffered files drop what they could not write once a later flush
fails too: a full disk for a few seconds lost report lines for good, with
nothing said (helper report: 45 of 83 lines kept). Here what is not written
stays, from the byte where the write stopped, until a flush gets it all out;
so a line cut by a full disk is completed, not followed by the next one.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Callable

Opener = Callable[[str, int], int]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def _write(fd: int, data: bytes) -> int:
    written = os.write(fd, data)
    if written == 0:            # nothing taken and no error: not a loop to spin in
        raise OSError(errno.ENOSPC, "the file took no more bytes")
    return written


RETRY_AFTER = 1.0       # seconds a failed flush is not tried again (each try copies what is waiting)


class AppendFile:
    def __init__(self, path: str, opener: Opener) -> None:
        self._fd = opener(path, _FLAGS)
        self._pending: list[bytes] = []
        self._failed: OSError | None = None     # the last flush's error, until RETRY_AFTER has passed
        self._retry_at = 0.0

    def write(self, text: str) -> None:
        """Kept until the next `flush` (never raises: a name the OS gave in another encoding stays as it was)."""
        self._pending.append(text.encode("utf-8", "surrogateescape"))

    def flush(self, force: bool = False) -> None:
        """Everything given so far to disk; OSError (what is left stays for the next flush). After a failure
        the next RETRY_AFTER seconds raise the same error without trying (the service flushes every loop
        turn with ends and before each answer), unless `force`d."""
        if not self._pending:
            return
        if self._failed is not None and not force and time.monotonic() < self._retry_at:
            raise self._failed
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        done = 0
        try:
            while done < len(data):
                done += _write(self._fd, data[done:] if done else data)
        except OSError as exc:
            self._failed, self._retry_at = exc, time.monotonic() + RETRY_AFTER
            raise
        finally:
            self._pending = [data[done:]] if done < len(data) else []
        self._failed = None

    def write_record(self, data: bytes) -> None:
        """All of `data` at once, or nothing: a failed write is cut off again (OSError raised), so that a
        refused record never reaches the file later, nor a torn one stays in front of the next."""
        self.flush(force=True)
        size = os.lseek(self._fd, 0, os.SEEK_END)
        done = 0
        try:
            while done < len(data):
                done += _write(self._fd, data[done:] if done else data)
        except OSError:
            if done:
                try:
                    os.ftruncate(self._fd, size)
                except OSError:
                    pass          # the reader cuts a torn end (journal.cut_torn_ends)
            raise

    def close(self) -> None:
        """Flush, then close (closed even when the flush fails; its OSError is raised)."""
        if self._fd < 0:
            return
        try:
            self.flush(force=True)
        finally:
            os.close(self._fd)
            self._fd = -1
