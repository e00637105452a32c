"""Restore: ``pg_restore`` of the dump into the warehouse behind the schema swap (:mod:`pgrepl.swap`), which puts
yesterday's warehouse back on any failure."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time

from dataclasses import dataclass

from pgrepl import catalog, sqlfiles, staging, swap, table_modes, workdir
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
from pgrepl.toc import TocFormatError, read_dependencies, read_entries
from pgrepl.fullcopy.dump_step import literal_pattern

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
    kept_table_ids: set[int]  # dump ids of the TABLE entries of kept tables the warehouse has (not restored)
    kept_sequences: dict[str, set[str]]  # schema -> unowned sequences kept with the kept tables


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
    kept_sequences: dict[str, set[str]] = {}
    for schema, name in in_warehouse.sequences:
        kept_sequences.setdefault(schema, set()).add(name)
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
        kept_table_ids={e.dump_id for e, _ in restore_list.dropped if e.objid in present and e.desc == "TABLE"},
        kept_sequences=kept_sequences,
    )


def build_staging(db, settings: ReplicationSettings, paths: RunPaths, planned: RestorePlan, run_id: str) -> dict:
    """Tonight's definitions into the staging schemas, then the staging archive whose data files are the dump's
    (:mod:`pgrepl.staging`, steps 1-2). Returns what the rest of the restore needs."""
    pg_restore = tool("pg_restore", settings.pg_bin_dir)
    schemas = sorted(planned.replaced)
    source_entries = read_entries(paths.dump_dir)
    listed = planned.restore_list.kept
    deferred = staging.deferred_entries([e.dump_id for e in listed], source_entries, planned.kept_table_ids)
    by_id = {e.dump_id: e for e in source_entries}
    with_rows = [by_id[i] for i in deferred if i in by_id and by_id[i].desc in staging.DATA_DESCS]
    if with_rows:
        raise swap.SwapError("tables copied in full depend on tables BACKUP_MODE keeps: " + ", ".join(
            f"{e.namespace}.{e.tag}" for e in with_rows) + " (give them the same mode, or drop the dependency)")
    ddl = [e for e in listed if e.desc not in staging.DATA_DESCS and e.dump_id not in deferred]
    # extensions belong to the database, not to tonight's schema: created (if missing) in the live one, whence the
    # relocatable ones visit the staging DDL and move at the switch
    extensions = {e.dump_id for e in ddl if e.desc == "EXTENSION"}
    first = [e for e in ddl if e.dump_id in extensions
             or (e.desc == "COMMENT" and extensions & set(by_id[e.dump_id].deps if e.dump_id in by_id else ()))]
    ddl = [e for e in ddl if e not in first]
    objects = staging.KeptObjects(planned.kept_types, planned.kept_functions, planned.kept_sequences)
    lists = paths.root / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    if first:
        list_file = lists / "extensions.list"
        list_file.write_text("".join(e.line + "\n" for e in first))
        staging.run_script_sql(db, staging.restore_sql(pg_restore, paths.dump_dir, list_file))
    batches = [ddl[i:i + staging.DDL_BATCH] for i in range(0, len(ddl), staging.DDL_BATCH)] or [[]]
    for number, batch in enumerate(batches):
        statements = ""
        if batch:
            list_file = lists / f"staging-{number:05d}.list"
            list_file.write_text("".join(e.line + "\n" for e in batch))
            statements = staging.restore_sql(pg_restore, paths.dump_dir, list_file)
        if number == len(batches) - 1:  # include/sql/indexes on the empty staging tables: the archive carries them
            statements += "".join(f"\n-- include/sql/indexes/{name}\n{text}\n"
                                  for name, text in sqlfiles.rendered("indexes"))
        db.rollback()
        staging.run_in_staging(db, schemas, objects, statements, run_id, first=number == 0)
    deferred_sql = ""
    if deferred:
        list_file = lists / "switch.list"
        list_file.write_text("".join(e.line + "\n" for e in listed if e.dump_id in deferred))
        deferred_sql = staging.restore_sql(pg_restore, paths.dump_dir, list_file)
    stage_dir = paths.root / "staging"
    shutil.rmtree(stage_dir, ignore_errors=True)
    patterns = [literal_pattern(staging.stage_name(s)) for s in schemas]
    with client_environment(settings.target, app_name=RESTORE_APP_NAME) as env:
        dumped = subprocess.run(
            [tool("pg_dump", settings.pg_bin_dir), "--format=directory", "--compress=0", "--no-owner",
             "--no-privileges", *[f"--schema={p}" for p in patterns], f"--file={stage_dir}",
             f"--dbname={settings.target.safe_url()}"], env=env, capture_output=True, text=True)
    if dumped.returncode != 0:
        raise ClientCommandError(f"pg_dump of the staging schemas failed: {dumped.stderr.strip()[-1000:]}")
    parallel = settings.jobs > 1
    unique_builds = staging.unique_constraint_builds(db, [staging.stage_name(s) for s in schemas]) if parallel else {}
    with settings.target.connect() as admin:  # the staging schemas are rebuilt from the archive: out of the way
        with admin.transaction():
            for schema in schemas:
                stage, shadow = staging.stage_name(schema), staging.shadow_name(schema)
                if staging._exists(admin, shadow):
                    raise swap.SwapError(f"schema {shadow} exists but is not recorded in _pgrepl.cleanup: drop it")
                staging._rename(admin, stage, shadow)
                staging.record_cleanup(admin, shadow, "shadow", run_id)
    linked = staging.link_data_files(paths.dump_dir, source_entries, stage_dir, read_entries(stage_dir), schemas)
    tuned = staging.tune_archive(stage_dir, unique_builds, freeze=parallel)
    log.info("staging archive for pg_restore --jobs %s: %s COPY WITH (FREEZE), %s primary keys and unique constraints "
             "built beside the other indexes, %s FK checks as merge joins", settings.jobs, tuned["frozen_copies"],
             tuned["unique_indexes_beside"], tuned["fk_checks_merged"])
    stage_list = lists / "staging-archive.list"
    listing = subprocess.run([pg_restore, "--list", str(stage_dir)], capture_output=True, text=True)
    if listing.returncode != 0:
        raise ClientCommandError(f"cannot read the staging archive: {listing.stderr.strip()[-1000:]}")
    stage_list.write_text(listing.stdout)
    return {"schemas": schemas, "stage_dir": stage_dir, "stage_list": stage_list, "linked": linked,
            "deferred_sql": deferred_sql, "deferred": len(deferred), "objects": objects, "ddl_entries": len(ddl),
            "ddl_batches": len(batches), "tuned": tuned}


def restore(settings: ReplicationSettings, key: str, run_id: str, runner=run_script, dump_host: str | None = None) -> dict:
    """Build tonight's copy in staging schemas, switch it in with one short transaction, drop yesterday's in
    batches (:mod:`pgrepl.staging`); on any failure before the switch drop the staging work: the live warehouse
    is never touched.

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
    steps: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        steps[name] = round(time.monotonic() - t0, 3)

    with settings.target.connect() as db:
        swap.lock_warehouse(db, run_id)
        if swap.swap_in_progress(db):  # an attempt of the version before staging stopped half-way
            log.warning("a previous attempt left a swap in progress: putting yesterday's warehouse back first")
            swap.rollback_swap(db)
        swap.stop_orphan_restores(db)
        t0 = time.monotonic()
        leftovers = staging.finish_cleanup(db, lock_timeout=settings.switch_lock_timeout)
        timed("earlier_cleanup", t0)
        if leftovers["dropped"]:
            log.info("finished dropping what earlier runs left: %s", ", ".join(leftovers["dropped"]))
        unfinished = staging.pending_cleanup(db, ("staging", "shadow"))
        if unfinished:
            raise swap.WarehouseBusy("an earlier attempt's staging schemas could not be dropped (a session holds "
                                     "them): " + ", ".join(s for s, _ in unfinished))
        t0 = time.monotonic()
        planned = build_restore_list(settings, paths)
        timed("restore_list", t0)
        restore_list = planned.restore_list
        for entry, reason in restore_list.dropped:
            log.info("not restored: %s (%s)", entry.line, reason)
        if planned.enum_labels:  # before the restore loads rows that use them (an enum cannot lose labels)
            added = table_modes.add_enum_labels(
                db, planned.enum_labels, table_modes.enum_labels(db, planned.enum_labels))
            db.commit()
            if added:
                log.info("labels added to kept enums: %s", ", ".join(added))
        try:
            t0 = time.monotonic()
            built = build_staging(db, settings, paths, planned, run_id)
            timed("staging_ddl", t0)
            log.info("staging schemas ready for the rows: %s entries in %s transaction(s), %s created at the switch, "
                     "%s data files linked (%.0f MB)", built["ddl_entries"], built["ddl_batches"], built["deferred"],
                     built["linked"].linked, built["linked"].bytes / 1e6)
            t0 = time.monotonic()
            env_extra = restore_environment(settings, paths)
            env_extra.update(PGREPL_DUMP_DIR=str(built["stage_dir"]), PGREPL_LIST_FILE=str(built["stage_list"]))
            with client_environment(settings.target, extra=env_extra, app_name=RESTORE_APP_NAME) as env:
                runner(RESTORE_SCRIPT, env)
            if built["linked"].by_copy:
                db.rollback()
                loaded = staging.copy_by_columns(db, built["linked"].by_copy)
                log.info("loaded by COPY with the source's column order: %s", loaded)
            timed("pg_restore", t0)
            db.rollback()
            staged_bytes = staging.record_staging_size(db, built["schemas"], run_id)
            result = staging.switch(db, run_id, planned.replaced, planned.kept, built["objects"],
                                    built["deferred_sql"], settings.switch_lock_timeout, settings.switch_retries,
                                    settings.switch_cancel_readers)
            steps["switch"] = result.seconds
            log.info("switched in %.3f s (attempt %s); kept in place: %s", result.seconds, result.attempts,
                     result.moved)
        except BaseException as exc:
            log.error("restore failed: tonight's staging work is dropped; the live warehouse was not touched")
            workdir.mark_restore_failed(paths.root, exc)  # the next attempt takes a fresh dump
            try:
                db.rollback()
                staging.finish_cleanup(db, kinds=("staging", "shadow"), lock_timeout=settings.switch_lock_timeout)
            except Exception as cleanup_error:  # noqa: BLE001 - the restore's own error is the one to report
                log.warning("staging schemas not dropped yet (the next attempt does it): %s", cleanup_error)
            raise
        t0 = time.monotonic()
        try:  # tonight's copy is live: a cleanup that stops half-way is finished by the next attempt or night
            cleanup = staging.finish_cleanup(db, lock_timeout=settings.switch_lock_timeout)
        except Exception as exc:  # noqa: BLE001 - recorded in _pgrepl.cleanup; never fails a night already switched
            log.warning("yesterday's schemas are not all dropped yet (recorded in _pgrepl.cleanup: the next "
                        "attempt or night finishes it): %s", exc)
            cleanup = {"dropped": {}, "pending": ["see _pgrepl.cleanup"], "lost": []}
        timed("cleanup", t0)
    lost = [item for item in cleanup["lost"] if not swap._recreated_by_compat(item)]
    for item in lost:
        log.warning("dropped with yesterday's tables (it depended on them): %s", item)
    workdir.record_successful_dump(settings.work_dir, paths.dump_dir, key)
    workdir.clear_restore_failed(paths.root)
    workdir.remove_consumed_dump(paths.dump_dir)
    shutil.rmtree(paths.root / "staging", ignore_errors=True)
    return {
        "seconds": round(time.monotonic() - started, 3),
        "log_file": str(paths.log_dir / "pg_restore.log"),
        "items": len(restore_list.kept),
        "skipped": len(restore_list.dropped),
        "kept_in_place": result.moved,
        "dropped_with_old_tables": lost,
        "refresh_after_incremental": planned.refresh_later,
        "steps": steps,
        "switch": {"seconds": result.seconds, "attempts": result.attempts, "cancelled": result.cancelled},
        "cleanup_pending": cleanup["pending"],
        "staged_bytes": staged_bytes,
        "archive": built["tuned"],
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


def rollback(settings: ReplicationSettings, run_id: str) -> list[str]:
    """After a failed restore: drop what it left of its staging work (the live warehouse was never touched), and put
    yesterday's warehouse back if an attempt of the version before staging stopped half-way. Returns the schemas
    put back or dropped.

    It first takes the warehouse lock for ``run_id``, as the restore does: a restore attempt of this run that still
    runs although Airflow failed it (its supervisor died, the task process lives on) has its session ended, so two
    cleanups never race. When another run holds the lease (this run failed before its restore because of it), that
    run's staging work is its own: nothing is touched."""
    with settings.target.connect() as db:
        try:
            swap.lock_warehouse(db, run_id)
        except swap.WarehouseBusy as exc:
            if exc.retryable:
                raise
            log.warning("nothing rolled back: %s", exc)
            return []
        restored = swap.rollback_swap(db)
        done = staging.finish_cleanup(db, kinds=("staging", "shadow"), lock_timeout=settings.switch_lock_timeout)
    return restored + sorted(done["dropped"])
