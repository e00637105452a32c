"""The methods the benchmark compares: (a) the project's path, (b) the seed's commands and variants, (c) pgcopydb.

Each method copies the kept source into a fresh target database and returns a dict of timings
(``total_seconds`` always; phase timings and CPU seconds when known).

Variants of (b) are named by dash-separated tokens after ``b`` (``b-dir-Z0-tuned-par``):

=========  ====================================================================================
token      meaning
=========  ====================================================================================
dir        ``pg_dump --format=d --jobs J`` instead of the seed's ``--format=c`` (single-threaded)
Z<n>       ``--compress=<n>`` (default: pg_dump's, i.e. gzip level 6)
mwm        restore and enrichment sessions with ``maintenance_work_mem=512MB`` (``mwm1g``: 1GB)
sync       restore and enrichment sessions with ``synchronous_commit=off``
pmw<n>     ``max_parallel_maintenance_workers=<n>`` in those sessions (server default 2)
tuned      ``mwm`` + ``sync``
nofk       no FK CONSTRAINT entries (measures the cost of the foreign keys)
fknv       FKs left out of pg_restore and added afterwards as ``NOT VALID`` (no validating scan; definitions
           from the source's ``pg_get_constraintdef``)
j<n>       ``pg_restore --jobs <n>`` (default: ``--jobs``)
par        the four enrichment indexes built on four connections at once (seed: one after the other)
phases     restore split into pre-data / data / indexes+constraints / FKs runs, each measured alone
           (wall and CPU per phase; the phases barely overlap in a normal run anyway)
best       ``dir`` + ``Z0`` + ``tuned`` + ``par``
=========  ====================================================================================
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from common import Measure, PgConn, capture, log, measure, run_cmd, tool

#: the seed's four enrichment indexes (DESIGN.md step 5), as the seed runs them
ENRICHMENT_INDEXES = [
    '''CREATE INDEX "knowledge-elements_createdAt_idx" ON "knowledge-elements" (cast("createdAt" AT TIME ZONE 'UTC+1' as date) DESC)''',
    '''CREATE INDEX "knowledge-element-snapshots_snappedAt_idx" ON "knowledge-element-snapshots" (cast("snappedAt" AT TIME ZONE 'UTC+1' as date) DESC)''',
    '''CREATE INDEX "answers_challengeId_idx" ON "answers" ("challengeId")''',
    '''CREATE INDEX "users_createdAt_idx" ON "users" (cast("createdAt" AT TIME ZONE 'UTC+1' as date) DESC)''',
]
ENRICHMENT_NAMES = [re.search(r'INDEX "([^"]+)"', sql).group(1) for sql in ENRICHMENT_INDEXES]


@dataclass
class Variant:
    """How a (b)-style pg_dump/pg_restore copy is run."""

    name: str
    fmt: str = "c"
    compress: int | None = None
    restore_jobs: int | None = None  # None: the run's --jobs
    session: dict[str, str] = field(default_factory=dict)
    fks: bool = True
    fk_not_valid: bool = False
    parallel_enrichment: bool = False
    phases: bool = False

    def pgoptions(self) -> str:
        return " ".join(f"-c {k}={v}" for k, v in self.session.items())

    def describe(self) -> str:
        parts = [f"-F{self.fmt}" + (" -jJ" if self.fmt == "d" else "")
                 + (f" -Z{self.compress}" if self.compress is not None else ""),
                 f"restore -j{self.restore_jobs or 'J'}"]
        short = {"maintenance_work_mem": "mwm", "synchronous_commit": "sync_commit",
                 "max_parallel_maintenance_workers": "pmw"}
        parts += [f"{short.get(k, k)}={v}" for k, v in self.session.items()]
        if not self.fks:
            parts.append("no FKs")
        if self.fk_not_valid:
            parts.append("FKs NOT VALID")
        if self.parallel_enrichment:
            parts.append("parallel enrichment")
        if self.phases:
            parts.append("phased")
        return ", ".join(parts)


def parse_variant(name: str) -> Variant:
    tokens = name.split("-")
    if tokens[0] != "b":
        raise ValueError(f"not a (b) variant: {name!r}")
    v = Variant(name)
    for tok in tokens[1:]:
        if tok == "dir":
            v.fmt = "d"
        elif re.fullmatch(r"Z\d", tok):
            v.compress = int(tok[1:])
        elif tok == "mwm":
            v.session["maintenance_work_mem"] = "512MB"
        elif tok == "mwm1g":
            v.session["maintenance_work_mem"] = "1GB"
        elif tok == "sync":
            v.session["synchronous_commit"] = "off"
        elif re.fullmatch(r"pmw\d", tok):
            v.session["max_parallel_maintenance_workers"] = tok[3:]
        elif tok == "tuned":
            v.session.update({"maintenance_work_mem": "512MB", "synchronous_commit": "off"})
        elif tok == "nofk":
            v.fks = False
        elif tok == "fknv":
            v.fk_not_valid = True
        elif re.fullmatch(r"j\d+", tok):
            v.restore_jobs = int(tok[1:])
        elif tok == "par":
            v.parallel_enrichment = True
        elif tok == "phases":
            v.phases = True
        elif tok == "best":
            v = replace(v, fmt="d", compress=0, parallel_enrichment=True,
                        session={**v.session, "maintenance_work_mem": "512MB", "synchronous_commit": "off"})
        else:
            raise ValueError(f"unknown token {tok!r} in method {name!r} (see bench/methods.py)")
    return v


# -- restore lists ---------------------------------------------------------------------------------

_ENTRY = re.compile(r"^\d+; \d+ \d+ (?P<desc>.+)$")


def entry_kind(line: str) -> str | None:
    """The object kind of one ``pg_restore -l`` line (``TABLE DATA``, ``FK CONSTRAINT`` ...); None for comments."""
    match = _ENTRY.match(line)
    if not match:
        return None
    desc = match.group("desc")
    for kind in ("TABLE DATA", "SEQUENCE SET", "SEQUENCE OWNED BY", "FK CONSTRAINT", "DEFAULT ACL", "MATERIALIZED VIEW DATA"):
        if desc.startswith(kind + " "):
            return kind
    return desc.split(" ", 1)[0]


def seed_list(listing: str, fks: bool = True) -> list[str]:
    """The seed's restore list: every entry but COMMENTs (and FKs when ``fks`` is false)."""
    keep = []
    for line in listing.splitlines():
        kind = entry_kind(line)
        if kind is None or kind == "COMMENT" or (kind == "FK CONSTRAINT" and not fks):
            continue
        keep.append(line)
    return keep


