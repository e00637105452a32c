"""Restore: ``pg_restore`` of the dump into the warehouse behind the schema swap (:mod:`pgrepl.swap`), which puts
yesterday's warehouse back on any failure."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time

from dataclasses import dataclass

from pgrepl import catalog, swap, table_modes, workdir
from pgrepl.fullcopy.common import (
    ClientCommandError,
    PreflightError,
    RunPaths,
    client_environment,
    run_paths,
    run_script,
    worker_hostname,
)
from pgrepl.fullcopy.preflight_step import check_table_modes
from pgrepl.pgtools import tool
from pgrepl.restore_list import KeptPlan, RestoreList, filter_restore_list
from pgrepl.settings import ReplicationSettings
from pgrepl.toc import TocFormatError, read_dependencies

log = logging.getLogger(__name__)

#: session settings of every pg_restore connection: bulk load, big sorts for index builds
RESTORE_PGOPTIONS = "-c synchronous_commit=off -c maintenance_work_mem=512MB -c max_parallel_maintenance_workers=2"
RESTORE_SCRIPT = r"""set -euo pipefail
mkdir -p "$PGREPL_LOG_DIR"
: > "$PGREPL_LOG_DIR/pg_restore.log"
"$PGREPL_PG_RESTORE" --jobs="$PGREPL_JOBS" --no-owner --no-privileges --exit-on-error --verbose \
  --use-list="$PGREPL_LIST_FILE" --dbname="$PGREPL_TARGET_URL" "$PGREPL_DUMP_DIR" 2>&1 \
  | "$PGREPL_PYTHON" -m pgrepl.tslog "$PGREPL_LOG_DIR/pg_restore.log"
