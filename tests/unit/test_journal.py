"""The journal behind --resume (reference 13 "Resuming"; issue 3 "journal: every accepted submission and
every final state, written in batches and flushed before the run reports success")."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import datetime

import msgpack
import pytest

from qcg.pilotjob.governor import journal as jmod
from qcg.pilotjob.governor.journal import Journal
from qcg.pilotjob.governor.states import JobState

from .test_governor import Harness


def J(name, **kw):
    d = {"name": name, "execution": {"exec": "/bin/echo", "args": ["${it}", "$$x", "q\"uote"]}}
    d.update(kw)
    return d


@pytest.fixture
def aux(tmp_path):
    d = tmp_path / ".qcgpjm-service-t1"
    d.mkdir()
    return d


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def records(path):
    """The msgpack maps of track.reqs."""
    return list(msgpack.Unpacker(io.BytesIO(path.read_bytes()), raw=False))


def replay_into(h: Harness, replay: "jmod.Replay") -> None:
    """What the service's `_replay` does: the journal's submissions and removals, in order."""
    for step in replay.steps:
        if isinstance(step, jmod.Removal):
            h.gov.remove(step.names)
        else:
            h.gov.submit(step.descs, rcnt=step.rcnt, when=step.when, done=step.done)


def test_submission_written_before_answer(aux):
    """Issue 3 / DESIGN principle 4: every accepted submission is journalled (on disk) before it is answered."""
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"), J("it", iteration={"stop": 3}))
    recs = records(aux / jmod.REQS_FILE)     # not closed, not flushed explicitly: already on disk
    assert len(recs) == 1
    assert [d["name"] for d in recs[0]["jobs"]] == ["a", "it"]
    assert recs[0]["rcnt"] == 1
    # the description is stored unsubstituted, quotes and $$ intact
    assert recs[0]["jobs"][0]["execution"]["args"] == ["${it}", "$$x", "q\"uote"]
    j.close()
    h.close()


def test_a_submission_the_disk_cut_short_is_refused_and_leaves_nothing(aux, monkeypatch):
    """A full disk in the middle of a submission's record: the submit is refused (its OSError reaches the
    request) and the torn start is cut off again, so the journal holds neither the refused batch (a resume
    would run what the client was told was refused) nor garbage in front of the next one."""
    from qcg.pilotjob.governor import append_file
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"))
    size = (aux / jmod.REQS_FILE).stat().st_size
    real_write = os.write
    calls = []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(append_file.os, "write", write)
    with pytest.raises(OSError):
        h.submit(J("b"))
    assert (aux / jmod.REQS_FILE).stat().st_size == size
    monkeypatch.setattr(append_file.os, "write", real_write)
    h.submit(J("b"))                        # the refused name was not taken
    assert [r["jobs"][0]["name"] for r in records(aux / jmod.REQS_FILE)] == ["a", "b"]
    j.close()
    h.close()


def test_states_are_batched_and_flushed(aux):
    """Issue 3 "written in batches and flushed": final states buffered until flush/close."""
    j = Journal(str(aux), batch=1000)
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"), J("it", iteration={"stop": 2}))
    h.finish("a")
    h.finish("it:1")
    states_path = aux / jmod.STATES_FILE
    assert states_path.read_text() == ""
    j.flush()
    recs = lines(states_path)
    assert {(r["task"], r["it"], r["state"]) for r in recs} == {("a", None, "SUCCEED"), ("it:1", 1, "SUCCEED")}
    h.finish("it:0")
    j.close()
    recs = lines(states_path)
    assert ("it", None, "SUCCEED") in {(r["task"], r["it"], r["state"]) for r in recs}
    h.close()


def test_load_round_trip_out_of_order(aux):
    """Reference 13 + issue 3 "--resume finishes exactly the unfinished tasks — including iterations that
    finished out of order": load() returns the submissions and exactly the recorded final states."""
    j = Journal(str(aux))
    h = Harness(queue_limit=10)
    h.gov.add_listener(j)
    h.submit(J("a"), J("it", iteration={"stop": 10}), J("b", dependencies={"after": ["a"]}))
    h.finish("it:7")
    h.finish("it:2")
    h.finish("it:5", "FAILED", code=1)
    j.close()
    replay = jmod.load(str(aux))
    assert len(replay.submissions) == 1
    sub = replay.submissions[0]
    assert [d.name for d in sub.descs] == ["a", "it", "b"]
    assert sub.done == {"it": {7: JobState.SUCCEED, 2: JobState.SUCCEED, 5: JobState.FAILED}}
    assert replay.finish_after_all is False
    h.close()


