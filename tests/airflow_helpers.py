"""Run a DAG end to end with ``airflow dags test`` in a subprocess, on a throwaway SQLite metadata DB.

Airflow reads ``AIRFLOW_HOME`` and its database URL once, at import: a subprocess keeps the test process
clean and lets each test have its own metadata. ``airflow db migrate`` runs once per test session into a
template database that each run copies (a migration takes tens of seconds, a copy milliseconds).

Usage::

    from airflow_helpers import run_dag_test, task_states
    result = run_dag_test("schema_export", {"DB_SCHEMA_EXPORTER_ENABLED": "false"}, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert task_states(result) == {"export_schema": "skipped"}
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from devenv.airflow_runner import last_run

ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = ROOT / "dags"
PLUGINS_FOLDER = ROOT / "plugins"
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")

_template_lock = threading.Lock()
_template_db: Path | None = None


def airflow_env(airflow_home: Path, extra: dict | None = None) -> dict:
    """Environment of an Airflow CLI subprocess: own home, SQLite metadata, the project's dags and plugins."""
    from devenv.airflow_runner import airflow_env as project_airflow_env

    return project_airflow_env(airflow_home, {k: str(v) for k, v in (extra or {}).items()})


def migrated_template(timeout: float = 300) -> Path:
    """Path of a migrated SQLite metadata DB, built once per process (thread-safe)."""
    global _template_db
    with _template_lock:
        if _template_db is None or not _template_db.exists():
            home = Path(tempfile.mkdtemp(prefix="pgrepl-airflow-template-"))
            proc = subprocess.run([str(AIRFLOW_BIN), "db", "migrate"], env=airflow_env(home), capture_output=True,
                                  text=True, timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            _template_db = home / "airflow.db"
        return _template_db


def run_dag_test(dag_id: str, env: dict, tmp_path: Path, conf: dict | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """``airflow dags test dag_id`` with ``env`` added to a clean Airflow environment.

    ``tmp_path / "airflow-home"`` becomes ``AIRFLOW_HOME`` (metadata DB copied from the migrated template).
    The result's ``stdout`` holds stdout and stderr merged (the task logs); its ``returncode`` is the
    CLI's. Use :func:`task_states` / :func:`dag_run_state` for the outcome: they read the metadata DB.
    """
    home = Path(tmp_path) / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_template(), home / "airflow.db")
    argv = [str(AIRFLOW_BIN), "dags", "test", dag_id]
    if conf is not None:
        argv += ["--conf", json.dumps(conf)]
    proc = subprocess.run(argv, env=airflow_env(home, env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, cwd=str(tmp_path))
    proc.airflow_home = home  # type: ignore[attr-defined]
    return proc


def load_dag_file(path: Path, monkeypatch, **env):
    """Execute a DAG file afresh under ``env`` (set with ``monkeypatch``) and return its module-level ``dag``:
    what a parse with those settings gives (schedule, retries ...)."""
    import importlib.util

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(f"{Path(path).stem}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _metadata(result_or_home) -> sqlite3.Connection:
    home = getattr(result_or_home, "airflow_home", result_or_home)
    return sqlite3.connect(Path(home) / "airflow.db")


def task_states(result_or_home, dag_id: str | None = None) -> dict[str, str]:
    """``{task_id (with map index when mapped): state}`` of the last run recorded in the metadata DB."""
    with _metadata(result_or_home) as db:
        last = last_run(db, dag_id)
        if last is None:
            return {}
        rows = db.execute("SELECT task_id, map_index, state FROM task_instance WHERE run_id = ? AND dag_id = ?",
                          last[:2]).fetchall()
    return {(task if index < 0 else f"{task}[{index}]"): state for task, index, state in rows}


def dag_run_state(result_or_home, dag_id: str | None = None) -> str | None:
    """State of the last DAG run recorded in the metadata DB (``success``, ``failed`` ...)."""
    with _metadata(result_or_home) as db:
        last = last_run(db, dag_id)
    return last[2] if last else None


def conn_uri_env(conn_id: str, uri: str) -> dict:
    """``{"AIRFLOW_CONN_<ID>": uri}``: an Airflow connection defined by environment."""
    return {f"AIRFLOW_CONN_{conn_id.upper()}": uri}
