"""Client API end to end against a real service (reference 3.1, 11.2, 22.1.4, 23.2).

Every test starts the service as a subprocess through `LocalManager` (or
`QCGPJExecutor`), talks to it over ZMQ with CURVE and checks what a user of
the reference API sees. Every wait has a timeout; nothing asserts on
durations.

Tests marked `both_modes` run against a flat service and against a governor
with one partition manager per node (tests/conftest.py); the reference
examples (run as printed, without options), start failures and killed
services stay flat.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from qcg.pilotjob.api import errors, transport
from qcg.pilotjob.api.job import Jobs
from qcg.pilotjob.api.jobinfo import JobInfo
from qcg.pilotjob.api.manager import LocalManager, Manager
from qcg.pilotjob.executor_api.qcgpj_executor import QCGPJExecutor
from qcg.pilotjob.executor_api.qcgpj_future import QCGPJFuture
from qcg.pilotjob.executor_api.templates.basic_template import BasicTemplate
from tests.conftest import client_cfg, local_manager

WAIT = 60          # seconds any single wait may take before the test fails
NODES = "a:2,b:2"  # two nodes, so that partitioned mode has two partitions


@pytest.fixture
def lm(tmp_path, service_args):
    """A LocalManager on two nodes (4 cores), in this test's mode (flat, or one partition per node)."""
    wd = tmp_path / "wd"
    wd.mkdir()
    yield from local_manager(["--nodes", NODES, "--wd", str(wd), *service_args(NODES)], client_cfg(tmp_path))


