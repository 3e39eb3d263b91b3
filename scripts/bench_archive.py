#!/usr/bin/env python3
"""The "year of hourly runs" benchmark (scripts/bench.sh archive, issue 20): a SQLite store
filled through the Store trait with BENCH_RUNS runs (default 100,000) x BENCH_TASKS tasks
(10), BENCH_LINES lines a try (100) and one try of BENCH_BIG_LOG lines (1,000,000); every
try's log archived to an S3-compatible server the benchmark starts (s3s-fs, an S3 server on
a folder, from crates.io; BENCH_S3=moto for moto's, from PyPI); the store's size before and after; then `stevedore server` reading that store and that S3 store,
and the job grid, a runs-list page, a run page and the big archived log's last page each
measured with wrk (20 sequential requests, median and p90) against the health check; then
`db clean` of 90% of the runs with its time and the store's size before and after, while a
scheduler on the same store runs rounds of 300 runs x 10 task instances (instant backend):
its throughput during the clean against before and after it.
Targets: each page's median under 200 ms; throughput during the clean >= 0.8 of without.
"""

import http.cookiejar
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ui import LUA, REQUESTS, free_port, measure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "stevedore")
BENCH = os.path.join(ROOT, "target", "release", "examples", "archive_bench")
MOTO = os.path.join(ROOT, ".stevedore", "venv-s3", "bin", "moto_server")
S3S = os.path.join(ROOT, ".stevedore", "s3s", "bin", "s3s-fs")
S3 = os.environ.get("BENCH_S3", "s3s-fs")
RUNS = int(os.environ.get("BENCH_RUNS", "100000"))
TASKS = int(os.environ.get("BENCH_TASKS", "10"))
LINES = int(os.environ.get("BENCH_LINES", "100"))
BIG = int(os.environ.get("BENCH_BIG_LOG", "1000000"))
KEY, SECRET = "bench-key", "bench-secret"


def wait_for(url):
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers (s3s-fs refuses an unsigned request)
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} did not answer")


def step(title, args, env):
    print(f"--- {title}", flush=True)
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{title} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    out = done.stdout.strip()
    print(out, flush=True)
    return out


def s3s_folder(work):
    """s3s-fs keeps two files per object (its metadata and checksums) in its root folder,
    with names of about 180 characters: ext4 without the large_dir feature refuses new
    names in one folder at about two million of them ("Directory index full", reported as
    "No space left on device"), about 900,000 objects. Above 400,000 objects the folder is an
    ext4 image with large_dir, mounted here (root, e2fsprogs) and unmounted at the end."""
    root = os.path.join(work, "s3")
    if os.path.ismount(root):
        return root, None
    os.makedirs(root, exist_ok=True)
    if RUNS * TASKS <= 400_000:
        return root, None
    if os.geteuid() != 0:
        sys.exit(f"{RUNS * TASKS} objects need a folder ext4 can hold them in: run as root, "
                 f"or mount a filesystem with large_dir (or XFS) at {root} first")
    image = os.path.join(work, "s3.img")
    size = max(8, RUNS * TASKS * 16 // 1_000_000)  # GB: three 4 KiB blocks an object, and room
    subprocess.run(["truncate", "-s", f"{size}G", image], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "large_dir", "-i", "4096", image], check=True)
    subprocess.run(["mount", "-o", "loop", image, root], check=True)
    return root, image


