"""Entry point of a partition manager started by a governor (`--slurm-partition-nodes`).

Runs `partition.early_agents.start_early` before anything heavy is imported,
so the node agents come up while the manager loads; then it is the normal
command line (`governor/cli.py`) with the same arguments. Falls back to the
normal start of the agents when the early start is not possible.
"""

from __future__ import annotations

import json
import os
import sys


def _value(argv: list[str], option: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == option:
            return argv[i + 1]
    return None


def _start_agents_early(argv: list[str]) -> None:
    method = _value(argv, "--nl-start-method") or "slurm"
    resources_file = _value(argv, "--slurm-resources-file")
    aux_dir = _value(argv, "--aux-dir")
    if "--disable-nl" in argv or method not in ("slurm", "ssh") or not resources_file or not aux_dir:
        return
    try:
        with open(resources_file, encoding="utf-8") as fh:
            nodes = [n["name"] for n in json.load(fh)["nodes"]]
        from qcg.pilotjob.governor.aux_dir import make_or_reuse

        make_or_reuse(aux_dir)          # mode 0700 whatever the umask: the normal start checks it
        from qcg.pilotjob.partition.early_agents import start_early

        # srun put this manager on the first node of its group: that node's agent is forked, not started
        own = os.environ.get("SLURMD_NODENAME") if method == "slurm" else None
        # --enable-proc-stats: the agents write their ptrace files into the run's working directory
        stats_dir = os.path.abspath(_value(argv, "--wd") or ".") if "--enable-proc-stats" in argv else None
        start_early(nodes, start_method=method, keys_dir=os.path.join(aux_dir, "agent-keys"), err_dir=aux_dir,
                    own_node=own, proc_stats_dir=stats_dir)
    except Exception as exc:  # noqa: BLE001 - any failure here has the normal start as its fallback
        # the manager starts its agents the usual way (and reports what is wrong with its input)
        print(f"early agent start skipped: {exc}", file=sys.stderr)


def main() -> None:
    argv = sys.argv[1:]
    from qcg.pilotjob.agent.allocation_env import restore
    from qcg.pilotjob.agent.service_env import adopt_file

    restore()       # started by srun or ssh: the allocation's variables back, before the agents inherit them
    adopt_file()    # started by ssh: the governor's environment, which the agents and tasks must get
    _start_agents_early(argv)
    from qcg.pilotjob.governor.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    from qcg.pilotjob.agent.process_end import run_then_exit
    from qcg.pilotjob.agent.process_setup import keep_tls_out

    keep_tls_out()      # before the early agents and the manager load asyncio (and with it OpenSSL)

    run_then_exit(main)