def test_replay_into_new_governor_runs_only_unfinished(aux):
    """Reference 13.3: a resumed governor hands out only the iterations not recorded as finished."""
    j = Journal(str(aux))
    h = Harness(queue_limit=20)
    h.gov.add_listener(j)
    h.submit(J("it", iteration={"stop": 10}), J("p"))
    for tid in ("it:9", "it:0", "it:4", "p"):
        h.finish(tid)
    j.close()
    h.close()

    replay = jmod.load(str(aux))
    h2 = Harness(queue_limit=20)
    for sub in replay.submissions:
        h2.gov.submit(sub.descs, rcnt=sub.rcnt, when=sub.when, done=sub.done)
    h2.drain()
    assert sorted(h2.part.ids) == sorted(f"it:{i}" for i in (1, 2, 3, 5, 6, 7, 8))
    assert h2.state("p") is JobState.SUCCEED
    for tid in list(h2.part.ids):
        h2.finish(tid)
    assert h2.state("it") is JobState.SUCCEED
    assert h2.gov.all_finished
    h2.close()


def test_load_tolerates_torn_last_line(aux):
    """Issue 3 "Nothing lost": a kill during a write leaves a torn record or line; load drops it, keeps the
    rest and says so; `cut_torn_ends` cuts both off (the torn submission kept aside), so that what a resumed
    run appends follows whole records and the next resume reads it."""
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"))
    h.finish("a")
    j.close()
    whole_reqs = (aux / jmod.REQS_FILE).stat().st_size
    whole_states = (aux / jmod.STATES_FILE).stat().st_size
    with open(aux / jmod.STATES_FILE, "a") as f:
        f.write('{"task": "b", "it": nu')
    torn = msgpack.packb({"rcnt": 2, "time": "2026-01-01T00:00:00", "jobs": [J("b")]})[:-7]
    with open(aux / jmod.REQS_FILE, "ab") as f:
        f.write(torn)
    replay = jmod.load(str(aux))
    assert replay.submissions[0].done == {"a": {None: JobState.SUCCEED}}
    assert replay.whole_length == {jmod.REQS_FILE: whole_reqs, jmod.STATES_FILE: whole_states}
    assert len(replay.notes) == 1 and "incomplete record" in replay.notes[0]
    jmod.cut_torn_ends(str(aux), replay)
    assert (aux / (jmod.REQS_FILE + jmod.CUT_SUFFIX)).read_bytes() == torn
    j2 = Journal(str(aux))
    h2 = Harness()
    h2.gov.add_listener(j2)
    replay_into(h2, replay)
    h2.submit(J("c"))
    h2.finish("c")
    j2.close()
    again = jmod.load(str(aux))
    assert [d.name for s in again.submissions for d in s.descs] == ["a", "c"]
    assert again.submissions[1].done == {"c": {None: JobState.SUCCEED}} and not again.notes
    h.close()
    h2.close()


@pytest.mark.parametrize("damage, what", [
    (b"\xc1", "unreadable bytes at byte"),                    # 0xc1: never used by msgpack
    (b"\xdb\xff\xff\xff\xff", "unreadable bytes at byte"),    # a 4 GiB string where a record should start
    (msgpack.packb(["not", "a", "map"]), "is not a map"),
    (msgpack.packb({"rcnt": 9, "time": "x", "jobs": [{"name": "b"}]}), "submission record 2"),
])
def test_load_refuses_a_damaged_journal(aux, damage, what):
    """Reference 13 + issue 3 "Nothing lost": damage before the end of track.reqs refuses the resume with
    one message naming the file and the place, rather than resume a part silently (and append new records
    where the next resume could not read them)."""
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"))
    j.close()
    good = (aux / jmod.REQS_FILE).stat().st_size
    with open(aux / jmod.REQS_FILE, "ab") as f:
        f.write(damage + msgpack.packb({"control": "finishAfterAllTasksDone"}))
    with pytest.raises(jmod.JournalError) as err:
        jmod.load(str(aux))
    assert what in str(err.value) and str(aux / jmod.REQS_FILE) in str(err.value)
    if what.startswith("unreadable"):
        assert f"truncate -s {good} " in str(err.value)
    h.close()


