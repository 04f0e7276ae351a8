"""Files of a run opened only from a directory of this user's that nobody else can write into.

Why: a run's files live in its aux dir, and anybody who may write into a
directory above it (a group-writable working dir) can rename the aux dir
away and put one of theirs in its place, with files of their own: an
address and keys that hand a node agent's tasks to them, a journal whose
commands a resume runs, a link named final_status.json that has the
service overwrite a file of the victim's (a security review did all
three). Checking the path first and opening it afterwards leaves a race.
So the directory is opened without following a link and checked through
its descriptor (this user's, not writable by group or others), and the file
is opened relative to that descriptor, not through a link, and checked to
be this user's: what is read or written is in the directory that was
checked, whatever happens to the path meanwhile. Used by node agents
(`api/curve`) and by the service for its aux dir (`governor/aux_dir`).
"""

from __future__ import annotations

import errno
import os
import stat

_MAX_READ = 64 * 1024       # an address or a key file is a few dozen bytes


def open_private(path: str, flags: int, mode: int = 0o600) -> int:
    """`os.open` of `path` in a private directory of this user's (also an `opener` for `open()`).

    New files get `mode` (0600: they hold job environments or keys).
    Raises PermissionError for a directory or file that is not this user's
    own or is a link, FileNotFoundError when either is not there (yet).
    """
    directory, name = os.path.split(os.path.abspath(path))
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        # O_DIRECTORY | O_NOFOLLOW on a link: ELOOP, or ENOTDIR when it names a directory
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(directory):
            raise PermissionError(errno.EPERM, "a symbolic link, not a directory of this user's: refused",
                                  directory) from None
        raise
    try:
        st = os.fstat(dfd)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionError(errno.EPERM, f"not one of this user's directories that nobody else may write "
                                               f"into (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): "
                                               f"refused", directory)
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PermissionError(errno.EPERM, "a symbolic link: refused", path) from None
            raise
        fst = os.fstat(fd)
        if fst.st_uid != os.geteuid() or not stat.S_ISREG(fst.st_mode):
            os.close(fd)
            raise PermissionError(errno.EPERM, f"not a file of this user (owner uid {fst.st_uid}): refused", path)
        return fd
    finally:
        os.close(dfd)


def read_private(directory: str, name: str) -> bytes:
    """The content (at most 64 KiB) of `name` in `directory`, opened with `open_private`."""
    fd = open_private(os.path.join(directory, name), os.O_RDONLY)
    try:
        return os.read(fd, _MAX_READ)
    finally:
        os.close(fd)