# -- the harness state shared by the methods -------------------------------------------------------

@dataclass
class Context:
    source_cluster: object
    source: PgConn
    target_cluster: object
    target_role: str
    target_password: str
    work: Path
    logs: Path
    jobs: int
    env: dict
    source_tables: dict[str, int] = field(default_factory=dict)
    source_fks: int = 0

    def clusters(self) -> dict:
        return {"source": self.source_cluster, "target": self.target_cluster}

    def new_target(self, dbname: str) -> PgConn:
        self.target_cluster.drop_database(dbname)
        return self.target_cluster.create_database(dbname, self.target_role, self.target_password)

    def drop_target(self, dbname: str) -> None:
        self.target_cluster.drop_database(dbname)
        self.target_cluster.execute("CHECKPOINT")


def enrich(target: PgConn, parallel: bool, session: dict[str, str]) -> None:
    """The seed's four indexes: one after the other on one connection, or all at once on four."""
    options = " ".join(f"-c {k}={v}" for k, v in session.items()) or None
    extra = {"options": options} if options else {}

    def build(statements: list[str]) -> None:
        with target.connect(autocommit=True, **extra) as db:
            for sql in statements:
                db.execute(sql)

    if not parallel:
        build(ENRICHMENT_INDEXES)
        return
    with ThreadPoolExecutor(len(ENRICHMENT_INDEXES)) as pool:
        for future in [pool.submit(build, [sql]) for sql in ENRICHMENT_INDEXES]:
            future.result()


def fk_not_valid_statements(source: PgConn) -> list[str]:
    """``ALTER TABLE ... ADD CONSTRAINT ... NOT VALID`` for every FK of the source's public schema."""
    with source.connect() as db:
        return [r[0] for r in db.execute(
            "SELECT format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID', conrelid::regclass, conname, "
            "pg_get_constraintdef(oid)) FROM pg_constraint WHERE contype = 'f' "
            "AND connamespace = 'public'::regnamespace ORDER BY conrelid, conname")]


def run_statements(target: PgConn, statements: list[str], session: dict[str, str]) -> None:
    if not statements:
        return
    options = " ".join(f"-c {k}={v}" for k, v in session.items()) or None
    with target.connect(autocommit=True, **({"options": options} if options else {})) as db:
        for sql in statements:
            db.execute(sql)


