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
from qcg.pilotjob.governor.governor import GovernorListener
from qcg.pilotjob.governor.states import JobState

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import JobDescription
    from qcg.pilotjob.governor.registry import IterationRecord, JobRecord

log = structlog.get_logger("journal")

REQS_FILE = "track.reqs"
STATES_FILE = "track.states"

_str = json.encoder.encode_basestring_ascii      # a JSON string literal, as json.dumps writes it


class Journal(GovernorListener):
    """`on_pending` is called for every final state put in the buffer: the service then has `flush()`
    called at the end of the loop turn, or within 50 ms when it publishes no events (and always before
    it answers a request). Without it states are written per `batch` and by `flush()` only.
    """

    def __init__(self, aux_dir: str, batch: int = 512, on_pending: Callable[[], object] | None = None) -> None:
        self._reqs = open(os.path.join(aux_dir, REQS_FILE), "ab")
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._states = open(os.path.join(aux_dir, STATES_FILE), "a", encoding="utf-8")
        self._buffer: list[str] = []
        self._batch = batch
        self._on_pending = on_pending
        self._replaying = False
        # the governor's `canceled_by_stop`: tasks killed or never started because the service stops
        # (signal, `finish`) are not final for `--resume`, they run again there; a user's cancel is final
        self.canceled_by_stop: Callable[[str], bool] = _never

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
        self._write_now(rec)

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

    # -- files
    def _add(self, line: str) -> None:
        self._buffer.append(line)
        if self._on_pending is not None:
            # not written here even when the buffer is long: the service writes jobs.report first
            self._on_pending()
        elif len(self._buffer) >= self._batch:
            self.flush()

    def _write_now(self, rec: dict[str, Any]) -> None:
        self._reqs.write(self._pack(rec))
        self._reqs.flush()

    def flush(self) -> None:
        if self._buffer:
            self._states.write("\n".join(self._buffer) + "\n")
            self._buffer.clear()
        self._states.flush()

    def close(self) -> None:
        self.flush()
        self._reqs.close()
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
    skipped_lines: int
    last_rcnt: int = 0                     # of every submission journalled, replayed or not

    @property
    def submissions(self) -> list[Submission]:
        return [s for s in self.steps if isinstance(s, Submission)]


def load(aux_dir: str) -> Replay:
    """Read the journal of an earlier run; tolerates a torn last record or line (a kill during a write)."""
    steps: list[Submission | Removal] = []
    finish = False
    skipped = 0
    last_rcnt = 0
    by_key: dict[tuple[str, int], Submission] = {}
    live: dict[str, Submission] = {}
    removed: list[tuple[Submission, str]] = []
    for rec in _records(os.path.join(aux_dir, REQS_FILE)):
        if rec is None or not isinstance(rec, dict):
            skipped += 1
        elif "jobs" in rec:
            try:
                descs = parse_jobs(rec["jobs"])
                sub = Submission(int(rec["rcnt"]), datetime.fromisoformat(rec["time"]), descs)
            except InvalidJobDescriptionError as exc:
                log.error("journal submission unreadable", problems=exc.problems)
                skipped += 1
                continue
            except (KeyError, TypeError, ValueError) as exc:
                log.error("journal submission unreadable", error=str(exc))
                skipped += 1
                continue
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
    states_path = os.path.join(aux_dir, STATES_FILE)
    if os.path.exists(states_path):
        with open(states_path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    task, it, state = rec["task"], rec["it"], JobState(rec["state"])
                    name = task if it is None else task.rpartition(":")[0]
                    sub = by_key.get((name, int(rec["rcnt"])))
                except (ValueError, KeyError, TypeError):
                    skipped += 1
                    continue
                if sub is not None:
                    sub.done.setdefault(name, {})[it] = state
    for sub, name in removed:
        # it was final when removed; a journal that lost its state (written before states were flushed
        # ahead of a removal) gets one, so the removal replays: SUCCEED, to release rather than omit the
        # dependants that were accepted after it
        sub.done.setdefault(name, {}).setdefault(None, JobState.SUCCEED)
    return Replay(steps, finish, skipped, last_rcnt)


def _records(path: str) -> Iterator[Any]:
    """The maps of `track.reqs` in order; None for a torn end (a write cut by a kill) or unreadable rest."""
    with open(path, "rb") as f:
        data = f.read()
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        yield from unpacker
    except (ValueError, msgpack.UnpackException):     # garbage: nothing after it can be framed again
        yield None
        return
    if unpacker.tell() < len(data):
        yield None


def find_aux_dir(path: str) -> str:
    """The aux dir itself, or the newest `.qcgpjm-service-*` inside a working dir."""
    path = os.path.abspath(path)
    if os.path.basename(path).startswith(protocol.AUX_DIR_PREFIX) and os.path.isfile(os.path.join(path, REQS_FILE)):
        return path
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
