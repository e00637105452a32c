"""Users' own views and materialized views survive the nightly swap (real PostgreSQL, full nights).

The warehouse of each test holds, besides what the source gives: a view in ``public`` over a replaced table (owned
by an analyst role, granted to a reader, commented), one using an enum type the dump replaces, a materialized view
in ``analytics`` with a unique index, a grant and a comment, one ``WITH NO DATA``, views on views (one in another
schema reading a public user view, one reading the materialized view), a view owned by a role the warehouse role
cannot become, and one reading a column the source drops before night 2.
"""

from __future__ import annotations

import glob
import os

import pytest
from dump_helpers import break_biggest_data_file

from conftest import TEST_PASSWORD
from pgrepl import fullcopy, notify, swap, user_views
from pgrepl.settings import ReplicationSettings


def release(target_db, run_id):
    with target_db.connect() as db:
        swap.release_lease(db, run_id)


def rows(conn, query, params=None):
    with conn.connect() as db:
        return db.execute(query, params).fetchall()


@pytest.fixture
def roles(pg_cluster, target_db):
    """``{"analyst", "reader", "outsider"}`` roles of this warehouse; the warehouse role is a member of analyst only."""
    names = {kind: f"{kind}_{target_db.dbname}" for kind in ("analyst", "reader", "outsider")}
    for name in names.values():
        pg_cluster.execute(f'CREATE ROLE "{name}" LOGIN PASSWORD \'{TEST_PASSWORD}\'')
    pg_cluster.execute(f'GRANT "{names["analyst"]}" TO "{target_db.user}"')
    yield names
    pg_cluster.execute(f'DROP DATABASE IF EXISTS "{target_db.dbname}" WITH (FORCE)')
    for name in names.values():
        pg_cluster.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture
def settings(source_db, target_db, tmp_path):
    with source_db.connect() as db:
        db.execute("""
            CREATE TYPE mood AS ENUM ('ok', 'ko');
            CREATE TABLE moods (id int PRIMARY KEY, mood mood NOT NULL);
            INSERT INTO moods VALUES (1, 'ok'), (2, 'ko'), (3, 'ok');
            ALTER TABLE users ADD COLUMN legacy_code text;
            UPDATE users SET legacy_code = 'L' || id;
        """)
        db.commit()
    return ReplicationSettings(source=source_db, target=target_db, work_dir=str(tmp_path / "work"), jobs=2)


USER_VIEWS = {
    "public.even_users", "public.ok_moods", "analytics.answer_stats", "analytics.busy_assessments",
    "analytics.even_user_count", "analytics.not_yet", "analytics.outsiders", "analytics.legacy", "analytics.checked",
}


