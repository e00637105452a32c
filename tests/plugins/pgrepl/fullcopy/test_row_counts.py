"""Row counts of the dump taken from its data files, on real PostgreSQL: they equal ``count(*)`` in the source, and
the project's own source sessions lock no table while pg_dump runs (issue 19: 3,000 tables filled the source's
lock table when a count transaction locked every table a second time)."""

from __future__ import annotations

import gzip
import threading
import time

import pytest
from psycopg import sql

from pgrepl import fullcopy
from pgrepl.fullcopy import row_counts
from pgrepl.fullcopy.common import run_script
from pgrepl.settings import ReplicationSettings, TableMode, TableName
from pgrepl.toc import TocEntry

TRICKY_SCHEMA = """
CREATE TABLE texts (id int PRIMARY KEY, t text, b bytea);
INSERT INTO texts
SELECT g,
       CASE g % 5 WHEN 0 THEN E'line1\\nline2\\r\\nline3' WHEN 1 THEN E'tab\\there\\\\back\\\\slash'
                  WHEN 2 THEN E'\\\\.' WHEN 3 THEN '' ELSE NULL END,
       CASE g % 3 WHEN 0 THEN '\\x0a0d095c2e0a'::bytea WHEN 1 THEN convert_to(E'\\n\\\\.\\n', 'UTF8') ELSE NULL END
  FROM generate_series(1, 997) g;
CREATE TABLE empty_one (id int);
CREATE TABLE "Mixed Case" ("Id" int);
INSERT INTO "Mixed Case" SELECT generate_series(1, 7);
CREATE SCHEMA "Odd.Schema";
CREATE TABLE "Odd.Schema"."we""ird.name" (v text);
INSERT INTO "Odd.Schema"."we""ird.name" VALUES (E'a\\nb'), (E'\\\\.'), ('');
CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (id);
CREATE TABLE events_2024_a PARTITION OF events_2024 FOR VALUES IN (1, 2, 3);
CREATE TABLE events_2024_b PARTITION OF events_2024 DEFAULT;
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_empty PARTITION OF events FOR VALUES FROM ('2030-01-01') TO ('2031-01-01');
INSERT INTO events SELECT g % 10, date '2024-01-01' + g FROM generate_series(0, 600) g;
CREATE TABLE no_partitions (id int) PARTITION BY LIST (id);
CREATE TABLE animals (id int, name text);
CREATE TABLE dogs (bark text) INHERITS (animals);
INSERT INTO animals VALUES (1, 'generic'), (2, E'multi\\nline');
INSERT INTO dogs VALUES (3, 'rex', 'woof'), (4, 'fido', E'wo\\tof'), (5, NULL, NULL);
CREATE UNLOGGED TABLE scratch AS SELECT generate_series(1, 42) AS n;
CREATE TABLE kept (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE kept_1 PARTITION OF kept FOR VALUES FROM (0) TO (1000);
INSERT INTO kept SELECT generate_series(1, 99);
CREATE VIEW a_view AS SELECT * FROM texts;
CREATE MATERIALIZED VIEW a_matview AS SELECT * FROM texts;
"""


def source_counts(conn) -> dict[str, int]:
    """``count(*)`` of every table of the source (what the count transaction gave before issue 19)."""
    with conn.connect() as db:
        tables = db.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'"
        ).fetchall()
        return {f"{schema}.{name}": db.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, name))).fetchone()[0] for schema, name in tables}


