"""saas_apis: API servers written for Stevedore's tests, behaving like the APIs integrations
meet: Stripe's list endpoints, GitHub's REST API and HubSpot's CRM API, plus a plain
page-number/offset API. Only the parts an extractor depends on are played: authentication,
pagination, incremental filters, error bodies and rate-limit headers. The Python standard
library only.

    python3 saas_apis.py [--port 0] [--records 250] [--token-lifetime 3600] [--token-uses 0]

prints `listening on PORT` first.

Stripe-like (`/stripe`), key `sk_test_stevedore` as Basic username or Bearer:
    GET /stripe/v1/charges?limit=N&starting_after=ID&created[gt]=UNIX&created[gte]=UNIX
        -> {"object": "list", "url": "/v1/charges", "has_more": bool, "data": [charge...]}
        newest first; ids "ch_000001"; `created` Unix seconds; limit at most 100.
GitHub-like (`/github`), token as `Authorization: Bearer T` or `token T`:
    GET /github/repos/acme/app/issues?per_page=N&page=P&since=ISO&state=all
        -> [issue...] oldest update first; `Link: <...>; rel="next", <...>; rel="last"`;
        `since` inclusive (GitHub's); X-RateLimit-{Limit,Remaining,Reset} on every answer.
HubSpot-like (`/hubspot`), OAuth2 client credentials (client `stevedore-client`, secret
`stevedore-secret`):
    POST /hubspot/oauth/v1/token (form: grant_type=client_credentials, client_id, client_secret)
        -> {"access_token", "expires_in", "token_type": "bearer"}
    GET /hubspot/crm/v3/objects/contacts?limit=N&after=CURSOR&updated_after=ISO
        -> {"results": [...], "paging": {"next": {"after": "...", "link": "/hubspot/..."}}}
        an expired token answers 401 {"category": "EXPIRED_AUTHENTICATION"}.
Plain (`/plain`), key in `?api_key=` or `X-API-Key`:
    GET /plain/items?page=P&page_size=N  or  ?offset=O&limit=N
        -> {"items": [...], "page": P, "total": T}

Admin (no auth): POST /admin/records?count=N (new records, updated now), POST
/admin/faults?route=stripe|github|hubspot|plain|any&kind=429|429-bare|403-ratelimit|500&count=N,
POST /admin/expire-tokens, GET /admin/stats.
"""

import argparse
import base64
import json
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

STRIPE_KEY = "sk_test_stevedore"
GITHUB_TOKEN = "ghp_stevedore"
PLAIN_KEY = "plain-key"
CLIENT_ID = "stevedore-client"
CLIENT_SECRET = "stevedore-secret"
BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)

lock = threading.Lock()
records = []  # dicts with n (1-based), at (datetime); ascending by at
faults = []  # [route, kind]
tokens = {}  # token -> {"expires": float, "uses": int}
stats = {"requests": {}, "statuses": {}, "tokens_issued": 0, "times": {}}
settings = {"token_lifetime": 3600, "token_uses": 0}


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def add_records(count, now=False):
    with lock:
        for _ in range(count):
            n = len(records) + 1
            at = BASE + timedelta(minutes=n)
            if now:
                at = max(datetime.now(timezone.utc).replace(microsecond=0), records[-1]["at"] + timedelta(seconds=1) if records else BASE)
            records.append({"n": n, "at": at})
        return len(records)


def charge(r):
    return {"id": f"ch_{r['n']:06d}", "object": "charge", "amount": r["n"] * 100 % 9973,
            "currency": "usd", "created": int(r["at"].timestamp())}


def issue(r):
    return {"id": 1000 + r["n"], "number": r["n"], "title": f"issue {r['n']}", "state": "open",
            "updated_at": iso(r["at"])}


def contact(r):
    return {"id": str(r["n"]), "properties": {"email": f"c{r['n']}@example.com"},
            "updatedAt": iso(r["at"]), "archived": False}


def item(r):
    return {"id": r["n"], "name": f"item {r['n']}", "modified": iso(r["at"])}


