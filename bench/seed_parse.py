"""Pure helpers of ``bench/seed_bench.py`` (no database, no subprocess): unit-tested in tests/test_bench_seed_parse.py.

- :func:`seed_phases`: the seed's own phase timings, from the bunyan JSON lines its logger writes to stdout.
- :func:`airflow_span`: the project's figure, from the task instances of one DAG run (``dump`` start to
  ``enrichment`` end), as Airflow recorded them in its metadata database.
- :func:`rotation`: the order of the methods in one repetition (rotates, so each method is first once).
- :func:`inflate_for_scale`: ``inflate_pix.sql`` made valid for a fractional scale (0.1 for a quick run).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

#: (phase, first message, last message) of the seed's logger in src/steps/backup-restore/index.js
SEED_PHASE_MESSAGES = (
    ("dump", "Start create Backup", "End create Backup"),
    ("drop", "Start drop Objects AndRestoreBackup", "End drop Objects AndRestoreBackup"),
    ("restore", "Start restore", "Restore done"),
    ("compat_views", "Start create view", "End create view"),
    ("enrichment", "enrichment.add - Started", "enrichment.add - Ended"),
)


def parse_time(value: object) -> datetime | None:
    """An ISO timestamp (bunyan's ``time``, Airflow's ``start_date``/``end_date`` in SQLite) as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        text = str(value).strip().replace("Z", "+00:00")
        if " " in text and "T" not in text:
            text = text.replace(" ", "T", 1)
        parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def seed_phases(lines) -> dict[str, float]:
    """``{"<phase>_seconds": s}`` from the seed's bunyan lines (non-JSON lines, e.g. pg_restore's, are skipped)."""
    seen: dict[str, datetime] = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        msg, when = record.get("msg"), record.get("time")
        if isinstance(msg, str) and when and msg not in seen:
            seen[msg] = parse_time(when)
    out = {}
    for phase, start, end in SEED_PHASE_MESSAGES:
        if start in seen and end in seen:
            out[f"{phase}_seconds"] = (seen[end] - seen[start]).total_seconds()
    return out


def airflow_span(tasks: list[dict], first: str = "dump", last: str = "enrichment") -> dict:
    """The project's time as Airflow recorded it: ``first``'s start to ``last``'s end, plus each task's duration.

    ``tasks``: rows with ``task_id``, ``map_index``, ``state``, ``start_date``, ``end_date`` (one DAG run).
    Raises ``ValueError`` naming the task when one of the two is missing or did not succeed.
    """
    by_id = {t["task_id"]: t for t in tasks if t.get("map_index") in (-1, None)}
    for task_id in (first, last):
        ti = by_id.get(task_id)
        if ti is None:
            raise ValueError(f"task {task_id!r} not found in the DAG run")
        if ti.get("state") != "success":
            raise ValueError(f"task {task_id!r} ended in state {ti.get('state')!r}")
    start, end = parse_time(by_id[first]["start_date"]), parse_time(by_id[last]["end_date"])
    out = {"total_seconds": (end - start).total_seconds()}
    for ti in tasks:
        if ti.get("map_index") not in (-1, None):
            continue
        s, e = parse_time(ti.get("start_date")), parse_time(ti.get("end_date"))
        if s and e:
            out[f"{ti['task_id']}_seconds"] = (e - s).total_seconds()
    return out


def rotation(methods: list[str], rep: int) -> list[str]:
    """Order of the methods in repetition ``rep`` (0-based): rotated by one each repetition."""
    if not methods:
        return []
    k = rep % len(methods)
    return methods[k:] + methods[:k]


_SET_SCALED = re.compile(r"^\\set (\w+) (\d+) \* :scale\s*$")


def inflate_for_scale(script: str, scale: float) -> str:
    """``inflate_pix.sql`` as run at ``scale``: unchanged for a whole scale, else with integer counts.

    psql's ``\\set users 100000 * :scale`` only concatenates text: ``:users`` becomes ``100000*0.1`` and
    ``g % :users`` parses as ``(g % 100000)*0.1``, which breaks the foreign keys (and ``generate_series`` turns
    numeric) below scale 1. For a fractional scale each such line becomes ``((100000 * 0.1)::int)``; a whole
    scale keeps the file byte for byte, so its data are exactly the shared figure's.
    """
    if float(scale).is_integer():
        return script
    out = []
    for line in script.splitlines(keepends=True):
        match = _SET_SCALED.match(line)
        if match:
            line = f"\\set {match.group(1)} '((' {match.group(2)} * :scale ')::int)'\n"
        out.append(line)
    return "".join(out)
