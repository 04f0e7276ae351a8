"""`--resume` after the service was killed (reference 13 "Resuming"; issue 3 "`--resume <wd or aux dir>`
finishes exactly the unfinished tasks — including iterations that finished out of order").

DESIGN principle 4: "`--resume` replays exactly the unfinished set ..., in flat and partitioned mode
alike": the tests run in both modes (`both_modes`, tests/conftest.py); in partitioned mode the kill takes
the governor, its partition managers and their tasks."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import psutil

import pytest

from tests.conftest import SERVICE, mode_args, run_service, script_job, submit

N = 40
NODES = "a:2,b:2"


def _states(aux: Path) -> list[dict]:
    path = aux / "track.states"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass          # a torn last line
    return out


def _counts(cnt: Path) -> dict[int, int]:
    return {i: (len((cnt / str(i)).read_text().splitlines()) if (cnt / str(i)).exists() else 0)
            for i in range(N)}


def _wait_for_files(proc: subprocess.Popen, *paths: Path, timeout: float = 30) -> None:
    """Until every path exists (the tasks that write them have started), the service still running."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline and proc.poll() is None, f"not written in time: {paths}"
        time.sleep(0.05)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the service, then every task it left behind (so nothing finishes after the snapshot)."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    for k in kids:
        try:
            os.killpg(os.getpgid(k.pid), signal.SIGKILL)
        except OSError:
            pass
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(kids, timeout=10)


def _sweep(cnt: Path) -> dict:
    # iterations finish out of order: it%3 == 0 at once, others later, and iteration 1 only after the kill
    # (without the long one, the journalled ends could be exactly 0..7)
    sc = f"sleep $(( ${{it}} == 1 ? 4 : 0 )).$(( (${{it}} % 3) * 3 )); echo done >> {cnt}/${{it}}"
    # `bash -c`, not a `script` (login shell): killing a login shell mid-profile can leave stale locks behind
    return submit({"name": "sweep", "execution": {"exec": "bash", "args": ["-c", sc]}, "iteration": {"stop": N}},
                  script_job("after", f"echo after >> {cnt}/after", dependencies={"after": ["sweep"]}))


def _start_and_kill(tmp_path: Path, mode: str) -> tuple[Path, Path, Path]:
    cnt = tmp_path / "cnt"
    cnt.mkdir()
    wd = tmp_path / "wd"
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([_sweep(cnt)]))
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", NODES, "--id", "r",
                             *mode_args(mode, NODES)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(tmp_path))
    aux = wd / ".qcgpjm-service-r"
    try:
        deadline = time.monotonic() + 20
        # wait until some iteration ends are journalled (the journal flushes in batches)
        while time.monotonic() < deadline:
            finished = [s for s in _states(aux) if s.get("it") is not None and s.get("state") == "SUCCEED"]
            if len(finished) >= 3:
                break
            assert proc.poll() is None, "the service ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("no iteration journalled in time")
    finally:
        _kill_tree(proc)
    return cnt, wd, aux


def _check_resumed(tmp_path: Path, cnt: Path, wd: Path, aux: Path, resume_arg: str, mode: str) -> None:
    journalled = {s["it"] for s in _states(aux) if s.get("it") is not None and s.get("state") == "SUCCEED"
                  and str(s.get("task", "")).startswith("sweep:")}
    before = _counts(cnt)
    assert 0 < len(journalled) < N, "the kill must come mid-run"
    assert all(before[i] == 1 for i in journalled)
    r = run_service(tmp_path, None, "--resume", resume_arg, wd=wd, nodes=NODES, timeout=60, mode=mode)
    r.check_mode()
    assert r.rc == 0, r.stderr
    after = _counts(cnt)
    # finished ones did not run again; every other one ran exactly once more
    for i in range(N):
        if i in journalled:
            assert after[i] == 1, f"iteration {i} finished before the kill but ran again"
        else:
            assert after[i] == before[i] + 1, f"iteration {i}: {before[i]} -> {after[i]} runs"
    assert (cnt / "after").read_text() == "after\n"
    rep = {e["name"]: e for e in (json.loads(x) for x in (aux / "jobs.report").read_text().splitlines() if x)}
    assert rep["sweep"]["state"] == "SUCCEED"
    assert rep["after"]["state"] == "SUCCEED"
    fs = json.loads((aux / "final_status.json").read_text())
    assert fs["JobStats"]["FinishedJobs"] == 2
    assert fs["IterationStats"]["FinishedIterations"] == N + 1


@pytest.mark.both_modes
def test_resume_after_sigkill_out_of_order(tmp_path, mode):
    """Reference 13.1-13.3 + issue 3: SIGKILL mid-run (iterations finishing out of order), then
    `--resume <aux dir>` runs exactly the unfinished iterations once, and the dependent job afterwards."""
    cnt, wd, aux = _start_and_kill(tmp_path, mode)
    journalled = sorted(s["it"] for s in _states(aux) if s.get("it") is not None and s.get("state") == "SUCCEED")
    # the case the original gets wrong: finished iterations are not a prefix
    assert journalled != list(range(len(journalled))), journalled
    _check_resumed(tmp_path, cnt, wd, aux, str(aux), mode)


