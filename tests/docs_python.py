"""Runs a guide's Python blocks one after another in one namespace, as a reader pasting them
into one interpreter would (so a Spark session started by one block serves the next).

Protocol: one JSON line per block on stdin, {"name": ..., "code": ...}; one JSON line per
block on the file descriptor named by argv[1], {"ok": bool, "error": traceback or ""}. The
blocks' own output goes to this process's stdout and stderr.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    sys.path[0] = ""  # the working folder, as for `python -`, not this file's folder
    results = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for line in sys.stdin:
        block = json.loads(line)
        try:
            exec(compile(block["code"], block["name"], "exec"), namespace)
            answer = {"ok": True, "error": ""}
        except BaseException:
            answer = {"ok": False, "error": traceback.format_exc()}
        sys.stdout.flush()
        sys.stderr.flush()
        results.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
