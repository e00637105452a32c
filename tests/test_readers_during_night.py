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

from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_helpers import dag_run_state, run_dag_test, task_states
from conftest import TEST_PASSWORD, table_fingerprint
from devenv.lcms_server import start_lcms_server
from dump_helpers import add_refused_table
from devenv.sample_data import load_sample
from night_readers import Reader, Sample, analyst_role, counts, describe, leftover_schemas, longest, reading_problems
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


@dataclass
class Nights:
    """What the module's three nights left: counts read by the analyst, each night's reader samples and results."""

    yesterday: dict[str, int]
    tonight: dict[str, int]
    tonight_source: dict[str, int]
    night2: list[Sample]
    night2_result: object
    night2_leftovers: list[str]
    before_night3: dict
    night3: list[Sample]
    night3_result: object
    after_night3: dict
    analyst: object
    target: object


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


def read_during(reader: Reader, run) -> tuple[list[Sample], object]:
    """Start ``reader``, wait (polling) until it reads, run the night, stop it: (samples, the run's result)."""
    reader.start()
    try:
        reader.wait_for_rounds(2)
        result = run()
    finally:
        samples = reader.stop()
    return samples, result


@pytest.fixture(scope="module")
def nights(pg_cluster, tmp_path_factory) -> Nights:
    """Night 1 (yesterday), night 2 read all along (succeeds), night 3 read all along (fails in the restore)."""
    base = tmp_path_factory.mktemp("readers")
    source = pg_cluster.create_database("readers_source", "readers_source_owner", TEST_PASSWORD)
    load_sample(source, scale=0.002)
    target = pg_cluster.create_database("readers_warehouse", "readers_warehouse_owner", TEST_PASSWORD)
    base_url, stop_lcms = start_lcms_server(LCMS_KEY)
    env = {
        "SOURCE_DATABASE_URL": url(source),
        "TARGET_DATABASE_URL": url(target),
        "REPLICATION_WORK_DIR": str(base / "work"),
        "PG_RESTORE_JOBS": "2",
        "MAX_RETRY_COUNT": "0",
        "BACKUP_MODE": f'{{"{KEPT}": "incremental"}}',
        "LCMS_API_URL": base_url,
        "LCMS_API_KEY": LCMS_KEY,
        "SWITCH_LOCK_TIMEOUT": str(SWITCH_LOCK_TIMEOUT),
    }

    def run(name: str):
        result = run_dag_test("pg_replication", env, base / name)
        (base / f"{name}.log").write_text(result.stdout)
        return result

    try:
        first = run("night1")
        if dag_run_state(first) != "success":
            pytest.fail(f"night 1 failed:\n{first.stdout[-5000:]}", pytrace=False)
        warehouse_only_relations(target)
        analyst = analyst_role(pg_cluster, target, "readers_analyst")
        yesterday = counts(analyst, RELATIONS)  # the analyst reads everything, before any night it watches
        new_rows_at_the_source(source)
        tonight_source = counts(source, [REPLACED, KEPT])
        night2, second = read_during(Reader(analyst, RELATIONS), lambda: run("night2"))
        print(f"\nnight 2 (succeeds), {len(night2)} reads, longest select {longest(night2):.3f} s:\n"
              + describe(night2, RELATIONS))
        if dag_run_state(second) != "success":
            pytest.fail(f"night 2 failed:\n{second.stdout[-5000:]}", pytrace=False)
        tonight = counts(analyst, RELATIONS)
        leftovers = leftover_schemas(target)
        before = table_fingerprint(target)
        new_rows_at_the_source(source, users=5, answers=7)
        add_refused_table(pg_cluster, source)
        night3, third = read_during(Reader(analyst, RELATIONS), lambda: run("night3"))
        print(f"night 3 (fails in the restore), {len(night3)} reads, longest select {longest(night3):.3f} s:\n"
              + describe(night3, RELATIONS))
        yield Nights(yesterday, tonight, tonight_source, night2, second, leftovers, before, night3, third,
                     table_fingerprint(target), analyst, target)
    finally:
        stop_lcms()
        for name in ("readers_source", "readers_warehouse"):
            pg_cluster.drop_database(name)