@pytest.mark.both_modes
def test_resume_by_working_dir(tmp_path, mode):
    """Reference 13.2: --resume may name the working directory holding the aux dir."""
    cnt, wd, aux = _start_and_kill(tmp_path, mode)
    _check_resumed(tmp_path, cnt, wd, aux, str(wd), mode)


@pytest.mark.both_modes
def test_resume_of_finished_run_runs_nothing(tmp_path, mode):
    """Reference 13.3 "no problem to resume already resumed computations": a finished run resumed again
    runs nothing and exits 0."""
    cnt = tmp_path / "cnt"
    cnt.mkdir()
    r = run_service(tmp_path, [submit(script_job("x", f"echo x >> {cnt}/x", iteration={"stop": 3}))],
                    nodes=NODES, mode=mode)
    r.check_mode()
    assert r.rc == 0, r.stderr
    files = {p.name: p.read_bytes() for p in r.aux.iterdir() if p.is_file() and p.name != "service.lock"}
    r2 = run_service(tmp_path, None, "--resume", str(r.aux), wd=r.wd, timeout=30, nodes=NODES, mode=mode)
    r2.check_mode()
    assert r2.rc == 0, r2.stderr
    assert "nothing to resume" in r2.stderr
    assert (cnt / "x").read_text() == "x\nx\nx\n"
    # the run's files stay as the run left them (a service started only to end rewrote final_status.json,
    # and qcg-pm-report then saw a run whose last part ran nothing)
    assert {p.name: p.read_bytes() for p in r.aux.iterdir() if p.is_file() and p.name != "service.lock"} == files


def test_resume_without_wd_works_in_the_interrupted_runs_directory(tmp_path):
    """Reference 13.2 needs `--wd` repeated on resume; here `--resume` alone runs the unfinished tasks in
    the interrupted run's working directory, wherever the command is started."""
    cnt, wd, aux = _start_and_kill(tmp_path, "flat")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([*SERVICE, "--resume", str(aux), "--nodes", NODES], capture_output=True, text=True,
                          timeout=60, cwd=str(elsewhere))
    assert proc.returncode == 0, proc.stderr
    rep = [json.loads(x) for x in (aux / "jobs.report").read_text().splitlines() if x]
    ran = [e for e in rep if (e.get("runtime") or {}).get("wd")]
    assert ran and all(e["runtime"]["wd"] == str(wd) for e in ran), {e["name"]: e["runtime"]["wd"] for e in ran}
    assert list(elsewhere.iterdir()) == []
    assert (cnt / "after").read_text() == "after\n"



def test_resume_of_a_moved_run_works_where_the_run_is_now(tmp_path):
    """A run moved (or copied) with its aux dir inside, then resumed with `--resume` alone, runs the rest
    where it is now, and says so; it used to recreate the old working directory and run the tasks there."""
    cnt, wd, aux = _start_and_kill(tmp_path, "flat")
    moved = tmp_path / "moved"
    wd.rename(moved)
    proc = subprocess.run([*SERVICE, "--resume", str(moved / aux.name), "--nodes", NODES], capture_output=True,
                          text=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"moved from '{wd}'" in proc.stderr
    assert not wd.exists()
    rep = [json.loads(x) for x in (moved / aux.name / "jobs.report").read_text().splitlines() if x]
    ran = {e["runtime"]["wd"] for e in rep if (e.get("runtime") or {}).get("wd")}
    assert str(moved) in ran and str(wd) in ran, ran      # the first part ran before the move
    assert (cnt / "after").read_text() == "after\n"


@pytest.mark.both_modes
def test_a_resume_right_after_a_kill_starts_no_task_next_to_its_first_copy(tmp_path, mode):
    """Helper report: `--resume` at once after a `kill -9` started the interrupted task while its first copy
    (which ignores SIGTERM) still ran on the same cores, until the orphan guard's SIGKILL 3 s later. The
    run lock (agent/run_lock.py) makes the resumed launcher wait for that: the copies never overlap."""
    alive = tmp_path / "alive"
    script = f"trap '' TERM; for i in $(seq 60); do echo \"$$ $(date +%s.%N)\" >> {alive}; sleep 0.05; done"
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit({"name": "A", "execution": {"script": script},
                                        "resources": {"numCores": {"exact": 2}}})]))
    wd = tmp_path / "wd"
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", NODES, "--id", "k",
                             *mode_args(mode, NODES)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + 30
        while not (alive.exists() and alive.read_text().count("\n") >= 3):
            assert time.monotonic() < deadline and proc.poll() is None, "the task did not start"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)        # only the service: its tasks are left to the guards
        proc.wait(timeout=10)
    r = run_service(tmp_path, None, "--resume", str(wd / ".qcgpjm-service-k"), nodes=NODES, timeout=90, mode=mode)
    assert r.rc == 0, r.stderr
    runs: dict[str, list[float]] = {}
    for line in alive.read_text().splitlines():
        pid, when = line.split()
        runs.setdefault(pid, []).append(float(when))
    assert len(runs) == 2, runs.keys()
    first, second = sorted(runs.values())
    assert max(first) < min(second), f"the copies ran together for {max(first) - min(second):.2f} s"


