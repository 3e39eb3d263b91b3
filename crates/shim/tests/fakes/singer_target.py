#!/usr/bin/env python3
"""A fake Singer target: writes every message it reads to FAKE_TARGET_OUT (JSON lines),
prints each STATE it sees; config key `dsn` required."""
import json, os, sys
args = sys.argv[1:]
config = json.load(open(args[args.index("--config") + 1]))
if "dsn" not in config:
    print("dsn is required", file=sys.stderr)
    sys.exit(1)
with open(os.environ["FAKE_TARGET_OUT"], "w") as out:
    for line in sys.stdin:
        message = json.loads(line)
        out.write(json.dumps(message) + "\n")
        if message["type"] == "STATE":
            print(json.dumps(message["value"]))
