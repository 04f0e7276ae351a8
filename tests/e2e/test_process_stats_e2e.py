"""`--enable-proc-stats` and `qcg-pm-processes` on real runs (reference 16.1 "How it works", 16.2 "How to use").

The jobs live over several polls (one a second), so their processes are
seen; `quick` ends before any poll can see it. Every run and every
`qcg-pm-processes` call is bounded by a timeout.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import job, submit

TOOL = [sys.executable, "-c", "from qcg.pilotjob.governor.processes_cli import program; program()"]
TIMEOUT = 60
NAME = re.compile(r"^ptrace_[^_]+_\d{14}_\d{5}\.log$")

JOBS = [submit(
    job("twice", "bash", ["-c", "sleep 1.5; sleep 1.5"]),
    job("app", "sleep", ["2.5"]),
    job("quick", "/bin/true"),
    {"name": "its", "iteration": {"stop": 2}, "execution": {"script": "sleep 2.5 & sleep 2.6; wait"}},
)]


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOL, *args], capture_output=True, text=True, timeout=TIMEOUT)


def _pid(run, name: str) -> int:
    return int(run.report()[name]["runtime"]["pid"])


@pytest.mark.both_modes
def test_process_tree_and_apps_of_a_run(service) -> None:
    """Reference 16.2: with --enable-proc-stats the working directory holds ptrace_{node}_{date}_{random}.log
    files (one per partition manager in partitioned mode); `tree` prints a job's process and its descendants
    with node and creation delay, `apps` the application processes with their statistics."""
    run = service(JOBS, "--enable-proc-stats")
    assert run.rc == 0, run.stderr
    files = [p.name for p in run.wd.glob("ptrace_*")]
    assert files and all(NAME.match(f) for f in files), files
    assert len(files) == (2 if run.mode == "partitioned" else 1), files
    twice = _pid(run, "twice")

    out = tool("tree", str(run.wd), "twice")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"job twice, job process id {twice}, application name bash", out.stdout
    assert re.match(rf"^  --{twice}:\w+ \(.*\) node\(\S+\) created \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{6}}$",
                    lines[1]), out.stdout
    # bash ran the first sleep as a child (it execs the last command itself)
    assert re.match(r"^    --\d+:sleep \(sleep 1\.5\) node\(\S+\) after \d+\.\d\d secs$", lines[2]), out.stdout

    out = tool("apps", str(run.wd), "twice")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("found 1 target processes"), out.stdout
    assert re.match(r"^\d+:sleep$", lines[1]), out.stdout
    fields = [line.split(":", 1)[0].strip() for line in lines[2:]]
    assert fields == ["created", "cmdline", "parent", "node", "cpu affinity", "cpu times", "cpu memory info",
                      "cpu memory percent"], out.stdout
    assert f"    parent: {twice}:bash" in lines, out.stdout
    assert re.search(r"^    cpu times: \[[\d., ]+\]$", out.stdout, re.M), out.stdout

    out = tool("apps", str(run.wd), "app", "its:1")          # an executable by name; a script's leaves
    assert out.returncode == 0, out.stderr
    assert "found 1 target processes (named sleep)" in out.stdout, out.stdout
    assert f"{_pid(run, 'app')}:sleep" in out.stdout
    leaves = re.search(r"found (\d+) target processes \(leaf processes\)", out.stdout)
    assert leaves and int(leaves[1]) >= 2, out.stdout       # a login shell may show more that lived long
    assert "cmdline: sleep 2.5" in out.stdout and "cmdline: sleep 2.6" in out.stdout

    out = tool("tree", str(run.aux), "its:0")                # the aux dir itself is accepted too
    assert out.returncode == 0 and f"job process id {_pid(run, 'its:0')}" in out.stdout, out.stderr


def test_errors_are_one_line_and_exit_1(service, tmp_path: Path) -> None:
    """16.2's tool on what it cannot answer: a job too short to be polled (16.1: "very short living process
    will not be registered"), an unknown job, an iterative job without an iteration, no run at all."""
    run = service(JOBS, "--enable-proc-stats")
    assert run.rc == 0, run.stderr
    cases = {
        "quick": f"Error: job 'quick' (pid {_pid(run, 'quick')}) is not in the process statistics: it probably "
                 f"ended before it was polled (every 1 s, reference 16.1)",
        "nope": f"Error: job 'nope' is not in {run.aux}/jobs.report",
        "its": "Error: job 'its' has iterations: name one, e.g. 'its:0'",
    }
    for name, message in cases.items():
        out = tool("tree", str(run.wd), name)
        assert (out.returncode, out.stderr.strip(), out.stdout) == (1, message, ""), name
    out = tool("apps", str(run.wd), "nope", "twice")         # the others are still answered
    assert out.returncode == 1 and "found 1 target processes" in out.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tool("tree", str(empty), "twice")
    assert out.returncode == 1 and out.stderr.startswith("Error: no QCG-PilotJob run in"), out.stderr
    out = tool("tree", str(tmp_path / "missing"), "twice")
    assert out.returncode == 1 and out.stderr.strip().endswith("is not a directory"), out.stderr
    assert "Traceback" not in out.stderr


def test_without_the_flag_nothing_is_written(service) -> None:
    """--enable-proc-stats off (the default): no ptrace file, and the tool says which flag was missing."""
    run = service([submit(job("app", "sleep", ["1.2"]))])
    assert run.rc == 0, run.stderr
    assert not list(run.wd.glob("ptrace_*")) and not list(run.aux.rglob("ptrace_*"))
    out = tool("apps", str(run.wd), "app")
    assert out.returncode == 1, out.stdout
    assert "was the run started with --enable-proc-stats?" in out.stderr and out.stderr.startswith("Error: ")
