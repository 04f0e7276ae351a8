"""The request handler: every request of reference 10.3 and its response shape (issue 3 "Requests")."""

from __future__ import annotations

import json

import pytest

from qcg.pilotjob.governor.requests import RequestHandler
from qcg.pilotjob.governor.views import status_report

from .test_governor import Harness


class Control:
    def __init__(self, h: Harness) -> None:
        self.h = h
        self.finish_after = 0
        self.finish_now_calls = 0

    def finish_after_all_done(self):
        self.finish_after += 1
        return None if self.finish_after == 1 else "finish already requested"

    def finish_now(self):
        self.finish_now_calls += 1
        return None

    def status_data(self):
        from datetime import datetime
        return status_report(list(self.h.gov.registry), self.resources_info(), instance_id="tid",
                             started=datetime.now(), zmq_address=None, interfaces=["FILE"], publisher=None)

    def resources_info(self):
        return self.h.part.resources.info()


@pytest.fixture
def env():
    h = Harness(nodes="2,2", queue_limit=8)
    ctl = Control(h)
    handler = RequestHandler(h.gov, ctl)

    def call(req):
        resp = handler.handle(req)
        h.drain()
        json.dumps(resp)   # every response is JSON-serialisable
        return resp

    yield h, ctl, handler, call
    h.close()


def J(name, **kw):
    d = {"name": name, "execution": {"exec": "/bin/true"}}
    d.update(kw)
    return d


def test_submit_response(env):
    """Reference 10.3.1 submit response: code 0, 'N jobs submitted', data.submitted, data.jobs."""
    h, _, _, call = env
    resp = call({"request": "submit", "jobs": [J("a"), J("b")]})
    assert resp == {"code": 0, "message": "2 jobs submitted", "data": {"submitted": 2, "jobs": ["a", "b"]}}


def test_submit_invalid_is_error_naming_job_and_field(env):
    """Issue 3 "Validation gives one clear message per problem (job name, field, reason)"; whole submit refused."""
    h, _, handler, call = env
    resp = call({"request": "submit", "jobs": [J("ok"), {"name": "bad", "execution": {"exec": "/bin/true",
                                                                                     "args": "notalist"}}]})
    assert resp["code"] == 1
    assert "bad" in resp["message"] and "args" in resp["message"]
    assert "data" not in resp
    assert len(h.gov.registry) == 0
    assert handler.refused == 1


def test_rcnt_counts_refused_submits_too(env):
    """Reference 10.3.1 `${rcnt}`, "a request counter": the original 0.14.2 counts every submit that carries
    a jobs list, also one it then refuses (its SubmitReq counts before checking the jobs)."""
    h, _, _, call = env
    assert call({"request": "submit", "jobs": [J("a")]})["code"] == 0
    assert call({"request": "submit", "jobs": [J("a")]})["code"] == 1            # a duplicate name
    assert call({"request": "submit", "jobs": [{"name": "x"}]})["code"] == 1    # no execution
    assert call({"request": "submit", "jobs": []})["code"] == 1                 # no jobs: not counted
    assert call({"request": "submit", "jobs": [J("c")]})["code"] == 0
    assert [h.gov.registry.get(n).rcnt for n in ("a", "c")] == [1, 4]


@pytest.mark.parametrize("req", [
    {"request": "submit"},
    {"request": "submit", "jobs": []},
    {"request": "submit", "jobs": "a"},
    {"request": "submit", "jobs": [42]},
    {"request": "submit", "jobs": [{"name": "x"}]},
    {"request": "submit", "jobs": [{"execution": {"exec": "/bin/true"}}]},
    {"request": "submit", "jobs": [J("c", resources={"numCores": "two"})]},
    {"request": "submit", "jobs": [J("d"), J("d")]},
    {"request": "submit", "jobs": [J("e", dependencies={"after": ["nosuch"]})]},
])
def test_submit_bad_input_gives_error_response(env, req):
    """Issue 3 "Bad input ... each a clear message and ... an error response"."""
    _, _, _, call = env
    resp = call(req)
    assert resp["code"] == 1
    assert isinstance(resp["message"], str) and resp["message"]
    assert "internal error" not in resp["message"]
    assert "Traceback" not in resp["message"]


