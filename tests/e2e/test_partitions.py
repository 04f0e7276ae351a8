"""The governor with partition managers, end to end on this machine (issue 6; no Slurm).

`--nodes ... --slurm-partition-nodes N` makes the governor start one local
partition manager process per group of N nodes; the managers register over
the governor's CURVE ROUTER (DEALER, the run's client keys) and run the
tasks the governor dispatches to them. The cases every mode shares run in
both modes through the `both_modes` marker (tests/conftest.py); this file
holds what only partitioned mode has: the partition protocol's security,
tasks that fit no single partition, the Manager API's view of the
partitions, a lost partition's tasks, load, and regression tests of
bugs found while writing these tests.

Every wait has a timeout; nothing asserts on durations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from qcg.pilotjob.api import protocol
from qcg.pilotjob.api.job import Jobs
from qcg.pilotjob.partition.local_nodes import local_resources
from qcg.pilotjob.partition.slurm_resources import resources_to_dict
from tests.conftest import SERVICE, client_cfg, job, local_manager, submit

WAIT = 60            # seconds any single wait may take before the test fails
SILENCE = 2.0        # how long a refused peer is listened to (it must get nothing at all)


@pytest.fixture
def gov(tmp_path):
    """A governor with two partition managers (one node of 2 cores each), through the Manager API."""
    wd = tmp_path / "wd"
    wd.mkdir()
    yield from local_manager(["--nodes", "a:2,b:2", "--slurm-partition-nodes", "1", "--wd", str(wd)],
                             client_cfg(tmp_path))


def manager_processes(service_pid: int) -> dict[str, psutil.Process]:
    """The partition manager processes of a governor: `--id` -> process."""
    found = {}
    for child in psutil.Process(service_pid).children(recursive=True):
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        if "--parent" in argv and "--id" in argv:
            found[argv[argv.index("--id") + 1]] = child
    return found


def register_message(member_id: str) -> dict[str, Any]:
    """A well-formed `register` of a partition manager owning one 2-core node (governor/partition_server.py)."""
    res = local_resources(f"{member_id}-node:2")
    return {"type": "register", "id": member_id, "tags": [], "resources": resources_to_dict(res, rtype="LOCAL"),
            "totals": [2, 1, 2], "credit": 4, "info": res.info(), "host": "intruder", "pid": 1}


def dealer(ctx: zmq.Context, address: str, aux: Path, curve: str | None) -> zmq.Socket:
    """A DEALER to the governor: curve "run" = the run's client keys, "wrong" = a foreign key pair, None = plain."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndtimeo = 500
    keys = aux / protocol.KEYS_DIR
    if curve is not None:
        sock.curve_serverkey = (keys / protocol.SERVER_PUBLIC).read_bytes()
        if curve == "run":
            sock.curve_publickey = (keys / protocol.CLIENT_PUBLIC).read_bytes()
            sock.curve_secretkey = (keys / protocol.CLIENT_SECRET).read_bytes()
        else:
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.connect(address)
    return sock


def send(sock: zmq.Socket, message: dict[str, Any]) -> None:
    try:
        sock.send(protocol.encode(message))
    except zmq.Again:         # a refused peer never completes its handshake: nowhere to queue the message
        pass


def receive(sock: zmq.Socket, timeout: float) -> dict[str, Any] | None:
    if not sock.poll(int(timeout * 1000)):
        return None
    message, _ = protocol.decode(sock.recv())
    return message