def test_a_signal_while_the_service_waits_for_the_interrupted_tasks_stops_it_cleanly(tmp_path):
    """Review: the wait for a killed run's tasks (the run lock) blocked the loop: Ctrl-C did nothing and
    SIGTERM killed the service on the spot (no final status). The wait is the loop's now: it is said on
    stderr, and SIGINT stops the service as at any other time (exit 130, its files written)."""
    from qcg.pilotjob.agent.run_lock import RunLock

    wd = tmp_path / "wd"
    aux = wd / ".qcgpjm-service-w"
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit({"name": "a", "execution": {"exec": "/bin/true"}})]))
    interrupted = RunLock(str(aux / "tmp"), os.uname().nodename)     # as a killed launcher's guard holds it
    assert asyncio.run(interrupted.acquire(timeout=5))
    try:
        proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", NODES,
                                 "--id", "w"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        try:
            said = proc.stderr.readline()      # type: ignore[union-attr]
            assert "Waiting for the tasks of the interrupted run" in said, said
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            _kill_tree(proc)
    finally:
        interrupted.release()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err
    assert "JobStats" in json.loads((aux / "final_status.json").read_text())      # stopped before it read the file


def _gated_sweep(cnt: Path, gate: Path, n: int, opened: int) -> dict:
    """Iteration `it` ends once the number in `gate` (`opened` while there is no gate) exceeds it (at most 60 s)."""
    sc = (f"for i in $(seq 600); do [ $(cat {gate} 2>/dev/null || echo {opened}) -gt ${{it}} ] && break; "
          f"sleep 0.1; done; echo done >> {cnt}/${{it}}")
    return submit({"name": "gated", "execution": {"exec": "bash", "args": ["-c", sc]}, "iteration": {"stop": n}})


def _start_gated(tmp_path: Path, mode: str, n: int, opened: int) -> tuple[subprocess.Popen, Path, Path, Path]:
    cnt, gate, wd = tmp_path / "cnt", tmp_path / "gate", tmp_path / "wd"
    cnt.mkdir()
    reqs = tmp_path / "gated.json"
    reqs.write_text(json.dumps([_gated_sweep(cnt, gate, n, opened)]))
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", NODES, "--id", "g",
                             *mode_args(mode, NODES)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(tmp_path))
    return proc, cnt, gate, wd / ".qcgpjm-service-g"


def _wait_journalled(proc: subprocess.Popen, aux: Path, count: int) -> set[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = {s["it"] for s in _states(aux) if s.get("it") is not None and s.get("state") == "SUCCEED"}
        if len(done) >= count:
            return done
        assert proc.poll() is None, "the service ended before it could be stopped"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} iterations journalled in time")


def _counts_of(cnt: Path, n: int) -> dict[int, int]:
    return {i: (len((cnt / str(i)).read_text().splitlines()) if (cnt / str(i)).exists() else 0) for i in range(n)}


@pytest.mark.both_modes
def test_resume_after_sigterm_runs_the_interrupted_and_the_queued(tmp_path, mode):
    """Reference 13.1: "started, but not finished" iterations run again on resume. A SIGTERM stops the
    service by canceling what runs and what waits; none of those cancellations is final for `--resume`:
    all of them run there, the finished ones do not."""
    n, opened = 12, 4          # 4 cores: 4 iterations end, 4 wait at the gate, 4 are still queued
    proc, cnt, gate, aux = _start_gated(tmp_path, mode, n, opened)
    try:
        _wait_journalled(proc, aux, opened)
        time.sleep(0.3)        # the freed cores take the next (gated) iterations
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not [s for s in _states(aux) if s.get("state") == "CANCELED"], "an interruption was journalled as final"
    assert _counts_of(cnt, n) == {i: 1 if i < opened else 0 for i in range(n)}
    gate.write_text(str(n))
    r = run_service(tmp_path, None, "--resume", str(aux), nodes=NODES, timeout=60, mode=mode)
    r.check_mode()
    assert r.rc == 0, r.stderr
    assert _counts_of(cnt, n) == {i: 1 for i in range(n)}
    assert r.report()["gated"]["state"] == "SUCCEED"


