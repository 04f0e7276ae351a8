"""`qcg-pm-report` on real runs of `qcg-gov` (reference 14.2), flat and partitioned, and its error cases.

The figures of a real run are not known in advance; the tests check that they are consistent with
what was submitted and with each other. Exact values are checked in tests/unit/test_perf_report.py.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import MODES, Run, run_service, script_job, submit

REPORT = [sys.executable, "-m", "qcg.pilotjob.governor.report_cli"]
TIMEOUT = 60
ITERATIONS = 8
REQUESTS = [submit(
    script_job("first", "sleep 0.2"),
    {**script_job("sweep", "sleep 0.3"), "iteration": {"start": 0, "stop": ITERATIONS},
     "dependencies": {"after": ["first"]}},
)]

NO_MATPLOTLIB = None if importlib.util.find_spec("matplotlib") else \
    "matplotlib is not installed (pip install 'qcg-pilotjob[gantt]'): the charts cannot be drawn"


def report(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run((prefix or REPORT) + list(args), capture_output=True, text=True, timeout=TIMEOUT)


def figures(out: str) -> dict[str, str]:
    """`label: value` lines of a report."""
    pairs = (line.strip().split(": ", 1) for line in out.splitlines() if ": " in line)
    return {k: v for k, v in pairs}


def secs(value: str) -> float:
    return float(value.removesuffix(" secs").removesuffix("%"))


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module", params=MODES)
def rt_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A finished run with --enable-rt-stats on 2 nodes x 2 cores, flat and partitioned (one node each)."""
    tmp = tmp_path_factory.mktemp(f"rt-{request.param}")
    run = run_service(tmp, REQUESTS, "--enable-rt-stats", nodes="a:2,b:2", mode=request.param, timeout=TIMEOUT)
    run.check_mode()
    assert run.rc == 0, run.stderr
    return run


def test_stats_on_a_real_run(rt_run):
    """Reference 14.2.1: every task counted, resources and overheads consistent with final_status.json."""
    proc = report("stats", str(rt_run.wd))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    f = figures(proc.stdout)
    fs = rt_run.final_status()
    assert int(f["total jobs"]) == ITERATIONS + 1 == fs["IterationStats"]["TotalIterations"]
    assert f["failed jobs"] == "0"
    assert (int(f["total cores"]), int(f["total nodes"])) == (4, 2)
    assert f["service started"] == fs["System"]["Started"] and f["service finished"] == fs["System"]["Generated"]
    init, finish, total = secs(f["init overhead"]), secs(f["finish overhead"]), secs(f["total overhead"])
    assert init >= 0 and finish >= 0
    assert total == pytest.approx(init + finish, abs=0.011)
    assert 0.0 <= float(f["overhead ratio"]) <= 100.0
    assert total <= secs(f["service runtime"])
    assert float(f["overhead core-hours"]) >= 0


def test_launch_stats_on_a_real_run(rt_run):
    """Reference 14.2.2 with --enable-rt-stats: qcg_finish is in the report, so all ten figures are there."""
    entries = [e for e in rt_run.report_lines() if e["runtime"].get("allocation")]
    assert entries and all("qcg_finish" in e["runtime"] for e in entries), \
        "--enable-rt-stats runs must report runtime.qcg_finish for each task that ran"
    proc = report("launch-stats", str(rt_run.wd))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    f = figures(proc.stdout)
    assert int(f["generated for total jobs"]) == ITERATIONS + 1
    start, finish, both = (float(f[k]) for k in ("total start overhead", "total finish overhead",
                                                  "total start and finish overhead"))
    assert start >= 0 and finish >= 0 and both == pytest.approx(start + finish, abs=2e-4)
    assert 0.2 <= float(f["average real job run time"]) < 5
    assert float(f["average qcg job run time"]) >= float(f["average real job run time"]) - 1e-3
    assert float(f["average job overhead per runtime (%)"]) >= 0


def test_rusage_and_efficiency_on_a_real_run(rt_run):
    """Reference 14.2.5 and 14.2.6: used cores <= total, percentages in 0..100, efficiency >= rusage."""
    proc = report("rusage", "--details", str(rt_run.wd))
    assert proc.returncode == 0, proc.stderr
    f = figures(proc.stdout)
    used = int(f["used cores"])
    assert 1 <= used <= 4
    rusage = secs(f["average core utilization (%)"])
    assert 0.0 < rusage <= 100.0
    core_lines = [line for line in proc.stdout.splitlines() if "unused" in line]
    assert len(core_lines) == used
    assert {line.strip() for line in proc.stdout.splitlines() if line.startswith("\t") and
            not line.startswith("\t\t") and ":" not in line} <= {"a", "b"}
    proc = report("efficiency", str(rt_run.wd))
    assert proc.returncode == 0, proc.stderr
    f = figures(proc.stdout)
    assert int(f["used cores"]) == used
    assert rusage - 0.1 <= secs(f["average core utilization (%)"]) <= 100.0


