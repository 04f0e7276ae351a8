"""The request file interface end to end: `python -m qcg.pilotjob.service --file-path ...` in a subprocess
(reference 10 "File based interface", 6 "QCG-PilotJob Manager options", 7.2, 8.2).

Tests marked `both_modes` run flat and partitioned (tests/conftest.py), on two nodes by default. Flat only:
cases that depend on one partition's node layout -- FIFO/backfill on one 4-core node, `--system-core`
(one core of one node), iteration schedulers (sized against the largest partition in partitioned mode,
against everything in flat mode) -- and the console-script check (no run)."""

from __future__ import annotations

import io
import json
import os
import re

import msgpack
import pytest

from tests.conftest import DEFAULT_TIMEOUT, SERVICE, find_aux, job, script_job, submit, write_requests


@pytest.mark.both_modes
def test_full_run_report_status_and_journal(service, tmp_path, mode):
    """Reference 10.1/10.2: requests read in order, service exits 0 after all jobs end; aux dir has
    jobs.report (json), final_status.json with the original's keys, track.* journal, service.log."""
    reqs = [
        submit(job("a", "/bin/echo", ["hello"], stdout="a.out"),
               job("it", "/bin/true", iteration={"stop": 3}),
               job("f", "/bin/false")),
        {"request": "listJobs"},
        {"request": "control", "command": "finishAfterAllTasksDone"},
    ]
    r = service(reqs, "--id", "full")
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    assert r.aux == r.wd / ".qcgpjm-service-full"
    assert (r.wd / "a.out").read_text() == "hello\n"
    rep = r.report()
    assert rep["a"]["state"] == "SUCCEED"
    assert rep["f"]["state"] == "FAILED"
    assert rep["f"]["runtime"]["exit_code"] == "1"
    assert rep["it"]["state"] == "SUCCEED"
    assert {f"it:{i}" for i in range(3)} <= set(rep)
    for key in ("name", "state", "history", "runtime", "execution", "resources"):
        assert key in rep["a"]
    assert rep["a"]["execution"]["exec"] == "/bin/echo"
    assert [h["state"] for h in rep["a"]["history"]][-1] == "SUCCEED"
    fs = r.final_status()
    partition_keys = {"Partitions", "LostPartitions", "LeftPartitions"} if mode == "partitioned" else set()
    assert set(fs) == {"System", "Resources", "JobStats", "IterationStats"} | partition_keys
    assert set(fs["System"]) >= {"InstanceId", "Started", "Generated", "Uptime", "Zmqaddress", "Ifaces",
                                 "StatusPublisher", "Host", "Account", "Wd", "PythonVersion", "Python",
                                 "Platform"}
    assert fs["System"]["InstanceId"] == "full"
    assert fs["Resources"] == {"TotalNodes": 2, "TotalCores": 4, "UsedCores": 0, "FreeCores": 4}
    assert fs["JobStats"] == {"TotalJobs": 3, "InScheduleJobs": 0, "FailedJobs": 1, "FinishedJobs": 2,
                              "ExecutingJobs": 0}
    assert fs["IterationStats"]["TotalIterations"] == 5
    assert fs["IterationStats"]["FailedIterations"] == 1
    assert fs["IterationStats"]["FinishedIterations"] == 4
    journal = list(msgpack.Unpacker(io.BytesIO(r.aux_file("track.reqs").read_bytes()), raw=False))
    assert [len(rec["jobs"]) for rec in journal if "jobs" in rec] == [3]
    assert journal[-1] == {"control": "finishAfterAllTasksDone"}
    finals = {(s["task"], s["state"]) for s in r.states()}
    assert {("a", "SUCCEED"), ("f", "FAILED"), ("it:0", "SUCCEED"), ("it", "SUCCEED")} <= finals
    assert r.aux_file("service.log").stat().st_size > 0