def test_submit_of_a_job_too_big_answers_its_failure(env):
    """Reference 7.2: a job bigger than the resources is accepted and FAILED at once; the answer names it,
    with the field and the reason, and counts it as bad input (non-zero exit in file mode)."""
    h, _, handler, call = env
    resp = call({"request": "submit", "jobs": [J("c", resources={"numCores": {"exact": 99}}), J("fine")]})
    assert resp["code"] == 0
    assert resp["data"]["jobs"] == ["c", "fine"]
    assert resp["data"]["failed"] == {"c": "field 'resources': requires 99 cores but the partition has 4 in total"}
    assert "job 'c' FAILED: field 'resources': requires 99 cores" in resp["message"]
    assert handler.failed_at_submit == 1 and handler.refused == 0
    assert h.gov.registry.get("c").state.value == "FAILED"


def test_list_jobs(env):
    """Reference 10.3.2 listJobs: data.length and data.jobs{name: {status, ...}}."""
    h, _, _, call = env
    call({"request": "submit", "jobs": [J("a"), J("b")]})
    h.finish("a")
    resp = call({"request": "listJobs"})
    assert resp["code"] == 0
    assert resp["data"]["length"] == 2
    assert resp["data"]["jobs"]["a"]["status"] == "SUCCEED"
    assert resp["data"]["jobs"]["b"]["status"] == "QUEUED"


def test_list_jobs_queued_entry_has_in_queue(env):
    """Reference 10.3.2 example: a QUEUED job's entry has `inQueue` (its position in the queue)."""
    _, _, _, call = env
    call({"request": "submit", "jobs": [J("msleep2")]})
    entry = call({"request": "listJobs"})["data"]["jobs"]["msleep2"]
    assert entry["status"] == "QUEUED"
    assert "inQueue" in entry


def test_job_status(env):
    """Reference 10.3.3 jobStatus: data.jobs{name: {status: 0, data: {jobName, status}}}; `job:N` too."""
    h, _, _, call = env
    call({"request": "submit", "jobs": [J("a"), J("it", iteration={"stop": 2})]})
    h.finish("it:1")
    resp = call({"request": "jobStatus", "jobNames": ["a", "it:1", "it:0"]})
    assert resp["code"] == 0
    jobs = resp["data"]["jobs"]
    assert jobs["a"] == {"status": 0, "data": {"jobName": "a", "status": "QUEUED"}}
    assert jobs["it:1"]["data"]["status"] == "SUCCEED"
    assert jobs["it:0"]["data"]["status"] in ("QUEUED", "SCHEDULED", "EXECUTING")


def test_job_status_unknown_name_is_per_job_error(env):
    """Reference 10.3.3: a non-zero per-job `status` means a problem obtaining it (e.g. missing job name)."""
    _, _, _, call = env
    call({"request": "submit", "jobs": [J("a")]})
    resp = call({"request": "jobStatus", "jobNames": ["a", "nosuch", "a:3"]})
    jobs = resp["data"]["jobs"]
    assert jobs["a"]["status"] == 0
    assert jobs["nosuch"]["status"] != 0 and "nosuch" in jobs["nosuch"]["message"]
    assert jobs["a:3"]["status"] != 0


@pytest.mark.parametrize("names", [None, [], [1, 2], {"a": 1}, 7])
def test_job_names_wrong_type(env, names):
    """Issue 3 "wrong field types" for jobNames: error response, never an exception."""
    _, _, _, call = env
    for req in ("jobStatus", "jobInfo", "cancelJob", "removeJob"):
        body = {"request": req}
        if names is not None:
            body["jobNames"] = names
        resp = call(body)
        assert resp["code"] == 1, (req, resp)
        assert "jobNames" in resp["message"]


