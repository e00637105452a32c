"""A source with many small tables (issue 19): multi-tenant and partition-heavy databases have tens of thousands of
relations, and a night must not need more locks than a default server has.

``build(conn, n)`` creates ``n`` tables named ``mt_00001`` … spread round-robin over ``schemas`` (default
``public``), each with an integer primary key ``id``, an index on ``label`` and ``rows`` rows; every tenth table
(``mt_00010``, ``mt_00020`` …) has a foreign key ``ref`` to the table before it (which has the same ``rows`` ids);
every 25th table has a view ``mv_<n>`` over it, every 100th view reads another view, and one materialized view
``mt_summary`` joins the first tables. Everything is generated server-side by ``DO`` blocks of ``batch`` tables,
each block its own transaction: one transaction creating thousands of tables would itself run out of lock slots on
a default server (``max_locks_per_transaction=64``).

Used by the tests (``tests/test_many_tables.py``) and the benchmark (``bench/many_tables.py``); nothing in
``plugins/`` imports it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from psycopg import sql


#: the materialized view over the first tables
SUMMARY_VIEW = "mt_summary"

#: tables created per DO block (one transaction each): bounded locks while building
DEFAULT_BATCH = 250

# One DO block per batch. Parameters come in through format() with %I / %L, never pasted: only integers and the
# schema list (a text[] literal built by psycopg) reach the block.
_BATCH_SQL = """
DO $gen$
DECLARE
  schemas text[] := {schemas};
  i int;
  s text;
  t text;
  parent text;
BEGIN
  FOR i IN {first}..{last} LOOP
    s := schemas[1 + (i - 1) % array_length(schemas, 1)];
    t := 'mt_' || lpad(i::text, 5, '0');
    EXECUTE format('CREATE TABLE %I.%I (id integer PRIMARY KEY, ref integer, label text NOT NULL, '
                   'created_at timestamptz NOT NULL DEFAULT now())', s, t);
    EXECUTE format('CREATE INDEX %I ON %I.%I (label)', t || '_label_idx', s, t);
    EXECUTE format('INSERT INTO %I.%I (id, ref, label) SELECT g, g, %L || g FROM generate_series(1, %s) g',
                   s, t, t || ' row ', {rows});
    IF i % 10 = 0 THEN
      parent := 'mt_' || lpad((i - 1)::text, 5, '0');
      EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I FOREIGN KEY (ref) REFERENCES %I.%I (id)',
                     s, t, t || '_ref_fkey', schemas[1 + (i - 2) % array_length(schemas, 1)], parent);
    END IF;
    IF i % 25 = 0 THEN
      EXECUTE format('CREATE VIEW %I.%I AS SELECT id, label FROM %I.%I WHERE id %% 2 = 1',
                     s, 'mv_' || lpad(i::text, 5, '0'), s, t);
    END IF;
    IF i % 100 = 0 THEN
      EXECUTE format('CREATE VIEW %I.%I AS SELECT count(*) AS n FROM %I.%I',
                     s, 'mvv_' || lpad(i::text, 5, '0'), s, 'mv_' || lpad(i::text, 5, '0'));
    END IF;
  END LOOP;
END
$gen$
"""


@dataclass(frozen=True)
class ManyTables:
    """What :func:`build` made."""

    n: int
    schemas: tuple[str, ...]
    rows: int
    seconds: float

    def tables(self) -> list[tuple[str, str]]:
        """``(schema, table)`` of every generated table, in number order."""
        return [table_of(i, self.schemas) for i in range(1, self.n + 1)]

    def with_fk(self) -> list[tuple[str, str]]:
        return [table_of(i, self.schemas) for i in range(10, self.n + 1, 10)]


def table_name(i: int) -> str:
    return "mt_%05d" % i


def table_of(i: int, schemas=("public",)) -> tuple[str, str]:
    """``(schema, table)`` of table number ``i`` (1-based)."""
    return schemas[(i - 1) % len(schemas)], table_name(i)


def pick_incremental(n: int, share: float = 0.05, schemas=("public",)) -> list[tuple[str, str]]:
    """``share`` of the ``n`` tables, evenly spread, none of them in a foreign key (tables ``i % 10`` in 1..8): the
    tables a night-2 ``BACKUP_MODE`` marks ``incremental``."""
    wanted = max(1, round(n * share))
    step = max(1, n // wanted)
    picked: list[tuple[str, str]] = []
    for k in range(wanted):
        i = min(n, 5 + k * step + k % 2)  # odd and even numbers alike: every schema gets some
        while i % 10 in (0, 9) and i > 1:  # 0 has an FK, 9 is the target of one
            i -= 1
        if table_of(i, schemas) not in picked:
            picked.append(table_of(i, schemas))
    return picked


def build(conn, n: int, schemas=("public",), rows: int = 3, batch: int = DEFAULT_BATCH) -> ManyTables:
    """Create the ``n`` tables (and the schemas other than ``public``) in the database of ``conn`` (a PgConn).

    Each batch of ``batch`` tables is one ``DO`` block in its own transaction. Returns what was built and the time.
    """
    if n < 1 or rows < 1:
        raise ValueError("n and rows must be at least 1")
    schemas = tuple(schemas)
    started = time.monotonic()
    with conn.connect(autocommit=True) as db:
        for schema in schemas:
            db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        schema_array = sql.Literal(list(schemas)).as_string(db) + "::text[]"
        for first in range(1, n + 1, batch):
            last = min(n, first + batch - 1)
            db.execute(_BATCH_SQL.format(schemas=schema_array, first=int(first), last=int(last), rows=int(rows)))
        parts = [table_of(i, schemas) for i in range(1, min(n, 3) + 1)]
        union = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {} AS source, count(*) AS n FROM {}").format(sql.Literal(t), sql.Identifier(s, t))
            for s, t in parts)
        db.execute(sql.SQL("CREATE MATERIALIZED VIEW {} AS {}").format(
            sql.Identifier(schemas[0], SUMMARY_VIEW), union))
        db.execute("ANALYZE")
    return ManyTables(n=n, schemas=schemas, rows=rows, seconds=round(time.monotonic() - started, 3))


def add_rows(conn, tables: list[tuple[str, str]], rows: int) -> None:
    """``rows`` new rows (ids above the current max) in each of ``tables``: a day of activity on the kept tables."""
    with conn.connect() as db:
        for schema, table in tables:
            db.execute(sql.SQL(
                "INSERT INTO {t} (id, ref, label) SELECT m + g, m + g, 'new ' || g "
                "FROM (SELECT coalesce(max(id), 0) AS m FROM {t}) x, generate_series(1, %s) g"
            ).format(t=sql.Identifier(schema, table)), (rows,))
            db.commit()


def main(argv: list[str] | None = None) -> int:
    """Build a many-tables source in a throwaway cluster and print the build time (``python -m devenv.many_tables``)."""
    from devenv.cluster import Cluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="*", default=[10000])
    parser.add_argument("--schemas", default="public")
    parser.add_argument("--rows", type=int, default=3)
    args = parser.parse_args(argv)
    with Cluster("many-tables") as cluster:
        for n in args.n:
            conn = cluster.create_database(f"many_{n}")
            built = build(conn, n, args.schemas.split(","), args.rows)
            print(f"{n} tables in {len(built.schemas)} schema(s): built in {built.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