@pytest.mark.skipif(NO_MATPLOTLIB is not None, reason=NO_MATPLOTLIB or "")
@pytest.mark.parametrize("command, name, magic", [("gantt", "g.png", b"\x89PNG"), ("gantt-gaps", "g.pdf", b"%PDF"),
                                                   ("gantt", "g.jpeg", b"\xff\xd8")])
def test_gantt_charts(rt_run, tmp_path, command, name, magic):
    """Reference 14.2.3 / 14.2.4: the chart is written in the format of the file's extension."""
    out = tmp_path / name
    proc = report(command, str(rt_run.aux), str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(magic)
    assert str(out) in proc.stdout


def test_gantt_without_matplotlib(rt_run, tmp_path):
    """Reference 14.2.3: without matplotlib, one line saying how to install it, and no file."""
    block = ["-c", "import sys; sys.modules['matplotlib'] = None; "
                   "from qcg.pilotjob.governor.report_cli import main; main(sys.argv[1:])"]
    for command in ("gantt", "gantt-gaps"):
        out = tmp_path / "g.png"
        line = one_error_line(report(command, str(rt_run.wd), str(out), prefix=[sys.executable] + block))
        assert "pip install matplotlib" in line and "gantt" in line
        assert not out.exists()


def test_console_script_installed():
    """Reference 14.2: the program is called `qcg-pm-report`."""
    exe = shutil.which("qcg-pm-report")
    assert exe, "qcg-pm-report is not on PATH: reinstall the package (pip install -e .)"
    proc = report("--help", prefix=[exe])
    assert proc.returncode == 0
    for command in ("stats", "launch-stats", "gantt", "gantt-gaps", "rusage", "efficiency"):
        assert command in proc.stdout


def test_launch_stats_without_rt_stats(tmp_path):
    """Reference 14.2.2: a run without --enable-rt-stats has no qcg_finish; the start figures and a note."""
    run = run_service(tmp_path, REQUESTS, nodes="2", timeout=TIMEOUT)
    assert run.rc == 0, run.stderr
    proc = report("launch-stats", str(run.wd))
    assert proc.returncode == 0
    f = figures(proc.stdout)
    assert int(f["generated for total jobs"]) == ITERATIONS + 1
    assert "total finish overhead" not in f
    assert "--enable-rt-stats" in proc.stderr


def test_error_missing_directory(tmp_path):
    line = one_error_line(report("stats", str(tmp_path / "nothing")))
    assert "nothing" in line and "no such directory" in line


def test_error_no_aux_dir(tmp_path):
    """A directory that is no run's working directory."""
    assert "no QCG-PilotJob aux directory" in one_error_line(report("rusage", str(tmp_path)))


def test_error_text_report(tmp_path):
    """A run with --report-format text: refused with the option that makes a readable report."""
    run = run_service(tmp_path, REQUESTS, "--report-format", "text", nodes="2", timeout=TIMEOUT)
    assert run.rc == 0, run.stderr
    line = one_error_line(report("stats", str(run.wd)))
    assert "text format" in line and "--report-format json" in line


def test_error_empty_run(tmp_path):
    """A run that got no tasks: nothing to analyse, said in one line."""
    run = run_service(tmp_path, [], nodes="2", timeout=TIMEOUT)
    assert run.rc == 0, run.stderr
    for command in ("stats", "launch-stats", "rusage", "efficiency"):
        assert "empty run" in one_error_line(report(command, str(run.wd)))


def test_error_killed_run_without_final_status(rt_run, tmp_path):
    """A run killed before final_status.json: stats says why it cannot; launch-stats still works."""
    aux = tmp_path / ".qcgpjm-service-copy"
    aux.mkdir()
    shutil.copy(rt_run.aux / "jobs.report", aux / "jobs.report")
    assert "final_status.json: missing" in one_error_line(report("stats", str(tmp_path)))
    assert report("launch-stats", str(tmp_path)).returncode == 0


def test_error_unsupported_chart_type(rt_run, tmp_path):
    assert "unsupported chart file type" in one_error_line(report("gantt", str(rt_run.wd), str(tmp_path / "g.txt")))


def test_error_malformed_report(tmp_path):
    aux = tmp_path / ".qcgpjm-service-x"
    aux.mkdir()
    (aux / "jobs.report").write_text(json.dumps({"name": "a", "state": "SUCCEED"}) + "\n{broken\n")
    assert "line 2 is not JSON" in one_error_line(report("stats", str(tmp_path)))
