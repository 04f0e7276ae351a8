"""`jobs.report`: one line (json) or block (text) per finished task and job, written in batches."""

from __future__ import annotations

import json
import json.encoder
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterable

from qcg.pilotjob.governor.append_file import AppendFile
from qcg.pilotjob.governor.aux_dir import report_opener as _report_opener
from qcg.pilotjob.governor.governor import GovernorListener
from qcg.pilotjob.governor.registry import IterationRecord, process_name
from qcg.pilotjob.governor.states import JobState
from qcg.pilotjob.governor.views import fmt_time

if TYPE_CHECKING:
    from qcg.pilotjob.governor.registry import JobRecord

FORMATS = ("json", "text", "none")
_dumps = json.JSONEncoder(separators=(",", ": ")).encode
_str = json.encoder.encode_basestring_ascii      # a JSON string literal, as json.dumps writes it


_HIST_ENTRY = {state: f'{{"state": "{state.value}","date": "' for state in JobState}
_D2 = [f"{i:02d}" for i in range(60)]
_D3 = [f"{i:03d}" for i in range(1000)]


def seconds_and_us(x: float) -> tuple[int, int]:
    """Whole seconds and microseconds of a non-negative time, rounded as `datetime` and `timedelta` round.

    Both split off the whole seconds first and round the fraction's
    microseconds half to even -- so the texts below equal theirs exactly.
    """
    sec = int(x)
    us = round((x - sec) * 1e6)
    if us == 1_000_000:
        return sec + 1, 0
    return sec, us


def rtime_text(seconds: float) -> str:
    """`str(timedelta(seconds=seconds))` for a run time, without building the timedelta (a report line each)."""
    sec, us = seconds_and_us(seconds)
    if sec >= 86_400:
        return str(timedelta(seconds=seconds))
    m, s = divmod(sec, 60)
    h, m = divmod(m, 60)
    text = f"{h}:{_D2[m]}:{_D2[s]}"
    return f"{text}.{_D3[us // 1000]}{_D3[us % 1000]}" if us else text


def _runtime_json(rec: "IterationRecord", pname: str) -> str:
    """The members of `rec.runtime_named(pname)` as JSON (its keys and order), without building the dict."""
    out = []
    if rec.allocation is not None:
        out.append('"allocation": ' + _str(rec.allocation))
    if rec.wd is not None:
        out.append('"wd": ' + _str(rec.wd))
    if rec.rtime is not None:
        out.append(f'"rtime": "{rtime_text(rec.rtime)}"')
    if rec.exit_code is not None:
        out.append(f'"exit_code": "{rec.exit_code}"')
    if rec.pid is not None:
        out.append(f'"pid": "{rec.pid}","pname": {_str(pname)}')
    if rec.partition is not None:
        out.append('"partition": ' + _str(rec.partition))
    return ",".join(out)


