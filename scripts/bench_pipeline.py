#!/usr/bin/env python3
"""Benchmarks the SaaS API -> warehouse path against the Singer pipeline people use today.

Both sides move the same RECORDS records from the same demo API (a container) into the same
PostgreSQL warehouse, from scratch:

- Stevedore: `stevedore standalone` runs a two-task job, http-extract -> postgres-load, as
  containers (image checks and container start-up included). Timed from the moment the run
  is triggered until it has ended, as the scheduler records it.
- Singer: `tap-rest-api-msdk | target-postgres` (MeltanoLabs), each from PyPI in its own
  virtualenv, with the same page size, bearer token, replication key and primary key
  (upsert). Timed from the start of both processes until both have exited.

It prints records/s for both and the ratio (target >= 5x), the scheduler's peak RSS, the
peak memory of each integration container (its cgroup) and of the tap and the target
processes, and checks that both tables hold every record exactly once.

Run through scripts/bench.sh pipeline, which builds the release binary and the images and
creates the virtualenvs first.
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "stevedore")
VENVS = os.path.join(ROOT, ".stevedore", "bench")
RECORDS = int(os.environ.get("BENCH_RECORDS", "100000"))
PAGE = 1000
TOKEN = "bench-token"


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, **kwargs):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs).stdout.strip()


def docker_gateway():
    gateway = run("docker", "network", "inspect", "bridge", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}")
    if not gateway:
        subnet = run("docker", "network", "inspect", "bridge", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}")
        base = subnet.split("/")[0].split(".")
        gateway = ".".join(base[:3] + [str(int(base[3]) + 1)])
    return gateway


class Warehouse:
    """A throwaway PostgreSQL server (Debian's package) on 127.0.0.1 and the bridge gateway."""

    def __init__(self, gateway):
        versions = sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: float(v))
        self.bin = f"/usr/lib/postgresql/{versions[-1]}/bin"
        self.dir = tempfile.mkdtemp(prefix="stevedore-bench-warehouse-")
        self.port = free_port()
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        data = os.path.join(self.dir, "data")
        run(*self.as_pg, f"{self.bin}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        subprocess.run([*self.as_pg, "sh", "-c", f"echo 'host all all {gateway}/16 trust' >> {data}/pg_hba.conf"], check=True)
        run(*self.as_pg, f"{self.bin}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "server.log"), "-w",
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1,{gateway}", "start")

    def query(self, sql):
        return run(f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                   "-At", "-c", sql)

    def stop(self):
        subprocess.run([*self.as_pg, f"{self.bin}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class ContainerMemory(threading.Thread):
    """Polls the memory cgroups of new containers and keeps each one's peak usage."""

    def __init__(self, ignore):
        super().__init__(daemon=True)
        self.ignore = set(ignore)
        self.peaks = {}
        self.stopped = threading.Event()

    @staticmethod
    def read_peak(container):
        for path in (f"/sys/fs/cgroup/memory/docker/{container}/memory.max_usage_in_bytes",
                     f"/sys/fs/cgroup/docker/{container}/memory.peak",
                     f"/sys/fs/cgroup/system.slice/docker-{container}.scope/memory.peak"):
            try:
                with open(path) as f:
                    return int(f.read())
            except (OSError, ValueError):
                continue
        return None

    @staticmethod
    def containers():
        for parent in ("/sys/fs/cgroup/memory/docker", "/sys/fs/cgroup/docker"):
            if os.path.isdir(parent):
                return [e for e in os.listdir(parent) if len(e) == 64]
        return [e[len("docker-"):-len(".scope")] for e in os.listdir("/sys/fs/cgroup/system.slice")
                if e.startswith("docker-") and e.endswith(".scope")]

    def run(self):
        while not self.stopped.is_set():
            for container in self.containers():
                if container in self.ignore:
                    continue
                peak = self.read_peak(container)
                if peak is not None:
                    self.peaks[container] = max(peak, self.peaks.get(container, 0))
            time.sleep(0.01)


def stevedore_side(api_url, warehouse, gateway, work):
    jobs = os.path.join(work, "jobs")
    os.makedirs(jobs)
    with open(os.path.join(jobs, "bench_pipeline.yaml"), "w") as f:
        f.write(f"""id: bench_pipeline
tasks:
  - id: extract
    image: stevedore/http-extract:0.3.0
    connections: [api]
    args: [--url, /v1/charges, --incremental-field, updated_at, --page-size, {PAGE}]
  - id: load
    image: stevedore/postgres-load:0.2.0
    depends_on: [extract]
    connections: [warehouse]
    args: [--input, "{{{{ outputs.extract.records_file }}}}", --table, charges, --key, id]
""")
    env = dict(os.environ, STEVEDORE_DB=os.path.join(work, "bench.db"), STEVEDORE_JOBS=jobs, API_TOKEN=TOKEN,
               STEVEDORE_WORKSPACE_RETENTION="0s")
    cli = lambda *args: run(BIN, *args, env=env)
    cli("connections", "add", "api", "--env", f"API_BASE_URL={api_url}", "--env", "API_TOKEN")
    cli("connections", "add", "warehouse", "--env", f"PGHOST={gateway}", "--env", f"PGPORT={warehouse.port}",
        "--env", "PGUSER=postgres", "--env", "PGDATABASE=postgres")
    log = open(os.path.join(work, "standalone.log"), "w")
    scheduler = subprocess.Popen([BIN, "standalone", "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        time.sleep(1.0)
        ignore = ContainerMemory.containers()
        memory = ContainerMemory(ignore)
        memory.start()
        started = time.monotonic()
        triggered = json.loads(cli("jobs", "trigger", "bench_pipeline", "-o", "json"))
        finished = json.loads(cli("runs", "wait", triggered["run_id"], "-o", "json"))
        wall = time.monotonic() - started
        memory.stopped.set()
        memory.join()
        assert finished["state"] == "success", finished
        shown = json.loads(cli("runs", "show", triggered["run_id"], "-o", "json"))
        with open(f"/proc/{scheduler.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        scheduler_mb = int(status["VmHWM"].split()[0]) / 1024
    finally:
        scheduler.send_signal(2)
        scheduler.wait(timeout=60)
    seconds = (parse_time(finished["ended_at"]) - parse_time(finished["queued_at"])).total_seconds()
    tasks = {}
    for instance in shown["task_instances"]:
        attempt = instance["tries"][-1]
        peak = memory.peaks.get(attempt["container_id"])
        took = (parse_time(attempt["ended_at"]) - parse_time(attempt["started_at"])).total_seconds()
        tasks[instance["task_id"]] = (took, peak)
    return seconds, wall, scheduler_mb, tasks


def singer_side(api_url, warehouse, work):
    tap_config = {
        "api_url": api_url,
        "auth_method": "bearer_token",
        "bearer_token": TOKEN,
        "pagination_request_style": "jsonpath_paginator",
        "pagination_response_style": "page",
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
    target_config = {
        "host": "127.0.0.1",
        "port": warehouse.port,
        "user": "postgres",
        "password": "",
        "database": "postgres",
        "default_target_schema": "singer",
        "load_method": "upsert",
    }
    paths = {}
    for name, config in (("tap", tap_config), ("target", target_config)):
        paths[name] = os.path.join(work, f"{name}.json")
        with open(paths[name], "w") as f:
            json.dump(config, f)
    tap_log = open(os.path.join(work, "tap.log"), "w")
    target_log = open(os.path.join(work, "target.log"), "w")
    started = time.monotonic()
    tap = subprocess.Popen([os.path.join(VENVS, "venv-tap", "bin", "tap-rest-api-msdk"), "--config", paths["tap"]],
                           stdout=subprocess.PIPE, stderr=tap_log)
    target = subprocess.Popen([os.path.join(VENVS, "venv-target", "bin", "target-postgres"), "--config",
                               paths["target"]], stdin=tap.stdout, stdout=subprocess.DEVNULL, stderr=target_log)
    tap.stdout.close()
    peaks = {}
    for name, process in (("tap", tap), ("target", target)):
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        peaks[name] = usage.ru_maxrss / 1024
        if process.returncode != 0:
            log = os.path.join(work, f"{name}.log")
            sys.exit(f"the Singer {name} failed ({process.returncode}); see {log}:\n" + open(log).read()[-3000:])
    return time.monotonic() - started, peaks


def main():
    gateway = docker_gateway()
    work = tempfile.mkdtemp(prefix="stevedore-bench-pipeline-")
    warehouse = Warehouse(gateway)
    port = free_port()
    api = run("docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", "-e", f"DEMO_API_RECORDS={RECORDS}",
              "-e", f"DEMO_API_TOKEN={TOKEN}", "stevedore/demo-api:0.2.0")
    try:
        api_ip = run("docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", api)
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("the demo API did not come up")
            time.sleep(0.2)

        seconds, wall, scheduler_mb, tasks = stevedore_side(f"http://{api_ip}:8080", warehouse, gateway, work)
        singer_seconds, singer_peaks = singer_side(f"http://127.0.0.1:{port}", warehouse, work)

        counts = {
            "stevedore": warehouse.query("SELECT count(*), count(DISTINCT id) FROM public.charges"),
            "singer": warehouse.query("SELECT count(*), count(DISTINCT id) FROM singer.charges"),
        }
    finally:
        subprocess.run(["docker", "rm", "-f", api], capture_output=True)
        warehouse.stop()

    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    engine = run("docker", "version", "-f", "{{.Server.Version}}")
    versions = {name: run(os.path.join(VENVS, f"venv-{name}", "bin", "pip"), "list", "--format=freeze")
                for name in ("tap", "target")}
    pick = lambda text, package: next((l for l in text.splitlines() if l.lower().startswith(package)), package)
    print(f"machine: {os.cpu_count()} cores, {model}, docker engine {engine}")
    print(f"records: {RECORDS:,} from the demo API (pages of {PAGE}) into PostgreSQL, upserted on id, from scratch")
    print(f"singer: {pick(versions['tap'], 'tap-rest-api-msdk')} | {pick(versions['target'], 'meltanolabs-target-postgres')}")
    mb = lambda b: f"{b / 1048576:.1f} MB" if b else "n/a"
    print(f"stevedore: {seconds:.2f}s from trigger to the run's end ({wall:.2f}s by the CLI's clock), "
          f"{RECORDS / seconds:,.0f} records/s")
    for task, (took, peak) in tasks.items():
        print(f"  {task:<8} try {took:.2f}s (container start-up included), container peak memory {mb(peak)}")
    print(f"  scheduler (stevedore standalone) peak RSS {scheduler_mb:.1f} MB")
    print(f"singer:    {singer_seconds:.2f}s for tap | target, {RECORDS / singer_seconds:,.0f} records/s")
    print(f"  tap peak RSS {singer_peaks['tap']:.1f} MB, target peak RSS {singer_peaks['target']:.1f} MB")
    ratio = singer_seconds / seconds
    print(f"ratio: stevedore moves {ratio:.1f}x the Singer pipeline's records/s (target >= 5)")
    expected = f"{RECORDS}|{RECORDS}"
    for side, count in counts.items():
        print(f"warehouse rows ({side}): {count.replace('|', ' rows, ')} distinct ids")
    ok = all(count == expected for count in counts.values())
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok and ratio >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
