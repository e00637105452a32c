"""How the catalog work of a night with kept tables grows with the number of tables (issue 19).

For each size (default 500, 2000, 5000 tables) a throwaway source gets that many small tables (an integer primary
key, an index, every tenth a foreign key to the table before it, a view over every twentieth) and 5 % of them are
``BACKUP_MODE`` ``incremental``. Night 1 is a plain ``pg_restore`` of the project's dump into the warehouse (so the
kept tables are there); then night 2's steps before ``pg_restore`` are timed one by one, as
:func:`pgrepl.fullcopy.restore_step.build_restore_list` and the switch run them:

* ``pg_restore --list`` of the dump; the source catalog reads; the warehouse's kept objects; ``toc.dat``;
  :func:`pgrepl.restore_list.filter_restore_list`; the whole ``build_restore_list``;
* inside one rolled-back warehouse transaction, the catalog work of the switch (:func:`pgrepl.staging.switch`): the
  users' views found (``user_views_found.sql``), the kept relations found (``movable_relations.sql``) and moved into
  the staging schema, the ``kept_dependencies.sql`` check, and the ``lost_dependents.sql`` query of the cleanup.

Printed: the best of ``--reps`` (3) seconds per step and size, and the ratio of each size to the previous one (linear work grows like the
sizes: x4 for 500 -> 2000, x2.5 for 2000 -> 5000). Clusters run with ``max_locks_per_transaction=256`` so that the
generation and night 1 fit; what is timed takes no more locks than at the default.

    .venv/bin/python bench/restore_list_scaling.py [--sizes 500,2000,5000] [--jobs 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from common import Cluster, log, tool  # noqa: F401 (puts plugins/ on sys.path)

from psycopg import sql

from pgrepl import catalog, sqlfiles, staging, swap, table_modes
from pgrepl.fullcopy import dump
from pgrepl.fullcopy.common import run_paths
from pgrepl.fullcopy.preflight_step import check_table_modes
from pgrepl.fullcopy.restore_step import build_restore_list
from pgrepl.restore_list import filter_restore_list
from pgrepl.settings import ReplicationSettings, TableMode, TableName
from pgrepl.toc import read_dependencies

PASSWORD = "bench-pw-19"
SERVER = {"max_locks_per_transaction": "256"}


def generate(conn, tables: int) -> list[TableName]:
    """``tables`` tables in ``public`` (committed in batches); returns the 5 % to keep (incremental)."""
    with conn.connect(autocommit=True) as db:
        for start in range(0, tables, 250):
            statements = []
            for i in range(start, min(start + 250, tables)):
                t = f"t{i:05d}"
                fk = f', "parentId" int REFERENCES t{i - 1:05d} (id)' if i % 10 == 9 else ', "parentId" int'
                statements.append(
                    f'CREATE TABLE {t} (id serial PRIMARY KEY{fk}, name text, "createdAt" timestamptz DEFAULT now());'
                    f'CREATE INDEX {t}_createdat_index ON {t} ("createdAt");'
                    f"INSERT INTO {t} (name) VALUES ('a'), ('b'), ('c');")
                if i % 20 == 3:
                    statements.append(f"CREATE VIEW {t}_view AS SELECT id, name FROM {t};")
            db.execute("BEGIN;" + "".join(statements) + "COMMIT;")
    return [TableName("public", f"t{i:05d}") for i in range(tables) if i % 20 == 7]


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started


def night_two(settings: ReplicationSettings, key: str) -> dict[str, float]:
    """Time each catalog step of night 2 before pg_restore (nothing is changed in the warehouse)."""
    timer = Timer()
    paths = run_paths(settings, key)
    with timer("pg_restore --list"):
        toc = subprocess.run([tool("pg_restore"), "--list", str(paths.dump_dir)], capture_output=True, text=True,
                             check=True).stdout
    with settings.source.connect() as db:
        with timer("source: relations"):
            relations = catalog.read_relations(db)
        with timer("source: catalog (owners, references)"):
            source_catalog = catalog.read_source_catalog(db, relations)
        with timer("source: table_modes facts"):
            facts = table_modes.read_source_facts(db)
        with timer("plan_modes + problems"):
            check_table_modes(settings, relations, facts)
            plan = table_modes.plan_modes(settings, relations, facts)
        schemas = set(catalog.dumped_schemas(relations))
        with settings.target.connect() as target, timer("warehouse: kept_objects"):
            in_warehouse = table_modes.read_warehouse_kept(target, plan.table_names(), schemas)
    with timer("toc.dat dependencies"):
        dependencies = read_dependencies(paths.dump_dir)
    present = {oid for oid, name in plan.names.items() if name in in_warehouse.present}
    with timer("filter_restore_list"):
        restore_list = filter_restore_list(toc, source_catalog, present, True, precreated_schemas=schemas,
                                           dependencies=dependencies)
    with timer("build_restore_list (whole)"):
        planned = build_restore_list(settings, paths)
    assert len(planned.restore_list.kept) <= len(restore_list.kept)
    with settings.target.connect() as db:  # the switch's catalog work (staging.switch), rolled back
        stage = staging.stage_name("public")
        with timer("switch: users' views found"):
            db.execute(sqlfiles.load("warehouse/user_views_found"), {"schemas": sorted(planned.replaced)}).fetchall()
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(stage)))
        with timer("switch: kept relations found (movable_relations)"):
            moved = swap.staying_relations(db, "public", planned.replaced["public"], planned.kept["public"])
        with timer("switch: kept relations moved into the stage"):
            for oid, _name in moved:
                swap._move_relation(db, oid, stage)
        with timer("switch: kept_dependencies"):
            db.execute(sqlfiles.load("warehouse/kept_dependencies"),
                       {"kept": [oid for oid, _ in moved], "aside": "public"}).fetchall()
        with timer("cleanup: lost_dependents"):
            db.execute(sqlfiles.load("warehouse/lost_dependents"), {"aside": "public"}).fetchall()
        db.rollback()
    return timer.seconds


def one_size(tables: int, jobs: int, base: Path, reps: int) -> dict[str, float]:
    with Cluster(f"bench19-src-{tables}", settings=SERVER) as source_cluster, \
            Cluster(f"bench19-wh-{tables}", settings=SERVER) as target_cluster:
        source = source_cluster.create_database("source", "source_owner", PASSWORD)
        target = target_cluster.create_database("warehouse", "warehouse_owner", PASSWORD)
        started = time.monotonic()
        kept = generate(source, tables)
        log(f"{tables} tables generated in {time.monotonic() - started:.1f} s ({len(kept)} incremental)")
        settings = ReplicationSettings(source=source, target=target, work_dir=str(base / f"work-{tables}"), jobs=jobs,
                                       backup_mode={t: TableMode("incremental") for t in kept})
        dumped = dump(settings, "night2")
        log(f"dump: {dumped['seconds']:.1f} s")
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        subprocess.run([tool("pg_restore"), f"--jobs={jobs}", "--no-owner", "--no-privileges", "--exit-on-error",
                        f"--dbname={target.safe_url()}", dumped["dump_dir"]], env=env, check=True)
        log("night 1 (plain pg_restore into the warehouse) done")
        best: dict[str, float] = {}
        for _ in range(reps):  # the best of each step (the machine is shared)
            for step, seconds in night_two(settings, "night2").items():
                best[step] = min(seconds, best.get(step, seconds))
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,2000,5000")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="night-2 repetitions per size (best time per step kept)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="pgrepl-bench-scaling-"))
    results = {size: one_size(size, args.jobs, base, args.reps) for size in sizes}
    steps = list(results[sizes[0]])
    header = f"{'step':52}" + "".join(f"{size:>10}" for size in sizes) + "".join(
        f"{f'x{b}/{a}':>13}" for a, b in zip(sizes, sizes[1:]))
    print(header)
    for step in steps:
        line = f"{step:52}" + "".join(f"{results[size][step]:>10.3f}" for size in sizes)
        for a, b in zip(sizes, sizes[1:]):
            line += f"{results[b][step] / max(results[a][step], 1e-6):>13.1f}"
        print(line)
    print("(seconds; linear work gives ratios equal to the size ratios: "
          + ", ".join(f"{b / a:.1f} for {a} -> {b}" for a, b in zip(sizes, sizes[1:])) + ")")


if __name__ == "__main__":
    main()
