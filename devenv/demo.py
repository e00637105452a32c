"""``make demo``: the whole ``pg_replication`` DAG on throwaway local databases, then a summary.

Starts a source and a warehouse PostgreSQL cluster on free ports, loads a Pix-like sample into the source, runs
``airflow dags test pg_replication`` in a temporary AIRFLOW_HOME (SQLite) and prints what landed in the warehouse.
Everything is stopped and removed at the end (``--keep`` keeps the folder with the logs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from devenv import airflow_runner
from devenv.cluster import Cluster
from devenv.lcms_server import start_lcms_server
from devenv.sample_data import load_sample
from devenv.webhook_sink import WebhookSink

DEMO_PASSWORD = "demo-Pw-7"  # throwaway clusters only
DEMO_LCMS_KEY = "demo-lcms-key"
DEMO_WEBHOOK_TOKEN = "demo-webhook-token"


@dataclass
class DemoResult:
    state: str | None
    tasks: list[dict]
    source_rows: dict[str, int]
    warehouse_rows: dict[str, int]
    seconds: float
    log_file: Path
    webhooks: list[dict] = field(default_factory=list)
    inspected: object = None


def table_rows(conn) -> dict[str, int]:
    from psycopg import sql

    with conn.connect() as db:
        names = [r[0] for r in db.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') ORDER BY 1"
        ).fetchall()]
        return {n: db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", n))).fetchone()[0] for n in names}


def url(conn, password: str) -> str:
    return f"postgresql://{conn.user}:{password}@{conn.host}:{conn.port}/{conn.dbname}"


def demo_env(source, target, workdir: Path) -> dict:
    """Settings of the demo: connections as Airflow URIs, one incremental table."""
    return {
        "AIRFLOW_CONN_REPLICATION_SOURCE": url(source, DEMO_PASSWORD).replace("postgresql://", "postgres://"),
        "AIRFLOW_CONN_REPLICATION_TARGET": url(target, DEMO_PASSWORD).replace("postgresql://", "postgres://"),
        "REPLICATION_WORK_DIR": str(workdir / "work"),
        "PG_RESTORE_JOBS": "2",
        "MAX_RETRY_COUNT": "0",
        "BACKUP_MODE": '{"knowledge-element-snapshots": "incremental"}',
    }


def run(scale: float, workdir: Path, extra_env: dict | None = None, inspect=None) -> DemoResult:
    """Run the demo; ``inspect(source, target)``, if given, is called before the clusters stop and its result
    kept in ``DemoResult.inspected``."""
    started = time.monotonic()
    source_cluster, target_cluster = Cluster("demo-source"), Cluster("demo-warehouse")
    try:
        source_cluster.start()
        target_cluster.start()
        source = source_cluster.create_database("pix", "pix_reader", DEMO_PASSWORD)
        target = target_cluster.create_database("warehouse", "warehouse_owner", DEMO_PASSWORD)
        load_sample(source, scale)
        lcms_url, stop_lcms = start_lcms_server(DEMO_LCMS_KEY)
        try:
            with WebhookSink() as sink:
                settings = {
                    **demo_env(source, target, workdir),
                    "LCMS_API_URL": lcms_url,
                    "LCMS_API_KEY": DEMO_LCMS_KEY,
                    "NOTIFICATIONS": json.dumps([{"url": sink.url, "token": DEMO_WEBHOOK_TOKEN}]),
                    **(extra_env or {}),
                }
                env = airflow_runner.airflow_env(workdir / "airflow", settings)
                airflow_runner.migrate(env)
                log_file = workdir / "dags-test.log"
                airflow_runner.dags_test("pg_replication", env, log_path=log_file)
                received = list(sink.received)
        finally:
            stop_lcms()
        home = Path(env["AIRFLOW_HOME"])
        return DemoResult(
            state=airflow_runner.dag_run_state(home, "pg_replication"),
            tasks=airflow_runner.task_instances(home, "pg_replication"),
            source_rows=table_rows(source),
            warehouse_rows=table_rows(target),
            seconds=time.monotonic() - started,
            log_file=log_file,
            webhooks=received,
            inspected=inspect(source, target) if inspect else None,
        )
    finally:
        source_cluster.stop()
        target_cluster.stop()


def summary(result: DemoResult) -> str:
    lines = ["", "pg_replication demo", "===================", "", "tasks:"]
    for ti in result.tasks:
        name = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] not in (-1, None) else "")
        duration = f"{ti['duration']:.1f} s" if ti["duration"] is not None else "-"
        lines.append(f"  {name:<28} {ti['state'] or '-':<16} {duration}")
    lines += ["", f"  {'table':<32} {'source':>9} {'warehouse':>10}"]
    for table in sorted(set(result.source_rows) | set(result.warehouse_rows)):
        lines.append(f"  {table:<32} {result.source_rows.get(table, '-'):>9} {result.warehouse_rows.get(table, '-'):>10}")
    for hook in result.webhooks:
        body = hook["body"] if isinstance(hook["body"], dict) else {}
        lines += ["", f"webhook received at {hook['path']} (Authorization: {'set' if hook['headers'].get('Authorization') else 'none'}):",
                  f"  status={body.get('status')} durations={body.get('durations')}",
                  f"  tables={ {t: v.get('rows') for t, v in (body.get('tables') or {}).items()} }"]
        for kind, entry in (body.get("restore") or {}).items():
            slowest = ", ".join(f"{i['item']} {i['seconds']:.2f} s" for i in entry.get("slowest", []))
            lines.append(f"  restore {kind:<14} {entry['count']:>3} items {entry['seconds']:>7.2f} s   slowest: {slowest}")
        if body.get("message"):
            lines.append(f"  message={body['message']}")
    lines += ["", f"total wall time: {result.seconds:.1f} s   log: {result.log_file}", f"result: {result.state}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.003, help="sample size (1 = 2 M answers); default 0.003")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, Airflow home)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pgrepl-demo-"))
    try:
        result = run(args.scale, workdir)
        print(summary(result))
        if result.state != "success":
            print(open(result.log_file).read()[-6000:], file=sys.stderr)
            return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
