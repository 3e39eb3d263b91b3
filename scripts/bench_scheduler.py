#!/usr/bin/env python3
"""Scheduling throughput (scripts/bench.sh scheduler): task instances per second with the
instant backend (every try completes at once) over 1,000 runs x 10 tasks, one scheduler on
SQLite and 1, 2 and 3 schedulers on PostgreSQL (one throwaway server of Debian's package, a
fresh database for every measurement), and 1, 2 and 3 schedulers reaching that server
through a link that delays every packet, as a database on another machine would be.
Figures drift by 10-20% from one run to the next on a 2-core machine, so every
configuration runs ROUNDS times (BENCH_ROUNDS, default 5), the configurations taking turns,
and the median is reported with the range. Issue 6's target is
5,000 task instances/s with one scheduler on each store, and more with more schedulers.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import Warehouse, docker_gateway  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "examples", "schedule_bench")
TARGET = 5000
DELAY_MS = 0.25
trips = []


def measure(*args):
    out = subprocess.run([BENCH, *args], check=True, capture_output=True, text=True).stdout.strip()
    print("  " + out, flush=True)
    busy = re.search(r"cores (\d+)% busy", out)
    trip = re.search(r"([\d.]+) ms round trip", out)
    if trip:
        trips.append(float(trip.group(1)))
    return float(re.search(r"= (\d+) task instances/s", out).group(1)), float(busy.group(1)) if busy else 0.0


def main():
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    work = tempfile.mkdtemp(prefix="stevedore-bench-scheduler-")
    # The database on this machine, then a link that holds every packet DELAY_MS each way
    # (the schedulers go through a proxy of the benchmark's own), as if it ran on another
    # machine: this machine's timers make that a round trip of about 2.5 ms.
    configs = [("SQLite, 1 scheduler", None, 1, None)] + [
        (f"PostgreSQL, {n} scheduler{'s' if n > 1 else ''}", "pg", n, None) for n in (1, 2, 3)] + [
        (f"PostgreSQL away, {n} sched.", "pg", n, DELAY_MS) for n in (1, 2, 3)]
    figures = {name: [] for name, _, _, _ in configs}
    server = Warehouse(docker_gateway())
    try:
        for round_number in range(rounds):
            print(f"round {round_number + 1} of {rounds}", flush=True)
            for index, (name, store, schedulers, delay) in enumerate(configs):
                if store is None:
                    path = os.path.join(work, f"bench-{round_number}.db")
                    figures[name].append(measure(path))
                    continue
                database = f"bench_{round_number}_{index}"
                server.query(f"CREATE DATABASE {database}")
                url = f"postgres://postgres@127.0.0.1:{server.port}/{database}"
                extra = [str(delay)] if delay is not None else []
                figures[name].append(measure(url, str(schedulers), *extra))
    finally:
        server.stop()
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nmachine: {os.cpu_count()} cores, {model}; release build; instant backend; {rounds} rounds")
    single = {None: statistics.median(rate for rate, _ in figures["PostgreSQL, 1 scheduler"]),
              DELAY_MS: statistics.median(rate for rate, _ in figures["PostgreSQL away, 1 sched."])}
    for name, _, schedulers, delay in configs:
        values = [rate for rate, _ in figures[name]]
        median = statistics.median(values)
        busy = statistics.median(busy for _, busy in figures[name])
        line = (f"{name:<26} median {median:7.0f} task instances/s  (range {min(values):.0f}-{max(values):.0f},"
                f" cores {busy:.0f}% busy)  {median / TARGET:4.2f}x the target")
        if name.startswith("PostgreSQL") and schedulers > 1:
            line += f", {median / single[delay]:4.2f}x one scheduler"
        print(line)
    print(f"(away: every packet held {DELAY_MS} ms each way, a round trip of "
          f"{statistics.median(trips):.1f} ms measured)" if trips else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
