"""Breaking a dump on purpose, the way a real night breaks: a row the warehouse refuses, half-way through the
biggest table's data file (pg_restore has already loaded other tables when it fails)."""

from __future__ import annotations

import glob
import os


def break_biggest_data_file(dump_dir: str) -> str:
    """Write a line that is not a row into the middle of the largest ``*.dat`` of ``dump_dir``; return its path."""
    data_file = max(glob.glob(os.path.join(dump_dir, "[0-9]*.dat")), key=os.path.getsize)
    with open(data_file, "r+b") as f:
        f.seek(os.path.getsize(data_file) // 2)
        f.write(b"\nnot a row\n")
    return data_file


def add_refused_table(cluster, source, schema: str = "public") -> None:
    """A new source table whose CHECK reads a database setting only the source has: the warehouse refuses its rows,
    so the restore fails while ``pg_restore`` loads tonight's data (after it started)."""
    from psycopg import sql

    cluster.execute(sql.SQL("ALTER DATABASE {} SET pgrepl.allowed = 'on'").format(
        sql.Identifier(source.dbname)).as_string())
    function, table = sql.Identifier(schema, "pgrepl_allowed"), sql.Identifier(schema, "guarded")
    with source.connect() as db:  # a new session: it sees the database setting
        assert db.execute("SELECT current_setting('pgrepl.allowed', true)").fetchone()[0] == "on"
        db.execute(sql.SQL("CREATE FUNCTION {}() RETURNS boolean LANGUAGE sql STABLE "
                           "AS $$ SELECT coalesce(current_setting('pgrepl.allowed', true), 'off') = 'on' $$").format(function))
        db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text, CHECK ({}()))").format(table, function))
        db.execute(sql.SQL("INSERT INTO {} SELECT g, 'row ' || g FROM generate_series(1, 100) g").format(table))
        db.commit()
