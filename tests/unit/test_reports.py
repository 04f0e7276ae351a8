"""Unit tests of `jobs.report` lines (qcg.pilotjob.governor.reports).

The report is the reference's `--report-format json` file (section 12.4): one
JSON object per line with name, state, history, runtime and, for whole jobs,
the description's execution, resources and dependencies. Lines are formatted
directly; these tests check them against `json.dumps` of the same dict.
"""

from __future__ import annotations

import errno
import json
import os
from datetime import datetime

import pytest

from qcg.pilotjob.api.jobparse import parse_jobs
from qcg.pilotjob.governor.registry import IterationRecord, JobRecord, process_name
from qcg.pilotjob.governor.reports import JobReport
from qcg.pilotjob.governor.states import JobState


def _record(times: list[float], states: list[JobState]) -> IterationRecord:
    rec = IterationRecord(states[0], times[0])
    for when, state in zip(times[1:], states[1:]):
        rec.set_state(state, when)
    return rec


def _expected(name: str, rec: IterationRecord, job: JobRecord | None = None, of: JobRecord | None = None) -> dict:
    owner = job or of
    out = {"name": name, "state": rec.state.value,
           "history": [{"state": st.value, "date": datetime.fromtimestamp(ts).isoformat()}
                       for ts, st in rec.history],
           "runtime": rec.runtime_named(process_name(owner.desc) if owner else None)}
    if job is not None:
        out["execution"] = job.desc.execution.to_dict()
        out["resources"] = job.desc.resources.to_dict()
        if job.desc.after:
            out["dependencies"] = {"after": list(job.desc.after)}
    if rec.messages:
        out["messages"] = rec.messages
    return out


def test_lines_equal_json_of_the_reference_dict(tmp_path):
    descs = parse_jobs([
        {"name": "first", "execution": {"exec": "/bin/echo", "args": ["é", "a\"b"]}},
        {"name": "second", "execution": {"exec": "/bin/echo", "args": ["é", "a\"b"]},
         "dependencies": {"after": ["first", "x:1"]}},
    ])
    path = tmp_path / "jobs.report"
    report = JobReport(str(path))
    base = 1_800_000_000.0
    lines = []
    # histories that go back and forth between seconds, moments repeated, whole seconds; the first
    # job's QUEUED time shared by the second, then a new one; SCHEDULED = EXECUTING in the third
    for i, desc in enumerate(descs + descs[:1]):
        job = JobRecord(desc=desc, seq=i + 1, rcnt=1, submitted_at=datetime.now())
        times = [base + (0.25 if i < 2 else 0.5), base + 2.000001 + i, (base + 2.0 + i) if i < 2 else (base + 2.000001 + i),
                 base + 5.0]
        job.record = _record(times, [JobState.QUEUED, JobState.SCHEDULED, JobState.EXECUTING, JobState.FAILED])
        job.record.allocation, job.record.wd, job.record.pid = "n1[0:1]", "/tmp/w\"d", 4242
        job.record.exit_code, job.record.rtime = 3, 3.5
        job.record.add_message("exit code 3")
        report.job_final(job)
        lines.append(_expected(job.name, job.record, job))
        it_rec = _record([base + 1.5, base + 0.999999], [JobState.SCHEDULED, JobState.SUCCEED])
        report.task_final(job, 7, it_rec)
        lines.append(_expected(f"{job.name}:7", it_rec, of=job))
        # an iteration's usual history; EXECUTING at the SCHEDULED moment in the second job
        it_rec = _record([base + 1.25, base + 1.25 + 0.5 * (i != 1), base + 3.0000005],
                         [JobState.SCHEDULED, JobState.EXECUTING, JobState.SUCCEED])
        it_rec.rtime, it_rec.exit_code, it_rec.pid = 1.7500005, 0, 77
        report.task_final(job, 8, it_rec)
        lines.append(_expected(f"{job.name}:8", it_rec, of=job))
    report.close()
    text = path.read_text().splitlines()
    assert text == [json.dumps(d, separators=(",", ": ")) for d in lines]
    # the original's runtime.pname: the executable's name (`bash` for a script), after the pid
    assert '"pid": "4242","pname": "echo"' in text[0] and '"pid": "77","pname": "echo"' in text[2]


def test_process_name_as_the_original_gives_it():
    """The original 0.14.2 (`executionjob.py`): `bash` for a script, else the executable's base name."""
    a, b, c = parse_jobs([{"name": "a", "execution": {"exec": "/usr/bin/env"}},
                          {"name": "b", "execution": {"script": "echo hi"}},
                          {"name": "c", "execution": {"exec": "python3", "args": ["-V"]}}])
    assert [process_name(d) for d in (a, b, c)] == ["env", "bash", "python3"]