# --------------------------------------------------------------------------- security
@pytest.mark.parametrize("curve", [None, "wrong"])
def test_register_without_run_keys_is_ignored(gov, tmp_path, curve):
    """DESIGN principle 5 ("Every ZMQ channel uses CURVE ...; a client without the key is refused") for the
    partition protocol: a DEALER without the run's keys (plain, or a foreign key pair) that sends a
    well-formed `register` to the governor's address gets nothing back and does not become a partition;
    the tasks keep running on the real partitions. Control: the same message with the run's keys is
    accepted, so the refusal is the keys'."""
    aux = Path(gov.aux_dir)
    ctx = zmq.Context()
    try:
        intruder = dealer(ctx, gov.address, aux, curve)
        send(intruder, register_message("intruder"))
        assert receive(intruder, SILENCE) is None
        send(intruder, {"type": "hb", "info": {}})
        assert receive(intruder, SILENCE) is None

        names = [f"t{i}" for i in range(4)]
        jobs = Jobs()
        for name in names:
            jobs.add(name=name, exec="/bin/true")
        gov.submit(jobs)
        assert gov.wait4(names, timeout=WAIT) == dict.fromkeys(names, "SUCCEED")
        info = gov.info(names)["jobs"]
        assert {info[n]["data"]["runtime"]["partition"] for n in names} == {"part-0", "part-1"}
        status = gov.system_status()
        assert sorted(p["id"] for p in status["Partitions"]) == ["part-0", "part-1"]
        assert gov.resources()["total_nodes"] == 2
        log = (aux / "service.log").read_text()
        assert "intruder" not in log
        assert log.count("event='partition joined'") == 2

        # control: with the run's keys the same message registers (then the member leaves again)
        member = dealer(ctx, gov.address, aux, "run")
        send(member, register_message("control"))
        reply = receive(member, WAIT)
        assert reply is not None and reply["type"] == "registered" and reply["id"] == "control", reply
        send(member, {"type": "leave"})
        deadline = time.monotonic() + WAIT
        while (reply := receive(member, 1.0)) is None or reply["type"] != "exit":
            assert time.monotonic() < deadline, "no `exit` after `leave`"
    finally:
        ctx.destroy(linger=0)          # closes every socket: an assertion above never leaves term() waiting


# ------------------------------------------------------------- fits no partition
def test_task_fitting_no_partition_fails_at_submit(service):
    """Reference 7.2 ("minimal resource requirements greater than total available resources": the job is
    FAILED) applied per partition: a task runs inside one partition, so numNodes exact 2 with partitions of
    one node each FAILS at once, with one line naming the job and the field, and a non-zero exit (issue 3,
    bad input); the rest runs. (Flat mode on the same nodes runs it: test_same_job_runs_flat.)"""
    reqs = [submit(job("wide2", resources={"numNodes": {"exact": 2}})), submit(job("fine"))]
    r = service(reqs, nodes="a:1,b:1", mode="partitioned")
    r.assert_no_traceback()
    assert r.rc == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "wide2" in lines[0] and "resources" in lines[0] and "partition" in lines[0], lines[0]
    rep = r.report()
    assert rep["wide2"]["state"] == "FAILED" and "fits no partition" in rep["wide2"]["messages"]
    assert rep["fine"]["state"] == "SUCCEED" and rep["fine"]["runtime"]["partition"] in ("part-0", "part-1")


def test_fits_no_partition_counts_the_managers_reserved_cores(service):
    """Reference 6 `--system-core` + 7.2, partitioned: every partition manager keeps a core of its own, and
    the governor's size check knows it (the manager tells it in `register`). A task that needs the kept
    core FAILS at submit, named on stderr (exit 2); it used to be accepted and FAILED inside the partition,
    with exit 0 and nothing said."""
    reqs = [submit(job("two", resources={"numCores": {"exact": 2}}), job("one"))]
    r = service(reqs, "--system-core", nodes="a:2,b:2", mode="partitioned")
    r.assert_no_traceback()
    assert r.rc == 2, r.stderr
    assert "job 'two' FAILED" in r.stderr and "1 reserved for the system" in r.stderr, r.stderr
    rep = r.report()
    assert rep["two"]["state"] == "FAILED" and "fits no partition" in rep["two"]["messages"]
    assert rep["one"]["state"] == "SUCCEED"


def test_same_job_runs_flat(service):
    """The counterpart of the previous test: flat mode on the same nodes runs the 2-node task."""
    r = service([submit(job("wide2", resources={"numNodes": {"exact": 2}}))], nodes="a:1,b:1")
    assert r.rc == 0, r.stderr
    assert r.report()["wide2"]["runtime"]["allocation"] == "a[0],b[0]"