def test_damage_that_looks_like_a_torn_end_is_refused(aux):
    """A record whose length was damaged reaches past the end of the file, as a record cut short by a kill
    does; but track.states holds ends of a later submission, so it is damage: the resume is refused rather
    than dropping that answered submission."""
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"))
    h.submit(J("b"))
    h.submit(J("c"))
    h.finish("c")
    j.close()
    recs = records(aux / jmod.REQS_FILE)
    first = msgpack.packb(recs[0])
    damaged = b"\x81\xdb\x00\x10\x00\x00" + msgpack.packb(recs[1])[1:]     # a 1 MiB key where b was
    (aux / jmod.REQS_FILE).write_bytes(first + damaged + b"".join(msgpack.packb(r) for r in recs[2:]))
    with pytest.raises(jmod.JournalError, match="holds ends of submission #3"):
        jmod.load(str(aux))
    h.close()


def test_load_refuses_the_original_programs_journal(aux):
    """README "Resume": aux dirs written by the original 0.14.2 (its track.reqs is JSON lines) cannot be
    resumed; the refusal says so."""
    (aux / jmod.REQS_FILE).write_text('{"request": "submit", "jobs": [{"name": "a"}]}\n')
    with pytest.raises(jmod.JournalError, match="original QCG-PilotJob"):
        jmod.load(str(aux))


def test_unfinished_counts_the_jobs_left_to_run(aux):
    """`--resume` of a run with nothing left starts nothing (service_setup): `unfinished` counts the jobs
    without a final state, a removed job and a resubmission under its name apart."""
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"), J("it", iteration={"stop": 2}))
    h.finish("a")
    h.gov.remove(["a"])
    h.submit(J("a"))
    j.close()
    assert jmod.load(str(aux)).unfinished() == 2
    j = Journal(str(aux))
    h.gov.add_listener(j)
    for tid in ("it:0", "it:1", "a"):
        h.finish(tid)
    j.close()
    assert jmod.load(str(aux)).unfinished() == 0
    h.close()


def test_removed_jobs_not_replayed(aux):
    """Reference 10.3.7 removeJob + 13: a removed job is not resumed."""
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"), J("b"))
    h.finish("a")
    h.gov.remove(["a"])
    j.close()
    replay = jmod.load(str(aux))
    h2 = Harness()
    replay_into(h2, replay)
    assert [j.name for j in h2.gov.registry] == ["b"]
    h.close()
    h2.close()


def test_a_batch_depending_on_a_job_removed_later_is_resumed(aux):
    """Reference 10.3.7 + 13.3: b was accepted after a (SUCCEED), then a was removed; the replay keeps the
    journal's order (submit a, submit b, remove a), so b is resumed and released, not refused as depending
    on an unknown job. A later submit after the resume never reuses a journalled request counter."""
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"))
    h.finish("a")
    h.submit(J("b", dependencies={"after": ["a"]}), J("c"))
    h.gov.remove(["a"])
    h.submit(J("d"))
    j.close()
    h.close()
    replay = jmod.load(str(aux))
    assert replay.last_rcnt == 3
    h2 = Harness()
    replay_into(h2, replay)
    h2.drain()
    assert "a" not in h2.gov.registry
    assert sorted(h2.part.ids) == ["b", "c", "d"]
    h2.close()


def test_removal_flushes_final_states_first(aux):
    """A removal is journalled at once, final states in batches: the removed job's state reaches the disk
    before its removal does, so a kill right after the removal cannot make the resume run it again."""
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    h.submit(J("a"))
    h.finish("a")
    h.gov.remove(["a"])
    assert [x["task"] for x in lines(aux / jmod.STATES_FILE)] == ["a"]     # not closed, not flushed by hand
    j.close()
    h.close()


