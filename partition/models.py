"""Execution models (reference: "Execution models").

`build_launch()` turns a task's Execution (placeholders already substituted)
and its Allocation into a `LaunchCommand`: the argv to spawn, the extra
environment the model needs, the helper files to delete after the task and
the CPUs to bind the spawned process to.

Rules and choices (differences from the original are marked *):

* A single-core allocation (one node, one core) runs the program directly
  whatever the model, as the original does (an MPI program starts as a
  singleton); ``threads`` still gets ``OMP_NUM_THREADS=1``.
* ``default``: ``exec args``; a ``script`` runs as ``bash -c SCRIPT`` (not the
  original's login shell: see `_program`; ``modules`` get one). Bound
  to the cores of the first node when binding.
* ``threads``: single node only. The governor sizes such a job on one node
  (governor/admission.py); a multi-node allocation that still comes here is an error.
  ``OMP_NUM_THREADS`` = number of cores, unless the job sets it itself (*).
  Local mode: the program itself, bound to the cores. Slurm mode:
  ``srun -N 1 -n 1 --cpus-per-task=N ... --cpu-bind=verbose,mask_cpu:M``.
* ``openmpi``: Slurm mode: ``mpirun -np N --rankfile F [mpirun_args] prog``
  with ``rank i=<node> slot=<core>`` lines (core ids as OpenMPI slots; add
  ``--mca rmaps_rank_file_physical 1`` to mpirun_args for physical ids);
  mpirun's daemons keep to the task's nodes through the task's
  ``OMPI_MCA_plm_slurm_args`` (see partition/environment.py).
  Local mode (*): the node names are virtual, so all ranks run on this host:
  ``mpirun -np N --host localhost:N --bind-to none [mpirun_args] prog`` —
  declaring N slots on localhost makes ``--oversubscribe`` unnecessary even
  when N exceeds the real cores, and ``--bind-to none`` (left out when the
  user passes ``--bind-to``) keeps ranks off cores other tasks use.
  The model does NOT set ``OMPI_MCA_btl``: ``self,tcp`` is only needed on the
  virtual test cluster (shared /dev/shm) and would slow real MPI down; nor
  the ``OMPI_ALLOW_RUN_AS_ROOT*`` pair — set them in the job's env if needed.
* ``intelmpi``: Slurm mode: ``mpirun [mpirun_args] -n k -host node -env
  I_MPI_PIN_PROCESSOR_LIST c0,c1 prog : ...`` one component per node (*
  Hydra's ``-env NAME VALUE`` form), ``I_MPI_PIN=1``. Local mode:
  ``mpirun -n N -hosts localhost [mpirun_args] prog``.
* ``srunmpi``: Slurm mode only. When every node has k cores: ``srun -N n
  -n N --nodelist=a,b --overlap --overcommit --mem-per-cpu=0
  --ntasks-per-node=k`` (the node list keeps the step on the task's nodes,
  not on the allocation's first ones). Otherwise ``srun -N n -n N --overlap
  --overcommit --mem-per-cpu=0 -m arbitrary`` with ``SLURM_HOSTFILE``
  (written to the scratch dir, one line per rank), which both picks the
  nodes and places the ranks; no ``--nodelist`` then, as in the original:
  srun would use it instead of the hostfile and reject it (``You asked for
  3 tasks but hostlist specified 2 nodes``). Both forms then take
  ``--cpu-bind=verbose,mask_cpu:m0,m1,...`` where mask i is
  for the i-th task *on each node* (srun applies one list on every node); it
  is exact when the nodes use the same core ids, otherwise mask i is the
  union of the nodes' i-th cores. ``model_opts.srun_args`` (the original's
  key) and ``mpirun_args`` are appended.
* ``modules`` / ``venv``: the final argv is run through a fixed login-shell
  script; module names, the venv path and the argv are positional
  parameters, never joined into shell text:
  ``bash -l -c WRAPPER qcg-task <nmods> mod... <venv|''> argv...``.
  Module load failures do not stop the task (as in the original). A script
  inside the wrapper runs as ``bash -c`` (a second login shell would reset
  PATH from /etc/profile and undo the venv activation).
* Helper files (rankfile, hostfile) go to `scratch_dir`, never to the job's
  working directory (*: the original leaves them in the wd).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from qcg.pilotjob.partition.task import Allocation

MODELS = ("default", "threads", "openmpi", "intelmpi", "srunmpi")

# Positional parameters: $1 = number of modules, then the modules, then the
# venv path (may be empty), then the argv to exec.
WRAPPER_SCRIPT = (
    'n=$1; shift; mods=("${@:1:$n}"); shift "$n"; venv=$1; shift; '
    'if [ "$n" -gt 0 ]; then module load "${mods[@]}"; fi; '
    'if [ -n "$venv" ]; then source -- "$venv/bin/activate"; fi; '
    'exec -- "$@"'          # `--`: a program or venv path starting with '-' is no option of theirs
)
WRAPPER_ARGV0 = "qcg-task"


class ModelError(ValueError):
    """The execution model cannot run this task on this allocation."""


@dataclass(slots=True)
class LaunchCommand:
    argv: list[str]
    env_extra: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)     # delete after the task
    cpus: list[int] | None = None                      # bind the spawned process


def _program(ex: Any, wrapped: bool) -> list[str]:
    if ex.exec:
        return [ex.exec, *map(str, ex.args or ())]
    if ex.script:
        # a plain (non-login) shell, as the issue asks: a login shell per task re-reads the
        # profile (pyenv rehash, module init ...) and costs tens of milliseconds
        return ["bash", "-c", ex.script]
    raise ModelError("execution has neither 'exec' nor 'script'")


def _opts(ex: Any) -> dict:
    return dict(getattr(ex, "model_opts", None) or {})


def _list_opt(opts: dict, key: str) -> list[str]:
    val = opts.get(key)
    if val is None:
        return []
    if isinstance(val, str):
        raise ModelError(f"model_opts.{key} must be a list of strings, not a string")
    return [str(v) for v in val]


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def helper_file(scratch_dir: str, name: str, suffix: str, lines: list[str]) -> str:
    """Write `lines` to a new private (0600) file in `scratch_dir`, named after `name`; its path."""
    import tempfile     # here: it loads shutil, bz2, lzma and random (4 ms, 0.6 MB); local runs seldom need it

    os.makedirs(scratch_dir, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f"{_SAFE.sub('_', name)[:64]}.", suffix=suffix, dir=scratch_dir)
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def hostfile_lines(allocation: Allocation) -> list[str]:
    """A Slurm hostfile of the allocation: the node's name once per core, nodes in allocation order."""
    return [node for node, cores in allocation.nodes for _ in cores]


