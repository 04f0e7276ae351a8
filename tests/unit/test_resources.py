"""Partition resources: `--nodes` parsing, allocation policy, never-fits reasons.

Reference: 4.2 "Local execution" (`--nodes`, `--system-core`), 7.2 "Queue &
scheduler" (min/max resolved to the largest allocation), `resourcesInfo`.
"""

from __future__ import annotations

import os
import random
import socket

import pytest

from qcg.pilotjob.partition.local_nodes import local_resources, parse_nodes_spec
from qcg.pilotjob.partition.resources import Node, Resources
from qcg.pilotjob.partition.task import Allocation, ResourceRequest as R


def names_cores(nodes):
    return [(n.name, n.total) for n in nodes]


# -- --nodes parsing (4.2 Local execution) --------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("4", [("n0", 4)]),
    ("n1:2", [("n1", 2)]),
    ("4,2,2", [("n0", 4), ("n1", 2), ("n2", 2)]),
    ("4, 2, 2", [("n0", 4), ("n1", 2), ("n2", 2)]),
    ("n1:4, n2:4, n3:4", [("n1", 4), ("n2", 4), ("n3", 4)]),
    ("a:2,3", [("a", 2), ("n1", 3)]),          # default name = n<position>
    (":3", [("n0", 3)]),                       # `[NODE_NAME]:CORES` with no name
    ("  node-1.x:16 ", [("node-1.x", 16)]),
])
def test_parse_nodes_spec_examples(spec, expected):
    """4.2: the documented `--nodes` forms and the original's default names."""
    assert names_cores(parse_nodes_spec(spec)) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("a:", "missing number of cores"),
    ("0", "at least 1"),
    ("-1", "positive integer"),
    ("x:y", "positive integer"),
    ("2.5", "positive integer"),
    ("n1:2,n1:3", "duplicate node name 'n1'"),
    ("n1:2,4", "duplicate node name 'n1'"),    # second item defaults to n1
    ("4,,2", "item 2 is empty"),
    ("4,", "item 2 is empty"),
    ("", "empty"),
    ("a b:2", "invalid node name"),
    ("a[1]:2", "invalid node name"),
])
def test_parse_nodes_spec_errors(spec, fragment):
    """4.2: malformed `--nodes` values get one clear message naming the item."""
    with pytest.raises(ValueError) as exc:
        parse_nodes_spec(spec)
    assert fragment in str(exc.value)
    assert "--nodes" in str(exc.value)


def test_local_resources_default_is_host_with_cpu_count():
    """4.2: without --nodes the local mode uses all cores of this host."""
    res = local_resources(None, system_core=False)
    assert names_cores(res.nodes) == [(socket.gethostname(), os.cpu_count())]
    assert res.info() == {"total_nodes": 1, "total_cores": os.cpu_count(), "used_cores": 0,
                          "free_cores": os.cpu_count()}


def test_resources_info_keys():
    """resourcesInfo: total_nodes, total_cores, used_cores, free_cores."""
    res = local_resources("3,2")
    assert res.info() == {"total_nodes": 2, "total_cores": 5, "used_cores": 0, "free_cores": 5}
    res.allocate(R(2, 2))
    assert res.info() == {"total_nodes": 2, "total_cores": 5, "used_cores": 2, "free_cores": 3}


# -- allocation policy ---------------------------------------------------------

def test_single_cores_fill_nodes_in_order_lowest_ids_first():
    """Original policy: first node with free cores, lowest free core id."""
    res = local_resources("a:2,b:2")
    got = [res.allocate(R()).describe() for _ in range(4)]
    assert got == ["a[0]", "a[1]", "b[0]", "b[1]"]
    assert res.allocate(R()) is None
    res.release(Allocation((("a", (1,)),)))
    res.release(Allocation((("b", (0,)),)))
    assert res.allocate(R()).describe() == "a[1]"
    assert res.allocate(R()).describe() == "b[0]"


def test_multicore_spans_nodes_linearly_like_original():
    """numCores without numNodes: linear fill, no preference for a single node."""
    res = local_resources("a:2,b:4")
    res.allocate(R())                       # a[0]
    assert res.allocate(R(3, 3)).describe() == "a[1],b[0:1]"


