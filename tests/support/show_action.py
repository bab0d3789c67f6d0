"""A `run` action for the tests: writes what it was given (stdin, env, argv) as JSON to argv[1]."""

import json
import os
import sys

payload = sys.stdin.buffer.read()
with open(sys.argv[1], "w") as f:
    json.dump(
        {"payload": payload.hex(), "env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd()}, f
    )
print("shown")
