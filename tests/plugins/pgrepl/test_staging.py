"""pgrepl.staging's parts that the night-long tests do not single out: which definitions wait for the switch, the
COPY column lists, the data-file links, the batched drop, the warehouse disk check (real PostgreSQL where it
matters)."""

from __future__ import annotations

import pytest

from pgrepl import staging
from pgrepl.toc import TocEntry, read_entries


def entry(dump_id, desc="VIEW", deps=(), namespace="public", tag="t", copy=None, filename=None):
    return TocEntry(dump_id, desc, tag, namespace, copy, filename, tuple(deps))


def test_deferred_entries_follow_kept_tables_transitively_and_only_listed_ones():
    entries = [entry(1, "TABLE"), entry(2, "VIEW", [1]), entry(3, "VIEW", [2]), entry(4, "TABLE"),
               entry(5, "INDEX", [4]), entry(6, "MATERIALIZED VIEW", [3, 4]), entry(7, "COMMENT", [6])]
    # 1 is a kept table the warehouse has (not listed); 7 is not listed tonight
    assert staging.deferred_entries([2, 3, 4, 5, 6], entries, {1}) == {2, 3, 6}
    assert staging.deferred_entries([2, 3], entries, set()) == set()


@pytest.mark.parametrize("stmt, columns", [
    ('COPY public.users (id, "firstName") FROM stdin;\n', '(id, "firstName") FROM stdin;'),
    ('COPY "we.ird"."ta ""b"" le" (a) FROM stdin;\n', "(a) FROM stdin;"),
    ("COPY _pgrepl_stage_public.t (a, b) FROM stdin;\n", "(a, b) FROM stdin;"),
    (None, None),
])
def test_copy_columns(stmt, columns):
    assert staging.copy_columns(stmt) == columns


def test_link_data_files_links_same_columns_and_copies_the_others(tmp_path):
    source, stage = tmp_path / "dump", tmp_path / "staging"
    source.mkdir()
    stage.mkdir()
    (source / "10.dat").write_bytes(b"1\ta\n\\.\n\n\n")
    (source / "11.dat.gz").write_bytes(b"gz")
    (source / "12.dat").write_bytes(b"1\t2\n\\.\n\n\n")
    for name in ("20.dat", "21.dat", "22.dat", "23.dat"):
        (stage / name).write_bytes(b"\\.\n\n\n")
    source_entries = [
        entry(10, "TABLE DATA", tag="a", copy="COPY public.a (x, y) FROM stdin;\n", filename="10.dat"),
        entry(11, "TABLE DATA", tag="b", copy="COPY public.b (x) FROM stdin;\n", filename="11.dat"),
        entry(12, "TABLE DATA", tag="c", copy="COPY public.c (x, y) FROM stdin;\n", filename="12.dat"),
    ]
    stage_entries = [
        entry(20, "TABLE DATA", namespace="_pgrepl_stage_public", tag="a", copy="COPY _pgrepl_stage_public.a (x, y) FROM stdin;\n", filename="20.dat"),
        entry(21, "TABLE DATA", namespace="_pgrepl_stage_public", tag="b", copy="COPY _pgrepl_stage_public.b (x) FROM stdin;\n", filename="21.dat"),
        # an inheritance child whose columns come in another order in the rebuilt table
        entry(22, "TABLE DATA", namespace="_pgrepl_stage_public", tag="c", copy="COPY _pgrepl_stage_public.c (y, x) FROM stdin;\n", filename="22.dat"),
        # a kept table created tonight: no rows in the dump
        entry(23, "TABLE DATA", namespace="_pgrepl_stage_public", tag="d", copy="COPY _pgrepl_stage_public.d (x) FROM stdin;\n", filename="23.dat"),
    ]
    linked = staging.link_data_files(source, source_entries, stage, stage_entries, ["public"])
    assert linked.linked == 2
    assert (stage / "20.dat").resolve() == source / "10.dat"
    assert not (stage / "21.dat").exists() and (stage / "21.dat.gz").resolve() == source / "11.dat.gz"
    assert (stage / "22.dat").read_bytes() == b"\\.\n\n\n" and not (stage / "22.dat").is_symlink()
    assert linked.by_copy == [("_pgrepl_stage_public", "c", source / "12.dat", "(x, y) FROM stdin;")]
    assert (stage / "23.dat").read_bytes() == b"\\.\n\n\n"


