"""Resources of a Slurm allocation (reference: option list ``--resources``,
``--slurm-limit-nodes-range-begin/end``, ``--slurm-resources-file``,
``--system-core``; 8.1 "Slurm execution environment").

Where the numbers come from
---------------------------

* Nodes: ``SLURM_JOB_NODELIST`` / ``SLURM_NODELIST`` in Slurm's compressed
  form (``n[01-10],gpu1``), expanded with python-hostlist.
* Cores per node, in this order of preference:

  1. ``SLURM_JOB_CPUS_PER_NODE`` (``2(x3),1``): every CPU Slurm gave the job
     on each node — the pilot job owns the whole allocation.  Paired with
     ``SLURM_JOB_NODELIST`` (job level), falling back to ``SLURM_NODELIST``.
  2. otherwise ``SLURM_TASKS_PER_NODE`` times ``SLURM_CPUS_PER_TASK``
     (default 1): the CPUs that belong to the tasks of the job (or step).
     Paired with ``SLURM_NODELIST``, falling back to ``SLURM_JOB_NODELIST``.

  The run-length form ``N(xM)`` is parsed with python-hostlist too.
* Core ids: if Slurm exported a CPU binding (``SLURM_CPU_BIND_TYPE``
  starting with ``mask_cpu`` and ``SLURM_CPU_BIND_LIST`` with hexadecimal
  masks), the CPUs of the masks, the same list on every node (Slurm exports
  only one), each node taking as many as it has cores. Otherwise the
  ``CPU_IDs`` that ``scontrol show job --detail`` gives each node
  (`slurm_cpu_ids`: jobs sharing a node get different CPUs), and where it
  cannot tell, ``0..n-1``.

Deliberate differences from the original (QCG-PilotJob 0.14):

* The original counts cores from ``SLURM_TASKS_PER_NODE`` only (and fails
  without it) and ignores ``SLURM_CPUS_PER_TASK``; under ``salloc -N4
  --exclusive`` it therefore sees one core per node.  We use the CPUs of
  the job first.
* A node range end of 0 is an empty range here (an error), not "no limit".
* Bad values are reported as ``ValueError`` naming the variable and its value.

The resources file (``--slurm-resources-file``) has the original's JSON
format, as its governor writes it for each partition::

    {"type": "SLURM", "binding": true,
     "nodes": [{"name": "n1", "total_cores": 2, "core_ids": ["0", "1"],
                "free_cores": ["0", "1"], "crs": null}, ...]}

When a file is given the Slurm environment and the node range are not used
(the original's governor passes both the range and a file holding only that
range; the file wins there too).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence

import hostlist

from qcg.pilotjob.partition.local_nodes import MAX_NODE_CORES
from qcg.pilotjob.partition.resources import Node, Resources

__all__ = [
    "slurm_resources",
    "in_slurm_allocation",
    "slurm_cluster_name",
    "parse_slurm_nodelist",
    "parse_slurm_counts",
    "parse_cpu_bind_list",
    "slurm_nodes",
    "select_node_range",
    "read_resources_file",
    "resources_from_dict",
    "resources_to_dict",
    "write_resources_file",
]

NODELIST_JOB = "SLURM_JOB_NODELIST"
NODELIST_STEP = "SLURM_NODELIST"
JOB_CPUS = "SLURM_JOB_CPUS_PER_NODE"
TASKS = "SLURM_TASKS_PER_NODE"
CPUS_PER_TASK = "SLURM_CPUS_PER_TASK"
BIND_TYPE = "SLURM_CPU_BIND_TYPE"
BIND_LIST = "SLURM_CPU_BIND_LIST"
CLUSTER = "SLURM_CLUSTER_NAME"


def _get(env: Mapping[str, str], name: str) -> str | None:
    """The stripped value of ``name``; None when unset or blank."""
    value = env.get(name)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


# -- detection ------------------------------------------------------------------

def in_slurm_allocation(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a Slurm allocation.

    As the original: a node list and ``SLURM_JOB_CPUS_PER_NODE`` are both set
    (``SLURM_JOB_NODELIST`` is accepted as well as ``SLURM_NODELIST``).
    """
    has_nodes = _get(env, NODELIST_STEP) is not None or _get(env, NODELIST_JOB) is not None
    return has_nodes and _get(env, JOB_CPUS) is not None


def slurm_cluster_name(env: Mapping[str, str] = os.environ) -> str | None:
    """``SLURM_CLUSTER_NAME`` (the original special-cases some clusters by it), or None."""
    return _get(env, CLUSTER)


# -- parsers ------------------------------------------------------------------------