def test_job_info_plain(env):
    """Reference 10.3.4 jobInfo: jobName, status, runtime{allocation, wd, rtime, exit_code}, history text."""
    h, _, _, call = env
    call({"request": "submit", "jobs": [J("a")]})
    h.finish("a")
    data = call({"request": "jobInfo", "jobNames": ["a"]})["data"]["jobs"]["a"]
    assert data["status"] == 0
    info = data["data"]
    assert info["jobName"] == "a" and info["status"] == "SUCCEED"
    assert {"allocation", "wd", "rtime", "exit_code"} <= set(info["runtime"])
    assert info["runtime"]["exit_code"] == "0"
    assert info["history"].startswith("\n")
    states = [line.rsplit(": ", 1)[1] for line in info["history"].strip("\n").split("\n")]
    assert states[0] == "QUEUED" and states[-1] == "SUCCEED"
    assert "EXECUTING" in states


def test_job_info_with_childs(env):
    """Facts 2 / reference 10.3.4 jobInfo of an iterative job: `iterations` summary, `childs` with withChilds."""
    h, _, _, call = env
    call({"request": "submit", "jobs": [J("it", iteration={"start": 1, "stop": 4})]})
    h.finish("it:1")
    h.finish("it:2", "FAILED", code=1)
    resp = call({"request": "jobInfo", "jobNames": ["it"], "params": {"withChilds": True}})
    info = resp["data"]["jobs"]["it"]["data"]
    assert info["iterations"] == {"start": 1, "stop": 4, "total": 3, "finished": 2, "failed": 1}
    childs = info["childs"]
    assert [c["iteration"] for c in childs] == [1, 2, 3]
    assert [c["state"] for c in childs[:2]] == ["SUCCEED", "FAILED"]
    assert childs[0]["runtime"]["exit_code"] == "0"
    without = call({"request": "jobInfo", "jobNames": ["it"]})["data"]["jobs"]["it"]["data"]
    assert "childs" not in without
    one = call({"request": "jobInfo", "jobNames": ["it:2"]})["data"]["jobs"]["it:2"]["data"]
    assert one["jobName"] == "it:2" and one["status"] == "FAILED" and "iterations" not in one
    assert "childsListed" not in info


def test_job_info_with_childs_of_a_huge_sweep_lists_the_first(env):
    """A sweep of 10**12 iterations: `withChilds` lists the first CHILDS_LISTED and says so (it tried to
    list all: the service stopped answering; found in review)."""
    from qcg.pilotjob.governor.views import CHILDS_LISTED

    h, _, _, call = env
    call({"request": "submit", "jobs": [J("big", iteration={"stop": 10 ** 12})]})
    info = call({"request": "jobInfo", "jobNames": ["big"], "params": {"withChilds": True}}
                )["data"]["jobs"]["big"]["data"]
    assert len(info["childs"]) == CHILDS_LISTED == info["childsListed"]
    assert info["childs"][-1]["iteration"] == CHILDS_LISTED - 1


def test_cancel_job(env):
    """Reference 10.3.6 cancelJob: data.canceled count; unknown names in data.errors."""
    h, _, _, call = env
    call({"request": "submit", "jobs": [J("a")]})
    resp = call({"request": "cancelJob", "jobNames": ["a", "nosuch"]})
    assert resp["code"] == 0
    assert resp["data"]["canceled"] == 1
    assert set(resp["data"]["errors"]) == {"nosuch"}


def test_remove_job(env):
    """Reference 10.3.7 removeJob: data.removed; errors for unknown/unfinished names."""
    h, _, _, call = env
    call({"request": "submit", "jobs": [J("a"), J("b")]})
    h.finish("a")
    resp = call({"request": "removeJob", "jobNames": ["a", "b", "nosuch"]})
    assert resp["code"] == 0
    assert resp["data"]["removed"] == 1
    assert set(resp["data"]["errors"]) == {"b", "nosuch"}
    assert call({"request": "submit", "jobs": [J("a")]})["code"] == 0


