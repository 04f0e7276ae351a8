"""`agent/process_end.py`: the programs' entry points end the process without the interpreter's teardown,
with the exit status `sys.exit` would give and everything printed still delivered."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import sys
from qcg.pilotjob.agent.process_end import run_then_exit
def main():
    print("to stdout", end="")          # left in the buffer: must still arrive
    sys.stderr.write("to stderr")
    {body}
run_then_exit(main)
"""


@pytest.mark.parametrize("body, code, err_tail", [
    ("return None", 0, "to stderr"),
    ("return 3", 3, "to stderr"),
    ("raise SystemExit(7)", 7, "to stderr"),
    ("raise SystemExit('Error: bad input')", 1, "Error: bad input\n"),
    ("sys.exit()", 0, "to stderr"),
])
def test_status_and_output_as_sys_exit(body: str, code: int, err_tail: str) -> None:
    p = subprocess.run([sys.executable, "-c", PROGRAM.format(body=body)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == code
    assert p.stdout == "to stdout"
    assert p.stderr.endswith(err_tail)


def test_an_unexpected_error_still_ends_the_usual_way() -> None:
    p = subprocess.run([sys.executable, "-c", PROGRAM.format(body="raise RuntimeError('bug')")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "Traceback" in p.stderr and "RuntimeError: bug" in p.stderr