@pytest.mark.both_modes
def test_all_requests_in_a_file(service):
    """Reference 10.3.1-10.3.9: every request kind is served from a file without refusal (exit 0)."""
    reqs = [
        submit(job("a"), job("b", "/bin/sleep", ["0.1"])),
        {"request": "listJobs"},
        {"request": "jobStatus", "jobNames": ["a"]},
        {"request": "jobInfo", "jobNames": ["a"], "params": {"withChilds": True}},
        {"request": "resourcesInfo"},
        {"request": "status"},
        {"request": "status", "options": {"allJobsFinished": True}},
        submit(job("c", "/bin/sleep", ["30"])),
        {"request": "cancelJob", "jobNames": ["c"]},
        {"request": "control", "command": "finishAfterAllTasksDone"},
    ]
    r = service(reqs)
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["a"]["state"] == "SUCCEED" and rep["b"]["state"] == "SUCCEED"
    assert rep["c"]["state"] == "CANCELED"
    # reference 10.2: "In the file mode, QCG-PilotJob Manager outputs all responses to the log file"
    served = [line for line in r.log().splitlines() if "request served" in line]
    assert len(served) == len(reqs), served
    assert "2 jobs submitted" in served[0] and '"total_cores":4' in served[4], served


@pytest.mark.both_modes
def test_remove_then_resubmit_same_name(service):
    """Reference 10.3.7: after removeJob the name can be submitted again."""
    reqs = [submit(job("a")), {"request": "cancelJob", "jobNames": ["a"]},
            {"request": "removeJob", "jobNames": ["a"]}, submit(job("a", "/bin/echo", ["2nd"], stdout="o"))]
    r = service(reqs, timeout=20)
    assert r.rc == 0, r.stderr
    assert (r.wd / "o").read_text() == "2nd\n"


@pytest.mark.both_modes
def test_finish_request_kills_running(service):
    """Reference 10.3.9 finish: the service ends at once, running jobs are killed; exit 0."""
    reqs = [submit(job("long", "/bin/sleep", ["60"])), {"request": "finish"}]
    r = service(reqs, timeout=30)
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    assert r.report()["long"]["state"] == "CANCELED"


@pytest.mark.both_modes
def test_requests_after_finish_after_all_tasks_done_are_served(service):
    """Reference 10.3.8 control `finishAfterAllTasksDone`: the service ends once every job has finished.
    The original's file listener reads the whole file, so the command may come first and the jobs after it;
    after `finish` (10.3.9) nothing more is served, and stderr says so."""
    r = service([{"request": "control", "command": "finishAfterAllTasksDone"},
                 submit(job("a", "/bin/sleep", ["0.3"])), submit(job("b", dependencies={"after": ["a"]}))],
                timeout=30)
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["a"]["state"] == "SUCCEED" and rep["b"]["state"] == "SUCCEED"
    r = service([submit(job("c")), {"request": "finish"}, submit(job("d")), {"request": "listJobs"}],
                timeout=30)
    assert r.rc == 0, r.stderr
    assert "d" not in r.report()
    assert "requests #3-#4 come after 'finish' (#2) and were not served" in r.stderr


@pytest.mark.both_modes
def test_report_format_text(service):
    """Reference 6 `--report-format text`: one block per finished entity: `name (STATE) msg`, history, runtime."""
    r = service([submit(job("t", "/bin/false", iteration={"stop": 1}))], "--report-format", "text")
    assert r.rc == 0, r.stderr
    text = r.aux_file("jobs.report").read_text()
    assert re.search(r"^t:0 \(FAILED\) ", text, re.M)
    assert re.search(r"^t \(FAILED\) ", text, re.M)
    assert re.search(r"^\t\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: EXECUTING$", text, re.M)
    assert re.search(r"^\texit_code: 1$", text, re.M)
    assert not text.lstrip().startswith("{")


@pytest.mark.both_modes
def test_report_file_name(service):
    """Reference 6 `--report-file`: the report is written under the given name in the aux dir."""
    r = service([submit(job("a"))], "--report-file", "my.report")
    assert r.rc == 0, r.stderr
    assert r.report("my.report")["a"]["state"] == "SUCCEED"


@pytest.mark.both_modes
def test_id_names_aux_dir(service):
    """Reference 6 `--id`: aux dir `.qcgpjm-service-<id>` in the working dir; InstanceId = id."""
    r = service([submit(job("a"))], "--id", "myid")
    assert r.rc == 0, r.stderr
    assert (r.wd / ".qcgpjm-service-myid").is_dir()
    assert r.final_status()["System"]["InstanceId"] == "myid"


@pytest.mark.both_modes
def test_default_id_is_host_dot_number(service):
    """Facts 14: default id `<hostname>.<number>`."""
    r = service([submit(job("a"))])
    assert r.rc == 0, r.stderr
    assert re.fullmatch(r"\.qcgpjm-service-.+\.\d+", r.aux.name)


