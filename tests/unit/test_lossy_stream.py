"""Output the run can do without (governor/lossy_stream.py): `service.log` on a full disk (helper report:
with `--log debug` a full disk for 3 s stalled the run for ever -- the failed write raised inside a task's
start and end handling, so the task's end was never booked)."""

from __future__ import annotations

import logging

import structlog

from qcg.pilotjob.governor import logs
from qcg.pilotjob.governor.lossy_stream import LossyStream


def test_a_log_line_that_cannot_be_written_is_dropped_and_the_caller_goes_on(tmp_path, capsys):
    out = logs.setup(str(tmp_path / "service.log"), "debug")
    root = logging.getLogger()
    try:
        structlog.get_logger("t").info("written")
        out._stream.close()
        out._stream = open("/dev/full", "w", buffering=1)       # the disk is full from here on
        structlog.get_logger("t").info("lost")
        logging.getLogger("t.stdlib").error("lost too")          # libraries' lines (asyncio, zmq)
        assert out.lost >= 2
        assert "Logging error" not in capsys.readouterr().err
    finally:
        out.close()
        root.handlers.clear()
        structlog.reset_defaults()
    assert (tmp_path / "service.log").read_text().count("event='written'") == 1


def test_a_closed_stream_counts_as_lost():
    stream = LossyStream(open("/dev/null", "w"))
    stream.close()
    assert stream.write("x") == 1 and stream.lost == 1
    stream.flush()
    assert stream.lost == 2
