"""Comments reach the warehouse, on real PostgreSQL: restored with their objects, copied onto kept tables."""

from __future__ import annotations

import pytest

from pgrepl import comments, fullcopy
from pgrepl.settings import ReplicationSettings, TableName

#: quotes, a backslash, a newline, a percent sign and non-ASCII text
TRICKY = "It's \"quoted\" \\ 100%\nligne 2 : élève, Größe, 日本語 — ✓"

SOURCE_OBJECTS = """
CREATE MATERIALIZED VIEW "answer-counts" AS SELECT "lastName", count(*) AS n FROM users GROUP BY 1;
CREATE TYPE mood AS ENUM ('ok', 'ko');
CREATE FUNCTION answer_score(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1 * 2';
CREATE EXTENSION pg_trgm;
"""

#: (COMMENT ON ... IS, text)
SOURCE_COMMENTS = [
    ("TABLE users", TRICKY),
    ('COLUMN users."firstName"', "first name: " + TRICKY),
    ("TABLE answers", "kept: " + TRICKY),
    ('COLUMN answers."challengeId"', "kept column: " + TRICKY),
    ('VIEW "active-users"', "view: " + TRICKY),
    ('MATERIALIZED VIEW "answer-counts"', "matview: " + TRICKY),
    ("INDEX assessments_userid_index", "index"),
    ("CONSTRAINT users_pkey ON users", "pkey"),
    ("TYPE mood", "type"),
    ("FUNCTION answer_score(integer)", "function"),
    ("SEQUENCE users_id_seq", "sequence"),
    ("EXTENSION pg_trgm", "extension: must not reach the warehouse"),
    ("SCHEMA public", "schema public: must not reach the warehouse"),
]


def comment_on(db, target: str, text: str | None) -> None:
    """``COMMENT ON <target> IS <text>``; COMMENT takes a literal only, quoted here by psycopg."""
    from psycopg import sql

    value = sql.NULL if text is None else sql.Literal(text)
    db.execute(sql.SQL("COMMENT ON " + target + " IS {}").format(value))


@pytest.fixture
def make_settings(source_db, target_db, tmp_path):
    def factory(**kwargs) -> ReplicationSettings:
        return ReplicationSettings(source=source_db, target=target_db, work_dir=str(tmp_path / "work"), jobs=2, **kwargs)

    return factory


@pytest.fixture
def commented_source(source_db):
    with source_db.connect() as db:
        db.execute(SOURCE_OBJECTS)
        for target, text in SOURCE_COMMENTS:
            comment_on(db, target, text)
        db.commit()
    return source_db


def described(conn) -> dict[str, str]:
    """Every comment of the database, keyed by PostgreSQL's own description of the object."""
    with conn.connect() as db:
        rows = db.execute(
            "SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description FROM pg_description d "
            "WHERE d.objoid >= 16384 OR (d.classoid, d.objoid) = ('pg_namespace'::regclass, 'public'::regnamespace)"
        ).fetchall()
    return dict(rows)


def put_extension_aside_as_superuser(pg_cluster, target_db):
    """The warehouse's pg_trgm, installed by a superuser in its own schema: the warehouse role does not own it."""
    pg_cluster.execute("CREATE SCHEMA ext", dbname=target_db.dbname)
    pg_cluster.execute("CREATE EXTENSION pg_trgm SCHEMA ext", dbname=target_db.dbname)


def test_comments_are_restored_and_copied_onto_kept_tables(make_settings, commented_source, target_db, pg_cluster):
    put_extension_aside_as_superuser(pg_cluster, target_db)
    fullcopy.run_full_copy(make_settings(), "night1")
    source, warehouse = described(commented_source), described(target_db)
    for obj in ("table users", "column firstName of table users", "table answers",
                'column challengeId of table answers', 'view "active-users"', 'materialized view "answer-counts"',
                "index assessments_userid_index", "constraint users_pkey on table users", "type mood",
                "function answer_score(integer)", "sequence users_id_seq"):
        assert warehouse.get(obj) == source[obj], obj
    assert warehouse["table users"] == TRICKY
    # left out without an error: the role may not comment on an extension it does not own, nor on schema public
    assert source["extension pg_trgm"] == "extension: must not reach the warehouse"
    assert warehouse.get("extension pg_trgm") != source["extension pg_trgm"]
    assert "schema public" in source and "schema public" not in warehouse

    # night 2: answers is kept; its comments change in the source and must follow without a restore
    with commented_source.connect() as db:
        comment_on(db, "TABLE answers", "changed: " + TRICKY)
        comment_on(db, 'COLUMN answers."challengeId"', None)
        comment_on(db, "COLUMN answers.value", "new on a column")
        comment_on(db, "TABLE users", "users, night 2")
        db.commit()
    kept = make_settings(backup_mode={TableName("public", "answers"): "none"})
    fullcopy.run_full_copy(kept, "night2")
    assert described(target_db)["table users"] == "users, night 2"  # replaced: restored from the dump
    assert described(target_db)["table answers"] == "kept: " + TRICKY  # kept: the restore did not touch it
    result = comments.copy_kept_comments(kept)
    assert result == {"changed": 3, "missing": []}
    warehouse = described(target_db)
    assert warehouse["table answers"] == "changed: " + TRICKY
    assert "column challengeId of table answers" not in warehouse
    assert warehouse["column value of table answers"] == "new on a column"
    # idempotent
    assert comments.copy_kept_comments(kept) == {"changed": 0, "missing": []}


def test_kept_table_missing_in_the_warehouse_is_skipped(make_settings, commented_source, target_db):
    settings = make_settings(backup_mode={TableName("public", "answers"): "none",
                                          TableName("public", "users"): "none"})
    fullcopy.run_full_copy(make_settings(backup_mode={TableName("public", "answers"): "none"}), "night1")
    # answers is not in the warehouse (the first night created it, empty, then someone dropped it); users was
    # restored without its comment
    with target_db.connect() as db:
        db.execute("DROP TABLE answers CASCADE")
        db.execute("COMMENT ON TABLE users IS NULL")
        db.commit()
    result = comments.copy_kept_comments(settings)
    assert result["missing"] == ["answers"]
    assert result["changed"] == 1
    assert described(target_db)["table users"] == TRICKY


def test_setting_off_restores_no_comment(make_settings, commented_source, target_db):
    settings = make_settings(restore_comments=False)
    fullcopy.run_full_copy(settings, "off")
    # CREATE EXTENSION sets the comment of the extension's control file; nothing else carries one
    assert described(target_db) == {"extension pg_trgm": "text similarity measurement and index searching based on trigrams"}
    with target_db.connect() as db:
        db.execute("COMMENT ON TABLE users IS 'warehouse only'")
        db.commit()
    off = make_settings(restore_comments=False, backup_mode={TableName("public", "users"): "none"})
    assert comments.copy_kept_comments(off) == {"changed": 0, "missing": []}
    assert described(target_db)["table users"] == "warehouse only"
