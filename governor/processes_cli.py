"""`qcg-pm-processes`: the process tree and the application processes of a job (reference 16.2).

Reads what a run with `--enable-proc-stats` left: the `ptrace_*.log` files
in its working directory and `jobs.report` in its aux dir
(`governor/process_tree.py`). Every problem is one `Error: ...` line and
exit code 1: a user asking about a job should learn what is missing (the
flag, the job, a process too short to be polled), not read a traceback.
"""

from __future__ import annotations

import sys

import click

from qcg.pilotjob.governor import process_tree as pt

EXIT_ERROR = 1


def _load(wd: str, verbose: bool) -> tuple[str, pt.Traces]:
    aux = pt.find_aux_dir(wd)
    traces = pt.load_traces(pt.trace_dirs(wd, aux))
    if verbose:
        click.echo(f"run {aux}; found {len(traces.files)} process traces log files")
    return aux, traces


def _each_job(wd: str, jobs: tuple[str, ...], verbose: bool, show) -> None:
    """Run `show(task, root, traces)` for every job; errors are printed and make the exit code 1."""
    failed = False
    try:
        aux, traces = _load(wd, verbose)
    except pt.TraceError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    for name in jobs:
        try:
            task = pt.job_task(aux, name)
            root = traces.find(task)
        except pt.TraceError as exc:
            click.echo(f"Error: {exc}", err=True)
            failed = True
            continue
        show(task, root, traces)
    if failed:
        sys.exit(EXIT_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Process statistics of a run made with --enable-proc-stats (ptrace_*.log files in its working directory)."""


@cli.command()
@click.argument("wd")
@click.argument("jobs", nargs=-1, required=True, metavar="JOB...")
@click.option("--all", "all_", is_flag=True, help="accepted for the original's scripts: the whole tree is shown anyway")
@click.option("--verbose", is_flag=True, help="say which run and how many statistics files were read")
def tree(wd: str, jobs: tuple[str, ...], all_: bool, verbose: bool) -> None:
    """The process tree of each JOB ("name" or "name:iteration") of the run in WD, with creation delays.

    WD is the run's working directory (its newest .qcgpjm-service-* is used) or an aux dir.
    """
    def show(task: pt.JobTask, root: pt.Proc, traces: pt.Traces) -> None:
        click.echo(f"job {task.name}, job process id {task.pid}, application name {task.program or '?'}")
        for proc, level in pt.walk(root):
            if level == 0:
                when = f"created {pt.format_date(proc.created)}"
            else:
                when = f"after {proc.created - root.created:.2f} secs"
            args = " ".join(proc.cmdline)[:80]
            click.echo(f"{' ' * (2 * (level + 1))}--{proc.pid}:{proc.name} ({args}) node({proc.node}) {when}")

    _each_job(wd, jobs, verbose, show)


@cli.command()
@click.argument("wd")
@click.argument("jobs", nargs=-1, required=True, metavar="JOB...")
@click.option("--verbose", is_flag=True, help="say which run and how many statistics files were read")
def apps(wd: str, jobs: tuple[str, ...], verbose: bool) -> None:
    """The application processes of each JOB of the run in WD: where they ran, their CPU and memory use.

    They are the job's descendants running its executable; for a shell (a
    `script` job) the leaves of its process tree.
    """
    def show(task: pt.JobTask, root: pt.Proc, traces: pt.Traces) -> None:
        found, why = pt.targets(root, task.program)
        click.echo(f"found {len(found)} target processes ({why})")
        for proc in found:
            d = proc.data
            click.echo(f"{proc.pid}:{proc.name}")
            click.echo(f"    created: {pt.format_date(proc.created)}")
            click.echo(f"    cmdline: {' '.join(proc.cmdline)}")
            click.echo(f"    parent: {proc.parent}:{proc.parent_name}")
            click.echo(f"    node: {proc.node}")
            click.echo(f"    cpu affinity: {d.get('cpu_affinity')}")
            click.echo(f"    cpu times: {d.get('cpu_times')}")
            click.echo(f"    cpu memory info: {d.get('memory_info')}")
            click.echo(f"    cpu memory percent: {d.get('memory_percent')}")

    _each_job(wd, jobs, verbose, show)


def program() -> None:
    """The console script: usage errors as click shows them, everything else as one `Error:` line."""
    try:
        cli.main(prog_name="qcg-pm-processes", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(EXIT_ERROR)
    except OSError as exc:           # e.g. stdout closed by `| head`
        if exc.errno != 32:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
    sys.exit(0)


if __name__ == "__main__":
    program()