@pytest.mark.parametrize("compression", [0, 6])
def test_counts_from_the_dump_equal_count_star(make_database, tmp_path, compression):
    source, target = make_database("rcsource"), make_database("rctarget")
    with source.connect() as db:
        db.execute(TRICKY_SCHEMA)
        db.commit()
    settings = ReplicationSettings(source=source, target=target, work_dir=str(tmp_path / "work"), jobs=2,
                                   dump_compression=compression,
                                   backup_mode={TableName("public", "kept"): TableMode("none")})
    result = fullcopy.dump(settings, "night")
    files = sorted(p.name for p in (tmp_path / "work" / "night" / "dump").iterdir() if p.name != "toc.dat")
    assert files and all(name.endswith(".dat.gz" if compression else ".dat") for name in files), files

    expected = source_counts(source)
    del expected["public.kept"], expected["public.kept_1"]  # BACKUP_MODE: no rows in the dump, no count
    assert result["source_counts"] == expected
    # the cases this test is about really are there
    assert expected["public.texts"] == 997 and expected["public.empty_one"] == 0
    assert expected["public.Mixed Case"] == 7 and expected['Odd.Schema.we"ird.name'] == 3
    assert expected["public.events"] == 601 == sum(expected[f"public.events_{p}"] for p in ("2024_a", "2024_b", "2025"))
    assert expected["public.events_2024"] == expected["public.events_2024_a"] + expected["public.events_2024_b"] > 0
    assert expected["public.events_empty"] == expected["public.no_partitions"] == 0
    assert (expected["public.animals"], expected["public.dogs"]) == (5, 3)


def test_a_broken_data_file_is_named(tmp_path):
    (tmp_path / "1.dat").write_bytes(b"1\tx\n2\ty\n")  # cut before the end marker
    with pytest.raises(row_counts.DumpCountError, match=r"1\.dat does not end with the COPY end marker"):
        row_counts.count_data_file(tmp_path / "1.dat")
    with gzip.open(tmp_path / "2.dat.gz", "wb") as handle:
        handle.write(b"a\\nb\n\\.\n\n\n")
    assert row_counts.count_data_file(tmp_path / "2.dat.gz") == 1
    (tmp_path / "3.dat.lz4").write_bytes(b"")
    with pytest.raises(row_counts.DumpCountError, match=r"3\.dat\.lz4 .* only uncompressed and gzip"):
        row_counts._data_path(tmp_path, "3.dat")
    with pytest.raises(row_counts.DumpCountError, match=r"4\.dat is missing"):
        row_counts._data_path(tmp_path, "4.dat")


def test_rows_spanning_chunks_are_counted_once(tmp_path, monkeypatch):
    monkeypatch.setattr(row_counts, "CHUNK", 3)  # the end marker and rows straddle every chunk boundary
    (tmp_path / "1.dat").write_bytes(b"1\ta\\n\n22\t\\\\.\n333\t\n\\.\n\n\n")
    assert row_counts.count_data_file(tmp_path / "1.dat") == 3
    monkeypatch.setattr(row_counts, "WC_MIN_BYTES", 0)
    assert row_counts.count_data_file(tmp_path / "1.dat") == 3  # wc -l
    assert row_counts._count_plain_python(tmp_path / "1.dat") == (6, b"\\.\n\n\n")  # without wc
    monkeypatch.setattr(row_counts.shutil, "which", lambda name: None)
    assert row_counts.count_data_file(tmp_path / "1.dat") == 3


def test_early_counter_counts_finished_files_only_and_never_a_replaced_one(tmp_path):
    """While a writer (pg_dump's stand-in) still appends to one data file, the files it finished are counted; the
    growing one is not, however long it stays without its end marker; a file replaced afterwards by another of the
    same size but other rows is counted again, not taken from what was seen during the dump."""
    dump = tmp_path / "dump"
    dump.mkdir()
    done, growing = dump / "10.dat", dump / "11.dat"
    done.write_bytes(b"1\ta\n2\tb\n\\.\n\n\n")
    with row_counts.EarlyCounter(dump, interval=0.01) as early:
        with open(growing, "wb") as handle:
            handle.write(b"1\tx\n")
            handle.flush()
            deadline = time.monotonic() + 10
            while "10.dat" not in early.counted and time.monotonic() < deadline:
                time.sleep(0.01)
            assert set(early.counted) == {"10.dat"}
            handle.write(b"2\ty\n3\tz\n\\.\n\n\n")
    assert early.counted["10.dat"][1] == 2
    assert set(early.counted) <= {"10.dat", "11.dat"}
    entries = [TocEntry(1, "TABLE DATA", "a", "public", "COPY public.a (x) FROM stdin;\n", "10.dat", ()),
               TocEntry(2, "TABLE DATA", "b", "public", "COPY public.b (x) FROM stdin;\n", "11.dat", ())]
    assert row_counts.count_entries(dump, entries, counted=early.counted) == {("public", "a"): 2, ("public", "b"): 3}
    # same size, other rows: the file is read again
    done.unlink()
    done.write_bytes(b"1\n2\n3\tb\n\\.\n\n\n")
    assert done.stat().st_size == len(b"1\ta\n2\tb\n\\.\n\n\n")
    assert row_counts.count_entries(dump, entries, counted=early.counted) == {("public", "a"): 3, ("public", "b"): 3}


