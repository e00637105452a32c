"""Timestamp a client's output line by line: ``pg_restore --verbose 2>&1 | python -m pgrepl.tslog FILE``.

Each line read on stdin is appended to FILE as ``<ISO-8601 UTC timestamp with microseconds> <line>`` and echoed
unchanged on stdout (so it still reaches the Airflow task log). The timing report parses FILE.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pgrepl.tslog FILE", file=sys.stderr)
        return 2
    with open(argv[0], "a", encoding="utf-8", buffering=1) as out:
        for raw in sys.stdin.buffer:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            out.write(f"{stamp} {line}\n")
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
