"""SQL steps: files of ``include/sql`` (compat views, enrichment) run on the warehouse, groups of files at once."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from pgrepl import swap
from pgrepl.pgtools import PgConn

log = logging.getLogger(__name__)

#: session settings of the compat/enrichment connections (index builds: bench/README.md measured 7.2 s -> 4.7 s)
SQL_SESSION_OPTIONS = "-c maintenance_work_mem=512MB"


def sql_groups(statements: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Consecutive files sharing their number prefix (``010_a.sql``, ``010_b.sql``) form one group; a file without
    a number prefix is a group of its own. Groups run in order; the files of a group at the same time."""
    groups: list[list[tuple[str, str]]] = []
    previous = None
    for name, text in statements:
        match = re.match(r"(\d+)_", Path(name).name)
        prefix = match.group(1) if match else None
        if groups and prefix is not None and prefix == previous:
            groups[-1].append((name, text))
        else:
            groups.append([(name, text)])
        previous = prefix
    return groups


def _run_one(db, name: str, text: str) -> float:
    started = time.monotonic()
    db.execute(text)
    db.commit()
    seconds = round(time.monotonic() - started, 3)
    log.info("ran %s in %.2f s", name, seconds)
    return seconds


def _run_on_own_connection(target: PgConn, name: str, text: str) -> float:
    with target.connect(options=SQL_SESSION_OPTIONS) as db:
        return _run_one(db, name, text)


def run_sql(target: PgConn, statements: list[tuple[str, str]], run_id: str | None = None, parallel: int = 1) -> dict:
    """Run ``[(name, sql)]`` on the warehouse, each file in its own transaction; return seconds per file.

    Files of one :func:`sql_groups` group run on up to ``parallel`` connections at once (index builds of different
    tables overlap); the session holding the warehouse lock waits for the group to end before the next one.
    """
    from concurrent.futures import ThreadPoolExecutor

    timings = {}
    with target.connect(options=SQL_SESSION_OPTIONS) as db:
        if run_id:
            swap.lock_warehouse(db, run_id)
        for group in sql_groups(statements):
            if len(group) == 1 or parallel <= 1:
                for name, text in group:
                    timings[name] = _run_one(db, name, text)
                continue
            with ThreadPoolExecutor(max_workers=min(parallel, len(group)), thread_name_prefix="pgrepl-sql") as pool:
                futures = {name: pool.submit(_run_on_own_connection, target, name, text) for name, text in group}
                for name, future in futures.items():
                    timings[name] = future.result()
    return timings