def _phase(result: dict, name: str, m: Measure) -> None:
    result[f"{name}_seconds"] = m.wall
    result[f"{name}_cpu"] = m.cpu
    result[f"{name}_cpu_client"] = m.client_cpu
    for server, cpu in m.server_cpu.items():
        result[f"{name}_cpu_{server}"] = cpu


# -- (b) and its variants --------------------------------------------------------------------------

def run_dump_restore(ctx: Context, v: Variant, rep: int) -> dict:
    dbname = f"bench_{re.sub(r'[^a-z0-9]+', '_', v.name.lower())}_{rep}"
    target = ctx.new_target(dbname)
    dump = ctx.work / f"{dbname}.{'dir' if v.fmt == 'd' else 'dump'}"
    _remove(dump)
    log_file = ctx.logs / f"{dbname}.log"
    log_file.unlink(missing_ok=True)
    jobs = v.restore_jobs or ctx.jobs
    restore_env = dict(ctx.env)
    if v.session:
        restore_env["PGOPTIONS"] = v.pgoptions()
    result: dict = {}
    t0 = time.perf_counter()
    try:
        dump_args = [tool("pg_dump"), f"--format={v.fmt}", "--no-owner", "--no-privileges",
                     "--exclude-schema=information_schema", "--exclude-schema=pg_*",
                     f"--file={dump}", f"--dbname={ctx.source.safe_url()}"]
        if v.fmt == "d":
            dump_args.append(f"--jobs={ctx.jobs}")
        if v.compress is not None:
            dump_args.append(f"--compress={v.compress}")
        with measure(ctx.clusters()) as m:
            run_cmd(dump_args, ctx.env, log_file)
        _phase(result, "dump", m)
        result["dump_mb"] = _size(dump) / 2**20

        listing = capture([tool("pg_restore"), "--list", str(dump)], ctx.env)
        entries = seed_list(listing, v.fks and not v.fk_not_valid)
        fk_ddl = fk_not_valid_statements(ctx.source) if v.fk_not_valid else []
        restore = [tool("pg_restore"), "--no-owner", f"--dbname={target.safe_url()}"]
        if not v.phases:
            list_file = ctx.work / f"{dbname}.list"
            list_file.write_text("\n".join(entries) + "\n")
            with measure(ctx.clusters()) as m:
                run_cmd(restore + [f"--jobs={jobs}", f"--use-list={list_file}", str(dump)], restore_env, log_file)
                run_statements(target, fk_ddl, v.session)
            _phase(result, "restore", m)
        else:
            # pre-data, data, then post-data without the FKs, then the FKs alone
            no_fk = [e for e in entries if entry_kind(e) != "FK CONSTRAINT"]
            only_fk = [e for e in entries if entry_kind(e) == "FK CONSTRAINT"]
            restore_total = 0.0
            for phase, section, subset in (("predata", "pre-data", entries), ("data", "data", entries),
                                           ("indexes", "post-data", no_fk), ("fks", "post-data", only_fk)):
                list_file = ctx.work / f"{dbname}.{phase}.list"
                list_file.write_text("\n".join(subset) + "\n")
                with measure(ctx.clusters()) as m:
                    if phase == "fks":
                        run_statements(target, fk_ddl, v.session)
                    if subset:
                        run_cmd(restore + [f"--jobs={jobs}", f"--section={section}", f"--use-list={list_file}",
                                           str(dump)], restore_env, log_file)
                _phase(result, phase, m)
                restore_total += m.wall
            result["restore_seconds"] = restore_total

        with measure(ctx.clusters()) as m:
            enrich(target, v.parallel_enrichment, v.session)
        _phase(result, "enrichment", m)
        result["total_seconds"] = time.perf_counter() - t0
        result["check"] = verify(ctx, target, fks=v.fks)
    finally:
        _remove(dump)
        ctx.drop_target(dbname)
    return result


# -- (c) pgcopydb ----------------------------------------------------------------------------------

def pgcopydb_path() -> str | None:
    return shutil.which("pgcopydb")


def run_pgcopydb(ctx: Context, rep: int) -> dict:
    binary = pgcopydb_path()
    if not binary:
        raise RuntimeError("pgcopydb is not installed (apt-get install pgcopydb)")
    dbname = f"bench_c_{rep}"
    target = ctx.new_target(dbname)
    work = ctx.work / f"{dbname}.pgcopydb"
    _remove(work)
    log_file = ctx.logs / f"{dbname}.log"
    log_file.unlink(missing_ok=True)
    result: dict = {}
    t0 = time.perf_counter()
    try:
        with measure(ctx.clusters()) as m:
            run_cmd([binary, "clone", "--source", ctx.source.safe_url(), "--target", target.safe_url(),
                     "--dir", str(work), "--table-jobs", str(ctx.jobs), "--index-jobs", str(ctx.jobs),
                     "--no-owner", "--no-acl", "--no-comments"], ctx.env, log_file)
        _phase(result, "clone", m)
        with measure(ctx.clusters()) as m:
            enrich(target, False, {})
        _phase(result, "enrichment", m)
        result["total_seconds"] = time.perf_counter() - t0
        result["check"] = verify(ctx, target)
    finally:
        _remove(work)
        ctx.drop_target(dbname)
    return result


