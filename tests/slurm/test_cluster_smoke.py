"""Quick checks that the Slurm test cluster (deploy/slurm-cluster.sh) and the
loopback sshd (deploy/sshd.sh) behave like a real multi-node Slurm."""

from __future__ import annotations

import shlex
import subprocess
from collections import Counter

import pytest

from tests.slurm_env import Sshd, SlurmCluster, clean_env

pytestmark = pytest.mark.slurm

TIMEOUT = 120


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT, env=clean_env())
    assert proc.returncode == 0, f"{argv} exited with {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def test_salloc_srun_spans_four_virtual_nodes(slurm_cluster: SlurmCluster) -> None:
    ntasks = 4 * slurm_cluster.cpus_per_node
    proc = run(["salloc", "-N4", f"-n{ntasks}", "-t", "5", "srun", "-N4", f"-n{ntasks}",
                "printenv", "SLURMD_NODENAME"])
    names = Counter(proc.stdout.split())
    assert len(names) == 4, proc.stdout
    assert set(names) <= set(slurm_cluster.nodes)
    assert sum(names.values()) == ntasks
    # `hostname` is the same everywhere: only SLURMD_NODENAME tells the nodes apart.
    hosts = set(run(["srun", "-N2", "-n2", "-t", "5", "hostname"]).stdout.split())
    assert len(hosts) == 1


def test_srun_ntasks_per_node_spreads_evenly(slurm_cluster: SlurmCluster) -> None:
    per_node = min(2, slurm_cluster.cpus_per_node)
    proc = run(["srun", "-N3", f"-n{3 * per_node}", f"--ntasks-per-node={per_node}", "-t", "5",
                "bash", "-c", 'echo "$SLURMD_NODENAME $SLURM_PROCID"'])
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    per = Counter(node for node, _ in rows)
    assert len(per) == 3 and set(per.values()) == {per_node}, proc.stdout
    assert sorted(int(rank) for _, rank in rows) == list(range(3 * per_node))


@pytest.mark.ssh
def test_ssh_login_runs_srun_inside_allocation(slurm_cluster: SlurmCluster, sshd: Sshd) -> None:
    # Inside an allocation, log in through the loopback sshd (which passes no
    # SLURM_* variables) and start a step of that allocation with --jobid.
    remote = 'test -n "$SSH_CONNECTION" && srun --jobid="$1" -N2 -n2 printenv SLURMD_NODENAME'
    ssh = shlex.join(sshd.argv(f"bash -c {shlex.quote(remote)} _"))
    proc = run(["salloc", "-N2", "-n2", "-t", "5", "bash", "-c", f'{ssh} "$SLURM_JOB_ID"'])
    names = proc.stdout.split()
    assert len(names) == 2 and len(set(names)) == 2, proc.stdout
    assert set(names) <= set(slurm_cluster.nodes)
