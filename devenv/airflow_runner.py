"""Run a DAG of this package through ``airflow dags test`` in a throwaway AIRFLOW_HOME (SQLite metadata).

Used by the demo and the end-to-end tests; nothing here runs inside a deployment.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def airflow_env(home: Path, extra: dict | None = None, base: dict | None = None) -> dict:
    """Environment of an isolated Airflow: SQLite metadata in ``home``, this project's DAGs, no examples.

    :param base: the environment to start from (default: this process's), less its Airflow variables
    """
    base = os.environ if base is None else base
    env = {
        k: v for k, v in base.items()
        if not k.startswith("AIRFLOW_CONN_") and not k.startswith("AIRFLOW__") and k != "AIRFLOW_HOME"
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "plugins"), base.get("PYTHONPATH")])),
            "PYTHONWARNINGS": "ignore",
        }
    )
    env.update(extra or {})
    return env


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def migrate(env: dict) -> None:
    """Create the metadata database (idempotent)."""
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    result = subprocess.run([airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def dags_test(dag_id: str, env: dict, conf: dict | None = None, log_path: Path | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess:
    """``airflow dags test <dag_id>``; output also written to ``log_path``."""
    cmd = [airflow_bin(), "dags", "test", dag_id]
    if conf:
        cmd += ["--conf", json.dumps(conf)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if log_path:
        log_path.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    return result


def last_run(db: sqlite3.Connection, dag_id: str | None = None) -> tuple | None:
    """``(run_id, dag_id, state)`` of the last DAG run in the metadata DB ``db`` (of ``dag_id`` when given)."""
    query, params = "SELECT run_id, dag_id, state FROM dag_run", ()
    if dag_id:
        query, params = query + " WHERE dag_id = ?", (dag_id,)
    return db.execute(query + " ORDER BY id DESC LIMIT 1", params).fetchone()


def task_instances(home: Path, dag_id: str) -> list[dict]:
    """Task instances of the latest run of ``dag_id``: task_id, map_index, state, duration, try_number."""
    with sqlite3.connect(home / "airflow.db") as db:
        last = last_run(db, dag_id)
        if not last:
            return []
        rows = db.execute(
            "SELECT task_id, map_index, state, duration, try_number FROM task_instance "
            "WHERE run_id = ? AND dag_id = ? ORDER BY start_date, task_id, map_index",
            last[:2],
        ).fetchall()
    return [dict(zip(("task_id", "map_index", "state", "duration", "try_number"), r)) for r in rows]


def dag_run_state(home: Path, dag_id: str) -> str | None:
    with sqlite3.connect(home / "airflow.db") as db:
        last = last_run(db, dag_id)
    return last[2] if last else None
