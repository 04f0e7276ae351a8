"""The request handler: one function from a request dict to a response dict.

Every interface (request file now, ZMQ later) goes through `handle`, so a
request behaves the same wherever it comes from. Nothing a client sends
can raise out of here: bad requests get `{"code": 1, "message": ...}`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Protocol

import structlog

from qcg.pilotjob.api.errors import InvalidJobDescriptionError
from qcg.pilotjob.api.jobdesc import type_name
from qcg.pilotjob.api.jobparse import parse_jobs
from qcg.pilotjob.governor.registry import split_task_name
from qcg.pilotjob.governor.states import JobState
from qcg.pilotjob.governor.views import info_entry, job_list_entry, status_entry

if TYPE_CHECKING:
    from qcg.pilotjob.governor.governor import Governor

log = structlog.get_logger("requests")

OK, ERROR = 0, 1
MAX_NAMES = 1_000_000



def one_line(text: str) -> str:
    """`text` for a one-line message: line breaks and other control characters escaped as in JSON."""
    return text if text.isprintable() else json.dumps(text, ensure_ascii=False)[1:-1]

class ServiceControl(Protocol):
    """What requests may ask of the running service."""

    def finish_after_all_done(self) -> str | None: ...   # error text, or None when accepted
    def finish_now(self) -> str | None: ...
    def status_data(self) -> dict[str, Any]: ...
    def resources_info(self) -> dict[str, int]: ...


def ok(data: Any = None, message: str | None = None) -> dict[str, Any]:
    resp: dict[str, Any] = {"code": OK}
    if message is not None:
        resp["message"] = message
    if data is not None:
        resp["data"] = data
    return resp


def error(message: str) -> dict[str, Any]:
    return {"code": ERROR, "message": message}


class RequestError(Exception):
    """A request that cannot be served; its text is the whole response message."""


class RequestHandler:
    def __init__(self, governor: "Governor", control: ServiceControl) -> None:
        self.governor = governor
        self.control = control
        self.refused = 0          # requests answered with an error (non-zero exit in file mode)
        self.failed_at_submit = 0   # jobs too big for the resources (also a non-zero exit in file mode)
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "submit": self._submit, "listJobs": self._list_jobs, "jobStatus": self._job_status,
            "jobInfo": self._job_info, "cancelJob": self._cancel, "removeJob": self._remove,
            "resourcesInfo": self._resources, "status": self._status, "control": self._control,
            "finish": self._finish,
        }

    def handle(self, request: Any) -> dict[str, Any]:
        try:
            if not isinstance(request, dict):
                raise RequestError(f"a request must be a JSON object, got {type_name(request)}")
            name = request.get("request")
            if not isinstance(name, str) or not name:
                raise RequestError("missing 'request' field")
            handler = self._handlers.get(name)
            if handler is None:
                raise RequestError(f"unknown request '{one_line(name)}'; known: {', '.join(self._handlers)}")
            response = handler(request)
        except RequestError as exc:
            response = error(str(exc))
        except InvalidJobDescriptionError as exc:
            response = error("invalid submit request: " + "; ".join(exc.problems))
        except Exception as exc:  # a bug must not take the service down with it
            log.exception("request handler failed", request=str(request)[:200])
            response = error(f"internal error while serving the request: {type(exc).__name__}: {exc}")
        if response["code"] != OK:
            self.refused += 1
        return response

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _names(request: dict[str, Any], what: str) -> list[str]:
        names = request.get("jobNames")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise RequestError(f"{what} request: 'jobNames' must be a non-empty list of job names")
        if len(names) > MAX_NAMES:
            raise RequestError(f"{what} request: too many job names ({len(names)})")
        return names

    def _lookup(self, asked: str) -> tuple[Any, int | None]:
        try:
            name, it = split_task_name(asked)
        except ValueError as exc:
            raise LookupError(str(exc)) from None
        job = self.governor.registry.get(name)
        if job is None:
            raise LookupError(f"job '{name}' does not exist")
        if it is not None and (job.indices is None or it not in job.indices):
            raise LookupError(f"job '{name}' has no iteration {it}")
        return job, it

    def _per_job(self, names: list[str], make: Callable[[Any, int | None, str], dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for asked in names:
            try:
                job, it = self._lookup(asked)
            except LookupError as exc:
                out[asked] = {"status": ERROR, "message": str(exc)}
                continue
            out[asked] = {"status": OK, "data": make(job, it, asked)}
        return {"jobs": out}

    # ----------------------------------------------------------------- requests
    def _submit(self, request: dict[str, Any]) -> dict[str, Any]:
        jobs = request.get("jobs")
        if not isinstance(jobs, list) or not jobs:
            raise RequestError("submit request: 'jobs' must be a non-empty list of job descriptions")
        # ${rcnt} counts every submit with a jobs list, refused ones too, as the original's does
        self.governor.rcnt += 1
        descs = parse_jobs(jobs)
        names = self.governor.submit(descs, rcnt=self.governor.rcnt, raw=jobs)
        data: dict[str, Any] = {"submitted": len(names), "jobs": names}
        message = f"{len(names)} jobs submitted"
        unfit = self.governor.unfittable
        if unfit:
            # reference 7.2: registered and FAILED at once; the answer says so, the rest of the batch runs
            self.failed_at_submit += len(unfit)
            data["failed"] = {name: f"field 'resources': {why}" for name, why in unfit.items()}
            shown = [f"job '{name}' FAILED: field 'resources': {why}" for name, why in list(unfit.items())[:3]]
            more = f"; and {len(unfit) - 3} more" if len(unfit) > 3 else ""
            message += f", {len(unfit)} of them FAILED at once: " + "; ".join(shown) + more
        return ok(data, message)

    def _list_jobs(self, request: dict[str, Any]) -> dict[str, Any]:
        jobs: dict[str, Any] = {}
        position = 0
        for job in self.governor.registry:
            entry = jobs[job.name] = job_list_entry(job)
            if job.state is JobState.QUEUED:      # place in the queue, in submission order
                entry["inQueue"] = position
                position += 1
        return ok({"length": len(jobs), "jobs": jobs})

    def _job_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return ok(self._per_job(self._names(request, "jobStatus"), status_entry))

    def _job_info(self, request: dict[str, Any]) -> dict[str, Any]:
        params = request.get("params") or {}
        if not isinstance(params, dict):
            raise RequestError("jobInfo request: 'params' must be an object")
        with_childs = bool(params.get("withChilds", False))
        return ok(self._per_job(self._names(request, "jobInfo"),
                                lambda job, it, asked: info_entry(job, it, asked, with_childs)))

    def _cancel(self, request: dict[str, Any]) -> dict[str, Any]:
        count, errors = self.governor.cancel(self._names(request, "cancelJob"))
        data: dict[str, Any] = {"canceled": count}
        if errors:
            data["errors"] = errors
        return ok(data)

    def _remove(self, request: dict[str, Any]) -> dict[str, Any]:
        count, errors = self.governor.remove(self._names(request, "removeJob"))
        data: dict[str, Any] = {"removed": count}
        if errors:
            data["errors"] = errors
        return ok(data)

    def _resources(self, request: dict[str, Any]) -> dict[str, Any]:
        return ok(self.control.resources_info())

    def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        options = request.get("options") or {}
        if not isinstance(options, dict):
            raise RequestError("status request: 'options' must be an object")
        if options.get("allJobsFinished"):
            return ok({"AllJobsFinished": self.governor.all_finished})
        return ok(self.control.status_data())

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command != "finishAfterAllTasksDone":
            raise RequestError(f"control request: unknown command {command!r}; known: finishAfterAllTasksDone")
        err = self.control.finish_after_all_done()
        if err:
            raise RequestError(err)
        return ok(message="finishAfterAllTasksDone command accepted")

    def _finish(self, request: dict[str, Any]) -> dict[str, Any]:
        err = self.control.finish_now()
        if err:
            raise RequestError(err)
        return ok({"when": "now"})
