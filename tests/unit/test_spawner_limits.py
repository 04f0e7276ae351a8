"""The spawner when descriptors run out (a security audit's finding F3).

Any local user can open connections to the service until its descriptors run out (the CURVE handshake
refuses them only later). A spawn that then could not open its task's pidfd raised out of the spawner: the
task, already started, was never watched, its cores stayed taken and the scheduler pass stopped, so every
job stayed QUEUED for good even after the flood ended. Now such a task fails with the reason, its process is
ended, and the next spawn works again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

EXHAUSTED = textwrap.dedent("""
    import asyncio, os, resource
    from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec

    async def main():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        ends = {}
        def done(key, ev):
            ends[key] = ev
        assert sp.spawn("warm", ProcessSpec(["/bin/true"], dict(os.environ), os.getcwd()), done)
        await asyncio.sleep(0.3)
        hog = []
        try:
            while True:
                hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        # the pidfd cannot be opened now: the task fails, the caller gets no exception
        pid = sp.spawn("starved", ProcessSpec(["/bin/sleep", "30"], dict(os.environ), os.getcwd()), done)
        await asyncio.sleep(0.3)
        ev = ends["starved"]
        print("starved", pid, ev.exit_code, ev.reason, sp.running, flush=True)
        for fd in hog:
            os.close(fd)
        pid = sp.spawn("after", ProcessSpec(["/bin/true"], dict(os.environ), os.getcwd()), done)
        await asyncio.sleep(0.5)
        print("after", ends["after"].exit_code, flush=True)
        await sp.shutdown(timeout=2)

    asyncio.run(asyncio.wait_for(main(), 20))
""")

RAISED = textwrap.dedent("""
    import asyncio, resource
    from qcg.pilotjob.agent.process_setup import FD_SOFT_LIMIT
    from qcg.pilotjob.agent.spawner import ProcessSpawner

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    async def main():
        ProcessSpawner(asyncio.get_running_loop())
    asyncio.run(main())
    want = FD_SOFT_LIMIT if hard == resource.RLIM_INFINITY else min(FD_SOFT_LIMIT, hard)
    print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == want, flush=True)
""")


def _run(code: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_task_fails_when_no_descriptor_is_left_and_the_next_one_starts():
    lines = _run(EXHAUSTED)
    starved = lines[0].split(" ", 4)
    assert starved[0] == "starved" and starved[1] == "None" and starved[2] == "None", lines
    assert "Too many open files" in starved[3] + starved[4], lines
    assert starved[-1].endswith(" 0"), f"a starved task is still counted as running: {lines}"
    assert lines[1] == "after 0", lines


def test_spawner_raises_the_open_files_soft_limit():
    """A launcher lifts the common 1024 soft limit (up to FD_SOFT_LIMIT or the hard limit)."""
    assert _run(RAISED) == ["True"]
