"""The command line that starts one node agent (srun, ssh or a local process).

Kept apart from the launcher (and light to import) so that a partition
manager can start its agents first thing, before it loads everything else.
"""

from __future__ import annotations

import shlex
import sys

from qcg.pilotjob.agent.allocation_env import command_prefix

AGENT_HEARTBEAT = 2.0      # agent -> partition heartbeat period
DEFAULT_SSH = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]


def agent_command(start_method: str, node: str, address: str | None, keys_dir: str,
                  ssh_command: list[str] | None = None, address_file: str | None = None,
                  proc_stats_dir: str | None = None) -> list[str]:
    """The agent's argv; with `address_file` (and no address) it waits for the address in that file."""
    agent = [sys.executable, "-m", "qcg.pilotjob.agent",
             *agent_args(node, address, keys_dir, address_file, proc_stats_dir)]
    if start_method == "slurm":
        # the agent's tasks get the allocation's SLURM_* values, not those srun sets for the agent's step;
        # --whole: the step (and so every task) may use all of the job's CPUs on the node -- with cgroups a
        # step of one task gets one CPU, and every task would run on it (the original: --cpus-per-task)
        return ["srun", "--overlap", "--whole", "-N", "1", "-n", "1", f"--nodelist={node}", "--cpu-bind=none",
                "--mem-per-cpu=0", "--kill-on-bad-exit=0", "--export=ALL", *command_prefix(), *agent]
    if start_method == "ssh":
        # ssh hands the remote side one command line: quote every argument
        return [*(ssh_command or DEFAULT_SSH), node, shlex.join([*command_prefix(everything=True), *agent])]
    return agent


def agent_args(node: str, address: str | None, keys_dir: str, address_file: str | None = None,
               proc_stats_dir: str | None = None) -> list[str]:
    """The agent's own options (`qcg.pilotjob.agent.agent.main` takes them as its argv).

    `proc_stats_dir` (`--enable-proc-stats`): the agent records its tasks' processes and writes its
    ptrace file there when it ends.
    """
    where = ["--address", address] if address else ["--address-file", str(address_file)]
    stats = ["--proc-stats-dir", proc_stats_dir] if proc_stats_dir else []
    return [*where, "--node", node, "--keys", keys_dir, "--heartbeat", str(AGENT_HEARTBEAT), *stats]
