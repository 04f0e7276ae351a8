"""Where and with what a run works, checked before any process starts: request file, working dir, resources,
aux dir, report file.

Everything here can fail on bad input; each failure is one `StartError`
message for the user (issue 3, "Bad input"). A resumed run works in the
interrupted run's aux dir (and working directory, unless `--wd` says
otherwise); a new run makes its own aux dir (see `aux_dir`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qcg.pilotjob.governor import aux_dir as aux_dirs
from qcg.pilotjob.governor.service_config import NothingToResume, ServiceConfig, StartError
from qcg.pilotjob.partition.local_nodes import local_resources
from qcg.pilotjob.partition.resources import Resources

if TYPE_CHECKING:
    from qcg.pilotjob.governor.journal import Replay


@dataclass
class RunPlace:
    requests: list[Any]          # of the request file (`--file-path`), in order
    wd: str
    aux_dir: str
    instance_id: str
    resources: Resources
    slurm_mode: bool             # the resources are a Slurm allocation's (node agents start with srun)
    replay: "Replay | None" = None   # with --resume: the interrupted run's journal


def prepare_run(cfg: ServiceConfig, instance_id: str) -> RunPlace:
    """The run's place; `instance_id` is the new run's id (a resumed run keeps the interrupted one's)."""
    requests: list[Any] = []
    if cfg.file_path is not None:
        from qcg.pilotjob.governor.file_interface import RequestFileError, load_requests

        try:
            requests = load_requests(cfg.file_path)
        except RequestFileError as exc:
            raise StartError(str(exc)) from None
    resume_aux = None
    replay = None
    if cfg.resume:
        from qcg.pilotjob.governor import journal as journal_mod

        try:
            resume_aux = journal_mod.find_aux_dir(cfg.resume)
            aux_dirs.check_own_dir(resume_aux, "--resume: aux directory")
            aux_dirs.check_own_files(resume_aux, (journal_mod.REQS_FILE, journal_mod.STATES_FILE),
                                     "--resume: journal")
            aux_dirs.take_lock(resume_aux)
        except (FileNotFoundError, aux_dirs.AuxDirError) as exc:
            raise StartError(str(exc)) from None
        except OSError as exc:      # resume_aux None: the directory given could not even be searched
            raise StartError(f"--resume: aux directory '{resume_aux or cfg.resume}' cannot be used: "
                             f"{exc.strerror}") from None
        replay = _read_journal(resume_aux, cfg)
    if cfg.report_format != "none" and not cfg.parent:
        # checked before any directory is made: a refused start leaves nothing behind
        inside = os.path.normpath(os.path.join("aux", cfg.report_file))
        if inside in {os.path.join("aux", name) for name in _own_files(cfg)}:
            raise StartError(f"--report-file '{cfg.report_file}': the service writes its own "
                             f"'{os.path.basename(inside)}' in the aux directory; choose another name")
    # a resumed run works where the interrupted one did, unless told otherwise
    wd = os.path.abspath(cfg.wd or (os.path.dirname(resume_aux) if resume_aux else "."))
    if os.path.exists(wd) and not os.path.isdir(wd):
        raise StartError(f"working directory '{wd}' is not a directory")
    try:
        os.makedirs(wd, mode=0o775, exist_ok=True)      # never writable by all, whatever the umask (check_wd)
    except OSError as exc:
        raise StartError(f"working directory '{wd}' cannot be created: {exc.strerror}") from None
    if not os.access(wd, os.W_OK | os.X_OK):
        raise StartError(f"working directory '{wd}' is not writable")
    slurm_mode = not cfg.nodes and (
        cfg.resources == "slurm" or cfg.slurm_resources_file is not None
        or (cfg.resources == "auto" and bool(os.environ.get("SLURM_JOB_CPUS_PER_NODE"))
            and _in_slurm_allocation()))
    try:
        if slurm_mode:
            from qcg.pilotjob.partition.slurm_cpu_ids import allocated_cpu_ids
            from qcg.pilotjob.partition.slurm_resources import slurm_resources

            resources = slurm_resources(
                os.environ, limit_begin=cfg.slurm_limit_nodes_range_begin,
                limit_end=cfg.slurm_limit_nodes_range_end, resources_file=cfg.slurm_resources_file,
                system_core=cfg.system_core, cpu_ids=allocated_cpu_ids)
        else:
            resources = local_resources(cfg.nodes, cfg.system_core)
    except ValueError as exc:
        # parse_nodes_spec names `--nodes` and the item itself
        raise StartError(f"Slurm allocation: {exc}" if slurm_mode else str(exc)) from None
    aux_dir = ""
    try:
        aux_dirs.check_wd(wd)
        if resume_aux:
            aux_dir = resume_aux
            name = os.path.basename(aux_dir)
            instance_id = str(replay.run.get("id") or "") if replay else ""
            instance_id = instance_id or (name[len(aux_dirs.PREFIX):] if name.startswith(aux_dirs.PREFIX) else name)
        elif cfg.aux_dir or cfg.id:
            aux_dir = os.path.abspath(cfg.aux_dir) if cfg.aux_dir else \
                os.path.join(wd, aux_dirs.PREFIX + instance_id)
            aux_dirs.make_or_reuse(aux_dir)
        else:
            instance_id, aux_dir = aux_dirs.make_new(wd)
        os.makedirs(os.path.join(aux_dir, "tmp"), mode=0o700, exist_ok=True)
        if not resume_aux and not cfg.parent:
            # a partition manager works in a dir of its governor's (locked), or one of its own; one left
            # over from a killed governor may live a few seconds more, and must not block the resume
            aux_dirs.take_lock(aux_dir)
    except aux_dirs.AuxDirError as exc:
        raise StartError(str(exc)) from None
    except OSError as exc:
        where = f"'{aux_dir}'" if aux_dir else f"in '{wd}'"
        raise StartError(f"aux directory {where} cannot be created: {exc.strerror}") from None
    if cfg.report_format != "none" and not cfg.parent:      # a partition manager writes no report
        report = os.path.join(aux_dir, cfg.report_file)
        try:
            open(report, "a", opener=aux_dirs.opener_for(report, aux_dir)).close()
        except OSError as exc:
            raise StartError(f"--report-file '{cfg.report_file}': '{report}' cannot be written: "
                             f"{exc.strerror}") from None
    return RunPlace(requests, wd, aux_dir, instance_id, resources, slurm_mode, replay)


def _own_files(cfg: ServiceConfig) -> tuple[str, ...]:
    """The names in the aux dir that the service itself writes (a report there would overwrite one)."""
    from qcg.pilotjob.api import protocol
    from qcg.pilotjob.governor import journal as journal_mod

    return (cfg.final_status_file, "service.log", aux_dirs.LOCK_FILE, journal_mod.REQS_FILE,
            journal_mod.STATES_FILE, journal_mod.REQS_FILE + journal_mod.CUT_SUFFIX, protocol.ADDRESS_FILE,
            protocol.PUB_ADDRESS_FILE, protocol.KEYS_DIR, "tmp", "partitions", "agent-keys")


RESUMED_OPTIONS = ("wd", "nodes", "report_format", "report_file")


def run_options(cfg: ServiceConfig, wd: str, instance_id: str, aux_dir: str) -> dict[str, Any]:
    """The options a resume takes over, the run's id and where its aux dir was (journalled at every start,
    `Journal.run_started`)."""
    return {"wd": wd, "nodes": cfg.nodes, "report_format": cfg.report_format, "report_file": cfg.report_file,
            "id": instance_id, "aux": aux_dir}


def _moved_wd(run: dict[str, Any], aux_dir: str) -> str | None:
    """The working directory of a run that was moved (or copied) with its aux dir inside: the aux dir's
    directory now. Its old place (gone, or the original of a copy) is not where the rest should run.
    None when the run was not moved, or its aux dir was not inside its working directory (`--aux-dir`)."""
    old_wd, old_aux = run.get("wd"), run.get("aux")
    if not isinstance(old_wd, str) or not isinstance(old_aux, str):
        return None
    if os.path.normpath(os.path.dirname(old_aux)) != os.path.normpath(old_wd):
        return None
    if os.path.realpath(old_aux) == os.path.realpath(aux_dir):
        return None
    return os.path.dirname(os.path.abspath(aux_dir))


def _read_journal(aux_dir: str, cfg: ServiceConfig) -> "Replay":
    """The interrupted run's journal, read once the aux dir is locked; its torn ends cut off (what is
    appended must follow whole records). A damaged journal refuses the start."""
    from qcg.pilotjob.governor import journal as journal_mod

    try:
        replay = journal_mod.load(aux_dir)
    except journal_mod.JournalError as exc:
        raise StartError(f"--resume: {exc}") from None
    except OSError as exc:
        raise StartError(f"--resume: the journal in '{aux_dir}' cannot be read: {exc.strerror}") from None
    for note in replay.notes:
        print(f"Warning: --resume: {note}", file=sys.stderr)
    # what the interrupted run was told, unless this one is told otherwise: its tasks' directory, its
    # resources, one report in one format
    moved = _moved_wd(replay.run, aux_dir)
    for option, value in replay.run.items():
        if option == "wd" and moved is not None:
            value = moved
        if option in RESUMED_OPTIONS and option not in cfg.given and value is not None:
            if option == "nodes" and cfg.given & {"resources", "slurm_resources_file"}:
                continue        # told where the resources come from: not the interrupted run's --nodes
            setattr(cfg, option, value)
    if not replay.unfinished() and not cfg.file_path and not cfg.net:
        raise NothingToResume(f"--resume {aux_dir}: nothing to resume, every job of the run has ended "
                              f"({sum(len(s.descs) for s in replay.submissions)} submitted); no file changed")
    if moved is not None and "wd" not in cfg.given:
        print(f"Warning: --resume: the run was moved from '{replay.run['wd']}': its unfinished tasks run in "
              f"'{moved}', where its aux dir is now", file=sys.stderr)
    return replay


def _in_slurm_allocation() -> bool:
    from qcg.pilotjob.partition.slurm_resources import in_slurm_allocation

    return in_slurm_allocation(os.environ)