@pytest.mark.both_modes
def test_tags_accepted(service):
    """Reference 6 `--tags`: accepted (logged), the run is unaffected."""
    r = service([submit(job("a"))], "--tags", "t1,t2")
    assert r.rc == 0, r.stderr


@pytest.mark.both_modes
def test_log_level(service):
    """Reference 6 `--log`: debug is accepted and writes service.log."""
    r = service([submit(job("a"))], "--log", "debug")
    assert r.rc == 0, r.stderr
    assert r.log()
    # one form for every line, also those of libraries that use `logging` (zmq.auth, asyncio)
    bad = [line for line in r.log().splitlines() if not re.match(r"timestamp='[0-9 :.-]+' level='[a-z]+' ", line)]
    assert not bad, bad[:3]


@pytest.mark.both_modes
def test_debug_log_has_a_line_per_task_start_and_end(service):
    """Reference 6 `--log`: at debug level service.log says when each task started and ended, where and how
    (a line each, iterations named); at the default level it has no such lines."""
    reqs = [submit(job("ok", "/bin/true", iteration={"stop": 2}), job("bad", "/no/such/program"))]
    r = service(reqs, "--log", "debug")
    assert r.rc == 0, r.stderr
    lines = r.log().splitlines()
    started = [line for line in lines if "event='task started'" in line]
    finished = [line for line in lines if "event='task finished'" in line]
    assert sorted(re.search(r"job='(\w+)'( iteration=\d)?", line).group(0) for line in started) == \
        ["job='ok' iteration=0", "job='ok' iteration=1"]
    assert len(finished) == 3
    bad = [line for line in finished if "job='bad'" in line]
    assert len(bad) == 1 and "state='FAILED'" in bad[0] and "/no/such/program" in bad[0], bad
    assert all("where='" in line for line in started + finished)
    quiet = service(reqs)
    assert quiet.rc == 0, quiet.stderr
    assert "event='task" not in quiet.log()


def test_system_core_reduces_free_cores(service):
    """Reference 6 `--system-core` / 15.2: one core reserved: UsedCores 1 at idle, free reduced by one,
    a job using all remaining cores still runs, one needing every core is refused."""
    reqs = [submit(job("three", "/bin/true", resources={"numCores": {"exact": 3}})),
            {"request": "resourcesInfo"}]
    r = service(reqs, "--system-core", nodes="4")
    assert r.rc == 0, r.stderr
    fs = r.final_status()
    assert fs["Resources"]["TotalCores"] == 4
    assert fs["Resources"]["UsedCores"] == 1
    assert fs["Resources"]["FreeCores"] == 3
    rep = r.report()
    assert rep["three"]["state"] == "SUCCEED"
    assert "0" not in rep["three"]["runtime"]["allocation"].split("[")[1].rstrip("]").split(":")

    r2 = service([submit(job("four", "/bin/true", resources={"numCores": {"exact": 4}}))], "--system-core",
                 nodes="4", wd=r.wd.parent / "wd2")
    r2.assert_no_traceback()
    assert r2.rc != 0
    assert "four" in r2.stderr


@pytest.mark.both_modes
def test_show_progress_prints_bar_to_stderr(tmp_path, service_args):
    """Reference 6 `--show-progress` (issue 3 "with a progress bar"): a progress bar on stderr (a terminal)."""
    import pty
    import subprocess
    import sys
    import time
    reqs = tmp_path / "r.json"
    reqs.write_text(json.dumps([submit(job("it", "/bin/true", iteration={"stop": 20}))]))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "qcg.pilotjob.service", "--file-path", str(reqs),
                             "--wd", str(tmp_path / "wd"), "--nodes", "a:1,b:1", "--show-progress",
                             *service_args("a:1,b:1")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert rc == 0, err
    assert "Traceback" not in err
    assert "20/20" in err or "100%" in err, err


def test_show_progress_writes_lines_when_stderr_is_a_file(service):
    """Reference 6 `--show-progress` in a batch job, whose stderr is a file: click draws only its label
    there, so plain `tasks: done/total (pct%)` lines are written instead (every 5 s while the count moves),
    the last one at the end."""
    r = service([submit(job("it", "/bin/true", iteration={"stop": 12}))], "--show-progress", nodes="2")
    assert r.rc == 0, r.stderr
    assert r.stderr.splitlines()[-1] == "tasks: 12/12 (100%)", r.stderr