@pytest.mark.parametrize("ignored", [False, True], ids=["default", "nohup"])
def test_hangup_stops_like_sigterm_unless_started_ignoring_it(tmp_path, ignored):
    """A SIGHUP (the terminal of an interactive run went away) stops the service as SIGTERM does: exit 129,
    the interruption not journalled as final, `--resume` runs the rest. Under `nohup` (SIGHUP ignored from
    the start) the service runs on."""
    n, opened = 8, 4
    cnt, gate, wd = tmp_path / "cnt", tmp_path / "gate", tmp_path / "wd"
    cnt.mkdir()
    reqs = tmp_path / "gated.json"
    reqs.write_text(json.dumps([_gated_sweep(cnt, gate, n, opened)]))
    before = signal.SIG_IGN if ignored else signal.SIG_DFL
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", NODES, "--id", "g"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(tmp_path),
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, before))
    aux = wd / ".qcgpjm-service-g"
    try:
        _wait_journalled(proc, aux, opened)
        proc.send_signal(signal.SIGHUP)
        if ignored:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            gate.write_text(str(n))
        _, err = proc.communicate(timeout=30)
    finally:
        _kill_tree(proc)
    if ignored:
        assert proc.returncode == 0, err
        assert _counts_of(cnt, n) == {i: 1 for i in range(n)}
        return
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "JobStats" in json.loads((aux / "final_status.json").read_text()), "no final status written"
    assert not [s for s in _states(aux) if s.get("state") == "CANCELED"], "an interruption was journalled as final"
    gate.write_text(str(n))
    r = run_service(tmp_path, None, "--resume", str(aux), nodes=NODES, timeout=60)
    assert r.rc == 0, r.stderr
    assert _counts_of(cnt, n) == {i: 1 for i in range(n)}


@pytest.mark.both_modes
def test_resume_of_a_resumed_and_killed_run(tmp_path, mode):
    """Reference 13.3 "no problem to resume already resumed computations": killed, resumed, killed again
    mid-way and resumed again, every iteration ends, none journalled as finished runs twice, and the
    journal holds the submission once."""
    n = 12
    proc, cnt, gate, aux = _start_gated(tmp_path, mode, n, 4)
    try:
        first = _wait_journalled(proc, aux, 4)
    finally:
        _kill_tree(proc)
    reqs_file = aux / "track.reqs"
    gate.write_text("6")                    # the first resume can end two more, then it is killed too
    proc = subprocess.Popen([*SERVICE, "--resume", str(aux), "--nodes", NODES, *mode_args(mode, NODES)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(tmp_path))
    try:
        second = _wait_journalled(proc, aux, 6)
    finally:
        _kill_tree(proc)
    assert first <= second and len(second) < n
    records = list(msgpack.Unpacker(io.BytesIO(reqs_file.read_bytes()), raw=False))
    assert sum(1 for r in records if "jobs" in r) == 1, "a resume journalled the replayed submission again"
    before = _counts_of(cnt, n)
    gate.write_text(str(n))
    r = run_service(tmp_path, None, "--resume", str(aux), nodes=NODES, timeout=60, mode=mode)
    r.check_mode()
    assert r.rc == 0, r.stderr
    r.assert_no_traceback()
    after = _counts_of(cnt, n)
    for i in range(n):
        assert after[i] == (1 if i in second else before[i] + 1), f"iteration {i}: {before[i]} -> {after[i]}"
    assert r.report()["gated"]["state"] == "SUCCEED"


@pytest.mark.both_modes
def test_killed_service_leaves_no_task_running(tmp_path, mode):
    """DESIGN principle 4: after a `kill -9` of the service (as the OOM killer ends it) none of its tasks
    runs on -- else a `--resume` would run each a second time next to the first. Tasks have process groups
    of their own, so only the launchers' orphan guard can end them: SIGTERM, then SIGKILL for a task that
    ignores SIGTERM. In partitioned mode only the governor is killed; its partition managers, left without
    it, end their tasks too."""
    pids = tmp_path / "pids"
    pids.mkdir()
    jobs = [{"name": "polite", "execution": {"exec": "/bin/sh", "args": ["-c", f"echo $$ > {pids}/polite; exec sleep 120"]}},
            {"name": "stubborn",
             "execution": {"exec": "/bin/sh", "args": ["-c", f"trap '' TERM; echo $$ > {pids}/stubborn; sleep 120"]}}]
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit(*jobs)]))
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(tmp_path / "wd"), "--nodes", NODES,
                             *mode_args(mode, NODES)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path))
    tasks: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        while len([p for p in pids.iterdir() if p.read_text().strip()]) < 2:
            assert time.monotonic() < deadline, "the tasks did not start"
            assert proc.poll() is None, "the service ended before it could be killed"
            time.sleep(0.05)
        tasks = [psutil.Process(int(p.read_text())) for p in pids.iterdir()]
        tasks += [c for t in tasks for c in t.children(recursive=True)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(tasks, timeout=30)
        assert alive == [], f"tasks left running by the killed service: {[p.cmdline() for p in alive]}"
    finally:
        for t in tasks:
            try:
                t.kill()
            except psutil.Error:
                pass
        _kill_tree(proc)


def _start_net_run(tmp_path: Path, program: list[str], jobs: list[dict], run_id: str,
                   mode: str, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    """`program` (the service's command line) with `--net`, `extra` and a request file submitting `jobs`;
    returns the process, its working dir and its aux dir (id `run_id`)."""
    wd = tmp_path / "wd"
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit(*jobs)]))
    proc = subprocess.Popen([*program, "--file-path", str(reqs), "--net", "--wd", str(wd), "--nodes", NODES,
                             "--id", run_id, *extra, *mode_args(mode, NODES)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path))
    return proc, wd, wd / f".qcgpjm-service-{run_id}"