def test_task_fitting_no_partition_fails_through_api(gov):
    """The same through the Manager API: `submit` accepts it (reference 7.2, 10.3.3), its status is FAILED
    with the reason in its messages, and the connection keeps working."""
    assert gov.submit(Jobs().add(name="toowide", exec="/bin/true", numCores={"exact": 3})) == ["toowide"]
    assert gov.status("toowide")["jobs"]["toowide"]["data"]["status"] == "FAILED"
    assert "fits no partition" in gov.info("toowide")["jobs"]["toowide"]["data"]["messages"]
    gov.submit(Jobs().add(name="ok", exec="/bin/true", numCores={"exact": 2}))
    assert gov.wait4("ok", timeout=WAIT) == {"ok": "SUCCEED"}


# ------------------------------------------------------------ Manager API view
def test_manager_api_through_governor(gov):
    """Reference 10.3 requests through the governor via the Manager API: resourcesInfo (10.3.8) is the sum
    of the partitions; jobInfo (10.3.5) runtime names the partition; removeJob (10.3.7) and listJobs
    (10.3.2) see the governor's registry; status shows the partitions."""
    assert gov.resources() == {"total_nodes": 2, "total_cores": 4, "used_cores": 0, "free_cores": 4}
    status = gov.system_status()
    parts = {p["id"]: p for p in status["Partitions"]}
    assert sorted(parts) == ["part-0", "part-1"]
    assert all(p["total_cores"] == 2 and p["total_nodes"] == 1 for p in parts.values())
    assert status["LostPartitions"] == []
    assert status["Resources"]["TotalCores"] == 4 and status["Resources"]["TotalNodes"] == 2

    names = gov.submit(Jobs().add(name="j1", exec="/bin/true").add(name="j2", exec="/bin/true")
                       .add(name="j3", exec="/bin/false").add(name="it", exec="/bin/true", iteration=4))
    assert gov.wait4(names, timeout=WAIT) == {"j1": "SUCCEED", "j2": "SUCCEED", "j3": "FAILED", "it": "SUCCEED"}
    info = gov.info(names, withChilds=True)["jobs"]
    used = set()
    for name in ("j1", "j2", "j3"):
        runtime = info[name]["data"]["runtime"]
        assert runtime["partition"] in parts, runtime
        node = runtime["allocation"].split("[")[0]
        assert node == {"part-0": "a", "part-1": "b"}[runtime["partition"]], runtime
        used.add(runtime["partition"])
    for child in info["it"]["data"]["childs"]:
        assert child["runtime"]["partition"] in parts, child
        used.add(child["runtime"]["partition"])
    assert used == set(parts)                 # round-robin: both partitions got work

    listed = gov.list()
    assert {n: e["status"] for n, e in listed.items()} == {"j1": "SUCCEED", "j2": "SUCCEED", "j3": "FAILED",
                                                           "it": "SUCCEED"}
    gov.remove(["j1", "j3"])
    assert sorted(gov.list()) == ["it", "j2"]
    assert gov.status("j1")["jobs"]["j1"]["status"] != 0
    # the same name again: the new job runs (and is reported), not the removed one
    gov.submit(Jobs().add(name="j1", exec="/bin/false"))
    assert gov.wait4("j1", timeout=WAIT) == {"j1": "FAILED"}
    assert gov.resources() == {"total_nodes": 2, "total_cores": 4, "used_cores": 0, "free_cores": 4}


def test_cancel_reaches_the_partition(gov, tmp_path):
    """Reference 10.3.6 cancelJob of a task running in a partition manager: the process ends, the job is
    CANCELED, its dependant OMITTED; a queued iteration is canceled too."""
    pidfile = tmp_path / "pid"
    gov.submit(Jobs().add(name="long", exec="/bin/sh", args=["-c", f"echo $$ > {pidfile}; exec sleep 60"])
               .add(name="after", exec="/bin/true", after="long"))
    deadline = time.monotonic() + WAIT
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.05)
    task = psutil.Process(int(pidfile.read_text()))
    gov.cancel("long")
    assert gov.wait4(["long", "after"], timeout=WAIT) == {"long": "CANCELED", "after": "OMITTED"}
    gone, alive = psutil.wait_procs([task], timeout=WAIT)
    assert alive == [], "the canceled task's process is still running"