echo "restore finished"
"""


#: application_name of pg_restore's sessions: a restore left running by a dead worker is found and stopped by it
RESTORE_APP_NAME = "pgrepl-restore"



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


@dataclass
class RestorePlan:
    """What :func:`build_restore_list` decided, for the swap and the steps after the incremental copy."""

    restore_list: RestoreList
    replaced: dict[str, set[str]]  # schema -> relation names the dump creates
    kept: dict[str, set[str]]  # schema -> relation names the swap keeps (kept tables, partitions, shared sequences)
    kept_types: dict[str, dict[str, str]]  # schema -> {type name: typtype} kept with the kept tables
    kept_functions: dict[str, list[tuple[str, str]]]  # schema -> [(function name, identity arguments)] kept too
    enum_labels: dict[tuple[str, str], list[str]]  # source labels of the kept enums
    refresh_later: list[list[str]]  # [schema, name] of materialized views to refresh after the incremental step


def build_restore_list(settings: ReplicationSettings, paths: RunPaths) -> RestorePlan:
    """Compute the restore list from the dump's TOC, the source catalog and which kept tables the warehouse has;
    write it to ``paths.list_file``."""
    listed = subprocess.run(
        [tool("pg_restore", settings.pg_bin_dir), "--list", str(paths.dump_dir)], capture_output=True, text=True
    )
    if listed.returncode != 0:
        raise ClientCommandError(f"cannot read the dump at {paths.dump_dir}: {listed.stderr.strip()[-1000:]} "
                                 "(clear the dump task too)", retryable=False)
    toc = listed.stdout
    with settings.source.connect() as db:
        relations = catalog.read_relations(db)
        source_catalog = catalog.read_source_catalog(db, relations)
        facts = table_modes.read_source_facts(db) if settings.kept_tables else table_modes.SourceFacts()
        _, missing = catalog.resolve_tables(relations, settings.kept_tables)
        if missing:
            raise PreflightError("BACKUP_MODE: the source has no table " + ", ".join(repr(str(t)) for t in missing))
        check_table_modes(settings, relations, facts)
        plan = table_modes.plan_modes(settings, relations, facts)
        schemas = set(catalog.dumped_schemas(relations))
        with settings.target.connect() as target:
            in_warehouse = table_modes.read_warehouse_kept(target, plan.table_names(), schemas)
            target.rollback()
        kept_enums = [name for name, typtype in in_warehouse.types.items() if typtype == "e"]
        source_labels = table_modes.enum_labels(db, kept_enums)
        kept_function_oids = table_modes.source_functions(db, in_warehouse.functions)
    by_name = {(r.schema, r.name): r.oid for r in relations}
    types_by_name = {(schema, name): (oid, constraints) for oid, (schema, name, _t, _r, constraints) in facts.types.items()}
    kept_objects: set[tuple[int, int]] = set()
    for name in in_warehouse.types:
        if name in types_by_name:
            oid, constraints = types_by_name[name]
            kept_objects.add((table_modes.PG_TYPE, oid))
            kept_objects.update((table_modes.PG_CONSTRAINT, con) for con in constraints)
    for name in in_warehouse.sequences:
        if name in by_name:
            kept_objects.add((table_modes.PG_CLASS, by_name[name]))
    kept_objects.update((table_modes.PG_PROC, oid) for oid in kept_function_oids)
    present = {oid for oid, name in plan.names.items() if name in in_warehouse.present}
    refresh = table_modes.matviews_to_refresh(relations, facts, plan.kept)
    kept_plan = KeptPlan(
        present=present,
        created=set(plan.kept) - present,
        modes={oid: mode.mode for oid, (_table, mode) in plan.kept.items()},
        kept_objects=kept_objects,
        refresh_later=set(refresh),
        relations_by_name=by_name,
        partition_indexes=facts.partition_indexes,
        parents=facts.parents,
    )
    dependencies = None
    if settings.restore_comments:
        try:
            dependencies = read_dependencies(paths.dump_dir)
        except (OSError, TocFormatError) as exc:
            log.warning("comments are not restored tonight: cannot read the dump's dependencies (%s)", exc)
    restore_list = filter_restore_list(
        toc, source_catalog, present, settings.restore_fk_constraints, precreated_schemas=schemas,
        restore_comments=settings.restore_comments, dependencies=dependencies, plan=kept_plan,
    )
    paths.list_file.parent.mkdir(parents=True, exist_ok=True)
    paths.list_file.write_text(restore_list.text())
    refreshed_in_dump = {e.objid for e, _ in restore_list.dropped if e.desc == "MATERIALIZED VIEW DATA"}
    names = {r.oid: (r.schema, r.name) for r in relations}
    replaced: dict[str, set[str]] = {schema: set() for schema in schemas}
    for r in relations:
        owned_by_kept = r.owner_table in plan.kept
        if r.oid not in plan.kept and not owned_by_kept:
            replaced[r.schema].add(r.name)
    kept: dict[str, set[str]] = {}
    for schema, name in [*plan.names.values(), *in_warehouse.sequences]:
        kept.setdefault(schema, set()).add(name)
    kept_types: dict[str, dict[str, str]] = {}
    for (schema, name), typtype in in_warehouse.types.items():
        kept_types.setdefault(schema, {})[name] = typtype
    kept_functions: dict[str, list[tuple[str, str]]] = {}
    for schema, name, args in sorted(in_warehouse.functions):
        kept_functions.setdefault(schema, []).append((name, args))
    return RestorePlan(
        restore_list=restore_list,
        replaced=replaced,
        kept=kept,
        kept_types=kept_types,
        kept_functions=kept_functions,
        enum_labels=source_labels,
        refresh_later=[list(names[oid]) for oid in refresh if oid in refreshed_in_dump],
    )


def restore(settings: ReplicationSettings, key: str, run_id: str, runner=run_script, dump_host: str | None = None) -> dict:
    """Restore the dump behind the swap: prepare, pg_restore, then finalize — or roll back on any failure.

    :param dump_host: where the dump task ran (to explain a dump folder this worker cannot see)
    """
    paths = run_paths(settings, key)
    if not paths.dump_dir.is_dir():
        here = worker_hostname()
        if dump_host and dump_host != here:
            raise PreflightError(
                f"no dump at {paths.dump_dir}: the dump ran on {dump_host} and the restore on {here}, so "
                "REPLICATION_WORK_DIR must be a volume every worker shares (or clear the dump task too)"
            )
        raise PreflightError(f"no dump at {paths.dump_dir}: clear the dump task too (the dump is removed after a successful restore)")
    started = time.monotonic()
    with settings.target.connect() as db:
        swap.lock_warehouse(db, run_id)
        if swap.swap_in_progress(db):
            # before the restore list reads which kept tables the warehouse has: what a crashed attempt half
            # restored must not count
            log.warning("a previous attempt left a swap in progress: putting yesterday's warehouse back first")
            swap.rollback_swap(db)
        planned = build_restore_list(settings, paths)
        restore_list = planned.restore_list
        for entry, reason in restore_list.dropped:
            log.info("not restored: %s (%s)", entry.line, reason)
        if planned.enum_labels:  # before the restore loads rows that use them (an enum cannot lose labels)
            added = table_modes.add_enum_labels(
                db, planned.enum_labels, table_modes.enum_labels(db, planned.enum_labels))
            db.commit()
            if added:
                log.info("labels added to kept enums: %s", ", ".join(added))
        plan = swap.prepare_swap(db, run_id, planned.replaced, planned.kept, planned.kept_types,
                                 planned.kept_functions)
        log.info("live schemas moved aside: %s; kept in place: %s", plan.schemas, plan.moved_back)
        try:
            with client_environment(settings.target, extra=restore_environment(settings, paths),
                                    app_name=RESTORE_APP_NAME) as env:
                runner(RESTORE_SCRIPT, env)
            lost = swap.finalize_swap(db)
        except BaseException as exc:
            log.error("restore failed: putting yesterday's warehouse back")
            workdir.mark_restore_failed(paths.root, exc)  # the next attempt takes a fresh dump
            db.rollback()
            swap.rollback_swap(db)
            raise
    workdir.record_successful_dump(settings.work_dir, paths.dump_dir, key)
    workdir.clear_restore_failed(paths.root)
    shutil.rmtree(paths.dump_dir, ignore_errors=True)
    return {
        "seconds": round(time.monotonic() - started, 3),
        "log_file": str(paths.log_dir / "pg_restore.log"),
        "items": len(restore_list.kept),
        "skipped": len(restore_list.dropped),
        "kept_in_place": plan.moved_back,
        "dropped_with_old_tables": lost,
        "refresh_after_incremental": planned.refresh_later,
    }


def refresh_after_incremental(settings: ReplicationSettings, views: list[list[str]], run_id: str | None = None) -> dict:
    """Refresh the materialized views that read kept tables (``restore``'s ``refresh_after_incremental``), in
    order, after the incremental step; a view the warehouse lacks is skipped with a warning."""
    with settings.target.connect() as db:
        if run_id:
            swap.lock_warehouse(db, run_id)
        present = {tuple(r) for r in db.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'm'").fetchall()}
        db.rollback()
        missing = [v for v in views if tuple(v) not in present]
        for schema, name in missing:
            log.warning("materialized view %s.%s is not in the warehouse: not refreshed", schema, name)
        timings = table_modes.refresh_matviews(db, [v for v in views if tuple(v) in present])
    for view, seconds in timings.items():
        log.info("refreshed materialized view %s in %.2f s", view, seconds)
    return {"refreshed": timings, "missing": [".".join(v) for v in missing]}


def rollback(settings: ReplicationSettings) -> list[str]:
    """Put yesterday's warehouse back if a restore was interrupted (no-op otherwise)."""
    with settings.target.connect() as db:
        return swap.rollback_swap(db)
