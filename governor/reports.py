"""`jobs.report`: one line (json) or block (text) per finished task and job, written in batches."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qcg.pilotjob.governor.governor import GovernorListener
from qcg.pilotjob.governor.views import fmt_time, history_list

if TYPE_CHECKING:
    from qcg.pilotjob.governor.registry import IterationRecord, JobRecord

FORMATS = ("json", "text", "none")
_dumps = json.JSONEncoder(separators=(",", ": ")).encode


class JobReport(GovernorListener):
    def __init__(self, path: str, fmt: str = "json", batch: int = 256) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"--report-format: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
        self._fmt = fmt
        self._file = open(path, "a", encoding="utf-8") if fmt != "none" else None
        self._buffer: list[str] = []
        self._batch = batch

    def task_final(self, job: "JobRecord", iteration: int | None, record: "IterationRecord") -> None:
        if iteration is not None:
            self._add(job.task_id(iteration), record, None)

    def job_final(self, job: "JobRecord") -> None:
        self._add(job.name, job.record, job)

    def _add(self, name: str, rec: "IterationRecord", job: "JobRecord | None") -> None:
        if self._file is None:
            return
        if self._fmt == "json" and job is None:
            # the hot path (one line per iteration), formatted directly: same text as json.dumps below
            h = rec._hist
            hist = ",".join(f'{{"state": "{h[i + 1].value}","date": "{datetime.fromtimestamp(h[i]).isoformat()}"}}'
                            for i in range(0, len(h), 2))
            line = (f'{{"name": {_dumps(name)},"state": "{rec.state.value}","history": [{hist}],'
                    f'"runtime": {_dumps(rec.runtime)}')
            self._buffer.append(line + (f',"messages": {_dumps(rec.messages)}}}' if rec.messages else "}"))
        elif self._fmt == "json":
            data: dict[str, Any] = {"name": name, "state": rec.state.value, "history": history_list(rec.history),
                                    "runtime": rec.runtime}
            if job is not None:
                desc = job.desc.to_dict()
                data["execution"] = desc["execution"]
                data["resources"] = desc.get("resources", {"numCores": {"exact": 1}})
                if "dependencies" in desc:
                    data["dependencies"] = desc["dependencies"]
            if rec.messages:
                data["messages"] = rec.messages
            self._buffer.append(json.dumps(data, separators=(",", ": ")))
        else:
            hist = "\n\t".join(f"{fmt_time(ts)}: {st.value}" for ts, st in rec.history)
            runtime = "\n\t".join(f"{k}: {v}" for k, v in rec.runtime.items())
            self._buffer.append(f"{name} ({rec.state.value}) {rec.messages or ''}\n\t{hist}\n\t{runtime}")
        if len(self._buffer) >= self._batch:
            self.flush()

    def flush(self) -> None:
        if self._file is None:
            return
        if self._buffer:
            self._file.write("\n".join(self._buffer) + "\n")
            self._buffer.clear()
        self._file.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
