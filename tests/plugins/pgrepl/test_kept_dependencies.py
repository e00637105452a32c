"""``warehouse/kept_dependencies.sql`` on real PostgreSQL: what a relation moved back by the swap still needs from
the aside schema (a column type, a default's sequence or function), and nothing else (issue 19 rewrote it as set
queries)."""

from __future__ import annotations

from pgrepl import sqlfiles

SETUP = """
CREATE TYPE public.tag AS ENUM ('x');  -- not aside: never reported
CREATE SCHEMA "_pgrepl_prev_public";
SET search_path = "_pgrepl_prev_public";
CREATE TYPE mood AS ENUM ('ok', 'ko');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE SEQUENCE shared_seq;
CREATE FUNCTION answer() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 42';
CREATE TABLE other (id serial PRIMARY KEY);
CREATE TABLE "kept A" (id serial PRIMARY KEY, m mood, ms mood[], p positive, s int DEFAULT nextval('shared_seq'),
                       f int DEFAULT answer(), o int DEFAULT nextval('other_id_seq'), other_id int REFERENCES other);
CREATE TABLE kept_b (id int GENERATED ALWAYS AS IDENTITY, a_id int DEFAULT nextval('"kept A_id_seq"'), t public.tag);
CREATE TABLE replaced (m mood DEFAULT 'ok', s int DEFAULT nextval('shared_seq'));
CREATE VIEW kept_view AS SELECT m, answer() AS f FROM "kept A";
RESET search_path;
"""


def test_kept_dependencies_names_what_stays_aside(make_database):
    db_conn = make_database("keptdeps")
    with db_conn.connect() as db:
        db.execute(SETUP)
        kept = [db.execute("SELECT %s::regclass::oid", (f'"_pgrepl_prev_public".{name}',)).fetchone()[0]
                for name in ('"kept A"', "kept_b", "kept_view")]
        rows = db.execute(sqlfiles.load("warehouse/kept_dependencies"),
                          {"kept": kept, "aside": "_pgrepl_prev_public"}).fetchall()
        db.rollback()
    assert sorted(rows) == [
        ("kept A", "function _pgrepl_prev_public.answer()"),
        ("kept A", "sequence _pgrepl_prev_public.other_id_seq"),  # owned by a replaced table: goes with it
        ("kept A", "sequence _pgrepl_prev_public.shared_seq"),
        ("kept A", "type _pgrepl_prev_public.mood"),
        ("kept A", "type _pgrepl_prev_public.mood[]"),
        ("kept A", "type _pgrepl_prev_public.positive"),
        ("kept_view", "type _pgrepl_prev_public.mood"),  # a view's column types (its rule's needs are not checked)
        # kept_b: its identity sequence and "kept A"'s serial sequence move with their kept tables; public.tag stays
    ]


def test_nothing_kept_nothing_found(make_database):
    with make_database("keptdeps").connect() as db:
        db.execute(SETUP)
        assert db.execute(sqlfiles.load("warehouse/kept_dependencies"),
                          {"kept": [], "aside": "_pgrepl_prev_public"}).fetchall() == []


def test_lost_dependents_names_what_outside_depends_on_the_aside_schema(make_database):
    """``warehouse/lost_dependents.sql``: what ``DROP SCHEMA <aside> CASCADE`` takes along from other schemas."""
    with make_database("lostdeps").connect() as db:
        db.execute("""
            CREATE SCHEMA "_pgrepl_prev_public";
            CREATE TABLE "_pgrepl_prev_public".a (id int PRIMARY KEY);
            CREATE SEQUENCE "_pgrepl_prev_public".s;
            CREATE VIEW "_pgrepl_prev_public".inside AS SELECT id FROM "_pgrepl_prev_public".a;
            CREATE SCHEMA analytics;
            CREATE VIEW analytics.v AS SELECT id FROM "_pgrepl_prev_public".a;
            CREATE TABLE analytics.b (a_id int REFERENCES "_pgrepl_prev_public".a,
                                      n int DEFAULT nextval('"_pgrepl_prev_public".s'));
            CREATE TABLE analytics.alone (id int PRIMARY KEY);
        """)
        rows = db.execute(sqlfiles.load("warehouse/lost_dependents"), {"aside": "_pgrepl_prev_public"}).fetchall()
        db.rollback()
    assert [r[0] for r in rows] == [
        "constraint b_a_id_fkey on table analytics.b",
        "default value for column n of table analytics.b",
        "rule _RETURN on view analytics.v",
    ]
