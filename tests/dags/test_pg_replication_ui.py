"""What the UI shows: descriptions in the DAG list, an explicit three-way choice for the foreign keys, Paris time."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags


def test_every_dag_has_a_description(dags):
    for dag_id, dag in dags.items():
        assert dag.description and 10 < len(dag.description) <= 200, dag_id


def test_fk_param_is_an_explicit_choice(dags):
    param = dags["pg_replication"].params.get_param("restore_fk_constraints")
    assert param.value == "as configured"
    assert param.schema["enum"] == ["as configured", "on", "off"]
    assert set(param.schema["values_display"]) == {"as configured", "on", "off"}
    assert "null" not in str(param.schema.get("type"))  # no switch that reads "off" when it means "the setting"
    param.resolve("off")
    with pytest.raises(Exception):
        param.resolve("maybe")


@pytest.mark.parametrize("value, expected", [("as configured", True), (None, True), ("on", True), ("off", False),
                                             (False, False)])
def test_fk_param_values(replication_env, monkeypatch, value, expected):
    from pgrepl.task_settings import replication_settings

    monkeypatch.setenv("RESTORE_FK_CONSTRAINTS", "true")
    assert replication_settings({"params": {"restore_fk_constraints": value}}).restore_fk_constraints is expected
    monkeypatch.setenv("RESTORE_FK_CONSTRAINTS", "false")
    if value in ("as configured", None):
        assert replication_settings({"params": {"restore_fk_constraints": value}}).restore_fk_constraints is False


def test_deadline_dag_follows_the_setting(dags):
    dag = dags["pg_replication_deadline"]
    assert getattr(dag.timetable, "expression", None) == "0 8 * * *" or "0 8 * * *" in str(dag.timetable.summary)
    assert str(dag.timezone.name if hasattr(dag.timezone, "name") else dag.timezone) == "Europe/Paris"
    assert [t.task_id for t in dag.tasks] == ["check_deadline"]


def test_paris_time_in_compose_and_readme():
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    assert compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__DEFAULT_TIMEZONE"] == "Europe/Paris"
    assert "AIRFLOW__CORE__DEFAULT_TIMEZONE=Europe/Paris" in (ROOT / "README.md").read_text()
