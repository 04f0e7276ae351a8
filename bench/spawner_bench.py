"""Spawn-rate benchmark (not collected by pytest: the name does not match test_*.py).

    python bench/spawner_bench.py [N] [CONCURRENCY]

Spawns N `/bin/true` through ProcessSpawner with at most CONCURRENCY running
at once and prints spawns/s next to `seq N | xargs -PCONCURRENCY -I{} /bin/true`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time

from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec


async def run_spawner(n: int, conc: int, bind: bool = False) -> float:
    loop = asyncio.get_running_loop()
    sp = ProcessSpawner(loop)
    env = dict(os.environ)
    cwd = tempfile.mkdtemp(prefix="bench-spawner-")
    done = loop.create_future()
    state = {"next": 0, "finished": 0, "failed": 0}
    avail = sorted(os.sched_getaffinity(0))

    def start_one() -> None:
        i = state["next"]
        state["next"] += 1
        cpus = [avail[i % len(avail)]] if bind else None   # alternate: one task per CPU
        sp.spawn(i, ProcessSpec(["/bin/true"], env, cwd, cpus=cpus), on_exit)

    def on_exit(key, ev) -> None:
        state["finished"] += 1
        if ev.exit_code != 0:
            state["failed"] += 1
        if state["next"] < n:
            start_one()
        elif state["finished"] == n and not done.done():
            done.set_result(None)

    t0 = time.perf_counter()
    for _ in range(min(conc, n)):
        start_one()
    await asyncio.wait_for(done, 600)
    dt = time.perf_counter() - t0
    os.rmdir(cwd)
    if state["failed"]:
        print(f"  WARNING: {state['failed']} spawns did not exit with 0")
    return n / dt


def run_xargs(n: int, conc: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(f"seq {n} | xargs -P{conc} -I{{}} /bin/true", shell=True, check=True)
    return n / (time.perf_counter() - t0)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    conc = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    rate = asyncio.run(run_spawner(n, conc))
    print(f"ProcessSpawner            : {rate:8.0f} spawns/s ({n} x /bin/true, {conc} concurrent)")
    rate_b = asyncio.run(run_spawner(n, conc, bind=True))
    print(f"ProcessSpawner, bound     : {rate_b:8.0f} spawns/s (each task bound to one CPU)")
    xr = run_xargs(n, conc)
    print(f"seq {n} | xargs -P{conc}   : {xr:8.0f} spawns/s")


if __name__ == "__main__":
    main()
