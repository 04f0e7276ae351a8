"""`qcg-pm-report`: performance figures of a finished run (reference 14.2).

The commands and the layout of their output are the reference's, so scripts
that read its reports keep working. Every problem with the run directory is
one `Error: ...` line and exit code 1, as `qcg-gov` reports bad input; notes
about the data (which aux dir, what is left out) go to stderr.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import click

from qcg.pilotjob.governor import perf_report as pr
from qcg.pilotjob.governor import run_reader as rr

EXIT_ERROR = 1

_TIMES = """
Data: jobs.report (JSON lines, the default --report-format) and final_status.json in the run's aux dir.
WD is the run's working directory (the newest .qcgpjm-service-* aux dir in it is used, as --resume
picks it) or the aux dir itself. Times of a task: SCHEDULED = started by qcg (cores assigned);
EXECUTING = real start (process spawned, taken by the node agent); SUCCEED/FAILED/CANCELED = real
end (process ended, taken by the agent); runtime.qcg_finish (only with --enable-rt-stats) = end
registered by the service.
"""


def _note(text: str) -> None:
    click.echo(f"note: {text}", err=True)


def _load(wd: str, report_file: str) -> rr.RunData:
    dirs = rr.run_dirs(wd, report_file)
    if len(dirs) > 1:
        _note(f"{wd} holds {len(dirs)} runs; analysing the newest: {os.path.basename(dirs[0])}")
    run = rr.read_run(dirs[0], report_file)
    if run.torn_last_line:
        _note(f"the last line of {report_file} is cut short (the run was killed while writing it); left out")
    if run.earlier:
        _note(f"{run.earlier} tasks ended before this service started (an earlier run resumed in the same aux "
              f"dir); they are left out of the service-time figures (overheads, core use, charts)")
    return run


def _load_tasks(wd: str, report_file: str) -> rr.RunData:
    """`_load` for the figures that need only the tasks' times (stats, rusage and the charts need the
    service's too, and refuse a run without them)."""
    run = _load(wd, report_file)
    if run.service is None:
        _note(f"{rr.STATUS_FILE} is missing: the run has not finished (or was killed); the figures are of the "
              f"{run.total_jobs} tasks it reported so far")
    return run


def _wd_command(name: str, help_text: str) -> Callable:
    """A command taking WD and --report-file, with the common data description in its help."""
    def wrap(fn: Callable) -> Callable:
        fn = click.option("--report-file", default=rr.REPORT_FILE, show_default=True, metavar="NAME",
                          help="name of the job report in the aux dir (qcg-gov --report-file)")(fn)
        fn = click.argument("wd", metavar="WD")(fn)
        return cli.command(name, help=help_text + _TIMES)(fn)
    return wrap


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Performance figures of a finished QCG-PilotJob run (qcg-pm-report COMMAND WD).

    Commands: stats, launch-stats, rusage [--details], efficiency [--details], gantt WD FILE,
    gantt-gaps WD FILE. `qcg-pm-report COMMAND --help` defines each figure.
    """


def _line(label: str, value: object, width: int = 20) -> None:
    click.echo(f"\t{label:>{width}}: {value}")


@_wd_command("stats", """Workflow as a whole (reference 14.2.1).

\b
total jobs         tasks in the report: iterations and non-iterative jobs
                   (an iterative job's own line is not counted; a task
                   reported again after --resume counts once)
failed jobs        of those, the ones ending FAILED
total cores/nodes  the resources (final_status.json)
service started/finished/runtime   final_status.json System.Started,
                   System.Generated, and the difference
init overhead      first task's real start - service start
finish overhead    service end - last task's real end
total overhead     init + finish overhead
overhead ratio     total overhead / service runtime, in %
overhead core-hours  total cores x total overhead, in hours
""")
def stats(wd: str, report_file: str) -> None:
    s = pr.stats(_load(wd, report_file))
    _line("total jobs", s.total_jobs)
    _line("failed jobs", s.failed_jobs)
    _line("total cores", s.total_cores if s.total_cores is not None else "???")
    _line("total nodes", s.total_nodes if s.total_nodes is not None else "???")
    _line("service started", s.service_started)
    _line("service finished", s.service_finished)
    _line("service runtime", f"{s.service_runtime:.2f} secs")
    _line("init overhead", f"{s.init_overhead:.2f} secs")
    _line("finish overhead", f"{s.finish_overhead:.2f} secs")
    _line("total overhead", f"{s.total_overhead:.2f} secs")
    _line("overhead ratio", f"{s.overhead_ratio:.1f}")
    if s.overhead_core_hours is not None:
        _line("overhead core-hours", f"{s.overhead_core_hours:.2f}")


@_wd_command("launch-stats", """Delays of starting and ending tasks, per task (reference 14.2.2).

\b
start overhead     EXECUTING - SCHEDULED: cores assigned to process spawned
finish overhead    qcg_finish - real end: process ended to end registered by
                   the service (needs a run with --enable-rt-stats)
total start (and finish) overhead   sums over the tasks; averages per task
average real job run time   mean of real end - EXECUTING
average qcg job run time    mean of qcg_finish - SCHEDULED
average job overhead per runtime (%)   average total / average real run time
generated for total jobs    tasks the figures are over: every started task
                   (with --enable-rt-stats: every one with qcg_finish)
