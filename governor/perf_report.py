"""Performance figures of a finished run (`qcg-pm-report`, reference 14.2).

Each figure is computed from the `RunData` that `run_reader` reduced the
run's aux dir to; `stats` and `launch-stats` take its sums, `rusage` and
`efficiency` walk each used core's intervals once.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from qcg.pilotjob.governor.run_reader import Interval, ReportError, RunData


@dataclass(frozen=True)
class Stats:
    """`stats` (reference 14.2.1); times in seconds."""

    total_jobs: int
    failed_jobs: int
    total_cores: int | None
    total_nodes: int | None
    service_started: str
    service_finished: str
    service_runtime: float
    init_overhead: float            # first real task start - service start
    finish_overhead: float          # service end - last real task end
    total_overhead: float
    overhead_ratio: float           # % of the service runtime
    overhead_core_hours: float | None    # total cores x total overhead, in hours


def stats(run: RunData) -> Stats:
    svc = run.require_service()
    assert run.first_start is not None and run.last_end is not None     # read_run refuses runs without
    init, fin = run.first_start - svc.start, svc.finish - run.last_end
    total = init + fin
    ratio = 100.0 * total / svc.runtime if svc.runtime > 0 else 0.0
    core_hours = svc.total_cores * total / 3600.0 if svc.total_cores is not None else None
    return Stats(run.total_jobs, run.failed_jobs, svc.total_cores, svc.total_nodes, svc.started, svc.finished,
                 svc.runtime, init, fin, total, ratio, core_hours)


@dataclass(frozen=True)
class LaunchStats:
    """`launch-stats` (reference 14.2.2); the finish figures are None for a run without --enable-rt-stats."""

    jobs: int                       # tasks the figures are over
    rt_stats: bool
    without_qcg_finish: int         # with rt_stats: started tasks left out for lack of qcg_finish
    total_start: float              # sum of EXECUTING - SCHEDULED
    avg_start: float
    avg_real_runtime: float         # mean of final - EXECUTING
    total_finish: float | None = None   # sum of qcg_finish - final
    total: float | None = None
    avg_finish: float | None = None
    avg_total: float | None = None
    avg_qcg_runtime: float | None = None    # mean of qcg_finish - SCHEDULED
    overhead_per_runtime: float | None = None   # avg_total / avg_real_runtime, %


def launch_stats(run: RunData) -> LaunchStats:
    if run.n_start == 0:
        raise ReportError(f"{run.aux_dir}: no started task has a SCHEDULED time in its history")
    if run.n_rt == 0:
        n = run.n_start
        return LaunchStats(n, False, 0, run.sum_start, run.sum_start / n, run.sum_real / n)
    n = run.n_rt
    avg_total = (run.rt_sum_start + run.rt_sum_finish) / n
    avg_real = run.rt_sum_real / n
    return LaunchStats(n, True, run.n_start - n, run.rt_sum_start, run.rt_sum_start / n, avg_real,
                       run.rt_sum_finish, run.rt_sum_start + run.rt_sum_finish, run.rt_sum_finish / n,
                       avg_total, run.rt_sum_qcg / n, 100.0 * avg_total / avg_real if avg_real > 0 else 0.0)


@dataclass(frozen=True)
class CoreUsage:
    node: str
    core: str
    busy: float                     # seconds some task ran on it, inside its window
    window: float                   # seconds it is judged over

    @property
    def utilization(self) -> float:
        return 100.0 * self.busy / self.window if self.window > 0 else 100.0

    @property
    def unused(self) -> float:
        return self.window - self.busy


@dataclass(frozen=True)
class Usage:
    """`rusage` / `efficiency` (reference 14.2.5, 14.2.6)."""

    used_cores: int
    avg_utilization: float          # mean over the used cores of their utilization, %
    cores: list[CoreUsage]
    total_cores: int | None = None
    all_cores_utilization: float | None = None  # rusage: busy time of all cores / (total cores x runtime), %


def merged(intervals: list[Interval], lo: float | None = None, hi: float | None = None) -> list[tuple[float, float]]:
    """Union of sorted intervals, clipped to [lo, hi]: a core counts as busy once however many tasks overlap."""
    out: list[tuple[float, float]] = []
    for s, e, _ in intervals:
        if lo is not None and s < lo:
            s = lo
        if hi is not None and e > hi:
            e = hi
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def rusage(run: RunData) -> Usage:
    """Each used core over the whole service runtime: time before its first and after its last task is lost."""
    svc = run.require_service()
    cores = []
    for node, core, ivs in run.core_intervals():
        busy = sum(e - s for s, e in merged(ivs, svc.start, svc.finish))
        cores.append(CoreUsage(node, core, busy, svc.runtime))
    avg = sum(c.utilization for c in cores) / len(cores)
    all_util = None
    if svc.total_cores and svc.runtime > 0:
        all_util = 100.0 * sum(c.busy for c in cores) / (svc.total_cores * svc.runtime)
    return Usage(len(cores), avg, cores, svc.total_cores, all_util)


def efficiency(run: RunData) -> Usage:
    """Reference 14.2.6: a core counts as used while a task runs on it and while a task waits for its
    other cores to free up; lost is only what launching and end handling took.

    So for every task only the time from the moment it could have started --
    the latest end, on its cores, of the tasks just before it there -- to its
    real start is lost, on each of its cores; a core's first task counts from
    the run's first real start. Every core is judged over the same window,
    the first real start to the last real end. This is the original's
    `efficiency` (qcg-pilotjob-cmds 0.14.2), which gives the same figures.
    """
    cores = list(run.core_intervals())          # sorts each core's intervals by start
    window = (run.last_end - run.first_start) if run.first_start is not None and run.last_end is not None else 0.0
    lost: dict[int, float] = {}
    for iv, lists in run.tasks:
        ready = None
        for lst in lists:
            pos = bisect_left(lst, iv)
            if pos and (ready is None or lst[pos - 1][1] > ready):
                ready = lst[pos - 1][1]
        delay = max(0.0, iv[0] - (ready if ready is not None else run.first_start))
        for lst in lists:
            lost[id(lst)] = lost.get(id(lst), 0.0) + delay
    usage = [CoreUsage(node, core, max(0.0, window - lost.get(id(ivs), 0.0)), window) for node, core, ivs in cores]
    avg = sum(c.utilization for c in usage) / len(usage)
    return Usage(len(usage), avg, usage)
