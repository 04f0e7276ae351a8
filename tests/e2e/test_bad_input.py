"""Bad input end to end (issue 3 "Bad input": each a clear message and a non-zero exit, other tasks
unaffected, never a traceback; DESIGN principle 6). Reference 10.2 (requests file), 6 (options).

Bad requests and bad tasks are judged by the governor in both modes: those tests are marked `both_modes`
(tests/conftest.py). Bad options, files and directories stop the run before any partition starts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess

import pytest

from qcg.pilotjob.governor.keys import create_keys
from tests.conftest import job, submit


def one_error_line(r) -> str:
    r.assert_no_traceback()
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_malformed_json_file(service):
    """Issue 3 "malformed JSON file": one line naming the file and the position; exit non-zero."""
    r = service('[{"request": "submit", ')
    assert r.rc != 0
    line = one_error_line(r)
    assert "reqs.json" in line and "JSON" in line


def test_json_file_nested_too_deeply(service):
    """Issue 3 "malformed JSON file" / "never a traceback": a file nested deeper than the JSON decoder
    recurses (Python's RecursionError) is one clear line too."""
    # deeper than any interpreter's json decoder goes (3.13 decodes 5 000 levels: ~10 000 is its limit)
    r = service("[" * 100_000 + "]" * 100_000)
    assert r.rc == 1
    line = one_error_line(r)
    assert "reqs.json" in line and "nested too deeply" in line


@pytest.mark.parametrize("depth", [150, 1200, 5000])
def test_attributes_nested_too_deeply_are_one_clear_line(service, depth):
    """Python 3.12/3.13 decode JSON nested 1 500 / 10 000 deep (3.11: under 1 000): deep `attributes`
    reached recursive code, and the submit failed with 'internal error ... RecursionError' (helper, on
    3.12). Past 100 levels they are refused, on every version."""
    deep = "[" * depth + "]" * depth
    r = service('[{"request": "submit", "jobs": [{"name": "a", "execution": {"exec": "/bin/true"}, '
                '"attributes": {"x": %s}}]}]' % deep)
    assert r.rc != 0
    line = one_error_line(r)
    try:
        json.loads(deep)
    except RecursionError:      # too deep for this interpreter's decoder: the file's own error
        assert "nested too deeply" in line, line
    else:
        assert "field 'attributes': nested deeper than 100 levels" in line, line


def test_numbers_too_big_are_refused_with_their_field(service):
    """Issue 3 "wrong field types ... a clear message naming the job, field and reason": an integer beyond
    2**53 is refused at submit (it failed later, in range() or the journal's msgpack, as "internal error");
    one of more digits than Python converts makes the file malformed."""
    r = service([submit(job("big", iteration={"stop": 10 ** 23})), submit(job("fine"))])
    assert r.rc == 2
    line = one_error_line(r)
    assert "'big'" in line and "iteration.stop" in line and "9007199254740991" in line
    assert "internal error" not in r.log() and r.report()["fine"]["state"] == "SUCCEED"
    # fields that take any number (arguments, variables, values, attributes): beyond 64 bits they cannot
    # be kept in the journal; the refusal names the field (it was "internal error ... OverflowError")
    huge = 10 ** 20
    r = service([submit(job("a", execution={"exec": "/bin/true", "args": ["x", huge]})),
                 submit(job("e", execution={"exec": "/bin/true", "env": {"A": huge}})),
                 submit(job("v", iteration={"values": [1, huge]})),
                 submit(job("t", attributes={"k": huge})), submit(job("fine2"))])
    assert r.rc == 2
    r.assert_no_traceback()
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 4, r.stderr
    for line, where in zip(errors, ("job 'a': field 'execution.args[1]'", "job 'e': field 'execution.env.A'",
                                    "job 'v': field 'iteration.values[1]'", "job 't': field 'attributes.k'")):
        assert where in line and "out of range" in line and "Overflow" not in line, line
    assert r.report()["fine2"]["state"] == "SUCCEED"
    # text JSON allows and msgpack cannot carry: a lone surrogate (found in review: UnicodeEncodeError)
    r = service('[{"request": "submit", "jobs": [{"name": "s", "execution": {"exec": "/bin/true", '
                '"args": ["\\ud800"]}}]}]')
    assert r.rc == 2
    line = one_error_line(r)
    assert "job 's': field 'execution.args[0]': text that is not valid Unicode" in line, line
    r = service('[{"request": "submit", "jobs": [{"name": "x", "execution": {"exec": "/bin/true"}, '
                '"iteration": {"stop": ' + "1" * 5000 + '}}]}]')
    assert r.rc == 1
    line = one_error_line(r)
    assert "reqs.json" in line and "malformed JSON" in line and "set_int_max_str_digits" not in line


def test_not_a_list(service):
    """Facts 15: a file that is not a list of requests is refused, naming what it holds in JSON's terms."""
    r = service('"hello"')
    assert r.rc != 0
    assert "list" in one_error_line(r) and "got a string" in one_error_line(r)
    r = service("null")
    assert r.rc != 0 and one_error_line(r).endswith("got null")


def test_working_directory_that_is_a_file(service, tmp_path):
    """Reference 6 `--wd`: a path that is a file is named as such (not "cannot be created: File exists")."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = service([submit(job("a"))], wd=afile)
    assert r.rc == 1 and one_error_line(r) == f"Error: working directory '{afile}' is not a directory"


@pytest.mark.parametrize("option", ["--wd", "--nodes", "--id"])
def test_option_value_in_another_encoding_is_one_error_line(service, tmp_path, option):
    """A value that is not UTF-8 (a latin-1 directory name): it failed with a traceback when the run's
    journal was written (helper report); now one line naming the option."""
    latin1 = os.fsdecode(b"caf\xe9")
    if option == "--wd":
        r = service([submit(job("a"))], wd=tmp_path / latin1)
    else:
        r = service([submit(job("a"))], option, f"{latin1}:2" if option == "--nodes" else latin1)
    assert r.rc == 1
    assert one_error_line(r).startswith(f"Error: {option}: ") and "not valid UTF-8" in r.stderr


def test_ctrl_c_at_any_moment_of_the_start_exits_130_without_a_traceback(tmp_path):
    """README "Exit codes" (SIGINT: 130; helper report): a Ctrl-C while the program loads printed a
    traceback, and one before the service's own handler was in place exited 1 ("could not start") after
    a blank line. The moments tried cover loading, start-up and the running service."""
    import signal
    import sys
    import time
    reqs = tmp_path / "r.json"
    reqs.write_text('[{"request": "submit", "jobs": [{"name": "a", "execution": {"exec": "/bin/sleep", '
                    '"args": ["30"]}}]}]')
    for i, delay in enumerate((0.35, 0.45, 0.6, 1.5)):    # before ~0.2 s: Python's own start-up
        proc = subprocess.Popen([sys.executable, "-m", "qcg.pilotjob.service", "--file-path", str(reqs),
                                 "--wd", str(tmp_path / f"wd{i}"), "--nodes", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130 and b"Traceback" not in err and not err.startswith(b"\n"), (delay, err)


def test_missing_file(service, tmp_path):
    """Issue 3 "missing file": one clear line with the path; exit non-zero."""
    r = service(None, file_path=str(tmp_path / "nofile.json"))
    assert r.rc != 0
    assert "nofile.json" in one_error_line(r)


def test_no_interface(service):
    """Facts 15: no --file-path and no --resume -> error, exit non-zero."""
    r = service(None)
    assert r.rc != 0
    one_error_line(r)


@pytest.mark.both_modes
def test_unknown_request_other_requests_served(service):
    """Issue 3 "unknown request": error line naming it, non-zero exit, the other requests still served."""
    r = service([{"request": "bogus"}, submit(job("a", "/bin/echo", ["x"], stdout="o"))])
    assert r.rc != 0
    assert "bogus" in one_error_line(r)
    assert (r.wd / "o").read_text() == "x\n"
    assert r.report()["a"]["state"] == "SUCCEED"


@pytest.mark.parametrize("bad, field", [
    ({"name": "w1", "execution": {"exec": "/bin/true", "args": "x y"}}, "args"),
    ({"name": "w2", "execution": {"exec": "/bin/true", "env": ["A=1"]}}, "env"),
    ({"name": "w3", "execution": {"exec": "/bin/true"}, "resources": {"numCores": "two"}}, "numCores"),
    ({"name": "w4", "execution": {"exec": "/bin/true"}, "resources": {"numCores": {"exact": 1.5}}},
     "numCores"),
    ({"name": "w5", "execution": {"exec": "/bin/true"}, "iteration": {"stop": "ten"}}, "iteration"),
    ({"name": "w6", "execution": {"exec": "/bin/true"}, "dependencies": {"after": "a"}}, "after"),
    ({"name": "w7", "execution": "ls"}, "execution"),
    ({"name": "w8", "execution": {"exec": "/bin/true"}, "resources": {"wt": "abc"}}, "wt"),
])
@pytest.mark.both_modes
def test_wrong_field_types(service, bad, field):
    """Issue 3 "wrong field types": one clear line naming job and field; submit refused; others run."""
    r = service([submit(bad), submit(job("good"))])
    assert r.rc != 0
    line = one_error_line(r)
    assert bad["name"] in line and field in line
    rep = r.report()
    assert rep["good"]["state"] == "SUCCEED" and bad["name"] not in rep


@pytest.mark.both_modes
def test_duplicate_names(service):
    """Issue 3 "duplicate names": in one request and across requests."""
    r = service([submit(job("d"), job("d")), submit(job("e")), submit(job("e"))])
    assert r.rc != 0
    r.assert_no_traceback()
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, r.stderr
    assert all("'d'" in lines[0] or "d" in lines[0] for _ in [0])
    assert "e" in lines[1]
    rep = r.report()
    assert "d" not in rep and rep["e"]["state"] == "SUCCEED"


@pytest.mark.both_modes
def test_unknown_dependency(service):
    """Issue 3 "unknown dependency" rejected at submit (the original only OMITTED it later)."""
    r = service([submit(job("x", dependencies={"after": ["ghost"]})), submit(job("ok"))])
    assert r.rc != 0
    line = one_error_line(r)
    assert "x" in line and "ghost" in line
    assert "x" not in r.report()


@pytest.mark.both_modes
def test_cycle(service):
    """Issue 3 "cycle" rejected at submit with a clear error."""
    r = service([submit(job("p", dependencies={"after": ["q"]}), job("q", dependencies={"after": ["p"]}))])
    assert r.rc != 0
    line = one_error_line(r)
    assert "cycle" in line and "p" in line and "q" in line


@pytest.mark.both_modes
def test_more_cores_than_exist(service):
    """Issue 3 "more cores than exist" / reference 7.2 (such a job "is removed from the queue with the FAILED
    status"): one line naming job and field, a non-zero exit; the job is FAILED with the reason, the other
    jobs of the same request run."""
    r = service([submit(job("toobig", resources={"numCores": {"exact": 5}}), job("fine"))], nodes="2,2")
    assert r.rc == 2
    line = one_error_line(r)
    assert "toobig" in line and "resources" in line and "5 cores" in line
    rep = r.report()
    assert rep["toobig"]["state"] == "FAILED" and "5 cores" in rep["toobig"]["messages"]
    assert rep["fine"]["state"] == "SUCCEED"


@pytest.mark.parametrize("nodes", ["0", "x", "a:", "2,,3", "n:-1", "a:2,a:3", ":", "100000000000", "a:65537"])
def test_bad_nodes_string(service, nodes):
    """Issue 3 "bad --nodes string": one clear line mentioning --nodes; exit non-zero. A node of more than
    65 536 cores too: such a typo used to take memory until the machine ran out (136 bytes per core)."""
    r = service([submit(job("a"))], nodes=nodes)
    assert r.rc != 0
    line = one_error_line(r)
    assert line.startswith(f"Error: --nodes {nodes!r}") and line.count("--nodes") == 1, line


@contextlib.contextmanager
def unwritable_dir(path):
    """A directory nobody can create files in, root included: mode 0500 for a plain user; for root (who
    ignores modes, and runs CI) the ext4 immutable attribute, which binds root as well."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield path
        finally:
            path.chmod(0o700)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root and chattr (e2fsprogs) is not installed: no directory root cannot write")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        pytest.skip(f"running as root and the file system refuses the immutable attribute: {made.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, timeout=30)


def test_unwritable_wd(service, tmp_path):
    """Issue 3 "unwritable working dir": one clear line naming the dir; exit non-zero."""
    with unwritable_dir(tmp_path / "ro") as ro:
        r = service([submit(job("a"))], wd=ro)
    assert r.rc != 0
    assert str(ro) in one_error_line(r)


def test_wd_is_a_file(service, tmp_path):
    """Issue 3 "unwritable working dir" (works as root too): --wd pointing below a regular file."""
    f = tmp_path / "afile"
    f.write_text("x")
    r = service([submit(job("a"))], wd=f / "sub")
    assert r.rc != 0
    assert "afile" in one_error_line(r)


@pytest.mark.both_modes
def test_nul_character_fails_the_task_with_the_reason(service):
    """Issue 3 bad input, "other tasks unaffected": a NUL character in an argument, a variable, an output
    path or the working directory (JSON allows it, exec() does not) makes that task FAILED with the reason;
    no traceback in service.log (the spawner raised ValueError past its OSError handling)."""
    r = service([submit(job("arg", "/bin/echo", ["a\0b"]), job("var", "/bin/echo", env={"X": "a\0b"}),
                        job("out", "/bin/echo", stdout="o\0x"), job("dir", "/bin/echo", wd="d\0e"),
                        job("ok", "/bin/echo", ["fine"], stdout="o"))])
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    for name in ("arg", "var", "out", "dir"):
        # Python's own words: "embedded null byte"; os.chdir on 3.13 says "embedded null character in path"
        assert rep[name]["state"] == "FAILED" and "embedded null" in rep[name]["messages"], rep[name]
    assert "working directory" in rep["dir"]["messages"]
    assert rep["ok"]["state"] == "SUCCEED" and "Traceback" not in r.log()


@pytest.mark.both_modes
def test_missing_executable_fails_task_only(service):
    """Issue 3 "missing executable (task FAILED with the OS error in jobs.report)", other tasks unaffected;
    reference 10.3.3 FAILED "a job could not be started (for example there is no executable)"."""
    r = service([submit(job("nx", "/no/such/program"), job("nx2", "no-such-program-in-path"),
                        job("ok", "/bin/echo", ["fine"], stdout="o"))])
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    for name in ("nx", "nx2"):
        assert rep[name]["state"] == "FAILED"
        assert "No such file or directory" in rep[name]["messages"] or "not found" in rep[name]["messages"]
    assert "/no/such/program" in rep["nx"]["messages"]
    assert rep["ok"]["state"] == "SUCCEED"
    assert (r.wd / "o").read_text() == "fine\n"


@pytest.mark.both_modes
def test_task_killed_by_a_signal_says_so(service):
    """Reference 10.3.3 FAILED: a task that crashed (here SIGKILL, as the OOM killer sends) is FAILED with
    the signal named in jobs.report, not a bare negative exit code; other tasks unaffected."""
    r = service([submit(job("crash", "/bin/bash", ["-c", "kill -KILL $$"]), job("ok", "/bin/true"))])
    r.assert_no_traceback()
    assert r.rc == 0, r.stderr
    rep = r.report()
    assert rep["crash"]["state"] == "FAILED"
    assert "killed by signal 9 (SIGKILL)" in rep["crash"]["messages"]
    assert rep["crash"]["runtime"]["exit_code"] == "-9"
    assert rep["ok"]["state"] == "SUCCEED"


def test_bad_resume_path(service, tmp_path):
    """Reference 13.2 / facts 13: --resume of a path that is no aux dir: one clear line, exit non-zero."""
    (tmp_path / "empty").mkdir()
    r = service(None, "--resume", str(tmp_path / "empty"))
    assert r.rc != 0
    assert "empty" in one_error_line(r)


@pytest.mark.both_modes
def test_request_not_an_object(service):
    """Issue 3 bad input: a request that is not a JSON object is refused; the rest served."""
    r = service([42, submit(job("a"))])
    assert r.rc != 0
    one_error_line(r)
    assert r.report()["a"]["state"] == "SUCCEED"
    r = service([None, submit(job("b"))])
    assert r.rc == 2 and one_error_line(r).endswith("a request must be a JSON object, got null")
    # a request name that holds line breaks is escaped: still one line
    r = service([{"request": "x\ny\tz"}, submit(job("c"))])
    assert r.rc == 2 and "(x\\ny\\tz)" in one_error_line(r)
    assert r.report()["c"]["state"] == "SUCCEED"
    # ... and so is a field name or a dependency in the message (found in review)
    r = service([submit(job("d", execution={"exec": "/bin/true", "a\nb": 1})),
                 submit(job("e", dependencies={"after": ["q\nr"]}))])
    assert r.rc == 2
    r.assert_no_traceback()
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and "a\\nb" in lines[0] and "q\\nr" in lines[1], r.stderr


@pytest.mark.parametrize("args, names", [
    (["--report-file", "nodir/x.report"], ["--report-file", "nodir/x.report"]),
    (["--report-file", "/proc/x.report"], ["--report-file", "/proc/x.report"]),
    # the service's own files: the report would have overwritten them, or been overwritten
    (["--report-file", "final_status.json"], ["--report-file", "final_status.json"]),
    (["--report-file", "service.log"], ["--report-file", "service.log"]),
    (["--report-file", "./track.reqs"], ["--report-file", "track.reqs"]),
    (["--report-file", "tmp/../track.states"], ["--report-file", "track.states"]),
    (["--id", "a/b"], ["--id", "a/b"]),
    (["--wd", ""], ["--wd", "empty"]),
    (["--aux-dir", " "], ["--aux-dir", "empty"]),
    (["--report-file", ""], ["--report-file", "empty"]),
    (["--id", ""], ["--id"]),
    (["--id", ".."], ["--id", ".."]),
    (["--nl-init-timeout", "-1"], ["--nl-init-timeout"]),
    (["--partition-init-timeout", "0"], ["--partition-init-timeout"]),
    (["--partition-init-timeout", "inf"], ["--partition-init-timeout"]),
    (["--partition-ready-threshold", "nan"], ["--partition-ready-threshold"]),
    (["--slurm-partition-nodes", "0"], ["--slurm-partition-nodes"]),
])
def test_bad_option_values(service, args, names):
    """Issue 3 "Bad input" (reference 6, the options): a value the run cannot use stops it before anything
    runs, with one clear line naming the option, exit code 1 (README "Exit codes"); never a traceback,
    never a silent fallback."""
    r = service([submit(job("a"))], *args)
    assert r.rc == 1
    r.assert_no_traceback()
    text = r.stderr
    assert all(name in text for name in names), text
    assert not (r.wd / "a.out").exists()


def test_node_agents_start_only_as_the_reference_says(service):
    """Reference 6 (`--nl-start-method`: "ssh,slurm - default"): `local` was accepted and, inside an
    allocation, ran every node's agent on the first node while its tasks were told other nodes (found by
    a helper). A usage error now (exit code 1, README "Exit codes"), naming the option and the two methods."""
    r = service([submit(job("a"))], "--nl-start-method", "local")
    assert r.rc == 1
    r.assert_no_traceback()
    assert "--nl-start-method" in r.stderr and "'slurm', 'ssh'" in r.stderr, r.stderr
    assert not (r.wd / "a.out").exists()


def test_empty_nodes_is_refused(service):
    """`--nodes ""` is a mistake, not "use the local CPUs"."""
    r = service([submit(job("a"))], nodes="")
    assert r.rc != 0
    assert "--nodes" in one_error_line(r)


def test_parent_that_is_no_address(service, tmp_path):
    """`--parent` with something ZMQ cannot connect to: one line naming it and the expected form."""
    aux = tmp_path / "parent-aux"
    aux.mkdir()
    create_keys(str(aux))
    r = service(None, "--parent", "garbage", "--keys", str(aux))
    assert r.rc != 0
    line = one_error_line(r)
    assert "--parent 'garbage'" in line and "tcp://HOST:PORT" in line