def test_tables_read_yesterday_then_tonight_and_never_an_error(nights):
    """Night 2: replaced, kept, learning-content and analysts' tables answer at every read, yesterday's count until
    the switch (the kept table: until its incremental copy), tonight's after, never back; the longest select stays
    far below the switch's lock timeout (printed; ~1 s expected)."""
    y, t, samples = nights.yesterday, nights.tonight, nights.night2
    assert t[REPLACED] == nights.tonight_source[REPLACED] and t[KEPT] == nights.tonight_source[KEPT]
    assert (t[LEARNING], t[OWN_TABLE]) == (y[LEARNING], y[OWN_TABLE])
    tables = [REPLACED, KEPT, LEARNING, OWN_TABLE]
    assert reading_problems(samples, {n: list(dict.fromkeys([y[n], t[n]])) for n in tables}) == [], \
        describe(samples, RELATIONS)
    for name in tables:  # the reader saw the whole night: yesterday's warehouse first, tonight's last
        seen = [s.count for s in samples if s.relation == name]
        assert (seen[0], seen[-1]) == (y[name], t[name]), (name, describe(samples, RELATIONS))
    assert longest(samples) < SWITCH_LOCK_TIMEOUT, describe(samples, RELATIONS)
    assert nights.night2_leftovers == []


def test_users_views_answer_all_night(nights):
    """Night 2: the analysts' views over a replaced and over the kept table answer at every read, yesterday's rows
    then tonight's ("views over them keep working")."""
    y, t, samples = nights.yesterday, nights.tonight, nights.night2
    assert (t[VIEW_OF_REPLACED], t[VIEW_OF_KEPT]) == (t[REPLACED], t[KEPT])
    views = [VIEW_OF_REPLACED, VIEW_OF_KEPT]
    assert reading_problems(samples, {n: list(dict.fromkeys([y[n], t[n]])) for n in views}) == [], \
        describe(samples, views)


def test_a_failed_night_changes_nothing_readers_see(nights):
    """Night 3 fails in the restore, after its staging work began: every read of every relation is night 2's
    count; afterwards the warehouse is night 2's, with no staging or previous schema and no lease left."""
    result, samples = nights.night3_result, nights.night3
    states = task_states(result)
    assert dag_run_state(result) == "failed", result.stdout[-5000:]
    assert states["restore"] == "failed", states
    assert "violates check constraint" in result.stdout, result.stdout[-5000:]
    assert reading_problems(samples, {n: [nights.tonight[n]] for n in RELATIONS}) == [], describe(samples, RELATIONS)
    assert longest(samples) < SWITCH_LOCK_TIMEOUT, describe(samples, RELATIONS)
    assert nights.after_night3 == nights.before_night3
    assert counts(nights.analyst, RELATIONS) == nights.tonight
    assert leftover_schemas(nights.target) == []
    with nights.target.connect() as db:
        assert db.execute("SELECT count(*) FROM pg_class WHERE relname = 'guarded'").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM _pgrepl.lease").fetchone()[0] == 0


def test_reader_module_catches_a_missing_table():
    """The check itself can fail: an error, an unknown count, a count going back are each reported."""
    samples = [Sample(1.0, "t", 10, None, 0.01), Sample(2.0, "t", None, 'relation "public.t" does not exist', 0.01),
               Sample(3.0, "t", 12, None, 0.01), Sample(4.0, "t", 10, None, 0.01), Sample(5.0, "t", 0, None, 0.01)]
    problems = reading_problems(samples, {"t": [10, 12], "u": [1]})
    assert len(problems) == 4, problems
    assert "does not exist" in problems[0] and "[0]" in problems[1] and "went back" in problems[2]
    assert problems[3] == "u: never read"
    assert reading_problems(samples[:1] + samples[2:3], {"t": [10, 12]}) == []


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([str(Path(__file__)), "-s", "-q"]))
