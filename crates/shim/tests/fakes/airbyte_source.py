#!/usr/bin/env python3
"""A fake Airbyte source: spec, check, discover and read of two streams, per-stream state;
config `api_key` must be `k` (else check fails, and read emits a config_error TRACE)."""
import json, sys
args = sys.argv[1:]
command = args[0]
def arg(name):
    return args[args.index(name) + 1] if name in args else None
def emit(message):
    print(json.dumps(message), flush=True)
if command == "spec":
    emit({"type": "SPEC", "spec": {"connectionSpecification": {"type": "object", "required": ["api_key"], "properties": {"api_key": {"type": "string", "airbyte_secret": True}}}}})
    sys.exit(0)
config = json.load(open(arg("--config")))
good = config.get("api_key") == "k"
if command == "check":
    emit({"type": "CONNECTION_STATUS", "connectionStatus": {"status": "SUCCEEDED" if good else "FAILED", "message": None if good else "'api_key' is a required property"}})
    sys.exit(0)
streams = [{"name": "users", "json_schema": {}, "supported_sync_modes": ["full_refresh", "incremental"], "source_defined_cursor": True, "default_cursor_field": ["updated"], "source_defined_primary_key": [["id"]]},
           {"name": "rates", "json_schema": {}, "supported_sync_modes": ["full_refresh"]}]
if command == "discover":
    emit({"type": "LOG", "log": {"level": "INFO", "message": "discovering"}})
    emit({"type": "CATALOG", "catalog": {"streams": streams}})
    sys.exit(0)
if command == "read":
    if not good:
        emit({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 0, "error": {"message": "Invalid API key", "failure_type": "config_error"}}})
        sys.exit(1)
    catalog = json.load(open(arg("--catalog")))
    state = json.load(open(arg("--state"))) if arg("--state") else []
    bookmarks = {s["stream"]["stream_descriptor"]["name"]: s["stream"]["stream_state"]["updated"] for s in state if s.get("type") == "STREAM"}
    for configured in catalog["streams"]:
        name = configured["stream"]["name"]
        start = bookmarks.get(name, 0) if configured["sync_mode"] == "incremental" else 0
        emit({"type": "LOG", "log": {"level": "INFO", "message": f"reading {name} from {start}"}})
        for n in range(start + 1, start + 4):
            emit({"type": "RECORD", "record": {"stream": name, "data": {"id": n, "updated": n}, "emitted_at": 0}})
        if configured["sync_mode"] == "incremental":
            emit({"type": "STATE", "state": {"type": "STREAM", "stream": {"stream_descriptor": {"name": name}, "stream_state": {"updated": start + 3}}, "sourceStats": {"recordCount": 3.0}}})
    emit({"type": "TRACE", "trace": {"type": "STREAM_STATUS", "emitted_at": 0}})
