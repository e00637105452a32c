"""Every DAG of the package: imports cleanly, has its tags, owner, retries, and every SQL template loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgrepl.settings import retries_or_default, schedule_or_default

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_expected_dags(dagbag):
    assert {"pg_replication"} <= set(dagbag.dags)
    assert len(dagbag.dags) == len(DAG_FILES)


@pytest.mark.parametrize("dag_file", [p.name for p in DAG_FILES])
def test_dag_conventions(dagbag, dag_file):
    dags = [d for d in dagbag.dags.values() if Path(d.fileloc).name == dag_file]
    assert len(dags) == 1, f"{dag_file} defines {len(dags)} DAGs"
    dag = dags[0]
    assert dag.tags, "tags"
    assert dag.doc_md and dag.doc_md.strip(), "doc_md"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert str(dag.timezone) in ("Europe/Paris", "Timezone('Europe/Paris')") or getattr(dag.timezone, "name", "") == "Europe/Paris"
    for task in dag.tasks:
        assert task.owner == "data-engineering", task.task_id
        # the DAG's MAX_RETRY_COUNT with back-off, or 0 for the tasks a retry cannot help (said in the DAG file)
        assert task.retries in (0, retries_or_default()), f"{task.task_id}: retries={task.retries}"
        if task.retries:
            assert task.retry_exponential_backoff, task.task_id


@pytest.mark.parametrize("dag_file", [p.name for p in DAG_FILES])
def test_every_sql_template_loads(dagbag, dag_file):
    """Airflow loads template files at parse time and only logs a missing one: a value still ending in ``.sql``
    is a template that did not load. Every loaded template must also render."""
    dag = next(d for d in dagbag.dags.values() if Path(d.fileloc).name == dag_file)
    env = dag.get_template_env()
    for task in dag.tasks:
        for field in task.template_fields:
            value = getattr(task, field, None)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if not isinstance(item, str) or not task.template_ext:
                    continue
                assert not item.strip().endswith(tuple(task.template_ext)), f"{task.task_id}.{field}: {item} did not load"
                env.from_string(item).render(params={}, ds="2026-01-01")


def test_missing_template_is_detected(tmp_path):
    """The check above can fail: a WarehouseSQLOperator naming a missing file keeps the bare path."""
    from airflow.sdk import DAG

    from pgrepl.operators.dump_restore import WarehouseSQLOperator

    with DAG("probe", schedule=None, template_searchpath=[str(tmp_path)]) as dag:
        task = WarehouseSQLOperator(task_id="t", sql=["enrichment/missing.sql"])
    dag.resolve_template_files()
    assert task.sql == ["enrichment/missing.sql"]


def test_pg_replication_shape(dagbag):
    dag = dagbag.dags["pg_replication"]
    assert dag.schedule == schedule_or_default()  # SCHEDULE, or the seed's default
    upstream = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    assert upstream["dump"] == ["preflight"]
    assert upstream["restore"] == ["dump"]
    assert upstream["compat_views"] == ["restore"]
    assert upstream["enrichment"] == ["compat_views"]
    # materialized views over kept tables are refreshed once the incremental rows are in, even with no incremental table
    assert upstream["refresh_views"] == ["incremental", "restore"]
    assert upstream["kept_comments"] == ["refresh_views"]
    assert upstream["user_views"] == ["kept_comments"]
    assert upstream["learning_content"] == ["user_views"]
    assert dag.get_task("refresh_views").trigger_rule == "none_failed"
    assert dag.get_task("user_views").trigger_rule == "none_failed"
    assert dag.get_task("preflight").retries == 0
    assert dag.get_task("rollback").trigger_rule == "one_failed"
    assert dag.get_task("release").trigger_rule == "all_done"
    sql_files = [f"{folder}/{p.name}" for folder in ("indexes", "enrichment")
                 for p in sorted((ROOT / "include" / "sql" / folder).glob("*.sql"))]
    assert len(sql_files) >= 4  # the seed's four enrichment indexes at least
    assert dag.get_task("enrichment").files == sql_files


def test_schedule_from_setting(monkeypatch):
    from airflow_helpers import load_dag_file

    dag = load_dag_file(ROOT / "dags" / "pg_replication_dag.py", monkeypatch, SCHEDULE="0 3 * * *", MAX_RETRY_COUNT="2")
    assert dag.timetable.expression == "0 3 * * *"
    assert str(dag.timetable.timezone) in ("Europe/Paris", "Timezone('Europe/Paris')")
    assert dag.get_task("dump").retries == 2
