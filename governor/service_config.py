"""What one run of the service is told: `ServiceConfig` (the CLI's options), its exit codes, `StartError`.

The CLI (`governor/cli.py`) fills a `ServiceConfig`; `service.run` takes it.
Exit codes: 0 when every request was served, 2 when some request of the
request file was refused, 1 when the service could not start (128+N on
signal N is the service's own).
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXIT_OK, EXIT_START_FAILED, EXIT_REFUSED, EXIT_RECORD_LOST, EXIT_INTERNAL_ERROR = 0, 1, 2, 4, 5


class StartError(Exception):
    """The service cannot start; the message is shown to the user as `Error: ...`."""


class NothingToResume(Exception):
    """`--resume` of a run whose every job has ended, with nothing new to serve: exit 0, no file touched
    (a run started only to end would overwrite the run's `final_status.json`)."""


@dataclass
class ServiceConfig:
    wd: str | None = None             # None: the current directory (with --resume: the interrupted run's)
    file_path: str | None = None
    envschema: str = "auto"
    resources: str = "auto"
    report_format: str = "json"
    report_file: str = "jobs.report"
    nodes: str | None = None
    log_level: str = "info"
    system_core: bool = False
    show_progress: bool = False
    enable_proc_stats: bool = False   # ptrace_*.log files of the launched processes (reference 16)
    enable_rt_stats: bool = False     # runtime.qcg_finish in jobs.report, for qcg-pm-report (reference 14)
    wrapper_rt_stats: str | None = None
    id: str | None = None
    tags: list[str] = field(default_factory=list)
    resume: str | None = None
    # options given on the command line (the others are defaults, which --resume takes from the journal)
    given: frozenset[str] = frozenset()
    final_status_file: str = "final_status.json"
    # network interface (issue 4): --net, --net-port, --net-pub-port, --net-port-min/max, --net-interface
    net: bool = False
    net_port: int | None = None
    net_pub_port: int | None = None
    net_port_min: int | None = None
    net_port_max: int | None = None
    net_interface: str | None = None  # None: loopback, or every interface when partitions run on other nodes
    disable_pub: bool = False
    insecure_no_curve: bool = False
    # Slurm allocations and node agents (issue 5)
    disable_nl: bool = False
    nl_init_timeout: float = 600.0
    nl_ready_threshold: float = 1.0
    nl_start_method: str = "slurm"
    nl_task_retries: int = 1
    slurm_limit_nodes_range_begin: int | None = None
    slurm_limit_nodes_range_end: int | None = None
    slurm_resources_file: str | None = None
    # governor and partition managers (issue 6)
    governor: bool = False
    parent: str | None = None
    slurm_partition_nodes: int | None = None
    partition_ready_threshold: float = 1.0
    partition_init_timeout: float = 600.0
    keys: str | None = None           # the parent run's keys (a manager with --parent); default $QCG_PM_KEYS
    aux_dir: str | None = None        # where this run keeps its files (partition managers: inside the governor's)

    @property
    def governor_mode(self) -> bool:
        return self.governor or self.slurm_partition_nodes is not None