@pytest.mark.parametrize("broken", ["full", "closed pipe"])
def test_output_that_cannot_be_written_does_not_end_the_run(tmp_path, broken):
    """Helper report: stdout and stderr on a full disk (/dev/full) or a pipe whose reader quit
    (`qcg-gov ... 2>&1 | head`). The first `Error: request #2` line raised out of the loop: the service
    stopped at once, exit 1, its running job CANCELED. Now the lines are lost, the run is not: the job
    ends SUCCEED, the files are written, and the exit code is the refused request's (2)."""
    import subprocess
    reqs = write_requests(tmp_path / "reqs.json", [
        submit(job("long", "/bin/sleep", ["1"])),
        submit(job("long")),                    # refused: the name is taken
        {"request": "control", "command": "finishAfterAllTasksDone"}])
    wd = tmp_path / "wd"
    argv = [*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", "2", "--show-progress"]
    if broken == "full":
        with open("/dev/full", "w") as full:
            rc = subprocess.run(argv, stdout=full, stderr=full, timeout=DEFAULT_TIMEOUT).returncode
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            rc = subprocess.run(argv, stdout=write_end, stderr=write_end, timeout=DEFAULT_TIMEOUT).returncode
        finally:
            os.close(write_end)
    assert rc == 2
    aux = find_aux(wd)
    assert [json.loads(line)["state"] for line in (aux / "jobs.report").read_text().splitlines()] == ["SUCCEED"]
    assert json.loads((aux / "final_status.json").read_text())["JobStats"]["FinishedJobs"] == 1
    # what was lost is on record where it can be read
    assert "event='writes to the standard streams were lost' stderr=" in (aux / "service.log").read_text()


def test_a_run_whose_record_cannot_be_written_says_so_and_exits_4(service):
    """Helper report: a report that could not be written (a full disk; here `--report-file /dev/full`) ended
    the run with exit code 0 and no final_status.json. Now a warning at the first failure, an error naming
    the file at the end, exit code 4 (README "Exit codes"), final_status.json written all the same, and
    no final state in track.states without its report line: those tasks run again on --resume."""
    r = service([submit(job("a", iteration={"stop": 3}))], "--report-file", "/dev/full", nodes="2")
    assert r.rc == 4, r.stderr
    r.assert_no_traceback()
    assert "Warning: jobs.report and track.states cannot be written now" in r.stderr
    assert "could not be written (/dev/full: No space left on device)" in r.stderr
    assert json.loads((r.aux / "final_status.json").read_text())["JobStats"]["FinishedJobs"] == 1
    assert (r.aux / "track.states").read_text() == ""


@pytest.mark.both_modes
def test_placeholders(service, tmp_path):
    """Reference 10.3.1 variables `${it}`, `${itval}`, `${uniq}` (fresh per task), `${jname}`, `${rcnt}`,
    `${root_wd}`, `${ncores}`, `${nnodes}`, `${nlist}` substituted per string field; `$$` and quotes survive (issue 3 "never on serialised JSON")."""
    reqs = [
        submit(job("first")),
        submit(
            job("p", "/bin/echo", ["${jname}|${rcnt}|${root_wd}|${ncores}|${nnodes}|${nlist}",
                                   "$$HOME", 'q"uote\'s', "back\\slash"],
                stdout="p.${ncores}.out", resources={"numCores": {"exact": 3}}),
            job("i", "/bin/echo", ["it=${it} ${jname}"], stdout="i.${it}.out", iteration={"start": 2, "stop": 4}),
            job("v", "/bin/echo", ["${itval}"], stdout="v.${it}.out", iteration={"values": ["x y", "z"]}),
            job("u", "/bin/echo", ["${uniq}"], stdout="u.${it}.out", iteration={"stop": 2}),
            # run-time names that a value brings in or completes are substituted at launch
            job("w", "/bin/echo", ["${itval}", "${n${itval}}"], stdout="w.${it}.out", iteration={"values": ["${ncores}"]}),
            job("n", "/bin/echo", ["${n${itval}}"], stdout="n.${it}.out", iteration={"values": ["nodes"]}),
        ),
    ]
    # two nodes per partition in partitioned mode: the 3-core task spans the nodes of one partition
    r = service(reqs, nodes="2,2,2,2", partition_nodes=2)
    assert r.rc == 0, r.stderr
    out = (r.wd / "p.3.out").read_text().rstrip("\n")
    fields, rest = out.split(" ", 1)
    jname, rcnt, root_wd, ncores, nnodes, nlist = fields.split("|")
    assert jname == "p"
    assert rcnt == "2"
    assert root_wd == str(r.wd)
    assert ncores == "3" and nnodes == "2" and nlist in ("n0,n1", "n2,n3")
    assert rest == "$$HOME q\"uote's back\\slash"
    # "jname - a final job name after substitution of all other used variables": the job's name in every
    # iteration too, as the original substitutes it at submit
    assert (r.wd / "i.2.out").read_text() == "it=2 i\n"
    assert (r.wd / "i.3.out").read_text() == "it=3 i\n"
    assert (r.wd / "v.0.out").read_text() == "x y\n"
    assert (r.wd / "v.1.out").read_text() == "z\n"
    assert (r.wd / "w.0.out").read_text() == "1 ${n1}\n"
    assert (r.wd / "n.0.out").read_text() == "1\n"
    uniqs = {(r.wd / f"u.{i}.out").read_text().strip() for i in range(2)}
    assert len(uniqs) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uniqs), uniqs
    # reports keep the description with ${it} literal (facts 8)
    assert r.report()["i"]["execution"]["stdout"] == "i.${it}.out"


