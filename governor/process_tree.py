"""Reading a run's process statistics back (reference 16.2): which processes a job started.

The ptrace files (`agent/process_stats.py` describes their format) are in
the run's working directory, one per node agent (one per service or
partition manager in a local run); `jobs.report` in the aux dir says which
pid each task had, on which node, and when it started. Processes are
linked to their parents within a node; a pid seen twice (reused) is told
apart by creation time, and a job's process is the one with its pid created
closest to the job's start.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator

import msgpack

from qcg.pilotjob.governor.run_reader import ReportError, run_dirs

SHELLS = {"bash", "sh", "dash", "zsh", "ksh", "csh", "tcsh", "fish"}
START_TOLERANCE = 30.0     # seconds between a job's EXECUTING date and its process's creation


class TraceError(Exception):
    """Shown to the user as one `Error: ...` line."""


@dataclass
class Proc:
    pid: int
    name: str
    cmdline: list[str]
    parent: int | None
    parent_name: str | None
    node: str
    created: float
    data: dict[str, Any]                       # the whole record, as in the file
    children: list["Proc"] = field(default_factory=list)

    def matches(self, program: str) -> bool:
        """Runs `program`: its name, or the program or script its command line starts."""
        if self.name == program:
            return True
        return any(os.path.basename(arg) == program for arg in self.cmdline[:2])


@dataclass
class JobTask:
    name: str
    pid: int
    node: str | None
    started: float | None        # epoch of EXECUTING
    program: str | None          # basename of the job's executable (None: unknown)


@dataclass
class Traces:
    files: list[str]
    by_node: dict[str, list[Proc]]
    interval: float = 1.0

    def find(self, task: JobTask) -> Proc:
        """The process of `task`: its pid on its node (else on any), created closest to its start."""
        nodes = [task.node] if task.node in self.by_node else []
        nodes += [n for n in self.by_node if n not in nodes]
        same_pid = [p for n in nodes for p in self.by_node[n] if p.pid == task.pid]
        if not same_pid:
            raise TraceError(f"job '{task.name}' (pid {task.pid}) is not in the process statistics: it probably "
                             f"ended before it was polled (every {self.interval:g} s, reference 16.1)")
        if task.started is None:
            return same_pid[0]
        started = task.started
        near = [p for p in same_pid if abs(p.created - started) <= START_TOLERANCE]
        if not near:
            other = min(same_pid, key=lambda p: abs(p.created - started))
            raise TraceError(f"job '{task.name}': pid {task.pid} in the process statistics is another process "
                             f"(created {format_date(other.created)}, the job started {format_date(started)}): "
                             f"the job's own process ended before it was polled")
        return min(near, key=lambda p: (p.node != task.node, abs(p.created - started)))


def find_aux_dir(path: str) -> str:
    """`path` itself when it is an aux dir, else its newest `.qcgpjm-service-*` holding a run (as
    `qcg-pm-report` picks it: `run_reader.run_dirs`)."""
    if not os.path.isdir(path):
        raise TraceError(f"'{path}' is not a directory")
    try:
        return os.path.abspath(run_dirs(path)[0])
    except ReportError as exc:
        raise TraceError(f"no QCG-PilotJob run in '{path}' ({exc})") from None


def trace_dirs(path: str, aux: str) -> list[str]:
    """Where the ptrace files of the run of `aux` can be: `path`, the aux dir's parent, the run's --wd."""
    dirs = [os.path.abspath(path), os.path.dirname(aux)]
    try:
        with open(os.path.join(aux, "service.log"), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                found = re.search(r"event='service starting'.* wd='([^']*)'", line)
                if found:
                    dirs.append(found.group(1))
                    break
    except OSError:
        pass
    return list(dict.fromkeys(dirs))


def load_traces(dirs: list[str]) -> Traces:
    """Every ptrace file of `dirs`; processes linked to their parents within each node."""
    files = sorted({f for d in dirs for f in glob.glob(os.path.join(d, "ptrace_*.log"))})
    if not files:
        raise TraceError(f"no process statistics (ptrace_*.log) in {', '.join(repr(d) for d in dirs)}: "
                         f"was the run started with --enable-proc-stats?")
    by_key: dict[tuple[str, int, float], Proc] = {}
    interval = 1.0
    for path in files:
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
            node = str(doc["node"])
            interval = float(doc.get("interval", interval))
            for rec in doc["processes"]:
                proc = Proc(int(rec["pid"]), str(rec.get("name", "?")), list(rec.get("cmdline") or []),
                            rec.get("parent"), rec.get("parent_name"), str(rec.get("node") or node),
                            float(rec["created"]), rec)
                key = (proc.node, proc.pid, proc.created)
                old = by_key.get(key)
                if old is None or rec.get("last_seen", 0) > old.data.get("last_seen", 0):
                    by_key[key] = proc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TraceError(f"{path}: not a readable process statistics file ({exc})") from None
    by_node: dict[str, list[Proc]] = {}
    for proc in sorted(by_key.values(), key=lambda p: p.created):
        by_node.setdefault(proc.node, []).append(proc)
    for procs in by_node.values():
        _link(procs)
    return Traces(files, by_node, interval)


def _link(procs: list[Proc]) -> None:
    """Each process under the latest process with its parent's pid created before it (pids are reused).

    `procs` are in creation order, so children are too. Creation times have
    the kernel's 10 ms resolution: a child may seem as old as its parent.
    """
    by_pid: dict[int, list[Proc]] = {}
    for proc in procs:
        by_pid.setdefault(proc.pid, []).append(proc)
    for proc in procs:
        older = [p for p in by_pid.get(proc.parent, ()) if p is not proc and p.created <= proc.created + 0.02] \
            if proc.parent is not None else []
        if older:
            older[-1].children.append(proc)


def walk(root: Proc, level: int = 0) -> Iterator[tuple[Proc, int]]:
    """`root` and its descendants, depth first, with their depth below `root`."""
    yield root, level
    for child in root.children:
        yield from walk(child, level + 1)


def targets(root: Proc, program: str | None) -> tuple[list[Proc], str]:
    """The job's application processes and how they were chosen.

    Those running `program`; for a shell (a `script` job) or when none runs
    it, the leaves of the tree (the commands the shell ran).
    """
    procs = [p for p, _ in walk(root)]
    if program and program not in SHELLS:
        named = [p for p in procs if p.matches(program)]
        if named:
            return named, f"named {program}"
    leaves = [p for p in procs if not p.children]
    why = "leaf processes" if not program or program in SHELLS else f"leaf processes: none named {program}"
    return leaves, why


# ------------------------------------------------------------------ jobs.report
def job_task(aux: str, name: str) -> JobTask:
    """The task `name` ("job" or "job:iteration") from the run's jobs.report."""
    report = os.path.join(aux, "jobs.report")
    base = name.split(":", 1)[0]
    entry = None
    desc = None
    iterations = False
    named = False
    # a line is decoded only when it holds the name or the job's name as a JSON string; to tell a job
    # with iterations, lines holding an iteration's name until the first one is seen
    exact = _json_texts(name) | _json_texts(base)
    any_iteration = {text[:-1] for text in _json_texts(base + ":")} if name == base else set()

    def wanted(line: str) -> bool:
        return any(k in line for k in exact) or (not iterations and any(k in line for k in any_iteration))

    for rec in _report_records(report, wanted):
        rname = rec.get("name")
        if rname == name:
            named = True
            if (rec.get("runtime") or {}).get("pid"):
                entry = rec                    # the last run counts (a task run again after a lost node)
        if rname == base and rec.get("execution"):
            desc = rec
        if isinstance(rname, str) and rname.startswith(base + ":"):
            iterations = True
    if entry is None:
        if name == base and iterations:
            raise TraceError(f"job '{name}' has iterations: name one, e.g. '{name}:0'")
        if named:
            raise TraceError(f"job '{name}' has no process in {report} (it never started)")
        raise TraceError(f"job '{name}' is not in {report}")
    runtime = entry["runtime"]
    try:
        pid = int(runtime["pid"])
    except (TypeError, ValueError):
        raise TraceError(f"job '{name}': bad pid {runtime.get('pid')!r} in {report}") from None
    node = _first_node(str(runtime.get("allocation") or ""))
    started = None
    for state in entry.get("history") or []:
        if state.get("state") == "EXECUTING":
            try:
                started = datetime.fromisoformat(state["date"]).timestamp()
            except (KeyError, TypeError, ValueError):
                pass
    execution = (desc or entry).get("execution") or _journal_execution(aux, base)
    return JobTask(name, pid, node, started, _program(execution))


