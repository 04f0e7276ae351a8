#!/usr/bin/env python3
"""How long node agents take to become ready in a Slurm allocation of N nodes.

Runs the service in `salloc -N N` with one trivial task and reads the
`node agents ready ... seconds=S` line of its service.log (time from the
start of the launcher to the readiness threshold). Needs a Slurm cluster
with at least N nodes (deploy/slurm-cluster.sh start N).

    bench/agents_ready.py --nodes 16 --repeat 3 [--method slurm|ssh]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile


def once(nodes: int, method: str, cpn: int) -> float:
    with tempfile.TemporaryDirectory(prefix="qcg-agents-") as tmp:
        reqs = os.path.join(tmp, "reqs.json")
        with open(reqs, "w") as f:
            json.dump([{"request": "submit", "jobs": [{"name": "t", "execution": {"exec": "/bin/true"}}]}], f)
        cmd = ["salloc", f"-N{nodes}", f"-n{nodes * cpn}", "-t", "5", sys.executable, "-m", "qcg.pilotjob.service",
               "--file-path", reqs, "--wd", os.path.join(tmp, "wd"), "--nl-start-method", method]
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
        log = open(glob.glob(os.path.join(tmp, "wd", ".qcgpjm-service-*", "service.log"))[0]).read()
        m = re.search(r"event='node agents ready'.*seconds=([0-9.]+)", log)
        if not m:
            raise SystemExit("no readiness line in service.log")
        return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--cpn", type=int, default=2, help="CPUs per node to ask for")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--method", default="slurm", choices=["slurm", "ssh"])
    args = ap.parse_args()
    times = [once(args.nodes, args.method, args.cpn) for _ in range(args.repeat)]
    print(f"agents ready on {args.nodes} nodes ({args.method}): "
          f"min {min(times):.2f} s, median {statistics.median(times):.2f} s, max {max(times):.2f} s "
          f"over {len(times)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
