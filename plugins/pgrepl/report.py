"""The timing report of a replication run: the seed's ``utils/parse-replication-logs.js``, in Python.

The restore step pipes ``pg_restore --verbose`` through :mod:`pgrepl.tslog`, so every line of
``pg_restore.log`` reads ``<ISO-8601 UTC timestamp> pg_restore: <message>``. From it this module
measures each restored item and sums, per kind (TABLE DATA, INDEX, CONSTRAINT, FK CONSTRAINT,
SEQUENCE SET), the count, the seconds summed over items (over all jobs, so more than the wall
time when ``--jobs`` > 1) and the three slowest items.

What ``pg_restore`` 15/16 prints, and how items are timed:

* ``--jobs N``: the pre-data items are restored one by one (``processing item 215 TABLE users``),
  then the parallel loop prints ``launching item 3423 TABLE DATA answers`` and
  ``finished item 3423 TABLE DATA answers`` for every data and post-data item, interleaved;
  an item lasts from its launch to its finish.
* no ``--jobs``: there are no item lines at all, only ``creating INDEX "public.x"``,
  ``processing data for table "public.answers"``, ``executing SEQUENCE SET x``; an item then lasts
  until the next item starts (the last one until the last line of the file).
* worker processes share stderr, so a line may carry two ``pg_restore:`` prefixes; the item id
  is what counts and the description is cut at a stray prefix.

Plain Python, no Airflow: ``python -m pgrepl.report LOGFILE [--json]`` prints the same report.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Mapping, Sequence

#: the kinds the report totals, in the order it prints them
KINDS: tuple[str, ...] = ("TABLE DATA", "INDEX", "CONSTRAINT", "FK CONSTRAINT", "SEQUENCE SET")
TOP = 3

_PARALLEL = re.compile(r"\b(launching|finished) item (\d+) (.*)")
_PROCESSING = re.compile(r"\bprocessing (?:missed )?item (\d+) (.*)")
_ANY_ITEM = re.compile(r"\b(?:launching|finished|processing(?: missed)?) item \d+ ")
_BOUNDARY = re.compile(r"\b(?:entering main parallel loop|finished main parallel loop|entering restore_toc_entries_postfork)")
_SEQ_CREATING = re.compile(r"\bcreating (.+?) \"(.*)\"")
_SEQ_DATA = re.compile(r"\bprocessing data for table \"(.*)\"")
_SEQ_EXECUTING = re.compile(r"\bexecuting (.+)")
_SEQ_DROPPING = re.compile(r"\bdropping (.+)")
_STRAY_PREFIX = re.compile(r"\s*\S*pg_restore:.*$")


@dataclass
class RestoreItem:
    """One archive item restored by ``pg_restore`` (a table's data, an index, a constraint ...)."""

    key: str
    description: str  # e.g. "INDEX answers_assessmentid_index" as pg_restore prints it
    start: datetime
    end: datetime | None = None

    @property
    def kind(self) -> str | None:
        return kind_of(self.description)

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else max(0.0, (self.end - self.start).total_seconds())


def kind_of(description: str) -> str | None:
    """The report kind of an item description, ``None`` for kinds the report does not total."""
    for kind in ("TABLE DATA", "FK CONSTRAINT", "SEQUENCE SET", "CONSTRAINT", "INDEX"):
        if description == kind or description.startswith(kind + " "):
            if kind == "INDEX" and description.startswith("INDEX ATTACH"):
                return None
            return kind
    return None


def split_line(line: str) -> tuple[datetime, str] | None:
    """``"<timestamp> <text>"`` -> ``(timestamp, text)``; ``None`` for a line without a timestamp."""
    stamp, _, text = line.rstrip("\r\n").partition(" ")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return when, text


def _clean(tag: str) -> str:
    return _STRAY_PREFIX.sub("", tag).strip()


def parse_lines(lines: Iterable[str]) -> list[RestoreItem]:
    """Every item found in tslog'd ``pg_restore --verbose`` lines, in the order they started."""
    stamped = [parsed for parsed in (split_line(line) for line in lines) if parsed is not None]
    item_mode = any(_ANY_ITEM.search(text) for _, text in stamped)
    items: dict[str, RestoreItem] = {}
    current: RestoreItem | None = None  # the open item of a sequential phase

    def close(when: datetime) -> None:
        nonlocal current
        if current is not None and current.end is None:
            current.end = when
        current = None

    for number, (when, text) in enumerate(stamped):
        match = _PARALLEL.search(text)
        if match:
            close(when)
            event, item_id, tag = match.groups()
            if event == "launching":
                items[item_id] = RestoreItem(item_id, _clean(tag), when)
            elif item_id in items and items[item_id].end is None:
                items[item_id].end = when
            continue
        match = _PROCESSING.search(text)
        if match:
            close(when)
            item_id, tag = match.groups()
            current = items[item_id] = RestoreItem(item_id, _clean(tag), when)
            continue
        if _BOUNDARY.search(text):
            close(when)
            continue
        if item_mode:
            continue  # "creating ..." lines of workers belong to the launched items
        description = None
        if match := _SEQ_DATA.search(text):
            description = f"TABLE DATA {match.group(1)}"
        elif match := _SEQ_CREATING.search(text):
            description = f"{match.group(1)} {match.group(2)}"
        elif match := _SEQ_EXECUTING.search(text):
            description = match.group(1)
        elif _SEQ_DROPPING.search(text):
            close(when)
            continue
        if description is not None:
            close(when)
            current = items[f"line{number}"] = RestoreItem(f"line{number}", _clean(description), when)
    if stamped:
        close(stamped[-1][0])
    return list(items.values())


def summarize(items: Sequence[RestoreItem], top: int = TOP) -> dict:
    """Per kind: count, seconds summed over items, the ``top`` slowest; plus unfinished items."""
    kinds: dict[str, dict] = {}
    for kind in KINDS:
        done = [item for item in items if item.kind == kind and item.seconds is not None]
        slowest = sorted(done, key=lambda item: -item.seconds)[:top]  # stable: ties keep log order
        kinds[kind] = {
            "count": len(done),
            "seconds": round(sum(item.seconds for item in done), 6),
            "slowest": [{"item": item.description, "seconds": round(item.seconds, 6)} for item in slowest],
        }
    starts = [item.start for item in items]
    ends = [item.end for item in items if item.end is not None]
    return {
        "kinds": kinds,
        "items": len(items),
        "unfinished": [item.description for item in items if item.end is None],
        "started_at": min(starts).isoformat() if starts else None,
        "finished_at": max(ends).isoformat() if ends else None,
    }


def parse_restore_log(path: str | Path, top: int = TOP) -> dict:
    """:func:`summarize` of a ``pg_restore.log`` written by :mod:`pgrepl.tslog`."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        summary = summarize(parse_lines(handle), top)
    summary["log_file"] = str(path)
    return summary


def log_span_seconds(path: str | Path) -> float | None:
    """Seconds between the first and the last timestamped line of a tslog file (``None`` if empty)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        stamps = [parsed[0] for parsed in (split_line(line) for line in handle) if parsed]
    return round((stamps[-1] - stamps[0]).total_seconds(), 6) if stamps else None


def _seconds(step: Mapping | None) -> float | None:
    if not step or step.get("seconds") is None:
        return None
    return round(float(step["seconds"]), 3)


def build_report(dump: Mapping | None, restore: Mapping | None, enrichment: Mapping | None,
                 total_seconds: float | None, top: int = TOP) -> dict:
    """The run's report (JSON-serialisable, for XCom and the webhook body).

    :param dump: XCom of ``dump`` (``seconds``, ``source_counts``), ``None`` if it did not run
    :param restore: XCom of ``restore`` (``seconds``, ``log_file``)
    :param enrichment: XCom of ``enrichment`` (``seconds``)
    :param total_seconds: wall time of the run so far
    A missing or unreadable restore log does not fail the report: it is named in ``warnings``.
    """
    report: dict = {
        "durations": {
            "dump": _seconds(dump),
            "restore": _seconds(restore),
            "enrichment": _seconds(enrichment),
            "total": None if total_seconds is None else round(float(total_seconds), 3),
        },
        "rows_restored": dict((dump or {}).get("source_counts") or {}),
        "restore_items": None,
        "warnings": [],
    }
    log_file = (restore or {}).get("log_file")
    if not log_file:
        report["warnings"].append("restore: no log_file in its result, no per-kind timings")
    else:
        try:
            report["restore_items"] = parse_restore_log(log_file, top)
        except OSError as exc:
            report["warnings"].append(f"restore log {log_file}: {exc.strerror or exc}")
    return report


def format_duration(seconds: float | None) -> str:
    """``3725.2`` -> ``1h 2min 5s``; under a minute with milliseconds: ``0.042s``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.3f}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}min {secs}s" if hours else f"{minutes}min {secs}s"


def format_items(summary: Mapping) -> list[str]:
    """The per-kind lines of the seed's report: total, then the slowest items indented."""
    lines = []
    for kind in KINDS:
        entry = summary["kinds"].get(kind) or {"count": 0, "seconds": 0.0, "slowest": []}
        lines.append(f"{kind} total duration : {format_duration(entry['seconds'])} ({entry['count']} items)")
        for slow in entry["slowest"]:
            lines.append(f"\t{slow['item']} : {format_duration(slow['seconds'])}")
    if summary.get("unfinished"):
        lines.append(f"unfinished items ({len(summary['unfinished'])}): " + ", ".join(summary["unfinished"]))
    return lines


def format_report(report: Mapping) -> str:
    """The report as text, for the task log (the seed's ``parse-replication-logs`` output, in English)."""
    durations = report.get("durations") or {}
    lines = [
        f"Dump duration: {format_duration(durations.get('dump'))}",
        f"Restore duration: {format_duration(durations.get('restore'))}",
        f"Enrichment duration: {format_duration(durations.get('enrichment'))}",
        f"Total duration: {format_duration(durations.get('total'))}",
    ]
    if report.get("restore_items"):
        lines += format_items(report["restore_items"])
    for warning in report.get("warnings") or []:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgrepl.report",
        description="Per-kind timings of a 'pg_restore --verbose' log written through pgrepl.tslog.",
    )
    parser.add_argument("logfile", help="the run's pg_restore.log")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--top", type=int, default=TOP, help="slowest items shown per kind (default 3)")
    args = parser.parse_args(argv)
    try:
        summary = parse_restore_log(args.logfile, args.top)
        span = log_span_seconds(args.logfile)
    except OSError as exc:
        print(f"cannot read {args.logfile}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not summary["items"]:
        print(f"no pg_restore items in {args.logfile} (was it written by 'pg_restore --verbose ... 2>&1 | "
              "python -m pgrepl.tslog FILE'?)", file=sys.stderr)
        return 1
    summary["wall_seconds"] = span
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"Restore duration: {format_duration(span)}")
        print("\n".join(format_items(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
