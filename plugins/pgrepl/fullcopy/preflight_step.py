"""Preflight: check both databases, the client tools and the work folder before anything is touched."""

from __future__ import annotations

from pathlib import Path

from pgrepl import catalog, sqlfiles, table_modes
from pgrepl.fullcopy.common import PreflightError, _first_line
from pgrepl.pgtools import PgToolError, tool, tool_major_version
from pgrepl.settings import ReplicationSettings


def preflight(settings: ReplicationSettings) -> dict:
    """Check both databases and the tools before anything is touched; return facts for the run."""
    try:
        source = settings.source.connect(connect_timeout=15)
    except Exception as exc:
        raise PreflightError(f"source database {settings.source.safe_url()} unreachable: {_first_line(exc)}",
                             retryable=True) from None
    try:
        target = settings.target.connect(connect_timeout=15)
    except Exception as exc:
        source.close()
        raise PreflightError(f"target database {settings.target.safe_url()} unreachable: {_first_line(exc)}",
                             retryable=True) from None
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
        role, superuser, can_create = target.execute(sqlfiles.load("warehouse/role")).fetchone()
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
        from pgrepl.incremental import NoUsableKeyError, check_incremental_keys

        try:  # every incremental table has a usable key: one catalog query, before anything changes
            check_incremental_keys(source, settings.backup_mode)
        except NoUsableKeyError as exc:
            raise PreflightError(str(exc)) from None
        if settings.kept_tables:
            check_table_modes(settings, relations, table_modes.read_source_facts(source))
    try:
        Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(settings.work_dir) / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(f"REPLICATION_WORK_DIR: {settings.work_dir} is not writable ({exc.strerror})") from None
    return {"server_major": server_major, "relations": len(relations)}


def check_table_modes(settings: ReplicationSettings, relations, facts) -> None:
    """:class:`PreflightError` listing, one per line, each ``BACKUP_MODE`` entry the copy cannot honour."""
    lines = table_modes.problems(settings, relations, facts)
    if lines:
        raise PreflightError("\n".join(lines))
