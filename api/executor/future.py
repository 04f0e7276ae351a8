"""`QCGPJFuture`: the handle of one Executor API submission (reference 11.2.4, 23.2.2).

A real `concurrent.futures.Future`: `result(timeout)`, `exception(timeout)`,
`done()`, `cancelled()`, `add_done_callback`, `concurrent.futures.wait` and
`as_completed` all work. The result is a dict job name -> final state
(`{"tj": "SUCCEED"}`), as in the original; a job that fails does not make
the future raise — its state says FAILED.

The future is completed by the executor's event watcher (driven by the
service's events, see `executor.py`). A future created by hand
(`QCGPJFuture(ids, manager)`, as the original allows) has no watcher and
falls back to `manager.wait4` / `manager.status`.

Differences from the original, towards `concurrent.futures`:

* `result(timeout)` honours the timeout (`TimeoutError` when it passes;
  the original ignored it);
* `cancel()` cancels the jobs in the service and returns True unless the
  future is already finished (then False); afterwards `result()` raises
  `CancelledError`;
* `running()` is True while the future is neither finished nor cancelled
  (its jobs are queued or executing), as in the original.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

from qcg.pilotjob.api import errors

__all__ = ["QCGPJFuture"]


class QCGPJFuture(concurrent.futures.Future):
    """Tracks the tasks `ids` submitted to `qcgpjm` (a `Manager` / `LocalManager`)."""

    def __init__(self, ids: list[str], qcgpjm: Any) -> None:
        super().__init__()
        self.ids = list(ids)
        self.qcgpjm = qcgpjm
        self._watcher: Any = None  # set by QCGPJExecutor

    # -------------------------------------------------------- without a watcher

    def _complete_from_status(self) -> bool:
        statuses = self.qcgpjm.status(self.ids)
        states = {name: entry["data"]["status"] for name, entry in statuses.get("jobs", {}).items()}
        if all(self.qcgpjm.is_status_finished(state) for state in states.values()):
            self._set_result_once(states)
            return True
        return False

    def _set_result_once(self, result: dict[str, str]) -> None:
        try:
            self.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled or already completed meanwhile

    def _set_exception_once(self, exc: BaseException) -> None:
        try:
            self.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass

    # ------------------------------------------------------------------ API

    def result(self, timeout: float | None = None) -> dict[str, str]:
        """Wait (at most `timeout` seconds) until every task finished; return name -> final state."""
        if self._watcher is None and not super().done():
            try:
                self._set_result_once(self.qcgpjm.wait4(self.ids, timeout=timeout))
            except errors.TimeoutElapsed:
                raise concurrent.futures.TimeoutError(f"tasks {self.ids} not finished in {timeout} s") from None
        return super().result(timeout)

    def done(self) -> bool:
        """True when every task has finished (or the future was cancelled)."""
        if super().done():
            return True
        if self._watcher is None:
            return self._complete_from_status()
        return False

    def running(self) -> bool:
        """True while the tasks are queued or executing."""
        return not self.done()

    def cancel(self) -> bool:
        """Cancel the tasks in the service; False if they have already finished."""
        if self.cancelled():
            return True
        # cancel the future first: the service's CANCELED events must not complete it meanwhile
        with self._condition:       # one thread cancels and notifies (two at once: the second raised)
            if self.cancelled():
                return True
            if not super().cancel():
                return False  # already finished
            # what an executor's worker does with a cancelled work item: `concurrent.futures.wait` and
            # `as_completed` count only a cancel that was notified (without it they waited for ever)
            self.set_running_or_notify_cancel()
        try:
            self.qcgpjm.cancel(self.ids)
        except errors.QCGPJMAError as exc:
            # the tasks may have finished just now; the future stays cancelled
            import logging
            logging.getLogger("qcg.pilotjob.api.executor").warning("cancel of %s failed: %s", self.ids, exc)
        return True
