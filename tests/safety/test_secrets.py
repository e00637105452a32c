"""Secrets never leak: the whole DAG runs (the demo: password connections, an LCMS key, a webhook token) while a
thread samples every process's command line; then the output, the task logs, the pg_dump/pg_restore logs, rendered
templates and XComs (the whole SQLite metadata file) are searched for the secrets.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pgrepl import fullcopy
from devenv import demo
from pgrepl.pgtools import PgConn
from pgrepl.settings import ReplicationSettings

SECRETS = {"database password": demo.DEMO_PASSWORD, "LCMS key": demo.DEMO_LCMS_KEY,
           "webhook token": demo.DEMO_WEBHOOK_TOKEN}


class CmdlineSampler(threading.Thread):
    """Reads ``/proc/*/cmdline`` of every process every ~20 ms; keeps each distinct command line once."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(name="cmdline-sampler", daemon=True)
        self.interval, self.stopping, self.seen, self.samples = interval, threading.Event(), set(), 0

    def run(self) -> None:
        me = str(os.getpid())
        while not self.stopping.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or entry.name == me:
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                        raw = handle.read()
                except OSError:  # the process is gone
                    continue
                if raw:
                    self.seen.add(raw.replace(b"\0", b" ").decode(errors="replace").strip())
            self.samples += 1
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("secrets")
    sampler = CmdlineSampler()
    sampler.start()
    try:
        result = demo.run(0.002, workdir)
    finally:
        sampler.stop()
    return result, sampler, workdir


def test_the_run_succeeded_and_was_sampled(sampled_run):
    result, sampler, _ = sampled_run
    assert result.state == "success", Path(result.log_file).read_text()[-4000:]
    assert sampler.samples > 100
    # the sampler did see the client tools the DAG spawned, with their connection strings
    assert any("pg_dump" in line and "--dbname=postgresql://" in line for line in sampler.seen) or \
        any("pg_restore" in line and "--dbname=postgresql://" in line for line in sampler.seen)
    assert any("airflow" in line for line in sampler.seen)
    assert result.webhooks and result.webhooks[0]["headers"].get("Authorization") == demo.DEMO_WEBHOOK_TOKEN


@pytest.mark.parametrize("what", sorted(SECRETS))
def test_no_secret_in_any_command_line(sampled_run, what):
    _, sampler, _ = sampled_run
    leaks = [line for line in sampler.seen if SECRETS[what] in line]
    assert leaks == [], f"{what} seen in a process's arguments"


def files_containing(folder: Path, secret: str) -> list[str]:
    hits = []
    needle = secret.encode()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    hits.append(str(path.relative_to(folder)))
            except OSError:
                continue
    return hits


@pytest.mark.parametrize("what", sorted(SECRETS))
def test_no_secret_in_logs_rendered_templates_or_metadata(sampled_run, what):
    """Every file of the demo's folder: the ``dags test`` output (under ``airflow dags test`` the task logs go there,
    not to ``$AIRFLOW_HOME/logs``), the pg_dump/pg_restore logs of the work folder, and ``<workdir>/airflow/airflow.db``
    (AIRFLOW_HOME), which holds rendered template fields and XComs."""
    result, _, workdir = sampled_run
    assert (workdir / "airflow" / "airflow.db").is_file()
    output = Path(result.log_file).read_text()
    assert "[pgrepl.fullcopy.restore_step]" in output and "[pgrepl.tasks]" in output, "task log lines missing from the output"
    assert list((workdir / "work").rglob("pg_restore.log")), "pg_restore log missing"
    assert files_containing(workdir, SECRETS[what]) == []


def test_rendered_templates_were_stored_and_are_clean(sampled_run):
    """The search above covers rendered templates only if Airflow stored them: check they are there."""
    import sqlite3

    _, _, workdir = sampled_run
    with sqlite3.connect(workdir / "airflow" / "airflow.db") as db:
        rows = db.execute("SELECT task_id, rendered_fields FROM rendered_task_instance_fields").fetchall()
    tasks = {task for task, _ in rows}
    assert {"dump", "restore", "enrichment"} <= tasks
    for _, fields in rows:
        assert not any(secret in (fields or "") for secret in SECRETS.values())


def test_client_environment_carries_a_passfile_never_a_password(tmp_path, monkeypatch):
    """What pg_dump / pg_restore receive: a private PGPASSFILE (0600, removed afterwards), URLs without password,
    and no PGPASSWORD even if the worker had one."""
    source = PgConn("127.0.0.1", 5432, "pix", "reader", "src-S3cret")
    target = PgConn("127.0.0.1", 5433, "warehouse", "owner", "wh-S3cret")
    settings = ReplicationSettings(source=source, target=target, work_dir=str(tmp_path))
    paths = fullcopy.run_paths(settings, "env-check")
    monkeypatch.setenv("PGPASSWORD", "inherited-S3cret")
    extra = {**fullcopy.dump_environment(settings, paths, None), **fullcopy.restore_environment(settings, paths)}
    with fullcopy.client_environment(source, target, extra=extra) as env:
        assert "PGPASSWORD" not in env
        for secret in ("src-S3cret", "wh-S3cret", "inherited-S3cret"):
            assert not any(secret in value for value in env.values())
        passfile = env["PGPASSFILE"]
        assert os.stat(passfile).st_mode & 0o777 == 0o600
        assert "src-S3cret" in Path(passfile).read_text()
    assert not os.path.exists(passfile)