# ------------------------------------------------------------------- lost partition
def test_killed_partition_manager_tasks_run_elsewhere(gov, tmp_path):
    """DESIGN principle 4 ("Lost ... partitions are detected ... and their tasks re-run or failed with a clear
    reason -- never a hang"): `kill -9` of one partition manager while its task runs; the task is dispatched
    again to the other partition and succeeds there; the lost partition is reported."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = f"echo $QCG_PM_NODELIST >> {marks}/${{it}}; sleep 2"
    # each iteration needs a whole node, so while both run one is on a (part-0) and one on b (part-1); with one
    # core each both may land on b, which leaves nothing for the kill to move
    gov.submit(Jobs().add(name="s", exec="/bin/bash", args=["-c", script], iteration=2, numCores=2))
    deadline = time.monotonic() + WAIT
    while len(list(marks.iterdir())) < 2:
        assert time.monotonic() < deadline, "the iterations did not start"
        time.sleep(0.05)
    victims = manager_processes(gov.qcgpm_process.pid)
    assert sorted(victims) == ["part-0", "part-1"]
    victims["part-0"].send_signal(signal.SIGKILL)
    assert gov.wait4("s", timeout=WAIT) == {"s": "SUCCEED"}
    runs = {i: (marks / str(i)).read_text().split() for i in range(2)}
    # the iteration that ran on node a (part-0) ran again on b; the other ran once on b
    assert sorted(runs.values()) == [["a", "b"], ["b"]], runs
    status = gov.system_status()
    assert status["LostPartitions"] == ["part-0"]
    assert [p["id"] for p in status["Partitions"]] == ["part-1"]
    assert gov.resources()["total_nodes"] == 1
    info = gov.info("s", withChilds=True)["jobs"]["s"]["data"]
    moved = [c for c in info["childs"] if sorted(runs[c["iteration"]]) == ["a", "b"]]
    assert len(moved) == 1 and moved[0]["runtime"]["partition"] == "part-1"


def test_second_sigterm_stops_a_manager_at_once_and_its_tasks_run_elsewhere(gov, tmp_path):
    """README "Attaching": the first SIGTERM makes a manager leave once its tasks end, a second stops it at
    once. Issue 6 "Faults": its unfinished tasks then run in the other partition (the governor hears it is
    gone, no heartbeat timeout needed), none ends CANCELED, and the stopped manager starts nothing more."""
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    script = (f"echo $QCG_PM_NODELIST >> {marks}/${{it}}; "
              f"for i in $(seq 600); do [ -e {gate} ] && break; sleep 0.1; done")
    gov.submit(Jobs().add(name="g", exec="/bin/bash", args=["-c", script], iteration=6))
    deadline = time.monotonic() + WAIT
    while len(list(marks.iterdir())) < 4:        # 2 cores in each partition: 4 run, 2 wait
        assert time.monotonic() < deadline, "the iterations did not start"
        time.sleep(0.05)
    part0 = manager_processes(gov.qcgpm_process.pid)["part-0"]
    part0.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    part0.send_signal(signal.SIGTERM)
    gone, alive = psutil.wait_procs([part0], timeout=WAIT)
    assert alive == [], "the manager did not stop after the second SIGTERM"
    gate.touch()
    assert gov.wait4("g", timeout=WAIT) == {"g": "SUCCEED"}
    runs = {i: (marks / str(i)).read_text().split() for i in range(6)}
    assert all(nodes[-1] == "b" for nodes in runs.values() if "a" in nodes), runs    # a's ran again on b
    assert gov.system_status()["LostPartitions"] == ["part-0"]


def test_manager_attaches_with_relative_keys_path(tmp_path):
    """README "Attaching" (`--keys W/.qcgpjm-service-ID`, a path relative to where the manager starts):
    the manager works in its --wd, yet finds the keys, registers and runs work."""
    wd = tmp_path / "wd"
    wd.mkdir()
    for governor in local_manager(["--governor", "--wd", str(wd)], client_cfg(tmp_path)):
        keys = os.path.relpath(governor.aux_dir, tmp_path)
        assert not os.path.isabs(keys)
        proc = subprocess.Popen([*SERVICE, "--parent", governor.address, "--keys", keys, "--id", "rel",
                                 "--nodes", "1", "--wd", str(tmp_path / "mwd")], cwd=str(tmp_path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            governor.submit(Jobs().add(name="j", exec="/bin/true"))
            assert governor.wait4("j", timeout=WAIT) == {"j": "SUCCEED"}, proc.stderr
            assert [p["id"] for p in governor.system_status()["Partitions"]] == ["rel"]
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err


def test_attached_manager_stops_when_the_governor_is_killed_and_not_yet_reaped(tmp_path):
    """README "Faults": a manager on the governor's host stops when the governor's process ends. A
    `kill -9`ed governor whose parent has not reaped it yet is a zombie, which a signal 0 finds alive: the
    manager (attached with --parent, so not the governor's child) ran on until the heartbeats' silence."""
    wd = tmp_path / "wd"
    wd.mkdir()
    for governor in local_manager(["--governor", "--wd", str(wd)], client_cfg(tmp_path)):
        proc = subprocess.Popen([*SERVICE, "--parent", governor.address, "--keys", governor.aux_dir, "--id", "z",
                                 "--nodes", "1", "--wd", str(tmp_path / "mwd")], cwd=str(tmp_path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + WAIT
            while not governor.system_status()["Partitions"]:
                assert time.monotonic() < deadline and proc.poll() is None, "the manager did not attach"
                time.sleep(0.1)
            gov = governor.qcgpm_process
            os.kill(gov.pid, signal.SIGKILL)
            deadline = time.monotonic() + WAIT
            while psutil.Process(gov.pid).status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline, "the governor did not die"
                time.sleep(0.05)
            proc.wait(WAIT)
            log = next((tmp_path / "mwd").glob(".qcgpjm-service-*/service.log")).read_text()
            assert "parent lost: its process ended" in log, log[-2000:]
        finally:
            proc.kill()
            proc.wait(WAIT)


def test_partition_attaching_later_takes_over_queued_work(tmp_path):
    """Issue 6 "Dispatch ... so no partition idles while another has a backlog" and "Attaching ... at any
    time": a 1-core manager holds 8 queued tasks when a 4-core manager attaches; the newcomer is given
    part of that queue (tasks not started yet) instead of idling, and every task runs once."""
    wd, marks = tmp_path / "wd", tmp_path / "marks"
    wd.mkdir()
    marks.mkdir()
    for governor in local_manager(["--governor", "--wd", str(wd)], client_cfg(tmp_path)):
        managers = []

        def attach(member_id: str, nodes: str) -> None:
            managers.append(subprocess.Popen(
                [*SERVICE, "--parent", governor.address, "--keys", governor.aux_dir, "--id", member_id,
                 "--nodes", nodes, "--wd", str(tmp_path / member_id)], cwd=str(tmp_path),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        try:
            attach("small", "s:1")
            deadline = time.monotonic() + WAIT
            while not governor.system_status()["Partitions"]:
                assert time.monotonic() < deadline, "the first manager did not attach"
                time.sleep(0.1)
            governor.submit(Jobs().add(name="q", exec="/bin/bash", iteration=8,
                                       args=["-c", f"echo $QCG_PM_NODELIST >> {marks}/${{it}}; sleep 1"]))
            attach("big", "b:4")
            assert governor.wait4("q", timeout=WAIT) == {"q": "SUCCEED"}
        finally:
            for proc in managers:
                proc.send_signal(signal.SIGTERM)
            for proc in managers:
                proc.wait(WAIT)
        runs = {i: (marks / str(i)).read_text().split() for i in range(8)}
        assert all(len(nodes) == 1 for nodes in runs.values()), runs        # each ran once
        assert sum(nodes == ["b"] for nodes in runs.values()) >= 2, runs   # the newcomer took its share


def test_a_second_manager_under_a_live_managers_id_is_refused(tmp_path):
    """README "Attaching": each manager has its own `--id`. A second manager started under the id of one
    that runs is refused with a clear message (exit code 1), and the first goes on: its task runs once.
    The governor used to take the second for a restart of the first, told the first to exit and ran its
    task again (found by a helper). A manager restarted under the id of one that ended is still taken."""
    wd, marks = tmp_path / "wd", tmp_path / "marks"
    wd.mkdir()
    marks.mkdir()
    for governor in local_manager(["--governor", "--wd", str(wd)], client_cfg(tmp_path)):
        argv = [*SERVICE, "--parent", governor.address, "--keys", governor.aux_dir, "--id", "twin", "--nodes", "t:2"]
        first = subprocess.Popen([*argv, "--wd", str(tmp_path / "first")], cwd=str(tmp_path),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + WAIT
            while not governor.system_status()["Partitions"]:
                assert time.monotonic() < deadline, "the first manager did not attach"
                time.sleep(0.1)
            governor.submit(Jobs().add(name="once", exec="/bin/bash", args=["-c", f"echo x >> {marks}/runs; sleep 3"]))
            while not (marks / "runs").exists():
                assert time.monotonic() < deadline, "the task did not start"
                time.sleep(0.05)
            second = subprocess.run([*argv, "--wd", str(tmp_path / "second")], cwd=str(tmp_path),
                                    capture_output=True, text=True, timeout=WAIT)
            assert second.returncode == 1, second.stderr
            assert ("the parent refused this manager: partition manager id 'twin' is in use by a running manager "
                    f"(pid {first.pid} on this host): give each manager its own --id") in second.stderr, second.stderr
            assert governor.wait4("once", timeout=WAIT) == {"once": "SUCCEED"}
            assert first.poll() is None, "the first manager was told to exit"
            assert (marks / "runs").read_text() == "x\n"        # ran once
            # a restart under the id is still taken at once, before the killed one's silence loses it
            first.kill()
            first.wait(WAIT)
            first = subprocess.Popen([*argv, "--wd", str(tmp_path / "second")], cwd=str(tmp_path),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            governor.submit(Jobs().add(name="after", exec="/bin/true"))
            assert governor.wait4("after", timeout=WAIT) == {"after": "SUCCEED"}
        finally:
            first.send_signal(signal.SIGTERM)
            first.wait(WAIT)


def test_a_sweep_with_an_iteration_scheduler_waits_for_the_first_partition(tmp_path):
    """README ("--governor": while none is attached, jobs wait for one that fits them) and reference 12: a
    `split-into` sweep submitted before any manager attached is accepted like any other job -- it was
    refused ("0 split into 3 parts gives less than 1 per part") -- and its iterations are sized against the
    manager that attaches."""
    wd, out = tmp_path / "wd", tmp_path / "out"
    wd.mkdir()
    out.mkdir()
    for governor in local_manager(["--governor", "--wd", str(wd)], client_cfg(tmp_path)):
        manager = None
        try:
            governor.submit(Jobs().add(name="sw", exec="/bin/bash", iteration=3,
                                       args=["-c", f"echo $QCG_PM_NPROCS > {out}/${{it}}"],
                                       numCores={"min": 1, "scheduler": {"name": "split-into"}}))
            assert governor.status("sw")["jobs"]["sw"]["data"]["status"] == "QUEUED"
            manager = subprocess.Popen(
                [*SERVICE, "--parent", governor.address, "--keys", governor.aux_dir, "--id", "p",
                 "--nodes", "n:6", "--wd", str(tmp_path / "p")], cwd=str(tmp_path),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert governor.wait4("sw", timeout=WAIT) == {"sw": "SUCCEED"}
        finally:
            if manager is not None:
                manager.send_signal(signal.SIGTERM)
                manager.wait(WAIT)
        aux = Path(governor.aux_dir)
    assert [(out / str(i)).read_text().strip() for i in range(3)] == ["2", "2", "2"]
    # it left in order (drained, told to exit): not a lost partition, nor an error in the log (helper report)
    status = json.loads((aux / "final_status.json").read_text())
    assert (status["LeftPartitions"], status["LostPartitions"]) == (["p"], []), status
    assert "partition removed" not in (aux / "service.log").read_text()


@pytest.mark.parametrize("flag", [["--nodes", "a:2"], ["--system-core"]])
def test_governor_without_partitions_refuses_resources_of_its_own(tmp_path, flag):
    """`--governor` runs no tasks itself: `--nodes` (or `--system-core`) given to it was ignored without a
    word, and the run had 0 cores until a manager attached (the Executor's `resources=` too)."""
    r = subprocess.run([*SERVICE, "--governor", *flag, "--wd", str(tmp_path / "wd")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "cannot be used with --governor" in r.stderr and flag[0] in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------ regressions
def test_spawn_failure_names_its_partition(service):
    """Issue 6 "jobs.report runtime has a new 'partition' key": also for a task that failed to start in a
    partition (its allocation is reported, so is where it was). Regression (fixed in 82a38b9): only
    Governor.task_started recorded the partition, and a spawn failure sends only TaskFinished."""
    r = service([submit(job("nx", "/no/such/program"))], nodes="a:1,b:1", mode="partitioned")
    assert r.rc == 0, r.stderr
    runtime = r.report()["nx"]["runtime"]
    assert r.report()["nx"]["state"] == "FAILED"
    assert runtime["allocation"] in ("a[0]", "b[0]")
    assert runtime.get("partition") == {"a[0]": "part-0", "b[0]": "part-1"}[runtime["allocation"]], runtime


def test_many_short_tasks_partitions_stay_registered(tmp_path):
    """Issue 3 "run thousands of tasks" in partitioned mode: 1000 iterations of /bin/true all SUCCEED and no
    partition manager is lost. Fails fast: the test stops as soon as the governor logs a lost manager.

    Regression (fixed in a0f4124): ZmqInterface.send_peer() sent on the ROUTER whose FD the loop watches
    edge-triggered without looking for input afterwards; under steady dispatch the governor stopped reading
    its managers, lost them all after LOST_AFTER and the run hung."""
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit(job("many", "/bin/true", iteration={"stop": 1000}))]))
    wd = tmp_path / "wd"
    log = wd / ".qcgpjm-service-stall" / "service.log"
    err_path = tmp_path / "service.stderr"
    with open(err_path, "wb") as err_file:
        proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--id", "stall",
                                 "--nodes", "a:2,b:2", "--slurm-partition-nodes", "1"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file,
                                cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + WAIT
        while proc.poll() is None:
            assert not (log.exists() and "partition manager lost" in log.read_text()), \
                "a partition manager was lost under load"
            assert time.monotonic() < deadline, "the run did not end in time"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    err = err_path.read_text(errors="replace")
    assert proc.returncode == 0, err
    fs = json.loads((log.parent / "final_status.json").read_text())
    assert fs["IterationStats"]["FinishedIterations"] == 1000, fs
    assert fs["LostPartitions"] == []


@pytest.mark.parametrize("extra, message", [
    (["--file-path", "reqs.json"], "--file-path cannot be used with it"),
    (["--net"], "--net cannot be used with it"),
])
def test_parent_refuses_a_front_door_of_its_own(tmp_path, extra, message):
    """A manager with --parent takes its work from the parent only: one clear line, exit code 1."""
    proc = subprocess.run([*SERVICE, "--parent", "tcp://127.0.0.1:1", "--nodes", "1", *extra], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"Error: a manager with --parent takes its work from the parent; "
                                                f"{message}"]


def test_parent_without_keys_is_refused_clearly(tmp_path):
    """Without --keys or QCG_PM_KEYS a manager cannot authenticate: it says how to give them, exit code 1."""
    env = {k: v for k, v in os.environ.items() if k != "QCG_PM_KEYS"}
    proc = subprocess.run([*SERVICE, "--parent", "tcp://127.0.0.1:1", "--nodes", "1", "--wd", str(tmp_path / "wd")],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=WAIT, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "Error: --parent needs the keys of the parent's run: give --keys DIR" in proc.stderr


def test_parent_keys_open_to_others_are_refused(tmp_path):
    """DESIGN principle 5 (a security audit's follow-up to F4): a manager takes --keys only when they are
    its user's own and closed to others; keys others can write would let them pose as the governor and
    receive the jobs (with their environments). One clear line, exit code 1, nothing sent."""
    from qcg.pilotjob.governor.keys import create_keys

    keys = create_keys(str(tmp_path / "aux")).directory
    os.chmod(keys, 0o777)
    proc = subprocess.run([*SERVICE, "--parent", "tcp://127.0.0.1:1", "--nodes", "1", "--wd", str(tmp_path / "wd"),
                           "--keys", keys], cwd=str(tmp_path), capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"key directory '{keys}' is open to others (mode 777): refused" in proc.stderr, proc.stderr
    os.chmod(keys, 0o700)
    secret = os.path.join(keys, os.listdir(keys)[0])
    for name in os.listdir(keys):
        if name.endswith("_secret"):
            secret = os.path.join(keys, name)
    os.chmod(secret, 0o644)
    proc = subprocess.run([*SERVICE, "--parent", "tcp://127.0.0.1:1", "--nodes", "1", "--wd", str(tmp_path / "wd"),
                           "--keys", keys], cwd=str(tmp_path), capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 1 and f"key file '{secret}' is open to others (mode 644)" in proc.stderr, proc.stderr


def test_managers_stop_within_a_heartbeat_when_the_governor_dies(tmp_path):
    """README "Faults": a partition manager on the governor's host watches the governor's process, so a
    `kill -9` of the governor stops it at the next heartbeat tick, not after the 6 s of silence in which it
    kept starting tasks nobody would hear of (and a `--resume` ran again)."""
    wd = tmp_path / "wd"
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit(job("s", "/bin/sleep", ["30"], iteration={"stop": 2}))]))
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", "a:1,b:1",
                             "--slurm-partition-nodes", "1", "--id", "g"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            managers = manager_processes(proc.pid)
            sleeps = [p for p in psutil.Process(proc.pid).children(recursive=True)
                      if p.name() == "sleep"] if len(managers) == 2 else []
            if len(sleeps) == 2:
                break
            assert time.monotonic() < deadline and proc.poll() is None, "the tasks did not start"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(10)
    gone, alive = psutil.wait_procs(list(managers.values()) + sleeps, timeout=20)
    assert not alive, f"still running: {alive}"
    for pid in ("part-0", "part-1"):
        log = (wd / ".qcgpjm-service-g" / "partitions" / pid / "service.log").read_text()
        assert "parent lost: its process ended" in log, log[-2000:]


def test_a_nested_governor_without_partitions_joins_with_its_first_manager(tmp_path):
    """README "Attaching": a governor started with `--parent` and `--governor` is a partition of the higher
    governor (helper report: it was refused, "needs partitions of its own"). It waits for a manager to attach
    to it, joins the top with that manager's size, and the top's tasks run there."""
    wd = tmp_path / "wd"
    wd.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        for top in local_manager(["--governor", "--wd", str(wd)], client_cfg(tmp_path)):
            mid_aux = wd / ".qcgpjm-service-mid"
            procs.append(subprocess.Popen([*SERVICE, "--parent", top.address, "--keys", top.aux_dir, "--governor",
                                           "--id", "mid", "--wd", str(wd)], cwd=str(tmp_path),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            deadline = time.monotonic() + WAIT
            while not (mid_aux / "address").exists():
                assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].stderr.read()
                time.sleep(0.05)
            procs.append(subprocess.Popen([*SERVICE, "--parent", (mid_aux / "address").read_text().strip(),
                                           "--keys", str(mid_aux), "--id", "leaf", "--nodes", "n:2",
                                           "--wd", str(wd)], cwd=str(tmp_path),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            top.submit(Jobs().add(name="s", exec="/bin/true", iteration=4))
            assert top.wait4("s", timeout=WAIT) == {"s": "SUCCEED"}
            childs = top.info("s", withChilds=True)["jobs"]["s"]["data"]["childs"]
            assert {c["runtime"]["partition"] for c in childs} == {"mid"}, childs
        for p in procs:
            assert p.wait(WAIT) == 0           # the top's `exit` ends the nested governor and its manager
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(WAIT)
