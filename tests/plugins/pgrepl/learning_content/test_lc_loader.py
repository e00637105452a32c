"""Loading learning content into a real warehouse database: types, indexes, atomic replacement."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from devenv.lcms_server import load_sample_payload
from pgrepl.learning_content.loader import LearningContentLoadError, replace_tables
from pgrepl.learning_content.mapping import TABLE_NAMES, TABLES, map_payload

# information_schema spellings of the declared types
PG_TYPES = {"text": "text", "smallint": "smallint", "numeric": "numeric", "numeric(6,5)": "numeric",
            "boolean": "boolean", "timestamptz": "timestamp with time zone", "text[]": "ARRAY"}


def load(conn_info, payload) -> dict[str, int]:
    with conn_info.connect() as conn:
        return replace_tables(conn, map_payload(payload))


def columns(db, table):
    return db.execute(
        "SELECT column_name, data_type, is_nullable, numeric_precision, numeric_scale, udt_name "
        "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()


def indexes(db, table):
    return dict(db.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s", (table,)
    ).fetchall())


def relations(db):
    return sorted(r[0] for r in db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')").fetchall())


def test_first_load_creates_typed_tables_with_indexes(target_db):
    payload = load_sample_payload()
    counts = load(target_db, payload)
    assert counts == {name: len(payload[name]) for name in TABLE_NAMES}
    with target_db.connect() as db:
        for table in TABLES:
            cols = columns(db, table.name)
            assert [c[0] for c in cols] == list(table.columns)
            assert cols[0][1:3] == ("text", "NO")
            for field, col in zip(table.fields, cols[1:]):
                assert col[1] == PG_TYPES[field.type], (table.name, field.name)
                assert col[2] == ("NO" if field.type == "boolean" else "YES"), (table.name, field.name)
                if field.type == "text[]":
                    assert col[5] == "_text"
                if field.type == "numeric(6,5)":
                    assert col[3:5] == (6, 5)
            expected = {f"{table.name}_pkey"} | {f"{table.name}_{f}_idx" for f in table.indexes}
            found = indexes(db, table.name)
            assert set(found) == expected
            for field in table.indexes:
                assert f'("{field}")' in found[f"{table.name}_{field}_idx"] or f"({field})" in found[f"{table.name}_{field}_idx"]
            assert db.execute(f'SELECT count(*) FROM public."{table.name}"').fetchone()[0] == len(payload[table.name])
        # nothing left behind: only the eight tables and their indexes
        assert not [r for r in relations(db) if "__lc_new" in r]
        assert sorted(r for r in relations(db) if not r.endswith(("_pkey", "_idx"))) == sorted(TABLE_NAMES)


def test_rows_keep_their_values(target_db):
    load(target_db, load_sample_payload())
    with target_db.connect() as db:
        row = db.execute(
            'SELECT "skillIds", "skillCount", "firstSkillId", "secondSkillId", languages, "hasEmbedUrl", focus, '
            '"autoReply", "isAwarenessChallenge", "createdAt", delta, "explicativeResponse", "contextualizedFields" '
            "FROM challenges WHERE id = 'recChal1'").fetchone()
        assert row == (["recSkill1"], 1, "recSkill1", None, ["fr", "fr-fr"], True, True, False, False,
                       datetime(2021, 3, 4, 10, 0, tzinfo=timezone.utc), Decimal("0.5"), "Wikipédia",
                       ["instruction", "illustration"])
        # booleans missing from the record are false, never null
        assert db.execute(
            'SELECT "autoReply", "hasEmbedUrl", "hasAlternativeInstruction", shuffled, "requireGafamWebsiteAccess" '
            "FROM challenges WHERE id = 'recChal2'").fetchone() == (False, False, False, False, False)
        assert db.execute("SELECT count(*) FROM challenges WHERE focus IS NULL OR shuffled IS NULL").fetchone() == (0,)
        # list to a non-array field: first element; scalar to an array field: one-element array
        assert db.execute("""SELECT "skillId", languages FROM challenges WHERE id IN ('recChal2', 'recChal3') ORDER BY id""").fetchall() == [
            ("recSkill3", ["fr"]), ("recSkill2", ["en"])]
        assert db.execute("""SELECT "pixValue", hint, "tutorialIds" FROM skills WHERE id = 'recSkill1'""").fetchone() == (
            Decimal("2.66667"), "Pensez aux mots-clés", ["recTuto1", "recTuto2"])
        assert db.execute("""SELECT hint FROM skills WHERE id = 'recSkill2'""").fetchone() == ('Utilisez les guillemets "exacts"',)
        assert db.execute("""SELECT name, code, "areaId" FROM competences WHERE id = 'recComp12'""").fetchone() == (
            "Gérer des données", "1.2", "recArea1")
        assert db.execute("""SELECT size FROM attachments ORDER BY id""").fetchall() == [(Decimal("48213"),), (Decimal("10240.5"),)]


def test_second_load_replaces_content_and_keeps_index_names(target_db):
    load(target_db, load_sample_payload())
    payload = load_sample_payload()
    payload["areas"] = [{"id": "recAreaX", "name": "X"}]
    payload["tutorials"] = []
    load(target_db, payload)
    with target_db.connect() as db:
        assert db.execute("SELECT id, name FROM areas").fetchall() == [("recAreaX", "X")]
        assert db.execute("SELECT count(*) FROM tutorials").fetchone() == (0,)
        assert set(indexes(db, "tutorials")) == {"tutorials_pkey", "tutorials_title_idx"}
        assert not [r for r in relations(db) if "__lc_new" in r]


def test_database_failure_in_a_late_table_keeps_every_previous_table(target_db, fingerprint):
    load(target_db, load_sample_payload())
    before = fingerprint(target_db)
    rows = map_payload(load_sample_payload())
    rows["areas"] = [("recNew", "new area")]           # would change an early table ...
    rows["tutorials"] = rows["tutorials"] + [rows["tutorials"][0]]   # ... but a late one has a duplicate id
    with target_db.connect() as conn, pytest.raises(LearningContentLoadError) as info:
        replace_tables(conn, rows)
    assert "table public.tutorials" in str(info.value)
    assert "previous content" in str(info.value)
    assert fingerprint(target_db) == before
    with target_db.connect() as db:
        assert not [r for r in relations(db) if "__lc_new" in r]


def test_leftover_staging_table_is_replaced(target_db):
    with target_db.connect() as db:
        db.execute('CREATE TABLE "areas__lc_new" (junk int)')
        db.commit()
    load(target_db, load_sample_payload())
    with target_db.connect() as db:
        assert db.execute("SELECT count(*) FROM areas").fetchone() == (2,)
        assert not [r for r in relations(db) if "__lc_new" in r]


def test_readers_see_old_content_until_commit(target_db):
    """While the new content is staged (uncommitted), another session still reads the old tables."""
    load(target_db, load_sample_payload())
    payload = load_sample_payload()
    payload["courses"] = [{"id": "recCourseNew", "name": "Nouveau"}]
    rows = map_payload(payload)
    with target_db.connect() as writer, target_db.connect(autocommit=True) as reader:
        from pgrepl.learning_content import loader

        seen = {}
        original = loader._swap

        def swap_and_peek(cur, table, schema, cascade=False):
            # called inside the writer's transaction: the reader must not see staging nor a missing table
            if table.name == "courses":
                seen["during"] = reader.execute("SELECT id FROM courses ORDER BY id").fetchall()
            return original(cur, table, schema, cascade)

        loader._swap = swap_and_peek
        try:
            replace_tables(writer, rows)
        finally:
            loader._swap = original
        assert seen["during"] == [("recCourse1",), ("recCourse2",)]
        assert reader.execute("SELECT id FROM courses").fetchall() == [("recCourseNew",)]


def test_views_on_a_table_block_the_swap_with_a_clear_error(target_db, fingerprint):
    load(target_db, load_sample_payload())
    with target_db.connect() as db:
        db.execute("CREATE VIEW skill_names AS SELECT name FROM skills")
        db.commit()
    before = fingerprint(target_db)
    with target_db.connect() as conn, pytest.raises(LearningContentLoadError, match="table public.skills") as info:
        replace_tables(conn, map_payload(load_sample_payload()))
    assert "skill_names" in str(info.value)
    assert fingerprint(target_db) == before
    # the seed's behaviour, on request: dependents are dropped with the old table
    with target_db.connect() as conn:
        replace_tables(conn, map_payload(load_sample_payload()), cascade=True)
    with target_db.connect() as db:
        assert db.execute("SELECT count(*) FROM pg_views WHERE viewname = 'skill_names'").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM skills").fetchone() == (3,)