def run_script(tmp_path: Path, text: str, timeout: float = 180) -> subprocess.CompletedProcess:
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(text))
    return subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=timeout)


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list]:
    """`call` started in a daemon thread; the list gets what it returned or raised, for the test to check."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - the tests report whatever ended the call
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# --------------------------------------------------------------------------- methods


@pytest.mark.both_modes
def test_resources_and_system_status(lm):
    res = lm.resources()
    assert res == {"total_nodes": 2, "total_cores": 4, "used_cores": 0, "free_cores": 4}
    status = lm.system_status()
    assert set(status) >= {"System", "Resources", "JobStats", "IterationStats"}
    assert status["System"]["InstanceId"] == lm.instance_id
    assert "ZMQ" in status["System"]["Ifaces"]
    assert status["Resources"]["TotalCores"] == 4


@pytest.mark.both_modes
def test_submit_status_wait4_info(lm, mode):
    jobs = Jobs().add(name="a", exec="/bin/sleep", args=["0.3"]) \
        .add(name="it", exec="/bin/sh", args=["-c", "exit ${it}"], iteration=2) \
        .add(name="dep", exec="/bin/true", after="a")
    names = lm.submit(jobs)
    assert names == ["a", "it", "dep"]

    status = lm.status(names)
    assert set(status["jobs"]) == set(names)
    for name in names:
        entry = status["jobs"][name]
        assert entry["status"] == 0 and entry["data"]["jobName"] == name
        assert entry["data"]["status"] in {"QUEUED", "SCHEDULED", "EXECUTING", "SUCCEED", "FAILED"}

    result = lm.wait4(names, timeout=WAIT)
    assert result == {"a": "SUCCEED", "it": "FAILED", "dep": "SUCCEED"}
    assert lm.wait4("it:0", timeout=WAIT) == {"it:0": "SUCCEED"}
    assert lm.wait4(["it:1"], timeout=WAIT) == {"it:1": "FAILED"}

    info = lm.info(names)["jobs"]
    assert info["a"]["data"]["status"] == "SUCCEED"
    assert info["a"]["data"]["runtime"]["exit_code"] == "0"
    # the one difference between the modes: which partition ran it (issue 6)
    assert info["a"]["data"]["runtime"].get("partition") == (
        None if mode == "flat" else {"a": "part-0", "b": "part-1"}[info["a"]["data"]["runtime"]["allocation"][0]])
    assert info["it"]["data"]["iterations"] == {"start": 0, "stop": 2, "total": 2, "finished": 2, "failed": 1}
    with_childs = lm.info("it", withChilds=True)["jobs"]["it"]["data"]
    assert [c["iteration"] for c in with_childs["childs"]] == [0, 1]

    parsed = lm.info_parsed(["a", "it"], withChilds=True)
    a, it = parsed["a"], parsed["it"]
    assert isinstance(a, JobInfo) and a.status == "SUCCEED" and a.total_cores == 1
    assert sum(len(cores) for cores in a.nodes.values()) == 1
    assert a.time is not None and a.wdir and a.history and a.history[-1].endswith("SUCCEED")
    assert [c.name for c in it.childs] == ["it:0", "it:1"]
    assert [c.status for c in it.childs] == ["SUCCEED", "FAILED"]


@pytest.mark.both_modes
def test_list_remove_and_resubmit(lm):
    lm.submit(Jobs().add(name="x", exec="/bin/true"))
    lm.wait4("x", timeout=WAIT)
    listed = lm.list()
    assert listed["x"]["status"] == "SUCCEED"
    lm.remove("x")
    assert "x" not in lm.list()
    assert lm.status("x")["jobs"]["x"]["status"] != 0  # "0 - job found, other value - job not found"
    with pytest.raises(errors.JobNotDefinedError, match="x"):
        lm.wait4("x", timeout=WAIT)
    # the original raises ConnectionError there ("Request failed - Job 'x' doesn't exist"), and for an
    # unknown name in info_parsed, which gave an empty JobInfo
    with pytest.raises(errors.ConnectionError, match="x"):
        lm.wait4(["x"], timeout=WAIT)
    with pytest.raises(errors.ConnectionError, match="x"):
        lm.info_parsed(["x"])
    # the name can be used again, and wait4 must wait for the new job, not the old one's events
    lm.submit(Jobs().add(name="x", exec="/bin/sleep", args=["0.3"]))
    assert lm.wait4("x", timeout=WAIT) == {"x": "SUCCEED"}


@pytest.mark.both_modes
def test_cancel_running_job(lm):
    lm.submit(Jobs().add(name="long", exec="/bin/sleep", args=["60"]).add(name="q", exec="/bin/true",
                                                                          after="long"))
    lm.cancel("long")
    assert lm.wait4(["long", "q"], timeout=WAIT) == {"long": "CANCELED", "q": "OMITTED"}


@pytest.mark.both_modes
def test_cancel_of_running_iterations_ends_them_and_the_job_fails(lm):
    """Reference 10.3.6 `cancelJob` with `job:N` names (audit helper): the iterations a user canceled while
    they ran were started again, and the job ended SUCCEED; the original ends them CANCELED, the job FAILED."""
    lm.submit(Jobs().add(name="it", iteration=4,
                         script="case ${it} in 1|3) sleep 60;; *) sleep 3;; esac"))
    assert lm.cancel(["it:1", "it:3"]) == {"canceled": 2}
    assert lm.wait4("it", timeout=WAIT) == {"it": "FAILED"}
    info = lm.info_parsed("it", withChilds=True)["it"]
    assert {c.iteration: c.status for c in info.childs} == {0: "SUCCEED", 1: "CANCELED", 2: "SUCCEED",
                                                            3: "CANCELED"}


@pytest.mark.both_modes
def test_wait4_timeout_raises_timeout_elapsed(lm):
    lm.submit(Jobs().add(name="slow", exec="/bin/sleep", args=["60"]))
    with pytest.raises(errors.TimeoutElapsed):
        lm.wait4("slow", timeout=0.5)
    with pytest.raises(errors.TimeoutElapsed):
        lm.wait4all(timeout_secs=0.3)
    lm.cancel(["slow"])
    assert lm.wait4("slow", timeout=WAIT) == {"slow": "CANCELED"}


@pytest.mark.both_modes
def test_wait4all_and_wait4_any(lm):
    lm.submit(Jobs().add(name="w1", exec="/bin/true").add(name="w2", exec="/bin/false")
              .add(name="w3", exec="/bin/sleep", args=["0.2"]))
    lm.wait4all(timeout_secs=WAIT)
    assert {n: e["status"] for n, e in lm.list().items()} == {"w1": "SUCCEED", "w2": "FAILED", "w3": "SUCCEED"}
    seen = {}
    for _ in range(3):
        name, state = lm.wait4_any_job_finish(timeout_secs=WAIT)
        seen[name] = state
    assert seen == {"w1": "SUCCEED", "w2": "FAILED", "w3": "SUCCEED"}
    with pytest.raises(errors.TimeoutElapsed):
        lm.wait4_any_job_finish(timeout_secs=0.2)
    assert Manager.is_status_finished("SUCCEED") and Manager.is_status_finished("OMITTED")
    assert not Manager.is_status_finished("EXECUTING") and not lm.is_status_finished("QUEUED")


@pytest.mark.both_modes
def test_send_request_and_request_errors(lm):
    response = lm.send_request({"request": "resourcesInfo"})
    assert response["code"] == 0 and response["data"]["total_cores"] == 4
    with pytest.raises(errors.ConnectionError, match="Request failed"):
        lm.send_request({"request": "bogus"})
    assert lm.status(["nosuch"])["jobs"]["nosuch"]["status"] != 0
    with pytest.raises(errors.InvalidJobDescriptionError):
        Jobs().add(name="bad", exec="/bin/true", numCores="two")
    # the service refuses a description the client did not check
    with pytest.raises(errors.ConnectionError, match="Request failed"):
        lm.submit([{"name": "bad", "execution": {}}])
    # what msgpack cannot carry is named before anything is sent (it was a bare OverflowError / TypeError)
    with pytest.raises(errors.InvalidJobDescriptionError,
                       match=r"job 'huge': field 'execution.args\[0\]': integer out of range"):
        lm.submit([{"name": "huge", "execution": {"exec": "/bin/true", "args": [10 ** 30]}}])
    with pytest.raises(errors.WrongArgumentsError, match=r"field 'jobNames\[0\]': a set cannot be sent"):
        lm.send_request({"request": "jobStatus", "jobNames": [{"a"}]})
    # the connection still works afterwards
    assert lm.resources()["total_cores"] == 4


@pytest.mark.both_modes
def test_second_client_by_aux_dir_and_env(lm, tmp_path, monkeypatch):
    with Manager(lm.aux_dir, client_cfg(tmp_path)) as other:
        other.submit(Jobs().add(name="from_other", exec="/bin/true"))
        assert other.wait4("from_other", timeout=WAIT) == {"from_other": "SUCCEED"}
    monkeypatch.setenv("QCG_PM_ZMQ_ADDRESS", lm.address)
    monkeypatch.setenv("QCG_PM_KEYS", lm.aux_dir)
    with Manager(cfg=client_cfg(tmp_path)) as by_env:
        assert "from_other" in by_env.list()


@pytest.mark.both_modes
def test_client_inside_a_task_uses_task_environment(lm, tmp_path):
    """A task can talk to the service that runs it (QCG_PM_ZMQ_ADDRESS and QCG_PM_KEYS are exported)."""
    out = tmp_path / "inner.out"
    code = ("from qcg.pilotjob.api.manager import Manager; "
            f"m = Manager(cfg={{'log_file': None, 'request_timeout': 20}}); "
            f"open({str(out)!r}, 'w').write(str(m.resources()['total_cores'])); m.close()")
    lm.submit(Jobs().add(name="inner", exec=sys.executable, args=["-c", code]))
    assert lm.wait4("inner", timeout=WAIT) == {"inner": "SUCCEED"}
    assert out.read_text() == "4"


@pytest.mark.both_modes
def test_client_without_keys_is_refused(lm, tmp_path, monkeypatch):
    """Issue 4 security, DESIGN principle 5: a client without the run's keys gets nothing. Without the
    plain-text opt-in it sends nothing and says at once where keys come from; with the opt-in
    (QCG_PM_INSECURE_NO_CURVE=1) it is told when the service refuses its handshake, not after its whole
    request timeout (60 s here)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("QCG_PM_KEYS", raising=False)
    monkeypatch.delenv("QCG_PM_INSECURE_NO_CURVE", raising=False)
    with pytest.raises(errors.ConnectionError, match="no CURVE keys found for .*QCG_PM_KEYS.*"
                                                     "QCG_PM_INSECURE_NO_CURVE=1"):
        Manager(lm.address, {"log_file": None, "request_timeout": 60})
    monkeypatch.setenv("QCG_PM_INSECURE_NO_CURVE", "1")
    with pytest.raises(errors.ConnectionError, match="requires CURVE keys and none were found.*QCG_PM_KEYS"):
        Manager(lm.address, {"log_file": None, "request_timeout": 60})