@pytest.mark.both_modes
def test_env_vars_inside_task(service, mode):
    """Reference 8.2 QCG execution environment: QCG_PM_NNODES, _NODELIST, _NPROCS, _NTASKS, _STEP_ID,
    _TASKS_PER_NODE (+ issue 3 QCG_PM_CPU_SET) seen from inside a task; job `env` added."""
    sc = ('for v in QCG_PM_NNODES QCG_PM_NODELIST QCG_PM_NPROCS QCG_PM_NTASKS QCG_PM_TASKS_PER_NODE '
          'QCG_PM_STEP_ID QCG_PM_CPU_SET MYVAR; do echo "$v=${!v}"; done > env.${it}.txt')
    reqs = [submit({"name": "e", "execution": {"script": sc, "env": {"MYVAR": "my value"}},
                    "resources": {"numCores": {"exact": 3}}, "iteration": {"stop": 2}})]
    r = service(reqs, nodes="2,2,2,2", partition_nodes=2)
    r.assert_no_traceback()
    if r.rc != 0:
        # env together with script may be refused (reference: script is exclusive with exec/args/env)
        reqs[0]["jobs"][0]["execution"] = {"exec": "bash", "args": ["-c", sc.replace("${it}", "${it}")],
                                           "env": {"MYVAR": "my value"}}
        r = service(reqs, nodes="2,2,2,2", partition_nodes=2, wd=r.wd.parent / "wd2")
    assert r.rc == 0, r.stderr
    step_ids = set()
    for i in range(2):
        env = dict(line.split("=", 1) for line in (r.wd / f"env.{i}.txt").read_text().splitlines())
        assert env["QCG_PM_NNODES"] == "2"
        nodelist = env["QCG_PM_NODELIST"].split(",")
        assert len(set(nodelist)) == 2 and set(nodelist) <= {"n0", "n1", "n2", "n3"}, nodelist
        if mode == "partitioned":          # inside one partition
            assert env["QCG_PM_NODELIST"] in ("n0,n1", "n2,n3")
        assert env["QCG_PM_NPROCS"] == "3" and env["QCG_PM_NTASKS"] == "3"
        assert env["QCG_PM_TASKS_PER_NODE"] in ("2,1", "1,2")
        assert re.fullmatch(r"[0-9a-f]{32}", env["QCG_PM_STEP_ID"])
        assert len(env["QCG_PM_CPU_SET"].split(",")) == 3
        assert env["MYVAR"] == "my value"
        step_ids.add(env["QCG_PM_STEP_ID"])
    assert len(step_ids) == 2