def test_range_resolves_to_largest_possible():
    """7.2: min/max resolved to the maximum amount available now."""
    res = local_resources("a:4,b:4")
    res.allocate(R(3, 3))
    assert res.allocate(R(2, 10)).ncores == 5
    res2 = local_resources("a:4,b:4")
    assert res2.allocate(R(1, None)).ncores == 8        # max None = all free
    res3 = local_resources("a:4,b:4")
    assert res3.allocate(R(2, 3)).ncores == 3
    res4 = local_resources("a:4")
    res4.allocate(R(3, 3))
    assert res4.allocate(R(2, 4)) is None


def test_cores_per_node():
    """numCores with numNodes: cores on each node, first suitable nodes in order."""
    res = local_resources("a:4,b:2,c:4,d:4")
    res.allocate(R())                                          # a has 3 free
    alloc = res.allocate(R(3, 3, 2, 2))
    assert alloc.describe() == "a[1:2:3],c[0:1:2]"
    assert res.allocate(R(3, 3, 2, 2)) is None                 # only d has 4 free
    alloc = res.allocate(R(1, None, 1, None))                  # as many nodes, all free cores
    assert alloc.describe() == "b[0:1],c[3],d[0:1:2:3]"
    assert res.free_cores == 0


def test_whole_nodes():
    """numNodes without numCores: entirely free nodes."""
    res = local_resources("a:2,b:2,c:2")
    res.allocate(R())
    assert res.allocate(R(None, None, 1, 1)).describe() == "b[0:1]"
    assert res.allocate(R(None, None, 2, 2)) is None
    res2 = local_resources("a:2,b:2,c:2")
    assert res2.allocate(R(None, None, 1, None)).nnodes == 3


def test_release_errors():
    res = local_resources("a:2")
    alloc = res.allocate(R())
    res.release(alloc)
    with pytest.raises(ValueError, match="released twice"):
        res.release(alloc)
    with pytest.raises(ValueError, match="unknown node"):
        res.release(Allocation((("zz", (0,)),)))
    with pytest.raises(ValueError, match="not a task core"):
        res.release(Allocation((("a", (7,)),)))


def test_invalid_requests_raise_and_never_fit_reason():
    res = local_resources("4")
    for req in (R(0, 0), R(3, 2), R(None, None), R(1, 1, 2, 1), R(1, 1, 0, 0)):
        with pytest.raises(ValueError, match="invalid resource request"):
            res.allocate(req)
        assert res.never_fits(req).startswith("invalid resource request")


# -- never fits --------------------------------------------------------------

def test_never_fits_reasons():
    """7.2: minimum above the whole resources -> FAILED, with a clear reason."""
    res = local_resources("a:4,b:2")
    assert res.never_fits(R(8, 8)) == "requires 8 cores but the partition has 6 in total"
    assert res.never_fits(R(6, 6)) is None
    assert res.never_fits(R(1, 1, 3, 3)) == "requires 3 nodes but the partition has 2"
    assert res.never_fits(R(5, 5, 1, 1)) == "requires 1 node with 5 cores each; largest node has 4"
    assert res.never_fits(R(3, 3, 2, 2)) == "requires 2 nodes with 3 cores each; only 1 node has that many"
    assert res.never_fits(R(None, None, 2, 2)) is None
    assert res.never_fits(R(2, None, 1, None)) is None
    # a full partition still "fits" - it only has to wait
    res.allocate(R(6, 6))
    assert res.never_fits(R(6, 6)) is None


def test_system_core():
    """--system-core: one core of the first node reserved for the manager."""
    res = local_resources("a:2,b:2", system_core=True)
    assert res.system_core == ("a", 0)
    assert res.info() == {"total_nodes": 2, "total_cores": 4, "used_cores": 1, "free_cores": 3}
    assert res.reserve_system_core() == ("a", 0)                 # idempotent
    assert res.never_fits(R(4, 4)) == ("requires 4 cores but the partition has 3 in total "
                                       "(1 reserved for the system)")
    assert "largest node has 2" in res.never_fits(R(3, 3, 1, 1))
    assert res.never_fits(R(2, 2, 2, 2)) is not None              # node a has only 1 usable core
    # whole node a = its one usable core (the original never used node a here)
    assert res.allocate(R(None, None, 2, 2)).describe() == "a[1],b[0:1]"
    with pytest.raises(ValueError):
        res.release(Allocation((("a", (0,)),)))                  # the system core is not a task's


