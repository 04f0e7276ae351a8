"""Which CPUs of each node Slurm gave the job: `CPU_IDs` of ``scontrol show job --detail``.

The environment tells how many CPUs the job has on each node, not which:
two jobs that share a node (one CPU each on a 2-CPU node) both read
``SLURM_JOB_CPUS_PER_NODE=1``, and with ids taken as ``0..n-1`` both bound
their tasks to CPU 0 while CPU 1 idled (helper report; on a cluster that
does not confine jobs with cgroups nothing stops that). The original asks
scontrol for the same reason. One call at start; any failure (no scontrol,
a slow controller, output in another form) leaves the ids as they were.

The output lists ``Nodes=<hostlist> CPU_IDs=<ranges> Mem=...`` groups, one
per set of nodes with the same CPUs, e.g.::

    Nodes=n5 CPU_IDs=0-1 Mem=0 GRES=
    Nodes=n[6-7] CPU_IDs=0 Mem=0 GRES=
"""

from __future__ import annotations

import re
import subprocess

import hostlist

TIMEOUT = 10.0          # seconds scontrol may take (a busy controller); then the ids stay 0..n-1

_GROUP = re.compile(r"(?:^|\s)Nodes=(\S+)\s+CPU_IDs=(\S+)")


def parse_cpu_ids(text: str) -> dict[str, list[int]]:
    """Node name -> its CPU ids, from the text of ``scontrol show job --detail``; ValueError if malformed."""
    out: dict[str, list[int]] = {}
    for nodes, ids in _GROUP.findall(text):
        cpus: list[int] = []
        for part in ids.split(","):
            first, _, last = part.partition("-")
            lo, hi = int(first), int(last or first)
            if hi < lo:
                raise ValueError(f"CPU_IDs={ids!r}: descending range {part!r}")
            cpus.extend(range(lo, hi + 1))
        for node in hostlist.expand_hostlist(nodes):
            out[node] = cpus
    return out


def allocated_cpu_ids(job_id: str, timeout: float = TIMEOUT) -> dict[str, list[int]]:
    """The CPU ids of each node of job `job_id` ({} when scontrol cannot tell)."""
    try:
        done = subprocess.run(["scontrol", "show", "job", "--detail", "--oneliner", job_id], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    if done.returncode != 0:
        return {}
    try:
        return parse_cpu_ids(done.stdout)
    except (ValueError, hostlist.BadHostlist):
        return {}
