"""The aux dir is the run's own (governor/aux_dir.py; DESIGN principle 5 "Secure by default").

A security audit (finding F1, reproduced as a second local user) showed that a run used an aux dir another
user had made first -- in a shared directory, under one of 10 000 guessable names -- and so let that user
read job secrets from the journal, have the service overwrite one of the victim's files through a planted
`final_status.json` symlink, and get commands run as the victim by appending them to the journal before a
`--resume`. Finding F2: the journal and logs, holding job environments, were readable by everybody.
These tests hand a run such directories and check each is refused with one clear line, and that nothing
was written through them.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from tests.conftest import job, run_service, submit

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")


def _ok_run(tmp_path: Path, *args: str, wd: Path | None = None):
    return run_service(tmp_path, [submit(job("a"))], *args, wd=wd, nodes="1", timeout=60)


def test_new_aux_dir_is_private_and_its_name_unguessable(tmp_path):
    """A new run's aux dir is made by the run, mode 0700 whatever the umask (so the journal and logs, with
    job environments, are closed to others), named `<host>.<number>` from a space of 10^9 numbers."""
    r = _ok_run(tmp_path)
    assert r.rc == 0, r.stderr
    assert stat.S_IMODE(r.aux.stat().st_mode) == 0o700
    assert re.fullmatch(r"\.qcgpjm-service-.+\.\d+", r.aux.name)
    names = {_ok_run(tmp_path).aux.name for _ in range(2)} | {r.aux.name}
    assert len(names) == 3


@root_only
def test_fixed_id_aux_dir_of_another_user_is_refused(tmp_path):
    wd = tmp_path / "wd"
    planted = wd / ".qcgpjm-service-fixed"
    planted.mkdir(parents=True)
    target = tmp_path / "precious.txt"
    target.write_text("the victim's data")
    (planted / "final_status.json").symlink_to(target)
    os.chown(planted, NOBODY, NOBODY)
    planted.chmod(0o777)
    r = _ok_run(tmp_path, "--id", "fixed", wd=wd)
    assert r.rc == 1
    assert f"Error: aux directory '{planted}' belongs to another user (uid {NOBODY})" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert target.read_text() == "the victim's data"


def test_aux_dir_that_is_a_link_or_writable_by_others_is_refused(tmp_path):
    """Our own directory, but one others may write into, or a symlink to one: refused, saying how to fix."""
    wd = tmp_path / "wd"
    wd.mkdir()
    open_dir = wd / ".qcgpjm-service-open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    r = _ok_run(tmp_path, "--id", "open", wd=wd)
    assert r.rc == 1 and "may be written by others (mode 777)" in r.stderr and "chmod 700" in r.stderr, r.stderr
    (wd / ".qcgpjm-service-link").symlink_to(tmp_path)
    r = _ok_run(tmp_path, "--id", "link", wd=wd)
    assert r.rc == 1 and "is a symbolic link" in r.stderr, r.stderr
    # our own, private: reused (and a 0755 one from an older version is closed to others)
    own = wd / ".qcgpjm-service-own"
    own.mkdir(mode=0o755)
    own.chmod(0o755)
    r = _ok_run(tmp_path, "--id", "own", wd=wd)
    assert r.rc == 0, r.stderr
    assert stat.S_IMODE(own.stat().st_mode) == 0o700


@root_only
def test_resume_takes_only_the_users_own_aux_dir(tmp_path):
    """`--resume WD` picks the newest aux dir of this user; another user's (made newer, with a journal of
    its own) is passed over, and one that is the only candidate is refused, as is naming it directly."""
    first = _ok_run(tmp_path, "--id", "mine")
    assert first.rc == 0, first.stderr
    wd = first.wd
    planted = wd / ".qcgpjm-service-zzz"
    planted.mkdir()
    (planted / "track.reqs").write_bytes((first.aux / "track.reqs").read_bytes())
    os.chown(planted, NOBODY, NOBODY)
    future = first.aux.stat().st_mtime + 3600
    os.utime(planted, (future, future))
    r = run_service(tmp_path, None, "--resume", str(wd), wd=wd, nodes="1", timeout=60)
    assert r.rc == 0, r.stderr
    assert f"--resume {first.aux}: nothing to resume" in r.stderr      # the run had ended: its own aux dir
    r = run_service(tmp_path, None, "--resume", str(planted), wd=wd, nodes="1", timeout=60)
    assert r.rc == 1 and "belongs to another user" in r.stderr, r.stderr
    (first.aux / "track.reqs").unlink()
    r = run_service(tmp_path, None, "--resume", str(wd), wd=wd, nodes="1", timeout=60)
    assert r.rc == 1 and "not this user's own real directories" in r.stderr, r.stderr


def test_world_writable_working_dir_without_sticky_bit_is_refused(tmp_path):
    """Anybody could rename the aux dir away there and put their own in its place; /tmp-like directories
    (sticky bit: only an entry's owner may rename it) are fine."""
    wd = tmp_path / "shared"
    wd.mkdir()
    wd.chmod(0o777)
    r = _ok_run(tmp_path, wd=wd)
    assert r.rc == 1 and f"working directory '{wd}' may be written by anybody (mode 777" in r.stderr, r.stderr
    assert list(wd.iterdir()) == []
    wd.chmod(0o1777)
    r = _ok_run(tmp_path, wd=wd)
    assert r.rc == 0, r.stderr


def test_aux_dir_placed_in_a_world_writable_directory_is_refused(tmp_path):
    """The same for `--aux-dir`: its directory may not be one where anybody could rename it away."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    r = _ok_run(tmp_path, "--aux-dir", str(shared / "aux"))
    assert r.rc == 1 and f"'{shared}' may be written by anybody (mode 777" in r.stderr, r.stderr
    assert list(shared.iterdir()) == []
    shared.chmod(0o1777)
    assert _ok_run(tmp_path, "--aux-dir", str(shared / "aux")).rc == 0


def test_the_aux_dir_lock_refuses_a_second_holder_and_lives_without_flock(tmp_path, monkeypatch, capsys):
    """README "Resume": a second service in a locked aux dir is refused, naming the holder's pid; on a file
    system without flock (Lustre noflock, NFS without a lock daemon) the run goes on, with a warning,
    instead of every run being refused."""
    import errno
    import fcntl

    from qcg.pilotjob.governor import aux_dir as aux_dirs

    held = tmp_path / "held"
    held.mkdir()
    aux_dirs.take_lock(str(held))
    with pytest.raises(aux_dirs.AuxDirError, match=f"in use by a running service \\(pid {os.getpid()}\\)"):
        aux_dirs.take_lock(str(held))

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    other = tmp_path / "nolocks"
    other.mkdir()
    aux_dirs.take_lock(str(other))
    assert "cannot be locked" in capsys.readouterr().err


@root_only
def test_aux_dir_swapped_during_the_run_gets_no_final_status_through_a_link(tmp_path):
    """A security review (helper, as user nobody) renamed a running service's aux dir away in a
    group-writable working dir, put a directory of its own there with `final_status.json` linked to a
    file of the victim's, and the service overwrote that file at the end. The run's files are now opened
    through a checked directory descriptor, never through a link: the victim's file stays as it was and
    the service says what it could not write."""
    import subprocess
    import time

    from tests.conftest import SERVICE, write_requests

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    wd = tmp_path / "wd"
    wd.mkdir(mode=0o770)
    os.chown(wd, 0, NOBODY)                 # a group-writable project directory
    reqs = write_requests(tmp_path / "reqs.json", [submit(job("s", "/bin/sleep", ["3"])),
                                                   {"request": "control", "command": "finishAfterAllTasksDone"}])
    proc = subprocess.Popen([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", "1", "--id", "v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    aux = wd / ".qcgpjm-service-v"
    deadline = time.monotonic() + 30
    while not (aux / "track.reqs").exists() or not (aux / "track.reqs").stat().st_size:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    # what the other user does: rename the run's directory away, put one of theirs with a link in its place
    os.rename(aux, wd / "moved")
    aux.mkdir(mode=0o777)
    os.chown(aux, NOBODY, NOBODY)
    os.symlink(victim, aux / "final_status.json")
    _, err = proc.communicate(timeout=60)
    assert victim.read_text() == "precious\n"
    assert "could not be written" in err and "Traceback" not in err, err


def test_resume_reads_no_journal_through_a_link(tmp_path):
    """The journal a resume replays is read from the file that was checked: not through a link planted in
    place of track.reqs (before, it was opened by name after the check)."""
    from qcg.pilotjob.governor import journal

    first = _ok_run(tmp_path)
    assert first.rc == 0, first.stderr
    reqs = first.aux / "track.reqs"
    os.rename(reqs, tmp_path / "elsewhere.reqs")
    os.symlink(tmp_path / "elsewhere.reqs", reqs)
    with pytest.raises(PermissionError, match="symbolic link"):
        journal.load(str(first.aux))


def test_umask_000_makes_no_directory_the_run_then_refuses(tmp_path):
    """With umask 000 a new working dir came out 0777 and was then refused as writable by anybody (and left
    behind), and partitioned runs could not start: `<aux>/partitions` was 0777, which every manager
    refused (a security review). The run makes its directories with fixed modes."""
    import subprocess

    from tests.conftest import SERVICE, write_requests

    reqs = write_requests(tmp_path / "reqs.json", [submit(job("a"))])
    wd = tmp_path / "new" / "wd"
    proc = subprocess.run([*SERVICE, "--file-path", str(reqs), "--wd", str(wd), "--nodes", "a:1,b:1",
                           "--slurm-partition-nodes", "1"], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc.stderr
    assert not wd.stat().st_mode & stat.S_IWOTH
    aux = next(wd.glob(".qcgpjm-service-*"))
    assert stat.S_IMODE((aux / "partitions").stat().st_mode) == 0o700
    assert stat.S_IMODE((aux / "tmp").stat().st_mode) == 0o700
    assert stat.S_IMODE((aux / "jobs.report").stat().st_mode) == 0o600


def test_run_file_that_is_a_link_gives_one_error_line(tmp_path):
    """A run's file in a reused aux dir (`--id` again) that is a link -- as a swapped-in directory would
    have -- is refused at the start with one line, never a traceback, and nothing is written through it
    (a review found the report opened through the link and the journal's refusal a traceback)."""
    first = run_service(tmp_path, [submit(job("a"))], "--id", "again", nodes="1", timeout=60)
    assert first.rc == 0, first.stderr
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("track.reqs", "jobs.report", "service.log"):      # service.log: a traceback (helper report)
        (first.aux / name).unlink()
        os.symlink(victim, first.aux / name)
        again = run_service(tmp_path, [submit(job("b"))], "--id", "again", nodes="1", timeout=60)
        assert again.rc == 1
        assert "Traceback" not in again.stderr and again.stderr.startswith("Error: "), again.stderr
        assert len(again.stderr.strip().splitlines()) == 1, again.stderr
        assert victim.read_text() == "precious\n"
        (first.aux / name).unlink()
        (first.aux / name).write_bytes(b"")


def test_report_in_the_aux_dir_is_opened_as_the_runs_own_file(tmp_path):
    from qcg.pilotjob.governor import aux_dir

    aux = str(tmp_path / ".qcgpjm-service-x")
    assert aux_dir.opener_for(os.path.join(aux, "jobs.report"), aux) is aux_dir.own_opener
    assert aux_dir.opener_for(str(tmp_path / "elsewhere.report"), aux) is aux_dir.report_opener


def test_address_and_resources_files_are_not_written_through_links(tmp_path):
    """The review's list of files still opened by name: the address file's temporary copy (a predictable
    name) and a partition's resources file followed a link left in their place; now neither does."""
    from qcg.pilotjob.governor.service_network import _write_atomic
    from qcg.pilotjob.partition.local_nodes import local_resources
    from qcg.pilotjob.partition.slurm_resources import write_resources_file

    aux = tmp_path / "aux"
    aux.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, aux / f"address.tmp{os.getpid()}")
    _write_atomic(str(aux / "address"), "tcp://127.0.0.1:1")
    assert (aux / "address").read_text() == "tcp://127.0.0.1:1"
    assert victim.read_text() == "precious\n"
    os.symlink(victim, aux / "part-0.resources.json")
    with pytest.raises(OSError):
        write_resources_file(str(aux / "part-0.resources.json"), local_resources("a:1", False))
    assert victim.read_text() == "precious\n"