def test_finish_with_keys_of_another_run_is_refused_and_the_service_goes_on(lm, tmp_path):
    """A `finish` whose handshake is refused is no success (its failed connection closing is not the
    service ending): it raises, and the service still serves its own clients."""
    other = tmp_path / "other"
    other.mkdir()
    with LocalManager(["--nodes", "1", "--wd", str(other)], client_cfg(tmp_path)) as second:
        keys = transport.find_keys(second.aux_dir)
    conn = transport.ServiceConnection(lm.address, keys, timeout=60)
    try:
        with pytest.raises(errors.ConnectionError, match="refused this client's keys"):
            conn.request({"request": "finish"}, ends_service=True)
    finally:
        conn.close()
    assert lm.resources()["total_cores"] > 0


def test_client_with_keys_of_another_run_is_refused(lm, tmp_path, monkeypatch):
    """Issue 4 security: the keys of another run get nothing either; the client says its keys were refused."""
    other = tmp_path / "other"
    other.mkdir()
    with LocalManager(["--nodes", "1", "--wd", str(other)], client_cfg(tmp_path)) as second:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("QCG_PM_KEYS", second.aux_dir)
        with pytest.raises(errors.ConnectionError, match="refused this client's keys"):
            Manager(lm.address, {"log_file": None, "request_timeout": 60})