class Handler(BaseHTTPRequestHandler):
    server_version = "saas-apis/0.1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def reply(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        route = urlparse(self.path).path.split("/")[1]
        with lock:
            key = f"{route} {status}"
            stats["statuses"][key] = stats["statuses"].get(key, 0) + 1

    def query(self):
        return {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}

    def count(self, route):
        with lock:
            stats["requests"][route] = stats["requests"].get(route, 0) + 1
            stats["times"].setdefault(route, []).append(time.time())

    def fault(self, route):
        """The next injected fault for this route, if any: answered here (True)."""
        with lock:
            for index, (where, kind) in enumerate(faults):
                if where in (route, "any"):
                    faults.pop(index)
                    break
            else:
                return False
        reset = str(int(time.time()) + 1)
        if kind == "429":
            self.reply(429, {"error": {"message": "Too many requests", "type": "rate_limit"}}, {"Retry-After": "1"})
        elif kind == "429-bare":
            self.reply(429, {"error": {"message": "Too many requests"}})
        elif kind == "403-ratelimit":
            self.reply(403, {"message": "API rate limit exceeded"},
                       {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
        else:
            self.reply(500, {"error": "injected"})
        return True

    def bearer(self):
        header = self.headers.get("Authorization", "")
        for prefix in ("Bearer ", "token "):
            if header.startswith(prefix):
                return header[len(prefix):]
        return None

    def do_GET(self):
        url = urlparse(self.path)
        path = url.path
        q = self.query()
        if path == "/admin/stats":
            with lock:
                body = {"requests": stats["requests"], "statuses": stats["statuses"],
                        "tokens_issued": stats["tokens_issued"], "records": len(records),
                        "times": stats["times"]}
            return self.reply(200, body)
        if path == "/stripe/v1/charges":
            return self.stripe(q)
        if path == "/github/repos/acme/app/issues":
            return self.github(q)
        if path == "/hubspot/crm/v3/objects/contacts":
            return self.hubspot(q)
        if path == "/plain/items":
            return self.plain(q)
        self.reply(404, {"error": f"no route {path}"})

    def stripe(self, q):
        self.count("stripe")
        header = self.headers.get("Authorization", "")
        key = self.bearer()
        if header.startswith("Basic "):
            key = base64.b64decode(header[6:]).decode().split(":", 1)[0]
        if key != STRIPE_KEY:
            return self.reply(401, {"error": {"message": "Invalid API Key provided", "type": "invalid_request_error"}})
        if self.fault("stripe"):
            return
        limit = min(int(q.get("limit", "10")), 100)
        with lock:
            rows = [r for r in reversed(records)]
        if "created[gt]" in q:
            rows = [r for r in rows if int(r["at"].timestamp()) > int(q["created[gt]"])]
        if "created[gte]" in q:
            rows = [r for r in rows if int(r["at"].timestamp()) >= int(q["created[gte]"])]
        if "starting_after" in q:
            ids = [charge(r)["id"] for r in rows]
            if q["starting_after"] not in ids:
                return self.reply(400, {"error": {"message": f"No such charge: {q['starting_after']}"}})
            rows = rows[ids.index(q["starting_after"]) + 1:]
        page = rows[:limit]
        self.reply(200, {"object": "list", "url": "/v1/charges", "has_more": len(rows) > limit,
                         "data": [charge(r) for r in page]})

    def github(self, q):
        self.count("github")
        rate = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "4999",
                "X-RateLimit-Reset": str(int(time.time()) + 3600)}
        if self.bearer() != GITHUB_TOKEN:
            return self.reply(401, {"message": "Bad credentials"}, rate)
        if self.fault("github"):
            return
        per_page = min(int(q.get("per_page", "30")), 100)
        page = int(q.get("page", "1"))
        with lock:
            rows = list(records)
        if "since" in q:
            since = parse_iso(q["since"])
            rows = [r for r in rows if r["at"] >= since]
        last = max(1, -(-len(rows) // per_page))
        chunk = rows[(page - 1) * per_page: page * per_page]
        links = []
        host = self.headers.get("Host")
        def link(p):
            params = {k: v for k, v in q.items()}
            params["page"] = str(p)
            return f"<http://{host}/github/repos/acme/app/issues?{urlencode(params)}>"
        if page < last:
            links.append(f'{link(page + 1)}; rel="next"')
            links.append(f'{link(last)}; rel="last"')
        headers = dict(rate)
        if links:
            headers["Link"] = ", ".join(links)
        self.reply(200, [issue(r) for r in chunk], headers)

    def hubspot(self, q):
        self.count("hubspot")
        token = self.bearer()
        with lock:
            held = tokens.get(token)
            valid = held is not None and held["expires"] > time.time() and (
                settings["token_uses"] == 0 or held["uses"] < settings["token_uses"])
            if valid:
                held["uses"] += 1
        if not valid:
            return self.reply(401, {"status": "error", "message": "The OAuth token used to make this call expired",
                                    "category": "EXPIRED_AUTHENTICATION"})
        if self.fault("hubspot"):
            return
        limit = min(int(q.get("limit", "10")), 100)
        with lock:
            rows = list(records)
        if "updated_after" in q:
            since = parse_iso(q["updated_after"])
            rows = [r for r in rows if r["at"] > since]
        if "after" in q:
            rows = [r for r in rows if r["n"] > int(q["after"])]
        page = rows[:limit]
        body = {"results": [contact(r) for r in page]}
        if len(rows) > limit:
            after = str(page[-1]["n"])
            params = {k: v for k, v in q.items()}
            params["after"] = after
            body["paging"] = {"next": {"after": after, "link": f"/hubspot/crm/v3/objects/contacts?{urlencode(params)}"}}
        self.reply(200, body)

    def plain(self, q):
        self.count("plain")
        if q.get("api_key") != PLAIN_KEY and self.headers.get("X-API-Key") != PLAIN_KEY:
            return self.reply(401, {"error": "api key missing or wrong"})
        if self.fault("plain"):
            return
        with lock:
            rows = list(records)
        if "modified_since" in q:
            since = parse_iso(q["modified_since"])
            rows = [r for r in rows if r["at"] > since]
        if "offset" in q:
            limit = int(q.get("limit", "10"))
            start = int(q["offset"])
            page_no = None
        else:
            limit = int(q.get("page_size", "10"))
            page_no = int(q.get("page", "1"))
            start = (page_no - 1) * limit
        self.reply(200, {"items": [item(r) for r in rows[start:start + limit]], "page": page_no, "total": len(rows)})

    def do_POST(self):
        url = urlparse(self.path)
        q = self.query()
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length).decode() if length else ""
        if url.path == "/hubspot/oauth/v1/token":
            self.count("token")
            form = {k: v[-1] for k, v in parse_qs(body).items()}
            if form.get("grant_type") != "client_credentials":
                return self.reply(400, {"status": "BAD_GRANT_TYPE"})
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                return self.reply(400, {"status": "BAD_CLIENT_ID", "message": "missing or unknown client id"})
            token = "hs_" + secrets.token_hex(12)
            with lock:
                tokens[token] = {"expires": time.time() + settings["token_lifetime"], "uses": 0}
                stats["tokens_issued"] += 1
            return self.reply(200, {"access_token": token, "expires_in": settings["token_lifetime"],
                                    "token_type": "bearer"})
        if url.path == "/admin/records":
            total = add_records(int(q.get("count", "1")), now=True)
            return self.reply(200, {"total": total})
        if url.path == "/admin/faults":
            with lock:
                faults.extend([[q.get("route", "any"), q.get("kind", "500")]] * int(q.get("count", "1")))
            return self.reply(200, {"pending": len(faults)})
        if url.path == "/admin/expire-tokens":
            with lock:
                tokens.clear()
            return self.reply(200, {"expired": True})
        self.reply(404, {"error": f"no route {url.path}"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--records", type=int, default=250)
    parser.add_argument("--token-lifetime", type=int, default=3600)
    parser.add_argument("--token-uses", type=int, default=0, help="requests a token answers before it expires (0: no limit)")
    args = parser.parse_args()
    settings["token_lifetime"] = args.token_lifetime
    settings["token_uses"] = args.token_uses
    add_records(args.records)
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()