def _client_of(proc: subprocess.Popen, aux: Path, tmp_path: Path, monkeypatch, deadline: float):
    """A `Manager` of the `--net` service `proc` (aux dir `aux`), once it has published its address."""
    from qcg.pilotjob.api import protocol
    from qcg.pilotjob.api.manager import Manager

    from tests.conftest import client_cfg

    while not (aux / "address").exists() or not (aux / "address").read_text().strip():
        assert time.monotonic() < deadline, "the service did not publish its address"
        assert proc.poll() is None, "the service ended before it was reached"
        time.sleep(0.05)
    monkeypatch.setenv(protocol.KEYS_ENV, str(aux))
    return Manager((aux / "address").read_text().strip(), client_cfg(tmp_path))


@pytest.mark.both_modes
def test_task_reported_ended_never_runs_again_after_sigkill(tmp_path, mode, monkeypatch):
    """Issue 3 "`--resume` finishes exactly the unfinished tasks": a task a `jobStatus` answer called
    SUCCEED is in the journal already, so a `kill -9` right after that answer does not make `--resume` run it
    a second time (the states of the tasks that end are written at the end of each loop turn, before a later
    request is answered; with a journal flushed once a second, the last second's tasks ran twice)."""
    _answered_ends_never_run_again(tmp_path, mode, monkeypatch)


def test_without_publisher_an_answered_end_never_runs_again(tmp_path, monkeypatch):
    """As above with `--disable-pub`: with no event to hold back, final states are written in batches
    (finals_writer.UNPUBLISHED_FINALS_DELAY), not at the end of every loop turn, yet each is written
    before an answer tells of it."""
    _answered_ends_never_run_again(tmp_path, "flat", monkeypatch, "--disable-pub")


def _answered_ends_never_run_again(tmp_path: Path, mode: str, monkeypatch, *extra: str) -> None:
    cnt = tmp_path / "cnt"
    cnt.mkdir()
    names = [f"j{i}" for i in range(200)]
    jobs = [{"name": n, "execution": {"exec": "/bin/sh", "args": ["-c", f"echo ran >> {cnt}/{n}; sleep 0.05"]}}
            for n in names]
    proc, wd, aux = _start_net_run(tmp_path, SERVICE, jobs, "k", mode, *extra)
    m = None
    try:
        deadline = time.monotonic() + 30
        m = _client_of(proc, aux, tmp_path, monkeypatch, deadline)
        while True:
            assert time.monotonic() < deadline, "too few tasks ended in time"
            states = {n: v["data"]["status"] for n, v in m.status(names)["jobs"].items() if "data" in v}
            reported = {n for n, s in states.items() if s == "SUCCEED"}
            if len(reported) >= 20:
                break
            time.sleep(0.05)
        _kill_tree(proc)         # at once: tasks ended a moment ago are among `reported`
    finally:
        if m is not None:
            m.close()
        _kill_tree(proc)
    assert len(reported) < len(names), "the kill must come mid-run"
    r = run_service(tmp_path, None, "--resume", str(aux), wd=wd, nodes=NODES, timeout=60, mode=mode)
    r.check_mode()
    assert r.rc == 0, r.stderr
    runs = {n: len((cnt / n).read_text().splitlines()) if (cnt / n).exists() else 0 for n in names}
    twice = sorted(n for n in reported if runs[n] != 1)
    assert not twice, f"reported SUCCEED before the kill, yet ran again on resume: {twice}"
    assert all(runs[n] >= 1 for n in names), {n: c for n, c in runs.items() if c < 1}
    # one report for the whole run: the tasks the resume skipped have their lines from before the kill
    reported_lines = {json.loads(x)["name"] for x in (aux / "jobs.report").read_text().splitlines() if x}
    assert reported_lines == set(names), sorted(set(names) - reported_lines)


