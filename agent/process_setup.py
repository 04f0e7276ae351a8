"""Settings our own processes give themselves: at start, and before the first task.

The time slice and the open-files limit are requests to the kernel that need
no privilege: the limit is the process's, the slice the launching thread's
(in flat mode the service's event-loop thread, which also does the
governor's work). Each of the two is skipped quietly where the platform does
not have it: a launcher that cannot tune itself still launches correctly,
only slower. Keeping `ssl` out is for our programs' entry points only.
"""

from __future__ import annotations

import logging
import os
import sys

_log = logging.getLogger(__name__)


def keep_tls_out() -> None:
    """Mark `ssl` as absent in this process. For our own programs' entry points only, never a library import.

    Why: asyncio imports ssl at start-up, for TLS transports, which we never
    use (ZMQ with CURVE carries everything), and with it OpenSSL: 4.6 MiB of
    resident memory and about 10 ms of start-up in every service, manager and
    agent (measured, Python 3.11). Marked absent, asyncio runs as on a Python
    built without ssl. A process that has already imported it keeps it.
    """
    sys.modules.setdefault("ssl", None)


FD_SOFT_LIMIT = 65536      # the open-files soft limit a launcher raises itself to (at most the hard limit)


def raise_open_files_limit(target: int = FD_SOFT_LIMIT) -> None:
    """Raise this process's soft RLIMIT_NOFILE towards `target`.

    Every running task holds a pidfd here, and a service also holds one
    descriptor per client connection -- connections anybody on the host can
    open before the CURVE handshake refuses them. The common soft limit of
    1024 is soon reached that way. Capped, because tasks inherit the limit,
    and some programs walk every descriptor number up to it.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = target if hard == resource.RLIM_INFINITY else min(target, hard)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - a platform without it, or not allowed
        pass


def keep_inherited_fds_from_tasks() -> int:
    """Mark every descriptor this process was started with, above stderr, close-on-exec; returns how many.

    Why: `posix_spawn` hands a child every descriptor without that flag,
    and cannot close the rest as `subprocess` does (close_fds). What Python
    and libzmq open has the flag already (PEP 446, SOCK_CLOEXEC); what a
    process is started with -- a shell's or a batch system's descriptors, a
    caller's pipes -- has not, and every task would get it: a pipe a task
    holds open keeps its reader from ever seeing the end. Called once per
    launcher, before its first start. Never raises.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:     # pragma: no cover - no /proc: nothing is changed
        return 0
    marked = 0
    for name in names:
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                marked += 1
        except OSError:     # the descriptor of the listing itself, closed by now
            pass
    return marked


SHORT_SLICE_NS = 100_000    # the shortest slice Linux grants (0.1 ms)

# (sched_setattr, sched_getattr) system call numbers; the generic table serves aarch64 and riscv64
_SCHED_ATTR_CALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "riscv64": (274, 275),
                     "ppc64le": (355, 356), "ppc64": (355, 356)}
_FAIR_POLICIES = (0, 3)             # SCHED_OTHER, SCHED_BATCH
_RESET_ON_FORK = 0x01               # SCHED_FLAG_RESET_ON_FORK


def ask_for_short_slices(slice_ns: int = SHORT_SLICE_NS) -> bool:
    """Ask for a short CPU time slice for the calling thread; True if the kernel now gives it.

    Why: when every core is busy, a launcher is queued behind the very task it
    has just started. The spawn (vfork) returns while the child is still
    exec'ing on the launcher's CPU, and the kernel lets the child run out a
    default slice there while the launcher, woken, waits -- and with it the
    next launch and the next exit's reaping. Measured on 2 cores (flat-iter,
    20 000 tasks): about 14 % of the whole run's wall time. With a short slice
    (Linux 6.12+, EEVDF) the launcher's wake-up preempts the child. Its share
    of the CPU stays the same; it only gets it sooner.

    Tasks keep the default slice: the flag resets it on fork. Left as it is:
    a thread with a real-time or idle policy or a negative nice (somebody
    chose its scheduling on purpose; the reset would also undo a negative
    nice for the tasks), and a kernel without per-task slices (it reports no
    slice; it would accept the request, ignore the slice and keep the flag).
    Skipped: kernels without `sched_setattr`, machines not in the table and
    32-bit Pythons (the table holds the 64-bit call numbers; on a 32-bit ABI
    they name other calls). Never raises: a launcher works without it.
    """
    calls = _SCHED_ATTR_CALLS.get(os.uname().machine)
    if calls is None or sys.maxsize <= 2 ** 32:
        return False
    try:
        return _set_slice(calls, slice_ns)
    except Exception as exc:  # noqa: BLE001 - e.g. ctypes refused by an audit hook, no libc symbol
        _log.debug("no short slices: %s", exc)
        return False


def _set_slice(calls: tuple[int, int], slice_ns: int) -> bool:
    import ctypes

    class SchedAttr(ctypes.Structure):      # struct sched_attr, SCHED_ATTR_SIZE_VER0
        _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                    ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                    ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64)]

    set_call, get_call = calls
    libc = ctypes.CDLL(None, use_errno=True)

    def current() -> SchedAttr | None:
        attr = SchedAttr()
        if libc.syscall(get_call, 0, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
            _log.debug("sched_getattr: %s", os.strerror(ctypes.get_errno()))
            return None
        return attr

    attr = current()
    # a kernel with per-task slices reports the current one (Linux 6.12+); older ones report 0
    if attr is None or attr.policy not in _FAIR_POLICIES or attr.nice < 0 or attr.runtime == 0:
        return False
    want = SchedAttr(ctypes.sizeof(SchedAttr), attr.policy, _RESET_ON_FORK, attr.nice, 0, slice_ns, 0, 0)
    if libc.syscall(set_call, 0, ctypes.byref(want), 0) != 0:
        _log.debug("sched_setattr: %s", os.strerror(ctypes.get_errno()))
        return False
    got = current()
    return got is not None and got.runtime == slice_ns
