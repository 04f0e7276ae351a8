"""Launching real processes (issue 3 "Launching"): walltime, cancel of the whole process group,
modules/venv wrapper, scripts. Reference 10.3.1 (execution, wt), 10.3.6 cancelJob, 8.2.

Tests marked `both_modes` run flat and partitioned (tests/conftest.py); the in-process cancel test
drives a Partition directly and stays flat."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import psutil
import pytest

from qcg.pilotjob.api.jobparse import parse_jobs
from qcg.pilotjob.governor.governor import Governor, GovernorListener
from qcg.pilotjob.governor.states import JobState
from qcg.pilotjob.partition.partition import Partition, PartitionConfig
from qcg.pilotjob.partition.local_nodes import local_resources
from tests.conftest import job, script_job, submit


@pytest.mark.both_modes
def test_walltime_kills(service):
    """Issue 3 "`wt` enforced": a task running past its walltime is killed, FAILED, message about walltime;
    a task within its walltime succeeds."""
    reqs = [submit(job("slow", "/bin/sleep", ["30"], resources={"numCores": {"exact": 1}, "wt": "1s"}),
                   job("quick", "/bin/true", resources={"numCores": {"exact": 1}, "wt": "10s"}))]
    r = service(reqs, timeout=30)
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["slow"]["state"] == "FAILED"
    assert "walltime" in rep["slow"]["messages"].lower() or "wall time" in rep["slow"]["messages"].lower()
    assert rep["quick"]["state"] == "SUCCEED"


@pytest.mark.both_modes
def test_walltime_kills_process_group(service, tmp_path):
    """Issue 3 "cancel and walltime kill the whole process group": a background child dies too."""
    pidfile = tmp_path / "child.pid"
    sc = f"sleep 60 & echo $! > {pidfile}; wait"
    r = service([submit(job("wt", "bash", ["-c", sc], resources={"numCores": {"exact": 1}, "wt": "1s"}))],
                timeout=30)
    assert r.rc == 0, r.stderr
    assert r.report()["wt"]["state"] == "FAILED"
    child = int(pidfile.read_text())
    assert _gone(child, 10), "background child of a walltime-killed task survived"


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


class _Events(GovernorListener):
    def __init__(self) -> None:
        self.changes: list[tuple[str, int | None, JobState]] = []

    def state_changed(self, job, iteration, state):
        self.changes.append((job.name, iteration, state))


def test_a_launcher_fault_fails_its_task_and_the_others_run(tmp_path):
    """A launcher that raises (as the spawner did when descriptors ran out: security audit F3) fails that
    task with the reason and frees its cores; the scheduling pass goes on, so the other tasks run, and so
    do later ones. Before, the exception ended the pass with the cores still taken: every job stayed QUEUED."""
    async def main():
        loop = asyncio.get_running_loop()
        part = Partition(loop, local_resources("1"),
                         PartitionConfig(root_wd=str(tmp_path), scratch_dir=str(tmp_path / "s")), events=None)
        gov = Governor(loop, part, [])
        part.events = gov
        launch = part.launcher.launch

        def faulty(req):
            if req.task_id == "bad":
                raise OSError(24, "Too many open files")
            launch(req)

        part.launcher.launch = faulty
        gov.submit(parse_jobs([{"name": n, "execution": {"exec": "/bin/true"}} for n in ("bad", "ok1", "ok2")]))
        await asyncio.wait_for(gov.wait_all_finished(), 20)
        assert {n: gov.registry.get(n).state for n in ("bad", "ok1", "ok2")} == {
            "bad": JobState.FAILED, "ok1": JobState.SUCCEED, "ok2": JobState.SUCCEED}
        assert "cannot start: [Errno 24] Too many open files" in (gov.registry.get("bad").record.messages or "")
        assert part.resources.free_cores == 1
        await part.shutdown()

    asyncio.run(asyncio.wait_for(main(), 30))


async def _wait_for(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_cancel_running_kills_whole_process_group(tmp_path):
    """Reference 10.3.6 cancelJob + issue 3 "cancel ... kill the whole process group (TERM, then KILL)":
    after cancel of a running script that started a background child, no process of its group remains;
    state CANCELED."""
    pidfile = tmp_path / "pids"
    sc = f"trap '' TERM; sleep 60 & echo $$ $! > {pidfile}; wait; wait"

    async def main():
        loop = asyncio.get_running_loop()
        res = local_resources("2")
        part = Partition(loop, res, PartitionConfig(root_wd=str(tmp_path), scratch_dir=str(tmp_path / "s")),
                         events=None)
        ev = _Events()
        gov = Governor(loop, part, [ev])
        part.events = gov
        gov.submit(parse_jobs([{"name": "c", "execution": {"exec": "bash", "args": ["-c", sc]}}]))
        await _wait_for(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2, 15)
        shell, child = map(int, pidfile.read_text().split())
        pgid = os.getpgid(shell)
        assert os.getpgid(child) == pgid
        started_before = time.time()
        canceled, errors = gov.cancel(["c"])
        assert canceled == 1 and not errors
        await asyncio.wait_for(gov.wait_all_finished(), 20)
        # processes of the group that existed at cancel time; a process created later may reuse the
        # group's number once the leader is gone (pid reuse while parallel tests spawn thousands)
        members = [p for p in psutil.process_iter(["pid", "create_time", "status"])
                   if _pgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE
                   and (p.info["create_time"] or 0) < started_before]
        assert members == [], f"processes of the canceled group remain: {members}"
        assert gov.registry.get("c").state is JobState.CANCELED
        await part.shutdown(5)
        return shell, child

    shell, child = asyncio.run(asyncio.wait_for(main(), 60))
    assert _gone(child, 5) and _gone(shell, 5)


def test_held_launches_wait_for_the_hold(tmp_path):
    """Issue 4 "submit round trip": a launch a request triggered waits until `hold_launches` has passed
    (the reply leaves first); the task then runs normally."""
    async def main():
        loop = asyncio.get_running_loop()
        part = Partition(loop, local_resources("2"),
                         PartitionConfig(root_wd=str(tmp_path), scratch_dir=str(tmp_path / "s")), events=None)
        ev = _Events()
        gov = Governor(loop, part, [ev])
        part.events = gov
        t0 = time.time()
        part.hold_launches(1.5)
        gov.submit(parse_jobs([{"name": "h", "execution": {"exec": "/bin/true"}}]))
        await asyncio.sleep(0.3)
        assert ("h", None, JobState.EXECUTING) not in ev.changes
        await asyncio.wait_for(gov.wait_all_finished(), 20)
        rec = gov.registry.get("h").record
        started = next(ts for ts, st in rec.history if st is JobState.EXECUTING)
        assert started - t0 >= 1.5 - 0.01
        assert rec.state is JobState.SUCCEED
        await part.shutdown(5)

    asyncio.run(asyncio.wait_for(main(), 60))


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.both_modes
def test_cancel_in_file(service):
    """Reference 10.3.6 cancelJob from the request file (issue 3 requests): the job ends CANCELED, the
    service exits normally."""
    reqs = [submit(job("s", "/bin/sleep", ["30"])), {"request": "cancelJob", "jobNames": ["s"]}]
    r = service(reqs, timeout=30)
    assert r.rc == 0, r.stderr
    assert r.report()["s"]["state"] == "CANCELED"


@pytest.mark.both_modes
def test_cancel_of_a_queued_iterative_job_reports_every_iteration(service):
    """Reference 10.3.6 cancelJob, 17 (`jobs.report`): each iteration of a canceled iterative job gets its
    CANCELED line, also those never handed out (the original 0.14.2 writes one for each), then the job."""
    blockers = [job(f"hold{i}", "/bin/sleep", ["30"], resources={"numCores": {"exact": 2}}) for i in range(2)]
    sweep = job("sweep", "/bin/true", resources={"numCores": {"exact": 1}}, iteration={"stop": 300})
    reqs = [submit(*blockers), submit(sweep), {"request": "cancelJob", "jobNames": ["sweep"]},
            {"request": "cancelJob", "jobNames": ["hold0", "hold1"]}]
    r = service(reqs, timeout=60)
    assert r.rc == 0, r.stderr
    lines = r.report_lines()
    its = [ln for ln in lines if ln["name"].startswith("sweep:")]
    assert sorted(ln["name"] for ln in its) == sorted(f"sweep:{i}" for i in range(300))
    assert {ln["state"] for ln in its} == {"CANCELED"}
    assert [ln["name"] for ln in lines].index("sweep") > max(lines.index(ln) for ln in its)
    assert r.report()["sweep"]["state"] == "CANCELED"


@pytest.mark.both_modes
def test_script_runs_in_bash(service):
    """Reference 10.3.1 `script`: commands for bash (argv never joined: quotes reach bash intact)."""
    sc = 'x="a  b"; echo "[$x]" > s.out; echo \'single "dq"\' >> s.out'
    r = service([submit(script_job("s", sc))])
    assert r.rc == 0, r.stderr
    assert (r.wd / "s.out").read_text() == '[a  b]\nsingle "dq"\n'


@pytest.mark.both_modes
def test_args_not_joined(service):
    """Issue 3 "argv lists, never joined shell strings": an argument with spaces and shell characters stays
    one argument."""
    r = service([submit(job("a", sys.executable, ["-c", "import sys; print(sys.argv[1:])", "x y", "$(id)", ";|&"],
                            stdout="o"))])
    assert r.rc == 0, r.stderr
    assert (r.wd / "o").read_text() == "['x y', '$(id)', ';|&']\n"


@pytest.mark.both_modes
def test_venv_activated(service, tmp_path):
    """Reference 10.3.1 `venv`: the task runs inside the virtual environment (login-shell wrapper)."""
    venv = tmp_path / "my venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    reqs = [submit(job("v", "python", ["-c", "import sys; print(sys.prefix)", "a b"], stdout="v.out",
                       venv=str(venv)),
                   script_job("vs", 'echo "$VIRTUAL_ENV" > vs.out', venv=str(venv)))]
    r = service(reqs)
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["v"]["state"] == "SUCCEED", rep["v"]
    assert (r.wd / "v.out").read_text().strip() == str(venv)
    assert (r.wd / "vs.out").read_text().strip() == str(venv)


def test_venv_and_program_named_with_a_leading_dash(service, tmp_path):
    """A relative venv `-venv` and a program `-prog` found through PATH (helper report: the wrapper's
    `source` and `exec` took them for options: the venv was not activated, and the task failed with
    `exec: -p: invalid option`)."""
    wd = tmp_path / "wd"
    (wd / "-venv" / "bin").mkdir(parents=True)
    (wd / "-venv" / "bin" / "activate").write_text("export IN_VENV=yes\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "-prog").write_text('#!/bin/sh\necho "ran $IN_VENV"\n')
    (bindir / "-prog").chmod(0o755)
    r = service([submit(job("d", "-prog", stdout="d.out", venv="-venv",
                            env={"PATH": f"{bindir}:{os.environ['PATH']}"}))], wd=wd)
    assert r.rc == 0, r.stderr
    assert r.report()["d"]["state"] == "SUCCEED", r.report()["d"]
    assert (wd / "d.out").read_text() == "ran yes\n"


@pytest.mark.both_modes
def test_modules_loaded(service, tmp_path):
    """Reference 10.3.1 `modules`: `module load` runs in the task's login shell before the program; module
    names with spaces are passed intact (issue 3 "with correct quoting")."""
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "module.log"
    (home / ".bash_profile").write_text(
        f'module() {{ for a in "$@"; do echo "[$a]"; done >> "{log}"; export LOADED=yes; }}\n')
    reqs = [submit(job("m", "bash", ["-c", 'echo "loaded=$LOADED" > m.out'], modules=["gcc/12", "odd name"],
                       env={"HOME": str(home)}))]
    r = service(reqs)
    assert r.rc == 0, r.stderr
    assert r.report()["m"]["state"] == "SUCCEED"
    assert log.read_text() == "[load]\n[gcc/12]\n[odd name]\n"
    assert (r.wd / "m.out").read_text() == "loaded=yes\n"


@pytest.mark.both_modes
def test_exit_code_nonzero(service):
    """Reference 10.3.3 FAILED: non-zero exit code; runtime exit_code as a string."""
    r = service([submit(job("e", "bash", ["-c", "exit 7"]))])
    assert r.rc == 0, r.stderr
    e = r.report()["e"]
    assert e["state"] == "FAILED" and e["runtime"]["exit_code"] == "7"


@pytest.mark.both_modes
def test_many_short_tasks(service):
    """Issue 3 "run thousands of tasks on one machine": 2000 iterations of /bin/true all SUCCEED."""
    r = service([submit(job("many", "/bin/true", iteration={"stop": 2000}))], timeout=120)
    assert r.rc == 0, r.stderr
    fs = r.final_status()
    assert fs["IterationStats"]["FinishedIterations"] == 2000
    assert fs["JobStats"]["FinishedJobs"] == 1


def test_tasks_do_not_get_descriptors_the_service_was_started_with(tmp_path):
    """Issue 3 "Launching": a task starts with stdin, stdout and stderr only. `posix_spawn` passes every
    descriptor without close-on-exec, and a service started from a shell or a batch script has some (a
    pipe kept open in a task would keep its reader from seeing the end); the original (subprocess,
    close_fds) gives its tasks none."""
    from tests.conftest import SERVICE, find_aux, write_requests

    out = tmp_path / "fds.txt"
    probe = ("import os\nfor fd in range(1024):\n    try:\n        os.fstat(fd)\n        print(fd)\n"
             "    except OSError:\n        pass")
    reqs = write_requests(tmp_path / "reqs.json",
                          [submit(job("fds", sys.executable, ["-c", probe], stdout=str(out)))])
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        proc = subprocess.run([*SERVICE, "--file-path", str(reqs), "--wd", str(tmp_path / "wd"), "--nodes", "1"],
                              capture_output=True, text=True, timeout=60, pass_fds=(write_end,))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert find_aux(tmp_path / "wd") is not None
    assert sorted(out.read_text().split(), key=int) == ["0", "1", "2"]


def test_threads_model_gets_its_cores_on_one_node(service):
    """Reference 9 (`threads`: a single process on a single node): without numNodes a threads job's cores
    come from one node, never spread over several (such a task could not start, and failed); one that no
    node can hold fails at once, saying why; numNodes above 1 is refused at submit."""
    def threads_job(name, resources=None, **execution):
        j = job(name, "/bin/sh", ["-c", "echo $QCG_PM_NODELIST $QCG_PM_NPROCS $OMP_NUM_THREADS"], **execution)
        j["execution"]["model"] = "threads"
        if resources:
            j["resources"] = resources
        return j

    r = service([submit(threads_job("two", {"numCores": {"exact": 2}}, stdout="two.out"),
                        threads_job("one", stdout="one.out")),
                 submit(threads_job("big", {"numCores": {"exact": 3}})),
                 submit(threads_job("wide", {"numNodes": {"exact": 2}})),
                 # cores shared out by an iteration scheduler are left as they are (a review: forcing one node
                 # on these refused the whole submit with "4 cores per node requested")
                 submit(dict(threads_job("swept", {"numCores": {"min": 1, "scheduler": {"name": "maximum-iters"}}}),
                             iteration={"stop": 3}),
                        dict(threads_job("all3", {"numCores": {"min": 1, "scheduler": {"name": "maximum-iters"}}}),
                             iteration={"stop": 1}))], nodes="a:1,b:2")
    r.assert_no_traceback()
    rep = r.report()
    assert rep["two"]["state"] == "SUCCEED" and rep["one"]["state"] == "SUCCEED", rep
    assert (r.wd / "two.out").read_text().split() == ["b", "2", "2"]
    assert (r.wd / "one.out").read_text().split()[1:] == ["1", "1"]
    assert rep["big"]["state"] == "FAILED" and "1 node with 3 cores" in rep["big"]["messages"], rep["big"]
    assert "wide" not in rep
    assert rep["swept"]["state"] == "SUCCEED", rep["swept"]
    assert "all3" in rep            # its one iteration gets all 3 cores: it fails alone, the submit is accepted
    assert "model 'threads' runs on a single node" in r.stderr, r.stderr