@pytest.mark.both_modes
def test_wd_created_and_relative_streams(service, tmp_path):
    """Reference 10.3.1 `wd` (relative to the manager's wd, created if missing) and stdin/stdout/stderr
    relative to the job's wd."""
    (tmp_path / "wd" / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "wd" / "sub" / "deeper" / "in.txt").write_text("from stdin\n")
    absdir = tmp_path / "abs" / "dir"
    reqs = [submit(
        job("rel", "/bin/cat", wd="sub/deeper", stdin="in.txt", stdout="out.txt"),
        {"name": "err", "execution": {"exec": "bash", "args": ["-c", "echo E >&2; echo O; pwd"],
                                      "wd": "new/dir", "stdout": "o.txt", "stderr": "e.txt"}},
        job("abs", "/bin/pwd", wd=str(absdir), stdout="pwd.txt"),
        {"name": "same", "execution": {"exec": "bash", "args": ["-c", "echo 1; echo 2 >&2; echo 3"],
                                       "stdout": "both.txt", "stderr": "both.txt"}},
        # an empty name is not given, as in the original (helper report: it failed opening the wd)
        job("empty", "/bin/echo", ["x"], stdin="", stdout="", stderr=""),
    )]
    r = service(reqs)
    assert r.rc == 0, r.stderr
    assert r.report()["empty"]["state"] == "SUCCEED", r.report()["empty"]
    assert (r.wd / "sub" / "deeper" / "out.txt").read_text() == "from stdin\n"
    assert (r.wd / "new" / "dir" / "e.txt").read_text() == "E\n"
    assert (r.wd / "new" / "dir" / "o.txt").read_text() == f"O\n{r.wd / 'new' / 'dir'}\n"
    assert (absdir / "pwd.txt").read_text() == f"{absdir}\n"
    assert (r.wd / "both.txt").read_text() == "1\n2\n3\n"
    assert r.report()["rel"]["runtime"]["wd"] == str(r.wd / "sub" / "deeper")


@pytest.mark.both_modes
def test_dependencies_and_omitted_in_report(service):
    """Reference 7.2 + 10.3.1 dependencies: dependants of a failed job are OMITTED, others run; `a:${it}`."""
    reqs = [submit(
        job("bad", "/bin/false"),
        job("dep", "/bin/true", dependencies={"after": ["bad"]}),
        job("dep2", "/bin/true", dependencies={"after": ["dep"]}),
        script_job("a", "test ${it} -ne 1", iteration={"stop": 3}),
        job("b", "/bin/echo", ["${it}"], stdout="b.${it}", iteration={"stop": 3},
            dependencies={"after": ["a:${it}"]}),
        job("ok", "/bin/true"),
    )]
    r = service(reqs)
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["bad"]["state"] == "FAILED"
    assert rep["dep"]["state"] == "OMITTED" and rep["dep2"]["state"] == "OMITTED"
    assert rep["ok"]["state"] == "SUCCEED"
    assert rep["a"]["state"] == "FAILED"
    assert rep["b"]["state"] == "FAILED"
    assert rep["b:1"]["state"] == "OMITTED"
    assert (r.wd / "b.0").exists() and (r.wd / "b.2").exists() and not (r.wd / "b.1").exists()
    assert rep["dep"]["dependencies"] == {"after": ["bad"]}


@pytest.mark.both_modes
def test_iteration_dependency_on_a_job_that_ended_unrun(service):
    """Reference 7.2 "Jobs for which dependency constraints can not be met, due to failure or cancellation of
    at least one job which they depend on, are marked as OMITTED": `after: ["b:1"]` where b ended as a whole
    before b:1 ran -- omitted itself, or canceled while queued -- is OMITTED too (it waited for ever)."""
    reqs = [submit(
        job("a", "/bin/false"),
        job("b", "/bin/true", iteration={"stop": 2}, dependencies={"after": ["a"]}),
        job("c", "/bin/true", dependencies={"after": ["b:1"]}),
        job("held", "/bin/true", iteration={"stop": 2}, dependencies={"after": ["c"]}),
        job("d", "/bin/true", dependencies={"after": ["held:0"]}),
    ), {"request": "cancelJob", "jobNames": ["held"]}]
    r = service(reqs, timeout=60)
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["b"]["state"] == "OMITTED" and rep["held"]["state"] in ("CANCELED", "OMITTED")
    assert rep["c"]["state"] == "OMITTED" and "'b:1' ended OMITTED" in rep["c"]["messages"]
    assert rep["d"]["state"] == "OMITTED" and "'held:0' ended" in rep["d"]["messages"]


