"""The nodes of a run outside Slurm: `--nodes "[NAME:]CORES,..."`, or this host with all its cores.

Slurm's nodes are read by `slurm_resources`; both give `resources.Resources`.
"""

from __future__ import annotations

import os
import re
import socket

from qcg.pilotjob.partition.resources import Node, Resources

__all__ = ["parse_nodes_spec", "local_resources"]

MAX_NODE_CORES = 65_536        # a virtual node larger than any real one by far
_NAME_RE = re.compile(r"[^\s:,\[\]]+")
_CORES_RE = re.compile(r"\d+")


def parse_nodes_spec(spec: str) -> list[Node]:
    """Parse ``--nodes "[NODE_NAME]:CORES[, [NODE_NAME]:CORES]..."``.

    Items are separated by commas (spaces around items are ignored). An item
    is ``CORES``, ``NAME:CORES`` or ``:CORES``; an unnamed item gets the name
    ``n<position>`` (position in the list counting from 0, named items
    included) — the original's naming. Raises ValueError with the offending
    item for anything else, and for duplicate names.
    """
    if spec is None or not str(spec).strip():
        raise ValueError("--nodes: empty resources definition")
    nodes: list[Node] = []
    seen: set[str] = set()
    for idx, raw in enumerate(str(spec).split(",")):
        item = raw.strip()
        where = f"--nodes {spec!r}: item {idx + 1} ({item!r})"
        if not item:
            raise ValueError(f"--nodes {spec!r}: item {idx + 1} is empty")
        name, colon, cores = item.rpartition(":")
        name, cores = name.strip(), cores.strip()
        if not colon:
            name = ""
        if not cores:
            raise ValueError(f"{where}: missing number of cores after ':'")
        if not _CORES_RE.fullmatch(cores):
            raise ValueError(f"{where}: number of cores must be a positive integer, got {cores!r}")
        ncores = int(cores) if len(cores) <= 9 else MAX_NODE_CORES + 1
        if ncores < 1:
            raise ValueError(f"{where}: number of cores must be at least 1")
        if ncores > MAX_NODE_CORES:
            # each core is kept in the books (a typo of a few digits would take the memory of the machine)
            raise ValueError(f"{where}: at most {MAX_NODE_CORES} cores per node")
        if name and not _NAME_RE.fullmatch(name):
            raise ValueError(f"{where}: invalid node name {name!r}")
        name = name or f"n{idx}"
        if name in seen:
            raise ValueError(f"{where}: duplicate node name {name!r}")
        seen.add(name)
        nodes.append(Node(name, ncores))
    return nodes


def local_resources(nodes_spec: str | None = None, system_core: bool = False) -> Resources:
    """Resources of the local mode.

    Without ``nodes_spec``: one node named after the host with
    ``os.cpu_count()`` cores (the original's default).
    """
    if nodes_spec:
        nodes = parse_nodes_spec(nodes_spec)
    else:
        nodes = [Node(socket.gethostname(), os.cpu_count() or 1)]
    res = Resources(nodes)
    if system_core:
        res.reserve_system_core()
    return res
