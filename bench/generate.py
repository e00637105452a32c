"""Generate (or reuse) a Pix-like source database at a scale factor for the benchmarks.

    .venv/bin/python bench/generate.py --scale 3          # create or reuse .bench/source-s3, print its size
    .venv/bin/python bench/generate.py --scale 3 --force  # regenerate

The source lives in a kept cluster under ``.bench/source-s<scale>/`` (git-ignored): its data directory
survives between runs, so the 1.8 GB of scale 3 is generated once. ``bench/run.py`` calls :func:`open_source`.
Scale 1 = 100 k users, 200 k assessments, 2 M answers, 2 M knowledge-elements, 100 k jsonb snapshots
(``devenv.sample_data``), with the foreign keys and indexes of DESIGN.md "Data shapes".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, KeptCluster, PgConn, log  # noqa: E402

from devenv.sample_data import load_sample  # noqa: E402

SOURCE_DB = "pix"
SOURCE_ROLE = "pix_source"
SOURCE_PASSWORD = "bench-source-pw"  # a throwaway local cluster; kept here so reruns can reconnect
#: server settings of the source while generating and dumping (the tests' fast defaults plus room for indexes)
SOURCE_SETTINGS = {"maintenance_work_mem": "256MB"}


@dataclass
class Source:
    cluster: KeptCluster
    conn: PgConn
    meta: dict


def _label(scale: float) -> str:
    return f"{scale:g}".replace(".", "_")


def source_dir(scale: float, base: Path = BENCH_DIR) -> Path:
    return base / f"source-s{_label(scale)}"


def open_source(scale: float, force: bool = False, base: Path = BENCH_DIR) -> Source:
    """Start the kept source cluster of ``scale``, generating it first when missing (or when ``force``)."""
    root = source_dir(scale, base)
    meta_file = root / "source.json"
    cluster = KeptCluster(f"source-s{_label(scale)}", root, SOURCE_SETTINGS)
    if force or not meta_file.exists() or not cluster.initialised:
        cluster.destroy()
        cluster = KeptCluster(f"source-s{_label(scale)}", root, SOURCE_SETTINGS)
        cluster.start()
        try:
            meta = _generate(cluster, scale)
        except BaseException:
            cluster.destroy()
            raise
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    else:
        cluster.start()
        meta = json.loads(meta_file.read_text())
    return Source(cluster, cluster.conn(SOURCE_DB, SOURCE_ROLE, SOURCE_PASSWORD), meta)


def _generate(cluster: KeptCluster, scale: float) -> dict:
    log(f"generating a Pix-like source at scale {scale:g} in {cluster.root}")
    t0 = time.perf_counter()
    conn = cluster.create_database(SOURCE_DB, SOURCE_ROLE, SOURCE_PASSWORD)
    counts = load_sample(conn, scale)
    # set hint bits and the visibility map now, so that no repetition pays for them while dumping
    with conn.connect(autocommit=True) as db:
        db.execute("VACUUM (FREEZE, ANALYZE)")
    seconds = time.perf_counter() - t0
    meta = {"scale": scale, "rows": counts, "generated_seconds": round(seconds, 1), **describe(conn)}
    log(f"generated in {seconds:.0f} s: {meta['database_mb']:.0f} MB")
    return meta


def describe(conn: PgConn) -> dict:
    """Database size and the size of each table (heap + TOAST, indexes) in MB."""
    with conn.connect() as db:
        size = db.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        rows = db.execute(
            """SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid), c.reltuples::bigint
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 2 DESC"""
        ).fetchall()
    mb = 1024 * 1024
    return {
        "database_mb": round(size / mb, 1),
        "tables": {name: {"table_mb": round(t / mb, 1), "indexes_mb": round(i / mb, 1), "rows": n}
                   for name, t, i, n in rows},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="1 = 100 k users, 2 M answers ... (default 1)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a kept source exists")
    parser.add_argument("--drop", action="store_true", help="delete the kept source of this scale and exit")
    args = parser.parse_args(argv)
    if args.drop:
        KeptCluster("drop", source_dir(args.scale)).destroy()
        log(f"deleted {source_dir(args.scale)}")
        return 0
    source = open_source(args.scale, force=args.force)
    try:
        meta = source.meta
        print(f"scale {meta['scale']:g}: database {meta['database_mb']:.0f} MB "
              f"(generated in {meta['generated_seconds']:.0f} s), kept in {source.cluster.root}")
        for name, info in meta["tables"].items():
            print(f"  {name:32} {info['rows']:>10} rows  table {info['table_mb']:>8.1f} MB  "
                  f"indexes {info['indexes_mb']:>7.1f} MB")
    finally:
        source.cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
