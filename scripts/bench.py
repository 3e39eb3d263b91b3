#!/usr/bin/env python3
"""Benchmarks Stevedore on this machine and prints the figures (docs/benchmarks.md).

1. Platform overhead: a chain of 20 no-op tasks run by Stevedore against a shell loop of
   20 `docker run --rm` of the same image, as a ratio (target <= 1.10).
2. Log throughput: one container prints 1,000,000 lines as fast as it can, with a
   connection of 20 values in its task (so every line is masked against 20 values and their
   encodings); lines stored per second (target >= 200,000), lines lost (target 0) and the
   scheduler's peak RSS (target <= 100 MB).

Run through scripts/bench.sh, which builds the release binary and the images first.
"""

import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "stevedore")
IMAGE = "stevedore/synth:0.1.0"
CHAIN = 20
LINES = 1_000_000
# Connection values masked in every line of both benchmarks.
SECRETS = 20
# Container start times vary by several percent from one minute to the next here, so the
# two sides alternate for a few rounds and the ratio is taken over the rounds' totals.
ROUNDS = 3


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def chain_job():
    lines = ["id: bench_chain", "tasks:"]
    for index in range(CHAIN):
        lines += [f"  - id: t{index:02d}", f"    image: {IMAGE}", "    args: [noop]", "    connections: [bench]"]
        if index:
            lines.append(f"    depends_on: [t{index - 1:02d}]")
    return "\n".join(lines) + "\n"


def logs_job(masked=True):
    name, connections = ("bench_logs", "    connections: [bench]\n") if masked else ("bench_logs_plain", "")
    return f"id: {name}\ntasks:\n  - id: spew\n    image: {IMAGE}\n    args: [spew, --lines, {LINES}]\n{connections}"


def main():
    work = tempfile.mkdtemp(prefix="stevedore-bench-")
    jobs = os.path.join(work, "jobs")
    os.makedirs(jobs)
    with open(os.path.join(jobs, "bench_chain.yaml"), "w") as f:
        f.write(chain_job())
    with open(os.path.join(jobs, "bench_logs.yaml"), "w") as f:
        f.write(logs_job())
    with open(os.path.join(jobs, "bench_logs_plain.yaml"), "w") as f:
        f.write(logs_job(masked=False))
    env = dict(os.environ, STEVEDORE_DB=os.path.join(work, "bench.db"), STEVEDORE_JOBS=jobs)

    def cli(*args):
        out = subprocess.run([BIN, *args], env=env, check=True, capture_output=True, text=True)
        return out.stdout

    contract = ["run", "--job", "b", "--task", "t", "--run", "r", "--try", "1", "--", "noop"]

    # 20 connection values, 16 to 40 characters, that every line is masked against.
    values = {f"SECRET_{n:02d}": secrets.token_urlsafe(12 + n) for n in range(SECRETS)}
    add = [BIN, "connections", "add", "bench"]
    for name in values:
        add += ["--env", name]
    subprocess.run(add, env=dict(env, **values), check=True, capture_output=True)

    def docker_loop():
        started = time.monotonic()
        for _ in range(CHAIN):
            subprocess.run(["docker", "run", "--rm", IMAGE, *contract], check=True, capture_output=True)
        return time.monotonic() - started

    log = open(os.path.join(work, "standalone.log"), "w")
    scheduler = subprocess.Popen([BIN, "standalone", "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        time.sleep(1.0)
        subprocess.run(["docker", "run", "--rm", IMAGE, *contract], check=True, capture_output=True)
        rounds = []
        for _ in range(ROUNDS):
            baseline = docker_loop()
            run = json.loads(cli("jobs", "trigger", "bench_chain", "--wait", "-o", "json"))
            assert run["state"] == "success", run
            # From the trigger to the run's end: includes picking the run up.
            chain = (parse_time(run["ended_at"]) - parse_time(run["queued_at"])).total_seconds()
            rounds.append((chain, baseline))

        def spew(job):
            run = json.loads(cli("jobs", "trigger", job, "--wait", "-o", "json"))
            assert run["state"] == "success", run
            shown = json.loads(cli("runs", "show", run["run_id"], "-o", "json"))
            attempt = shown["task_instances"][0]["tries"][0]
            return run, (parse_time(attempt["ended_at"]) - parse_time(attempt["started_at"])).total_seconds()

        # The same million lines without a connection: the baseline of masking's cost.
        _, plain_seconds = spew("bench_logs_plain")
        run, try_seconds = spew("bench_logs")
        with open(f"/proc/{scheduler.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        peak_rss_mb = int(status["VmHWM"].split()[0]) / 1024
        lines = subprocess.run([BIN, "tasks", "logs", run["run_id"], "spew"], env=env, check=True,
                               capture_output=True, text=True).stdout.splitlines()
    finally:
        scheduler.send_signal(2)
        scheduler.wait(timeout=60)

    stored = len(lines)
    in_order = all(line.endswith(f"stdout line {i}") for i, line in enumerate(lines))
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    docker_version = subprocess.run(["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {os.cpu_count()} cores, {model}, docker engine {docker_version}")
    for index, (chain, baseline) in enumerate(rounds, 1):
        print(f"round {index}: chain of {CHAIN} no-op tasks: stevedore {chain:.2f}s, docker run --rm loop {baseline:.2f}s, ratio {chain / baseline:.3f}")
    chain = sum(c for c, _ in rounds)
    baseline = sum(b for _, b in rounds)
    print(f"overhead ratio over {ROUNDS} rounds: {chain / baseline:.3f} (target <= 1.10); per task: "
          f"stevedore {chain / CHAIN / ROUNDS * 1000:.0f} ms, docker run --rm {baseline / CHAIN / ROUNDS * 1000:.0f} ms")
    print(f"log lines: {LINES} printed, {stored} stored, {LINES - stored} lost (target 0), order kept: {in_order}, masked against {SECRETS} connection values")
    print(f"log throughput:               {stored / try_seconds:,.0f} lines/s over the try's {try_seconds:.2f}s (target >= 200,000)")
    print(f"without masking (same run):   {LINES / plain_seconds:,.0f} lines/s over {plain_seconds:.2f}s; masking 20 values costs {try_seconds / plain_seconds:.3f}x the time")
    print(f"scheduler peak RSS:           {peak_rss_mb:.1f} MB (target <= 100)")
    return 0 if stored == LINES and in_order else 1


if __name__ == "__main__":
    sys.exit(main())