@pytest.mark.both_modes
def test_finish_ends_the_process_and_cleanup(tmp_path, service_args):
    wd = tmp_path / "wd"
    wd.mkdir()
    with LocalManager(["--nodes", "a:1,b:1", "--wd", str(wd), *service_args("a:1,b:1")],
                      client_cfg(tmp_path)) as manager:
        manager.submit(Jobs().add(name="a", exec="/bin/true"))
        manager.wait4all(timeout_secs=WAIT)
        process = manager.qcgpm_process
    assert process.poll() is not None
    # no partition manager outlives the governor
    assert not [p for p in psutil.process_iter(["cmdline"])
                if "--parent" in (p.info["cmdline"] or []) and str(wd) in (p.info["cmdline"] or [])]
    manager.finish()  # a second finish does nothing
    assert (Path(manager.aux_dir) / "jobs.report").exists()


def test_finish_of_a_service_already_finishing_succeeds(tmp_path):
    """Ctrl-C in a terminal reaches the client and its service together: the client's `finally: finish()`
    then asks a service that stops already (here: it waits for a task that ignores SIGTERM). That is
    done, not an error (it raised RequestFailed 'processing stopped', and the script exited 1, not 130)."""
    with LocalManager(["--nodes", "1", "--wd", str(tmp_path / "wd")], client_cfg(tmp_path)) as manager:
        manager.submit(Jobs().add(name="stubborn", script="trap '' TERM; sleep 60"))
        deadline = time.monotonic() + WAIT
        while manager.status("stubborn")["jobs"]["stubborn"]["data"]["status"] != "EXECUTING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        manager.qcgpm_process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert manager.qcgpm_process.poll() is None      # still stopping: the task has 3 s before SIGKILL
        manager.finish()
        assert manager.qcgpm_process.poll() is not None


def test_local_manager_reports_start_failure(tmp_path):
    with pytest.raises(errors.ServiceError, match="cores"):
        LocalManager(["--nodes", "0", "--wd", str(tmp_path)], client_cfg(tmp_path))


# --------------------------------------------------------------------------- faults


def test_dead_local_service_raises_connection_error(tmp_path):
    manager = LocalManager(["--nodes", "2", "--wd", str(tmp_path)], client_cfg(tmp_path, request_timeout=5))
    manager.qcgpm_process.kill()
    manager.qcgpm_process.wait(WAIT)
    with pytest.raises(errors.ConnectionError):
        manager.resources()
    with pytest.raises(errors.ConnectionError):
        manager.wait4all(timeout_secs=WAIT)
    manager.finish()  # nothing left to finish: no error


