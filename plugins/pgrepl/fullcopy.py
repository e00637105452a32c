"""The full copy, step by step: dump the source, restore it into the warehouse behind a safe swap.

The DAG's operators (``pgrepl.operators.dump_restore``) and the benchmark (``bench/``) call these same functions,
so what is measured is what runs at night.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pgrepl import catalog
from pgrepl.hooks import warehouse
from pgrepl.pgtools import PgConn, PgToolError, client_env, tool, tool_major_version, write_passfile
from pgrepl.restore_list import RestoreList, filter_restore_list
from pgrepl.settings import ReplicationSettings, TableName

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SQL_ROOT = ROOT / "include" / "sql"

#: session settings of every pg_restore connection: bulk load, big sorts for index builds
RESTORE_PGOPTIONS = "-c synchronous_commit=off -c maintenance_work_mem=512MB -c max_parallel_maintenance_workers=2"
#: session settings of the compat/enrichment connections (index builds: bench/README.md measured 7.2 s -> 4.7 s)
SQL_SESSION_OPTIONS = "-c maintenance_work_mem=512MB"

# The two client commands. Everything variable comes from the environment (no password among it: PGPASSFILE).
DUMP_SCRIPT = r"""set -euo pipefail
rm -rf "$PGREPL_DUMP_DIR"
mkdir -p "$(dirname "$PGREPL_DUMP_DIR")" "$PGREPL_LOG_DIR"
excludes=()
while IFS= read -r pattern; do
  [ -n "$pattern" ] && excludes+=("--exclude-table=$pattern")
done <<< "${PGREPL_EXCLUDES:-}"
"$PGREPL_PG_DUMP" --format=directory --jobs="$PGREPL_JOBS" --compress="$PGREPL_COMPRESS" \
  --no-owner --no-privileges --verbose \
  --exclude-schema=information_schema --exclude-schema='pg_*' \
  ${PGREPL_SNAPSHOT:+--snapshot="$PGREPL_SNAPSHOT"} "${excludes[@]}" \
  --file="$PGREPL_DUMP_DIR" --dbname="$PGREPL_SOURCE_URL" 2>&1 \
  | "$PGREPL_PYTHON" -m pgrepl.tslog "$PGREPL_LOG_DIR/pg_dump.log" > /dev/null
echo "dump written to $PGREPL_DUMP_DIR"
"""

RESTORE_SCRIPT = r"""set -euo pipefail
mkdir -p "$PGREPL_LOG_DIR"
: > "$PGREPL_LOG_DIR/pg_restore.log"
"$PGREPL_PG_RESTORE" --jobs="$PGREPL_JOBS" --no-owner --no-privileges --exit-on-error --verbose \
  --use-list="$PGREPL_LIST_FILE" --dbname="$PGREPL_TARGET_URL" "$PGREPL_DUMP_DIR" 2>&1 \
  | "$PGREPL_PYTHON" -m pgrepl.tslog "$PGREPL_LOG_DIR/pg_restore.log"
echo "restore finished"
"""


class PreflightError(RuntimeError):
    """A check before touching anything failed; the message says which and why."""


def run_key(run_id: str) -> str:
    """A folder-safe key for a DAG run id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or "run"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def dump_dir(self) -> Path:
        return self.root / "dump"

    @property
    def list_file(self) -> Path:
        return self.root / "restore.list"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"


def run_paths(settings: ReplicationSettings, key: str) -> RunPaths:
    return RunPaths(Path(settings.work_dir) / key)


def exclude_pattern(table: TableName) -> str:
    """A ``pg_dump --exclude-table`` pattern matching exactly this table (quotes make every character literal)."""
    quote = lambda part: '"' + part.replace('"', '""') + '"'  # noqa: E731
    return f"{quote(table.schema)}.{quote(table.name)}"


#: application_name of pg_restore's sessions: a restore left running by a dead worker is found and stopped by it
RESTORE_APP_NAME = "pgrepl-restore"


@contextmanager
def client_environment(*conns: PgConn, extra: dict | None = None, app_name: str = "pg-replication"):
    """Environment for pg_dump/pg_restore: a private passfile for ``conns`` (removed afterwards), no password."""
    folder = tempfile.mkdtemp(prefix="pgrepl-pass-")
    try:
        passfile = write_passfile(os.path.join(folder, "pgpass"), list(conns))
        env = client_env(passfile, app_name=app_name)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "plugins"), env.get("PYTHONPATH")]))
        env.update(extra or {})
        yield env
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def dump_environment(settings: ReplicationSettings, paths: RunPaths, snapshot: str | None) -> dict:
    """Variables for :data:`DUMP_SCRIPT` (merged into :func:`client_environment`)."""
    return {
        "PGREPL_PG_DUMP": tool("pg_dump", settings.pg_bin_dir),
        "PGREPL_PYTHON": sys.executable,
        "PGREPL_JOBS": str(settings.jobs),
        "PGREPL_COMPRESS": str(settings.dump_compression),
        "PGREPL_DUMP_DIR": str(paths.dump_dir),
        "PGREPL_LOG_DIR": str(paths.log_dir),
        "PGREPL_SOURCE_URL": settings.source.safe_url(),
        "PGREPL_EXCLUDES": "\n".join(exclude_pattern(t) for t in settings.kept_tables),
        "PGREPL_SNAPSHOT": snapshot or "",
    }


