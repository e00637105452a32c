"""Readers never lose the warehouse (issue 14): a reader session counts rows every 50 ms during whole DAG runs.

Three nights of ``airflow dags test pg_replication`` (tests/airflow_helpers.py) on the Pix-like sample, with
``answers`` kept (``incremental``), learning content from a loopback API, and relations that only the warehouse
has: a table of the analysts and their views over a replaced and over the kept table.

1. night 1 fills the empty warehouse (yesterday);
2. the source gains users and answers; during night 2 a reader — a role of its own that reads through the default
   privileges the README recommends — runs ``select count(*)`` on each relation every 50 ms from before the run
   starts until after it ends: never an error, and every answer is yesterday's count then tonight's, never back;
3. night 3 fails in the restore, after its staging work began (the warehouse refuses the rows of a new table); the
   same reader sees night 2's counts only, and no staging or previous schema is left.

The longest select of each night is printed (the issue's figure: about a second on the sample), and asserted only
against a bound far above it — the switch's own lock timeout — so that the test cannot flake on a busy machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_helpers import dag_run_state, run_dag_test, task_states
from conftest import TEST_PASSWORD, table_fingerprint
from devenv.lcms_server import start_lcms_server
from night_readers import Reader, analyst_role, counts, describe, leftover_schemas, longest, reading_problems
from scheduler_harness import airflow_bin

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(airflow_bin() is None, reason="the airflow CLI is not installed"),
]

#: a table the restore replaces, one it keeps (BACKUP_MODE), one the learning-content step fills
REPLACED, KEPT, LEARNING = "users", "answers", "challenges"
#: relations only the warehouse has: an analysts' table, and their views over a replaced and over the kept table
OWN_TABLE, VIEW_OF_REPLACED, VIEW_OF_KEPT = "analyst_notes", "analyst_users", "analyst_answers"
RELATIONS = [REPLACED, KEPT, LEARNING, OWN_TABLE, VIEW_OF_REPLACED, VIEW_OF_KEPT]
#: the switch's lock timeout for these runs: the bound of a reader's wait (far above the ~1 s expected)
SWITCH_LOCK_TIMEOUT = 30
LCMS_KEY = "readers-lcms-key"


def url(conn) -> str:
    return f"postgresql://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


@pytest.fixture
def lcms():
    base_url, stop = start_lcms_server(LCMS_KEY)
    yield base_url
    stop()


@pytest.fixture
def nights(source_db, target_db, pg_cluster, lcms, tmp_path):
    """Run a night with ``nights(name)``; the environment is the DAG's, with one kept table."""
    env = {
        "SOURCE_DATABASE_URL": url(source_db),
        "TARGET_DATABASE_URL": url(target_db),
        "REPLICATION_WORK_DIR": str(tmp_path / "work"),
        "PG_RESTORE_JOBS": "2",
        "MAX_RETRY_COUNT": "0",
        "BACKUP_MODE": f'{{"{KEPT}": "incremental"}}',
        "LCMS_API_URL": lcms,
        "LCMS_API_KEY": LCMS_KEY,
        "SWITCH_LOCK_TIMEOUT": str(SWITCH_LOCK_TIMEOUT),
    }

    def run(name: str):
        result = run_dag_test("pg_replication", env, tmp_path / name)
        (tmp_path / f"{name}.log").write_text(result.stdout)
        return result

    return run


def warehouse_only_relations(target) -> None:
    """What analysts add to the warehouse: a table of their own and two views (created by the warehouse role)."""
    with target.connect() as db:
        db.execute(f"CREATE TABLE public.{OWN_TABLE} (id int PRIMARY KEY, note text)")
        db.execute(f"INSERT INTO public.{OWN_TABLE} SELECT g, 'note ' || g FROM generate_series(1, 17) g")
        db.execute(f"CREATE VIEW public.{VIEW_OF_REPLACED} AS SELECT id, email FROM public.{REPLACED}")
        db.execute(f"CREATE VIEW public.{VIEW_OF_KEPT} AS SELECT id, result FROM public.{KEPT}")
        db.commit()


def new_rows_at_the_source(source, users: int = 25, answers: int = 40) -> None:
    with source.connect() as db:
        db.execute("INSERT INTO users (\"firstName\", \"lastName\", email) "
                   "SELECT 'Night', 'Two', 'night-' || g || '-' || md5(random()::text) || '@example.net' "
                   "FROM generate_series(1, %s) g", (users,))
        db.execute("INSERT INTO answers (value, result, \"challengeId\") "
                   "SELECT 'v', 'ok', 'recNight' || g FROM generate_series(1, %s) g", (answers,))
        db.commit()