def test_copy_rows_stops_at_the_end_marker(tmp_path):
    import gzip

    rows = b"".join(b"%d\tline \\\\. with a backslash-dot\n" % i for i in range(50000))
    plain, packed = tmp_path / "1.dat", tmp_path / "2.dat.gz"
    plain.write_bytes(rows + b"\\.\n\n\n")
    packed.write_bytes(gzip.compress(rows + b"\\.\n\n\n"))
    assert b"".join(staging._copy_rows(plain)) == rows
    assert b"".join(staging._copy_rows(packed)) == rows


def test_drop_schema_in_batches_is_resumable(target_db):
    with target_db.connect() as db:
        db.execute("CREATE SCHEMA doomed")
        db.execute("CREATE TYPE doomed.mood AS ENUM ('ok')")
        db.execute("CREATE TABLE doomed.parent (id int PRIMARY KEY, m doomed.mood) PARTITION BY RANGE (id)")
        for i in range(5):
            db.execute(f"CREATE TABLE doomed.p{i} PARTITION OF doomed.parent FOR VALUES FROM ({i * 10}) TO ({i * 10 + 10})")
        for i in range(12):
            db.execute(f"CREATE TABLE doomed.t{i} (id serial PRIMARY KEY, p int)")
        db.execute("CREATE VIEW doomed.v AS SELECT * FROM doomed.t0")
        db.commit()
        batches = []

        def stop_after_two(schema, dropped):
            batches.append(dropped)
            if len(batches) == 2:
                raise RuntimeError("interrupted")

        with pytest.raises(RuntimeError, match="interrupted"):
            staging.drop_schema_in_batches(db, "doomed", batch_size=4, on_batch=stop_after_two)
        db.rollback()
        left = db.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'doomed'::regnamespace "
                          "AND relkind IN ('r', 'p', 'v')").fetchone()[0]
        assert 0 < left < 19  # two batches of 4 done, the rest still there
        staging.drop_schema_in_batches(db, "doomed", batch_size=4)
        assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'doomed'").fetchone()[0] == 0


def test_warehouse_disk_check(pg_cluster, target_db):
    from pgrepl import swap

    with target_db.connect() as db:
        swap.ensure_state(db)
        assert staging.check_warehouse_space(db) == {"needed_bytes": None, "free_bytes": None}  # first night
        db.execute("INSERT INTO _pgrepl.staging_size (id, bytes, run_id) VALUES (1, 10, 'night1')")
        db.commit()
        # the warehouse role may not read data_directory: the figure is only logged
        assert staging.check_warehouse_space(db) == {"needed_bytes": 10, "free_bytes": None}
    admin = pg_cluster.conn(target_db.dbname)
    with admin.connect() as db:  # a role that may: the disk is checked
        assert staging.check_warehouse_space(db)["free_bytes"] > 10
        db.execute("UPDATE _pgrepl.staging_size SET bytes = 10 ^ 18")
        db.commit()
        with pytest.raises(staging.WarehouseDiskFull, match="needs about 1000000000.0 GB"):
            staging.check_warehouse_space(db)


def test_inheritance_child_with_reordered_columns_is_loaded_by_copy(source_db, target_db, tmp_path):
    """A parent that gained a column after its child existed: the rebuilt child has another column order than the
    source's, so its data file cannot be linked; it is loaded by COPY with the source's column list."""
    from pgrepl import fullcopy
    from pgrepl.settings import ReplicationSettings

    with source_db.connect() as db:
        db.execute("CREATE TABLE inh_parent (a int)")
        db.execute("CREATE TABLE inh_child (b text) INHERITS (inh_parent)")
        db.execute("ALTER TABLE inh_parent ADD COLUMN c date")
        db.execute("INSERT INTO inh_child (a, b, c) SELECT g, 'b' || g, DATE '2026-01-01' + g FROM generate_series(1, 500) g")
        db.commit()
    settings = ReplicationSettings(source=source_db, target=target_db, work_dir=str(tmp_path / "work"), jobs=2)
    fullcopy.run_full_copy(settings, "night1")
    query = "SELECT a, b, c FROM inh_child ORDER BY a"
    with source_db.connect() as src, target_db.connect() as dst:
        assert dst.execute(query).fetchall() == src.execute(query).fetchall()
        assert [r[0] for r in dst.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'inh_child'::regclass AND attnum > 0 ORDER BY attnum"
        ).fetchall()] == ["a", "c", "b"]  # the rebuilt child's own order: the case this path exists for


