"""Reading ptrace files and jobs.report back (reference 16.2 "How to use", `qcg-pm-processes`).

Hand-written files, so that the cases real runs make rarely (a reused pid,
several nodes, a report in text) are checked every time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcg.pilotjob.governor import process_tree as pt

T0 = 1_800_000_000.0


def _proc(pid: int, name: str, parent: int, created: float, cmdline: list[str] | None = None,
          node: str = "n1") -> dict:
    return {"pid": pid, "name": name, "cmdline": cmdline or [name], "parent": parent, "parent_name": "x",
            "cpu_affinity": [0], "node": node, "created": created, "first_seen": created + 0.5,
            "last_seen": created + 1.5, "cpu_times": [0.5, 0.1, 0.0, 0.0, 0.0],
            "memory_info": [1, 2, 3, 4, 0, 5, 0], "memory_percent": 0.5}


def _ptrace(wd: Path, node: str, procs: list[dict], suffix: str = "00001") -> None:
    doc = {"format": "qcg-pj-ptrace/1", "node": node, "interval": 1.0, "processes": procs}
    (wd / f"ptrace_{node}_20270115080000_{suffix}.log").write_text(json.dumps(doc))


def _report(aux: Path, *lines: dict) -> None:
    aux.mkdir(parents=True, exist_ok=True)
    (aux / "jobs.report").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _task(name: str, pid: int, allocation: str, started: float, execution: dict | None = None) -> dict:
    from datetime import datetime

    line = {"name": name, "state": "SUCCEED",
            "history": [{"state": "EXECUTING", "date": datetime.fromtimestamp(started).isoformat()}],
            "runtime": {"allocation": allocation, "pid": str(pid)}}
    if execution is not None:
        line["execution"] = execution
    return line


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run on two nodes: job `mpi` (mpirun under bash, two ranks on n1), iterations `it:0` on n2
    and `it:1` on n1; pid 500 is reused on n1 -- first an old process, then `it:1`'s shell."""
    wd = tmp_path / "wd"
    wd.mkdir()
    aux = wd / ".qcgpjm-service-h.1"
    _report(aux,
            _task("mpi", 100, "n1[0:1]", T0, {"exec": "/opt/app/solver", "model": "openmpi"}),
            _task("it:0", 200, "n2[0]", T0 + 1),
            _task("it:1", 500, "n1[1]", T0 + 100),
            {"name": "it", "state": "SUCCEED", "history": [], "runtime": {}, "execution": {"script": "work"}},
            _task("quick", 900, "n1[0]", T0 + 5, {"exec": "/bin/true"}))
    _ptrace(wd, "n1", [
        _proc(100, "mpirun", 1, T0 + 0.01, ["mpirun", "-np", "2", "/opt/app/solver"]),
        _proc(101, "solver", 100, T0 + 0.2, ["/opt/app/solver"]),
        _proc(102, "solver", 100, T0 + 0.25, ["/opt/app/solver"]),
        _proc(500, "old", 1, T0 - 50),
        _proc(500, "bash", 1, T0 + 100.01, ["bash", "-l", "-c", "work"]),
        _proc(501, "work", 500, T0 + 100.01),          # as old as its parent: the clock's 10 ms
    ])
    _ptrace(wd, "n2", [
        _proc(200, "bash", 1, T0 + 1.01, ["bash", "-l", "-c", "work"], node="n2"),
        _proc(201, "sleep", 200, T0 + 1.02, node="n2"),
        _proc(202, "work", 200, T0 + 1.03, node="n2"),
        _proc(203, "cat", 202, T0 + 1.5, node="n2"),
    ])
    return wd


def _root(wd: Path, job: str) -> tuple[pt.JobTask, pt.Proc]:
    aux = pt.find_aux_dir(str(wd))
    traces = pt.load_traces(pt.trace_dirs(str(wd), aux))
    task = pt.job_task(aux, job)
    return task, traces.find(task)


def test_tree_and_targets_of_an_mpi_job(run: Path) -> None:
    """Reference 16.2: the job's process (by pid, on its first node), its descendants, and the application
    processes named after the job's executable."""
    task, root = _root(run, "mpi")
    assert (task.pid, task.node, task.program) == (100, "n1", "solver")
    assert [(p.pid, level) for p, level in pt.walk(root)] == [(100, 0), (101, 1), (102, 1)]
    found, why = pt.targets(root, task.program)
    assert [p.pid for p in found] == [101, 102] and why == "named solver"


def test_a_reused_pid_is_told_apart_by_creation_time(run: Path) -> None:
    """Reference 16.1: "after finish of some process, another one with the same identifier will be created"."""
    task, root = _root(run, "it:1")
    assert (root.name, root.created) == ("bash", T0 + 100.01)
    assert [p.pid for p, _ in pt.walk(root)] == [500, 501]        # the child went to the right 500