def parse_slurm_nodelist(value: str, var: str = NODELIST_STEP) -> list[str]:
    """Expand a Slurm node list (``n[1-4]``, ``n[01-10]``, ``a1,b[2-3]``) with python-hostlist.

    Order is kept. Raises ValueError naming ``var`` for a malformed list, an
    empty one, or a node listed twice.
    """
    text = "" if value is None else str(value).strip()
    try:
        names = [n.strip() for n in hostlist.expand_hostlist(text, allow_duplicates=True)]
    except hostlist.BadHostlist as exc:
        raise ValueError(f"{var}={value!r} is malformed: {exc}") from None
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{var}={value!r} lists no nodes")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{var}={value!r} lists node {name!r} more than once")
        seen.add(name)
    return names


def parse_slurm_counts(value: str, var: str = JOB_CPUS) -> list[int]:
    """Parse a per-node count list in Slurm's run-length form (``2(x3),1`` -> [2, 2, 2, 1]).

    Used for ``SLURM_JOB_CPUS_PER_NODE`` and ``SLURM_TASKS_PER_NODE``
    (python-hostlist's ``parse_slurm_tasks_per_node``). Raises ValueError
    naming ``var`` for a malformed list or a count below 1.
    """
    text = "" if value is None else str(value).strip().replace(" ", "")
    if any(len(number) > 7 for number in re.findall(r"\d+", text)):
        # checked before the list is expanded: '2(x1000000000)' is a list of a billion counts
        raise ValueError(f"{var}={value!r} is too large: a count or repetition beyond 9 999 999")
    try:
        counts = hostlist.parse_slurm_tasks_per_node(text)
    except hostlist.BadHostlist:
        raise ValueError(f"{var}={value!r} is malformed (expected counts like '4' or '2(x3),1')") from None
    if not counts:
        raise ValueError(f"{var}={value!r} gives no node counts")
    if any(c < 1 for c in counts):
        raise ValueError(f"{var}={value!r} is malformed: every count must be at least 1")
    if max(counts) > MAX_NODE_CORES:
        raise ValueError(f"{var}={value!r} is too large: at most {MAX_NODE_CORES} per node")
    return counts