def test_tune_archive_changes_only_copy_statements_and_unique_constraints(source_db, target_db, tmp_path):
    """A real pg_dump archive rewritten by :func:`staging.tune_archive`: every TABLE DATA entry's COPY gains
    ``WITH (FREEZE)``, the chosen CONSTRAINT entries become INDEX entries with their new SQL, every FK CONSTRAINT
    entry's statement is preceded by ``SET LOCAL enable_hashjoin = off``, every other field of every entry is as
    pg_dump wrote it, and pg_restore reads the archive as before."""
    import subprocess

    from pgrepl.fullcopy.common import client_environment
    from pgrepl.pgtools import tool

    archive = tmp_path / "archive"
    with client_environment(source_db) as env:
        subprocess.run([tool("pg_dump"), "--format=directory", "--compress=0", f"--file={archive}",
                        f"--dbname={source_db.safe_url()}"], env=env, check=True, capture_output=True)
    before = read_entries(archive)
    listing = subprocess.run([tool("pg_restore"), "--list", str(archive)], capture_output=True, text=True, check=True)
    data_entries = [e for e in before if e.desc == "TABLE DATA"]
    keys = [e for e in before if e.desc == "CONSTRAINT" and e.tag.endswith("_pkey")][:2]
    assert len(data_entries) >= 5 and len(keys) == 2 and all(k.catalog_oid for k in keys)
    builds = {k.catalog_oid: f"-- built beside {k.tag}\n" for k in keys}

    fks = [e for e in before if e.desc == "FK CONSTRAINT"]
    assert fks
    assert staging.tune_archive(archive, builds, freeze=True) == {
        "frozen_copies": len(data_entries), "unique_indexes_beside": 2, "fk_checks_merged": len(fks)}
    after = read_entries(archive)
    same = lambda e: (e.dump_id, e.tag, e.namespace, e.filename, e.deps, e.catalog_oid)  # noqa: E731
    assert [same(e) for e in after] == [same(e) for e in before]
    for old, new in zip(before, after):
        if old.desc == "TABLE DATA":
            assert new.copy_stmt == old.copy_stmt.replace("FROM stdin;", "FROM stdin WITH (FREEZE);")
            assert (new.desc, new.defn) == (old.desc, old.defn)
        elif old in keys:
            assert (new.desc, new.defn, new.copy_stmt) == ("INDEX", f"-- built beside {old.tag}\n", old.copy_stmt)
        elif old in fks:
            assert (new.desc, new.defn) == (old.desc, "SET LOCAL enable_hashjoin = off;\n" + old.defn)
        else:
            assert new == old
    relisted = subprocess.run([tool("pg_restore"), "--list", str(archive)], capture_output=True, text=True, check=True)
    strip = lambda text: [line for line in text.splitlines() if not line.startswith(";")]  # noqa: E731
    assert strip(relisted.stdout) == [line.replace(" CONSTRAINT ", " INDEX ", 1)
                                      if any(f" {k.dump_id}; " in f" {line}" for k in keys) else line
                                      for line in strip(listing.stdout)]
    script = subprocess.run([tool("pg_restore"), "-f", "-", str(archive)], capture_output=True,
                            text=True, check=True).stdout
    assert script.count("FROM stdin WITH (FREEZE);") == len(data_entries)
    assert all(f"-- built beside {k.tag}" in script for k in keys)
    assert script.count("SET LOCAL enable_hashjoin = off;") == len(fks)


def test_a_data_file_without_its_end_marker_is_refused_before_pg_restore(tmp_path):
    """A plain data file cut short (a full disk, a copy interrupted, a file changed since the dump) would load
    fewer rows without an error from pg_restore. The restore refuses it before pg_restore starts, retryably (the
    next attempt takes a fresh dump)."""
    from pgrepl.errors import is_retryable

    source, stage = tmp_path / "dump", tmp_path / "staging"
    source.mkdir()
    stage.mkdir()
    (source / "10.dat").write_bytes(b"1\ta\n2\tb\n")  # the end lost
    (stage / "20.dat").write_bytes(b"\\.\n\n\n")
    with pytest.raises(Exception, match=r"10\.dat \(public\.a\) does not end with the COPY end marker") as refused:
        staging.link_data_files(
            source, [entry(10, "TABLE DATA", tag="a", copy="COPY public.a (x) FROM stdin;\n", filename="10.dat")],
            stage, [entry(20, "TABLE DATA", namespace="_pgrepl_stage_public", tag="a",
                          copy="COPY _pgrepl_stage_public.a (x) FROM stdin;\n", filename="20.dat")], ["public"])
    assert is_retryable(refused.value)
    assert not (stage / "20.dat").is_symlink()
