"""A launcher asks the kernel for short time slices; its tasks keep the default one.

On a busy node the launcher otherwise waits behind the task it has just started (see
`agent/process_setup.py`; flat-iter of the benchmark). Each case runs in its own Python process, so the
test worker's own scheduling is not changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from qcg.pilotjob.agent.process_setup import SHORT_SLICE_NS


def _kernel_has_custom_slices() -> bool:
    """Linux 6.12 added per-task slices for normal tasks (sched_attr.sched_runtime)."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 12)


needs_custom_slices = pytest.mark.skipif(not _kernel_has_custom_slices(),
                                         reason=f"kernel {os.uname().release} has no per-task slices (6.12+)")

SLICE_OF = textwrap.dedent("""
    def slice_of(pid="thread-self"):
        for line in open(f"/proc/{pid}/sched"):
            if line.startswith("se.slice"):
                return int(line.split(":")[1])
        return None
""")

THROUGH_THE_SPAWNER = SLICE_OF + textwrap.dedent("""
    import asyncio, os
    from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec

    async def main():
        before = slice_of()
        sp = ProcessSpawner(asyncio.get_running_loop())
        ends = {}
        pid = sp.spawn("t", ProcessSpec(["/bin/sleep", "5"], dict(os.environ), os.getcwd()),
                       lambda key, ev: ends.setdefault(key, ev))
        print(before, slice_of(), slice_of(pid), flush=True)
        await sp.shutdown(timeout=2)
    asyncio.run(asyncio.wait_for(main(), 20))
""")

ASK = SLICE_OF + textwrap.dedent("""
    import os
    from qcg.pilotjob.agent.process_setup import ask_for_short_slices
    before = slice_of()
    print(ask_for_short_slices(), before, slice_of(), os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0),
          flush=True)
""")


def _run(code: str, prefix: list[str] | None = None) -> list[str]:
    r = subprocess.run([*(prefix or []), sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@needs_custom_slices
def test_the_spawning_thread_gets_the_shortest_slice_and_its_task_the_default():
    before, launcher, task = (int(x) for x in _run(THROUGH_THE_SPAWNER))
    assert launcher == SHORT_SLICE_NS
    assert before != SHORT_SLICE_NS, "the default slice is already the short one: nothing is shown"
    assert task == before, "the task inherited the launcher's short slice"


@needs_custom_slices
def test_a_niced_launcher_keeps_its_nice_value():
    ok, _, now, policy, nice = _run(ASK, ["nice", "-n", "5"])
    # the policy read back carries the flag that gives the tasks the default slice back
    assert (ok, int(now), int(policy), int(nice)) == \
        ("True", SHORT_SLICE_NS, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, 5)


@needs_custom_slices
def test_a_batch_launcher_gets_short_slices_and_stays_batch():
    ok, _, now, policy, _ = _run(ASK, ["chrt", "-b", "0"])
    assert (ok, int(now), int(policy)) == ("True", SHORT_SLICE_NS, os.SCHED_BATCH | os.SCHED_RESET_ON_FORK)


def _may_raise_priority() -> bool:
    """CAP_SYS_NICE (bit 23) in the effective set: root in a container often lacks it."""
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 23 & 1)
    return False


@pytest.mark.parametrize("prefix, privileged", [
    (["chrt", "-i", "0"], False), (["nice", "-n", "-5"], True), (["chrt", "-f", "1"], True)],
    ids=["idle", "negative-nice", "fifo"])
def test_a_launcher_whose_scheduling_was_chosen_is_left_alone(prefix, privileged):
    if shutil.which(prefix[0]) is None:
        pytest.skip(f"{prefix[0]} is not installed")
    if privileged and not _may_raise_priority():
        pytest.skip("a negative nice and a real-time policy need CAP_SYS_NICE")
    ok, before, now, policy, nice = _run(ASK, prefix)
    assert ok == "False" and now == before
    # no reset flag was added either (it would read back in the policy)
    chosen = {"-i": os.SCHED_IDLE, "-f": os.SCHED_FIFO}.get(prefix[1], os.SCHED_OTHER)
    assert int(policy) == chosen
    assert int(nice) == (-5 if prefix[0] == "nice" else 0)


REFUSED = textwrap.dedent("""
    import asyncio, sys
    def hook(event, args):
        if event == "ctypes.dlopen":
            raise PermissionError("ctypes refused by policy")
    sys.addaudithook(hook)
    from qcg.pilotjob.agent.process_setup import ask_for_short_slices
    from qcg.pilotjob.agent.spawner import ProcessSpawner
    async def main():
        ProcessSpawner(asyncio.get_running_loop())
    asyncio.run(main())
    print(ask_for_short_slices(), flush=True)
""")


def test_a_launcher_that_may_not_ask_still_starts():
    """Where ctypes is refused (an audit hook here; a seccomp filter elsewhere) the spawner is still built."""
    assert _run(REFUSED) == ["False"]
