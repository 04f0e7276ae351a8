"""`JobInfo`: a `jobInfo` response entry parsed into attributes (reference 22.1.3).

`Manager.info_parsed` builds one per requested job with `JobInfo.from_job`;
entries of `childs` (asked with `withChilds=True`) become `JobInfo` objects
via `JobInfo.from_child`. The response shapes parsed here are those of the
`jobInfo` request (reference 10.3.x, "jobInfo"): `runtime.allocation` as
`n0[0:1],n1[2]`, `runtime.rtime` as a Python timedelta string
(`H:MM:SS.ffffff`, possibly `N day(s), H:MM:SS`), `history` as lines
`<date time>: <STATE>`.

Differences from the original client, all towards the documentation:

* `nodes` maps a node to a list of *int* core ids (documented as
  `dict(str, int[])`); ids that are not numbers stay strings;
* `history` is read from the entry's `history` (the original looked under
  `runtime` and so always returned an empty list);
* `iteration` is set for names `job:N` too, not only for children;
* `exit_code` (int) is available as an extra attribute.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

__all__ = ["JobInfo"]

_RTIME = re.compile(r"^\s*(?:(-?\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2})(?:\.(\d{1,6}))?\s*$")


class JobInfo:
    """Parsed information about a job or an iteration.

    Attributes:
        name (str): job name (`job:N` for an iteration)
        status (str): job state
        nodes (dict(str, list(int))): node name -> allocated core ids
        total_cores (int): number of allocated cores
        wdir (str): working directory
        time (timedelta): run time (once finished)
        iteration (int): iteration index (for iterations)
        iterations (dict): iteration counters of an iterative job
            (`start`, `stop`, `total`, `finished`, `failed`)
        childs (list(JobInfo)): iterations (with `withChilds=True`)
        history (list(str)): state change lines `<date time>: <STATE>`
        messages (str): error messages
        exit_code (int): exit code (once finished)
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self.status: str | None = None
        self.nodes: dict[str, list] | None = None
        self.total_cores: int | None = None
        self.wdir: str | None = None
        self.time: timedelta | None = None
        self.iteration: int | None = None
        self.iterations: dict | None = None
        self.childs: list[JobInfo] | None = None
        self.history: list[str] | None = None
        self.messages: str | None = None
        self.exit_code: int | None = None

    # ---------------------------------------------------------------- parsing

    @staticmethod
    def from_job(job_data: dict[str, Any]) -> "JobInfo":
        """Parse the `data` element of one job of a `jobInfo` response."""
        info = JobInfo()
        info.name = job_data.get("jobName")
        info.status = job_data.get("status")
        runtime = job_data.get("runtime") or {}
        info._set_runtime(runtime)
        if info.name and ":" in info.name:
            suffix = info.name.rsplit(":", 1)[1]
            if suffix.isdigit():
                info.iteration = int(suffix)
        info.iterations = job_data.get("iterations", {})
        if "childs" in job_data:
            info.childs = [JobInfo.from_child(info.name, child) for child in job_data.get("childs") or []]
        history = job_data.get("history")
        if history is None:
            history = runtime.get("history", "")
        info.history = JobInfo._parse_history(history)
        info.messages = job_data.get("messages")
        return info

    @staticmethod
    def from_child(job_name: str | None, child_data: dict[str, Any]) -> "JobInfo":
        """Parse one element of `childs` of a `jobInfo` response (an iteration of `job_name`)."""
        info = JobInfo()
        info.iteration = child_data.get("iteration")
        info.name = f"{job_name}:{info.iteration}"
        info.status = child_data.get("state", child_data.get("status"))
        info._set_runtime(child_data.get("runtime") or {})
        if "history" in child_data:
            info.history = JobInfo._parse_history(child_data["history"])
        info.messages = child_data.get("messages")
        return info

    def _set_runtime(self, runtime: dict[str, Any]) -> None:
        self.nodes = JobInfo._parse_allocation(runtime.get("allocation"))
        self.total_cores = sum(len(cores) for cores in self.nodes.values())
        self.wdir = runtime.get("wd")
        rtime = runtime.get("rtime")
        self.time = JobInfo._parse_runtime(rtime) if rtime else None
        code = runtime.get("exit_code")
        try:
            self.exit_code = int(code) if code is not None else None
        except (TypeError, ValueError):
            self.exit_code = None

    @staticmethod
    def _parse_allocation(allocation: str | None) -> dict[str, list]:
        """`n0[0:1],n1[2]` -> {"n0": [0, 1], "n1": [2]}; node names may hold ':' or ','-free text."""
        nodes: dict[str, list] = {}
        if not allocation:
            return nodes
        for part in allocation.split(","):
            part = part.strip()
            if not part:
                continue
            bracket = part.find("[")
            if bracket < 0 or not part.endswith("]"):
                nodes[part] = []
                continue
            name, inner = part[:bracket], part[bracket + 1:-1]
            cores = [int(c) if c.isdigit() else c for c in inner.split(":") if c != ""]
            nodes.setdefault(name, []).extend(cores)
        return nodes

    @staticmethod
    def _parse_runtime(runtime: str) -> timedelta | None:
        """`str(timedelta)` back to a timedelta (`0:00:01.009483`, `1 day, 2:03:04`)."""
        match = _RTIME.match(str(runtime))
        if match is None:
            return None
        days, hours, minutes, seconds, frac = match.groups()
        micro = int((frac or "0").ljust(6, "0"))
        return timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=int(seconds),
                         microseconds=micro)

    @staticmethod
    def _parse_history(history: Any) -> list[str]:
        if isinstance(history, list):
            return [str(line) for line in history if line]
        if not history:
            return []
        return [line for line in str(history).splitlines() if line.strip()]

    def __str__(self) -> str:
        fields = {key: (str(value) if not isinstance(value, (str, int, type(None))) else value)
                  for key, value in vars(self).items()}
        if self.childs is not None:
            fields["childs"] = [str(child) for child in self.childs]
        return json.dumps(fields)

    def __repr__(self) -> str:
        return f"JobInfo(name={self.name!r}, status={self.status!r})"
