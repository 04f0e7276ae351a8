"""The run's aux dir (`.qcgpjm-service-<id>` in the working dir): made private, and only ever our own.

Everything of a run lives there: keys, the journal (job descriptions with
their environment variables, which `--resume` replays), logs, reports. A
security audit showed what happens when it is not ours: another local user
who made the directory first (the id used to be one of 10 000 guessable
numbers, in a shared directory such as /tmp) read the job secrets, made the
service overwrite a file of the victim's through a planted symlink, and got
commands run as the victim by appending them to the journal before a resume.

So a new run makes its aux dir itself, mode 0700, under an id nobody can
guess, and takes another id if the name is taken. An aux dir that must
already exist (`--resume`, a fixed `--id` or `--aux-dir` used again) is
accepted only when it is a real directory owned by this user and writable by
nobody else; it is then closed to others (0700). A working dir that anybody
may write into without the sticky bit (where others could rename the aux dir
away) is refused as well; /tmp-like directories have that bit.

A running service holds a lock on its aux dir (`take_lock`), so a second
service in the same one -- a `--resume` of a run still alive, an `--id`
used twice -- is refused instead of running the same jobs again.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import sys

from qcg.pilotjob.api import protocol
from qcg.pilotjob.api.private_files import open_private

PREFIX = protocol.AUX_DIR_PREFIX
LOCK_FILE = "service.lock"
_TRIES = 20
_held: list[int] = []          # the lock's descriptor, open for the life of the process


class AuxDirError(Exception):
    """The aux dir or the working dir is unsafe or unusable; the message is shown as `Error: ...`."""


def new_instance_id() -> str:
    """`<host>.<number>`, as the original names its runs, from a space too large to plant in advance."""
    # os.urandom, not `secrets`: that one loads OpenSSL (hmac), half a MiB more for every service process
    return f"{socket.gethostname()}.{int.from_bytes(os.urandom(8), 'big') % 1_000_000_000}"


def check_own_dir(path: str, what: str) -> None:
    """`path` is a directory of this user that nobody else may write into; closed to others (0700)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise AuxDirError(f"{what} '{path}': {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise AuxDirError(f"{what} '{path}' is a symbolic link: refused (it must be the run's own directory)")
    if not stat.S_ISDIR(st.st_mode):
        raise AuxDirError(f"{what} '{path}' is not a directory")
    if st.st_uid != os.geteuid():
        raise AuxDirError(f"{what} '{path}' belongs to another user (uid {st.st_uid}): refused, because its "
                          f"owner could read the run's secrets and change what it runs")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AuxDirError(f"{what} '{path}' may be written by others (mode {stat.S_IMODE(st.st_mode):o}): refused, "
                          f"because they could change what the run reads back; 'chmod 700' it to use it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def check_own_files(path: str, names: tuple[str, ...], what: str) -> None:
    """Files the run reads back (the journal) must be this user's, not links planted by somebody else."""
    for name in names:
        file = os.path.join(path, name)
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
            raise AuxDirError(f"{what} '{file}' is a link or belongs to another user (uid {st.st_uid}): refused")


# `os.open` (an `opener` for `open()`) for the run's files in its aux dir: the file not a link and this
# user's, in a directory checked through its descriptor to be this user's and writable by nobody else --
# whatever happens to the aux dir's path after the start (see api/private_files.py). New files: 0600.
own_opener = open_private


def report_opener(path: str, flags: int) -> int:
    """For --report-file outside the aux dir: mode 0600 when made (it holds the jobs' environments). It
    may name any file there, e.g. /dev/null or a link of the user's, so nothing else is checked."""
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


def opener_for(path: str, aux_dir: str):
    """`own_opener` for a file in the aux dir (the default report), `report_opener` for one elsewhere."""
    inside = os.path.dirname(os.path.abspath(path)) == os.path.abspath(aux_dir)
    return own_opener if inside else report_opener


def check_wd(path: str, what: str = "working directory") -> None:
    """Refuse a working dir (or the directory an aux dir is placed in) that anybody may write into without
    the sticky bit."""
    st = os.stat(path)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise AuxDirError(f"{what} '{path}' may be written by anybody (mode {stat.S_IMODE(st.st_mode):o}, "
                          f"no sticky bit), so others could replace the run's files: refused")


def make_new(wd: str) -> tuple[str, str]:
    """(instance id, aux dir) of a new run: a directory made here, mode 0700, under a fresh id."""
    for _ in range(_TRIES):
        instance_id = new_instance_id()
        path = os.path.join(wd, PREFIX + instance_id)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise AuxDirError(f"aux directory '{path}' cannot be created: {exc.strerror}") from None
        os.chmod(path, 0o700)           # whatever the umask
        return instance_id, path
    raise AuxDirError(f"no free aux directory name in '{wd}' after {_TRIES} tries")


def make_or_reuse(path: str) -> None:
    """An aux dir under a fixed name (`--id`, `--aux-dir`): made private, or reused when it is our own."""
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o775, exist_ok=True)
        check_wd(parent, "the directory of the aux directory")
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)
    except FileExistsError:
        check_own_dir(path, "aux directory")
    except OSError as exc:
        raise AuxDirError(f"aux directory '{path}' cannot be created: {exc.strerror}") from None


def take_lock(path: str) -> None:
    """Lock the aux dir for this process's life; AuxDirError naming the holder when a live service has it.

    `flock` on a file of the dir: the kernel drops it when the holder dies (even by `kill -9`), so a
    stale lock cannot block a resume. A process forked without exec closes its copy (at fork), which
    leaves the lock to its parent.
    """
    file = os.path.join(path, LOCK_FILE)
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AuxDirError(f"aux directory '{path}': lock file cannot be opened: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AuxDirError(f"aux directory '{path}' is in use by a running service (pid {holder}): refused, "
                          f"so that its jobs do not run twice; wait for it to end, or stop it") from None
    except OSError as exc:
        # a file system without locks (Lustre mounted noflock, NFS without a lock daemon): run unguarded
        os.close(fd)
        print(f"Warning: aux directory '{path}' cannot be locked ({exc.strerror}): a second service started "
              f"in it (a --resume too early) would not be refused", file=sys.stderr)
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    if not _held:
        os.register_at_fork(after_in_child=_close_in_child)
    _held.append(fd)


def _close_in_child() -> None:
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