_ORDER_PROBE = r'''
import json, sys
from qcg.pilotjob.governor import journal as J, publisher as P, zmq_interface as Z

FINAL = ("SUCCEED", "FAILED", "CANCELED", "OMITTED")
out = open(sys.argv[1], "a")
journals = []
init = J.Journal.__init__


def journal_init(self, *a, **k):
    init(self, *a, **k)
    journals.append(self)


def buffered():
    return {json.loads(line)["task"] for j in journals for line in j._buffer}


def report(kind, names):
    if names:
        out.write(json.dumps([kind, sorted(names)]) + "\n")
        out.flush()


start = Z.ZmqInterface.start


def probed_start(self, loop, handle, replied=None):
    def probed(msg):
        resp = handle(msg)
        if isinstance(msg, dict) and msg.get("request") == "jobStatus":
            ended = {n for n, e in (resp.get("data") or {}).get("jobs", {}).items()
                     if (e.get("data") or {}).get("status") in FINAL}
            report("answer", ended & buffered())
        return resp
    return start(self, loop, probed, replied)


send_now = P.EventPublisher._send_now
unpack = __import__("msgpack").unpackb


def probed_send(self, topic, payload):
    ev = unpack(payload)
    if ev.get("state") in FINAL:
        task = ev["job"] if ev.get("it") is None else f"{ev['job']}:{ev['it']}"
        report("event", {task} & buffered())
    send_now(self, topic, payload)


J.Journal.__init__ = journal_init
Z.ZmqInterface.start = probed_start
P.EventPublisher._send_now = probed_send
sys.argv = ["qcg-gov"] + sys.argv[2:]
from qcg.pilotjob.governor.cli import program
program()
'''


@pytest.mark.both_modes
def test_no_client_hears_of_an_end_before_it_is_on_disk(tmp_path, mode, monkeypatch):
    """What `--resume` skips is exactly what any client was told had ended: every jobStatus answer and every
    published event with a final state leaves only after that state is in `track.states` (a review found
    answers and events given from the journal's buffer, within one loop turn, in both modes). A probe in the
    service checks each answer and event as it leaves, while a client polls 1 500 short tasks."""
    probe = tmp_path / "probe.py"
    probe.write_text(_ORDER_PROBE)
    found = tmp_path / "early.jsonl"
    found.write_text("")
    names = [f"j{i}" for i in range(1500)]
    proc, _, aux = _start_net_run(tmp_path, [sys.executable, str(probe), str(found)],
                                  [{"name": n, "execution": {"exec": "/bin/true"}} for n in names], "o", mode)
    m = None
    try:
        deadline = time.monotonic() + 60
        m = _client_of(proc, aux, tmp_path, monkeypatch, deadline)
        answers = 0
        while True:
            assert time.monotonic() < deadline, "the tasks did not end in time"
            states = m.status(names)["jobs"]
            answers += 1
            if all((v.get("data") or {}).get("status") == "SUCCEED" for v in states.values()):
                break
        m.finish()
        m = None
        proc.wait(timeout=30)
    finally:
        if m is not None:
            m.close()
        _kill_tree(proc)
    assert answers > 5, "too few answers during the run to check anything"
    early = [json.loads(line) for line in found.read_text().splitlines()]
    assert not early, f"told of ends not yet in track.states: {early[:5]}"