def refused_table(pg_cluster, source) -> None:
    """A new table whose CHECK reads a database setting only the source has: the warehouse refuses its rows, so the
    restore fails while it loads tonight's data (tests/safety/test_restore_failures.py does the same)."""
    pg_cluster.execute(f'ALTER DATABASE "{source.dbname}" SET pgrepl.allowed = \'on\'')
    with source.connect() as db:
        db.execute("""
            CREATE FUNCTION public.pgrepl_allowed() RETURNS boolean LANGUAGE sql STABLE
            AS $$ SELECT coalesce(current_setting('pgrepl.allowed', true), 'off') = 'on' $$;
            CREATE TABLE guarded (id int PRIMARY KEY, note text, CHECK (public.pgrepl_allowed()));
            INSERT INTO guarded SELECT g, 'row ' || g FROM generate_series(1, 100) g;
        """)
        db.commit()


def read_during(reader: Reader, run) -> tuple[list, object]:
    """Start ``reader``, wait (polling) until it reads, run the night, stop it: (samples, the run's result)."""
    reader.start()
    try:
        reader.wait_for_rounds(2)
        result = run()
    finally:
        samples = reader.stop()
    return samples, result


def test_readers_see_yesterday_then_tonight_and_never_an_error(nights, source_db, target_db, pg_cluster):
    first = nights("night1")
    assert dag_run_state(first) == "success", first.stdout[-5000:]
    warehouse_only_relations(target_db)
    analyst = analyst_role(pg_cluster, target_db, f"analyst_{target_db.dbname}")
    yesterday = counts(analyst, RELATIONS)  # the analyst reads everything, before any night it watches
    new_rows_at_the_source(source_db)
    tonight_source = counts(source_db, [REPLACED, KEPT])
    assert tonight_source[REPLACED] > yesterday[REPLACED] and tonight_source[KEPT] > yesterday[KEPT]

    # -- night 2: succeeds ------------------------------------------------------------------------------------
    samples, second = read_during(Reader(analyst, RELATIONS), lambda: nights("night2"))
    assert dag_run_state(second) == "success", second.stdout[-5000:]
    tonight = counts(analyst, RELATIONS)
    assert tonight[REPLACED] == tonight_source[REPLACED] == tonight[VIEW_OF_REPLACED]
    assert tonight[KEPT] == tonight_source[KEPT] == tonight[VIEW_OF_KEPT]
    assert tonight[LEARNING] == yesterday[LEARNING] and tonight[OWN_TABLE] == yesterday[OWN_TABLE]
    print(f"\nnight 2 (succeeds), {len(samples)} reads, longest select {longest(samples):.3f} s:\n"
          + describe(samples, RELATIONS))
    expected = {name: list(dict.fromkeys([yesterday[name], tonight[name]])) for name in RELATIONS}
    assert reading_problems(samples, expected) == [], describe(samples, RELATIONS)
    for name in RELATIONS:  # the reader saw the whole night: yesterday's warehouse first, tonight's last
        seen = [s.count for s in samples if s.relation == name]
        assert (seen[0], seen[-1]) == (yesterday[name], tonight[name]), (name, describe(samples, RELATIONS))
    assert longest(samples) < SWITCH_LOCK_TIMEOUT, describe(samples, RELATIONS)
    assert leftover_schemas(target_db) == []

    # -- night 3: the restore fails after its staging work began -----------------------------------------------
    before = table_fingerprint(target_db)
    new_rows_at_the_source(source_db, users=5, answers=7)
    refused_table(pg_cluster, source_db)
    samples, third = read_during(Reader(analyst, RELATIONS), lambda: nights("night3"))
    states = task_states(third)
    assert dag_run_state(third) == "failed", third.stdout[-5000:]
    assert states["restore"] == "failed", states
    assert "violates check constraint" in third.stdout, third.stdout[-5000:]
    print(f"night 3 (fails in the restore), {len(samples)} reads, longest select {longest(samples):.3f} s:\n"
          + describe(samples, RELATIONS))
    assert reading_problems(samples, {name: [tonight[name]] for name in RELATIONS}) == [], \
        describe(samples, RELATIONS)
    assert longest(samples) < SWITCH_LOCK_TIMEOUT, describe(samples, RELATIONS)
    assert table_fingerprint(target_db) == before
    assert counts(analyst, RELATIONS) == tonight
    assert leftover_schemas(target_db) == []
    with target_db.connect() as db:
        assert db.execute("SELECT count(*) FROM pg_class WHERE relname = 'guarded'").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM _pgrepl.lease").fetchone()[0] == 0


def test_reader_module_catches_a_missing_table():
    """The check itself can fail: an error, an unknown count, a count going back are each reported."""
    from night_readers import Sample

    samples = [Sample(1.0, "t", 10, None, 0.01), Sample(2.0, "t", None, 'relation "public.t" does not exist', 0.01),
               Sample(3.0, "t", 12, None, 0.01), Sample(4.0, "t", 10, None, 0.01), Sample(5.0, "t", 0, None, 0.01)]
    problems = reading_problems(samples, {"t": [10, 12], "u": [1]})
    assert len(problems) == 4, problems
    assert "does not exist" in problems[0] and "[0]" in problems[1] and "went back" in problems[2]
    assert problems[3] == "u: never read"
    assert reading_problems(samples[:1] + samples[2:3], {"t": [10, 12]}) == []


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([str(Path(__file__)), "-s", "-q"]))