def _locks_of_other_sessions(db, dbname: str, exclude: set[int]) -> list[tuple]:
    """Relation locks held in ``dbname`` by sessions that are not pg_dump's (``pg-replication`` is the
    application_name of the project's client commands) nor the test's own."""
    return db.execute(
        "SELECT a.pid, a.application_name, l.relation::regclass::text, l.mode FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_database WHERE datname = %s) "
        "AND a.application_name <> 'pg-replication' AND NOT (a.pid = ANY(%s)) "
        "AND c.relnamespace <> 'pg_catalog'::regnamespace",
        (dbname, list(exclude))).fetchall()


def test_the_dump_locks_no_table_beyond_pg_dump(make_database, tmp_path):
    """While pg_dump holds its locks (kept waiting on the last table by a test session), the project's own source
    sessions hold no lock on any table; afterwards the counts are still right."""
    tables = 40
    source, target = make_database("locksource"), make_database("locktarget")
    with source.connect() as db:
        for i in range(tables):
            db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(sql.Identifier(f"t{i:03d}")))
            db.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, %s), 'x'").format(
                sql.Identifier(f"t{i:03d}")), (i,))
        db.execute("CREATE TABLE zz_last (id int)")
        db.commit()
    blocker, observer = source.connect(), source.connect(autocommit=True)
    blocker.execute("LOCK TABLE zz_last IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here, every other lock taken
    exclude = {blocker.info.backend_pid, observer.info.backend_pid}
    seen: dict = {}

    def runner(script, env):
        def run() -> None:
            try:
                seen["result"] = run_script(script, env)
            except BaseException as exc:  # re-raised below, in the test's thread
                seen["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            deadline = time.monotonic() + 60
            while True:  # poll: pg_dump waits for zz_last and no other session is still working
                waiting = observer.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE NOT l.granted AND a.application_name = 'pg-replication' AND a.datname = %s",
                    (source.dbname,)).fetchone()[0]
                busy = observer.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
                    "AND wait_event_type IS DISTINCT FROM 'Lock' AND NOT (pid = ANY(%s))",
                    (source.dbname, list(exclude))).fetchone()[0]
                if waiting and not busy:
                    break
                assert time.monotonic() < deadline, "pg_dump never reached the locked table"
                time.sleep(0.02)
            seen["pg_dump_locks"] = observer.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.granted AND l.locktype = 'relation' AND a.application_name = 'pg-replication' "
                "AND a.datname = %s AND l.relation IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)",
                (source.dbname,)).fetchone()[0]
            seen["others"] = _locks_of_other_sessions(observer, source.dbname, exclude)
            seen["sessions"] = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name <> 'pg-replication' "
                "AND NOT (pid = ANY(%s))", (source.dbname, list(exclude))).fetchone()[0]
        finally:
            blocker.rollback()  # pg_dump goes on
            worker.join(120)
        if "error" in seen:
            raise seen["error"]
        return seen.get("result")

    try:
        result = fullcopy.dump(ReplicationSettings(source=source, target=target, work_dir=str(tmp_path / "work"),
                                                   jobs=2), "night", runner=runner)
    finally:
        blocker.close()
        observer.close()
    assert seen["sessions"] == 1  # the exported-snapshot transaction is there, waiting for pg_dump
    assert seen["others"] == []  # ... and it holds no lock on any table, index or sequence of the source
    assert seen["pg_dump_locks"] >= tables  # pg_dump's own locks were taken (the state checked was real)
    assert result["source_counts"] == {**{f"public.t{i:03d}": i for i in range(tables)}, "public.zz_last": 0}
