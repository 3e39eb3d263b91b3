#!/usr/bin/env python3
"""Scheduling throughput (scripts/bench.sh scheduler): task instances per second with the
instant backend (every try completes at once) over 1,000 runs x 10 tasks, one scheduler on
SQLite and 1, 2 and 3 schedulers on PostgreSQL (a throwaway server of Debian's package for
each). Issue 6's target is 5,000 task instances/s with one scheduler on each store, and more
with more schedulers; this prints where it stands.
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import Warehouse, docker_gateway  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "examples", "schedule_bench")


def main():
    work = tempfile.mkdtemp(prefix="stevedore-bench-scheduler-")
    results = []
    results.append(subprocess.run([BENCH, os.path.join(work, "bench.db")], check=True, capture_output=True,
                                  text=True).stdout.strip())
    for schedulers in (1, 2, 3):
        server = Warehouse(docker_gateway())
        try:
            url = f"postgres://postgres@127.0.0.1:{server.port}/postgres"
            results.append(subprocess.run([BENCH, url, str(schedulers)], check=True, capture_output=True,
                                          text=True).stdout.strip())
        finally:
            server.stop()
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores, {model}; release build; instant backend")
    for line in results:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