def test_a_script_job_targets_the_leaves(run: Path) -> None:
    """A `script` job runs in bash: its application processes are the leaves of the shell's tree."""
    task, root = _root(run, "it:0")
    assert task.program == "bash" and root.node == "n2"          # the description of the job `it`
    found, why = pt.targets(root, task.program)
    assert sorted(p.pid for p in found) == [201, 203] and why == "leaf processes"


@pytest.mark.parametrize("job, message", [
    ("it", "job 'it' has iterations: name one, e.g. 'it:0'"),
    ("nope", "job 'nope' is not in"),
    ("quick", "job 'quick' (pid 900) is not in the process statistics: it probably ended before it was polled"),
])
def test_clear_errors_for_jobs(run: Path, job: str, message: str) -> None:
    with pytest.raises(pt.TraceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _root(run, job)


def test_a_pid_seen_only_long_before_the_job_is_not_the_job(run: Path) -> None:
    """The job's pid is in the records, but only as an earlier process: not mistaken for the job."""
    aux = run / ".qcgpjm-service-h.1"
    _report(aux, _task("late", 500, "n1[0]", T0 + 5000, {"exec": "x"}))
    with pytest.raises(pt.TraceError, match="pid 500 in the process statistics is another process"):
        _root(run, "late")


def test_missing_run_statistics_or_report(tmp_path: Path, run: Path) -> None:
    """Errors name what is missing: the run, the --enable-proc-stats files, a JSON report."""
    with pytest.raises(pt.TraceError, match="no QCG-PilotJob run in"):
        pt.find_aux_dir(str(tmp_path))
    for f in run.glob("ptrace_*"):
        f.unlink()
    aux = pt.find_aux_dir(str(run))
    with pytest.raises(pt.TraceError, match="was the run started with --enable-proc-stats"):
        pt.load_traces(pt.trace_dirs(str(run), aux))
    (Path(aux) / "jobs.report").write_text("mpi (...)\n  state: SUCCEED\n")
    with pytest.raises(pt.TraceError, match="not in JSON lines"):
        pt.job_task(aux, "mpi")
    (run / "ptrace_n1_20270115080000_00009.log").write_text('{"node": "n1", "processes": [')
    with pytest.raises(pt.TraceError, match="not a readable process statistics file"):
        pt.load_traces([str(run)])


def test_an_aux_dir_is_accepted_and_the_newest_run_is_taken(run: Path) -> None:
    """WD may be the aux dir itself; in a working directory with several runs, the newest."""
    aux = run / ".qcgpjm-service-h.1"
    assert pt.find_aux_dir(str(aux)) == str(aux)
    newer = run / ".qcgpjm-service-h.2"
    _report(newer, _task("other", 1, "n1[0]", T0))
    assert pt.find_aux_dir(str(run)) == str(newer)
    assert str(run) in pt.trace_dirs(str(newer), str(newer))


def test_only_the_lines_of_the_job_are_decoded(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big run's report is read line by line, and only lines naming the job are decoded; a name
    outside ASCII is found whether the report escapes it or not; a last line cut short by a kill
    does not hide the rest."""
    aux = run / ".qcgpjm-service-h.1"
    others = [_task(f"other{i}", 1000 + i, "n1[0]", T0) for i in range(500)]
    others += [_task(f"sweep:{i}", 2000 + i, "n1[0]", T0) for i in range(500)]
    lines = [json.dumps(line) for line in others]
    lines.append(json.dumps(_task("żuk", 100, "n1[0:1]", T0, {"exec": "/opt/app/solver"}), ensure_ascii=False))
    lines.append(json.dumps(_task("mpi", 100, "n1[0:1]", T0, {"exec": "/opt/app/solver"})))
    (aux / "jobs.report").write_text("\n".join(lines) + '\n{"name": "mpi", "state": "SUCC', encoding="utf-8")
    decoded: list[str] = []
    real_loads = json.loads
    monkeypatch.setattr(pt.json, "loads", lambda text, *a, **k: decoded.append(text) or real_loads(text, *a, **k))
    task = pt.job_task(str(aux), "mpi")
    assert task.pid == 100 and task.program == "solver"
    assert len(decoded) == 3          # the first line (is it JSON?), the job's line, the cut one
    decoded.clear()
    assert pt.job_task(str(aux), "żuk").program == "solver" and len(decoded) == 2
    decoded.clear()
    assert pt.job_task(str(aux), "sweep:7").pid == 2007 and len(decoded) == 2
    decoded.clear()
    with pytest.raises(pt.TraceError, match="job 'sweep' has iterations"):
        pt.job_task(str(aux), "sweep")
    assert len(decoded) == 2          # the first line, the first iteration's
