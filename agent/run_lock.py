"""One lock per run and node, held while tasks of the run may live on the node.

`--resume` right after a `kill -9` started the interrupted tasks again at
once, while the first copies still ran on the same cores: the killed
launcher's orphan guard gives them SIGTERM and, 3 s later, SIGKILL, and in
Slurm mode the node agents of a killed service notice its loss only after
about 10 s (helper report: two copies of a task side by side for 9 s). The
aux dir's lock cannot tell: it goes with the service.

This lock is a file in the node's temporary directory named after the run
(a path in its aux dir, the same for a resume) and the node. A launcher takes
it before it starts any task, waiting (bounded) while an earlier launcher of
the run -- or that launcher's orphan guard -- still holds it, and hands it to
each guard it starts, so it is held until the last task of the run on this
node is gone. flock(2) locks belong to the open file, which a guard shares.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
import time
import zlib
from typing import Callable

WAIT = 60.0         # seconds a launcher waits for the tasks of an interrupted run on its node to end
POLL = 0.1


def _temp_root() -> str:
    """`tempfile.gettempdir()`'s choice (the first of TMPDIR, TEMP, TMP that is a usable directory, else /tmp),
    without `tempfile`: it loads shutil, bz2, lzma and random into every launcher (5 ms of each start), and
    tries a file in the directory. Where /tmp is unusable too, tempfile goes on to /var/tmp and the working
    directory; here the run then has no lock (see `_try`), as before where none of them was usable."""
    for var in ("TMPDIR", "TEMP", "TMP"):
        path = os.environ.get(var)
        if path and os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK):
            return os.path.abspath(path)
    return "/tmp"


def _private_dir() -> str | None:
    """This user's directory for run locks, or None when it is not safely ours (another user made it)."""
    path = os.path.join(_temp_root(), f"qcgpj-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


class RunLock:
    """Taken with `acquire`, released by `release`, which removes the file only when this process held the
    lock."""

    def __init__(self, run: str, node: str) -> None:
        self.path: str | None = None
        self._fd = -1
        self._held = False
        where = _private_dir()
        if where is not None:
            # a checksum, not hashlib: that loads OpenSSL (4 MB of RSS, 5 ms) into every launcher; a clash
            # of two runs would only make one wait for the other's end on this node
            key = f"{os.path.realpath(run)}\0{node}".encode("utf-8", "surrogateescape")
            self.path = os.path.join(where, f"{zlib.crc32(key):08x}{zlib.adler32(key):08x}{len(key):04x}.lock")

    def _try(self) -> bool | None:
        """One attempt: True when held, False when another holds it, None when it cannot be had at all."""
        if self.path is None:
            return None
        while True:
            if self._fd < 0:
                try:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                except OSError:
                    return None
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError:
                return None
            if self._still_at_path():
                self._held = True
                return True
            os.close(self._fd)        # the holder released it and removed the file: lock the new one
            self._fd = -1

    async def acquire(self, timeout: float = WAIT, waiting: Callable[[], None] | None = None) -> bool:
        """Take the lock, waiting up to `timeout` s (`waiting` is called once when a wait begins) while the
        loop -- its signal handlers -- runs on; False when it could not be taken (no lock file, or still
        held at the end: the caller goes on)."""
        deadline = time.monotonic() + timeout
        while (got := self._try()) is False and time.monotonic() < deadline:
            if waiting is not None:
                waiting()
                waiting = None
            await asyncio.sleep(POLL)
        return bool(got)

    def _still_at_path(self) -> bool:
        try:
            here, there = os.fstat(self._fd), os.stat(self.path, follow_symlinks=False)    # type: ignore[arg-type]
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def fileno(self) -> int:
        """The locked file's descriptor while the lock is held (-1 otherwise), for an orphan guard to hold too."""
        return self._fd if self._held else -1

    def release(self) -> None:
        """The run's tasks on this node have all ended: the file goes (if the lock was ours), then the lock."""
        if self._held and self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._held = False
