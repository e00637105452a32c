"""Incremental copy on real PostgreSQL: append, rerun, bootstrap, guards, foreign keys, odd names, a killed copy."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg import sql

from pgrepl.incremental import (
    ForeignKeyError,
    NoIntegerIdError,
    SchemaMismatchError,
    SourceRewoundError,
    TableNotFoundError,
    copy_incremental,
    order_incremental_tables,
)
from pgrepl.settings import TableName

T = TableName.parse
ANSWERS, KE = T("answers"), T("knowledge-elements")


def run(conn, statement, params=None):
    with conn.connect(autocommit=True) as db:
        cur = db.execute(statement, params)
        return cur.fetchall() if cur.description else []


def table_state(conn, table: TableName):
    """(count, max id, md5 of every row in id order) or None when the table is absent."""
    with conn.connect() as db:
        exists = db.execute("SELECT to_regclass(%s)", (sql.Identifier(table.schema, table.name).as_string(db),)).fetchone()[0]
        if exists is None:
            return None
        return db.execute(
            sql.SQL("SELECT count(*), max(id), coalesce(md5(string_agg(t::text, '|' ORDER BY id)), '') FROM {} t")
            .format(sql.Identifier(table.schema, table.name))
        ).fetchone()


def add_answers(conn, n):
    run(conn, """INSERT INTO answers (value, result, "assessmentId", "challengeId", "createdAt")
                 SELECT 'new ' || i, 'ok', 1, 'recNew' || i, now() FROM generate_series(1, %s) i""", (n,))


def test_bootstrap_then_append_then_rerun_copies_nothing(source_db, target_db):
    first = copy_incremental(source_db, target_db, ANSWERS)
    assert first.mode == "bootstrap" and first.created and first.format == "binary"
    assert first.rows_before == 0 and first.copied == first.rows_after == first.source_count > 0
    assert table_state(target_db, ANSWERS) == table_state(source_db, ANSWERS)
    with target_db.connect() as db:
        # primary key and the other index rebuilt; no foreign key; defaults kept except the sequence's
        assert db.execute("SELECT conname, contype FROM pg_constraint WHERE conrelid = 'answers'::regclass "
                          "ORDER BY 1").fetchall() == [("answers_pkey", "p")]
        assert db.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'answers_assessmentid_index'").fetchone() == (1,)
        defaults = dict(db.execute("SELECT column_name, column_default FROM information_schema.columns "
                                   "WHERE table_name = 'answers'").fetchall())
        assert defaults["id"] is None and defaults["createdAt"] == "now()"

    add_answers(source_db, 25)
    second = copy_incremental(source_db, target_db, ANSWERS)
    assert (second.mode, second.created, second.copied) == ("append", False, 25)
    assert second.rows_after == first.rows_after + 25 == second.source_count
    assert second.target_max_id_before == first.source_max_id and second.source_max_id == first.source_max_id + 25
    assert table_state(target_db, ANSWERS) == table_state(source_db, ANSWERS)

    third = copy_incremental(source_db, target_db, ANSWERS)
    assert (third.mode, third.copied, third.rows_after) == ("append", 0, second.rows_after)
    assert table_state(target_db, ANSWERS) == table_state(source_db, ANSWERS)
    xcom = third.as_dict()
    assert {"table", "mode", "rows_before", "copied", "rows_after", "source_count", "source_max_id", "seconds",
            "rows_per_second"} <= set(xcom) and xcom["table"] == "answers"


def test_empty_target_table_is_bootstrapped_without_recreating_it(source_db, target_db):
    run(target_db, 'CREATE TABLE answers (id int PRIMARY KEY, value text, result varchar(255), "assessmentId" int, '
                   '"challengeId" varchar(255) NOT NULL, "createdAt" timestamptz, "updatedAt" timestamptz, timeout int, '
                   '"elapsedTime" int, "resultDetails" text, "localNote" text DEFAULT \'kept\')')
    result = copy_incremental(source_db, target_db, ANSWERS)
    assert (result.mode, result.created, result.rows_before) == ("bootstrap", False, 0)
    assert result.rows_after == result.source_count > 0
    assert run(target_db, 'SELECT DISTINCT "localNote" FROM answers') == [("kept",)]  # the target's own column kept
    assert run(target_db, "SELECT count(*), max(id) FROM answers") == run(source_db, "SELECT count(*), max(id) FROM answers")


def test_rewound_source_fails_naming_table_and_both_ids_and_copies_nothing(source_db, target_db):
    copy_incremental(source_db, target_db, ANSWERS)
    (source_max,) = run(source_db, "SELECT max(id) FROM answers")[0]
    # the source goes back in time (restored from an older backup)
    run(source_db, 'DELETE FROM "knowledge-elements" WHERE "answerId" > %s', (source_max - 3,))
    run(source_db, "DELETE FROM answers WHERE id > %s", (source_max - 3,))
    before = table_state(target_db, ANSWERS)
    with pytest.raises(SourceRewoundError, match=rf"table answers: target max\(id\) = {source_max} .* source max\(id\) = {source_max - 3}"):
        copy_incremental(source_db, target_db, ANSWERS)
    assert table_state(target_db, ANSWERS) == before


def test_no_integer_id_and_missing_source_table_are_clear_errors(make_database, target_db):
    source = make_database("incsrc")
    run(source, "CREATE TABLE tokens (id text PRIMARY KEY, v int); INSERT INTO tokens VALUES ('a', 1)")
    run(source, "CREATE TABLE events (event_id int, v int)")
    with pytest.raises(NoIntegerIdError, match=r"table tokens: no usable incremental key \(column id is text, not an integer; primary key \(id\) is not an integer\); name an integer column"):
        copy_incremental(source, target_db, T("tokens"))
    with pytest.raises(NoIntegerIdError, match=r"table events: no usable incremental key \(no column id; no primary key\)"):
        copy_incremental(source, target_db, T("events"))
    with pytest.raises(TableNotFoundError, match=r"table nowhere: absent in the source"):
        copy_incremental(source, target_db, T("nowhere"))
    assert table_state(target_db, T("tokens")) is None and table_state(target_db, T("events")) is None


def test_target_missing_a_source_column_fails_before_copying(source_db, target_db):
    copy_incremental(source_db, target_db, ANSWERS)
    run(source_db, "ALTER TABLE answers ADD COLUMN flagged boolean")
    add_answers(source_db, 3)
    with pytest.raises(SchemaMismatchError, match=r"table answers: the target lacks source column\(s\) flagged"):
        copy_incremental(source_db, target_db, ANSWERS)


def test_type_differences_fall_back_to_text(make_database):
    source, target = make_database("incsrc"), make_database("inctgt")
    run(source, "CREATE TYPE mood AS ENUM ('sad', 'happy'); "
                "CREATE TABLE notes (id serial PRIMARY KEY, body text, mood mood, tags text[], at timestamptz DEFAULT now()); "
                "INSERT INTO notes (body, mood, tags) SELECT 'n' || i, 'happy', ARRAY['x', i::text] FROM generate_series(1, 50) i")
    run(target, "CREATE TYPE mood AS ENUM ('sad', 'happy')")  # types come with the full restore
    boot = copy_incremental(source, target, T("notes"))
    assert (boot.mode, boot.format, boot.copied) == ("bootstrap", "text", 50)  # an enum: OIDs differ between databases
    run(target, "ALTER TABLE notes ALTER COLUMN mood TYPE text")
    run(source, "INSERT INTO notes (body, mood) VALUES ('late', 'sad')")
    more = copy_incremental(source, target, T("notes"))
    assert (more.mode, more.format, more.copied) == ("append", "text", 1)
    assert run(target, "SELECT body, mood, tags FROM notes WHERE id = 51") == [("late", "sad", None)]
    assert run(target, "SELECT tags FROM notes WHERE id = 2") == [(["x", "2"],)]


def test_names_with_a_dash_and_a_double_quote(make_database):
    source, target = make_database("incsrc"), make_database("inctgt")
    run(source, 'CREATE SCHEMA "my-schema"; '
                'CREATE TABLE "my-schema"."with-dash" (id bigserial PRIMARY KEY, "odd""col" text); '
                'CREATE TABLE "quo""ted" (id int PRIMARY KEY, v text); '
                'INSERT INTO "my-schema"."with-dash" ("odd""col") SELECT md5(i::text) FROM generate_series(1, 30) i; '
                'INSERT INTO "quo""ted" SELECT i, \'v\' || i FROM generate_series(1, 20) i')
    dash, quote = T("my-schema.with-dash"), T('quo"ted')
    for table, rows in ((dash, 30), (quote, 20)):
        assert copy_incremental(source, target, table).copied == rows
    run(source, 'INSERT INTO "my-schema"."with-dash" ("odd""col") VALUES (\'x\'); INSERT INTO "quo""ted" VALUES (21, \'y\')')
    for table in (dash, quote):
        result = copy_incremental(source, target, table)
        assert (result.mode, result.copied) == ("append", 1)
        assert table_state(target, table) == table_state(source, table)


def test_order_puts_parents_first(source_db):
    tables = [T("knowledge-elements"), T("knowledge-element-snapshots"), T("answers"), T("assessments")]
    assert order_incremental_tables(source_db, tables) == [
        T("knowledge-element-snapshots"), T("assessments"), T("answers"), T("knowledge-elements")]
    assert order_incremental_tables(source_db, [KE]) == [KE]


def _fk_setup(source_db, target_db):
    """Both tables bootstrapped, then the warehouse gets an FK knowledge-elements -> answers; new rows in both."""
    for table in (ANSWERS, KE):
        copy_incremental(source_db, target_db, table)
    run(target_db, 'ALTER TABLE "knowledge-elements" ADD CONSTRAINT ke_answer_fk FOREIGN KEY ("answerId") REFERENCES answers (id)')
    add_answers(source_db, 10)
    run(source_db, 'INSERT INTO "knowledge-elements" (source, status, "answerId", "skillId") '
                   "SELECT 'direct', 'validated', id, 'skillNew' FROM answers ORDER BY id DESC LIMIT 10")


def test_bootstrapped_tables_have_no_foreign_keys_so_any_order_works(source_db, target_db):
    child = copy_incremental(source_db, target_db, KE, incremental_tables=[ANSWERS, KE])  # child first
    parent = copy_incremental(source_db, target_db, ANSWERS, incremental_tables=[ANSWERS, KE])
    assert child.created and parent.created and child.caught_up == []
    assert run(target_db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == [(0,)]


def test_child_first_catches_its_incremental_parent_up_in_the_same_transaction(source_db, target_db):
    _fk_setup(source_db, target_db)
    child = copy_incremental(source_db, target_db, KE, incremental_tables=[ANSWERS, KE])
    assert child.copied == 10 and child.caught_up == [{"table": "answers", "copied": 10, "mode": "append"}]
    parent = copy_incremental(source_db, target_db, ANSWERS, incremental_tables=[ANSWERS, KE])
    assert parent.copied == 0
    for table in (ANSWERS, KE):
        assert table_state(target_db, table) == table_state(source_db, table)


def test_parent_and_child_in_parallel_never_fail(source_db, target_db):
    _fk_setup(source_db, target_db)
    results, errors = {}, []

    def copy(table):
        try:
            results[table] = copy_incremental(source_db, target_db, table, incremental_tables=[ANSWERS, KE])
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=copy, args=(t,)) for t in (KE, ANSWERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert results[KE].copied == 10
    assert results[ANSWERS].copied + sum(c["copied"] for c in results[KE].caught_up) == 10
    for table in (ANSWERS, KE):
        assert table_state(target_db, table) == table_state(source_db, table)


def test_foreign_key_to_a_table_not_copied_incrementally_fails_cleanly(source_db, target_db):
    _fk_setup(source_db, target_db)
    before = table_state(target_db, KE)
    with pytest.raises(ForeignKeyError, match=r"table knowledge-elements: new rows reference rows missing .*ke_answer_fk"):
        copy_incremental(source_db, target_db, KE)  # answers not declared incremental: no catch-up
    assert table_state(target_db, KE) == before


@pytest.mark.parametrize("bootstrap", [False, True], ids=["append", "bootstrap"])
def test_target_session_killed_mid_copy_leaves_no_partial_rows(make_database, pg_cluster, bootstrap):
    source, target = make_database("incsrc"), make_database("inctgt")
    run(source, "CREATE TABLE big (id serial PRIMARY KEY, payload text); "
                "INSERT INTO big (payload) SELECT repeat(md5(i::text), 4) FROM generate_series(1, 1000) i")
    if not bootstrap:
        copy_incremental(source, target, T("big"))
    run(source, "INSERT INTO big (payload) SELECT repeat(md5(i::text), 4) FROM generate_series(1, 30000) i")
    before = table_state(target, T("big"))
    kills = []

    def kill_target_session(table, rows, nbytes):
        if not kills:  # the first chunk is written: terminate the target's COPY session mid-stream
            kills.append(pg_cluster.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
                dbname="postgres", params=(target.dbname, "pgrepl-incremental:%")))

    with pytest.raises(psycopg.OperationalError):
        copy_incremental(source, target, T("big"), progress=kill_target_session, progress_every=1)
    assert kills == [[(True,)]]
    assert table_state(target, T("big")) == before  # None for the bootstrap: not even the table is left
    result = copy_incremental(source, target, T("big"))  # and the next try completes
    assert table_state(target, T("big")) == table_state(source, T("big"))
    assert result.copied == 30000 + (1000 if bootstrap else 0)
