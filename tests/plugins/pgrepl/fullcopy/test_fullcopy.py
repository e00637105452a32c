"""The full copy on real PostgreSQL: dump -> swap -> restore -> compat views -> enrichment."""

from __future__ import annotations

import dataclasses
import glob
import os

import psycopg
import psycopg.sql
import pytest
from dump_helpers import break_biggest_data_file

from pgrepl import fullcopy
from pgrepl import swap as warehouse
from pgrepl.settings import ReplicationSettings, TableName


@pytest.fixture
def make_settings(source_db, target_db, tmp_path):
    def factory(**kwargs) -> ReplicationSettings:
        return ReplicationSettings(source=source_db, target=target_db, work_dir=str(tmp_path / "work"), jobs=2, **kwargs)

    return factory


def rows(conn, query, params=None):
    with conn.connect() as db:
        return db.execute(query, params).fetchall()


def relnames(conn, kind):
    return {r[0] for r in rows(conn, "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = %s", (kind,))}


def test_full_copy_equals_source(make_settings, source_db, target_db, fingerprint):
    result = fullcopy.run_full_copy(make_settings(), "run1")
    source, target = fingerprint(source_db), fingerprint(target_db)
    assert target == source
    assert result["source_counts"] == {f"public.{t}": count for t, (count, _) in source.items()}
    # views, compat view, indexes, constraints, sequences
    assert {"active-users", "schooling-registrations"} <= relnames(target_db, "v")
    indexes = relnames(target_db, "i")
    assert {"knowledge-elements_createdAt_idx", "knowledge-element-snapshots_snappedAt_idx", "answers_challengeId_idx",
            "users_createdAt_idx", "knowledge_elements_userid_index", "answers_pkey"} <= indexes
    fks = rows(target_db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace")[0][0]
    assert fks == rows(source_db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace")[0][0] > 0
    assert rows(target_db, "SELECT nextval('answers_id_seq') > (SELECT max(id) FROM answers)")[0][0] is True
    # the sample's COMMENTs are restored with their table (tests/plugins/pgrepl/test_comments.py: every kind)
    comments = "SELECT c.relname, d.objsubid, d.description FROM pg_description d JOIN pg_class c ON c.oid = d.objoid WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1, 2"
    assert rows(target_db, comments) == rows(source_db, comments) == [
        ("answers", 2, "what the user answered"), ("knowledge-element-snapshots", 3, "when the snapshot was taken"),
        ("users", 0, "Pix users")]
    # no leftovers: aside schema dropped, dump folder removed, lease released
    assert rows(target_db, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_prev%'")[0][0] == 0
    assert not glob.glob(os.path.join(make_settings().work_dir, "run1", "dump"))
    assert rows(target_db, "SELECT count(*) FROM _pgrepl.lease")[0][0] == 0


#: pages of each table and how many the visibility map marks all-visible (counted when the restore built its
#: primary key: ``CREATE INDEX`` records ``relallvisible``)
ALL_VISIBLE = """
SELECT relname, relpages, relallvisible FROM pg_class
 WHERE relnamespace = 'public'::regnamespace AND relname IN ('users', 'knowledge-elements', 'answers-archive')
"""


#: every constraint and index of the replaced schema, as PostgreSQL prints them back
DEFINITIONS = """
SELECT 'constraint', conrelid::regclass::text, conname,
       pg_get_constraintdef(oid) || CASE WHEN condeferrable THEN ' deferrable' ELSE '' END
       || CASE WHEN condeferred THEN ' deferred' ELSE '' END
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
ORDER BY 1, 2, 3
"""


@pytest.mark.parametrize("jobs, frozen", [(2, True), (1, False)])
def test_parallel_restore_loads_frozen_and_builds_keys_beside_indexes(make_settings, source_db, target_db, fingerprint,
                                                                       jobs, frozen):
    """``pg_restore --jobs`` > 1 loads each table it created as ``BEGIN; TRUNCATE; COPY ... WITH (FREEZE)``: rows
    frozen, every page all-visible, so the index builds and FK checks that follow skip per-row visibility work. Its
    primary keys and unique constraints are built as unique indexes beside the other indexes, then attached: the
    warehouse ends with exactly the source's constraints and indexes (deferrable, NULLS NOT DISTINCT, INCLUDE,
    storage parameters, a partitioned table's key, a unique constraint and an FK onto it). A serial restore (no
    TRUNCATE first, where FREEZE is refused) loads plainly and keeps pg_dump's statements."""
    with source_db.connect() as db:
        db.execute("""
            CREATE TABLE "shapes Odd" (id int, code text, slot int, note text,
                CONSTRAINT "shapes pk" PRIMARY KEY (id) INCLUDE (note) WITH (fillfactor = 80),
                CONSTRAINT shapes_code UNIQUE NULLS NOT DISTINCT (code),
                CONSTRAINT shapes_slot UNIQUE (slot) DEFERRABLE INITIALLY DEFERRED);
            INSERT INTO "shapes Odd" SELECT g, 'c' || g, g, 'n' FROM generate_series(1, 300) g;
            CREATE TABLE shape_refs (id int PRIMARY KEY, code text REFERENCES "shapes Odd" (code));
            INSERT INTO shape_refs SELECT g, 'c' || g FROM generate_series(1, 50) g;
            CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
            CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
            INSERT INTO events SELECT g, DATE '2026-01-01' + g FROM generate_series(1, 200) g;
        """)
        db.commit()
    settings = dataclasses.replace(make_settings(), jobs=jobs)
    result = fullcopy.run_full_copy(settings, f"jobs{jobs}")
    keys = rows(source_db, "SELECT count(*) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
                           "WHERE contype IN ('p', 'u') AND t.relkind = 'r' AND NOT t.relispartition "
                           "AND t.relnamespace = 'public'::regnamespace")[0][0]
    tables_with_rows = rows(source_db, "SELECT count(*) FROM pg_class WHERE relkind = 'r' "
                                       "AND relnamespace = 'public'::regnamespace")[0][0]  # a data entry each
    fks = rows(source_db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                          "AND connamespace = 'public'::regnamespace AND conparentid = 0")[0][0]
    assert result["restore_archive"] == (
        {"frozen_copies": tables_with_rows, "unique_indexes_beside": keys, "fk_checks_merged": fks} if frozen
        else {"frozen_copies": 0, "unique_indexes_beside": 0, "fk_checks_merged": fks})
    assert fingerprint(target_db) == fingerprint(source_db)
    source_definitions = rows(source_db, DEFINITIONS)
    assert len([d for d in source_definitions if d[0] == "constraint"]) >= 10
    target_definitions = rows(target_db, DEFINITIONS)
    assert [d for d in target_definitions if d in source_definitions] == source_definitions
    # besides: only include/sql/indexes/ (plain indexes of the enrichment)
    assert {d[3].split(" ON ")[0] for d in target_definitions if d not in source_definitions} == {
        f'CREATE INDEX "{name}"' for name in ("answers_challengeId_idx", "knowledge-elements_createdAt_idx",
                                               "knowledge-element-snapshots_snappedAt_idx", "users_createdAt_idx")}
    pages = {name: (relpages, allvisible) for name, relpages, allvisible in rows(target_db, ALL_VISIBLE)}
    assert set(pages) == {"users", "knowledge-elements", "answers-archive"}
    assert all(relpages > 0 for relpages, _ in pages.values()), pages
    if frozen:
        assert all(allvisible == relpages for relpages, allvisible in pages.values()), pages
    else:
        assert all(allvisible == 0 for _, allvisible in pages.values()), pages
    with target_db.connect() as db:  # the deferrable constraint still defers
        db.execute('UPDATE "shapes Odd" SET slot = slot + 1')
        db.commit()


def test_second_night_replaces_and_kept_tables_are_untouched(make_settings, source_db, target_db, fingerprint):
    fullcopy.run_full_copy(make_settings(), "night1")
    with target_db.connect() as db:  # the warehouse's own rows in the kept table, and a warehouse-only table
        db.execute("INSERT INTO answers (id, \"challengeId\") VALUES (999999, 'kept-marker')")
        db.execute('CREATE TABLE areas (id text PRIMARY KEY, name text)')
        db.execute("INSERT INTO areas VALUES ('a1', 'Information')")
        db.commit()
    with source_db.connect() as db:
        db.execute("DELETE FROM \"answers-archive\" WHERE id % 20 = 0")
        db.execute("INSERT INTO users (\"firstName\", \"lastName\") VALUES ('new', 'user')")
        db.commit()
    before = fingerprint(target_db)
    result = fullcopy.run_full_copy(make_settings(backup_mode={TableName("public", "answers"): "none"}), "night2")
    after, source = fingerprint(target_db), fingerprint(source_db)
    assert after["answers"] == before["answers"]  # never touched
    assert after["areas"] == before["areas"]  # not from the source: left alone
    assert "public.answers" not in result["source_counts"]
    for table in ("answers-archive", "users", "assessments", "knowledge-elements"):
        assert after[table] == source[table], table
    # the kept table keeps its indexes and sequence; the FK from answers to assessments went with the old table
    assert "answers_assessmentid_index" in relnames(target_db, "i")
    assert rows(target_db, "SELECT nextval('answers_id_seq') > 0")[0][0]


def test_fk_switch_off(make_settings, target_db):
    fullcopy.run_full_copy(make_settings(restore_fk_constraints=False), "nofk")
    assert rows(target_db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'")[0][0] == 0
    assert rows(target_db, "SELECT count(*) FROM pg_constraint WHERE contype = 'p'")[0][0] > 0


def test_failed_restore_puts_yesterday_back(make_settings, source_db, target_db, fingerprint):
    settings = make_settings()
    fullcopy.run_full_copy(settings, "good")
    yesterday = fingerprint(target_db)
    views = relnames(target_db, "v")
    with source_db.connect() as db:
        db.execute("UPDATE users SET \"lastName\" = 'changed'")
        db.commit()
    fullcopy.dump(settings, "bad")
    # break the dump: one table's data file holds a row the warehouse refuses, pg_restore fails mid-way
    break_biggest_data_file(os.path.join(settings.work_dir, "bad", "dump"))
    with pytest.raises(RuntimeError, match="command failed"):
        fullcopy.restore(settings, "bad", "bad-run")
    assert fingerprint(target_db) == yesterday
    assert relnames(target_db, "v") == views
    assert warehouse_clean(target_db)


def test_interrupted_swap_is_healed(make_settings, target_db, fingerprint):
    settings = make_settings()
    fullcopy.run_full_copy(settings, "good")
    yesterday = fingerprint(target_db)
    # a worker dies right after moving the live schema aside (nothing ran finalize or rollback)
    everything = {r[0] for r in rows(target_db, "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace")}
    with target_db.connect() as db:
        warehouse.prepare_swap(db, "dead-run", {"public": everything}, {})
    assert fingerprint(target_db) == {}
    assert fullcopy.rollback(settings, "dead-run") == ["public"]
    assert fingerprint(target_db) == yesterday
    with target_db.connect() as db:  # the rollback task took the dead run's lease; its release task frees it
        assert warehouse.release_lease(db, "dead-run")
    # and a new restore after such a crash starts by healing too
    with target_db.connect() as db:
        warehouse.prepare_swap(db, "dead-run", {"public": everything}, {})
    fullcopy.run_full_copy(settings, "next")
    assert fingerprint(target_db) == yesterday
    assert warehouse_clean(target_db)


def test_kept_table_depending_on_a_replaced_sequence_is_refused(make_settings, source_db, target_db, fingerprint):
    with source_db.connect() as db:  # a table whose id default uses another table's sequence
        db.execute("CREATE TABLE \"answers-legacy\" (id integer DEFAULT nextval('answers_id_seq') PRIMARY KEY, v text)")
        db.commit()
    settings = make_settings()
    fullcopy.run_full_copy(settings, "good")
    yesterday = fingerprint(target_db)
    # refused before anything moves (preflight says the same)
    with pytest.raises(fullcopy.PreflightError, match="table answers-legacy draws a default from sequence answers_id_seq, "
                                                      "owned by table answers which is copied in full"):
        fullcopy.run_full_copy(make_settings(backup_mode={TableName("public", "answers-legacy"): "none"}), "refused")
    assert fingerprint(target_db) == yesterday
    assert warehouse_clean(target_db)


def test_second_run_waits_for_the_lease(make_settings, target_db):
    with target_db.connect() as db:
        warehouse.acquire_lease(db, "night-A")
        with pytest.raises(warehouse.WarehouseBusy, match=r"another run \(night-A, since .*\) holds the warehouse"):
            warehouse.acquire_lease(db, "night-B")
        warehouse.acquire_lease(db, "night-A")  # re-entrant for the same run
        assert warehouse.release_lease(db, "night-A")
        warehouse.acquire_lease(db, "night-B")


def warehouse_clean(conn) -> bool:
    aside = rows(conn, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_prev%'")[0][0]
    pending = rows(conn, "SELECT count(*) FROM _pgrepl.swap")[0][0]
    return aside == 0 and pending == 0


def test_first_night_with_an_incremental_parent_table(make_settings, target_db, fingerprint, source_db):
    """answers is incremental: on night 1 the restore creates it empty (its structure only: the incremental step
    fills it), and the FKs that point at it from replaced tables ("knowledge-elements"."answerId") are not restored
    (its rows arrive after the restore)."""
    fullcopy.run_full_copy(make_settings(backup_mode={TableName("public", "answers"): "incremental"}), "night1")
    target, source = fingerprint(target_db), fingerprint(source_db)
    assert target["answers"] == (0, "")
    assert "answers_assessmentid_index" in relnames(target_db, "i")
    assert target["knowledge-elements"] == source["knowledge-elements"]
    referencing = rows(target_db, "SELECT conname FROM pg_constraint WHERE contype = 'f' AND confrelid::regclass::text = 'answers'")
    assert referencing == []
    assert rows(target_db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'")[0][0] > 0


def test_restore_left_running_by_a_dead_worker_is_stopped(make_settings, target_db, fingerprint):
    """A pg_restore whose worker died keeps its session: the next rollback/prepare terminates it first."""
    import psycopg

    settings = make_settings()
    fullcopy.run_full_copy(settings, "good")
    orphan = psycopg.connect(**target_db.psycopg_kwargs(), application_name=fullcopy.RESTORE_APP_NAME, autocommit=True)
    try:
        with target_db.connect() as db:
            assert warehouse.stop_orphan_restores(db) == 1
        with pytest.raises(psycopg.OperationalError):
            orphan.execute("SELECT 1")
    finally:
        orphan.close()


def test_dump_on_another_worker_is_explained(make_settings):
    with pytest.raises(fullcopy.PreflightError, match="the dump ran on worker-7 .* REPLICATION_WORK_DIR must be a volume"):
        fullcopy.restore(make_settings(), "never-dumped", "run", dump_host="worker-7")


def test_params_override_settings(replication_env):
    from pgrepl.task_settings import replication_settings

    settings = replication_settings({"params": {"restore_fk_constraints": False, "jobs": 3}})
    assert (settings.restore_fk_constraints, settings.jobs) == (False, 3)
    assert replication_settings({"params": {"restore_fk_constraints": None, "jobs": None}}).jobs == 2


def test_sql_groups_follow_number_prefixes():
    names = ["010_a.sql", "010_b.sql", "020_c.sql", "view.sql", "030_d.sql", "030_e.sql", "010_f.sql"]
    groups = fullcopy.sql_groups([(n, "") for n in names])
    assert [[n for n, _ in g] for g in groups] == [
        ["010_a.sql", "010_b.sql"], ["020_c.sql"], ["view.sql"], ["030_d.sql", "030_e.sql"], ["010_f.sql"]]


def _rendezvous(me: str, other: str) -> str:
    """SQL that waits (up to 20 s) until another session runs the statement tagged ``other``, else fails."""
    return (
        "DO $$ DECLARE i int := 0; BEGIN "
        f"WHILE NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE '%tag-{other}-end%' AND pid <> pg_backend_pid()) "
        "LOOP PERFORM pg_sleep(0.05); PERFORM pg_stat_clear_snapshot(); i := i + 1; "
        f"IF i > 400 THEN RAISE EXCEPTION '{other} never ran beside {me}'; END IF; END LOOP; "
        "PERFORM pg_sleep(0.5); END $$ "  # let the other one see this one too
        f"/* tag-{me}-end */"
    )


def test_enrichment_group_runs_concurrently_and_fails_loudly(target_db):
    """Two files of one group run at the same time (each waits to see the other); an error in one is raised."""
    import psycopg

    statements = [("010_a.sql", _rendezvous("a", "b")), ("010_b.sql", _rendezvous("b", "a")), ("020_c.sql", "SELECT 1")]
    assert set(fullcopy.run_sql(target_db, statements, parallel=2)) == {"010_a.sql", "010_b.sql", "020_c.sql"}
    with pytest.raises(psycopg.Error, match="b never ran beside a"):  # run one after the other, they cannot meet
        fullcopy.run_sql(target_db, [("010_a.sql", _rendezvous("a", "b").replace("400", "20"))], parallel=2)
    with pytest.raises(psycopg.Error, match="does_not_exist"):
        fullcopy.run_sql(target_db, [("010_a.sql", "SELECT 1"), ("010_b.sql", "SELECT does_not_exist()")], parallel=2)


def test_counts_share_the_dump_snapshot(make_settings, source_db):
    """Rows committed while the dump runs are neither dumped nor counted."""
    with fullcopy.exported_snapshot(make_settings()) as (db, snapshot):
        assert db.execute("SHOW transaction_isolation").fetchone()[0] == "repeatable read"
        before = db.execute("SELECT count(*) FROM users").fetchone()[0]
        with source_db.connect() as writer:
            writer.execute("INSERT INTO users (\"firstName\", \"lastName\") VALUES ('late', 'comer')")
            writer.commit()
        assert db.execute("SELECT count(*) FROM users").fetchone()[0] == before
        # the id pg_dump gets (--snapshot) names this very snapshot: another session importing it sees the same rows
        with source_db.connect() as other:
            other.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            other.execute(psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(snapshot)))
            assert other.execute("SELECT count(*) FROM users").fetchone()[0] == before


def test_failure_lines_pick_errors_out_of_parallel_output():
    output = "\n".join(
        ["pg_restore: launching item 1 TABLE DATA a"]
        + ["pg_restore: error: COPY failed for table \"guarded\": ERROR:  new row violates check constraint"]
        + [f"pg_restore: finished item {i} INDEX x{i}" for i in range(200)]
    )
    assert fullcopy.failure_lines(output) == [
        "pg_restore: error: COPY failed for table \"guarded\": ERROR:  new row violates check constraint"]


def test_indexes_folder_is_built_by_the_restore_and_enrichment_covers_kept_tables(make_settings, source_db, target_db):
    """include/sql/indexes: built inside pg_restore's run (in the staging archive, so readers get them with the
    switch, named as the file says and with its definition); the enrichment step builds the one on a kept table."""
    names = {"knowledge-elements_createdAt_idx", "knowledge-element-snapshots_snappedAt_idx",
             "answers_challengeId_idx", "users_createdAt_idx"}
    settings = make_settings()
    fullcopy.run_full_copy(settings, "night1")
    kept = make_settings(backup_mode={TableName("public", "users"): "none"})
    fullcopy.dump(kept, "night2")
    fullcopy.restore(kept, "night2", "night2")
    built = {r[0]: r[1] for r in rows(target_db, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")}
    assert names <= set(built)  # users kept its own from night 1; the others came with tonight's tables
    assert 'USING btree ("challengeId")' in built["answers_challengeId_idx"]
    log = open(os.path.join(settings.work_dir, "night2", "logs", "pg_restore.log")).read()
    assert "INDEX answers_challengeId_idx" in log  # pg_restore built it, not the enrichment step
    with target_db.connect() as db:  # a kept table without it: the enrichment step builds it
        db.execute('DROP INDEX "users_createdAt_idx"')
        db.commit()
    fullcopy.run_sql(target_db, fullcopy.sqlfiles.rendered("indexes"), "night2")
    assert "users_createdAt_idx" in relnames(target_db, "i")
