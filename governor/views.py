"""Read-only views of the registry in the reference's response shapes.

Shared by the request handler (listJobs, jobStatus, jobInfo, status), the
reports and final_status.json, so every output says the same thing.
"""

from __future__ import annotations

import getpass
import itertools
import os
import socket
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qcg.pilotjob.governor.registry import process_name
from qcg.pilotjob.governor.states import JobState

if TYPE_CHECKING:
    from qcg.pilotjob.governor.registry import History, IterationRecord, JobRecord


CHILDS_LISTED = 100_000   # iterations listed by `jobInfo` with `withChilds` (the first ones)

def fmt_time(ts: float) -> str:
    return str(datetime.fromtimestamp(ts))


def account() -> str:
    """The user's name, or the uid's number when it has none (a container's random uid, no passwd entry:
    `getpass.getuser` raised there, and the status request and the final status failed with it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def history_text(history: "History") -> str:
    """`\\n<date>: <STATE>` per entry, as the reference's jobInfo shows it."""
    return "".join(f"\n{fmt_time(ts)}: {state.value}" for ts, state in history)


def history_list(history: "History") -> list[dict[str, str]]:
    return [{"state": state.value, "date": datetime.fromtimestamp(ts).isoformat()} for ts, state in history]


def job_list_entry(job: "JobRecord") -> dict[str, Any]:
    entry: dict[str, Any] = {"status": job.state.value}
    if job.record.messages:
        entry["messages"] = job.record.messages
    return entry


def status_entry(job: "JobRecord", iteration: int | None, asked: str) -> dict[str, Any]:
    state = job.state if iteration is None else job.iteration_state(iteration)
    return {"jobName": asked, "status": state.value}


def _record_info(rec: "IterationRecord", data: dict[str, Any], pname: str) -> dict[str, Any]:
    if rec.messages:
        data["messages"] = rec.messages
    runtime = rec.runtime_named(pname)
    if runtime:
        data["runtime"] = runtime
    if rec.history:
        data["history"] = history_text(rec.history)
    return data


def info_entry(job: "JobRecord", iteration: int | None, asked: str, with_childs: bool = False) -> dict[str, Any]:
    if iteration is not None:
        rec = job.its.get(iteration)
        data: dict[str, Any] = {"jobName": asked, "status": job.iteration_state(iteration).value}
        return _record_info(rec, data, process_name(job.desc)) if rec is not None else data
    data = {"jobName": asked, "status": job.state.value}
    pname = process_name(job.desc)
    if job.indices is not None:
        data["iterations"] = {"start": job.indices.start, "stop": job.indices.stop, "total": job.total,
                              "finished": job.finished_count, "failed": job.bad_count}
        if with_childs:
            childs = []
            # a sweep of 10**12 iterations cannot be listed in one answer (the service stopped answering)
            if job.total > CHILDS_LISTED:
                data["childsListed"] = CHILDS_LISTED
            for it in itertools.islice(job.indices, CHILDS_LISTED):
                child: dict[str, Any] = {"iteration": it, "state": job.iteration_state(it).value}
                rec = job.its.get(it)
                runtime = rec.runtime_named(pname) if rec is not None else None
                if runtime:
                    child["runtime"] = runtime
                childs.append(child)
            data["childs"] = childs
    return _record_info(job.record, data, pname)


# final_status / status counters: which bucket a state falls into (as the original counts)
_BUCKET = {
    JobState.QUEUED: "scheduling", JobState.SCHEDULED: "scheduling", JobState.EXECUTING: "executing",
    JobState.SUCCEED: "finished", JobState.CANCELED: "finished",
    JobState.FAILED: "failed", JobState.OMITTED: "failed",
}


def job_stats(jobs: "list[JobRecord]") -> tuple[dict[str, int], dict[str, int]]:
    """(per-job counts, per-iteration counts), bucketed like the original's final_status."""
    jstats = dict.fromkeys(("scheduling", "executing", "finished", "failed"), 0)
    istats = dict(jstats)
    for job in jobs:
        jstats[_BUCKET[job.state]] += 1
        if job.indices is None:
            istats[_BUCKET[job.state]] += 1
            continue
        bad = job.bad_count
        istats["failed"] += bad
        istats["finished"] += job.finished_count - bad
        istats["executing"] += job.executing_count
        istats["scheduling"] += job.total - job.finished_count - job.executing_count
    return jstats, istats


def status_report(jobs: "list[JobRecord]", resources: dict[str, int], *, instance_id: str, started: datetime,
                  zmq_address: str | None, interfaces: list[str], publisher: str | None) -> dict[str, Any]:
    js, its = job_stats(jobs)
    now = datetime.now()
    return {
        "System": {
            "InstanceId": instance_id, "Started": str(started), "Generated": str(now),
            "Uptime": str(now - started), "Zmqaddress": zmq_address, "Ifaces": interfaces,
            "StatusPublisher": publisher, "Host": socket.gethostname(), "Account": account(),
            "Wd": os.getcwd(), "PythonVersion": sys.version.replace("\n", " "), "Python": sys.executable,
            "Platform": sys.platform,
        },
        "Resources": {
            "TotalNodes": resources["total_nodes"], "TotalCores": resources["total_cores"],
            "UsedCores": resources["used_cores"], "FreeCores": resources["free_cores"],
        },
        "JobStats": {
            "TotalJobs": len(jobs), "InScheduleJobs": js["scheduling"], "FailedJobs": js["failed"],
            "FinishedJobs": js["finished"], "ExecutingJobs": js["executing"],
        },
        "IterationStats": {
            "TotalIterations": sum(its.values()), "InScheduleIterations": its["scheduling"],
            "FailedIterations": its["failed"], "FinishedIterations": its["finished"],
            "ExecutingIterations": its["executing"],
        },
    }
