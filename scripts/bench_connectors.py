#!/usr/bin/env python3
"""Benchmarks wrapped connectors (docs/connectors.md), in one run:

1. The shim's cost: 100,000 records from the demo API through the wrapped
   `tap-rest-api-msdk` (its extract try, as the scheduler records it: container start, the
   sync, records written to the workspace, the tap's log stored) against the same tap in
   the same image run alone by `docker run`, its stdout to /dev/null inside the container.
   Median of BENCH_ROUNDS rounds each; target ratio <= 1.10.
2. The wrapped tap -> postgres-load run (trigger to end) against the tap piped into
   meltanolabs-target-postgres (each from PyPI in its own virtualenv, as
   scripts/bench_pipeline.py runs them): records/s each, target ratio >= 1.0.
3. The scheduler's peak RSS (`stevedore standalone`, a fresh one) while the wrapped tap
   extracts BENCH_MILLION (1,000,000) records: target <= 100 MB.

Run through `scripts/bench.sh connectors`, which builds the release binary, the images and
the virtualenvs first.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_pipeline as bp  # noqa: E402

RECORDS = int(os.environ.get("BENCH_RECORDS", "100000"))
MILLION = int(os.environ.get("BENCH_MILLION", "1000000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
PAGE = 1000
TAP = "stevedore/tap-rest-api-msdk:1.4.2"
LOAD = "stevedore/postgres-load:0.2.0"


def tap_config(api_url):
    return {
        "api_url": api_url,
        "auth_method": "bearer_token",
        "bearer_token": bp.TOKEN,
        "next_page_token_path": "$.next_cursor",
        "pagination_next_page_param": "cursor",
        "params": {"limit": PAGE},
        "streams": [{
            "name": "charges",
            "path": "/v1/charges",
            "records_path": "$.data[*]",
            "primary_keys": ["id"],
            "replication_key": "updated_at",
        }],
    }


def demo_api(records):
    container = bp.run("docker", "run", "-d", "--rm", "-e", f"DEMO_API_RECORDS={records}",
                       "-e", f"DEMO_API_TOKEN={bp.TOKEN}", "stevedore/demo-api:0.2.0")
    ip = bp.run("docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", container)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True).stdout
        if "listening" in logs:
            return container, f"http://{ip}:8080"
        time.sleep(0.5)
    sys.exit("the demo API did not come up")


class Standalone:
    def __init__(self, work, jobs, connections):
        self.work = work
        self.jobs = os.path.join(work, "jobs")
        os.makedirs(self.jobs, exist_ok=True)
        for name, text in jobs.items():
            with open(os.path.join(self.jobs, f"{name}.yaml"), "w") as f:
                f.write(text)
        self.env = dict(os.environ, STEVEDORE_DB=os.path.join(work, "bench.db"), STEVEDORE_JOBS=self.jobs,
                        STEVEDORE_WORKSPACE_RETENTION="0s")
        for name, values in connections.items():
            args = ["connections", "add", name]
            env = dict(self.env)
            for key, value in values.items():
                env[key] = value
                args += ["--env", key]
            bp.run(bp.BIN, *args, env=env)
        log = open(os.path.join(work, "standalone.log"), "w")
        self.process = subprocess.Popen([bp.BIN, "standalone", "--port", "0"], env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=log)
        time.sleep(1.0)

    def cli(self, *args):
        return bp.run(bp.BIN, *args, env=self.env)

    def run_job(self, job):
        triggered = json.loads(self.cli("jobs", "trigger", job, "-o", "json"))
        finished = json.loads(self.cli("runs", "wait", triggered["run_id"], "-o", "json"))
        shown = json.loads(self.cli("runs", "show", triggered["run_id"], "-o", "json"))
        if finished["state"] != "success":
            sys.exit(f"{job} failed: {json.dumps(shown, indent=1)[-3000:]}")
        return finished, shown

    def peak_rss_mb(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        return int(status["VmHWM"].split()[0]) / 1024

    def stop(self):
        self.process.send_signal(2)
        self.process.wait(timeout=60)


def seconds_between(start, end):
    return (bp.parse_time(end) - bp.parse_time(start)).total_seconds()


def try_seconds(shown, task):
    instance = next(i for i in shown["task_instances"] if i["task_id"] == task)
    attempt = instance["tries"][-1]
    return seconds_between(attempt["started_at"], attempt["ended_at"]), instance


def tap_alone(api_url, work):
    """The tap in the wrapped image, without the shim: `docker run`, its stdout to /dev/null
    inside the container (so no byte of it crosses the engine)."""
    config_dir = os.path.join(work, "alone")
    os.makedirs(config_dir, exist_ok=True)
    with open(os.path.join(config_dir, "tap.json"), "w") as f:
        json.dump(tap_config(api_url), f)
    os.chmod(config_dir, 0o755)
    started = time.monotonic()
    with open(os.devnull, "w") as devnull:
        subprocess.run(["docker", "run", "--rm", "-v", f"{config_dir}:/config:ro", "--entrypoint", "/bin/sh",
                        TAP, "-c", "/opt/connector/bin/tap-rest-api-msdk --config /config/tap.json > /dev/null"],
                       stdout=devnull, stderr=subprocess.DEVNULL, check=True)
    return time.monotonic() - started


def main():
    gateway = bp.docker_gateway()
    work = tempfile.mkdtemp(prefix="stevedore-bench-connectors-")
    warehouse = bp.Warehouse(gateway)
    api, api_url = demo_api(RECORDS)
    results = {}
    try:
        jobs = {
            "tap_only": f"""id: tap_only
