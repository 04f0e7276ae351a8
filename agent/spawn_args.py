"""How a `ProcessSpec` becomes the arguments of `posix_spawn`: the program's path, the child's streams, its CPUs.

The spawner (spawner.py) calls these on every start, so each keeps what it
can between starts: resolved programs by ``(name, PATH[, cwd])`` (``cwd``
only matters for relative PATH entries; ``posix_spawnp`` would use the PATH
of this process, not the task's), effective CPU sets by the wanted list, and
one descriptor of /dev/null. A failed start is explained here too (slow
path only), naming the stream or program at fault.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass

_log = logging.getLogger("qcg.pilotjob.agent.spawner")

_DEVNULL = os.devnull
_OPEN = os.POSIX_SPAWN_OPEN
_DUP2 = os.POSIX_SPAWN_DUP2
_RD = os.O_RDONLY
_WR = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_EXE_CACHE_MAX = 4096
_SHELL = "/bin/sh"


@dataclass(slots=True)
class ProcessSpec:
    argv: list[str]
    env: dict[str, str]                 # the complete environment of the child
    cwd: str                            # absolute; created with parents if missing
    stdin: str | None = None            # absolute paths; None -> /dev/null
    stdout: str | None = None
    stderr: str | None = None
    cpus: list[int] | None = None       # CPU affinity; None = no binding
    walltime: float | None = None       # seconds
    # streams in the run's aux dir (an agent's or a manager's stderr): made 0600, never through a link;
    # a task's may be anywhere the user points them, links included
    own_streams: bool = False


def err_text(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc)


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _is_exe(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK)


class SpawnArgs:
    """The caches and the /dev/null descriptor of one spawner."""

    def __init__(self) -> None:
        self._exe_cache: dict[tuple, str] = {}
        try:
            self.base_cpus: frozenset[int] | None = frozenset(os.sched_getaffinity(0))
        except (AttributeError, OSError):   # pragma: no cover - non-Linux
            self.base_cpus = None
        self._cpu_cache: dict[tuple[int, ...], frozenset[int] | None] = {}
        self._devnull: int | None = None

    def close(self) -> None:
        """Close the /dev/null descriptor (opened again by the next `file_actions`)."""
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None

    def file_actions(self, spec: ProcessSpec) -> list[tuple]:
        # /dev/null comes from one descriptor kept open here (O_CLOEXEC; dup2
        # clears the flag on the child's copy): cheaper than three opens in
        # the child while the parent is suspended in vfork.
        dn = self._devnull
        if dn is None:
            dn = self._devnull = os.open(_DEVNULL, os.O_RDWR | os.O_CLOEXEC)
        out, err = spec.stdout, spec.stderr
        wr, mode = (_WR | os.O_NOFOLLOW, 0o600) if spec.own_streams else (_WR, 0o666)
        fa: list[tuple] = [(_OPEN, 0, spec.stdin, _RD, 0) if spec.stdin else (_DUP2, dn, 0)]
        fa.append((_OPEN, 1, out, wr, mode) if out else (_DUP2, dn, 1))
        if err and err == out:
            fa.append((_DUP2, 1, 2))
        else:
            fa.append((_OPEN, 2, err, wr, mode) if err else (_DUP2, dn, 2))
        return fa

    def fifo_opens(self, spec: ProcessSpec, fa: list[tuple], argv: list[str],
                   exe: str) -> tuple[list[tuple], list[str], str]:
        """Streams that are FIFOs are opened by a shell in the child instead of by posix_spawn.

        posix_spawn opens the streams in its vfork child, and the parent waits, every signal blocked,
        until that child has exec'd: the open of a FIFO waits for its other end, so the loop -- the
        service, an agent -- would hang unkillable (a FIFO another task writes: for ever). A shell
        that opens it after the spawn waits on its own, as any process would, and cancel or walltime
        ends it. The program is then exec'd by its resolved path (argv[0] becomes that path). The
        usual case costs one stat() per stream given.
        """
        if spec.own_streams:
            return fa, argv, exe
        streams = [(fd, path, op) for fd, path, op in ((0, spec.stdin, "<"), (1, spec.stdout, ">"),
                                                       (2, spec.stderr, ">"))
                   if path and _is_fifo(path)]
        if not streams:
            return fa, argv, exe
        fa = list(fa)
        redirections, paths = [], []
        for fd, path, op in streams:
            if fd == 2 and path == spec.stdout:
                continue                    # one open file description for both, as below
            paths.append(path)
            redirections.append(f'{fd}{op}"${len(paths)}"')
            fa[fd] = (_DUP2, self._devnull, fd)      # until the shell's open (its message, if any: stderr)
        if spec.stderr and spec.stderr == spec.stdout and 1 in (fd for fd, _, _ in streams):
            redirections.append("2>&1")
            fa[2] = (_DUP2, self._devnull, 2)
        script = f'exec {" ".join(redirections)} && shift {len(paths)} && exec "$@"'
        if not exe.startswith("/"):
            exe = os.path.join(spec.cwd, exe)       # dash's exec has no `--`: `-prog` would be an option
        return fa, [_SHELL, "-c", script, "qcg-fifo-open", *paths, exe, *argv[1:]], _SHELL

    def resolve(self, name: str, path: str, cwd: str) -> str:
        if "/" in name:
            return name              # relative to cwd: we chdir() there before spawning
        relative = any(not d or not d.startswith("/") for d in path.split(":"))
        ck = (name, path, cwd) if relative else (name, path)
        exe = self._exe_cache.get(ck)
        if exe is not None:
            return exe
        for d in path.split(":"):
            d = d or "."
            cand = os.path.join(d if d.startswith("/") else os.path.join(cwd, d), name)
            if _is_exe(cand):
                if len(self._exe_cache) >= _EXE_CACHE_MAX:
                    self._exe_cache.clear()
                self._exe_cache[ck] = cand
                return cand
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)

    def forget(self, name: str) -> None:
        for ck in [k for k in self._exe_cache if k[0] == name]:
            del self._exe_cache[ck]

    def effective_cpus(self, wanted: list[int]) -> frozenset[int] | None:
        tk = tuple(wanted)
        if tk in self._cpu_cache:
            return self._cpu_cache[tk]
        req = frozenset(wanted)
        base = self.base_cpus
        if base is None:
            eff = None
        else:
            eff = req & base
            if not eff:
                _log.warning("none of the requested CPUs %s exist here (available %s): not binding",
                             sorted(req), sorted(base))
                eff = None
            elif eff != req:
                _log.warning("requested CPUs %s not all available here: binding to %s",
                             sorted(req), sorted(eff))
            if eff == base:
                eff = base          # identity: no affinity change needed at spawn
        if len(self._cpu_cache) < 4096:
            self._cpu_cache[tk] = eff
        return eff

    def diagnose(self, spec: ProcessSpec, exe: str, exc: OSError) -> str:
        """Explain a failed posix_spawn (slow path only)."""
        for label, p, write in (("stdin", spec.stdin, False), ("stdout", spec.stdout, True),
                                ("stderr", spec.stderr, True)):
            if not p:
                continue
            own = write and spec.own_streams
            if _is_fifo(p):
                continue        # opened by the task's own shell (fifo_opens); here the open would wait
            try:
                fd = os.open(p, (os.O_WRONLY | os.O_CREAT | os.O_APPEND if write else os.O_RDONLY)
                             | (os.O_NOFOLLOW if own else 0), 0o600 if own else 0o666)
                os.close(fd)
            except OSError as e:
                return f"cannot open {label} {p!r}: {err_text(e)}"
        return f"cannot start {spec.argv[0]!r}: {err_text(exc)}"