def test_resources_info(env):
    """Reference 10.3.8 resourcesInfo: total_nodes, total_cores, used_cores, free_cores."""
    _, _, _, call = env
    resp = call({"request": "resourcesInfo"})
    assert resp == {"code": 0, "data": {"total_nodes": 2, "total_cores": 4, "used_cores": 0, "free_cores": 4}}


def test_status(env):
    """Facts 1/4 status: System, Resources, JobStats, IterationStats; options.allJobsFinished."""
    h, _, _, call = env
    call({"request": "submit", "jobs": [J("a"), J("it", iteration={"stop": 3})]})
    data = call({"request": "status"})["data"]
    assert set(data) == {"System", "Resources", "JobStats", "IterationStats"}
    assert data["JobStats"]["TotalJobs"] == 2
    assert data["IterationStats"]["TotalIterations"] == 4
    assert call({"request": "status", "options": {"allJobsFinished": True}}) == \
        {"code": 0, "data": {"AllJobsFinished": False}}
    for tid in ("a", "it:0", "it:1", "it:2"):
        h.finish(tid)
    assert call({"request": "status", "options": {"allJobsFinished": True}})["data"]["AllJobsFinished"] is True


def test_control(env):
    """Reference 10.3.5 control finishAfterAllTasksDone; unknown/missing command is an error."""
    _, ctl, _, call = env
    resp = call({"request": "control", "command": "finishAfterAllTasksDone"})
    assert resp["code"] == 0 and "finishAfterAllTasksDone" in resp["message"]
    assert ctl.finish_after == 1
    assert call({"request": "control", "command": "finishAfterAllTasksDone"})["code"] == 1
    assert call({"request": "control", "command": "reboot"})["code"] == 1
    assert call({"request": "control"})["code"] == 1


def test_finish(env):
    """Reference 10.3.9 finish: accepted, data has `when`."""
    _, ctl, _, call = env
    resp = call({"request": "finish"})
    assert resp["code"] == 0 and "when" in resp["data"]
    assert ctl.finish_now_calls == 1


@pytest.mark.parametrize("req", [
    {"request": "bogus"}, {"request": ""}, {}, {"request": 3}, [], "submit", None, 42,
    {"request": "status", "options": "x"}, {"request": "jobInfo", "jobNames": ["a"], "params": 3},
])
def test_unknown_or_malformed_request(env, req):
    """Issue 3 "unknown request": error response with a clear message, handler never raises."""
    _, _, handler, call = env
    resp = call(req)
    assert resp["code"] == 1
    assert resp["message"] and "internal error" not in resp["message"]


def test_unknown_request_names_it(env):
    """Facts 0: unknown request name is named in the message."""
    _, _, _, call = env
    assert "bogus" in call({"request": "bogus"})["message"]


def test_status_account_of_a_uid_without_a_name(monkeypatch):
    """Helper report: run as a uid that has no passwd entry (a container's) with USER and LOGNAME unset,
    `getpass.getuser()` raised KeyError: the `status` request failed and the run ended without its
    final_status.json. The account is then the uid's number."""
    import os
    import pwd

    from qcg.pilotjob.governor.views import account

    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert account() == str(os.getuid())


def test_requests_left_by_a_stop_that_was_no_finish_are_not_blamed_on_a_finish(capsys):
    """Helper report: a signal while the file was served printed "come after 'finish' (#1)" where request
    #1 was a submit."""
    from qcg.pilotjob.governor.file_interface import serve_requests

    stop = []
    requests = [{"request": "submit", "jobs": []}, {"request": "listJobs"}, {"request": "finish"},
                {"request": "listJobs"}]

    def handle(request):
        if request["request"] == "finish" or request["request"] == "submit":
            stop.append(True)             # the finish itself, or a signal that came meanwhile
        return {"code": 0, "data": {}}

    serve_requests(requests[:2], handle, lambda: bool(stop))
    assert "requests #2-#2 come after the service was told to stop and were not served" in capsys.readouterr().err
    stop.clear()
    serve_requests(requests[2:], handle, lambda: bool(stop))
    assert "requests #2-#2 come after 'finish' (#1) and were not served" in capsys.readouterr().err
