#!/usr/bin/env python3
"""UI and API benchmark (scripts/bench.sh ui): with a store holding one job of 1,000 runs x
20 tasks and 10,000 runs in all, the job's grid page, a page of the runs list API and the
page of a 100,000-line log, each measured with wrk (Debian's package) over 20 sequential
requests on one connection: median and 90th percentile, against the server's health check
measured the same way as a baseline. Target: each median under 200 ms.
"""

import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "stevedore")
SEED = os.path.join(ROOT, "target", "release", "examples", "seed_bench")
REQUESTS = 20

LUA = f"""
local count = 0
local bad = 0
response = function(status, headers, body)
  count = count + 1
  if status ~= 200 then bad = bad + 1 end
  if count >= {REQUESTS} then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT median_ms=%.2f p90_ms=%.2f max_ms=%.2f requests=%d\\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency.max / 1000, summary.requests))
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url, headers, lua):
    # The script stops the thread after its 20 responses; wrk itself still waits out -d.
    args = ["wrk", "-t1", "-c1", "-d15s", "--timeout", "10s", "-s", lua]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run(args + [url], check=True, capture_output=True, text=True).stdout
    match = re.search(r"RESULT median_ms=([\d.]+) p90_ms=([\d.]+) max_ms=([\d.]+) requests=(\d+)", out)
    if not match:
        sys.exit(f"wrk printed no result for {url}:\n{out}")
    return tuple(float(g) for g in match.groups())


def main():
    work = tempfile.mkdtemp(prefix="stevedore-bench-ui-")
    db, jobs = os.path.join(work, "ui.db"), os.path.join(work, "jobs")
    started = time.monotonic()
    print(subprocess.run([SEED, db, jobs], check=True, capture_output=True, text=True).stdout.strip())
    env = dict(os.environ, STEVEDORE_DB=db, STEVEDORE_JOBS=jobs)
    token = subprocess.run([BIN, "tokens", "create", "bench", "--role", "viewer"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen([BIN, "server", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/api/v1/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        # A browser session for the pages.
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(f"{base}/login", data=urllib.parse.urlencode({"token": token}).encode())
        cookie = next(c.value for c in jar if c.name == "stevedore_session")
        auth = f"Authorization: Bearer {token}"
        session = f"Cookie: stevedore_session={cookie}"
        # The try with the long log: task_00 of the grid job's first run.
        request = urllib.request.Request(f"{base}/api/v1/runs?job_id=bench_grid&limit=500", headers={"Authorization": f"Bearer {token}"})
        page, oldest = json.load(urllib.request.urlopen(request)), None
        while page["next_cursor"]:
            oldest = page["items"][-1]["run_id"]
            request = urllib.request.Request(f"{base}/api/v1/runs?job_id=bench_grid&limit=500&cursor={page['next_cursor']}",
                                             headers={"Authorization": f"Bearer {token}"})
            page = json.load(urllib.request.urlopen(request))
        oldest = page["items"][-1]["run_id"] if page["items"] else oldest
        lua = os.path.join(work, "twenty.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        targets = [
            ("baseline: GET /api/v1/health", f"{base}/api/v1/health", []),
            ("grid page: /jobs/bench_grid (25 runs x 20 tasks)", f"{base}/jobs/bench_grid", [session]),
            ("runs list API: /api/v1/runs?limit=100", f"{base}/api/v1/runs?limit=100", [auth]),
            ("100,000-line log page (its last 5,000 lines)", f"{base}/runs/{oldest}/tasks/task_00/tries/1", [session]),
            ("100,000-line log via the API (10,000 lines)", f"{base}/api/v1/runs/{oldest}/tasks/task_00/tries/1/logs?limit=10000", [auth]),
        ]
        results = []
        for name, url, headers in targets:
            results.append((name, *measure(url, headers, lua)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores, {model}; release build; SQLite store")
    print(f"each: {REQUESTS} sequential requests on one connection (wrk -t1 -c1)")
    baseline = results[0][1]
    ok = True
    for name, median, p90, worst, count in results:
        ratio = median / baseline if baseline else 0
        print(f"{name:<52} median {median:7.2f} ms  p90 {p90:7.2f} ms  max {worst:7.2f} ms  ({ratio:5.1f}x baseline, {int(count)} requests)")
        if name.startswith("baseline"):
            continue
        ok = ok and median < 200 and int(count) == REQUESTS
    print("target: every median under 200 ms:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