def test_dead_remote_service_raises_connection_error(tmp_path):
    manager = LocalManager(["--nodes", "2", "--wd", str(tmp_path)], client_cfg(tmp_path))
    try:
        remote = Manager(manager.aux_dir, client_cfg(tmp_path, request_timeout=1, poll_delay=0.5))
        os.kill(manager.qcgpm_process.pid, signal.SIGKILL)
        manager.qcgpm_process.wait(WAIT)
        with pytest.raises(errors.ConnectionError):
            remote.resources()
        with pytest.raises(errors.ConnectionError):
            remote.wait4all(timeout_secs=WAIT)
        remote.close()
    finally:
        manager.finish()


def test_another_clients_finish_ends_a_wait_at_once(tmp_path):
    """Issue 4 "a dead service raises ConnectionError": a client waits for a job while another client
    finishes the service. The wait ends with ServiceUnreachable when the service closes the connection; it
    waited out the request timeout (60 s) of the request sent to confirm the job's CANCELED event. The
    bound (30 s) only tells the two apart; a request after that fails at once (the address refuses)."""
    manager = LocalManager(["--nodes", "2", "--wd", str(tmp_path)], client_cfg(tmp_path))
    try:
        other = Manager(manager.aux_dir, client_cfg(tmp_path, request_timeout=60))
        other.submit(Jobs().add(name="long", exec="/bin/sleep", args=["60"]))
        waiter, outcome = in_thread(lambda: other.wait4("long"))
        time.sleep(0.5)
        manager.finish()
        waiter.join(30)
        assert not waiter.is_alive(), "the wait runs on after the service finished"
        assert len(outcome) == 1 and isinstance(outcome[0], errors.ConnectionError), outcome
        with pytest.raises(errors.ConnectionError, match="not running any more"):
            other.status("long")
        other.close()
    finally:
        manager.finish()


def _status_in_a_forked_child(manager, queue) -> None:
    try:
        manager.status("a")
        queue.put("no error")
    except Exception as exc:  # noqa: BLE001 - the test reports what the child got
        queue.put(f"{type(exc).__name__}: {exc}")


# forking a process with threads is the point of the test: Python 3.12+ warns about it (DeprecationWarning)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_a_forked_child_is_told_to_make_its_own_manager(tmp_path):
    """Issue 4 "a hang is a bug": a child forked (multiprocessing's fork) after the Manager was made spun in
    zmq_poll on the parent's sockets, past its timeout, and the parent hung at exit waiting for it. It gets a
    ConnectionError saying why; the parent's Manager goes on working."""
    import multiprocessing

    manager = LocalManager(["--nodes", "2", "--wd", str(tmp_path)], client_cfg(tmp_path, request_timeout=3))
    try:
        manager.submit(Jobs().add(name="a", exec="/bin/true"))
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_status_in_a_forked_child, args=(manager, queue))
        child.start()
        child.join(WAIT)
        assert not child.is_alive(), "the forked child hangs"
        assert "forked process cannot use it" in queue.get(timeout=WAIT)
        assert manager.wait4("a", timeout=WAIT) == {"a": "SUCCEED"}
    finally:
        manager.finish()
    with pytest.raises(errors.ConnectionError, match="Not connected"):
        manager.wait4_any_job_finish(1)


def test_wait4_any_without_timeout_ends_when_the_service_is_killed(tmp_path):
    """Issue 4 "Client calls to a dead ... service raise ConnectionError": `wait4_any_job_finish()` without
    a timeout waited for events that a killed service never sends, for ever."""
    manager = LocalManager(["--nodes", "2", "--wd", str(tmp_path)], client_cfg(tmp_path, poll_delay=0.5))
    manager.submit(Jobs().add(name="long", exec="/bin/sleep", args=["60"]))
    waiter, outcome = in_thread(manager.wait4_any_job_finish)
    time.sleep(0.5)
    manager.qcgpm_process.kill()
    manager.qcgpm_process.wait(WAIT)
    waiter.join(WAIT)
    try:
        assert not waiter.is_alive(), "wait4_any_job_finish() still waiting on a killed service"
        assert len(outcome) == 1 and isinstance(outcome[0], errors.ConnectionError), outcome
    finally:
        manager.finish()