def restore_environment(settings: ReplicationSettings, paths: RunPaths) -> dict:
    """Variables for :data:`RESTORE_SCRIPT`."""
    return {
        "PGREPL_PG_RESTORE": tool("pg_restore", settings.pg_bin_dir),
        "PGREPL_PYTHON": sys.executable,
        "PGREPL_JOBS": str(settings.jobs),
        "PGREPL_DUMP_DIR": str(paths.dump_dir),
        "PGREPL_LOG_DIR": str(paths.log_dir),
        "PGREPL_LIST_FILE": str(paths.list_file),
        "PGREPL_TARGET_URL": settings.target.safe_url(),
        "PGOPTIONS": RESTORE_PGOPTIONS,
    }


# -- preflight -------------------------------------------------------------------------------------

def preflight(settings: ReplicationSettings) -> dict:
    """Check both databases and the tools before anything is touched; return facts for the run."""
    try:
        source = settings.source.connect(connect_timeout=15)
    except Exception as exc:
        raise PreflightError(f"source database {settings.source.safe_url()} unreachable: {_first_line(exc)}") from None
    try:
        target = settings.target.connect(connect_timeout=15)
    except Exception as exc:
        source.close()
        raise PreflightError(f"target database {settings.target.safe_url()} unreachable: {_first_line(exc)}") from None
    with source, target:
        server_major = source.info.server_version // 10000
        for name in ("pg_dump", "pg_restore"):
            try:
                major = tool_major_version(tool(name, settings.pg_bin_dir))
            except PgToolError as exc:
                raise PreflightError(str(exc)) from None
            if major < server_major:
                raise PreflightError(
                    f"{name} is version {major} but the source server is {server_major}: install a client >= {server_major} "
                    "(PG_BIN_DIR names its folder)"
                )
        role, superuser, can_create = target.execute(
            "SELECT current_user, rolsuper, has_database_privilege(current_database(), 'CREATE') "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        if superuser:
            raise PreflightError(
                f"target role {role!r} (connection replication_target / TARGET_DATABASE_URL / DATABASE_URL) is a "
                "superuser: use a dedicated non-superuser role for the warehouse"
            )
        if not can_create:
            raise PreflightError(f"target role {role!r} lacks CREATE on database {settings.target.dbname!r} (needed to swap schemas)")
        relations = catalog.read_relations(source)
        _, missing = catalog.resolve_tables(relations, settings.kept_tables)
        if missing:
            raise PreflightError(
                "BACKUP_MODE: the source has no table " + ", ".join(repr(str(t)) for t in missing)
            )
    try:
        Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(settings.work_dir) / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(f"REPLICATION_WORK_DIR: {settings.work_dir} is not writable ({exc.strerror})") from None
    return {"server_major": server_major, "relations": len(relations)}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- dump ------------------------------------------------------------------------------------------

@contextmanager
def exported_snapshot(settings: ReplicationSettings):
    """A source transaction whose snapshot pg_dump shares (``--snapshot``); yields ``(connection, snapshot id)``."""
    db = settings.source.connect(autocommit=True)  # the explicit BEGIN below sets the isolation level
    try:
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = db.execute("SELECT pg_export_snapshot()").fetchone()[0]
        yield db, snapshot
    finally:
        db.execute("ROLLBACK")
        db.close()


def dumped_tables(settings: ReplicationSettings, db) -> list[tuple[str, str]]:
    """``(schema, table)`` of every table whose rows the dump holds."""
    kept = {(t.schema, t.name) for t in settings.kept_tables}
    return [(r.schema, r.name) for r in catalog.read_relations(db) if r.is_table and (r.schema, r.name) not in kept]


class CountThread(threading.Thread):
    """Counts the dumped tables' rows in the dump's snapshot while pg_dump runs."""

    def __init__(self, db, tables):
        super().__init__(name="pgrepl-count", daemon=True)
        self.db, self.tables, self.counts, self.error = db, tables, {}, None

    def run(self) -> None:
        try:
            self.counts = catalog.count_rows(self.db, self.tables)
        except Exception as exc:  # reported by the caller
            self.error = exc


def failure_lines(output: str, limit: int = 20) -> list[str]:
    """The lines of a client's output that say what went wrong (``error:``, ``ERROR:``, ``DETAIL:``, ``Command was:``).

    With ``--jobs``, other workers keep printing after the failing one, so the error is rarely in the last lines.
    """
    markers = ("error:", "ERROR:", "DETAIL:", "Command was:", "FATAL:")
    return [line for line in output.splitlines() if any(marker in line for marker in markers)][:limit]


def run_script(script: str, env: dict) -> None:
    """Run DUMP_SCRIPT / RESTORE_SCRIPT outside Airflow (benchmarks, tests); a failure names the client's errors."""
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        errors = "\n".join(failure_lines(output))
        raise RuntimeError(f"command failed ({result.returncode}): {errors}\n--- last output ---\n{output[-1500:]}")


def dump(settings: ReplicationSettings, key: str, runner=run_script) -> dict:
    """Dump the source (directory format, parallel, kept tables excluded); count rows in the same snapshot."""
    paths = run_paths(settings, key)
    started = time.monotonic()
    with exported_snapshot(settings) as (db, snapshot):
        tables = dumped_tables(settings, db)
        counter = CountThread(db, tables)
        with client_environment(settings.source, extra=dump_environment(settings, paths, snapshot)) as env:
            counter.start()
            try:
                runner(DUMP_SCRIPT, env)
            finally:
                counter.join()
        if counter.error:
            raise RuntimeError(f"counting the source rows failed: {_first_line(counter.error)}")
    return {
        "host": socket.gethostname(),
        "dump_dir": str(paths.dump_dir),
        "log_file": str(paths.log_dir / "pg_dump.log"),
        "seconds": round(time.monotonic() - started, 3),
        "source_counts": counter.counts,
    }


# -- restore ---------------------------------------------------------------------------------------

def build_restore_list(settings: ReplicationSettings, paths: RunPaths) -> tuple[RestoreList, dict, dict]:
    """Compute the restore list from the dump's TOC and the source catalog; write it to ``paths.list_file``.

    Returns the list, ``{schema: relation names the dump creates}`` and ``{schema: kept table names}``.
    """
    listed = subprocess.run(
        [tool("pg_restore", settings.pg_bin_dir), "--list", str(paths.dump_dir)], capture_output=True, text=True
    )
    if listed.returncode != 0:
        raise RuntimeError(f"cannot read the dump at {paths.dump_dir}: {listed.stderr.strip()[-1000:]}")
    toc = listed.stdout
    with settings.source.connect() as db:
        relations = catalog.read_relations(db)
        source_catalog = catalog.read_source_catalog(db, relations)
    found, missing = catalog.resolve_tables(relations, settings.kept_tables)
    if missing:
        raise PreflightError("BACKUP_MODE: the source has no table " + ", ".join(repr(str(t)) for t in missing))
    schemas = set(catalog.dumped_schemas(relations))
    restore_list = filter_restore_list(
        toc, source_catalog, set(found.values()), settings.restore_fk_constraints, precreated_schemas=schemas
    )
    paths.list_file.parent.mkdir(parents=True, exist_ok=True)
    paths.list_file.write_text(restore_list.text())
    kept_oids = set(found.values())
    replaced: dict[str, set[str]] = {schema: set() for schema in schemas}
    for r in relations:
        owned_by_kept = r.owner_table in kept_oids
        if r.oid not in kept_oids and not owned_by_kept:
            replaced[r.schema].add(r.name)
    kept: dict[str, set[str]] = {}
    for table in settings.kept_tables:
        kept.setdefault(table.schema, set()).add(table.name)
    return restore_list, replaced, kept


def restore(settings: ReplicationSettings, key: str, run_id: str, runner=run_script, dump_host: str | None = None) -> dict:
    """Restore the dump behind the swap: prepare, pg_restore, then finalize — or roll back on any failure.

    :param dump_host: where the dump task ran (to explain a dump folder this worker cannot see)
    """
    paths = run_paths(settings, key)
    if not paths.dump_dir.is_dir():
        here = socket.gethostname()
        if dump_host and dump_host != here:
            raise PreflightError(
                f"no dump at {paths.dump_dir}: the dump ran on {dump_host} and the restore on {here}, so "
                "REPLICATION_WORK_DIR must be a volume every worker shares (or clear the dump task too)"
            )
        raise PreflightError(f"no dump at {paths.dump_dir}: clear the dump task too (the dump is removed after a successful restore)")
    started = time.monotonic()
    restore_list, replaced, kept = build_restore_list(settings, paths)
    for entry, reason in restore_list.dropped:
        log.info("not restored: %s (%s)", entry.line, reason)
    with settings.target.connect() as db:
        warehouse.lock_warehouse(db, run_id)
        plan = warehouse.prepare_swap(db, run_id, replaced, kept)
        log.info("live schemas moved aside: %s; kept in place: %s", plan.schemas, plan.moved_back)
        try:
            with client_environment(settings.target, extra=restore_environment(settings, paths),
                                    app_name=RESTORE_APP_NAME) as env:
                runner(RESTORE_SCRIPT, env)
            lost = warehouse.finalize_swap(db)
        except BaseException:
            log.error("restore failed: putting yesterday's warehouse back")
            db.rollback()
            warehouse.rollback_swap(db)
            raise
    shutil.rmtree(paths.dump_dir, ignore_errors=True)
    return {
        "seconds": round(time.monotonic() - started, 3),
        "log_file": str(paths.log_dir / "pg_restore.log"),
        "items": len(restore_list.kept),
        "skipped": len(restore_list.dropped),
        "kept_in_place": plan.moved_back,
        "dropped_with_old_tables": lost,
    }


def rollback(settings: ReplicationSettings) -> list[str]:
    """Put yesterday's warehouse back if a restore was interrupted (no-op otherwise)."""
    with settings.target.connect() as db:
        return warehouse.rollback_swap(db)


# -- SQL steps -------------------------------------------------------------------------------------

def sql_files(folder: str) -> list[Path]:
    """Every ``*.sql`` of ``include/sql/<folder>``, in name order."""
    return sorted((SQL_ROOT / folder).glob("*.sql"))


def sql_groups(statements: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Consecutive files sharing their number prefix (``010_a.sql``, ``010_b.sql``) form one group; a file without
    a number prefix is a group of its own. Groups run in order; the files of a group at the same time."""
    groups: list[list[tuple[str, str]]] = []
    previous = None
    for name, text in statements:
        match = re.match(r"(\d+)_", Path(name).name)
        prefix = match.group(1) if match else None
        if groups and prefix is not None and prefix == previous:
            groups[-1].append((name, text))
        else:
            groups.append([(name, text)])
        previous = prefix
    return groups


def _run_one(db, name: str, text: str) -> float:
    started = time.monotonic()
    db.execute(text)
    db.commit()
    seconds = round(time.monotonic() - started, 3)
    log.info("ran %s in %.2f s", name, seconds)
    return seconds


def _run_on_own_connection(target: PgConn, name: str, text: str) -> float:
    with target.connect(options=SQL_SESSION_OPTIONS) as db:
        return _run_one(db, name, text)


def run_sql(target: PgConn, statements: list[tuple[str, str]], run_id: str | None = None, parallel: int = 1) -> dict:
    """Run ``[(name, sql)]`` on the warehouse, each file in its own transaction; return seconds per file.

    Files of one :func:`sql_groups` group run on up to ``parallel`` connections at once (index builds of different
    tables overlap); the session holding the warehouse lock waits for the group to end before the next one.
    """
    from concurrent.futures import ThreadPoolExecutor

    timings = {}
    with target.connect(options=SQL_SESSION_OPTIONS) as db:
        if run_id:
            warehouse.lock_warehouse(db, run_id)
        for group in sql_groups(statements):
            if len(group) == 1 or parallel <= 1:
                for name, text in group:
                    timings[name] = _run_one(db, name, text)
                continue
            with ThreadPoolExecutor(max_workers=min(parallel, len(group)), thread_name_prefix="pgrepl-sql") as pool:
                futures = {name: pool.submit(_run_on_own_connection, target, name, text) for name, text in group}
                for name, future in futures.items():
                    timings[name] = future.result()
    return timings


def render(path: Path) -> str:
    """Render one SQL template of ``include/sql`` (macros importable) as the DAG's Jinja environment does."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(SQL_ROOT)))
    return env.get_template(path.relative_to(SQL_ROOT).as_posix()).render()


def run_full_copy(settings: ReplicationSettings, key: str, run_id: str | None = None) -> dict:
    """dump -> restore -> compat views -> enrichment, as the DAG runs them (benchmarks and tests)."""
    run_id = run_id or key
    started = time.monotonic()
    with settings.target.connect() as db:
        warehouse.acquire_lease(db, run_id)
    try:
        dumped = dump(settings, key)
        restored = restore(settings, key, run_id)
        t0 = time.monotonic()
        run_sql(settings.target, [(p.name, render(p)) for p in sql_files("compat")], run_id)
        compat_seconds = time.monotonic() - t0
        t0 = time.monotonic()
        run_sql(settings.target, [(p.name, render(p)) for p in sql_files("enrichment")], run_id, settings.jobs)
        enrichment_seconds = time.monotonic() - t0
    finally:
        with settings.target.connect() as db:
            warehouse.release_lease(db, run_id)
    return {
        "dump_seconds": dumped["seconds"],
        "restore_seconds": restored["seconds"],
        "compat_seconds": round(compat_seconds, 3),
        "enrichment_seconds": round(enrichment_seconds, 3),
        "total_seconds": round(time.monotonic() - started, 3),
        "source_counts": dumped["source_counts"],
    }
