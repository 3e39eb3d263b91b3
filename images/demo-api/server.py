"""demo-api: a SaaS-like REST API for Stevedore's demos, tests and benchmarks.

It behaves like the APIs integrations pull from: bearer-token auth, cursor and offset
pagination over records ordered by (updated_at, id), `updated_since` filtering, records that
keep arriving, and failures injected on request.

    GET  /v1/charges?updated_since=ISO&cursor=C&limit=N   (Authorization: Bearer TOKEN, or X-API-Key: TOKEN)
    GET  /v1/charges?offset=N&limit=N
         -> {"data": [...], "next_cursor": "..." | null, "total": N}
    POST /admin/records?count=N          adds N records updated now
    POST /admin/faults?status=429&count=N[&retry_after=S][&after=K]   the next N data requests
         fail (after K more that succeed: a failure mid-way through paging)
    GET  /health

Environment: DEMO_API_TOKEN (default demo-token), DEMO_API_RECORDS (initial records,
default 1000), DEMO_API_PORT (default 8080).
"""

import bisect
import json
import os
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

TOKEN = os.environ.get("DEMO_API_TOKEN", "demo-token")
BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)
MAX_LIMIT = 1000

lock = threading.Lock()
records = []
keys = []  # (updated_at, id) of each record, in the same (ascending) order, for bisect
faults = []  # [[status, retry_after, after]], consumed one per data request once `after` is 0


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def add_records(count, at=None):
    with lock:
        for _ in range(count):
            index = len(records) + 1
            updated = at or BASE + timedelta(seconds=index)
            if records and updated <= parse_time(records[-1]["updated_at"]):
                updated = parse_time(records[-1]["updated_at"]) + timedelta(microseconds=1)
            keys.append((iso(updated), index))
            records.append({
                "id": index,
                "updated_at": iso(updated),
                "amount": (index * 7919) % 100000,
                "currency": "eur",
                "customer": f"cus_{index % 97:04d}",
            })
        return len(records)


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-api/0.2.0"

    def log_message(self, format, *args):
        # One line per request on stderr, without the token.
        print(f"{self.command} {urlparse(self.path).path} -> {args[1] if len(args) > 1 else ''}", flush=True)

    def reply(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def query(self):
        return {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}

    def do_GET(self):
        path = urlparse(self.path).path
        if path == "/health":
            return self.reply(200, {"status": "ok", "records": len(records)})
        if path != "/v1/charges":
            return self.reply(404, {"error": f"no route {path}"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}" and self.headers.get("X-API-Key") != TOKEN:
            return self.reply(401, {"error": "invalid or missing token (Authorization: Bearer, or X-API-Key)"})
        with lock:
            if faults and faults[0][2] > 0:
                faults[0][2] -= 1
            elif faults:
                status, retry_after, _ = faults.pop(0)
                headers = {"Retry-After": str(retry_after)} if status == 429 else {}
                return self.reply(status, {"error": f"injected {status}"}, headers)
        query = self.query()
        try:
            limit = min(int(query.get("limit", "100")), MAX_LIMIT)
            since = parse_time(query["updated_since"]) if "updated_since" in query else None
            offset = int(query["offset"]) if "offset" in query else None
        except ValueError as error:
            return self.reply(400, {"error": str(error)})
        with lock:
            # Records are kept in (updated_at, id) order: the filters are binary searches.
            first = 0
            if since is not None:
                first = bisect.bisect_right(keys, (iso(since), float("inf")))
            if "cursor" in query:
                after_time, _, after_id = query["cursor"].partition("|")
                try:
                    after = (iso(parse_time(after_time)), int(after_id or 0))
                except ValueError as error:
                    return self.reply(400, {"error": f"bad cursor: {error}"})
                first = max(first, bisect.bisect_right(keys, after))
            total = len(records) - first
            start = first + (offset or 0)
            page = records[start:start + limit]
            more = len(records) > start + limit
        next_cursor = f"{page[-1]['updated_at']}|{page[-1]['id']}" if page and more else None
        self.reply(200, {"data": page, "next_cursor": next_cursor, "total": total})

    def do_POST(self):
        path = urlparse(self.path).path
        query = self.query()
        if path == "/admin/records":
            total = add_records(int(query.get("count", "1")), at=datetime.now(timezone.utc))
            return self.reply(200, {"added": int(query.get("count", "1")), "total": total})
        if path == "/admin/faults":
            status = int(query.get("status", "500"))
            with lock:
                after = int(query.get("after", "0"))
                for index in range(int(query.get("count", "1"))):
                    faults.append([status, int(query.get("retry_after", "1")), after if index == 0 else 0])
            return self.reply(200, {"pending_faults": len(faults)})
        self.reply(404, {"error": f"no route {path}"})


if __name__ == "__main__":
    add_records(int(os.environ.get("DEMO_API_RECORDS", "1000")))
    port = int(os.environ.get("DEMO_API_PORT", "8080"))
    print(f"demo-api listening on :{port} with {len(records)} records", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