def wrap_modules_venv(argv: list[str], modules: list[str] | tuple[str, ...] | None,
                      venv: str | None) -> list[str]:
    mods = [str(m) for m in (modules or ())]
    # `module` is defined by the login profile; a venv alone needs no login shell
    shell = ["bash", "-l", "-c"] if mods else ["bash", "-c"]
    return [*shell, WRAPPER_SCRIPT, WRAPPER_ARGV0, str(len(mods)), *mods, venv or "", *argv]


def _local_mask(allocation: Allocation) -> str:
    """mask_cpu list for srun: entry i covers the i-th core of every node."""
    width = max(len(c) for _, c in allocation.nodes)
    masks = []
    for i in range(width):
        m = 0
        for _, cores in allocation.nodes:
            if i < len(cores):
                m |= 1 << cores[i]
        masks.append(hex(m))
    return ",".join(masks)


def build_launch(execution: Any, allocation: Allocation, *, local: bool, scratch_dir: str,
                 name: str = "task", binding: bool | None = None) -> LaunchCommand:
    """Build the command for one task.

    `local`: local mode (virtual nodes, everything on this host) versus a
    Slurm allocation. `binding`: bind to the allocated cores (default: only
    in a Slurm allocation, as the reference says). `name` only labels helper
    files. Raises ModelError with a clear message when the model cannot run.
    """
    if binding is None:
        binding = not local
    model = (getattr(execution, "model", None) or "default").lower()
    if model not in MODELS:
        raise ModelError(f"unknown execution model '{model}' (known: {', '.join(MODELS)})")
    if not allocation.nodes or allocation.ncores < 1:
        raise ModelError("empty allocation")
    modules = tuple(getattr(execution, "modules", None) or ())
    venv = getattr(execution, "venv", None) or None
    wrapped = bool(modules or venv)
    prog = _program(execution, wrapped)
    job_env = getattr(execution, "env", None) or {}
    opts = _opts(execution)
    nnodes, ncores = allocation.nnodes, allocation.ncores
    first_cores = list(allocation.nodes[0][1])

    cmd: LaunchCommand
    single = nnodes == 1 and ncores == 1

    if model == "threads":
        if nnodes != 1:
            raise ModelError(f"model 'threads' runs on a single node, but the allocation has "
                             f"{nnodes} nodes ({allocation.describe()}); request numNodes=1")
        env = {} if "OMP_NUM_THREADS" in job_env else {"OMP_NUM_THREADS": str(ncores)}
        if local or single:
            cmd = LaunchCommand(prog, env, [], first_cores if binding else None)
        else:
            node, cores = allocation.nodes[0]
            bind = f"--cpu-bind=verbose,mask_cpu:{hex(sum(1 << c for c in cores))}" if binding \
                else "--cpu-bind=verbose,cores"
            argv = ["srun", "-N", "1", "-n", "1", f"--nodelist={node}", f"--cpus-per-task={ncores}",
                    "--overlap", "--overcommit", "--mem-per-cpu=0", bind, *prog]
            cmd = LaunchCommand(argv, env)
    elif model == "default" or single:
        cmd = LaunchCommand(prog, {}, [], first_cores if binding else None)
    elif model == "openmpi":
        mpirun = opts.get("mpirun") or "mpirun"
        margs = _list_opt(opts, "mpirun_args")
        if local:
            argv = [mpirun, "-np", str(ncores), "--host", f"localhost:{ncores}"]
            if not any(a.startswith("--bind-to") or a == "-bind-to" for a in margs):
                argv += ["--bind-to", "none"]
            cmd = LaunchCommand([*argv, *margs, *prog])
        else:
            lines, rank = [], 0
            for node, cores in allocation.nodes:
                for core in cores:
                    lines.append(f"rank {rank}={node} slot={core}")
                    rank += 1
            rankfile = helper_file(scratch_dir, name, ".rankfile", lines)
            cmd = LaunchCommand([mpirun, "-np", str(ncores), "--rankfile", rankfile, *margs, *prog],
                                {}, [rankfile])
    elif model == "intelmpi":
        mpirun = opts.get("mpirun") or "mpirun"
        margs = _list_opt(opts, "mpirun_args")
        if local:
            cmd = LaunchCommand([mpirun, "-n", str(ncores), "-hosts", "localhost", *margs, *prog])
        else:
            argv = [mpirun, *margs]
            for i, (node, cores) in enumerate(allocation.nodes):
                if i:
                    argv.append(":")
                argv += ["-n", str(len(cores)), "-host", node]
                if binding:
                    argv += ["-env", "I_MPI_PIN_PROCESSOR_LIST", ",".join(map(str, cores))]
                argv += prog
            env = {"I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS": "--overlap --mem-per-cpu=0 --cpu-bind=none"}
            if binding:
                env["I_MPI_PIN"] = "1"
            cmd = LaunchCommand(argv, env)
    else:  # srunmpi
        if local:
            raise ModelError("model 'srunmpi' needs a Slurm allocation (srun); in local mode "
                             "use 'openmpi' or 'intelmpi'")
        counts = [len(c) for _, c in allocation.nodes]
        even = all(c == counts[0] for c in counts)
        argv = ["srun", "-N", str(nnodes), "-n", str(ncores)]
        if even:
            # the node list keeps the step on the task's nodes (srun would take the allocation's first)
            argv.append(f"--nodelist={','.join(allocation.node_names)}")
        argv += ["--overlap", "--overcommit", "--mem-per-cpu=0"]
        env: dict[str, str] = {}
        files: list[str] = []
        if even:
            argv.append(f"--ntasks-per-node={counts[0]}")
        else:
            # the hostfile (one line per rank) picks the nodes and places the ranks; an explicit
            # --nodelist would replace it and srun rejects a list shorter than the rank count
            hostfile = helper_file(scratch_dir, name, ".hostfile", hostfile_lines(allocation))
            argv += ["-m", "arbitrary"]
            env["SLURM_HOSTFILE"] = hostfile
            files.append(hostfile)
        argv.append(f"--cpu-bind=verbose,mask_cpu:{_local_mask(allocation)}" if binding
                    else "--cpu-bind=verbose,cores")
        argv += _list_opt(opts, "srun_args") + _list_opt(opts, "mpirun_args")
        cmd = LaunchCommand([*argv, *prog], env, files)

    if wrapped:
        cmd.argv = wrap_modules_venv(cmd.argv, modules, venv)
    return cmd