def test_full_disk_holds_back_events_and_the_service_still_stops(tmp_path, monkeypatch):
    """Bad conditions, not bad input: when `jobs.report` and `track.states` cannot be written (a full disk, a
    quota; here `ulimit -f`), the service goes on answering but announces no end that is not on disk, and
    SIGTERM still stops it with a clear message (a review found events leaking past the failed write,
    dropped replies, and SIGTERM ignored)."""
    import resource

    from qcg.pilotjob.api import errors
    from qcg.pilotjob.api.job import Jobs

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))

    wd = tmp_path / "wd"
    proc = subprocess.Popen([*SERVICE, "--net", "--wd", str(wd), "--nodes", NODES, "--id", "f"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(tmp_path),
                            preexec_fn=small_files)
    aux = wd / ".qcgpjm-service-f"
    heard: list[str] = []
    m = None
    try:
        m = _client_of(proc, aux, tmp_path, monkeypatch, time.monotonic() + 60)
        jobs = Jobs()
        for i in range(3000):
            jobs.add(name=f"j{i}", exec="/bin/true")
        m.submit(jobs)
        with pytest.raises(errors.TimeoutElapsed):
            while len(heard) < 3000:
                heard.append(m.wait4_any_job_finish(3)[0])
        assert m.status(["j0"])["jobs"]["j0"]["data"]["status"] == "SUCCEED"    # still answering
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if m is not None:
            m.close()
        _kill_tree(proc)
    assert "could not be written" in proc.stderr.read().decode()
    assert 0 < len(heard) < 3000, "the file limit must stop the writes mid-run"
    on_disk = {s["task"] for s in _states(aux)}
    reported = set()
    for line in (aux / "jobs.report").read_text().splitlines():
        try:
            reported.add(json.loads(line)["name"])
        except ValueError:
            pass          # the line cut by the limit
    assert set(heard) <= on_disk, sorted(set(heard) - on_disk)[:5]
    assert on_disk <= reported, sorted(on_disk - reported)[:5]


def test_file_run_writes_final_states_while_it_runs(tmp_path):
    """Reference 13.1 (the journal behind `--resume`) + issue 3 "written in batches": with `--file` alone
    (no event publisher) final states are batched, yet a task's end reaches `jobs.report` and then
    `track.states` while the run goes on, not only when it stops, so a `kill -9` later does not run it again."""
    gate = tmp_path / "gate"
    wait = f"for i in $(seq 600); do [ -e {gate} ] && exit 0; sleep 0.05; done; exit 1"
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit({"name": "quick", "execution": {"exec": "/bin/true"}},
                                       {"name": "slow", "execution": {"exec": "/bin/sh", "args": ["-c", wait]}})]))
    wd = tmp_path / "wd"
    proc = subprocess.Popen([*SERVICE, "--file", "--file-path", str(reqs), "--wd", str(wd), "--nodes", "2",
                             "--id", "b"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(tmp_path))
    aux = wd / ".qcgpjm-service-b"
    try:
        deadline = time.monotonic() + 20
        while "quick" not in {s["task"] for s in _states(aux)}:
            assert time.monotonic() < deadline, "the quick task's end was not written during the run"
            assert proc.poll() is None, "the run ended before the slow task was let go"
            time.sleep(0.02)
        assert proc.poll() is None
        report = [json.loads(x)["name"] for x in (aux / "jobs.report").read_text().splitlines() if x]
        assert report == ["quick"], report
        gate.write_text("")
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        _kill_tree(proc)
    assert {s["task"]: s["state"] for s in _states(aux)} == {"quick": "SUCCEED", "slow": "SUCCEED"}


@pytest.mark.both_modes
def test_resume_of_a_run_still_alive_is_refused(tmp_path, mode):
    """Issue 3 "`--resume` finishes exactly the unfinished tasks": a second service in the aux dir of a live
    run (a resume too early, an `--id` used twice) is refused, exit 1, before it runs anything; once the
    run is gone (even by kill -9) the resume goes ahead."""
    cnt = tmp_path / "cnt"
    cnt.mkdir()
    wd = tmp_path / "wd"
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit(script_job("x", f"echo x >> {cnt}/${{it}}; [ -e {cnt}/go ] || sleep 30",
                                                  iteration={"stop": 2}))]))
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", NODES, "--id", "live",
                             *mode_args(mode, NODES)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    aux = wd / ".qcgpjm-service-live"
    try:
        _wait_for_files(proc, cnt / "0", cnt / "1")
        r = run_service(tmp_path, None, "--resume", str(aux), wd=wd, nodes=NODES, timeout=30, mode=mode)
        assert r.rc == 1, r.stderr
        assert f"in use by a running service (pid {proc.pid})" in r.stderr, r.stderr
        r.assert_no_traceback()
        r = run_service(tmp_path, [submit(script_job("y", "true"))], "--id", "live", wd=wd, nodes=NODES,
                        timeout=30, mode=mode)
        assert r.rc == 1 and "in use by a running service" in r.stderr, r.stderr
        assert proc.poll() is None
    finally:
        _kill_tree(proc)
    assert [(cnt / str(i)).read_text() for i in range(2)] == ["x\n", "x\n"], "a task ran twice"
    (cnt / "go").touch()
    r = run_service(tmp_path, None, "--resume", str(aux), wd=wd, nodes=NODES, timeout=60, mode=mode)
    r.check_mode()
    assert r.rc == 0, r.stderr
    assert [(cnt / str(i)).read_text() for i in range(2)] == ["x\n" * 2] * 2      # killed mid-run: run again


def _killed_mid_job(tmp_path: Path, nodes: str, mode: str = "flat") -> tuple[Path, Path, Path]:
    """A run of `w` (2 cores) and `x` after it, killed while `w` runs; `w` waits for `cnt/go`."""
    cnt = tmp_path / "cnt"
    cnt.mkdir()
    wd = tmp_path / "wd"
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit(
        script_job("w", f"echo w >> {cnt}/w; [ -e {cnt}/go ] || sleep 30", resources={"numCores": {"exact": 2}}),
        script_job("x", f"echo x >> {cnt}/x", dependencies={"after": ["w"]}))]))
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", nodes, "--id", "k",
                             *mode_args(mode, nodes)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_files(proc, cnt / "w")
    finally:
        _kill_tree(proc)
    return cnt, wd, wd / ".qcgpjm-service-k"


