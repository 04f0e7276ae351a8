"""How a helper's start failure is told (issue 6 "a partition that never comes up is reported"; issue 5
agents): the exit code or signal of its process and the tail of its stderr, or that the stderr is empty."""

from __future__ import annotations

from qcg.pilotjob.agent.spawner import ProcessExit
from qcg.pilotjob.partition.launcher import exit_description
from qcg.pilotjob.partition.retries import attempt_state, exit_text, stderr_tail


def _ended(code, reason=None):
    return ProcessExit(code, reason, 0.0, 1.0, 123, None)


def test_exit_description_names_the_signal():
    assert exit_description(3) == "exit code 3"
    assert exit_description(0) == "exit code 0"
    assert exit_description(-9) == "killed by signal 9 (SIGKILL)"
    assert exit_description(-11) == "killed by signal 11 (SIGSEGV)"
    assert exit_description(-200) == "killed by signal 200"      # no such signal: the number alone


def test_exit_text():
    assert exit_text(None) == ""
    assert exit_text(_ended(None)) == ""
    assert exit_text(_ended(None, "cannot start 'x': [Errno 2] No such file or directory")) == \
        " (cannot start 'x': [Errno 2] No such file or directory)"
    assert exit_text(_ended(255)) == " (exit code 255)"
    assert exit_text(_ended(-15)) == " (killed by signal 15 (SIGTERM))"


def test_stderr_tail_quotes_the_last_lines_or_says_it_is_empty(tmp_path):
    err = tmp_path / "part-0.err"
    assert stderr_tail(str(err)) == ""                              # no file: nothing to say
    err.write_text("")
    assert stderr_tail(str(err)) == f"; stderr {err}: empty"
    err.write_text("".join(f"line {i}\n\n" for i in range(10)))
    assert stderr_tail(str(err)) == f"; stderr {err}: line 5 | line 6 | line 7 | line 8 | line 9"
    err.write_bytes(b"x" * 10_000 + b"\nlast \xff\n")                # only the end is read; bad bytes replaced
    assert stderr_tail(str(err)).endswith("| last \ufffd")


def test_attempt_state():
    assert attempt_state(2, True, None) == "attempt 2 still running"
    assert attempt_state(1, False, _ended(-9)) == "attempt 1 ended (killed by signal 9 (SIGKILL)), next one pending"
    assert attempt_state(3, False, None) == "attempt 3 ended, next one pending"
