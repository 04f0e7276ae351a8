"""qcg-pm-report's analysis (governor/run_reader.py, perf_report.py) on hand-written runs with exactly known figures.

Reference 14.2: stats (14.2.1), launch-stats (14.2.2), gantt / gantt-gaps data (14.2.3, 14.2.4),
rusage (14.2.5), efficiency (14.2.6). The run of `write_run` (times in seconds since the service start;
the service ran 10 s on nodes n1, n2 of 2 cores each):

    task   allocation       SCHEDULED EXECUTING end  state    qcg_finish
    a      n1[0]            1.0       1.5       4.5  SUCCEED  4.7
    it:0   n1[1]            2.0       2.25      6.25 SUCCEED  6.5
    it:1   n1[0]            5.0       5.5       7.5  FAILED   8.0
    par    n1[0:1],n2[0]    8.0       8.0       9.0  SUCCEED  9.0
    om     (never ran)                                OMITTED
    it     the iterative job's own line (FAILED, runtime {}): not a task
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from qcg.pilotjob.governor import perf_report as pr
from qcg.pilotjob.governor import run_reader as rr
from qcg.pilotjob.governor import report_cli

BASE = datetime(2024, 1, 1, 10, 0, 0)


def iso(sec: float) -> str:
    return (BASE + timedelta(seconds=sec)).isoformat()


def task(name: str, alloc: str | None, sched: float | None = None, execd: float | None = None,
         end: float | None = None, state: str = "SUCCEED", qcg_finish: float | None = None,
         job: bool = False, **runtime: str) -> dict:
    hist = [{"state": "QUEUED", "date": iso(0.0)}] if job else []
    if sched is not None:
        hist.append({"state": "SCHEDULED", "date": iso(sched)})
    if execd is not None:
        hist.append({"state": "EXECUTING", "date": iso(execd)})
    if end is not None:
        hist.append({"state": state, "date": iso(end)})
    rt: dict = {}
    if alloc is not None:
        rt = {"allocation": alloc, "wd": "/w", "rtime": "0:00:01", "exit_code": "0", "pid": "1"}
    if qcg_finish is not None:
        rt["qcg_finish"] = iso(qcg_finish)
    rt.update(runtime)
    entry = {"name": name, "state": state, "history": hist, "runtime": rt}
    if job:
        entry.update(execution={"exec": "/bin/true"}, resources={"numCores": {"exact": 1}})
    return entry


def run_entries(rt: bool = True) -> list[dict]:
    def q(x: float) -> float | None:
        return x if rt else None
    return [
        task("a", "n1[0]", 1.0, 1.5, 4.5, qcg_finish=q(4.7), job=True),
        task("it:0", "n1[1]", 2.0, 2.25, 6.25, qcg_finish=q(6.5)),
        task("it:1", "n1[0]", 5.0, 5.5, 7.5, "FAILED", qcg_finish=q(8.0)),
        task("it", None, None, 2.25, 7.5, "FAILED", job=True),
        task("par", "n1[0:1],n2[0]", 8.0, 8.0, 9.0, qcg_finish=q(9.0), job=True),
        task("om", None, state="OMITTED", end=8.5, job=True),
    ]


def write_run(aux: Path, entries: list[dict] | None = None, status: bool = True, runtime: float = 10.0,
              text: str | None = None) -> Path:
    aux.mkdir(parents=True, exist_ok=True)
    if text is None:
        text = "".join(json.dumps(e) + "\n" for e in (run_entries() if entries is None else entries))
    (aux / "jobs.report").write_text(text)
    if status:
        (aux / "final_status.json").write_text(json.dumps({
            "System": {"Started": str(BASE), "Generated": str(BASE + timedelta(seconds=runtime))},
            "Resources": {"TotalNodes": 2, "TotalCores": 4, "UsedCores": 0, "FreeCores": 4}}))
    return aux


@pytest.fixture
def aux(tmp_path: Path) -> Path:
    return write_run(tmp_path / "wd" / ".qcgpjm-service-host.1")


def test_stats_figures(aux):
    """Reference 14.2.1: counts, service times, init/finish/total overhead, ratio, core-hours."""
    s = pr.stats(rr.read_run(str(aux)))
    assert (s.total_jobs, s.failed_jobs, s.total_cores, s.total_nodes) == (5, 1, 4, 2)
    assert s.service_started == "2024-01-01 10:00:00" and s.service_finished == "2024-01-01 10:00:10"
    assert s.service_runtime == pytest.approx(10.0)
    assert s.init_overhead == pytest.approx(1.5)
    assert s.finish_overhead == pytest.approx(1.0)
    assert s.total_overhead == pytest.approx(2.5)
    assert s.overhead_ratio == pytest.approx(25.0)
    assert s.overhead_core_hours == pytest.approx(4 * 2.5 / 3600)


def test_launch_stats_with_rt_stats(aux):
    """Reference 14.2.2 with --enable-rt-stats: start = EXECUTING - SCHEDULED, finish = qcg_finish - end."""
    ls = pr.launch_stats(rr.read_run(str(aux)))
    assert ls.rt_stats and ls.jobs == 4 and ls.without_qcg_finish == 0
    assert ls.total_start == pytest.approx(1.25)
    assert ls.total_finish == pytest.approx(0.95)
    assert ls.total == pytest.approx(2.2)
    assert ls.avg_start == pytest.approx(0.3125)
    assert ls.avg_finish == pytest.approx(0.2375)
    assert ls.avg_total == pytest.approx(0.55)
    assert ls.avg_real_runtime == pytest.approx(2.5)
    assert ls.avg_qcg_runtime == pytest.approx(3.05)
    assert ls.overhead_per_runtime == pytest.approx(22.0)


def test_launch_stats_without_rt_stats(tmp_path):
    """Reference 14.2.2: without qcg_finish only the start figures exist; the rest stays unknown (None)."""
    ls = pr.launch_stats(rr.read_run(str(write_run(tmp_path, run_entries(rt=False)))))
    assert not ls.rt_stats and ls.jobs == 4
    assert ls.total_start == pytest.approx(1.25) and ls.avg_start == pytest.approx(0.3125)
    assert ls.avg_real_runtime == pytest.approx(2.5)
    assert ls.total_finish is None and ls.avg_qcg_runtime is None and ls.overhead_per_runtime is None


def test_rusage_figures(aux):
    """Reference 14.2.5: used cores, mean of busy / service runtime over used cores, per-core unused time."""
    u = pr.rusage(rr.read_run(str(aux)))
    assert u.used_cores == 3 and u.total_cores == 4
    per = {(c.node, c.core): (round(c.utilization, 6), round(c.unused, 6)) for c in u.cores}
    assert per == {("n1", "0"): (60.0, 4.0), ("n1", "1"): (50.0, 5.0), ("n2", "0"): (10.0, 9.0)}
    assert [(c.node, c.core) for c in u.cores] == [("n1", "0"), ("n1", "1"), ("n2", "0")]
    assert u.avg_utilization == pytest.approx(40.0)
    assert u.all_cores_utilization == pytest.approx(30.0)


def test_efficiency_figures(aux):
    """Reference 14.2.6 ("counted as used ... when another task was waiting for another resource to free up";
    only launch and end-handling delays count): window 1.5..9.0 s for every core; a core's first task counts
    from the first start (it:0: 0.75 s on n1:1), a later one from the latest end before it on its cores
    (it:1: 5.5 - 4.5; par: 8.0 - 7.5 on all three of its cores, though n1:1 was free since 6.25 and n2:0
    all along: that was the plan waiting for n1:0)."""
    u = pr.efficiency(rr.read_run(str(aux)))
    per = {(c.node, c.core): (c.utilization, c.unused) for c in u.cores}
    assert per[("n1", "0")] == pytest.approx((100 * 6.0 / 7.5, 1.5))
    assert per[("n1", "1")] == pytest.approx((100 * 6.25 / 7.5, 1.25))
    assert per[("n2", "0")] == pytest.approx((100 * 7.0 / 7.5, 0.5))
    assert u.used_cores == 3
    assert u.avg_utilization == pytest.approx(100 * (6.0 + 6.25 + 7.0) / 3 / 7.5)


def test_gantt_lanes(aux):
    """Reference 14.2.3/14.2.4: one lane per used core, tasks and idle gaps in seconds since the start."""
    from qcg.pilotjob.governor.gantt import lanes
    rows, runtime = lanes(rr.read_run(str(aux)))
    assert runtime == pytest.approx(10.0)
    assert [r.label for r in rows] == ["n1:0", "n1:1", "n2:0"]
    assert [r.first_of_node for r in rows] == [True, False, True]
    n10 = rows[0]
    assert [(round(s, 6), round(e, 6), ok) for s, e, ok in n10.tasks] == \
        [(1.5, 4.5, True), (5.5, 7.5, False), (8.0, 9.0, True)]
    assert [(round(s, 6), round(e, 6)) for s, e in n10.gaps] == [(0.0, 1.5), (4.5, 5.5), (7.5, 8.0), (9.0, 10.0)]


@pytest.mark.parametrize("text, expected", [
    ("a[0]", [("a", "0")]),
    ("a[0:1]", [("a", "0"), ("a", "1")]),
    ("n1[0:1],n2[0]", [("n1", "0"), ("n1", "1"), ("n2", "0")]),
    ("node-01.cluster[12:13:14]", [("node-01.cluster", "12"), ("node-01.cluster", "13"),
                                    ("node-01.cluster", "14")]),
])
def test_parse_allocation(text, expected):
    """Every form Allocation.describe writes (`node[c:c],node2[c]`) -- reference 14.2.5 needs the cores."""
    assert rr.parse_allocation(text) == expected


@pytest.mark.parametrize("bad", ["a", "a[]", "[0]", "a[0", "a[0],"])
def test_parse_allocation_refuses(bad):
    with pytest.raises(ValueError):
        rr.parse_allocation(bad)


def test_overlapping_tasks_on_a_core_count_once(tmp_path):
    """Reference 14.2.5: busy time is the union of the intervals (a task run twice after a lost node)."""
    entries = [task("x:0", "n1[0]", 0.0, 1.0, 5.0), task("x:1", "n1[0]", 3.0, 3.0, 6.0),
               task("x:2", "n1[0]", 6.0, 6.0, 6.0)]
    u = pr.rusage(rr.read_run(str(write_run(tmp_path, entries))))
    assert u.cores[0].busy == pytest.approx(5.0)
    assert u.avg_utilization == pytest.approx(50.0)


def test_core_only_with_zero_length_tasks_counts_full(tmp_path):
    """Reference 14.2.6 as documented here: a core that ran only zero-length tasks lost nothing."""
    u = pr.efficiency(rr.read_run(str(write_run(tmp_path, [task("z", "n1[3]", 1.0, 2.0, 2.0, job=True)]))))
    assert u.used_cores == 1 and u.avg_utilization == 100.0


def test_task_reported_again_counts_once_and_earlier_run_left_out(tmp_path):
    """Reference 14.2.1 after --resume: a re-run task counts once; tasks of the earlier service (ended before
    final_status.json's start) are left out of the time figures but counted by launch-stats."""
    entries = [task("b:0", "n1[0]", -20.0, -19.0, -18.0, "CANCELED"), task("b:0", "n1[0]", 1.0, 2.0, 4.0),
               task("b:1", "n1[1]", 1.0, 1.0, 3.0)]
    run = rr.read_run(str(write_run(tmp_path, entries)))
    assert (run.total_jobs, run.ran, run.earlier) == (2, 3, 1)
    s = pr.stats(run)
    assert s.init_overhead == pytest.approx(1.0) and s.finish_overhead == pytest.approx(6.0)
    assert pr.rusage(run).cores[0].busy == pytest.approx(2.0)
    assert pr.launch_stats(run).jobs == 3


def test_run_dirs_newest_first_and_aux_dir_directly(tmp_path):
    """Reference 13/14.2: WD or its aux dir; with several runs the newest (by mtime), as --resume picks."""
    wd = tmp_path / "wd"
    old = write_run(wd / ".qcgpjm-service-h.1")
    new = write_run(wd / ".qcgpjm-service-h.2")
    (wd / ".qcgpjm-service-h.3").mkdir()              # a run that wrote nothing: ignored
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    os.utime(new, (now - 50, now - 50))
    assert rr.run_dirs(str(wd)) == [str(new), str(old)]
    os.utime(old, (now, now))
    assert rr.run_dirs(str(wd))[0] == str(old)
    assert rr.run_dirs(str(new)) == [str(new)]
    custom = write_run(tmp_path / "my-aux")           # qcg-gov --aux-dir
    assert rr.run_dirs(str(custom)) == [str(custom)]


@pytest.mark.parametrize("setup, message", [
    ("missing", "no such directory"),
    ("file", "not a directory"),
    ("no-aux", "no QCG-PilotJob aux directory"),
    ("empty-aux", "hold no jobs.report"),
])
def test_run_dirs_errors(tmp_path, setup, message):
    path = tmp_path / "x"
    if setup == "file":
        path.write_text("")
    elif setup == "no-aux":
        path.mkdir()
    elif setup == "empty-aux":
        (path / ".qcgpjm-service-h.1").mkdir(parents=True)
    with pytest.raises(rr.ReportError, match=message):
        rr.run_dirs(str(path))


@pytest.mark.parametrize("text, message", [
    ("prepare (SUCCEED) \n\t2024-01-01 10:00:00: QUEUED\n", "text format"),
    ("", "empty run"),
    ("\n\n", "empty run"),
    (json.dumps(task("om", None, state="OMITTED", job=True)) + "\n", "none of the 1 tasks was started"),
    ('{"name": "a"}\nnot json\n', "line 1: not a report entry"),
    (json.dumps(task("a", "n1[0]", 1.0, 1.5, 2.0)) + "\nnot json\n", "line 2 is not JSON"),
    (json.dumps(task("a", "n1[0", 1.0, 1.5, 2.0)) + "\n", "line 1: not a report entry"),
])
def test_read_run_refuses(tmp_path, text, message):
    """Bad or empty reports are one clear ReportError, never an exception from deep inside."""
    with pytest.raises(rr.ReportError, match=message):
        rr.read_run(str(write_run(tmp_path, text=text)))


def test_torn_last_line_is_left_out(tmp_path):
    """A run killed while writing its last batch: the cut line is skipped, the rest analysed."""
    text = json.dumps(task("a", "n1[0]", 1.0, 1.5, 2.0)) + "\n" + '{"name": "b", "sta'
    run = rr.read_run(str(write_run(tmp_path, text=text)))
    assert run.torn_last_line and run.total_jobs == 1


def test_missing_final_status(tmp_path):
    """Without final_status.json (killed run) service figures are refused; per-task ones still work."""
    run = rr.read_run(str(write_run(tmp_path, status=False)))
    with pytest.raises(rr.ReportError, match="final_status.json: missing"):
        pr.stats(run)
    with pytest.raises(rr.ReportError, match="final_status.json: missing"):
        pr.rusage(run)
    assert pr.launch_stats(run).jobs == 4
    assert pr.efficiency(run).used_cores == 3


@pytest.mark.parametrize("command", ["launch-stats", "efficiency"])
def test_per_task_figures_of_an_unfinished_run_say_so(tmp_path, capsys, command):
    """launch-stats and efficiency of a run still going (or killed) print their figures with a note that they
    are of the tasks reported so far; before, nothing told them from a finished run's."""
    aux = write_run(tmp_path / "wd" / ".qcgpjm-service-x", status=False)
    rc, out, err = cli([command, str(aux)], capsys)
    assert rc == 0 and ("used cores" in out or "total jobs" in out), out
    assert "note: final_status.json is missing: the run has not finished" in err, err


def test_bad_final_status(tmp_path):
    aux = write_run(tmp_path)
    (aux / "final_status.json").write_text('{"System": {}}')
    with pytest.raises(rr.ReportError, match="not a final status"):
        rr.read_run(str(aux))


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        report_cli.main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_cli_stats_layout(aux, capsys):
    """Reference 14.2.1 example: `label: value` lines, right-aligned labels, secs and the ratio in %."""
    rc, out, err = cli(["stats", str(aux.parent)], capsys)
    assert rc == 0 and err == ""
    assert out.splitlines() == [
        "\t          total jobs: 5", "\t         failed jobs: 1", "\t         total cores: 4",
        "\t         total nodes: 2", "\t     service started: 2024-01-01 10:00:00",
        "\t    service finished: 2024-01-01 10:00:10", "\t     service runtime: 10.00 secs",
        "\t       init overhead: 1.50 secs", "\t     finish overhead: 1.00 secs",
        "\t      total overhead: 2.50 secs", "\t      overhead ratio: 25.0",
        "\t overhead core-hours: 0.00"]


def test_cli_launch_stats_layout(aux, capsys):
    """Reference 14.2.2 example: ten figures, four decimals, the per-runtime ratio with two."""
    rc, out, _ = cli(["launch-stats", str(aux)], capsys)
    assert rc == 0
    lines = [line.strip() for line in out.splitlines()]
    assert lines == [
        "total start overhead: 1.2500", "total finish overhead: 0.9500",
        "total start and finish overhead: 2.2000", "average job start overhead: 0.3125",
        "average job finish overhead: 0.2375", "average job total overhead: 0.5500",
        "average real job run time: 2.5000", "average qcg job run time: 3.0500",
        "average job overhead per runtime (%): 22.00", "generated for total jobs: 4"]


def test_cli_launch_stats_without_rt_stats_says_so(tmp_path, capsys):
    """Reference 14.2.2: a run without --enable-rt-stats gets the start figures and a note why."""
    rc, out, err = cli(["launch-stats", str(write_run(tmp_path, run_entries(rt=False)))], capsys)
    assert rc == 0
    assert "total start overhead: 1.2500" in out and "finish" not in out
    assert "--enable-rt-stats" in err


def test_cli_rusage_details_layout(aux, capsys):
    """Reference 14.2.5 example with --details: node, then `core: pct%, unused X s` per core."""
    rc, out, err = cli(["rusage", "--details", str(aux)], capsys)
    assert rc == 0
    assert [line.strip() for line in out.splitlines()] == [
        "used cores: 3", "average core utilization (%): 40.0%", "average ALL cores utilization (%): 30.0%",
        "n1", "0   : 60.0%, unused 4.0000 s", "1   : 50.0%, unused 5.0000 s",
        "n2", "0   : 10.0%, unused 9.0000 s"]
    assert "1 of the 4 cores ran no task" in err


def test_cli_efficiency_layout(aux, capsys):
    """Reference 14.2.6 example: used cores and the average utilization."""
    rc, out, _ = cli(["efficiency", str(aux)], capsys)
    assert rc == 0
    assert [line.strip() for line in out.splitlines()] == ["used cores: 3", "average core utilization (%): 85.6%"]


@pytest.mark.parametrize("argv, message", [
    (["stats", "/nonexistent/run"], "no such directory"),
    (["gantt", "WD", "chart.txt"], "unsupported chart file type"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    rc, out, err = cli(argv, capsys)
    assert rc == 1 and out == ""
    assert err.startswith("Error: ") and message in err and len(err.strip().splitlines()) == 1


def test_linear_in_tasks(tmp_path):
    """Reference 14.2 on a large run: 100 000 tasks are read and every figure computed in one pass.

    Not a timing assertion: the bound only catches a quadratic slip (it would take minutes)."""
    lines, t = [], 0.0
    for i in range(100_000):
        core = i % 64
        lines.append(json.dumps(task(f"s:{i}", f"n{core // 16}[{core % 16}]", t, t + 0.001, t + 0.5,
                                     qcg_finish=t + 0.502)))
        if core == 63:
            t += 0.5
    aux = write_run(tmp_path, text="\n".join(lines) + "\n", runtime=t + 2)
    began = time.monotonic()
    run = rr.read_run(str(aux))
    assert pr.stats(run).total_jobs == 100_000
    assert pr.rusage(run).used_cores == 64
    assert pr.efficiency(run).avg_utilization > 99.0
    assert pr.launch_stats(run).jobs == 100_000
    assert time.monotonic() - began < 60