# -- (a) the project's path ------------------------------------------------------------------------

def full_copy_available() -> bool:
    try:
        from pgrepl import fullcopy  # noqa: F401
    except ImportError:
        return False
    return hasattr(fullcopy, "run_full_copy")


def run_project(ctx: Context, rep: int) -> dict:
    from pgrepl.fullcopy import run_full_copy
    from pgrepl.settings import ReplicationSettings

    dbname = f"bench_a_{rep}"
    target = ctx.new_target(dbname)
    work = ctx.work / f"{dbname}.work"
    _remove(work)
    work.mkdir(parents=True)
    settings = ReplicationSettings(source=ctx.source, target=target, jobs=ctx.jobs, work_dir=str(work))
    result: dict = {}
    try:
        with measure(ctx.clusters()) as m:
            reported = run_full_copy(settings, f"bench-{rep}-{uuid.uuid4().hex[:8]}")
        _phase(result, "total", m)
        for key, value in (reported or {}).items():
            if isinstance(value, (int, float)) and key.endswith("_seconds") and key != "total_seconds":
                result[key] = float(value)
        result["reported_total_seconds"] = float((reported or {}).get("total_seconds", float("nan")))
        result["check"] = verify(ctx, target)
    finally:
        for found in work.rglob("*.log"):  # keep the timestamped pg_dump/pg_restore logs
            kept = ctx.logs / f"{dbname}.{found.name}"
            shutil.copy(found, kept)
            if found.name == "pg_restore.log":
                result.update(restore_log_summary(kept))
        _remove(work)
        ctx.drop_target(dbname)
    return result


def restore_log_summary(path: Path) -> dict:
    """Wall span of the pg_restore run and seconds per kind summed over jobs, from its timestamped log."""
    try:
        from pgrepl.report import log_span_seconds, parse_restore_log

        summary = parse_restore_log(path)
        out = {f"pg_restore_{kind.lower().replace(' ', '_')}_item_seconds": info["seconds"]
               for kind, info in summary["kinds"].items()}
        out["pg_restore_span_seconds"] = log_span_seconds(path) or 0.0
        return out
    except Exception as exc:  # the report module is the lead's; its absence must not stop a benchmark
        log(f"could not parse {path}: {exc}")
        return {}


# -- correctness check (not timed) -----------------------------------------------------------------

def catalog_counts(conn: PgConn) -> tuple[dict[str, int], int, set[str]]:
    """Exact row counts of the public tables, number of FKs, names of the public indexes."""
    with conn.connect() as db:
        tables = [r[0] for r in db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()]
        counts = {}
        for name in tables:
            quoted = '"' + name.replace('"', '""') + '"'
            counts[name] = db.execute(f"SELECT count(*) FROM public.{quoted}").fetchone()[0]
        fks = db.execute(
            "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE c.contype = 'f' AND n.nspname = 'public'").fetchone()[0]
        indexes = {r[0] for r in db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    return counts, fks, indexes


def verify(ctx: Context, target: PgConn, fks: bool = True) -> str:
    """``ok`` when the target holds the source's rows, its FKs and the four enrichment indexes."""
    counts, nfk, indexes = catalog_counts(target)
    problems = []
    for name, rows in ctx.source_tables.items():
        if counts.get(name) != rows:
            problems.append(f"{name}: {counts.get(name)} rows, source {rows}")
    if fks and nfk != ctx.source_fks:
        problems.append(f"{nfk} FKs, source {ctx.source_fks}")
    missing = [n for n in ENRICHMENT_NAMES if n not in indexes]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if problems:
        log("CHECK FAILED: " + "; ".join(problems))
        return "FAILED: " + "; ".join(problems)
    return "ok"


# -- helpers ---------------------------------------------------------------------------------------

def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


__all__ = ["Context", "Variant", "full_copy_available", "parse_variant", "pgcopydb_path", "run_dump_restore",
           "run_pgcopydb", "run_project", "catalog_counts"]