def create_user_views(pg_cluster, target_db, roles) -> None:
    analyst, reader, outsider = roles["analyst"], roles["reader"], roles["outsider"]
    with target_db.connect() as db:
        db.execute(f"""
            GRANT CREATE ON SCHEMA public TO "{analyst}";
            CREATE SCHEMA analytics;
            GRANT USAGE, CREATE ON SCHEMA analytics TO "{analyst}", "{outsider}";
            GRANT USAGE ON SCHEMA analytics TO "{reader}";
            ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO "{analyst}", "{outsider}";
            GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{analyst}", "{outsider}";

            CREATE VIEW public.even_users AS SELECT id, email FROM public.users WHERE id % 2 = 0;
            COMMENT ON VIEW public.even_users IS 'users with an even id';
            COMMENT ON COLUMN public.even_users.email IS 'their e-mail';
            ALTER VIEW public.even_users OWNER TO "{analyst}";
            GRANT SELECT ON public.even_users TO "{reader}";

            CREATE VIEW public.ok_moods AS SELECT id, mood FROM public.moods WHERE mood = 'ok'::public.mood;

            CREATE MATERIALIZED VIEW analytics.answer_stats AS
                SELECT "assessmentId", count(*) AS answers FROM public.answers GROUP BY 1;
            CREATE UNIQUE INDEX answer_stats_assessment ON analytics.answer_stats ("assessmentId");
            COMMENT ON MATERIALIZED VIEW analytics.answer_stats IS 'answers per assessment';
            ALTER MATERIALIZED VIEW analytics.answer_stats OWNER TO "{analyst}";
            GRANT SELECT ON analytics.answer_stats TO "{reader}";

            CREATE VIEW analytics.busy_assessments AS
                SELECT "assessmentId" FROM analytics.answer_stats WHERE answers > 1;
            CREATE VIEW analytics.even_user_count AS SELECT count(*) AS n FROM public.even_users;
            CREATE MATERIALIZED VIEW analytics.not_yet AS SELECT id FROM public.users WITH NO DATA;
            CREATE VIEW analytics.legacy AS SELECT id, legacy_code FROM public.users;
            CREATE VIEW analytics.checked WITH (security_barrier) AS
                SELECT id, email FROM public.users WHERE id > 0 WITH LOCAL CHECK OPTION;
            CREATE VIEW analytics.outsiders AS SELECT id FROM public.users WHERE id < 10;
        """)
        db.commit()
    pg_cluster.execute(f'ALTER VIEW analytics.outsiders OWNER TO "{outsider}"', dbname=target_db.dbname)


def views_state(target_db) -> dict:
    """Every user view: kind, owner, ACL, comment, populated, row count (when readable), indexes, column comments."""
    state = {}
    for schema, name, kind, owner, acl, comment, populated, options in rows(target_db, """
            SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl::text[],
                   obj_description(c.oid, 'pg_class'), c.relispopulated, c.reloptions
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('v', 'm') AND n.nspname IN ('public', 'analytics')"""):
        full = f"{schema}.{name}"
        if full not in USER_VIEWS:
            continue
        count = None
        if populated and name != "outsiders":
            count = rows(target_db, f'SELECT count(*) FROM "{schema}"."{name}"')[0][0]
        indexes = sorted(r[0] for r in rows(target_db, "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s", (schema, name)))
        columns = rows(target_db, "SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
                                  "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND col_description(a.attrelid, a.attnum) IS NOT NULL",
                       (f'"{schema}"."{name}"',))
        state[full] = {"kind": kind, "owner": owner, "acl": sorted(acl or []), "comment": comment, "options": options,
                       "populated": populated, "count": count, "indexes": indexes, "column_comments": columns}
    return state