@pytest.mark.both_modes
def test_omitted_chain_3000(service):
    """Issue 3 "dependants of a FAILED ... job become OMITTED" through a 3000-job chain, end to end."""
    n = 3000
    jobs = [job("c0", "/bin/false")] + [job(f"c{i}", dependencies={"after": [f"c{i-1}"]}) for i in range(1, n)]
    r = service([submit(*jobs)], timeout=120)
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["c0"]["state"] == "FAILED"
    assert all(rep[f"c{i}"]["state"] == "OMITTED" for i in range(1, n))
    assert r.final_status()["JobStats"]["FailedJobs"] == n


def test_scheduling_fifo_backfill_minmax(service):
    """Reference 7.2: FIFO; a later job runs when an earlier one does not fit (backfill); min/max gets the
    maximum possible; numNodes gets whole nodes."""
    reqs = [submit(
        job("big", "/bin/sleep", ["0.5"], resources={"numCores": {"exact": 3}}),
        job("wide", "/bin/true", resources={"numCores": {"exact": 4}}),
        job("small", "/bin/true"),
        job("range", "/bin/true", resources={"numCores": {"min": 1, "max": 8}},
            dependencies={"after": ["wide"]}),
        job("node", "/bin/true", resources={"numNodes": {"exact": 1}}, dependencies={"after": ["range"]}),
    )]
    r = service(reqs, nodes="4")
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert all(e["state"] == "SUCCEED" for e in rep.values()), rep

    def t(name, state):
        return next(h["date"] for h in rep[name]["history"] if h["state"] == state)

    # small (1 core) starts while big holds 3 cores and wide (4 cores) waits
    assert t("small", "EXECUTING") < t("big", "SUCCEED")
    assert t("wide", "EXECUTING") >= t("big", "SUCCEED")
    assert rep["big"]["runtime"]["allocation"].startswith("n0[")
    assert rep["range"]["runtime"]["allocation"] == "n0[0:1:2:3]"
    assert rep["node"]["runtime"]["allocation"] == "n0[0:1:2:3]"


@pytest.mark.both_modes
def test_never_fit_fails_with_clear_message(service):
    """Reference 7.2 "If the minimal resource requirements are greater than total available resources the
    job is removed from the queue with the FAILED status": FAILED with the reason, one clear line naming the
    job and the field, a non-zero exit (issue 3 bad input); other requests still served."""
    reqs = [submit(job("huge", resources={"numCores": {"exact": 9}})), submit(job("fine"))]
    r = service(reqs, nodes="2,2")
    r.assert_no_traceback()
    assert r.rc == 2
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1, r.stderr
    assert "huge" in err[0] and "resources" in err[0] and "FAILED" in err[0]
    rep = r.report()
    assert rep["fine"]["state"] == "SUCCEED"
    assert rep["huge"]["state"] == "FAILED" and "9 cores" in rep["huge"]["messages"]
    assert r.final_status()["JobStats"]["FailedJobs"] == 1


def test_iteration_schedulers(service):
    """Reference 12 iteration resource schedulers: split-into gives each iteration R/parts cores."""
    reqs = [submit(job("s", "/bin/true", iteration={"stop": 2},
                       resources={"numCores": {"min": 1, "scheduler": {"name": "split-into",
                                                                       "params": {"parts": 2}}}}))]
    r = service(reqs, nodes="4")
    assert r.rc == 0, r.stderr
    rep = r.report()
    for i in range(2):
        alloc = rep[f"s:{i}"]["runtime"]["allocation"]
        assert len(alloc.split("[")[1].rstrip("]").split(":")) == 2


def _cores_of(allocation: str) -> int:
    """How many cores an allocation text (`a[1],b[0:1]`) holds."""
    return sum(len(part.split("[")[1].rstrip("]").split(":")) for part in allocation.split(","))


def test_iteration_schedulers_size_by_the_cores_tasks_can_get(service):
    """Reference 12 ("split all available resources") with `--system-core` (helper report): the reserved
    core was counted, so `maximum-iters` with one iteration asked for 4 cores of 2 nodes that give 3 and
    FAILED, and `split-into` sized 2 iterations 2 + 2 where 3 cores are free (one waited). Now:
    3 cores, and 1 + 1 (floor(3 / 2)) running together."""
    reqs = [submit(job("one", "/bin/true", iteration={"stop": 1},
                       resources={"numCores": {"min": 1, "scheduler": {"name": "maximum-iters"}}})),
            submit(job("two", "/bin/true", iteration={"stop": 2},
                       resources={"numCores": {"min": 1, "scheduler": {"name": "split-into"}}}))]
    r = service(reqs, "--system-core", nodes="a:2,b:2", timeout=60)
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["one"]["state"] == "SUCCEED", rep["one"]
    assert _cores_of(rep["one:0"]["runtime"]["allocation"]) == 3
    assert [_cores_of(rep[f"two:{i}"]["runtime"]["allocation"]) for i in range(2)] == [1, 1]