def main():
    # BENCH_WORK: a folder of an earlier run to take up (its seeded store is kept, and the
    # archiving goes on where it stopped).
    work = os.environ.get("BENCH_WORK") or tempfile.mkdtemp(prefix="stevedore-bench-archive-")
    db, jobs = os.path.join(work, "year.db"), os.path.join(work, "jobs")
    seeded = os.path.exists(db)
    s3_root, s3_image = s3s_folder(work) if S3 != "moto" else (None, None)
    s3_port = free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    if S3 == "moto":
        s3_args = [MOTO, "-H", "127.0.0.1", "-p", str(s3_port)]
    else:
        # s3s-fs keeps a bucket as a folder of its root.
        os.makedirs(os.path.join(s3_root, "bench"), exist_ok=True)
        s3_args = [S3S, "--host", "127.0.0.1", "--port", str(s3_port),
                   "--access-key", KEY, "--secret-key", SECRET, s3_root]
    s3 = subprocess.Popen(s3_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        wait_for(endpoint)
        if S3 == "moto":
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"))
        env = dict(os.environ, STEVEDORE_DB=db, STEVEDORE_JOBS=jobs,
                   STEVEDORE_ARTIFACT_STORE="s3://bench/year",
                   STEVEDORE_ARTIFACT_STORE_ENDPOINT=endpoint,
                   STEVEDORE_ARTIFACT_STORE_REGION="us-east-1",
                   STEVEDORE_ARTIFACT_STORE_PATH_STYLE="true",
                   STEVEDORE_ARTIFACT_STORE_ACCESS_KEY_ID=KEY,
                   STEVEDORE_ARTIFACT_STORE_SECRET_ACCESS_KEY=SECRET)
        print(f"scale: {RUNS} runs x {TASKS} tasks, {LINES} lines a try, one log of {BIG} lines")
        if seeded:
            print(f"--- seed: taken up from {work} (the archiving goes on where it stopped)")
        else:
            step("seed", [BENCH, "seed", db, jobs, str(RUNS), str(TASKS), str(LINES), str(BIG)], env)
        step(f"archive to S3 ({S3})", [BENCH, "archive", db, "s3://bench/year", endpoint], env)

        token = subprocess.run([BIN, "tokens", "create", "bench", "--role", "viewer"], env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(os.path.join(work, "server.log"), "w")
        server = subprocess.Popen([BIN, "server", "--port", str(port)], env=env, stdout=log, stderr=log)
        wait_for(f"{base}/api/v1/health")
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(f"{base}/login", data=urllib.parse.urlencode({"token": token}).encode())
        cookie = next(c.value for c in jar if c.name == "stevedore_session")
        auth, session = f"Authorization: Bearer {token}", f"Cookie: stevedore_session={cookie}"
        # The newest run, and the oldest (its first try has the big log): the runs list paged
        # to its end, newest first.
        def page(cursor=None):
            url = f"{base}/api/v1/runs?job_id=bench_hourly&limit=500" + (f"&cursor={cursor}" if cursor else "")
            return json.load(urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})))
        listed = page()
        newest = listed["items"][0]["run_id"]
        while listed["next_cursor"]:
            listed = page(listed["next_cursor"])
        oldest_id = listed["items"][-1]["run_id"]
        lua = os.path.join(work, "twenty.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        targets = [
            ("baseline: GET /api/v1/health", f"{base}/api/v1/health", []),
            ("job grid: /jobs/bench_hourly", f"{base}/jobs/bench_hourly", [session]),
            ("runs list API: /api/v1/runs?limit=100", f"{base}/api/v1/runs?limit=100", [auth]),
            ("run page: /runs/<newest>", f"{base}/runs/{newest}", [session]),
            (f"{BIG:,}-line archived log, its last page (UI)", f"{base}/runs/{oldest_id}/tasks/task_00/tries/1", [session]),
            (f"{BIG:,}-line archived log, last 1,000 lines (API)",
             f"{base}/api/v1/runs/{oldest_id}/tasks/task_00/tries/1/logs?after={BIG - 1001}&limit=1000", [auth]),
        ]
        results = [(name, *measure(url, headers, lua)) for name, url, headers in targets]
        server.terminate()
        server.wait(timeout=30)
        server = None
        # The pages' figures first, the clean's after.
        print(f"machine: {os.cpu_count()} cores; release build; SQLite store; S3: {S3} {endpoint}")
        baseline = results[0][1]
        ok = True
        for name, median, p90, worst, count in results:
            print(f"{name:<52} median {median:7.2f} ms  p90 {p90:7.2f} ms  max {worst:7.2f} ms  "
                  f"({median / baseline if baseline else 0:5.1f}x baseline, {int(count)} requests)", flush=True)
            if not name.startswith("baseline"):
                ok = ok and median < 200 and int(count) == REQUESTS
        print("target: every median under 200 ms:", "met" if ok else "NOT met", flush=True)
        out = step("db clean of 90% of the runs, a scheduler on the same store",
                   [BENCH, "clean", db, "s3://bench/year", endpoint, "90"], env)
        ratio = [float(w.split()[1]) for w in out.split(";") if w.strip().startswith("ratio")]
        kept = bool(ratio) and ratio[0] >= 0.8
        print("target: throughput during the clean >= 0.8 of without:", "met" if kept else "NOT met", flush=True)
        ok = ok and kept
    finally:
        if server:
            server.terminate()
        s3.terminate()
        s3.wait(timeout=30)
        if s3_image:
            subprocess.run(["umount", s3_root], check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
