#!/usr/bin/env python3
"""Client API benchmark (issue 4, "Performance"): ours and, with --original, QCG-PilotJob 0.14.2.

The measurement itself is one small script (`MEASURE` below) that uses only
the public API of `qcg.pilotjob.api.manager` -- `LocalManager(server_args,
cfg)`, `resources`, `submit`, `status`, `wait4all`, `finish` -- and
`time.perf_counter`, so it runs unchanged under either interpreter, each
importing its own implementation:

    python bench/api_bench.py                                  # ours only
    python bench/api_bench.py --original ~/.cache/qcgpj-original/bin/python

What is measured (every service gets `--nodes 2 --wd <tmp>`, local mode):

* start      -- `LocalManager(...)` until `resources()` has answered;
* idle       -- `submit` of one `/bin/true` job, 500 times, each after the
                previous job had time to run (median);
* 1000 jobs  -- one `submit` carrying 1 000 `/bin/true` jobs;
* loaded     -- `submit` of one job, repeated while those 1 000 tasks are
                being launched (median, p99; the count is shown);
* wait4all   -- a job sleeps 0.3 s and, as its last action, writes
                `time.time()` to a file; the latency is from that moment to
                the return of `wait4all()` (median of 10; a wait that has not
                returned after 10 s ends the series and is reported -- the
                original's event-driven wait4all can miss its event and then
                never returns, whatever its timeout_secs);
* finish     -- `finish()` until it returns (the service process has ended);
                measured before the wait4all series, which uses a new service;
* unread     -- then, on that service, a sweep of 10 000 `/bin/true` watched
                only with `status()`: how much the client's RSS grew while
                the finish events it did not read arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

MEASURE = textwrap.dedent(r'''
    import json, os, statistics, sys, threading, time
    from qcg.pilotjob.api.manager import LocalManager
    from qcg.pilotjob.api.job import Jobs

    wd, idle_n, lat_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    UNREAD_N = 10000
    out = {}

    t = time.perf_counter()
    m = LocalManager(["--wd", wd, "--nodes", "2", "--log", "warning"], {"log_level": "WARNING"})
    m.resources()
    out["start"] = time.perf_counter() - t

    def one(name):
        return Jobs().add(name=name, exec="/bin/true")

    # idle: one job per submit, the previous one had time to run
    rtts = []
    for i in range(idle_n):
        jobs = one(f"idle{i}")
        t = time.perf_counter()
        m.submit(jobs)
        rtts.append(time.perf_counter() - t)
        time.sleep(0.01)
    m.wait4all()
    out["idle"] = rtts

    # one submit with 1000 jobs, then single submits while they are launched
    big = Jobs()
    for i in range(1000):
        big.add(name=f"load{i}", exec="/bin/true")
    t = time.perf_counter()
    m.submit(big)
    out["submit1000"] = time.perf_counter() - t
    rtts = []
    i = 0
    while True:
        jobs = one(f"probe{i}")
        t = time.perf_counter()
        m.submit(jobs)
        rtts.append(time.perf_counter() - t)
        i += 1
        if i % 10 == 0:
            st = m.status(["load999"])["jobs"]["load999"]["data"]["status"]
            if st in ("SUCCEED", "FAILED", "CANCELED", "OMITTED") or i >= 5000:
                break
    out["loaded"] = rtts
    m.wait4all()

    t = time.perf_counter()
    m.finish()
    out["finish"] = time.perf_counter() - t

    # wait4all latency after the last task's last action, on a fresh service
    m = LocalManager(["--wd", wd, "--nodes", "2", "--log", "warning"], {"log_level": "WARNING"})
    m.resources()
    lats, hangs = [], []
    LAT_TIMEOUT = 10.0
    for k in range(lat_n):
        stamp = os.path.join(wd, f"stamp{k}")
        jobs = Jobs().add(name=f"lat{k}", exec="/bin/sh",
                          args=["-c", f"sleep 0.3; date +%s.%N > {stamp}"])
        m.submit(jobs)
        # in a thread: the original's wait4all can miss its event and then never returns (its
        # timeout_secs does not end the wait either); such a run is counted and ends the series
        done = []
        waiter = threading.Thread(target=lambda: (m.wait4all(), done.append(time.time())), daemon=True)
        waiter.start()
        waiter.join(LAT_TIMEOUT)
        if not done:
            hangs.append(k)
            break
        now = done[0]
        with open(stamp) as f:
            lats.append(now - float(f.read()))
    out["wait4all"] = lats
    out["wait4all_hangs"] = hangs

    # unread events: a sweep watched only with status(); the client's memory afterwards
    def rss_mib():
        with open("/proc/self/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) / 1024
    if not hangs:
        before = rss_mib()
        m.submit(Jobs().add(name="unread", exec="/bin/true", iteration=UNREAD_N))
        deadline = time.monotonic() + 300
        while m.status(["unread"])["jobs"]["unread"]["data"]["status"] not in ("SUCCEED", "FAILED") \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        out["unread_rss"] = rss_mib() - before
    print("RESULT " + json.dumps(out), flush=True)
    if hangs:
        # the stuck waiter holds a socket: finish() would block in the context's term; kill instead
        m.kill_manager_process()
        time.sleep(1)
        os._exit(0)
    m.finish()
''')


def run(python: str, label: str, idle_n: int, lat_n: int, timeout: float) -> dict | None:
    with tempfile.TemporaryDirectory(prefix=f"apibench-{label}-") as tmp:
        script = os.path.join(tmp, "measure.py")
        with open(script, "w") as f:
            f.write(MEASURE)
        wd = os.path.join(tmp, "wd")
        os.makedirs(wd)
        try:
            proc = subprocess.run([python, script, wd, str(idle_n), str(lat_n)], capture_output=True, text=True,
                                  timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            print(f"{label}: did not finish within {timeout:g} s", file=sys.stderr)
            return None
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        print(f"{label}: failed (exit {proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}",
              file=sys.stderr)
        return None


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def rows(res: dict) -> dict[str, str]:
    ms = 1000.0
    return {
        "start until resources() answers": f"{res['start']:.3f} s",
        "submit 1 job, idle (median)": f"{statistics.median(res['idle']) * ms:.3f} ms",
        "submit 1 job, 1000 launching (median)": f"{statistics.median(res['loaded']) * ms:.3f} ms",
        "submit 1 job, 1000 launching (p99)": f"{p99(res['loaded']) * ms:.3f} ms (n={len(res['loaded'])})",
        "submit of 1000 jobs": f"{res['submit1000'] * ms:.1f} ms",
        "wait4all after last task (median)": (
            f"{statistics.median(res['wait4all']) * ms:.1f} ms" if res["wait4all"] else "n/a")
            + (f" (run {len(res['wait4all']) + 1}: no return in 10 s)" if res.get("wait4all_hangs") else ""),
        "finish()": f"{res['finish']:.3f} s",
        "client RSS after 10 000 unread finishes": (
            f"+{res['unread_rss']:.1f} MiB" if "unread_rss" in res else "n/a"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original", metavar="PYTHON", help="interpreter with qcg-pilotjob 0.14.2 installed")
    ap.add_argument("--python", default=sys.executable, help="interpreter with this project (default: this one)")
    ap.add_argument("--idle", type=int, default=500, help="idle submits (default 500)")
    ap.add_argument("--latency-runs", type=int, default=10, help="wait4all latency samples (default 10)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per implementation")
    ap.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = ap.parse_args()

    results: dict[str, dict] = {}
    runs = [("ours", args.python)] + ([("original", os.path.expanduser(args.original))] if args.original else [])
    for label, python in runs:
        res = run(python, label, args.idle, args.latency_runs, args.timeout)
        if res is not None:
            results[label] = res
    if not results:
        return 1
    table = {label: rows(res) for label, res in results.items()}
    labels = list(table)
    first = table[labels[0]]
    width = max(len(k) for k in first)
    print(f"{'':{width}}  " + "  ".join(f"{label:>22}" for label in labels))
    for key in first:
        print(f"{key:{width}}  " + "  ".join(f"{table[label][key]:>22}" for label in labels))
    if args.json:
        print(json.dumps(results))
    return 0 if len(results) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