def _positive_int(value: str, var: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{var}={value!r} is malformed: expected a positive integer")
    return int(text)


def parse_cpu_bind_list(value: str, var: str = BIND_LIST) -> list[int]:
    """CPU ids of a ``SLURM_CPU_BIND_LIST`` (hex masks, ``0x`` optional, comma separated).

    Returns the sorted union of the CPUs of all masks. Raises ValueError
    naming ``var`` for a malformed or empty mask.
    """
    cpus: set[int] = set()
    for part in str(value).split(","):
        item = part.strip()
        digits = item[2:] if item.lower().startswith("0x") else item
        try:
            mask = int(digits, 16)
        except ValueError:
            mask = -1
        if mask <= 0:
            raise ValueError(f"{var}={value!r} is malformed: {item!r} is not a non-zero hexadecimal CPU mask")
        cpus.update(i for i in range(mask.bit_length()) if mask >> i & 1)
    return sorted(cpus)


# -- the allocation --------------------------------------------------------------------

def _nodelist(env: Mapping[str, str], prefer: str) -> tuple[str, list[str]]:
    other = NODELIST_STEP if prefer == NODELIST_JOB else NODELIST_JOB
    for var in (prefer, other):
        value = _get(env, var)
        if value is not None:
            return var, parse_slurm_nodelist(value, var)
    raise ValueError(f"not in a Slurm allocation: neither {NODELIST_STEP} nor {NODELIST_JOB} is set")


def slurm_nodes(env: Mapping[str, str] = os.environ) -> list[tuple[str, list[int]]]:
    """The whole allocation as ``[(node name, core ids)]``, in Slurm's order.

    See the module docstring for the variables read. Raises ValueError with
    the variable and value at fault.
    """
    if _get(env, NODELIST_STEP) is None and _get(env, NODELIST_JOB) is None:
        raise ValueError(f"not in a Slurm allocation: neither {NODELIST_STEP} nor {NODELIST_JOB} is set")
    cpus_value = _get(env, JOB_CPUS)
    if cpus_value is not None:
        list_var, names = _nodelist(env, NODELIST_JOB)
        counts = parse_slurm_counts(cpus_value, JOB_CPUS)
        count_desc = f"{JOB_CPUS}={cpus_value!r}"
    else:
        tasks_value = _get(env, TASKS)
        if tasks_value is None:
            raise ValueError(f"cannot tell the cores per node: neither {JOB_CPUS} nor {TASKS} is set")
        list_var, names = _nodelist(env, NODELIST_STEP)
        counts = parse_slurm_counts(tasks_value, TASKS)
        count_desc = f"{TASKS}={tasks_value!r}"
        cpt_value = _get(env, CPUS_PER_TASK)
        if cpt_value is not None:
            cpt = _positive_int(cpt_value, CPUS_PER_TASK)
            counts = [c * cpt for c in counts]
            count_desc += f" with {CPUS_PER_TASK}={cpt_value!r}"
    if len(counts) != len(names):
        raise ValueError(
            f"{count_desc} gives {len(counts)} node {'count' if len(counts) == 1 else 'counts'} "
            f"but {list_var}={env.get(list_var)!r} lists {len(names)} "
            f"{'node' if len(names) == 1 else 'nodes'}")

    bind_ids: list[int] | None = None
    bind_type = _get(env, BIND_TYPE)
    bind_list = _get(env, BIND_LIST)
    if bind_type is not None and bind_type.startswith("mask_cpu") and bind_list is not None:
        bind_ids = parse_cpu_bind_list(bind_list, BIND_LIST)
        if len(bind_ids) < max(counts):
            raise ValueError(
                f"{BIND_LIST}={bind_list!r} gives {len(bind_ids)} CPUs but a node has "
                f"{max(counts)} cores ({count_desc})")

    return [(name, bind_ids[:n] if bind_ids is not None else list(range(n)))
            for name, n in zip(names, counts)]


def select_node_range(items: Sequence, begin: int | None = None, end: int | None = None) -> list:
    """The nodes ``begin`` .. ``end`` of the allocation (0-based, end exclusive).

    As the original: ``begin`` defaults to 0, ``end`` to the number of nodes
    and is clipped to it. Raises ValueError for a negative bound, ``begin``
    past ``end``, or a range holding no node.
    """
    total = len(items)
    for opt, value in (("--slurm-limit-nodes-range-begin", begin), ("--slurm-limit-nodes-range-end", end)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{opt} {value!r}: must be a non-negative integer")
    start = 0 if begin is None else begin
    stop = total if end is None else min(end, total)
    if start > stop:
        raise ValueError(f"invalid node range: begin {start} is greater than end {stop} "
                         f"(the allocation has {total} nodes)")
    if start == stop:
        raise ValueError(f"node range {start}-{stop} selects no nodes (the allocation has {total} nodes, "
                         f"numbered from 0, end exclusive)")
    return list(items[start:stop])


def slurm_resources(env: Mapping[str, str] = os.environ, *, limit_begin: int | None = None,
                    limit_end: int | None = None, resources_file: str | None = None,
                    system_core: bool = False,
                    cpu_ids: Callable[[str], dict[str, list[int]]] | None = None) -> Resources:
    """Resources of the Slurm allocation described by ``env``.

    ``resources_file`` (``--slurm-resources-file``) replaces the environment
    and the node range; ``limit_begin``/``limit_end``
    (``--slurm-limit-nodes-range-begin/end``) select nodes ``begin..end-1``;
    ``system_core`` (``--system-core``) reserves one core for the manager;
    ``cpu_ids`` (`slurm_cpu_ids.allocated_cpu_ids`) tells which CPUs of each
    node the job ``SLURM_JOB_ID`` has, where the environment gave no CPU mask.
    Raises ValueError with a one-line reason for any bad input.
    """
    if resources_file:
        res = read_resources_file(resources_file)
    else:
        nodes = select_node_range(slurm_nodes(env), limit_begin, limit_end)
        job = _get(env, "SLURM_JOB_ID")
        if cpu_ids is not None and job is not None and not (_get(env, BIND_TYPE) or "").startswith("mask_cpu"):
            nodes = _allocated_ids(nodes, cpu_ids(job))
        res = Resources(Node(name, ids) for name, ids in nodes)
    if system_core:
        res.reserve_system_core()
    return res


def _allocated_ids(nodes: list[tuple[str, list[int]]], allocated: dict[str, list[int]]) -> list[tuple[str, list[int]]]:
    """Each node's ids as Slurm allocated them, where it names as many as the node has cores (HT: the
    first ones, as the original); the others keep theirs."""
    out = []
    for name, ids in nodes:
        mine = allocated.get(name)
        out.append((name, mine[:len(ids)] if mine is not None and len(mine) >= len(ids) else ids))
    return out


# -- the resources file ---------------------------------------------------------------

def read_resources_file(path: str) -> Resources:
    """Read a ``--slurm-resources-file`` (the original's JSON format, see module docstring)."""
    opt = f"--slurm-resources-file {path!r}"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ValueError(f"{opt}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{opt}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"{opt}: not valid JSON: nested too deeply") from None
    except ValueError as exc:     # JSONDecodeError, or an integer of more digits than Python converts
        raise ValueError(f"{opt}: not valid JSON: {exc}") from None
    try:
        return resources_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{opt}: {exc}") from None


def _core_id(value, where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: core id {value!r} is not a non-negative integer")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ValueError(f"{where}: core id {value!r} is not a non-negative integer")


def resources_from_dict(data) -> Resources:
    """Build Resources from the original's ``Resources.to_dict()`` data.

    Per node: ``name``; ``total_cores`` (positive int); ``core_ids`` (optional,
    ints or digit strings, at least ``total_cores`` of them, the first
    ``total_cores`` used; default ``0..total_cores-1``); ``free_cores``
    (optional; missing, null or empty means all free, as the original reads
    it). Other keys (``type``, ``binding``, ``crs``) are accepted and ignored.
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object with a 'nodes' list, got {type(data).__name__}")
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ValueError("'nodes' must be a non-empty list")
    nodes = []
    for idx, item in enumerate(raw_nodes):
        where = f"node {idx}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: 'name' must be a non-empty string, got {name!r}")
        where = f"node {idx} ({name!r})"
        total = item.get("total_cores")
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"{where}: 'total_cores' must be a positive integer, got {total!r}")
        if total > MAX_NODE_CORES:
            raise ValueError(f"{where}: 'total_cores' {total}: at most {MAX_NODE_CORES} cores per node")
        raw_ids = item.get("core_ids")
        if raw_ids is None or raw_ids == []:
            ids = list(range(total))
        elif not isinstance(raw_ids, list):
            raise ValueError(f"{where}: 'core_ids' must be a list, got {type(raw_ids).__name__}")
        else:
            ids = [_core_id(v, where) for v in raw_ids]
            if len(ids) < total:
                raise ValueError(f"{where}: 'core_ids' has {len(ids)} ids but 'total_cores' is {total}")
            ids = ids[:total]
        raw_free = item.get("free_cores")
        free = None
        if raw_free not in (None, []):
            if not isinstance(raw_free, list):
                raise ValueError(f"{where}: 'free_cores' must be a list, got {type(raw_free).__name__}")
            free = [_core_id(v, where) for v in raw_free]
            if len(set(free)) != len(free):
                raise ValueError(f"{where}: 'free_cores' lists a core twice")
        nodes.append(Node(name, ids, free))   # Node/Resources check unknown free ids and duplicates
    res = Resources(nodes)
    # cores the file does not list as free are someone else's for the whole run, not cores that free up
    res.withhold((idx, cid) for idx, node in enumerate(nodes)
                 for cid in sorted(set(node.core_ids) - set(node.free_cores)))
    for idx, item in enumerate(raw_nodes):
        raw_reserved = item.get("reserved_cores")
        if raw_reserved is not None:
            if not isinstance(raw_reserved, list):
                raise ValueError(f"node {idx}: 'reserved_cores' must be a list, got {type(raw_reserved).__name__}")
            for v in raw_reserved:
                res.mark_reserved(idx, _core_id(v, f"node {idx}"))
    return res


def resources_to_dict(res: Resources, *, rtype: str = "SLURM", binding: bool = False,
                      with_reserved: bool = False) -> dict:
    """The original's ``Resources.to_dict()`` form of ``res`` (core ids as strings).

    A core reserved for the system is written as free: the manager that reads
    the file decides on its own ``--system-core``. With ``with_reserved`` (a
    manager telling its parent what it has) it is listed in ``reserved_cores``
    instead, so that the parent's size checks see what tasks can really get.
    """
    def node(n: Node) -> dict:
        free = n.free_cores if with_reserved else sorted(set(n.free_cores) | set(n.reserved))
        out = {"name": n.name, "total_cores": n.total, "core_ids": [str(c) for c in n.core_ids],
               "free_cores": [str(c) for c in free], "crs": None}
        if with_reserved and n.reserved:
            out["reserved_cores"] = [str(c) for c in n.reserved]
        return out

    # a lost node (its agent is gone for good) is not offered: the parent sizes what it sends by this
    return {"type": rtype, "nodes": [node(n) for n in res.nodes if not res.is_lost(n.name)], "binding": binding}


def write_resources_file(path: str, res: Resources, *, rtype: str = "SLURM", binding: bool = False) -> None:
    """Write ``res`` as a ``--slurm-resources-file`` (e.g. for one partition's node group)."""
    # in the run's aux dir: not through a link somebody may have left there, and closed to others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(resources_to_dict(res, rtype=rtype, binding=binding), fh)
