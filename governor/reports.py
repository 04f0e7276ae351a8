"""`jobs.report`: one line (json) or block (text) per finished task and job, written in batches."""

from __future__ import annotations

import json
import json.encoder
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qcg.pilotjob.governor.governor import GovernorListener
from qcg.pilotjob.governor.views import fmt_time

if TYPE_CHECKING:
    from qcg.pilotjob.governor.registry import IterationRecord, JobRecord

FORMATS = ("json", "text", "none")
_dumps = json.JSONEncoder(separators=(",", ": ")).encode
_str = json.encoder.encode_basestring_ascii      # a JSON string literal, as json.dumps writes it


class JobReport(GovernorListener):
    def __init__(self, path: str, fmt: str = "json", batch: int = 256) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"--report-format: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
        self._fmt = fmt
        self._file = open(path, "a", encoding="utf-8") if fmt != "none" else None
        self._buffer: list[str] = []
        self._batch = batch
        self._texts: dict[int, tuple[Any, str]] = {}
        self._iso_sec: int | None = None
        self._iso_prefix = ""

    def task_final(self, job: "JobRecord", iteration: int | None, record: "IterationRecord") -> None:
        if iteration is not None:
            self._add(job.task_id(iteration), record, None)

    def job_final(self, job: "JobRecord") -> None:
        self._add(job.name, job.record, job)

    def _add(self, name: str, rec: "IterationRecord", job: "JobRecord | None") -> None:
        if self._file is None:
            return
        if self._fmt == "json":
            # formatted directly (one line per iteration or job): the same text as json.dumps of
            # {"name", "state", "history", "runtime", ["execution", "resources", "dependencies"], ["messages"]}
            h = rec._hist
            iso = self._iso
            hist = ",".join(f'{{"state": "{h[i + 1].value}","date": "{iso(h[i])}"}}' for i in range(0, len(h), 2))
            runtime = ",".join(f'"{k}": {_str(v)}' for k, v in rec.runtime.items())
            line = (f'{{"name": {_str(name)},"state": "{rec.state.value}","history": [{hist}],'
                    f'"runtime": {{{runtime}}}')
            if job is not None:
                line += self._job_part(job)
            self._buffer.append(line + (f',"messages": {_str(rec.messages)}}}' if rec.messages else "}"))
        else:
            hist = "\n\t".join(f"{fmt_time(ts)}: {st.value}" for ts, st in rec.history)
            runtime = "\n\t".join(f"{k}: {v}" for k, v in rec.runtime.items())
            self._buffer.append(f"{name} ({rec.state.value}) {rec.messages or ''}\n\t{hist}\n\t{runtime}")
        if len(self._buffer) >= self._batch:
            self.flush()

    def _iso(self, ts: float) -> str:
        """`datetime.fromtimestamp(ts).isoformat()`, with the part up to the second computed once per second."""
        frac, whole = math.modf(ts)
        us = round(frac * 1e6)          # as datetime.fromtimestamp rounds (half even)
        if us >= 1_000_000:
            whole += 1
            us -= 1_000_000
        sec = int(whole)
        if sec != self._iso_sec:
            self._iso_sec = sec
            self._iso_prefix = datetime.fromtimestamp(sec).isoformat()
        return self._iso_prefix if us == 0 else f"{self._iso_prefix}.{us:06d}"

    def _job_part(self, job: "JobRecord") -> str:
        desc = job.desc
        part = f',"execution": {self._text(desc.execution)},"resources": {self._text(desc.resources)}'
        if desc.after:
            part += f',"dependencies": {_dumps({"after": list(desc.after)})}'
        return part

    def _text(self, obj: Any) -> str:
        """JSON of a description part; shared parts (a sweep's execution, common sizes) are encoded once."""
        hit = self._texts.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        text = _dumps(obj.to_dict())
        if len(self._texts) >= 4096:
            self._texts.clear()
        self._texts[id(obj)] = (obj, text)    # the object is kept, so its id is not reused meanwhile
        return text

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
