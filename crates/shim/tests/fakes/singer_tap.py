#!/usr/bin/env python3
"""A fake Singer tap for the shim's tests: two streams, `charges` and `refunds`, records
after the state's bookmark, a STATE after each record. FAKE_TAP_RECORDS records per stream;
FAKE_TAP_CRASH_AFTER N exits 1 after N records; config key `api_key` must be `k`."""
import json, os, sys

args = sys.argv[1:]
def arg(name):
    return args[args.index(name) + 1] if name in args else None

config = json.load(open(arg("--config")))
if config.get("api_key") != "k":
    print("CRITICAL api_key missing or wrong", file=sys.stderr)
    sys.exit(2)
streams = ["charges", "refunds"]
if "--discover" in args:
    print(json.dumps({"streams": [
        {"tap_stream_id": s, "stream": s, "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
         "metadata": [{"breadcrumb": [], "metadata": {"inclusion": "available"}}]} for s in streams]}, indent=1))
    sys.exit(0)
if arg("--catalog"):
    catalog = json.load(open(arg("--catalog")))
    selected = [s["tap_stream_id"] for s in catalog["streams"]
                if any(m["breadcrumb"] == [] and m["metadata"].get("selected") for m in s["metadata"])]
else:
    # As a Meltano SDK tap does without a catalog: every stream.
    print("no catalog: syncing every stream", file=sys.stderr)
    selected = streams
state = json.load(open(arg("--state"))) if arg("--state") else {"bookmarks": {}}
count = int(os.environ.get("FAKE_TAP_RECORDS", "5"))
crash = int(os.environ.get("FAKE_TAP_CRASH_AFTER", "-1"))
print("not json: starting the fake tap")
print(json.dumps({"type": "output", "key": "smuggled", "value": "x"}))
sent = 0
for stream in selected:
    start = state["bookmarks"].get(stream, 0)
    print(json.dumps({"type": "SCHEMA", "stream": stream, "schema": {"type": "object", "properties": {"id": {"type": "integer"}, "config_seen": {"type": "string"}}}, "key_properties": ["id"]}))
    for n in range(start + 1, start + count + 1):
        if sent == crash:
            print(f"crashing after {sent} records", file=sys.stderr)
            sys.exit(1)
        print(json.dumps({"type": "RECORD", "stream": stream, "record": {"id": n, "config_seen": config.get("region", "")}}))
        sent += 1
        state["bookmarks"][stream] = n
        if n % 1000 == 0 or n == start + count:
            print(json.dumps({"type": "STATE", "value": state}))
