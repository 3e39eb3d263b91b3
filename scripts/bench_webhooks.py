#!/usr/bin/env python3
"""Webhook ingestion (scripts/bench.sh webhooks, issue 19): events per second that
`stevedore server` accepts (stored, 202) on SQLite and on PostgreSQL, from 10 concurrent
clients on 127.0.0.1 sending JSON lines of 100 events a request (batching), and for
reference one event a request. No scheduler runs: what is measured is the webhook, from the
request to the commit. Target: >= 5,000 events/s with batching on each store.
"""

import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import Warehouse, docker_gateway, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEVEDORE = os.path.join(ROOT, "target", "release", "stevedore")
CLIENTS = 10
TARGET = 5000
JOB = "id: clicks\nevents: {max_batch: 1000, max_wait: 1h, max_body: 4Mi}\ntasks:\n  - id: t\n    image: stevedore/synth:0.1.0\n"


def post_all(port, token, bodies, content_type, errors):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for body in bodies:
        connection.request("POST", "/api/v1/jobs/clicks/events", body=body,
                           headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})
        reply = connection.getresponse()
        reply.read()
        if reply.status != 202:
            errors.append(reply.status)
    connection.close()


def measure(db, per_request, requests_per_client):
    work = tempfile.mkdtemp(prefix="stevedore-bench-webhooks-")
    os.makedirs(os.path.join(work, "jobs"))
    with open(os.path.join(work, "jobs", "clicks.yaml"), "w") as f:
        f.write(JOB)
    env = dict(os.environ, STEVEDORE_DB=db, STEVEDORE_JOBS=os.path.join(work, "jobs"), STEVEDORE_LOG="warn")
    token = subprocess.run([STEVEDORE, "jobs", "webhook-token", "clicks"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    port = free_port()
    server = subprocess.Popen([STEVEDORE, "server", "--port", str(port)], env=env, cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/api/v1/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        content_type = "application/x-ndjson" if per_request > 1 else "application/json"
        clients, errors = [], []
        for client in range(CLIENTS):
            bodies = ["\n".join(f'{{"client":{client},"request":{r},"n":{n},"page":"/pricing","user":{r * n}}}'
                                for n in range(per_request)) for r in range(requests_per_client)]
            clients.append(threading.Thread(target=post_all, args=(port, token, bodies, content_type, errors)))
        started = time.monotonic()
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        elapsed = time.monotonic() - started
        if errors:
            raise SystemExit(f"{len(errors)} requests were refused: {errors[:5]}")
        total = CLIENTS * per_request * requests_per_client
        return total / elapsed, total, elapsed
    finally:
        server.terminate()
        server.wait()


def main():
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    server = Warehouse(docker_gateway())
    results = {}
    try:
        for round_number in range(rounds):
            print(f"round {round_number + 1} of {rounds}", flush=True)
            for store in ("SQLite", "PostgreSQL"):
                for name, per_request, requests in (("JSON lines of 100", 100, 100), ("one event a request", 1, 300)):
                    if store == "SQLite":
                        db = os.path.join(tempfile.mkdtemp(prefix="stevedore-bench-db-"), "stevedore.db")
                    else:
                        database = f"webhooks_{round_number}_{per_request}"
                        server.query(f"CREATE DATABASE {database}")
                        db = f"postgres://postgres@127.0.0.1:{server.port}/{database}"
                    rate, total, elapsed = measure(db, per_request, requests)
                    print(f"  {store:<10} {name:<20} {total:>7} events in {elapsed:6.2f}s = {rate:8.0f} events/s", flush=True)
                    results.setdefault((store, name), []).append(rate)
    finally:
        server.stop()
    print(f"\nwebhook ingestion, {CLIENTS} clients on 127.0.0.1, release build, {rounds} rounds (median events/s, range):")
    for (store, name), rates in results.items():
        note = f"  {statistics.median(rates) / TARGET:4.2f}x the target of {TARGET}" if "lines" in name else ""
        print(f"  {store:<10} {name:<20} {statistics.median(rates):8.0f}  ({min(rates):.0f}-{max(rates):.0f}){note}")


if __name__ == "__main__":
    main()
