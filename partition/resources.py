"""Cores and nodes owned by one partition, and how tasks get them.

Allocation policy (the original's, see ``scheduleralgo.py`` of QCG-PilotJob
0.14): nodes are always visited in their declared order and the lowest free
core ids of a node are handed out first.

* cores without nodes (``numCores``): linear fill — take as many cores as the
  first node with free cores has, then continue on the next one.  A
  multi-core task is *not* moved to a node where it would fit entirely; it
  may span nodes exactly like in the original.
* cores with nodes (``numCores`` + ``numNodes``): the first nodes (in order)
  that have at least ``cores_min`` free cores, each giving up to
  ``cores_max`` cores, up to ``nodes_max`` nodes.
* nodes without cores (whole nodes): the first nodes on which every core
  usable by tasks is free.
* a range (``min``/``max``, or ``max`` = None) is resolved to the largest
  allocation possible right now.

Deliberate differences from the original:

* ``--system-core`` reserves one core (the lowest free core of the first
  node, as the original does) but the reserved core is removed from the
  node's *capacity*: a whole-node task may still use that node (the original
  never scheduled it there), and ``never_fits`` judges against capacity, so a
  task that can never start fails at once instead of waiting forever.
* Cost: single-core allocation and release are O(log nodes) (a min-heap of
  indices of nodes with free cores), a failing multi-node request is judged
  in O(cores per node) from a per-free-count histogram; only a successful
  multi-node allocation walks the node list.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Iterable

from qcg.pilotjob.partition.task import Allocation, ResourceRequest

__all__ = ["Node", "Resources"]


class Node:
    """One node: its name, its core ids and which of them are free."""

    __slots__ = ("name", "core_ids", "_id_set", "_free_heap", "_free_set", "reserved", "index")

    def __init__(self, name: str, core_ids: Iterable[int] | int, free: Iterable[int] | None = None):
        if isinstance(core_ids, int):
            core_ids = range(core_ids)
        self.name = name
        self.core_ids: tuple[int, ...] = tuple(int(c) for c in core_ids)
        self._id_set = frozenset(self.core_ids)
        if len(self._id_set) != len(self.core_ids):
            raise ValueError(f"node {name!r}: duplicate core ids")
        free_ids = self.core_ids if free is None else tuple(int(c) for c in free)
        unknown = set(free_ids) - set(self.core_ids)
        if unknown:
            raise ValueError(f"node {name!r}: free cores {sorted(unknown)} are not cores of the node")
        self._free_heap: list[int] = list(free_ids)
        heapq.heapify(self._free_heap)
        self._free_set: set[int] = set(free_ids)
        self.reserved: tuple[int, ...] = ()   # cores reserved for the system (never for tasks)
        self.index = -1                       # position in Resources.nodes

    # -- sizes -------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.core_ids)

    @property
    def capacity(self) -> int:
        """Cores usable by tasks (total minus system-reserved)."""
        return len(self.core_ids) - len(self.reserved)

    @property
    def free(self) -> int:
        return len(self._free_heap)

    @property
    def used(self) -> int:
        return self.total - self.free

    @property
    def free_cores(self) -> list[int]:
        return sorted(self._free_heap)

    # -- raw core handling (Resources keeps the books) ---------------------
    def _take(self, n: int) -> tuple[int, ...]:
        heap = self._free_heap
        ids = tuple(heapq.heappop(heap) for _ in range(n))
        self._free_set.difference_update(ids)
        return ids

    def _give(self, ids: Iterable[int]) -> None:
        for cid in ids:
            if cid in self._free_set:
                raise ValueError(f"core {cid} of node {self.name!r} released twice")
            if cid not in self._id_set or cid in self.reserved:
                raise ValueError(f"core {cid} is not a task core of node {self.name!r}")
            self._free_set.add(cid)
            heapq.heappush(self._free_heap, cid)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, total={self.total}, free={self.free})"


class Resources:
    """The nodes of a partition with O(log n) bookkeeping of free cores."""

    def __init__(self, nodes: Iterable[Node]):
        self.nodes: list[Node] = list(nodes)
        if not self.nodes:
            raise ValueError("no nodes given")
        self._by_name: dict[str, Node] = {}
        for idx, node in enumerate(self.nodes):
            if node.name in self._by_name:
                raise ValueError(f"duplicate node name {node.name!r}")
            node.index = idx
            self._by_name[node.name] = node
        self.total_cores = sum(n.total for n in self.nodes)
        self.used_cores = sum(n.used for n in self.nodes)
        # min-heap of indices of nodes that may have free cores (lazy: an
        # entry whose node is full is dropped when it reaches the top)
        self._in_heap = [n.free > 0 for n in self.nodes]
        self._free_nodes = [n.index for n in self.nodes if n.free > 0]
        heapq.heapify(self._free_nodes)
        self._system: tuple[str, int] | None = None
        self._down: dict[str, list[int]] = {}     # node -> cores held back while the node is down
        self._lost: set[str] = set()              # down for good (its agent lost): out of every capacity
        self._rebuild_stats()

    # -- statistics ------------------------------------------------------------
    def _rebuild_stats(self) -> None:
        maxcap = max(n.total for n in self.nodes)
        self._hist = [0] * (maxcap + 1)           # nodes by number of free cores
        self._whole_free = 0                      # nodes with free == capacity > 0
        for n in self.nodes:
            self._hist[n.free] += 1
            if n.capacity > 0 and n.free == n.capacity:
                self._whole_free += 1
        self._capacities = sorted(n.capacity for n in self.nodes if n.name not in self._lost)   # ascending
        self.task_cores = sum(self._capacities)

    def _nodes_with_free(self, cores: int) -> int:
        if cores >= len(self._hist):
            return 0
        return sum(self._hist[max(cores, 0):])

    def _nodes_with_capacity(self, cores: int) -> int:
        return len(self._capacities) - bisect_left(self._capacities, cores)

    @property
    def total_nodes(self) -> int:
        return len(self.nodes)

    @property
    def free_cores(self) -> int:
        return self.total_cores - self.used_cores

    def node(self, name: str) -> Node:
        return self._by_name[name]

    def info(self) -> dict:
        """The data of the reference's ``resourcesInfo`` response.

        As in the original, a core reserved with ``--system-core`` counts as
        used (total_cores includes it).
        """
        return {
            "total_nodes": self.total_nodes,
            "total_cores": self.total_cores,
            "used_cores": self.used_cores,
            "free_cores": self.free_cores,
        }

    # -- low level take / give keeping every index in step -------------------
    def _take(self, node: Node, n: int) -> tuple[int, ...]:
        before = node.free
        if before == node.capacity and node.capacity > 0:
            self._whole_free -= 1
        ids = node._take(n)
        self._hist[before] -= 1
        self._hist[before - n] += 1
        self.used_cores += n
        return ids

    def _give(self, node: Node, ids: tuple[int, ...]) -> None:
        before = node.free
        node._give(ids)
        after = node.free
        self._hist[before] -= 1
        self._hist[after] += 1
        self.used_cores -= len(ids)
        if after == node.capacity and node.capacity > 0:
            self._whole_free += 1
        if after > 0 and not self._in_heap[node.index]:
            self._in_heap[node.index] = True
            heapq.heappush(self._free_nodes, node.index)

    def _first_free_node(self) -> Node | None:
        heap = self._free_nodes
        while heap:
            node = self.nodes[heap[0]]
            if node.free > 0:
                return node
            heapq.heappop(heap)
            self._in_heap[node.index] = False
        return None

    # -- requests ----------------------------------------------------------
    @staticmethod
    def normalize(req: ResourceRequest) -> tuple[str, int, int | None, int, int | None]:
        """Check a request and return (kind, cmin, cmax, nmin, nmax).

        kind is "cores" (anywhere), "per-node" or "whole-nodes". Raises
        ValueError for a malformed request.
        """
        cmin, cmax, nmin, nmax = req.cores_min, req.cores_max, req.nodes_min, req.nodes_max
        if nmin is None and nmax is not None:
            nmin = 1
        if cmin is None and cmax is not None:
            cmin = 1
        for label, value in (("cores", cmin), ("cores", cmax), ("nodes", nmin), ("nodes", nmax)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"invalid resource request: number of {label} must be a positive integer, got {value!r}")
        if cmin is not None and cmax is not None and cmin > cmax:
            raise ValueError(f"invalid resource request: minimum cores {cmin} greater than maximum {cmax}")
        if nmin is not None and nmax is not None and nmin > nmax:
            raise ValueError(f"invalid resource request: minimum nodes {nmin} greater than maximum {nmax}")
        if nmin is None:
            if cmin is None:
                raise ValueError("invalid resource request: neither cores nor nodes requested")
            return "cores", cmin, cmax, 0, None
        if cmin is None:
            return "whole-nodes", 0, None, nmin, nmax
        return "per-node", cmin, cmax, nmin, nmax

    def never_fits(self, req: ResourceRequest) -> str | None:
        """Why ``req`` can never be allocated here even on idle resources, or None."""
        try:
            kind, cmin, _cmax, nmin, _nmax = self.normalize(req)
        except ValueError as exc:
            return str(exc)
        if kind == "cores":
            if cmin > self.task_cores:
                return (f"requires {cmin} {_pl(cmin, 'core')} but the partition has "
                        f"{self.task_cores} in total{self._capacity_note()}")
            return None
        alive = len(self._capacities)
        if nmin > alive:
            return f"requires {nmin} {_pl(nmin, 'node')} but the partition has {alive}{self._capacity_note()}"
        if kind == "whole-nodes":
            usable = self._nodes_with_capacity(1)
            if nmin > usable:
                return (f"requires {nmin} whole {_pl(nmin, 'node')} but only {usable} "
                        f"{_pl(usable, 'node')} can run tasks{self._capacity_note()}")
            return None
        found = self._nodes_with_capacity(cmin)
        if found < nmin:
            largest = self._capacities[-1]
            if found == 0:
                return (f"requires {nmin} {_pl(nmin, 'node')} with {cmin} {_pl(cmin, 'core')} each; "
                        f"largest node has {largest}{self._capacity_note()}")
            return (f"requires {nmin} nodes with {cmin} {_pl(cmin, 'core')} each; only {found} "
                    f"{_pl(found, 'node')} {'has' if found == 1 else 'have'} that many{self._capacity_note()}")
        return None

    def _capacity_note(self) -> str:
        """What a refusal adds about the cores that are not offered: built only for a refusal (a check
        runs for every task submitted)."""
        lost = len(self._lost)
        reserved = self.total_cores - self.task_cores - sum(self._by_name[n].capacity for n in self._lost)
        notes = ([f"{reserved} reserved for the system"] if reserved else []) + \
            ([f"{lost} {_pl(lost, 'node')} lost"] if lost else [])
        return f" ({', '.join(notes)})" if notes else ""

    def allocate(self, req: ResourceRequest) -> Allocation | None:
        """Allocate the largest allocation ``req`` allows now, or None if it does not fit now.

        Raises ValueError for a malformed request.
        """
        if req.cores_min == 1 and req.cores_max == 1 and req.nodes_min is None and req.nodes_max is None:
            node = self._first_free_node()        # the common case: one core anywhere
            if node is None:
                return None
            return Allocation(((node.name, self._take(node, 1)),))
        kind, cmin, cmax, nmin, nmax = self.normalize(req)
        if kind == "cores":
            free = self.free_cores
            if free < cmin:
                return None
            want = free if cmax is None else min(cmax, free)
            parts: list[tuple[str, tuple[int, ...]]] = []
            while want:
                node = self._first_free_node()
                if node is None:       # counters out of step: cannot happen
                    raise RuntimeError("free core count does not match nodes")
                take = min(want, node.free)
                parts.append((node.name, self._take(node, take)))
                want -= take
            return Allocation(tuple(parts))

        if kind == "whole-nodes":
            if self._whole_free < nmin:
                return None
            limit = self._whole_free if nmax is None else min(nmax, self._whole_free)
            parts = []
            for node in self.nodes:
                if node.capacity > 0 and node.free == node.capacity:
                    parts.append((node.name, self._take(node, node.free)))
                    if len(parts) == limit:
                        break
            return Allocation(tuple(parts))

        # per-node
        if self.free_cores < cmin * nmin:
            return None
        suitable = self._nodes_with_free(cmin)
        if suitable < nmin:
            return None
        limit = suitable if nmax is None else min(nmax, suitable)
        parts = []
        for node in self.nodes:
            if node.free >= cmin:
                take = node.free if cmax is None else min(cmax, node.free)
                parts.append((node.name, self._take(node, take)))
                if len(parts) == limit:
                    break
        return Allocation(tuple(parts))

    def release(self, alloc: Allocation) -> None:
        """Give the cores of ``alloc`` back. Raises ValueError on unknown nodes/cores or double release."""
        for name, ids in alloc.nodes:
            node = self._by_name.get(name)
            if node is None:
                raise ValueError(f"release of cores on unknown node {name!r}")
            held = self._down.get(name)
            if held is not None:        # the node is down: its cores stay out of use
                held.extend(ids)
                continue
            self._give(node, tuple(ids))

    # -- node availability (agents that are not ready, or lost) -------------------
    def set_node_down(self, name: str) -> None:
        """Take a node out of use: its free cores, and later every core released on it, are held back."""
        if name in self._down:
            return
        node = self._by_name[name]
        self._down[name] = list(self._take(node, node.free)) if node.free else []

    def set_node_lost(self, name: str) -> None:
        """Out of use for good (its agent is lost): what needs its cores can no longer be allocated."""
        self.set_node_down(name)
        if name not in self._lost:
            self._lost.add(name)
            self._rebuild_stats()

    def set_node_up(self, name: str) -> None:
        if name in self._lost:
            return
        held = self._down.pop(name, None)
        if held:
            self._give(self._by_name[name], tuple(held))

    def is_down(self, name: str) -> bool:
        return name in self._down

    def is_lost(self, name: str) -> bool:
        return name in self._lost

    @property
    def usable_nodes(self) -> int:
        """Nodes not lost (a manager with none left has nothing to offer its parent)."""
        return len(self.nodes) - len(self._lost)

    # -- system core ------------------------------------------------------------
    def reserve_system_core(self) -> tuple[str, int] | None:
        """Reserve one core for the manager itself (``--system-core``).

        As the original: the lowest free core of the first node that has a
        free core. Idempotent. The core stays counted in total_cores and
        used_cores (as the original reports it) but is no longer part of the
        node's capacity for tasks.
        """
        if self._system is not None:
            return self._system
        node = self._first_free_node()
        if node is None:
            return None
        (cid,) = self._take(node, 1)
        node.reserved = node.reserved + (cid,)
        self._system = (node.name, cid)
        self._rebuild_stats()
        return self._system

    def mark_reserved(self, node_index: int, cid: int) -> None:
        """A core another manager reserved for itself (its `register` says which), out of the tasks' reach."""
        node = self.nodes[node_index]
        self._withhold(node, cid)
        if self._system is None:
            self._system = (node.name, cid)
        self._rebuild_stats()

    def withhold(self, cores: Iterable[tuple[int, int]]) -> None:
        """Cores (node index, core id) that are someone else's for the whole run -- a resources file that
        does not list them as free: used, and out of every capacity, so that a task needing them fails at
        once instead of waiting for cores nobody will ever release."""
        for node_index, cid in cores:
            self._withhold(self.nodes[node_index], cid)
        self._rebuild_stats()

    def _withhold(self, node: Node, cid: int) -> None:
        if cid not in node._id_set:
            raise ValueError(f"reserved core {cid} is not a core of node {node.name!r}")
        if cid in node._free_set:
            node._free_set.discard(cid)
            node._free_heap.remove(cid)
            heapq.heapify(node._free_heap)
            self.used_cores += 1
        if cid not in node.reserved:
            node.reserved = node.reserved + (cid,)

    @property
    def system_core(self) -> tuple[str, int] | None:
        return self._system

    def __repr__(self) -> str:
        return (f"Resources({self.total_nodes} nodes, {self.total_cores} cores, "
                f"{self.used_cores} used)")


def _pl(n: int, word: str) -> str:
    return word if n == 1 else word + "s"