def test_a_thread_waiting_without_timeout_does_not_hold_up_another_threads_timeout(tmp_path):
    """Issue 4 "timeouts on every wait", README "one Manager may be shared by threads": while one thread
    waits for any job to finish (no timeout), another's wait4(timeout=1) ends with TimeoutElapsed; it used
    to wait for the first thread's turn at the events (up to 300 s), here until the 60 s job ended."""
    manager = LocalManager(["--nodes", "2", "--wd", str(tmp_path)], client_cfg(tmp_path))
    try:
        manager.submit(Jobs().add(name="long", exec="/bin/sleep", args=["60"]))
        first: list[tuple] = []
        waiter = threading.Thread(target=lambda: first.append(manager.wait4_any_job_finish()), daemon=True)
        waiter.start()
        time.sleep(0.3)
        with pytest.raises(errors.TimeoutElapsed):
            manager.wait4("long", timeout=1)
        # and a wait for a job whose end the other thread may take in still sees it
        manager.submit(Jobs().add(name="short", exec="/bin/sleep", args=["1"]))
        assert manager.wait4("short", timeout=WAIT) == {"short": "SUCCEED"}
        waiter.join(WAIT)
        assert first == [("short", "SUCCEED")]
        manager.cancel("long")
    finally:
        manager.finish()


@pytest.mark.parametrize("wait", ["wait4", "wait4all"])
def test_wait_on_a_dead_service_keeps_its_own_timeout(tmp_path, wait):
    """Issue 4 "Client calls to a dead or unreachable service raise ConnectionError/TimeoutElapsed within
    their timeout": a wait of 3 s must not run on for the connection's request timeout (60 s by default)
    because the service died under it. The bound checked here (30 s) only tells a finished wait from one
    that waits out the request timeout."""
    manager = LocalManager(["--nodes", "2", "--wd", str(tmp_path)], client_cfg(tmp_path))
    try:
        remote = Manager(manager.aux_dir, client_cfg(tmp_path, request_timeout=60))
        remote.submit(Jobs().add(name="long", exec="/bin/sleep", args=["60"]))
        os.kill(manager.qcgpm_process.pid, signal.SIGKILL)
        manager.qcgpm_process.wait(WAIT)
        waiter, outcome = in_thread(lambda: remote.wait4("long", timeout=3) if wait == "wait4"
                                    else remote.wait4all(timeout_secs=3))
        waiter.join(30)
        assert not waiter.is_alive(), f"{wait}(3 s) still waiting after 30 s"
        assert isinstance(outcome[0], (errors.ConnectionError, errors.TimeoutElapsed)), outcome
        remote.close()
    finally:
        manager.finish()


def test_a_wait_queued_behind_another_threads_request_to_a_hung_service_keeps_its_own_timeout(tmp_path):
    """Issue 4 "timeouts on every wait": one thread's `list()` waits for a stopped (SIGSTOP) service for its
    request timeout (40 s); another thread's wait4_any_job_finish(timeout_secs=2) has to ask the service
    whether it is still there, and that request queues behind the first. It used to wait for the first
    one's 40 s; now it gives up when its own 2 s are over. The bound checked (25 s) only tells them apart."""
    manager = LocalManager(["--nodes", "2", "--wd", str(tmp_path)],
                           client_cfg(tmp_path, request_timeout=40, poll_delay=0.2))
    pid = manager.qcgpm_process.pid
    try:
        manager.resources()
        os.kill(pid, signal.SIGSTOP)
        lister, listed = in_thread(manager.list)
        time.sleep(0.3)
        waiter, outcome = in_thread(lambda: manager.wait4_any_job_finish(timeout_secs=2))
        waiter.join(25)
        assert not waiter.is_alive(), "wait4_any_job_finish(timeout_secs=2) still waiting after 25 s"
        assert isinstance(outcome[0], errors.TimeoutElapsed), outcome
        os.kill(pid, signal.SIGCONT)
        lister.join(WAIT)
        assert [type(x) for x in listed] == [dict]     # the first request is answered once the service runs on
    finally:
        os.kill(pid, signal.SIGCONT)
        manager.finish()