def test_large_partition_single_core_churn():
    """1024 nodes x 128 cores: fill, churn and drain stays cheap (O(log n) per core)."""
    res = Resources([Node(f"n{i}", 128) for i in range(1024)])
    allocs = [res.allocate(R()) for _ in range(1024 * 128)]
    assert res.free_cores == 0 and res.allocate(R()) is None
    assert allocs[0].describe() == "n0[0]" and allocs[-1].describe() == "n1023[127]"
    rnd = random.Random(1)
    for _ in range(20000):
        i = rnd.randrange(len(allocs))
        res.release(allocs[i])
        allocs[i] = res.allocate(R())
        assert allocs[i] is not None
    for a in allocs:
        res.release(a)
    assert res.used_cores == 0
    assert res.allocate(R(None, None, 1024, 1024)).ncores == 1024 * 128


# -- allocation against a straightforward model of the original's algorithm ----

class NaiveResources:
    """Lists and linear scans, written from the documented policy."""

    def __init__(self, spec):
        self.nodes = [(n.name, list(n.core_ids)) for n in parse_nodes_spec(spec)]
        self.free = {name: sorted(ids) for name, ids in self.nodes}

    def allocate(self, req):
        cmin, cmax, nmin, nmax = req.cores_min, req.cores_max, req.nodes_min, req.nodes_max
        free_total = sum(len(v) for v in self.free.values())
        out = []
        if nmin is None:
            if free_total < cmin:
                return None
            want = free_total if cmax is None else min(cmax, free_total)
            for name, _ in self.nodes:
                if want == 0:
                    break
                take = self.free[name][:want]
                if take:
                    out.append((name, tuple(take)))
                    del self.free[name][:len(take)]
                    want -= len(take)
            return Allocation(tuple(out))
        if cmin is None:
            cand = [name for name, ids in self.nodes if len(self.free[name]) == len(ids)]
            if len(cand) < nmin:
                return None
            cand = cand if nmax is None else cand[:nmax]
            for name in cand:
                out.append((name, tuple(self.free[name])))
                self.free[name] = []
            return Allocation(tuple(out))
        cand = [name for name, _ in self.nodes if len(self.free[name]) >= cmin]
        if len(cand) < nmin:
            return None
        cand = cand if nmax is None else cand[:nmax]
        for name in cand:
            k = len(self.free[name]) if cmax is None else min(cmax, len(self.free[name]))
            out.append((name, tuple(self.free[name][:k])))
            del self.free[name][:k]
        return Allocation(tuple(out))

    def release(self, alloc):
        for name, ids in alloc.nodes:
            self.free[name] = sorted(self.free[name] + list(ids))


def random_request(rnd):
    kind = rnd.randrange(4)
    if kind == 0:
        return R()
    if kind == 1:
        lo = rnd.randint(1, 6)
        return R(lo, rnd.choice([lo, lo + rnd.randint(0, 4), None]))
    if kind == 2:
        n = rnd.randint(1, 3)
        return R(None, None, n, rnd.choice([n, n + 1, None]))
    c, n = rnd.randint(1, 4), rnd.randint(1, 3)
    return R(c, rnd.choice([c, c + 2, None]), n, rnd.choice([n, n + 1, None]))


def test_allocation_matches_naive_model_randomized():
    rnd = random.Random(7)
    for trial in range(200):
        spec = ",".join(f"h{i}:{rnd.randint(1, 6)}" for i in range(rnd.randint(1, 5)))
        fast, naive = local_resources(spec), NaiveResources(spec)
        live = []
        for _ in range(60):
            if live and rnd.random() < 0.4:
                a = live.pop(rnd.randrange(len(live)))
                fast.release(a)
                naive.release(a)
                continue
            req = random_request(rnd)
            a, b = fast.allocate(req), naive.allocate(req)
            assert a == b, (trial, spec, req)
            if a is not None:
                live.append(a)
            assert fast.free_cores == sum(len(v) for v in naive.free.values())
