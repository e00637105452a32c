"""The README's "Run it for real on one machine" runs as written.

The test lays out a clone in a temporary folder (symlinks to dags/, plugins/, include/, the Makefile, the
requirements and the installed .venv; a copy of .env.sample), runs the README's first-time lines (``make install``
is then a no-op, ``cp -n .env.sample .env``) and the block between ``<!-- one-machine:begin -->`` and
``<!-- one-machine:end -->`` verbatim with bash, on the sample ``.env`` as shipped. What an operator would add
comes from the environment, as the README allows: the two database URLs (the sample has them commented out) and
free ports for the api-server and the log servers (8080/8793/8794 may be taken on a shared machine). Then it waits
for the triggered run to succeed and stops every process the block started.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, TEST_PASSWORD
from devenv.sample_data import load_sample
from scheduler_harness import airflow_bin, free_port

pytestmark = [pytest.mark.skipif(airflow_bin() is None, reason="the airflow CLI is not installed"), pytest.mark.e2e]

README = ROOT / "README.md"


def readme_block(marker: str = "one-machine") -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker}:begin -->\s*```bash\n(.*?)```\s*<!-- {marker}:end -->", text, re.S)
    assert match, f"README.md has no ```bash block between <!-- {marker}:begin/end --> markers"
    return match.group(1)


def first_time_lines() -> list[str]:
    """The commands of the block just before the marker (install, copy the sample)."""
    text = README.read_text()
    before = text[: text.index("<!-- one-machine:begin -->")]
    block = before[before.rindex("```bash\n") + len("```bash\n"): before.rindex("```")]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def own_pids(marker: str, folder: Path | None = None) -> list[int]:
    """Processes of the recipe: ``marker`` (``AIRFLOW_HOME=...``) in their environment, or running in ``folder``.
    The api-server's processes are found by the second: the title it gives itself (``airflow api_server -- host:...``)
    overwrites the memory ``/proc/<pid>/environ`` reads, and a test that missed them left one running."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
            elif folder is not None and Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_first_time_lines_are_what_the_test_runs():
    assert first_time_lines() == ["make install", "cp -n .env.sample .env"]
    block = readme_block()
    for needed in ("PATH=$PWD/.venv/bin:$PATH", "AIRFLOW__API__BASE_URL", "/execution/health", "airflow dags unpause pg_replication",
                   "airflow dags trigger pg_replication", "airflow scheduler", "airflow dag-processor", "airflow api-server"):
        assert needed in block, needed


def test_readme_one_machine_recipe_runs_as_written(pg_cluster, tmp_path):
    source = pg_cluster.create_database("readme_source", "readme_source_owner", TEST_PASSWORD)
    load_sample(source, scale=0.002)
    target = pg_cluster.create_database("readme_warehouse", "readme_warehouse_owner", TEST_PASSWORD)
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("dags", "plugins", "include", "Makefile", "requirements.txt", "requirements-dev.txt", ".venv"):
        (clone / name).symlink_to(ROOT / name)
    (clone / ".env.sample").write_text((ROOT / ".env.sample").read_text())
    home = clone / "airflow-home"
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PGREPL_"))}
    env.update({
        "PATH": "/usr/local/bin:/usr/bin:/bin",  # the README puts .venv/bin first itself
        "SOURCE_DATABASE_URL": f"postgresql://{source.user}:{TEST_PASSWORD}@{source.host}:{source.port}/{source.dbname}",
        "DATABASE_URL": f"postgresql://{target.user}:{TEST_PASSWORD}@{target.host}:{target.port}/{target.dbname}",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "PG_RESTORE_JOBS": "2",
    })
    for name in ("PYTHONPATH", "TARGET_DATABASE_URL", "BACKUP_MODE", "NOTIFICATIONS", "LCMS_API_URL", "LCMS_API_KEY",
                 "REPLICATION_WORK_DIR"):  # only what the sample and the two URLs say
        env.pop(name, None)
    script = "set -e\n" + "\n".join(first_time_lines()) + "\n" + readme_block()
    marker = f"AIRFLOW_HOME={home}"
    out = tmp_path / "recipe.out"
    with open(out, "wb") as log:
        recipe = subprocess.run(["bash", "-c", script], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=600, start_new_session=True)
    try:
        assert recipe.returncode == 0, out.read_text()[-4000:]
        db = home / "airflow.db"
        deadline = time.monotonic() + 420
        state = None
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                rows = conn.execute("SELECT state FROM dag_run WHERE dag_id = 'pg_replication' AND run_type = 'manual'").fetchall()
            state = rows[0][0] if rows else None
            if state in ("success", "failed"):
                break
            time.sleep(2)
        logs = "\n".join(f"--- {p.name} ---\n" + p.read_text(errors="replace")[-3000:]
                         for p in sorted(home.glob("*.log")))
        assert state == "success", f"triggered run: {state}\n{out.read_text()[-2000:]}\n{logs}"
        # unpausing ran the slots already passed today too: they waited for the api-server, and succeeded
        with sqlite3.connect(db) as conn:
            wait = time.monotonic() + 240
            while time.monotonic() < wait:
                runs = conn.execute("SELECT dag_id, run_type, state FROM dag_run ORDER BY dag_id, run_type").fetchall()
                if all(r[2] in ("success", "failed") for r in runs):
                    break
                time.sleep(2)
        assert {(dag, kind) for dag, kind, _ in runs} >= {("pg_replication", "scheduled"), ("pg_replication", "manual"),
                                                          ("pg_replication_deadline", "scheduled")}, runs
        assert all(r[2] == "success" for r in runs), f"{runs}\n{logs}"
        assert (home / "pgrepl-work").is_dir()  # the default work folder, no compose path
    finally:
        for pid in own_pids(marker, clone):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        stop = time.monotonic() + 20
        while own_pids(marker, clone) and time.monotonic() < stop:
            time.sleep(0.2)
        for pid in own_pids(marker, clone):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for name in ("readme_source", "readme_warehouse"):
            pg_cluster.drop_database(name)
    assert not own_pids(marker, clone)