def test_unreachable_address_raises_connection_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QCG_PM_KEYS", raising=False)
    # opted in to plain text, so that the connection is tried (without keys nothing would be)
    monkeypatch.setenv("QCG_PM_INSECURE_NO_CURVE", "1")
    with pytest.raises(errors.ConnectionError, match="tcp://127.0.0.1:9 within 0.5 s"):
        Manager("tcp://127.0.0.1:9", {"log_file": None, "request_timeout": 0.5})


# --------------------------------------------------------------------------- load


@pytest.mark.slow
@pytest.mark.both_modes
def test_ten_concurrent_clients_thousand_jobs_each(tmp_path, service_args):
    wd = tmp_path / "wd"
    wd.mkdir()
    clients, per_client, batch = 10, 1000, 100
    with LocalManager(["--nodes", NODES, "--wd", str(wd), "--report-format", "none", *service_args(NODES)],
                      client_cfg(tmp_path)) as manager:
        results: dict[int, dict] = {}
        failures: list[BaseException] = []

        def client(idx: int) -> None:
            try:
                with Manager(manager.aux_dir, client_cfg(tmp_path, request_timeout=60)) as m:
                    names = []
                    for start in range(0, per_client, batch):
                        jobs = Jobs()
                        for j in range(start, start + batch):
                            jobs.add(name=f"c{idx}_{j}", exec="/bin/true")
                        names += m.submit(jobs)
                    results[idx] = m.wait4(names, timeout=300)
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=400)
        assert not failures, failures
        assert all(not t.is_alive() for t in threads)
        assert sorted(results) == list(range(clients))
        for idx, states in results.items():
            assert len(states) == per_client
            assert set(states.values()) == {"SUCCEED"}
        stats = manager.system_status()["JobStats"]
        assert stats["TotalJobs"] == clients * per_client
        assert stats["FinishedJobs"] == clients * per_client
        listed = manager.list()
        assert len(listed) == clients * per_client
        assert {e["status"] for e in listed.values()} == {"SUCCEED"}


# --------------------------------------------------------------------------- reference examples


def test_reference_api_example_runs_as_written(tmp_path):
    """Reference 3.1 "Example API application", statements as printed there."""
    proc = run_script(tmp_path, """
        from qcg.pilotjob.api.manager import LocalManager

        manager = LocalManager()
        print('available resources: ', manager.resources())

        from qcg.pilotjob.api.job import Jobs
        jobs = Jobs().add(script='echo "job ${it} executed at `date` @ `hostname`"', stdout='job.out.${it}', iteration=4)
        job_ids = manager.submit(jobs)
        print('submitted jobs: ', str(job_ids))

        job_status = manager.status(job_ids)
        print('job status: ', job_status)

        manager.wait4(job_ids)
        manager.wait4all()

        job_info = manager.info(job_ids)
        print('job detailed information: ', job_info)

        manager.finish()
    """)
    assert proc.returncode == 0, proc.stderr
    assert "available resources:  {'total_nodes': 1" in proc.stdout
    assert "'status': 'SUCCEED'" in proc.stdout
    for it in range(4):
        assert (tmp_path / f"job.out.{it}").read_text().startswith(f"job {it} executed at ")
    assert list(tmp_path.glob(".qcgpjm-service-*/service.log"))


def test_reference_executor_example_runs_as_written(tmp_path):
    """Reference 11.2 minimal Executor API example."""
    proc = run_script(tmp_path, """
        from qcg.pilotjob.executor_api.qcgpj_executor import QCGPJExecutor
        from qcg.pilotjob.executor_api.templates.basic_template import BasicTemplate

        with QCGPJExecutor() as e:
            f = e.submit(BasicTemplate.template, name='tj', exec='date')
            print(f.result())
    """)
    assert proc.returncode == 0, proc.stderr
    assert "{'tj': 'SUCCEED'}" in proc.stdout
    assert (tmp_path / "stdout").read_text().strip()


# --------------------------------------------------------------------------- Executor API


@pytest.fixture
def executor(tmp_path, service_args):
    e = QCGPJExecutor(service_args("a:1,b:1"), wd=str(tmp_path), resources="a:1,b:1", log_level="info")
    try:
        yield e
    finally:
        e.shutdown(wait=False, cancel_futures=True)