class JobReport(GovernorListener):
    """With `rt_stats` (`--enable-rt-stats`) each task that ran also gets `runtime.qcg_finish`.

    A task's history already holds the real spawn and exit times (the node
    agent takes them at `posix_spawn` and at its pidfd's wake-up, so no
    wrapper program is needed); `qcg_finish` is when the governor learnt of
    the end -- here, because the report hears of a task the moment the
    governor has handled its end. `qcg-pm-report launch-stats` compares them.
    """

    def __init__(self, path: str, fmt: str = "json", batch: int = 256, rt_stats: bool = False,
                 opener: Callable[[str, int], int] = _report_opener) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"--report-format: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
        self._fmt = fmt
        self._rt_stats = rt_stats
        # 0600: it holds the jobs' environments (the service passes own_opener for one in the aux dir)
        self._file = AppendFile(path, opener) if fmt != "none" else None
        self._buffer: list[str] = []
        self._batch = batch
        self._texts: dict[int, tuple[Any, str]] = {}
        self._iso_prefixes: dict[int, str] = {}       # whole second -> its isoformat
        self._first_ts = -1.0
        self._first_iso = ""

    def task_final(self, job: "JobRecord", iteration: int | None, record: "IterationRecord") -> None:
        if iteration is not None:
            self._add(job.task_id(iteration), record, None, job)

    def job_final(self, job: "JobRecord") -> None:
        self._add(job.name, job.record, job, job)

    def unstarted_canceled(self, job: "JobRecord", iterations: Iterable[int], when: float) -> None:
        """A line each, alike but for the name: one template, written in chunks (a million of them take
        about a second, the time the service cannot answer meanwhile)."""
        if self._file is None:
            return
        rec = IterationRecord(JobState.CANCELED, when)
        line = self._line(f"{job.name}:\0", rec, None, job)        # with a marker where the index goes
        head, _, tail = line.rpartition("\\u0000" if self._fmt == "json" else "\0")
        self._add_lines([])
        chunk: list[str] = []
        for it in iterations:
            chunk.append(f"{head}{it}{tail}")
            if len(chunk) == 65_536:
                self._add_lines(chunk)          # emptied
        self._add_lines(chunk)

    def _add_lines(self, lines: list[str]) -> None:
        """Buffered ones first, then `lines` (emptied), written; on a full disk they wait in the file's buffer
        for the service's next flush (raised, the error stopped a user's cancel of a sweep half way)."""
        assert self._file is not None
        self._hand_over(self._buffer)
        self._hand_over(lines)
        try:
            self._file.flush()
        except OSError:
            pass

    def _add(self, name: str, rec: "IterationRecord", job: "JobRecord | None", of: "JobRecord") -> None:
        if self._file is None:
            return
        self._buffer.append(self._line(name, rec, job, of))
        if len(self._buffer) >= self._batch:
            try:
                self.flush()
            except OSError:
                # a full disk, a quota: the lines stay here, the service's next flush tries again and says
                # so (finals_writer). Raised here it broke whatever ended the job -- the cancel of a stop
                # by SIGTERM, which then never stopped the service.
                pass

    def _line(self, name: str, rec: "IterationRecord", job: "JobRecord | None", of: "JobRecord") -> str:
        """`job`: a job's own line (with its description); `of`: the job the line belongs to."""
        if self._fmt == "json":
            # formatted directly (one line per iteration or job): the same text as json.dumps of
            # {"name", "state", "history", "runtime", ["execution", "resources", "dependencies"], ["messages"]}
            h = rec._hist
            iso = self._iso
            e = _HIST_ENTRY
            if len(h) == 8:     # the usual QUEUED, SCHEDULED, EXECUTING, final state: one format, no loop
                t0 = h[0]       # the jobs of one submit share their first time
                if t0 != self._first_ts:
                    self._first_ts, self._first_iso = t0, iso(t0)
                scheduled = iso(h[2])
                hist = (f'{e[h[1]]}{self._first_iso}"}},{e[h[3]]}{scheduled}"}},'
                        f'{e[h[5]]}{scheduled if h[4] == h[2] else iso(h[4])}"}},{e[h[7]]}{iso(h[6])}"}}')
            elif len(h) == 6:   # an iteration (SCHEDULED, EXECUTING, final), an iterative job (QUEUED, ...)
                scheduled = iso(h[0])
                hist = (f'{e[h[1]]}{scheduled}"}},{e[h[3]]}{scheduled if h[2] == h[0] else iso(h[2])}"}},'
                        f'{e[h[5]]}{iso(h[4])}"}}')
            else:
                hist = ",".join([f'{e[h[i + 1]]}{iso(h[i])}"}}' for i in range(0, len(h), 2)])
            runtime = _runtime_json(rec, process_name(of.desc))
            if self._rt_stats and rec.rtime is not None:
                runtime += f',"qcg_finish": "{iso(time.time())}"'
            line = (f'{{"name": {_str(name)},"state": "{rec.state.value}","history": [{hist}],'
                    f'"runtime": {{{runtime}}}')
            if job is not None:
                line += self._job_part(job)
            return line + (f',"messages": {_str(rec.messages)}}}' if rec.messages else "}")
        hist = "\n\t".join(f"{fmt_time(ts)}: {st.value}" for ts, st in rec.history)
        runtime = "\n\t".join(f"{k}: {v}" for k, v in rec.runtime_named(process_name(of.desc)).items())
        if self._rt_stats and rec.rtime is not None:
            runtime += f"\n\tqcg_finish: {fmt_time(time.time())}"
        return f"{name} ({rec.state.value}) {rec.messages or ''}\n\t{hist}\n\t{runtime}"

    def _iso(self, ts: float) -> str:
        """`datetime.fromtimestamp(ts).isoformat()`, the part up to the second formatted once per second."""
        sec = int(ts)                   # seconds_and_us, inlined: four calls per report line
        us = round((ts - sec) * 1e6)
        if us == 1_000_000:
            sec, us = sec + 1, 0
        prefix = self._iso_prefixes.get(sec)
        if prefix is None:
            if len(self._iso_prefixes) >= 4096:
                self._iso_prefixes.clear()
            prefix = self._iso_prefixes[sec] = datetime.fromtimestamp(sec).isoformat()
        return f"{prefix}.{_D3[us // 1000]}{_D3[us % 1000]}" if us else prefix

    def _job_part(self, job: "JobRecord") -> str:
        desc = job.desc
        part = f',"execution": {self._text(desc.execution)},"resources": {self._text(desc.resources)}'
        if desc.after:
            part += ',"dependencies": {"after": [' + ",".join(map(_str, desc.after)) + "]}"
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

    def _hand_over(self, lines: list[str]) -> None:
        """`lines` to the file (which keeps them until they are on disk), and the list emptied."""
        if lines:
            self._file.write("\n".join(lines) + "\n")     # type: ignore[union-attr]
            lines.clear()

    def flush(self) -> None:
        if self._file is None:
            return
        self._hand_over(self._buffer)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._hand_over(self._buffer)
            self._file.close()          # flushed, and closed even when the disk takes nothing
