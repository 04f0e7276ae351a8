"""`--enable-proc-stats` inside a real Slurm allocation: one ptrace file per node agent (reference 16.1, 16.2).

Agents started by srun, by ssh, and by partition managers (which start theirs
early, and fork the one of their own node). Each allocation has a Slurm
time limit and the run a timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm_env import clean_env

pytestmark = pytest.mark.slurm

TIMEOUT = 180
TOOL = [sys.executable, "-c", "from qcg.pilotjob.governor.processes_cli import program; program()"]


@pytest.mark.parametrize("method, extra", [("slurm", []), ("ssh", []), ("slurm", ["--slurm-partition-nodes", "1"])],
                         ids=["srun-agents", "ssh-agents", "partition-managers"])
def test_every_node_agent_writes_its_ptrace_file(tmp_path: Path, method: str, extra: list[str], request) -> None:
    """Reference 16.2: "the working directory should contain one or many (for each of allocation nodes there
    should be instance of this file) files named ptrace_{node_name}_{current_date}_{random_number}.log";
    each records the tasks its agent started, and `qcg-pm-processes tree` finds a job on either node."""
    if method == "ssh":
        request.getfixturevalue("sshd")
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([{"request": "submit", "jobs": [
        {"name": "w", "iteration": {"stop": 4}, "execution": {"exec": "bash", "args": ["-c", "sleep 2 & wait"]}}]}]))
    wd = tmp_path / "wd"
    cmd = ["salloc", "-N2", "-n4", "-t", "5", sys.executable, "-m", "qcg.pilotjob.service", "--file-path",
           str(reqs), "--wd", str(wd), "--nl-start-method", method, "--enable-proc-stats", *extra]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
                          env=clean_env())
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    aux = next(wd.glob(".qcgpjm-service-*"))
    report = {r["name"]: r for r in map(json.loads, (aux / "jobs.report").read_text().splitlines())}
    nodes = {report[f"w:{i}"]["runtime"]["allocation"].split("[")[0] for i in range(4)}
    assert len(nodes) == 2, report

    files = sorted(wd.glob("ptrace_*.log"))
    per_node = {json.loads(f.read_text())["node"]: f for f in files}
    assert sorted(per_node) == sorted(nodes) and len(files) == 2, [f.name for f in files]
    for node, path in per_node.items():
        assert path.name.startswith(f"ptrace_{node}_"), path.name
        doc = json.loads(path.read_text())
        shells = [p for p in doc["processes"] if p["cmdline"] == ["bash", "-c", "sleep 2 & wait"]]
        assert len(shells) == 2, doc                       # two single-core tasks per 2-core node
        assert all(p["node"] == node and len(p["cpu_affinity"]) == 1 for p in shells), shells
    for i in range(4):
        out = subprocess.run([*TOOL, "tree", str(wd), f"w:{i}"], capture_output=True, text=True, timeout=60)
        node = report[f"w:{i}"]["runtime"]["allocation"].split("[")[0]
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert f"--{report[f'w:{i}']['runtime']['pid']}:bash (bash -c sleep 2 & wait) node({node}) created" \
            in lines[1], out.stdout
        assert "--" in lines[2] and ":sleep (sleep 2) node(" in lines[2], out.stdout
