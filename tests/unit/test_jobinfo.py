"""`JobInfo` parsing of `jobInfo` responses (reference 22.1.3; shapes of reference 10.3 jobInfo)."""

from __future__ import annotations

from datetime import timedelta

from qcg.pilotjob.api.jobinfo import JobInfo

FINISHED = {
    "jobName": "a", "status": "SUCCEED",
    "runtime": {"allocation": "n0[0:1],n1[0]", "wd": "/tmp/wd", "rtime": "0:00:01.009483", "exit_code": "0",
                "pid": "3129", "pname": "bash"},
    "history": "\n2026-11-25 14:53:45.725635: QUEUED\n2026-11-25 14:53:45.726975: SCHEDULED"
               "\n2026-11-25 14:53:45.727987: EXECUTING\n2026-11-25 14:53:45.735912: SUCCEED",
}


def test_from_job_finished():
    info = JobInfo.from_job(FINISHED)
    assert info.name == "a" and info.status == "SUCCEED"
    assert info.nodes == {"n0": [0, 1], "n1": [0]}
    assert info.total_cores == 3
    assert info.wdir == "/tmp/wd"
    assert info.time == timedelta(seconds=1, microseconds=9483)
    assert info.exit_code == 0
    assert info.history == ["2026-11-25 14:53:45.725635: QUEUED", "2026-11-25 14:53:45.726975: SCHEDULED",
                            "2026-11-25 14:53:45.727987: EXECUTING", "2026-11-25 14:53:45.735912: SUCCEED"]
    assert info.iteration is None and info.childs is None and info.messages is None
    assert info.iterations == {}
    assert '"name": "a"' in str(info)


def test_from_job_queued_without_runtime():
    info = JobInfo.from_job({"jobName": "q", "status": "QUEUED", "history": "\n2026-11-25 14:53:45.725635: QUEUED"})
    assert info.nodes == {} and info.total_cores == 0 and info.wdir is None and info.time is None
    assert info.history == ["2026-11-25 14:53:45.725635: QUEUED"]


def test_from_job_iterative_with_childs_and_messages():
    data = {
        "jobName": "it", "status": "FAILED",
        "iterations": {"start": 0, "stop": 2, "total": 2, "finished": 2, "failed": 1},
        "childs": [
            {"iteration": 0, "state": "SUCCEED",
             "runtime": {"allocation": "n1[1:2]", "wd": "/w", "rtime": "0:00:00.5", "exit_code": "0"}},
            {"iteration": 1, "state": "FAILED"},
        ],
        "messages": "first\nsecond",
        "history": "\nx: QUEUED\ny: FAILED",
    }
    info = JobInfo.from_job(data)
    assert info.iterations["failed"] == 1
    assert [c.name for c in info.childs] == ["it:0", "it:1"]
    first, second = info.childs
    assert first.iteration == 0 and first.status == "SUCCEED" and first.nodes == {"n1": [1, 2]}
    assert first.total_cores == 2 and first.time == timedelta(microseconds=500000) and first.wdir == "/w"
    assert second.status == "FAILED" and second.nodes == {} and second.time is None
    assert info.messages == "first\nsecond"


def test_iteration_name_and_long_runtime():
    info = JobInfo.from_job({"jobName": "v:3", "status": "EXECUTING",
                             "runtime": {"allocation": "host.example:1[5]", "rtime": "2 days, 3:04:05"}})
    assert info.iteration == 3
    assert info.nodes == {"host.example:1": [5]}
    assert info.time == timedelta(days=2, hours=3, minutes=4, seconds=5)


def test_from_child_direct():
    info = JobInfo.from_child("job", {"iteration": 7, "state": "CANCELED", "runtime": {"exit_code": "-15"}})
    assert info.name == "job:7" and info.status == "CANCELED" and info.exit_code == -15


def test_unparsable_runtime_is_none():
    assert JobInfo.from_job({"jobName": "a", "runtime": {"rtime": "soon"}}).time is None
