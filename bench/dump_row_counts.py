"""Time of counting a dump's rows from its data files (issue 19), against ``count(*)`` of the same tables.

Generates ``--mb`` MB of rows with ``generate_series`` in a throwaway cluster (``--tables`` tables of equal size),
dumps it with ``pg_dump --format=directory --jobs 2`` plain and gzip (``--compress=1``, the cheapest level), then
times :func:`pgrepl.fullcopy.row_counts.table_counts` on each dump (``--jobs`` threads; the page cache is warm, as
it is right after pg_dump wrote the files) and ``count(*)`` of every table in one transaction for reference.

    .venv/bin/python bench/dump_row_counts.py --mb 600
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import Cluster, log, tool  # noqa: F401 (puts plugins/ on sys.path)

from pgrepl.catalog import read_relations
from pgrepl.fullcopy import row_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=600, help="size of the generated rows (MB of COPY text)")
    parser.add_argument("--tables", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=4, help="threads counting (PG_RESTORE_JOBS)")
    args = parser.parse_args()
    rows = args.mb * 1_000_000 // 110 // args.tables  # ~110 bytes a row of COPY text
    work = Path(tempfile.mkdtemp(prefix="pgrepl-bench-counts-"))
    with Cluster("bench-counts") as cluster:
        conn = cluster.conn()
        with conn.connect(autocommit=True) as db:
            for i in range(args.tables):
                log(f"table t{i}: {rows:,} rows")
                db.execute(f"CREATE TABLE t{i} AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) || "
                           f"E'\\t' || (g % 1000) AS v, now() AS at FROM generate_series(1, {rows}) g")
            started = time.monotonic()
            db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            for i in range(args.tables):
                db.execute(f"SELECT count(*) FROM t{i}").fetchone()
            db.execute("COMMIT")
            count_star = time.monotonic() - started
            relations = [r for r in read_relations(db) if r.is_table]
        env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(cluster.port), PGUSER="postgres")
        for level in (0, 1):
            dump_dir = work / f"dump-z{level}"
            started = time.monotonic()
            subprocess.run([tool("pg_dump"), "--format=directory", "--jobs=2", f"--compress={level}",
                            f"--file={dump_dir}", "postgres"], env=env, check=True)
            dumped = time.monotonic() - started
            size = sum(p.stat().st_size for p in dump_dir.iterdir()) / 1e6
            timings = []
            for _ in range(3):
                started = time.monotonic()
                counts = row_counts.table_counts(dump_dir, relations, {}, args.jobs)
                timings.append(time.monotonic() - started)
            assert sum(counts.values()) == rows * args.tables, counts
            best = min(timings)
            log(f"compress={level}: dump {size:,.0f} MB on disk in {dumped:.1f} s; counting {sum(counts.values()):,} "
                f"rows: best {best:.2f} s of {', '.join(f'{t:.2f}' for t in timings)} "
                f"({size / best:,.0f} MB/s on disk), {best / dumped:.0%} of pg_dump's time")
        log(f"count(*) of the same tables in one transaction: {count_star:.2f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
