"""The journal behind `--resume`: what was submitted and what has ended.

Two append-only files in the aux dir:

* `track.reqs` — a stream of msgpack maps: every accepted submission (with
  its request counter and time, so placeholders resolve the same way again),
  every removal and the `finishAfterAllTasksDone` command; flushed before the
  request is answered. msgpack, because a submission is written whole: for
  100 000 jobs JSON took 0.3-0.4 s, msgpack about a quarter of that.
* `track.states` — JSON lines, the final state of every task and job,
  buffered within the loop turn in which the task ended and written at its
  end (the service's `FinalsWriter`; with no event publisher, within 50 ms),
  before any request is answered and before the events announcing them are
  published: a `kill -9` of the service loses at most the states of that
  turn (or those 50 ms), and `--resume` runs no task a client was told had
  ended. Written to the OS, not fsync'ed: a crash of the machine itself can
  lose what the OS had not written back.

Resume replays `track.reqs` and marks exactly the recorded tasks as done,
whatever order iterations finished in.
"""

from __future__ import annotations

import json
import json.encoder
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator

import msgpack
import structlog

from qcg.pilotjob.api import protocol
from qcg.pilotjob.api.errors import InvalidJobDescriptionError
from qcg.pilotjob.api.jobparse import parse_jobs
from qcg.pilotjob.api.parse_problems import unencodable_jobs
from qcg.pilotjob.governor.append_file import AppendFile
from qcg.pilotjob.governor.aux_dir import own_opener
from qcg.pilotjob.governor.governor import GovernorListener
from qcg.pilotjob.governor.states import JobState

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import JobDescription
    from qcg.pilotjob.governor.registry import IterationRecord, JobRecord

log = structlog.get_logger("journal")

REQS_FILE = "track.reqs"
STATES_FILE = "track.states"
CUT_SUFFIX = ".cut"
_MAP_HEADS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}     # msgpack: the first byte of a map

_str = json.encoder.encode_basestring_ascii      # a JSON string literal, as json.dumps writes it


