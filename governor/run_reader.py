"""Reading a finished run's aux dir into memory, for the figures of `qcg-pm-report` (`perf_report`).

The service leaves two files behind: `jobs.report` (JSON lines, one per
finished task and one per job) and `final_status.json` (service start and
end, resources). Everything here is derived from them alone, so a report can
be made long after the run, on another machine.

Times. A task's history has SCHEDULED (the partition assigned cores: "start
by qcg"), EXECUTING (the node agent spawned the process: the real start) and
its final state (SUCCEED/FAILED/CANCELED: the agent saw the process end, the
real end). With `--enable-rt-stats` the runtime also has `qcg_finish`: when
the governor registered the end. All are local wall-clock times of the same
form, so they are compared as naive datetimes turned into seconds.

Cost is linear in the number of report lines: the file is streamed, each line
is reduced at once to a few floats appended to its cores' interval lists, and
each core's list is sorted once when figures are asked for.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator

from qcg.pilotjob.api import protocol

REPORT_FILE = "jobs.report"
STATUS_FILE = "final_status.json"
AUX_PREFIX = protocol.AUX_DIR_PREFIX
_FINAL = frozenset({"SUCCEED", "FAILED", "CANCELED"})
_EPOCH = datetime(1970, 1, 1)

Interval = tuple[float, float, bool]        # real start, real end, not FAILED


class ReportError(Exception):
    """A run directory that cannot be analysed; the message is shown to the user as one line."""


_SECONDS: dict[str, float] = {}        # "YYYY-mm-ddTHH:MM:SS" -> seconds: tasks of a run share few seconds


def _ts(text: object) -> float:
    """Seconds of a naive local datetime text: both files write local times of the same clock.

    The part up to the second is parsed once per distinct second (four dates
    per report line); the fraction is added as a float.
    """
    if not isinstance(text, str):
        raise ValueError(f"date {text!r} is not a string")
    head, frac = text[:19], text[19:]
    if not frac or (frac[0] == "." and frac[1:].isdigit()):
        base = _SECONDS.get(head)
        if base is None:
            if len(_SECONDS) >= 65536:
                _SECONDS.clear()
            base = _SECONDS[head] = (datetime.fromisoformat(head) - _EPOCH).total_seconds()
        return base + float(frac) if frac else base
    dt = datetime.fromisoformat(text)           # another form (a UTC offset): as local wall-clock time
    if dt.tzinfo is not None:
        dt = dt.astimezone().replace(tzinfo=None)
    return (dt - _EPOCH).total_seconds()


def _natural(text: str) -> list:
    """Sort key putting `n2` before `n10` and core `2` before `10`."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def run_dirs(path: str, report_file: str = REPORT_FILE) -> list[str]:
    """[path] when it is an aux dir, else its `.qcgpjm-service-*` holding a run, newest first (by mtime,
    as `--resume` picks).

    A directory is taken as an aux dir when it holds the report or
    `final_status.json`, so an aux dir placed with `--aux-dir` works too.
    """
    if not os.path.exists(path):
        raise ReportError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise ReportError(f"{path}: not a directory (give a run's working directory or its aux directory)")

    def holds_run(d: str) -> bool:
        return os.path.isfile(os.path.join(d, report_file)) or os.path.isfile(os.path.join(d, STATUS_FILE))

    if holds_run(path):
        return [path]
    try:
        cands = [os.path.join(path, e) for e in os.listdir(path) if e.startswith(AUX_PREFIX)]
    except OSError as exc:
        raise ReportError(f"{path}: cannot be listed: {exc.strerror}") from None
    runs = [c for c in cands if os.path.isdir(c) and holds_run(c)]
    if not runs:
        if cands:
            raise ReportError(f"{path}: its aux directories ({AUX_PREFIX}*) hold no {report_file} "
                              f"nor {STATUS_FILE} (the run did not get far enough to write them)")
        raise ReportError(f"{path}: no QCG-PilotJob aux directory ({AUX_PREFIX}*) there; give the working "
                          f"directory of a finished run or its aux directory")
    return sorted(runs, key=os.path.getmtime, reverse=True)