def test_resume_with_too_few_resources_is_refused(tmp_path):
    """Reference 13 + issue 3 "finishes exactly the unfinished": a resume whose resources are too small for
    an unended job is refused (exit 1, the job named), before anything runs or any file of the run changes;
    the job is not ended FAILED for good, so a resume with enough resources still runs it."""
    cnt, wd, aux = _killed_mid_job(tmp_path, "2")
    files = {p.name: p.read_bytes() for p in aux.iterdir() if p.is_file() and p.name != "service.lock"}
    r = run_service(tmp_path, None, "--resume", str(aux), wd=wd, nodes="1", timeout=60)
    r.assert_no_traceback()
    assert r.rc == 1, r.stderr
    assert "job 'w' cannot run with this run's resources" in r.stderr and "--resume refused" in r.stderr
    after = {p.name: p.read_bytes() for p in aux.iterdir() if p.is_file() and p.name not in ("service.lock",
                                                                                              "service.log")}
    assert after == {k: v for k, v in files.items() if k != "service.log"}
    (cnt / "go").touch()
    r = run_service(tmp_path, None, "--resume", str(aux), wd=wd, nodes="2", timeout=60)
    assert r.rc == 0, r.stderr
    assert r.report()["w"]["state"] == "SUCCEED" and r.report()["x"]["state"] == "SUCCEED"
    assert (cnt / "w").read_text() == "w\nw\n" and (cnt / "x").read_text() == "x\n"


@pytest.mark.parametrize("damage", ["garbage", "original"])
def test_resume_of_a_damaged_or_foreign_journal_is_refused(tmp_path, damage):
    """README "Resume" + exit codes: a journal damaged before its end, or the original 0.14.2's (JSON lines),
    refuses the resume with one message and exit 1; nothing runs and no file of the run changes."""
    cnt, wd, aux = _killed_mid_job(tmp_path, "2")
    reqs = aux / "track.reqs"
    if damage == "garbage":
        reqs.write_bytes(reqs.read_bytes()[:5] + b"\xc1" + reqs.read_bytes()[6:])
    else:
        reqs.write_text('{"request": "submit", "jobs": [{"name": "w", "execution": {"exec": "true"}}]}\n')
    files = {p.name: p.read_bytes() for p in aux.iterdir() if p.is_file() and p.name != "service.lock"}
    r = run_service(tmp_path, None, "--resume", str(aux), wd=wd, nodes="2", timeout=60)
    r.assert_no_traceback()
    assert r.rc == 1, r.stderr
    assert r.stderr.startswith("Error: --resume: ") and str(reqs) in r.stderr and len(r.stderr.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in aux.iterdir() if p.is_file() and p.name != "service.lock"} == files
    assert (cnt / "w").read_text() == "w\n"


def test_resume_takes_over_the_interrupted_runs_place_and_report(tmp_path):
    """Reference 13.2 (`--resume` continues the run): an aux dir placed with `--aux-dir` is resumed by its
    path; the resumed run keeps the interrupted one's working directory, `--nodes`, `--report-format`,
    `--report-file` and id unless told otherwise, so its report is one file in one format."""
    cnt = tmp_path / "cnt"
    cnt.mkdir()
    wd, aux = tmp_path / "wd", tmp_path / "elsewhere" / "myaux"
    reqs = tmp_path / "reqs.json"
    # 2 cores: on the run's --nodes a:1,b:1 that is 2 nodes; on this machine's cores (the default) it is 1
    reqs.write_text(json.dumps([submit(
        script_job("w", f"pwd > {cnt}/pwd; echo $QCG_PM_NNODES > {cnt}/nnodes; [ -e {cnt}/go ] || sleep 30",
                   resources={"numCores": {"exact": 2}}))]))
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", "a:1,b:1",
                             "--aux-dir", str(aux), "--report-format", "text", "--report-file", "my.rep"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_files(proc, cnt / "pwd")
    finally:
        _kill_tree(proc)
    (cnt / "pwd").unlink()
    (cnt / "go").touch()
    r = subprocess.run([*SERVICE, "--resume", str(aux)], capture_output=True, text=True, timeout=60,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (cnt / "pwd").read_text().strip() == str(wd)
    assert (cnt / "nnodes").read_text().strip() == "2"
    assert sorted(p.name for p in aux.iterdir() if "rep" in p.name) == ["my.rep"]
    assert "w (SUCCEED)" in (aux / "my.rep").read_text() and "{" not in (aux / "my.rep").read_text()
    log = (aux / "service.log").read_text().splitlines()
    ids = [line.split(" id=")[1].split()[0] for line in log if "event='service starting'" in line]
    assert len(ids) == 2 and ids[0] == ids[1], ids
    # told otherwise, the resume uses what it is told (here: a new job, reported as JSON)
    more = tmp_path / "more.json"
    more.write_text(json.dumps([submit(script_job("z", "true"))]))
    r = subprocess.run([*SERVICE, "--resume", str(aux), "--report-format", "json", "--file-path", str(more)],
                       capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads((aux / "my.rep").read_text().splitlines()[-1])["name"] == "z"