class Journal(GovernorListener):
    """`on_pending` is called for every final state put in the buffer: the service then has `flush()`
    called at the end of the loop turn, or within 50 ms when it publishes no events (and always before
    it answers a request). Without it states are written per `batch` and by `flush()` only.
    """

    def __init__(self, aux_dir: str, batch: int = 512, on_pending: Callable[[], object] | None = None) -> None:
        self._reqs = AppendFile(os.path.join(aux_dir, REQS_FILE), own_opener)
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._states = AppendFile(os.path.join(aux_dir, STATES_FILE), own_opener)
        self._buffer: list[str] = []
        self._batch = batch
        self._on_pending = on_pending
        self._replaying = False
        # the governor's `canceled_by_stop`: tasks killed or never started because the service stops
        # (signal, `finish`) are not final for `--resume`, they run again there; a user's cancel is final
        self.canceled_by_stop: Callable[[str], bool] = _never

    def set_on_pending(self, on_pending: Callable[[], object]) -> None:
        """The service's `due`, known once its writer exists (made after the journal, see `Service.run`)."""
        self._on_pending = on_pending

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Submissions made meanwhile come from this journal: they are not written to it again."""
        self._replaying = True
        try:
            yield
        finally:
            self._replaying = False

    # -- GovernorListener
    def submitted(self, rcnt: int, when: datetime, descs: list["JobDescription"],
                  raw: list[dict] | None = None) -> None:
        if self._replaying:
            return
        jobs = raw if raw is not None else [d.to_dict() for d in descs]
        rec = {"rcnt": rcnt, "time": when.isoformat(), "jobs": jobs}
        try:
            self._write_now(rec)
        except (OverflowError, ValueError, TypeError):   # packing failed, nothing written: refused, with the field
            raise InvalidJobDescriptionError(unencodable_jobs(jobs)) from None

    def task_final(self, job: "JobRecord", iteration: int | None, record: "IterationRecord") -> None:
        if record.state is JobState.CANCELED and self.canceled_by_stop(job.task_id(iteration)):
            return
        it = "null" if iteration is None else iteration
        self._add(f'{{"task": {_str(job.task_id(iteration))}, "it": {it}, '
                  f'"state": "{record.state.value}", "rcnt": {job.rcnt}}}')

    def job_final(self, job: "JobRecord") -> None:
        if job.state is JobState.CANCELED and self.canceled_by_stop(job.name):
            return
        if job.iterative:
            self._add(json.dumps({"task": job.name, "it": None, "state": job.state.value, "rcnt": job.rcnt}))

    def removed(self, names: list[str]) -> None:
        if self._replaying:
            return
        # a job is removed only once final: its final state goes to disk before the removal does, so a
        # resume finds the job ended when it replays the removal
        self.flush()
        self._write_now({"remove": names})

    def control(self, command: str) -> None:
        self._write_now({"control": command})

    def run_started(self, options: dict[str, Any]) -> None:
        """What this run was told that a resume takes over (`service_setup.RESUMED_OPTIONS`)."""
        self._write_now({"run": options})

    # -- files
    def _add(self, line: str) -> None:
        self._buffer.append(line)
        if self._on_pending is not None:
            # not written here even when the buffer is long: the service writes jobs.report first
            self._on_pending()
        elif len(self._buffer) >= self._batch:
            self.flush()

    def _write_now(self, rec: dict[str, Any]) -> None:
        self._reqs.write_record(self._pack(rec))

    def flush(self) -> None:
        if self._buffer:
            self._states.write("\n".join(self._buffer) + "\n")
            self._buffer.clear()
        self._states.flush()

    def close(self, flush: bool = True) -> None:
        """`flush=False`: the final states still buffered are dropped (their report lines were not written)."""
        try:
            if flush:
                self.flush()
        finally:
            try:
                self._reqs.close()
            finally:
                self._states.close()


def _never(_task_id: str) -> bool:
    return False


@dataclass
class Submission:
    rcnt: int
    when: datetime
    descs: list["JobDescription"]
    done: dict[str, dict[int | None, JobState]] = field(default_factory=dict)


@dataclass
class Removal:
    names: list[str]


@dataclass
class Replay:
    steps: list[Submission | Removal]      # in journal order: a later batch may depend on a job removed after it
    finish_after_all: bool
    last_rcnt: int = 0                     # of every submission journalled, replayed or not
    # the whole records' length of a file whose last one a kill cut short: cut there before appending, or
    # what is appended would follow the torn bytes and be unreadable to the next resume
    whole_length: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)      # for the user: what of the journal is not resumed
    run: dict[str, Any] = field(default_factory=dict)  # the options of the last run (`Journal.run_started`)

    @property
    def submissions(self) -> list[Submission]:
        return [s for s in self.steps if isinstance(s, Submission)]

    def unended(self) -> list["JobDescription"]:
        """The jobs of the journal that have not ended (a removed job had), in journal order."""
        live: dict[str, tuple["JobDescription", bool]] = {}     # job name -> (description, ended)
        for step in self.steps:
            if isinstance(step, Removal):
                for name in step.names:
                    live.pop(name, None)
            else:
                for d in step.descs:
                    live[d.name] = (d, None in step.done.get(d.name, ()))
        return [d for d, ended in live.values() if not ended]

    def unfinished(self) -> int:
        return len(self.unended())


class JournalError(Exception):
    """A damaged journal (or not this program's): `--resume` is refused, so that nothing after the damage
    is silently dropped -- nor is anything appended where the next resume could not read it."""


def load(aux_dir: str) -> Replay:
    """Read the journal of an earlier run. A torn last record or line (a kill during a write) is dropped;
    damage anywhere else raises JournalError."""
    steps: list[Submission | Removal] = []
    finish = False
    last_rcnt = 0
    by_key: dict[tuple[str, int], Submission] = {}
    live: dict[str, Submission] = {}
    removed: list[tuple[Submission, str]] = []
    reqs_path = os.path.join(aux_dir, REQS_FILE)
    replay = Replay(steps, False)
    for number, (offset, rec) in enumerate(_records(reqs_path, replay), 1):
        if not isinstance(rec, dict):
            raise JournalError(_damaged(reqs_path, f"record {number} (byte {offset}) is not a map", offset))
        if "jobs" in rec:
            try:
                descs = parse_jobs(rec["jobs"])
                sub = Submission(int(rec["rcnt"]), datetime.fromisoformat(rec["time"]), descs)
            except InvalidJobDescriptionError as exc:
                raise JournalError(_damaged(reqs_path, f"submission record {number} (byte {offset}): {exc}",
                                            offset)) from None
            except (KeyError, TypeError, ValueError) as exc:
                raise JournalError(_damaged(reqs_path, f"submission record {number} (byte {offset}): {exc!r}",
                                            offset)) from None
            last_rcnt = max(last_rcnt, sub.rcnt)
            # a job journalled twice (by a resume before this was fixed) keeps its first record and states
            sub.descs = [d for d in descs if (d.name, sub.rcnt) not in by_key]
            if sub.descs:
                steps.append(sub)
            for d in sub.descs:
                by_key[(d.name, sub.rcnt)] = sub
                live[d.name] = sub
        elif "remove" in rec:
            names = [n for n in rec["remove"] if isinstance(n, str)]
            removed += [(live.pop(n), n) for n in names if n in live]
            steps.append(Removal(names))
        elif rec.get("control") == "finishAfterAllTasksDone":
            finish = True
        elif isinstance(rec.get("run"), dict):
            replay.run = rec["run"]
    states_path = os.path.join(aux_dir, STATES_FILE)
    latest = 0              # the highest request counter track.states has ends of
    if os.path.exists(states_path):
        bad = 0
        with open(states_path, "rb", opener=own_opener) as f:
            data = f.read()
        whole = data.rfind(b"\n") + 1
        if whole < len(data):
            replay.whole_length[STATES_FILE] = whole         # a torn last line: its task runs again
        for line in data[:whole].splitlines():
            try:
                rec = json.loads(line)
                task, it, state = rec["task"], rec["it"], JobState(rec["state"])
                name = task if it is None else task.rpartition(":")[0]
                rcnt = int(rec["rcnt"])
                sub = by_key.get((name, rcnt))
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            latest = max(latest, rcnt)
            if sub is not None:
                sub.done.setdefault(name, {})[it] = state
        if bad:
            replay.notes.append(f"{bad} line(s) of {states_path} are unreadable: the tasks whose ends they "
                                f"recorded run again")
    torn_at = replay.whole_length.get(REQS_FILE)
    if torn_at is not None and latest > last_rcnt:
        # what looked like a record cut short by a kill is damage: a later submission was answered
        raise JournalError(_damaged(reqs_path, f"unreadable bytes at byte {torn_at}, and {STATES_FILE} holds ends "
                                               f"of submission #{latest}, which comes after them", torn_at))
    for sub, name in removed:
        # it was final when removed; a journal that lost its state (written before states were flushed
        # ahead of a removal) gets one, so the removal replays: SUCCEED, to release rather than omit the
        # dependants that were accepted after it
        sub.done.setdefault(name, {}).setdefault(None, JobState.SUCCEED)
    replay.finish_after_all = finish
    replay.last_rcnt = last_rcnt
    return replay


def cut_torn_ends(aux_dir: str, replay: Replay) -> None:
    """Cut off the torn ends `load` found (the aux dir is locked: nobody else writes there); a torn
    submission is kept aside, in case it was damage that only looked like one."""
    for name, length in replay.whole_length.items():
        path = os.path.join(aux_dir, name)
        with open(path, "r+b", opener=own_opener) as f:
            if name == REQS_FILE:
                with open(path + CUT_SUFFIX, "ab", opener=own_opener) as out:
                    f.seek(length)
                    out.write(f.read())
            f.truncate(length)


def _records(path: str, replay: Replay) -> Iterator[tuple[int, Any]]:
    """The records of `track.reqs` in order, with their offsets; a torn end is noted in `replay`, garbage
    raises JournalError."""
    with open(path, "rb", opener=own_opener) as f:     # the file that was checked, not one swapped in
        data = f.read()
    if data[:1] == b"{":
        raise JournalError(f"{path} is JSON: the journal of the original QCG-PilotJob, which this program "
                           f"cannot resume")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    start = 0
    while start < len(data):
        try:
            rec = unpacker.unpack()
        except msgpack.OutOfData:
            if data[start] in _MAP_HEADS:
                break                   # the start of a record, cut short
            raise JournalError(_damaged(path, f"unreadable bytes at byte {start}", start)) from None
        except (ValueError, msgpack.UnpackException):
            raise JournalError(_damaged(path, f"unreadable bytes at byte {start}", start)) from None
        yield start, rec
        start = unpacker.tell()
    if start < len(data):
        # the request it held was never answered: journalled before the answer
        replay.whole_length[REQS_FILE] = start
        replay.notes.append(f"the last {len(data) - start} bytes of {path} are an incomplete record (the run was "
                            f"killed while writing it; kept in {path}{CUT_SUFFIX}): that request had not been "
                            f"answered and is not resumed")


def _damaged(path: str, what: str, keep: int | None = None) -> str:
    fix = f"; to resume what comes before, cut the file there ('truncate -s {keep} {path}')" if keep else \
        "; it is at the start of the file: nothing of it can be resumed" if keep == 0 else ""
    return f"journal {path} is damaged: {what}; refused, so that nothing after the damage is dropped{fix}"


def find_aux_dir(path: str) -> str:
    """The aux dir itself (a directory holding a journal), or the newest `.qcgpjm-service-*` inside a
    working dir."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, REQS_FILE)):
        return path         # an aux dir, whatever its name (`--aux-dir` places one anywhere)
    if os.path.isdir(path):
        cands = [os.path.join(path, e) for e in os.listdir(path)
                 if e.startswith(protocol.AUX_DIR_PREFIX) and os.path.isfile(os.path.join(path, e, REQS_FILE))]
        # only this user's own runs: another user's directory (its mtime set to the future, say) is no candidate
        own = [c for c in cands if _own_dir(c)]
        if own:
            return max(own, key=os.path.getmtime)
        if cands:
            raise FileNotFoundError(f"--resume {path}: the aux directories with a journal there are not this "
                                    f"user's own real directories: {', '.join(sorted(cands))}")
    raise FileNotFoundError(f"--resume {path}: no QCG-PilotJob aux directory with a journal "
                            f"({REQS_FILE}) there")


def _own_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