@dataclass(frozen=True)
class ServiceInfo:
    """`final_status.json`: service start/end as written there, and the resources."""

    started: str
    finished: str
    start: float
    finish: float
    total_cores: int | None
    total_nodes: int | None

    @property
    def runtime(self) -> float:
        return self.finish - self.start


def read_final_status(aux_dir: str) -> ServiceInfo | None:
    """None when the file is missing (the run was killed); its figures are then unknown, not zero."""
    path = os.path.join(aux_dir, STATUS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        system, res = data.get("System") or {}, data.get("Resources") or {}
        started, finished = str(system["Started"]), str(system["Generated"])
        cores, nodes = res.get("TotalCores"), res.get("TotalNodes")
        return ServiceInfo(started, finished, _ts(started), _ts(finished),
                           int(cores) if cores is not None else None, int(nodes) if nodes is not None else None)
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReportError(f"{path}: not a final status of a run ({exc.__class__.__name__}: {exc})") from None


@dataclass
class RunData:
    """What the figures need, reduced while streaming the report."""

    aux_dir: str
    service: ServiceInfo | None
    total_jobs: int = 0             # tasks: iterations and non-iterative jobs (not an iterative job's own line)
    failed_jobs: int = 0
    ran: int = 0                    # tasks with an allocation, a real start and a real end
    earlier: int = 0                # of those: ended before this service started (an earlier run, then --resume)
    torn_last_line: bool = False
    # launch figures: count and sums over every started task / over those with qcg_finish
    n_start: int = 0
    sum_start: float = 0.0
    sum_real: float = 0.0
    n_rt: int = 0
    rt_sum_start: float = 0.0
    rt_sum_finish: float = 0.0
    rt_sum_real: float = 0.0
    rt_sum_qcg: float = 0.0
    first_start: float | None = None            # of this service's tasks
    last_end: float | None = None
    cores: dict[str, dict[str, list[Interval]]] = field(default_factory=dict)   # node -> core -> intervals
    # every task that counts, with the interval lists of its cores (those of `cores`): efficiency
    tasks: list[tuple[Interval, list[list[Interval]]]] = field(default_factory=list)

    def require_service(self) -> ServiceInfo:
        if self.service is None:
            raise ReportError(f"{os.path.join(self.aux_dir, STATUS_FILE)}: missing -- the service writes it "
                              f"when it ends, so this run has not finished (or was killed)")
        return self.service

    def core_intervals(self) -> Iterator[tuple[str, str, list[Interval]]]:
        """(node, core, intervals sorted by start) for every used core, in natural node and core order."""
        for node in sorted(self.cores, key=_natural):
            per_core = self.cores[node]
            for core in sorted(per_core, key=_natural):
                ivs = per_core[core]
                ivs.sort()
                yield node, core, ivs


def parse_allocation(text: str) -> list[tuple[str, str]]:
    """`n1[0:1],n2[4]` -> [(n1, 0), (n1, 1), (n2, 4)]: colon-separated core ids per node (Allocation.describe)."""
    out = []
    for part in text.split(","):
        node, bracket, rest = part.strip().partition("[")
        if not bracket or not node or not rest.endswith("]") or not rest[:-1]:
            raise ValueError(f"allocation {text!r}: not of the form node[core:core],node[core]")
        out.extend((node, core) for core in rest[:-1].split(":"))
    return out


def read_run(aux_dir: str, report_file: str = REPORT_FILE) -> RunData:
    """Stream `jobs.report` once; refuse the text format and lines that are not report entries."""
    path = os.path.join(aux_dir, report_file)
    run = RunData(aux_dir, read_final_status(aux_dir))
    if not os.path.isfile(path):
        raise ReportError(f"{path}: missing (a run with --report-format none writes no report)")
    states: dict[str, str] = {}         # task -> final state; a task reported again (--resume) counts once
    pending: dict[str, str] = {}        # job lines without a runtime: an iterative job, or a job that never ran
    iterated: set[str] = set()
    lanes: dict[str, list[list[Interval]]] = {}     # allocation text -> its cores' interval lists
    seen_entry = False
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not seen_entry and not line.lstrip().startswith("{"):
                    raise ReportError(f"{path}: in the text format (--report-format text); qcg-pm-report reads "
                                      f"the JSON lines format, the default (--report-format json)")
                seen_entry = True
                try:
                    entry = json.loads(line)
                except ValueError:
                    if not line.endswith("\n"):     # cut by a kill while the last batch was written
                        run.torn_last_line = True
                        continue
                    raise ReportError(f"{path}: line {lineno} is not JSON") from None
                try:
                    _add_entry(run, entry, states, pending, iterated, lanes)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise ReportError(f"{path}: line {lineno}: not a report entry ({exc})") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not a text file") from None
    for name, state in pending.items():
        if name not in iterated:
            states.setdefault(name, state)
    run.total_jobs = len(states)
    run.failed_jobs = sum(1 for s in states.values() if s == "FAILED")
    if run.total_jobs == 0:
        raise ReportError(f"{path}: no tasks in the report (an empty run)")
    if run.ran == 0:
        raise ReportError(f"{path}: none of the {run.total_jobs} tasks was started, so there are no times "
                          f"to analyse")
    if run.earlier == run.ran:
        raise ReportError(f"{path}: every task ended before the service of {STATUS_FILE} started "
                          f"(the aux directory of a resumed run whose last part ran nothing)")
    return run


def _add_entry(run: RunData, entry: dict, states: dict[str, str], pending: dict[str, str],
               iterated: set[str], lanes: dict[str, list[list[Interval]]]) -> None:
    name, state = entry["name"], entry["state"]
    if not isinstance(name, str) or not isinstance(state, str):
        raise ValueError("name and state must be strings")
    runtime = entry.get("runtime") or {}
    alloc = runtime.get("allocation")
    base, colon, _ = name.partition(":")
    if colon:
        iterated.add(base)
        states[name] = state
    elif alloc or "execution" not in entry:
        states[name] = state
    else:
        pending[name] = state
        return
    if not alloc:
        return
    sched = execd = sched_at_exec = end = None
    for h in entry.get("history") or ():
        st = h["state"]
        if st == "SCHEDULED":
            sched = h["date"]
        elif st == "EXECUTING":
            execd, sched_at_exec = h["date"], sched
        elif st in _FINAL:
            end = h["date"]
    if execd is None or end is None:
        return
    start, stop = _ts(execd), _ts(end)
    run.ran += 1
    real = stop - start
    if sched_at_exec is not None:
        scheduled = _ts(sched_at_exec)
        run.n_start += 1
        run.sum_start += start - scheduled
        run.sum_real += real
        qcg_finish = runtime.get("qcg_finish")
        if qcg_finish:
            fin = _ts(qcg_finish)
            run.n_rt += 1
            run.rt_sum_start += start - scheduled
            run.rt_sum_finish += fin - stop
            run.rt_sum_real += real
            run.rt_sum_qcg += fin - scheduled
    svc = run.service
    if svc is not None and stop < svc.start:
        run.earlier += 1            # its cores were busy in another service's time: no part of these figures
        return
    if run.first_start is None or start < run.first_start:
        run.first_start = start
    if run.last_end is None or stop > run.last_end:
        run.last_end = stop
    lists = lanes.get(alloc)
    if lists is None:
        lists = []
        for node, core in parse_allocation(alloc):
            lists.append(run.cores.setdefault(node, {}).setdefault(core, []))
        lanes[alloc] = lists
    iv = (start, stop, state != "FAILED")
    for lst in lists:
        lst.append(iv)
    run.tasks.append((iv, lists))
