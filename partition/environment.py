"""Environment variables of a task (reference: "Execution environments", 8.1/8.2).

Precedence, as in the original: the base environment (the manager's own),
then the job's ``env``, then ``QCG_PM_ZMQ_ADDRESS``, then the QCG_PM_* and
(with the slurm schema) SLURM_* variables — these describe the allocation and
therefore override a job's own values — and finally ``extra`` (variables
required by the execution model, e.g. ``OMP_NUM_THREADS``), which the caller
passes last.

Formats follow the original:

* ``QCG_PM_STEP_ID``: a fresh ``uuid4().hex`` per task (32 hex digits);
* ``QCG_PM_NODELIST``: node names joined by ``,``; ``QCG_PM_TASKS_PER_NODE``:
  core counts joined by ``,``;
* ``QCG_PM_CPU_SET``: the core ids of all nodes, in allocation order, joined
  by ``,`` (no node separator, so ``0,1,0,1`` for two nodes with cores 0-1);
  set only when the task is bound to its cores (``binding=True``), as the
  reference says;
* ``SLURM_TASKS_PER_NODE`` and friends use Slurm's compressed form
  ``2(x3),1``; ``SLURM_NTASKS_PER_NODE`` is only set when every node has the
  same number of cores; ``SLURM_OVERLAP=1`` lets a task's own ``srun`` share
  the allocation's CPUs; ``SLURM_CPU_BIND`` (one ``mask_cpu`` per core) is set
  when binding.
* ``SLURM_HOSTFILE``: the caller writes the file (in Slurm mode the partition
  does, for every task: the node's name once per core, nodes in allocation
  order, as the original writes it; ours goes to the aux dir's ``tmp/``, not
  the task's working directory). Without it a task's own ``srun`` runs on the
  allocation's first nodes, whatever ``SLURM_NODELIST`` says. srun reads as
  many lines as it starts tasks (``SLURM_NTASKS`` unless ``-n`` is given) and
  places them as the lines say: a step over all the task's cores gets one
  per core; a smaller one (``srun -n 2`` in a 4-core task, whatever its
  ``-N``) gets the first lines only, so the first node; with
  ``--nodelist=$SLURM_NODELIST`` srun ignores the file and spreads it.
* ``OMPI_MCA_plm_slurm_args`` is set with the hostfile: the manager's own
  value, if any, then ``--nodelist=<the task's nodes>``. OpenMPI's ``mpirun``
  starts its daemons with ``srun --ntasks-per-node=1 --ntasks=<nodes>`` and
  names no nodes when it uses all it sees; srun would then take the
  hostfile's first lines (the first node twice) and the daemons would not
  start where the ranks go.
* A job's own ``SLURM_HOSTFILE`` or ``OMPI_MCA_plm_slurm_args`` (in its
  ``env``) is kept, unlike the other SLURM_* variables.
* with the slurm schema ``CUDA_VISIBLE_DEVICES`` is removed (the original
  does so for allocations without GPUs; allocations carry no GPUs yet).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from qcg.pilotjob.partition.task import Allocation

SCHEMAS = ("auto", "common", "slurm")

#: OpenMPI's extra arguments of the srun that starts mpirun's daemons (see the module doc)
OMPI_SRUN_ARGS = "OMPI_MCA_plm_slurm_args"
#: variables a job may set itself in its env, which the slurm schema then leaves as they are
JOB_MAY_SET = ("SLURM_HOSTFILE", OMPI_SRUN_ARGS)


def new_step_id() -> str:
    """A unique QCG_PM_STEP_ID, formatted as the original (uuid4 hex)."""
    return uuid.uuid4().hex


def in_slurm_allocation(env: Mapping[str, str]) -> bool:
    """The original's test: both SLURM_NODELIST and SLURM_JOB_CPUS_PER_NODE set."""
    return "SLURM_NODELIST" in env and "SLURM_JOB_CPUS_PER_NODE" in env


def resolve_schemas(envschema: str, base: Mapping[str, str]) -> set[str]:
    """`envschema` is a comma separated list (`--envschema`); 'common' is always in."""
    names = {"common"}
    for name in (n.strip().lower() for n in (envschema or "auto").split(",")):
        if not name:
            continue
        if name not in SCHEMAS:
            raise ValueError(f'environment "{name}" not available (known: {", ".join(SCHEMAS)})')
        if name == "auto":
            if in_slurm_allocation(base):
                names.add("slurm")
        else:
            names.add(name)
    return names


