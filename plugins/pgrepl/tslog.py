"""Timestamp a client's output line by line: ``pg_restore --verbose 2>&1 | python -m pgrepl.tslog FILE``.

Each line read on stdin is appended to FILE as ``<ISO-8601 UTC timestamp with microseconds> <line>`` and echoed
on stdout (so it still reaches the Airflow task log), prefix pieces of parallel workers put back on whole lines
(:class:`LineMender`). The timing report parses FILE.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone

#: what PostgreSQL's client logging writes before a message, piece by piece (``pg_restore:``, `` ``, ``error: ``);
#: its parallel workers share one stderr that the tools set unbuffered, so pieces of two workers' lines interleave:
#: ``pg_restore:pg_restore: creating ...`` then `` finished item ...``. The message itself comes in one write.
_PROGRAM = r"(?:pg_restore|pg_dump|pg_dumpall|psql):"
_LEVEL = r"(?:error|warning|detail|hint): "
_PIECES = re.compile(rf"^(?:{_PROGRAM}| |{_LEVEL})+")
_PROGRAM_RE = re.compile(_PROGRAM)
_LEVEL_RE = re.compile(_LEVEL)


class LineMender:
    """Put interleaved prefix pieces back on whole lines: ``pg_restore: [level: ]message`` each.

    The pieces before a line's message are grouped, each group starting at a program prefix: the last group is the
    message's own; earlier groups belong to lines still to come (their messages arrive later, on a line without a
    prefix), which get them back in order. Whole lines are unchanged.
    """

    _TOKEN = re.compile(rf"{_PROGRAM}| |{_LEVEL}")

    def __init__(self) -> None:
        self.pending: list[tuple[str, str]] = []  # (program, level) of lines whose message is still to come

    def mend(self, line: str) -> str:
        match = _PIECES.match(line)
        if match and _PROGRAM_RE.search(match.group(0)):
            groups: list[list[str]] = []
            for token in self._TOKEN.findall(match.group(0)):
                if _PROGRAM_RE.fullmatch(token):
                    groups.append([token])
                elif groups:
                    groups[-1].append(token)
                elif _LEVEL_RE.fullmatch(token):
                    self._give_level(token)  # a piece of a line begun on an earlier line (its program is pending)
                # a space before the line's first program piece: the rest of a prefix begun earlier
            if len(groups) == 1 and re.fullmatch(rf"{_PROGRAM} (?:{_LEVEL})?", match.group(0)):
                return line  # whole
            for group in groups[:-1]:
                self.pending.append(self._head(group))
            program, level = self._head(groups[-1])
            return f"{program} {level}{line[match.end():]}"
        if self.pending:
            program, level = self.pending.pop(0)
            return f"{program} {level}{line.lstrip(' ')}"
        return line

    def _give_level(self, level: str) -> None:
        for index, (program, given) in enumerate(self.pending):
            if not given:
                self.pending[index] = (program, level)
                return

    @staticmethod
    def _head(group: list[str]) -> tuple[str, str]:
        levels = [token for token in group[1:] if _LEVEL_RE.fullmatch(token)]
        return group[0], levels[0] if levels else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pgrepl.tslog FILE", file=sys.stderr)
        return 2
    mender = LineMender()
    with open(argv[0], "a", encoding="utf-8", buffering=1) as out:
        for raw in sys.stdin.buffer:
            line = mender.mend(raw.decode("utf-8", "replace").rstrip("\n"))
            stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            out.write(f"{stamp} {line}\n")
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