def test_control_recorded(aux):
    """Reference 10.3.5 + 13: finishAfterAllTasksDone survives a resume."""
    j = Journal(str(aux))
    j.control("finishAfterAllTasksDone")
    j.close()
    assert jmod.load(str(aux)).finish_after_all is True


def test_find_aux_dir(tmp_path):
    """Reference 13.2: --resume takes the aux dir or a working dir (newest aux dir there)."""
    old = tmp_path / ".qcgpjm-service-old"
    new = tmp_path / ".qcgpjm-service-new"
    for d in (old, new):
        d.mkdir()
        (d / jmod.REQS_FILE).write_text("")
    past = time.time() - 100
    os.utime(old, (past, past))
    assert jmod.find_aux_dir(str(old)) == str(old)
    assert jmod.find_aux_dir(str(tmp_path)) == str(new)


@pytest.mark.parametrize("what", ["missing", "empty", "file"])
def test_find_aux_dir_invalid(tmp_path, what):
    """Facts 13: an invalid --resume path is an error naming the path."""
    path = tmp_path / "x"
    if what == "empty":
        path.mkdir()
    elif what == "file":
        path.write_text("x")
    with pytest.raises(FileNotFoundError) as ei:
        jmod.find_aux_dir(str(path))
    assert str(path) in str(ei.value)


def test_replayed_submissions_are_not_journalled_again(aux):
    """Reference 13.3 (resume an already resumed run): a submission replayed from the journal is not
    appended to it a second time."""
    j = Journal(str(aux))
    with j.replaying():
        j.submitted(1, datetime.now(), [], raw=[J("a")])
    j.submitted(2, datetime.now(), [], raw=[J("b")])
    j.close()
    assert [r["rcnt"] for r in records(aux / jmod.REQS_FILE)] == [2]


def test_a_job_journalled_twice_keeps_its_first_record_and_states(aux):
    """Journals written by a resume before that was fixed hold a submission twice: loading keeps one copy,
    with the final states recorded for it, so the job is neither refused as a duplicate nor run again."""
    when = datetime(2026, 1, 2, 3, 4, 5).isoformat()
    sub = {"rcnt": 1, "time": when, "jobs": [J("it", iteration={"stop": 3})]}
    (aux / jmod.REQS_FILE).write_bytes(msgpack.packb(sub) + msgpack.packb(sub))
    (aux / jmod.STATES_FILE).write_text(json.dumps({"task": "it:1", "it": 1, "state": "SUCCEED", "rcnt": 1}) + "\n")
    replay = jmod.load(str(aux))
    assert [[d.name for d in s.descs] for s in replay.submissions] == [["it"]]
    assert replay.submissions[0].done == {"it": {1: JobState.SUCCEED}}


def test_a_user_cancel_stays_final_when_its_end_arrives_after_the_stop_began(aux):
    """Reference 13.1: what the stop itself cancels runs again on resume, but a task (or a whole iterative
    job) the user canceled stays canceled, even when its CANCELED end only arrives after a SIGTERM or
    `finish` began the stop (the kill grace is seconds long)."""
    j = Journal(str(aux))
    h = Harness()
    h.gov.add_listener(j)
    j.canceled_by_stop = h.gov.canceled_by_stop
    h.submit(J("mine"), J("sweep", iteration={"stop": 2}), J("other"))
    assert {"mine", "sweep:0", "sweep:1", "other"} <= set(h.part.ids)
    h.gov.cancel(["mine", "sweep"])                 # the user's; the partition has not answered yet
    h.gov.cancel_everything()                       # the stop's
    for tid in ("mine", "sweep:0", "sweep:1", "other"):
        h.finish(tid, "CANCELED")
    j.close()
    final = {x["task"]: x["state"] for x in lines(aux / jmod.STATES_FILE)}
    assert final == {"mine": "CANCELED", "sweep:0": "CANCELED", "sweep:1": "CANCELED", "sweep": "CANCELED"}
    h.close()