def compress_counts(counts: list[int]) -> str:
    """Slurm's compressed per-node list: [2, 2, 2, 1] -> '2(x3),1'."""
    out: list[str] = []
    i = 0
    while i < len(counts):
        j = i
        while j + 1 < len(counts) and counts[j + 1] == counts[i]:
            j += 1
        n = j - i + 1
        out.append(f"{counts[i]}(x{n})" if n > 1 else str(counts[i]))
        i = j + 1
    return ",".join(out)


def cpu_mask_list(allocation: Allocation) -> str:
    """One hex mask per allocated core, nodes in order (the original's SLURM_CPU_BIND list)."""
    return ",".join(hex(1 << c) for _, cores in allocation.nodes for c in cores)


def qcg_variables(allocation: Allocation, step_id: str, binding: bool = True) -> dict[str, str]:
    counts = [len(c) for _, c in allocation.nodes]
    ncores = str(sum(counts))
    env = {
        "QCG_PM_NNODES": str(len(counts)),
        "QCG_PM_NODELIST": ",".join(allocation.node_names),
        "QCG_PM_NPROCS": ncores,
        "QCG_PM_NTASKS": ncores,
        "QCG_PM_STEP_ID": step_id,
        "QCG_PM_TASKS_PER_NODE": ",".join(map(str, counts)),
    }
    if binding:
        env["QCG_PM_CPU_SET"] = ",".join(str(c) for _, cores in allocation.nodes for c in cores)
    return env


def slurm_variables(allocation: Allocation, binding: bool = True,
                    hostfile: str | None = None) -> dict[str, str]:
    counts = [len(c) for _, c in allocation.nodes]
    nlist = ",".join(allocation.node_names)
    nnodes = str(len(counts))
    ncores = str(sum(counts))
    per_node = compress_counts(counts)
    env = {
        "SLURM_NNODES": nnodes,
        "SLURM_NODELIST": nlist,
        "SLURM_NPROCS": ncores,
        "SLURM_NTASKS": ncores,
        "SLURM_JOB_NODELIST": nlist,
        "SLURM_JOB_NUM_NODES": nnodes,
        "SLURM_STEP_NODELIST": nlist,
        "SLURM_STEP_NUM_NODES": nnodes,
        "SLURM_STEP_NUM_TASKS": ncores,
        "SLURM_JOB_CPUS_PER_NODE": per_node,
        "SLURM_STEP_TASKS_PER_NODE": per_node,
        "SLURM_TASKS_PER_NODE": per_node,
        "SLURM_OVERLAP": "1",
    }
    if counts and all(c == counts[0] for c in counts):
        env["SLURM_NTASKS_PER_NODE"] = str(counts[0])
    if binding:
        env["SLURM_CPU_BIND"] = f"verbose,mask_cpu:{cpu_mask_list(allocation)}"
    if hostfile:
        env["SLURM_HOSTFILE"] = hostfile
    return env


def task_environment(base: Mapping[str, str], job_env: Mapping[str, str] | None,
                     allocation: Allocation, step_id: str, envschema: str = "auto",
                     zmq_address: str | None = None, extra: Mapping[str, str] | None = None,
                     *, binding: bool = True, hostfile: str | None = None) -> dict[str, str]:
    """The complete environment of one task (see the module doc for precedence).

    `hostfile`: the task's Slurm hostfile, already written (slurm schema only).
    """
    schemas = resolve_schemas(envschema, base)
    env = dict(base)
    if job_env:
        env.update(job_env)
    if zmq_address:
        env["QCG_PM_ZMQ_ADDRESS"] = zmq_address
    env.update(qcg_variables(allocation, step_id, binding))
    if "slurm" in schemas:
        env.update(slurm_variables(allocation, binding, hostfile))
        if hostfile:
            own = base.get(OMPI_SRUN_ARGS)
            env[OMPI_SRUN_ARGS] = (own + " " if own else "") + "--nodelist=" + ",".join(allocation.node_names)
        for name in JOB_MAY_SET:
            if job_env and name in job_env:
                env[name] = job_env[name]
        env.pop("CUDA_VISIBLE_DEVICES", None)
    if extra:
        env.update(extra)
    return env