@pytest.mark.both_modes
def test_executor_future_like_concurrent_futures(executor, tmp_path):
    assert executor.qcgpj_manager.resources()["total_cores"] == 2
    f = executor.submit(BasicTemplate.template, name="tj", exec="date")
    assert isinstance(f, QCGPJFuture) and isinstance(f, concurrent.futures.Future)
    assert f.result(timeout=WAIT) == {"tj": "SUCCEED"}
    assert f.done() and not f.running() and not f.cancelled() and f.exception(timeout=0) is None
    assert (tmp_path / "stdout").read_text().strip()

    futures = [executor.submit(BasicTemplate.template, {"name": f"m{i}"}, exec="sleep", args=["0.1"])
               for i in range(4)]
    finished = list(concurrent.futures.as_completed(futures, timeout=WAIT))
    assert sorted(f.result()[next(iter(f.result()))] for f in finished) == ["SUCCEED"] * 4
    callbacks = []
    called = threading.Event()
    g = executor.submit(BasicTemplate.template, name="cb", exec="/bin/false")
    g.add_done_callback(lambda fut: (callbacks.append(fut.result()), called.set()))
    done, _ = concurrent.futures.wait([g], timeout=WAIT)
    assert g in done and g.result() == {"cb": "FAILED"}
    assert called.wait(WAIT) and callbacks == [{"cb": "FAILED"}]


def test_executor_positional_arguments_are_service_options(tmp_path):
    """Reference 23.2.1 `QCGPJExecutor(*other_args, wd='.', resources=None, ...)`: positional arguments are
    extra options for the service, the documented parameters keywords (they were taken as `wd`...)."""
    with QCGPJExecutor("--system-core", wd=str(tmp_path), resources="a:2,b:2", log_level="warning") as e:
        res = e.qcgpj_manager.resources()
        assert res["total_cores"] == 4 and res["free_cores"] == 3     # one core reserved by --system-core
        assert e.submit(BasicTemplate.template, name="tj", exec="/bin/true").result(timeout=WAIT) == \
            {"tj": "SUCCEED"}
    assert not (tmp_path / "--system-core").exists()


@pytest.mark.both_modes
def test_executor_cancel_and_errors(executor):
    f = executor.submit(BasicTemplate.template, name="long", exec="sleep", args=["60"])
    assert f.running() and not f.done()
    with pytest.raises(concurrent.futures.TimeoutError):
        f.result(timeout=0.2)
    assert f.cancel()
    assert f.cancelled() and f.done()
    with pytest.raises(concurrent.futures.CancelledError):
        f.result(timeout=WAIT)
    # the stdlib's waits count it done too (they waited for ever: the cancel was never "notified")
    done, not_done = concurrent.futures.wait([f], timeout=WAIT)
    assert done == {f} and not not_done
    assert list(concurrent.futures.as_completed([f], timeout=WAIT)) == [f]
    assert executor.qcgpj_manager.wait4("long", timeout=WAIT) == {"long": "CANCELED"}
    g = executor.submit(BasicTemplate.template, name="quick", exec="true")
    assert g.result(timeout=WAIT) == {"quick": "SUCCEED"}
    assert not g.cancel()
    with pytest.raises(KeyError, match="exec"):
        executor.submit(BasicTemplate.template, name="tj")
    with pytest.raises(errors.InvalidJobDescriptionError):
        executor.submit(BasicTemplate.template, name="bad:name", exec="date")


@pytest.mark.both_modes
def test_executor_task_environment_and_shutdown(tmp_path, service_args):
    e = QCGPJExecutor(service_args("a:1,b:1"), wd=str(tmp_path), resources="a:1,b:1", log_level="info")
    f = e.submit(lambda: ("{'name': '${name}', 'execution': {'exec': '/bin/sh', "
                          "'args': ['-c', 'echo $$QCG_PM_EXEC_API_JOB_ID'], 'stdout': 'env.out'}}", {}),
                 name="envjob")
    e.shutdown()  # waits for the pending future
    assert f.done() and f.result() == {"envjob": "SUCCEED"}
    assert (tmp_path / "env.out").read_text().strip() == "envjob"
    e.shutdown()  # a second shutdown does nothing (reference 23.2.1)
    with pytest.raises(RuntimeError):
        e.submit(BasicTemplate.template, name="late", exec="date")