def test_a_node_left_without_cores_by_the_system_core_is_not_sized_for(service):
    """Review: `--system-core` on a 1-core node leaves it no core for tasks, but the nodes scheduler still
    counted it: `maximum-iters` over nodes asked for 2 nodes of the one that can run tasks, and FAILED."""
    reqs = [submit(job("n", "/bin/true", iteration={"stop": 1},
                       resources={"numNodes": {"min": 1, "scheduler": {"name": "maximum-iters"}}}))]
    r = service(reqs, "--system-core", nodes="a:1,b:2", timeout=60)
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    assert r.report()["n"]["state"] == "SUCCEED", r.report()["n"]


def test_an_iteration_scheduler_that_cannot_be_met_fails_alone(service):
    """Reference 7.2 (a job bigger than the resources is FAILED, the rest runs), for a scheduler's size
    (helper report): `split-into` with `min` 3 gives 3 iterations 1 core of 4; the whole submit was
    refused, `ok` never ran. Now `sp` FAILS with the reason, like `big`, and `ok` runs. A mistake in the
    description (an unknown scheduler) still refuses the submit."""
    reqs = [submit(job("ok", "/bin/true"),
                   job("big", "/bin/true", resources={"numCores": {"exact": 9}}),
                   job("sp", "/bin/true", iteration={"stop": 3},
                       resources={"numCores": {"min": 3, "scheduler": {"name": "split-into"}}})),
            submit(job("typo", "/bin/true", iteration={"stop": 3},
                       resources={"numCores": {"min": 1, "scheduler": {"name": "split-in"}}}))]
    r = service(reqs, nodes="4", timeout=60)
    r.assert_no_traceback()
    assert r.rc == 2, r.stderr
    assert "unknown scheduler 'split-in'" in r.stderr
    assert "job 'sp' FAILED" in r.stderr        # the submit's answer names what FAILED at once, as for 'big'
    rep = r.report()
    assert rep["ok"]["state"] == "SUCCEED"
    assert rep["big"]["state"] == "FAILED"
    assert rep["sp"]["state"] == "FAILED" and "less than the minimum 3" in rep["sp"]["messages"], rep["sp"]


def test_iteration_sized_beyond_every_node_fails_alone(service):
    """Reference 7.2 (a task whose minimum exceeds the resources is FAILED) with reference 12.1: maximum-iters
    sizes the last of 3 iterations 4 cores, more than any 2-core node has on one node. That iteration
    FAILS with the reason; the others and the next request run (the dispatch stopped on it before)."""
    reqs = [submit(job("z", "/bin/true", iteration={"stop": 3},
                       resources={"numNodes": {"exact": 1},
                                  "numCores": {"min": 2, "scheduler": {"name": "maximum-iters"}}})),
            submit(job("ok", "/bin/true"))]
    r = service(reqs, nodes="a:2,b:2", timeout=60)
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["z:0"]["state"] == "SUCCEED" and rep["z:1"]["state"] == "SUCCEED"
    assert rep["z:2"]["state"] == "FAILED" and "4 cores per node" in rep["z:2"]["messages"]
    assert rep["z"]["state"] == "FAILED" and rep["ok"]["state"] == "SUCCEED"


@pytest.mark.both_modes
def test_empty_request_list(service):
    """Facts 15: an empty list of requests is a normal run (exit 0)."""
    r = service([])
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr


def test_qcg_gov_console_script(tmp_path):
    """Issue 3 "Console scripts qcg-gov (primary) and qcg-pm-service (same CLI)"."""
    import shutil
    import subprocess
    for name in ("qcg-gov", "qcg-pm-service"):
        exe = shutil.which(name)
        assert exe, f"{name} not installed"
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0
        assert "--file-path" in out.stdout and "--resume" in out.stdout