def test_users_views_survive_three_nights(pg_cluster, roles, settings, source_db, target_db):
    fullcopy.run_full_copy(settings, "night1")
    create_user_views(pg_cluster, target_db, roles)
    before = views_state(target_db)
    assert set(before) == USER_VIEWS
    assert before["analytics.checked"]["options"] == ["security_barrier=true", "check_option=local"]
    assert before["analytics.answer_stats"]["count"] > 0

    # night 2: the source moves on; it drops the column analytics.legacy reads
    with source_db.connect() as db:
        db.execute("ALTER TABLE users DROP COLUMN legacy_code")
        db.execute("INSERT INTO answers (\"challengeId\", \"assessmentId\") SELECT 'new', id FROM assessments LIMIT 3")
        db.execute("INSERT INTO moods VALUES (4, 'ok')")
        db.commit()
    result = fullcopy.run_full_copy(settings, "night2")
    views = result["user_views"]
    assert sorted(views["recreated"]) == sorted(USER_VIEWS - {"analytics.legacy"})
    assert [f["view"] for f in views["failed"]] == ["analytics.legacy"]
    assert "legacy_code" in views["failed"][0]["error"]
    assert views["owner_not_restored"] == [
        {"view": "analytics.outsiders", "owner": roles["outsider"], "error": views["owner_not_restored"][0]["error"]}]

    after = views_state(target_db)
    assert set(after) == USER_VIEWS - {"analytics.legacy"}
    for name in USER_VIEWS - {"analytics.legacy", "analytics.outsiders", "analytics.answer_stats", "public.ok_moods"}:
        assert after[name] == before[name], name
    # the materialized view holds tonight's rows (3 answers more), keeps its index, grant, comment, owner
    stats_before, stats_after = before["analytics.answer_stats"], after["analytics.answer_stats"]
    assert {k: v for k, v in stats_after.items() if k != "count"} == {k: v for k, v in stats_before.items() if k != "count"}
    assert stats_after["indexes"] == ["answer_stats_assessment"]
    assert rows(target_db, 'SELECT sum(answers) FROM analytics.answer_stats')[0][0] == rows(source_db, "SELECT count(*) FROM answers")[0][0]
    assert after["public.ok_moods"]["count"] == before["public.ok_moods"]["count"] + 1
    assert after["analytics.not_yet"]["populated"] is False
    # the outsider's view: owned by the warehouse role now, the outsider keeps reading it by grant
    assert after["analytics.outsiders"]["owner"] == target_db.user
    outsider = target_db.__class__(host=target_db.host, port=target_db.port, dbname=target_db.dbname,
                                   user=roles["outsider"], password=TEST_PASSWORD)
    assert rows(outsider, "SELECT count(*) FROM analytics.outsiders")[0][0] > 0
    reader = target_db.__class__(host=target_db.host, port=target_db.port, dbname=target_db.dbname,
                                 user=roles["reader"], password=TEST_PASSWORD)
    assert rows(reader, "SELECT count(*) FROM analytics.answer_stats")[0][0] > 0
    assert rows(reader, "SELECT count(*) FROM public.even_users")[0][0] > 0
    # the broken one's definition is kept, tried again (and reported) every night
    assert rows(target_db, "SELECT state, definition LIKE '%legacy_code%' FROM _pgrepl.user_views") == [("broken", True)]
    # the swap's bookkeeping is clean; the source's own view and the compat view are there, not taken for users'
    assert rows(target_db, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_prev%'")[0][0] == 0
    assert {"active-users", "schooling-registrations"} <= {r[0] for r in rows(target_db, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")}

    # night 3: the same views again; the broken one is reported again
    third = fullcopy.run_full_copy(settings, "night3")["user_views"]
    assert sorted(third["recreated"]) == sorted(USER_VIEWS - {"analytics.legacy"})
    assert [f["view"] for f in third["failed"]] == ["analytics.legacy"]
    assert third["failed"][0]["broken_since"] == views["failed"][0]["broken_since"]
    assert views_state(target_db) == {**after, "analytics.answer_stats": views_state(target_db)["analytics.answer_stats"]}

    # the run summary names them
    summary = notify.run_summary("pg_replication", "night3", "success", {}, user_views=third)
    assert summary["user_views"]["failed"] == [{"view": "analytics.legacy", "error": third["failed"][0]["error"],
                                                "broken_since": third["failed"][0]["broken_since"]}]
    assert "analytics.answer_stats" in summary["user_views"]["recreated"]

    # a view recreated by hand under the broken one's name ends its story
    with target_db.connect() as db:
        db.execute("CREATE VIEW analytics.legacy AS SELECT id FROM public.users")
        db.commit()
    fourth = fullcopy.run_full_copy(settings, "night4")["user_views"]
    assert fourth["failed"] == []
    assert "analytics.legacy" in fourth["recreated"]
    assert rows(target_db, "SELECT count(*) FROM _pgrepl.user_views")[0][0] == 0


def test_failed_night_leaves_users_views_as_they_were(pg_cluster, roles, settings, source_db, target_db):
    fullcopy.run_full_copy(settings, "good")
    create_user_views(pg_cluster, target_db, roles)
    oids = rows(target_db, "SELECT oid, relname FROM pg_class WHERE relkind IN ('v', 'm') ORDER BY 2")
    before = views_state(target_db)
    fullcopy.dump(settings, "bad")
    break_biggest_data_file(os.path.join(settings.work_dir, "bad", "dump"))  # pg_restore fails mid-way
    with pytest.raises(RuntimeError, match="command failed"):
        fullcopy.restore(settings, "bad", "bad-run")
    release(target_db, "bad-run")
    # the very same objects (same oids), same data, same grants; nothing left to recreate
    assert rows(target_db, "SELECT oid, relname FROM pg_class WHERE relkind IN ('v', 'm') ORDER BY 2") == oids
    assert views_state(target_db) == before
    assert rows(target_db, "SELECT count(*) FROM _pgrepl.user_views")[0][0] == 0
    assert user_views.recreate(settings)["recreated"] == []
    # and the next night keeps them
    fullcopy.run_full_copy(settings, "next")
    assert set(views_state(target_db)) == USER_VIEWS


def test_saved_in_the_swap_transaction_and_recreated_after_a_crash(pg_cluster, roles, settings, target_db):
    """A worker dies after the restore finalized the swap, before the views were recreated: the definitions wait in
    ``_pgrepl.user_views``; the next night (or a cleared task) recreates them."""
    fullcopy.run_full_copy(settings, "good")
    create_user_views(pg_cluster, target_db, roles)
    before = views_state(target_db)
    fullcopy.dump(settings, "crash")
    fullcopy.restore(settings, "crash", "crash-run")  # switched; the user_views step never runs
    release(target_db, "crash-run")
    # the plain views that compile came back inside the switch's transaction (readers never missed them); the
    # materialized ones (they wait for tonight's incremental rows) and the one that no longer compiles wait
    saved = dict((f"{s}.{n}", (k, state)) for s, n, k, state in rows(
        target_db, "SELECT schema_name, view_name, kind, state FROM _pgrepl.user_views"))
    assert set(saved) == USER_VIEWS
    switched = {v for v, (kind, state) in saved.items() if state == "switched"}
    assert switched and all(saved[v][0] == "v" for v in switched)
    assert {v for v, (kind, state) in saved.items() if state == "dropped"} == USER_VIEWS - switched
    assert any(kind == "m" for kind, _ in saved.values())
    assert set(views_state(target_db)) == switched
    fullcopy.run_full_copy(settings, "next")
    after = views_state(target_db)
    assert set(after) == USER_VIEWS
    assert after["public.even_users"] == before["public.even_users"]


def test_project_and_source_views_are_not_users(settings, source_db, target_db):
    """The compat view and the source's views come back from the dump/compat step, never from ``_pgrepl``; a view
    the source drops is not brought back as a user's."""
    with source_db.connect() as db:
        db.execute("CREATE VIEW source_only AS SELECT id FROM users")
        db.commit()
    fullcopy.run_full_copy(settings, "one")
    with source_db.connect() as db:
        db.execute("DROP VIEW source_only")
        db.commit()
    result = fullcopy.run_full_copy(settings, "two")
    assert result["user_views"]["recreated"] == []
    names = {r[0] for r in rows(target_db, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert "source_only" not in names
    assert {"active-users", "schooling-registrations"} <= names


def test_project_views_are_the_compat_ones(project_root):
    compat = "\n".join((project_root / "include/sql/compat" / f).read_text() for f in os.listdir(project_root / "include/sql/compat"))
    for schema, name in user_views.PROJECT_VIEWS:
        assert f'{schema}."{name}"' in compat


def test_dependency_order():
    assert user_views.dependency_order([3, 1, 2], {3: [2], 2: [1]}) == [1, 2, 3]
    assert user_views.dependency_order([1, 2], {1: [2], 2: [1]}) == [2, 1]  # a cycle cannot happen; no hang
    assert user_views.dependency_order([5, 4], {}) == [5, 4]