def test_dates_and_run_times_equal_datetime_texts():
    """Reference 12.4: history dates are `isoformat()` and `rtime` is `str(timedelta)` -- formatted
    without those objects, so the same text is checked over random and edge values (rounding to the
    next second, whole seconds, microsecond halves, past an hour and past a day)."""
    import random
    from datetime import timedelta

    from qcg.pilotjob.governor.reports import rtime_text

    rnd = random.Random(7)
    base = datetime(2026, 11, 26, 4, 0, 0).timestamp()
    report = JobReport("/dev/null", "json")
    times = [base, base + 0.9999996, base + 0.0000005, base + 0.0000015, base + 59.5]
    times += [base + rnd.random() * 86400 for _ in range(20000)]
    for ts in times:
        assert report._iso(ts) == datetime.fromtimestamp(ts).isoformat(), ts
    runs = [0.0, 0.0000005, 0.0000015, 0.9999996, 1.0, 59.9999999, 3599.9999996, 3600.0, 86399.9999996,
            86400.0, 90061.5, 123456.789]
    runs += [rnd.random() * scale for scale in (1e-3, 1, 100, 1e4, 1e5, 1e6) for _ in range(5000)]
    for seconds in runs:
        assert rtime_text(seconds) == str(timedelta(seconds=seconds)), seconds
    report.close()


def test_rt_stats_add_when_the_governor_learnt_of_each_end(tmp_path):
    """Reference 14.1 (`--enable-rt-stats`): next to the real start and end in a task's history, a task that
    ran gets `runtime.qcg_finish`, the moment its end reached the report; tasks that never ran, whole
    iterative jobs and runs without the flag get no such field, in json and in text."""
    import time

    desc = parse_jobs([{"name": "j", "execution": {"exec": "/bin/true"}}])[0]
    base = time.time() - 5.0
    for fmt in ("json", "text"):
        for rt_stats in (True, False):
            path = tmp_path / f"{fmt}-{rt_stats}.report"
            report = JobReport(str(path), fmt, rt_stats=rt_stats)
            ran = _record([base, base + 1.0, base + 2.0], [JobState.SCHEDULED, JobState.EXECUTING, JobState.SUCCEED])
            ran.rtime, ran.exit_code = 1.0, 0
            job = JobRecord(desc=desc, seq=1, rcnt=1, submitted_at=datetime.now())
            before = time.time()
            report.task_final(job, 0, ran)
            after = time.time()
            job.record = _record([base, base + 3.0], [JobState.QUEUED, JobState.OMITTED])    # never ran
            report.job_final(job)
            report.close()
            if fmt == "json":
                ran_line, omitted_line = [json.loads(line) for line in path.read_text().splitlines()]
                assert "qcg_finish" not in omitted_line["runtime"]
                if rt_stats:
                    seen = datetime.fromisoformat(ran_line["runtime"].pop("qcg_finish")).timestamp()
                    assert before - 1e-6 <= seen <= after + 1e-6
                assert ran_line["runtime"] == {"rtime": "0:00:01", "exit_code": "0"}
            else:
                assert path.read_text().count("qcg_finish: ") == (1 if rt_stats else 0)


def test_a_batch_that_cannot_be_written_stays_buffered_and_raises_nothing(tmp_path, monkeypatch):
    """A full disk while a batch fills: the job's end is still handled -- before, the OSError reached the
    caller, e.g. the cancel of every job by SIGTERM, and the service never stopped. What the disk did not
    take stays, from the byte where it stopped, and a later flush writes it once the disk has room: every
    line once, none cut (helper report: Python's buffered file dropped it on a second failed flush, and a
    few seconds of full disk lost 38 of 83 report lines)."""
    from qcg.pilotjob.governor import append_file
    desc = parse_jobs([{"name": "j", "execution": {"exec": "/bin/true"}}])[0]
    path = tmp_path / "jobs.report"
    report = JobReport(str(path), batch=2)
    real_write = os.write
    room = [150]            # bytes the disk still takes; None: room again

    calls = []

    def write(fd, data):
        calls.append(len(data))
        if room[0] is None:
            return real_write(fd, data)
        if room[0] == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[:room[0]]))
        room[0] -= n
        return n

    monkeypatch.setattr(append_file.os, "write", write)
    job = JobRecord(desc=desc, seq=1, rcnt=1, submitted_at=datetime.now())
    for it in range(5):
        report.task_final(job, it, _record([1_800_000_000.0], [JobState.SUCCEED]))
    with pytest.raises(OSError):
        report.flush()          # what the service's writer does each turn (and logs)
    assert 0 < path.stat().st_size <= 150
    tried = len(calls)
    with pytest.raises(OSError):
        report.flush()          # at once again: not tried (each try copies all that waits), the same error
    assert len(calls) == tried
    room[0] = None
    report.close()
    assert [json.loads(line)["name"] for line in path.read_text().splitlines()] == [f"j:{i}" for i in range(5)]