""")
def launch_stats(wd: str, report_file: str) -> None:
    ls = pr.launch_stats(_load_tasks(wd, report_file))

    def line(label: str, value: object) -> None:
        _line(label, value, 40)

    line("total start overhead", f"{ls.total_start:.4f}")
    if not ls.rt_stats:
        line("average job start overhead", f"{ls.avg_start:.4f}")
        line("average real job run time", f"{ls.avg_real_runtime:.4f}")
        line("generated for total jobs", ls.jobs)
        _note("the run was not made with --enable-rt-stats: the report has no qcg_finish times, so the "
              "finish overheads and qcg run times are unknown; start figures only")
        return
    line("total finish overhead", f"{ls.total_finish:.4f}")
    line("total start and finish overhead", f"{ls.total:.4f}")
    line("average job start overhead", f"{ls.avg_start:.4f}")
    line("average job finish overhead", f"{ls.avg_finish:.4f}")
    line("average job total overhead", f"{ls.avg_total:.4f}")
    line("average real job run time", f"{ls.avg_real_runtime:.4f}")
    line("average qcg job run time", f"{ls.avg_qcg_runtime:.4f}")
    line("average job overhead per runtime (%)", f"{ls.overhead_per_runtime:.2f}")
    line("generated for total jobs", ls.jobs)
    if ls.without_qcg_finish:
        _note(f"{ls.without_qcg_finish} started tasks have no qcg_finish (reported by a run without "
              f"--enable-rt-stats) and are left out")


def _print_usage(usage: pr.Usage, details: bool) -> None:
    _line("used cores", usage.used_cores, 40)
    _line("average core utilization (%)", f"{usage.avg_utilization:.1f}%", 40)
    if usage.total_cores and usage.used_cores < usage.total_cores and usage.all_cores_utilization is not None:
        _line("average ALL cores utilization (%)", f"{usage.all_cores_utilization:.1f}%", 40)
        _note(f"{usage.total_cores - usage.used_cores} of the {usage.total_cores} cores ran no task")
    if details:
        node = None
        for c in usage.cores:
            if c.node != node:
                node = c.node
                click.echo(f"\t{node}")
            click.echo(f"\t\t{c.core:4}: {c.utilization:.1f}%, unused {c.unused:.4f} s")


_DETAILS = click.option("--details", is_flag=True, help="list every used core per node: utilization and unused seconds")


@_DETAILS
@_wd_command("rusage", """Use of the cores over the whole service runtime (reference 14.2.5).

\b
used cores         cores that ran at least one task
average core utilization (%)   mean over the used cores of
                   busy time / service runtime; busy time = the union of
                   the real run times (EXECUTING to real end) of its tasks
average ALL cores utilization (%)   (shown when some cores ran nothing)
                   busy time of all cores / (total cores x service runtime)
--details          per node, each used core: its utilization and
                   unused seconds (service runtime - busy time)
""")
def rusage(wd: str, report_file: str, details: bool) -> None:
    _print_usage(pr.rusage(_load(wd, report_file)), details)


@_DETAILS
@_wd_command("efficiency", """Use of the cores while the plan gave them work (reference 14.2.6).

\b
A core counts as used while a task runs on it and while a task waits for
its other cores to free up: only launch and end-handling delays are lost.
For each task, the time from the latest end of the tasks just before it on
its cores to its real start is lost on each of its cores (a core's first
task: from the run's first real start). Window: the first real start to the
last real end, for every core; as the original's efficiency.
used cores, average core utilization (%) = mean over the used cores of
(window - lost) / window; --details: per core, utilization and unused
(lost) seconds.
""")
def efficiency(wd: str, report_file: str, details: bool) -> None:
    _print_usage(pr.efficiency(_load_tasks(wd, report_file)), details)


def _gantt(wd: str, output: str, report_file: str, gaps: bool) -> None:
    from qcg.pilotjob.governor import gantt   # matplotlib only for charts

    gantt.check_output(output)
    run = _load(wd, report_file)
    bars = gantt.plot(run, output, gaps=gaps)
    what = "idle gaps" if gaps else "task runs"
    click.echo(f"{output}: {bars} {what} on {sum(len(c) for c in run.cores.values())} cores")


_OUTPUT = click.argument("output", metavar="FILE")


@_OUTPUT
@_wd_command("gantt", """Timeline chart of the tasks per core (reference 14.2.3).

\b
One row per used core (node:core), x = seconds since the service started;
a bar per task from its real start (EXECUTING) to its real end; failed
tasks in red. FILE: *.pdf, *.png or *.jpeg (by extension). Needs
matplotlib (pip install 'qcg-pilotjob[gantt]').
""")
def gantt_cmd(wd: str, output: str, report_file: str) -> None:
    _gantt(wd, output, report_file, gaps=False)


@_OUTPUT
@_wd_command("gantt-gaps", """Timeline chart of the idle time per core (reference 14.2.4).

\b
The negative of gantt: one row per used core, a bar for every stretch
between the service start and end when no task ran on it. FILE: *.pdf,
*.png or *.jpeg. Needs matplotlib (pip install 'qcg-pilotjob[gantt]').
""")
def gantt_gaps(wd: str, output: str, report_file: str) -> None:
    _gantt(wd, output, report_file, gaps=True)


def main(argv: list[str] | None = None) -> None:
    """Run one command; a bad run directory is one `Error:` line and exit 1, never a traceback."""
    try:
        code = cli.main(args=argv, prog_name="qcg-pm-report", standalone_mode=False)
    except rr.ReportError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(EXIT_ERROR)
    except BrokenPipeError:         # `qcg-pm-report rusage --details WD | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())    # no second error at exit
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)


def program() -> None:
    """The console script `qcg-pm-report`."""
    main()


if __name__ == "__main__":
    program()