tasks:
  - id: extract
    image: {TAP}
    connections: [tap]
""",
            "tap_to_load": f"""id: tap_to_load
tasks:
  - id: extract
    image: {TAP}
    connections: [tap]
  - id: load
    image: {LOAD}
    depends_on: [extract]
    connections: [warehouse]
    args: [--input, "{{{{ outputs.extract.records_file }}}}", --table, charges, --key, id]
""",
        }
        connections = {
            "tap": {"CONFIG_JSON": json.dumps(tap_config(api_url))},
            "warehouse": {"PGHOST": gateway, "PGPORT": str(warehouse.port), "PGUSER": "postgres",
                          "PGDATABASE": "postgres"},
        }
        standalone = Standalone(os.path.join(work, "one"), jobs, connections)
        try:
            wrapped, alone = [], []
            for _ in range(ROUNDS):
                finished, shown = standalone.run_job("tap_only")
                took, instance = try_seconds(shown, "extract")
                wrapped.append(took)
                alone.append(tap_alone(api_url, work))
            results["wrapped"], results["alone"] = statistics.median(wrapped), statistics.median(alone)
            results["wrapped_all"], results["alone_all"] = wrapped, alone
            finished, shown = standalone.run_job("tap_to_load")
            results["run"] = seconds_between(finished["queued_at"], finished["ended_at"])
            results["run_tasks"] = {t: try_seconds(shown, t)[0] for t in ("extract", "load")}
        finally:
            standalone.stop()
        results["singer"], results["singer_peaks"] = bp.singer_side(api_url, warehouse, work)
        counts = {
            "stevedore": warehouse.query("SELECT count(*), count(DISTINCT id) FROM public.charges"),
            "singer": warehouse.query("SELECT count(*), count(DISTINCT id) FROM singer.charges"),
        }
    finally:
        subprocess.run(["docker", "rm", "-f", api], capture_output=True)

    # 3. A million records through a fresh scheduler.
    million_api, million_url = demo_api(MILLION)
    try:
        million = Standalone(os.path.join(work, "million"), {"tap_only": jobs["tap_only"]},
                             {"tap": {"CONFIG_JSON": json.dumps(tap_config(million_url))}})
        try:
            finished, shown = million.run_job("tap_only")
            results["million_seconds"], instance = try_seconds(shown, "extract")
            results["million_rss"] = million.peak_rss_mb()
            logs = million.cli("tasks", "logs", finished["run_id"], "extract")
            said = [l for l in logs.splitlines() if "the tap sent" in l]
            results["million_records"] = said[-1].split("the tap sent", 1)[1].strip() if said else "?"

        finally:
            million.stop()
    finally:
        subprocess.run(["docker", "rm", "-f", million_api], capture_output=True)
        warehouse.stop()

    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    engine = bp.run("docker", "version", "-f", "{{.Server.Version}}")
    print(f"machine: {os.cpu_count()} cores, {model}, docker engine {engine}")
    print(f"records: {RECORDS:,} from the demo API (pages of {PAGE}); {ROUNDS} rounds, medians")
    shim_ratio = results["wrapped"] / results["alone"]
    print(f"1. wrapped tap's extract try {results['wrapped']:.2f}s "
          f"({', '.join(f'{s:.2f}' for s in results['wrapped_all'])}) against the tap alone "
          f"{results['alone']:.2f}s ({', '.join(f'{s:.2f}' for s in results['alone_all'])}): "
          f"ratio {shim_ratio:.3f} (target <= 1.10)")
    print(f"2. wrapped tap -> postgres-load run {results['run']:.2f}s, {RECORDS / results['run']:,.0f} records/s "
          f"(extract {results['run_tasks']['extract']:.2f}s, load {results['run_tasks']['load']:.2f}s); "
          f"tap | target-postgres {results['singer']:.2f}s, {RECORDS / results['singer']:,.0f} records/s: "
          f"ratio {results['singer'] / results['run']:.2f} (target >= 1.0)")
    for side, count in counts.items():
        print(f"   warehouse rows ({side}): {count.replace('|', ' rows, ')} distinct ids")
    print(f"3. {MILLION:,} records through the wrapped tap in {results['million_seconds']:.1f}s "
          f"(the shim: {results['million_records']}); the scheduler's peak RSS "
          f"{results['million_rss']:.1f} MB (target <= 100)")
    shutil.rmtree(work, ignore_errors=True)
    expected = f"{RECORDS}|{RECORDS}"
    ok = (shim_ratio <= 1.10 and results["singer"] / results["run"] >= 1.0 and results["million_rss"] <= 100
          and all(c == expected for c in counts.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
