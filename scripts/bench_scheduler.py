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
deliveries = []


def measure(*args, alerts=None, shape=None):
    env = dict(os.environ)
    if alerts:
        env["STEVEDORE_BENCH_ALERTS"] = alerts
    if shape:
        env["STEVEDORE_BENCH_SHAPE"] = shape
    out = subprocess.run([BENCH, *args], check=True, capture_output=True, text=True, env=env).stdout.strip()
    print("  " + out, flush=True)
    busy = re.search(r"cores (\d+)% busy", out)
    trip = re.search(r"([\d.]+) ms round trip", out)
    if trip:
        trips.append(float(trip.group(1)))
    rate = float(re.search(r"= (\d+) task instances/s", out).group(1))
    delivered = re.search(r"([\d.]+) events/s delivered.*median (\d+) ms, p95 (\d+) ms", out)
    if delivered:
        deliveries.append(tuple(float(x) for x in delivered.groups()))
    return rate, float(busy.group(1)) if busy else 0.0


def main():
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    work = tempfile.mkdtemp(prefix="stevedore-bench-scheduler-")
    # The database on this machine, then a link that holds every packet DELAY_MS each way
    # (the schedulers go through a proxy of the benchmark's own), as if it ran on another
    # machine: this machine's timers make that a round trip of about 2.5 ms.
    alert_rounds = int(os.environ.get("BENCH_ALERT_ROUNDS", "9"))
    if os.environ.get("BENCH_ONLY") == "alerts":
        return alerts(alert_rounds, work)
    mapping_rounds = int(os.environ.get("BENCH_MAPPING_ROUNDS", "7"))
    if os.environ.get("BENCH_ONLY") == "mapping":
        return mapping(mapping_rounds, work)
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
    alerts(alert_rounds, work)
    return mapping(mapping_rounds, work)


def alerts(rounds, work):
    """Issue 17: the same benchmark with alert rules on the job and every task, against
    without, in the same rounds (the configurations taking turns): `failures` (the rules
    teams write: failure and retry; the runs succeed, so no event is made) and `all` (the
    rules hear every success too: 11,000 events, delivered to a receiver on 127.0.0.1 while
    the scheduler works). Target: with rules / without >= 0.95. Figures drift by 20% from
    run to run on two cores, so each round's configurations run back to back and the ratio
    is taken per round (BENCH_ALERT_ROUNDS, default 9)."""
    modes = [("no rules", None), ("failure rules", "failures"), ("rules on every event", "all")]
    stores = ["SQLite", "PostgreSQL"]
    figures = {(store, name): [] for store in stores for name, _ in modes}
    server = Warehouse(docker_gateway())
    try:
        for round_number in range(rounds):
            print(f"alerts round {round_number + 1} of {rounds}", flush=True)
            for store in stores:
                for index, (name, mode) in enumerate(modes):
                    if store == "SQLite":
                        target = os.path.join(work, f"alerts-{round_number}-{index}.db")
                    else:
                        database = f"alerts_{round_number}_{index}"
                        server.query(f"CREATE DATABASE {database}")
                        target = f"postgres://postgres@127.0.0.1:{server.port}/{database}"
                    figures[(store, name)].append(measure(target, alerts=mode)[0])
    finally:
        server.stop()
    print(f"\nalert rules, 1 scheduler, {rounds} rounds (median task instances/s, range; the ratio"
          " is the median of each round's ratio to that round's run without rules):")
    for store in stores:
        base = figures[(store, "no rules")]
        for name, _ in modes:
            values = figures[(store, name)]
            median = statistics.median(values)
            ratio = statistics.median(v / b for v, b in zip(values, base))
            print(f"  {store:<10} {name:<22} {median:7.0f}  ({min(values):.0f}-{max(values):.0f})"
                  f"  ratio to no rules {ratio:4.2f}" + ("  (target >= 0.95)" if name == "failure rules" else ""))
    if deliveries:
        rates = [d[0] for d in deliveries]
        medians = [d[1] for d in deliveries]
        p95s = [d[2] for d in deliveries]
        print(f"  11,000 events through the outbox to a receiver on 127.0.0.1 ({len(deliveries)} runs):"
              f" {statistics.median(rates):.0f} events/s delivered (range {min(rates):.0f}-{max(rates):.0f}),"
              f" made -> delivered median {statistics.median(medians):.0f} ms, p95 {statistics.median(p95s):.0f} ms")
    return 0


def mapping(rounds, work):
    """Issue 19: a task mapped over a list of 1,000 items its upstream publishes, expanded at
    run time into 1,000 instances, against the same work written out as 1,000 tasks after
    one (20 runs each, 20,020 task instances). Target: mapped / written out >= 0.9, the
    ratio taken per round as the two run back to back (BENCH_MAPPING_ROUNDS, default 7)."""
    shapes = [("1,000 tasks", "wide"), ("1 task mapped x 1,000", "mapped")]
    stores = ["SQLite", "PostgreSQL"]
    figures = {(store, name): [] for store in stores for name, _ in shapes}
    server = Warehouse(docker_gateway())
    try:
        for round_number in range(rounds):
            print(f"mapping round {round_number + 1} of {rounds}", flush=True)
            for store in stores:
                for index, (name, shape) in enumerate(shapes):
                    if store == "SQLite":
                        target = os.path.join(work, f"mapping-{round_number}-{index}.db")
                    else:
                        database = f"mapping_{round_number}_{index}"
                        server.query(f"CREATE DATABASE {database}")
                        target = f"postgres://postgres@127.0.0.1:{server.port}/{database}"
                    figures[(store, name)].append(measure(target, shape=shape)[0])
    finally:
        server.stop()
    print(f"\ntask mapping, 1 scheduler, {rounds} rounds (median task instances/s, range; the ratio"
          " is the median of each round's ratio to that round's 1,000 written-out tasks):")
    for store in stores:
        base = figures[(store, shapes[0][0])]
        for name, _ in shapes:
            values = figures[(store, name)]
            median = statistics.median(values)
            ratio = statistics.median(v / b for v, b in zip(values, base))
            print(f"  {store:<10} {name:<22} {median:7.0f}  ({min(values):.0f}-{max(values):.0f})"
                  f"  ratio {ratio:4.2f}" + ("  (target >= 0.9)" if name != shapes[0][0] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