def _json_texts(name: str) -> set[str]:
    """`name` as a JSON string, escaped to ASCII and not (a report may be written either way)."""
    return {json.dumps(name), json.dumps(name, ensure_ascii=False)}


def _report_records(path: str, wanted: Callable[[str], bool]) -> Iterator[dict[str, Any]]:
    """The report's lines that `wanted` picks, decoded, read one at a time.

    The report of a run of a million iterations is hundreds of megabytes, and one task is asked
    for: the lines are neither held nor decoded, but the one that `wanted` picks -- and the first,
    which tells a report in text from one in JSON lines.
    """
    first = True
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip() or not (first or wanted(line)):
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    if first:
                        raise TraceError(f"{path} is not in JSON lines (a run with --report-format text?)") \
                            from None
                    continue                     # a line cut short by a kill while it was written
                first = False
                if isinstance(rec, dict):
                    yield rec
    except FileNotFoundError:
        raise TraceError(f"no jobs.report in {os.path.dirname(path)} (a run with --report-format none?)") from None
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror}") from None


def _first_node(allocation: str) -> str | None:
    """'n1[0:1],n2[0]' -> 'n1': the task's process runs on the first node of its allocation."""
    head = allocation.split(",", 1)[0].strip()
    return head.split("[", 1)[0] or None


def _journal_execution(aux: str, job: str) -> dict[str, Any] | None:
    """The job's `execution` from track.reqs, when jobs.report has no line of the job itself (yet)."""
    try:
        with open(os.path.join(aux, "track.reqs"), "rb") as fh:
            for rec in msgpack.Unpacker(fh, raw=False, strict_map_key=False):
                for desc in (rec.get("jobs") or []) if isinstance(rec, dict) else []:
                    if isinstance(desc, dict) and desc.get("name") == job:
                        return desc.get("execution")
    except (OSError, ValueError, msgpack.exceptions.UnpackException):
        pass
    return None


def _program(execution: Any) -> str | None:
    """The executable's name, as its processes are named; a `script` job runs in bash."""
    if not isinstance(execution, dict):
        return None
    if execution.get("exec"):
        return os.path.basename(str(execution["exec"]))
    if execution.get("script") is not None:
        return "bash"
    return None


def format_date(ts: float) -> str:
    """As the reference prints creation times: 2021-03-25 17:18:34.350000."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")
