"""Command line of `qcg-gov`, `qcg-pm-service` and `python -m qcg.pilotjob.service`.

The options and their spellings are the reference's, so existing job
scripts keep working. Options of features that this build does not provide
yet are accepted by the parser and refused with one clear line.
"""

from __future__ import annotations

import math
import os
import signal
import sys

import click
from click.core import ParameterSource

from qcg.pilotjob.agent.process_end import run_then_exit
from qcg.pilotjob.api.protocol import KEYS_ENV
from qcg.pilotjob.governor.logs import LEVELS
from qcg.pilotjob.governor.lossy_stream import make_standard_streams_lossy
from qcg.pilotjob.governor.service import run
from qcg.pilotjob.governor.service_config import EXIT_START_FAILED, ServiceConfig


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """FloatRange lets nan through (no comparison is true) and inf would make a wait endless."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--net", is_flag=True, help="enable the network (ZMQ) interface")
@click.option("--net-port", type=int, help="port of the network interface (implies --net)")
@click.option("--net-pub-port", type=int, help="port publishing events (implies --net)")
@click.option("--net-port-min", type=int, help="lowest port to try (implies --net)")
@click.option("--net-port-max", type=int, help="highest port to try (implies --net)")
@click.option("--net-interface", metavar="ADDR",
              help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface; implies --net)")
@click.option("--insecure-no-curve", is_flag=True,
              help="DANGEROUS: serve the network interface without CURVE authentication and encryption "
                   "(only for legacy clients that cannot do CURVE)")
@click.option("--file", "file_flag", is_flag=True, help="enable the file interface")
@click.option("--file-path", help="path of the request file (implies --file)")
@click.option("--wd", help="working directory of the service (default: the current one; with --resume, the "
                            "interrupted run's)")
@click.option("--envschema", type=click.Choice(["auto", "slurm"]), default="auto", show_default=True,
              help="job environment schema")
@click.option("--resources", type=click.Choice(["auto", "slurm", "local"]), default="auto", show_default=True,
              help="source of the resources description")
@click.option("--report-format", type=click.Choice(["json", "text", "none"]), default="json", show_default=True,
              help="format of the job report file")
@click.option("--report-file", default="jobs.report", show_default=True, help="name of the job report file")
@click.option("--nodes", help='available resources: "[name:]cores,..." (implies --resources local)')
@click.option("--log", "log_level", type=click.Choice(list(LEVELS)), default="info", show_default=True,
              help="log level")
@click.option("--system-core", is_flag=True, help="reserve one core for the service")
@click.option("--disable-nl", is_flag=True, help="launch every task with srun instead of node agents")
@click.option("--show-progress", is_flag=True, help="show a progress bar of finished tasks")
@click.option("--governor", is_flag=True, help="run as a governor of partition managers")
@click.option("--parent", help="address of the governor this manager attaches to")
@click.option("--id", "instance_id", help="identifier of this manager (default: host.random)")
@click.option("--tags", help="comma separated tags of this manager")
@click.option("--slurm-partition-nodes", type=click.IntRange(1), metavar="N",
              help="split the nodes into partitions of N nodes, each run by its own manager (implies --governor)")
@click.option("--partition-ready-threshold", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              callback=_finite,
              help="fraction of partition managers that must register before work starts")
@click.option("--partition-init-timeout", type=click.FloatRange(0, min_open=True), default=600,
              show_default=True, callback=_finite,
              help="seconds to wait for partition managers to register")
@click.option("--keys", "keys_path", metavar="DIR",
              help="with --parent: the parent run's aux dir or keys directory (default $QCG_PM_KEYS)")
@click.option("--aux-dir", metavar="DIR", help="directory for this run's own files (default WD/.qcgpjm-service-ID)")
@click.option("--slurm-limit-nodes-range-begin", type=int, help="first node of the allocation to use")
@click.option("--slurm-limit-nodes-range-end", type=int, help="node after the last one to use")
@click.option("--slurm-resources-file", help="file describing the Slurm resources")
@click.option("--resume", help="working or aux directory of an interrupted run to finish")
@click.option("--enable-proc-stats", is_flag=True, help="gather statistics of launched processes")
@click.option("--enable-rt-stats", is_flag=True, help="gather exact start and stop times of processes")
@click.option("--wrapper-rt-stats", help="path of the runtime statistics wrapper")
@click.option("--nl-init-timeout", type=click.FloatRange(0, min_open=True), default=600, show_default=True,
              callback=_finite,
              help="seconds to wait for node agents")
@click.option("--nl-ready-threshold", "--nl-ready-treshold", "nl_ready_threshold", type=float, default=1.0,
              show_default=True, callback=_finite, help="fraction (0.0-1.0) of node agents that must be ready")
@click.option("--disable-pub", is_flag=True, help="disable the event publisher")
@click.option("--nl-task-retries", type=click.IntRange(0, 100), default=1, show_default=True,
              help="how often a task lost with its node runs again elsewhere before it FAILS")
@click.option("--nl-start-method", type=click.Choice(["slurm", "ssh"]), default="slurm",
              show_default=True, help="how node agents are started")
def cli(**opts: object) -> None:
    """Pilot-job manager: runs many tasks inside one allocation (QCG-PilotJob compatible)."""
    flags = {param.name: param.opts[0] for param in click.get_current_context().command.params}
    for name, value in opts.items():
        for text in value if isinstance(value, tuple) else (value,):
            if isinstance(text, str) and not _utf8(text):
                # the run's journal (and every client) carries text as UTF-8: a name in another encoding
                # (a latin-1 directory) failed there with a traceback
                click.echo(f"Error: {flags.get(name, name)}: {text.encode('utf-8', 'replace').decode()!r} "
                           f"is not valid UTF-8 (bytes in another encoding)",
                           err=True)
                sys.exit(EXIT_START_FAILED)
    if opts["file_flag"] and not opts["file_path"]:
        click.echo("Error: --file needs --file-path", err=True)
        sys.exit(EXIT_START_FAILED)
    net = bool(opts["net"]) or any(opts[k] is not None for k in (
        "net_port", "net_pub_port", "net_port_min", "net_port_max", "net_interface"))
    if opts["parent"]:
        for key, flag in (("file_path", "--file-path"), ("resume", "--resume"), ("net", "--net")):
            if opts[key]:
                click.echo(f"Error: a manager with --parent takes its work from the parent; {flag} cannot be "
                           f"used with it", err=True)
                sys.exit(EXIT_START_FAILED)
    elif opts["governor"] and not opts["slurm_partition_nodes"]:
        net = True          # partition managers attach through the network interface
        if opts["nodes"] or opts["system_core"]:
            flag = "--nodes" if opts["nodes"] else "--system-core"
            click.echo(f"Error: {flag} cannot be used with --governor: it runs no tasks of its own; give the "
                       f"nodes to the managers that attach with --parent (or use --slurm-partition-nodes)",
                       err=True)
            sys.exit(EXIT_START_FAILED)
    if not opts["file_path"] and not opts["resume"] and not net and not opts["parent"]:
        click.echo("Error: no interface enabled: give --net or --file-path (or --resume)", err=True)
        sys.exit(EXIT_START_FAILED)
    if opts["insecure_no_curve"] and not net and not opts["parent"] and not opts["slurm_partition_nodes"]:
        click.echo("Error: --insecure-no-curve needs the network interface (--net)", err=True)
        sys.exit(EXIT_START_FAILED)
    low, high = opts["net_port_min"], opts["net_port_max"]
    if low is not None and high is not None and low > high:  # type: ignore[operator]
        click.echo(f"Error: --net-port-min {low} is greater than --net-port-max {high}", err=True)
        sys.exit(EXIT_START_FAILED)
    threshold = opts["nl_ready_threshold"]
    if not 0.0 <= threshold <= 1.0:  # type: ignore[operator]
        click.echo("Error: --nl-ready-threshold must be between 0.0 and 1.0", err=True)
        sys.exit(EXIT_START_FAILED)
    nodes = opts["nodes"]
    if nodes is not None and not str(nodes).strip():
        click.echo("Error: --nodes: empty; give \"[name:]cores,...\" or leave the option out", err=True)
        sys.exit(EXIT_START_FAILED)
    for key, flag in (("wd", "--wd"), ("aux_dir", "--aux-dir"), ("file_path", "--file-path"),
                      ("resume", "--resume"), ("report_file", "--report-file")):
        if opts[key] is not None and not str(opts[key]).strip():
            click.echo(f"Error: {flag}: empty; give a path or leave the option out", err=True)
            sys.exit(EXIT_START_FAILED)
    instance_id = opts["instance_id"]
    if instance_id is not None and (not str(instance_id).strip() or "/" in str(instance_id)
                                    or instance_id in (".", "..")):
        click.echo(f"Error: --id '{instance_id}': must be a name without '/', not empty, '.' or '..' "
                   f"(it names the aux dir .qcgpjm-service-ID)", err=True)
        sys.exit(EXIT_START_FAILED)
    tags = [t.strip() for t in str(opts["tags"] or "").split(",") if t.strip()]
    config = ServiceConfig(
        wd=opts["wd"], file_path=opts["file_path"], envschema=str(opts["envschema"]),  # type: ignore[arg-type]
        resources=str(opts["resources"]), report_format=str(opts["report_format"]),
        report_file=str(opts["report_file"]), nodes=opts["nodes"], log_level=str(opts["log_level"]),  # type: ignore[arg-type]
        system_core=bool(opts["system_core"]), show_progress=bool(opts["show_progress"]),
        enable_proc_stats=bool(opts["enable_proc_stats"]), enable_rt_stats=bool(opts["enable_rt_stats"]),
        wrapper_rt_stats=opts["wrapper_rt_stats"],  # type: ignore[arg-type]
        id=opts["instance_id"], tags=tags, resume=opts["resume"],  # type: ignore[arg-type]
        net=net, net_port=opts["net_port"], net_pub_port=opts["net_pub_port"],  # type: ignore[arg-type]
        net_port_min=opts["net_port_min"], net_port_max=opts["net_port_max"],  # type: ignore[arg-type]
        net_interface=opts["net_interface"], disable_pub=bool(opts["disable_pub"]),  # type: ignore[arg-type]
        insecure_no_curve=bool(opts["insecure_no_curve"]),
        disable_nl=bool(opts["disable_nl"]), nl_init_timeout=float(opts["nl_init_timeout"]),  # type: ignore[arg-type]
        nl_ready_threshold=float(threshold), nl_start_method=str(opts["nl_start_method"]),  # type: ignore[arg-type]
        nl_task_retries=int(opts["nl_task_retries"]),  # type: ignore[arg-type]
        slurm_limit_nodes_range_begin=opts["slurm_limit_nodes_range_begin"],  # type: ignore[arg-type]
        slurm_limit_nodes_range_end=opts["slurm_limit_nodes_range_end"],  # type: ignore[arg-type]
        slurm_resources_file=opts["slurm_resources_file"],  # type: ignore[arg-type]
        governor=bool(opts["governor"]), parent=opts["parent"],  # type: ignore[arg-type]
        slurm_partition_nodes=opts["slurm_partition_nodes"],  # type: ignore[arg-type]
        partition_ready_threshold=float(opts["partition_ready_threshold"]),  # type: ignore[arg-type]
        partition_init_timeout=float(opts["partition_init_timeout"]),  # type: ignore[arg-type]
        # the service works in --wd; paths given relative to where it was started are resolved first
        keys=os.path.abspath(str(opts["keys_path"])) if opts["keys_path"] else None,
        aux_dir=opts["aux_dir"],  # type: ignore[arg-type]
        given=frozenset(name for name in opts
                        if click.get_current_context().get_parameter_source(name) is not ParameterSource.DEFAULT),
    )
    env_keys = os.environ.get(KEYS_ENV)
    if env_keys:
        os.environ[KEYS_ENV] = os.path.abspath(env_keys)
    try:
        sys.exit(run(config))
    except KeyboardInterrupt:   # Ctrl-C before the service's own handler is in place (start-up, a long resume)
        sys.exit(128 + signal.SIGINT)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:      # bytes the OS gave that are not UTF-8 (surrogate escapes)
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    make_standard_streams_lossy()       # a full disk or a closed pipe on stderr must not end the run
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "qcg-gov"
    if prog in ("__main__.py", "-c", "-m", ""):
        prog = "python -m qcg.pilotjob.service"
    try:
        code = cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.ClickException as exc:
        exc.show()              # a bad option value is a start failure (exit 1), as every other one
        sys.exit(EXIT_START_FAILED)
    except click.Abort as exc:
        sys.exit(128 + signal.SIGINT if isinstance(exc.__context__, KeyboardInterrupt) else EXIT_START_FAILED)
    sys.exit(code if isinstance(code, int) else 0)


def program() -> None:
    """`main`, then the process ends at once.

    The console scripts and `python -m qcg.pilotjob.service` come here through
    `qcg.pilotjob.service.program`, which first keeps ssl out of the process.
    """
    run_then_exit(main)


if __name__ == "__main__":
    program()
