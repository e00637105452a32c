"""Full copy against the seed's own code, on the seed's own data: the figure ../shared/bench/README.md describes.

    export PGREPL_SEED_DIR=/path/to/pix-db-replication   # git clone https://github.com/1024pix/pix-db-replication
    make bench-seed                                       # scale 3, 3 reps, methods seed,pgcopydb,project
    make bench-seed BENCH_ARGS="--scale 0.1 --reps 1"     # quick end-to-end check
    .venv/bin/python bench/seed_bench.py --prepare-only --scale 3   # only the seed checkout and the kept source

What one invocation does (see bench/README.md, "The seed's own code"):

1. Exports the seed (a git checkout or a bare repository, ``--seed-dir`` / ``PGREPL_SEED_DIR``; ``--seed-rev``,
   default HEAD) into ``.bench/seed/`` (git-ignored) and runs ``npm ci --omit=dev`` there; reused while the commit
   is the same.
2. Starts the kept PostgreSQL 15 cluster of that scale, ``.bench/seed-s<scale>/``; the first time, restores the
   seed's ``local-setup/data/source.pgsql`` into database ``pix`` and inflates it with ``bench/inflate_pix.sql``
   (``psql -v scale=N``), then ``VACUUM (FREEZE, ANALYZE)``. The same cluster holds the targets.
3. Runs each method once per repetition, interleaved (the order rotates), each into a fresh target database owned
   by the non-superuser role ``warehouse``, checked afterwards (exact row count of every table against the source,
   the FKs, the four enrichment indexes) and dropped:

   - ``seed``: the seed's ``src/steps/backup-restore/index.js`` ``run(configuration)`` (pg_dump -Fc, drop, pg_restore
     -j4 --use-list, compat view, its ``enrichment.add``), configuration from its own
     ``src/config/index.js`` with ``PG_RESTORE_JOBS=4``, ``RESTORE_FK_CONSTRAINTS=true``, ``BACKUP_MODE={}``;
     timed around ``run`` inside a small node driver written under ``.bench/``.
   - ``pgcopydb``: ``pgcopydb clone --table-jobs 2 --index-jobs 2 --no-owner --no-acl --no-comments`` + the same
     four indexes on one connection (the seed's SQL).
   - ``project``: ``airflow dags test pg_replication`` (SQLite metadata, temporary AIRFLOW_HOME), same settings;
     the time is Airflow's: from the ``dump`` task's start to the ``enrichment`` task's end.
4. Prints medians, ratios to the seed, CPU seconds and the load average; writes ``.bench/results/seed-<stamp>.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR, PROD_LIKE, ROOT, KeptCluster, PgConn, log, measure, median, table, tool, warm, write_json,
)
from generate import describe  # noqa: E402
from methods import Context, catalog_counts, enrich, verify  # noqa: E402
from seed_parse import airflow_span, inflate_for_scale, rotation, seed_phases  # noqa: E402

from pgrepl.pgtools import client_env, find_bin_dir  # noqa: E402

METHODS = ("seed", "pgcopydb", "project")
SOURCE_DB = "pix"
SOURCE_ROLE = "pix_source"
SOURCE_PASSWORD = "bench-source-pw"  # throwaway local cluster, kept between runs
TARGET_ROLE = "warehouse"
TARGET_PASSWORD = "bench-target-pw"
SEED_DIR = BENCH_DIR / "seed"
SEED_DUMP = "local-setup/data/source.pgsql"
SEED_RUN = "src/steps/backup-restore/index.js"
INFLATE_SQL = Path(__file__).resolve().parent / "inflate_pix.sql"
#: the seed's settings of the figure (and the project's: same variable names)
SEED_SETTINGS = {"PG_RESTORE_JOBS": "4", "RESTORE_FK_CONSTRAINTS": "true", "BACKUP_MODE": "{}"}
#: server settings while restoring and inflating the source (once; not while measuring)
LOAD_SETTINGS = {"maintenance_work_mem": "256MB"}
PROFILES = {
    # durable, PostgreSQL defaults: how a warehouse server runs (default)
    "prod": {**PROD_LIKE, "maintenance_work_mem": "64MB"},
    # durability off, as the tests' throwaway clusters
    "fast": {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_wal_size": "4GB",
             "shared_buffers": "128MB", "maintenance_work_mem": "64MB"},
}

#: the node driver: the seed's own configuration and run(), timed around run() only
DRIVER = """\
import { pathToFileURL } from 'node:url';
import path from 'node:path';
import fs from 'node:fs';
const [seedDir, resultFile] = process.argv.slice(2);
const load = (rel) => import(pathToFileURL(path.join(seedDir, rel)).href);
const { configuration } = await load('src/config/index.js');
const { run } = await load('%(run)s');
const started = new Date();
const t0 = process.hrtime.bigint();
await run(configuration);
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
fs.writeFileSync(resultFile, JSON.stringify({ seconds, started: started.toISOString(), ended: new Date().toISOString(),
  PG_RESTORE_JOBS: configuration.PG_RESTORE_JOBS, RESTORE_FK_CONSTRAINTS: configuration.RESTORE_FK_CONSTRAINTS,
  BACKUP_MODE: configuration.BACKUP_MODE }));
""" % {"run": SEED_RUN}


# -- the seed's code -------------------------------------------------------------------------------

def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def prepare_seed(seed_dir: str | None, rev: str, refresh: bool, logs: Path) -> dict:
    """Export the seed into ``.bench/seed/`` and ``npm ci`` there (reused while the commit is unchanged)."""
    if not seed_dir:
        raise SystemExit("seed_bench: no seed checkout: set PGREPL_SEED_DIR or --seed-dir to a clone of "
                         "https://github.com/1024pix/pix-db-replication (git clone on a machine with network)")
    src = Path(seed_dir).resolve()
    if not src.exists():
        raise SystemExit(f"seed_bench: PGREPL_SEED_DIR / --seed-dir {src} does not exist")
    found = subprocess.run(["git", "-C", str(src), "rev-parse", "--absolute-git-dir"], capture_output=True, text=True)
    git_dir = found.stdout.strip() if found.returncode == 0 else None
    commit = _git(git_dir, "rev-parse", f"{rev}^{{commit}}") if git_dir else "working-tree"
    marker = SEED_DIR / ".bench-seed.json"
    if not refresh and marker.exists() and (SEED_DIR / "node_modules").is_dir():
        info = json.loads(marker.read_text())
        if info.get("commit") == commit and commit != "working-tree":
            log(f"seed {commit[:10]} already in {SEED_DIR} (npm ci done)")
            return info
    shutil.rmtree(SEED_DIR, ignore_errors=True)
    SEED_DIR.mkdir(parents=True)
    if git_dir:
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", f"--git-dir={git_dir}", "archive", "--format=tar", commit], stdout=archive,
                           check=True)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(SEED_DIR, filter="data")
        subject = _git(git_dir, "log", "-1", "--format=%cs %s", commit)
    else:  # a plain copy of the repository's files
        shutil.copytree(src, SEED_DIR, dirs_exist_ok=True, ignore=shutil.ignore_patterns("node_modules", ".git"))
        subject = "(not a git checkout)"
    for needed in (SEED_RUN, SEED_DUMP, "package-lock.json"):
        if not (SEED_DIR / needed).exists():
            raise SystemExit(f"seed_bench: {src} is not a pix-db-replication checkout: {needed} is missing")
    log(f"seed {commit[:10]} ({subject}) exported to {SEED_DIR}; npm ci ...")
    t0 = time.perf_counter()
    with open(logs / "npm-ci.log", "wb") as out:
        # node-jq (a dependency of bull-repl, unused by the backup-restore step) downloads a jq binary from
        # github.com in its install script; the registry is all the bench needs
        npm_env = {**os.environ, "NODE_JQ_SKIP_INSTALL_BINARY": "true"}
        proc = subprocess.run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=SEED_DIR, stdout=out,
                              stderr=subprocess.STDOUT, env=npm_env)
    if proc.returncode != 0:
        raise SystemExit(f"seed_bench: npm ci failed in {SEED_DIR} (exit {proc.returncode}); see {logs / 'npm-ci.log'}")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    info = {"commit": commit, "subject": subject, "from": str(src), "node": node,
            "npm_ci_seconds": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    log(f"npm ci done in {info['npm_ci_seconds']} s (node {node})")
    return info


# -- the kept cluster: source database + targets ---------------------------------------------------

class BenchCluster(KeptCluster):
    """The kept cluster of one scale; ``options`` are passed with ``-c`` at every start (a profile can change)."""

    def __init__(self, name: str, root: Path, options: dict | None = None) -> None:  # noqa: D107
        super().__init__(name, root, LOAD_SETTINGS)
        self.options = options or {}

    def start(self) -> "BenchCluster":
        if not self.initialised:
            super().start()  # initdb + the devenv's defaults + LOAD_SETTINGS
            if not self.options:
                return self
            self.stop()
        opts = " ".join([f"-p {self.port}", f"-k {self.root}"] + [f"-c {k}={v}" for k, v in self.options.items()])
        self._run([tool("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "120",
                   "-o", opts, "start"])
        self.started = True
        return self


def _label(scale: float) -> str:
    return f"{scale:g}".replace(".", "_")


def open_source(scale: float, seed: dict, profile: dict, env: dict, logs: Path, inflate_sql: Path,
                regenerate: bool) -> tuple[BenchCluster, PgConn, dict]:
    """Start the kept cluster of ``scale`` with ``profile``; restore + inflate the seed's dump the first time."""
    root = BENCH_DIR / f"seed-s{_label(scale)}"
    meta_file = root / "source.json"
    cluster = BenchCluster(root.name, root)
    if regenerate or not meta_file.exists() or not cluster.initialised:
        cluster.destroy()
        cluster = BenchCluster(root.name, root)
        cluster.start()
        try:
            meta = _load_source(cluster, scale, seed, env, logs, inflate_sql)
        except BaseException:
            cluster.destroy()
            raise
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
        cluster.stop()
    meta = json.loads(meta_file.read_text())
    cluster = BenchCluster(root.name, root, profile)
    cluster.start()
    return cluster, cluster.conn(SOURCE_DB, SOURCE_ROLE, SOURCE_PASSWORD), meta


def _load_source(cluster: BenchCluster, scale: float, seed: dict, env: dict, logs: Path, inflate_sql: Path) -> dict:
    dump = SEED_DIR / SEED_DUMP
    log(f"restoring the seed's {SEED_DUMP} into {cluster.root} and inflating it to scale {scale:g}")
    t0 = time.perf_counter()
    conn = cluster.create_database(SOURCE_DB, SOURCE_ROLE, SOURCE_PASSWORD)
    script = inflate_for_scale(inflate_sql.read_text(), scale)
    if script != inflate_sql.read_text():
        log(f"fractional scale: counts of {inflate_sql.name} rounded to integers (see seed_parse.inflate_for_scale)")
        inflate_sql = cluster.root / "inflate.sql"
        inflate_sql.write_text(script)
        os.chmod(inflate_sql, 0o644)
    with open(logs / "source-load.log", "ab") as out:
        for args in (
            [tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={conn.safe_url()}",
             str(dump)],
            [tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"scale={scale:g}", "-f", str(inflate_sql),
             conn.safe_url()],
        ):
            proc = subprocess.run(args, env=env, stdout=out, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"{Path(args[0]).name} failed loading the source (exit {proc.returncode}); "
                                   f"see {logs / 'source-load.log'}")
    cluster.execute("VACUUM (FREEZE, ANALYZE)", dbname=SOURCE_DB)
    seconds = time.perf_counter() - t0
    meta = {"scale": scale, "seed_commit": seed.get("commit"), "inflate_sql": str(inflate_sql),
            "loaded_seconds": round(seconds, 1), **describe(conn)}
    log(f"source ready in {seconds:.0f} s: {meta['database_mb']:.0f} MB")
    return meta


def write_passfile(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"127.0.0.1:*:*:{SOURCE_ROLE}:{SOURCE_PASSWORD}\n127.0.0.1:*:*:{TARGET_ROLE}:{TARGET_PASSWORD}\n")
    return str(path)


# -- the methods -----------------------------------------------------------------------------------

def _cpu(result: dict, m) -> None:
    result["cpu_seconds"] = round(m.cpu, 2)
    result["cpu_client_seconds"] = round(m.client_cpu, 2)
    result["cpu_server_seconds"] = round(sum(m.server_cpu.values()), 2)


def _run_logged(args: list[str], env: dict, log_file: Path, cwd: Path | None = None) -> None:
    with open(log_file, "ab") as out:
        proc = subprocess.run(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-2500:]
        raise RuntimeError(f"{Path(args[0]).name} exited with {proc.returncode} (log {log_file}):\n{tail}")


def run_seed(ctx: Context, rep: int, cluster: BenchCluster) -> dict:
    dbname = f"bench_seed_{rep}"
    target = ctx.new_target(dbname)
    work = ctx.work / dbname
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)  # the seed writes ./dump.pgsql and ./restore.list in its working directory
    driver = ctx.work / "seed_driver.mjs"
    driver.write_text(DRIVER)
    result_file = work / "result.json"
    log_file = ctx.logs / f"{dbname}.log"
    env = {
        **ctx.env,
        **SEED_SETTINGS,
        "NODE_ENV": "production",  # no dotenv file, pg_dump/pg_restore --verbose as in production
        "SOURCE_DATABASE_URL": ctx.source.safe_url(),  # passwords come from PGPASSFILE (libpq and node-postgres)
        "TARGET_DATABASE_URL": target.safe_url(),
        "DATABASE_URL": target.safe_url(),
    }
    result: dict = {"load_before": os.getloadavg()[0]}
    try:
        t0 = time.perf_counter()
        with measure({"pg": cluster}) as m:
            _run_logged(["node", str(driver), str(SEED_DIR), str(result_file)], env, log_file, cwd=work)
        result["process_seconds"] = time.perf_counter() - t0
        _cpu(result, m)
        inner = json.loads(result_file.read_text())
        result["total_seconds"] = inner["seconds"]
        result["seed_config"] = {k: inner.get(k) for k in ("PG_RESTORE_JOBS", "RESTORE_FK_CONSTRAINTS", "BACKUP_MODE")}
        result.update(seed_phases(log_file.read_text(errors="replace").splitlines()))
        result["check"] = verify(ctx, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ctx.drop_target(dbname)
    return result


def run_pgcopydb(ctx: Context, rep: int, cluster: BenchCluster) -> dict:
    binary = shutil.which("pgcopydb")
    if not binary:
        raise RuntimeError("pgcopydb is not installed (apt-get install pgcopydb)")
    dbname = f"bench_pgcopydb_{rep}"
    target = ctx.new_target(dbname)
    work = ctx.work / f"{dbname}.pgcopydb"
    shutil.rmtree(work, ignore_errors=True)
    log_file = ctx.logs / f"{dbname}.log"
    result: dict = {"load_before": os.getloadavg()[0]}
    try:
        t0 = time.perf_counter()
        with measure({"pg": cluster}) as m:
            t_clone = time.perf_counter()
            _run_logged([binary, "clone", "--source", ctx.source.safe_url(), "--target", target.safe_url(),
                         "--dir", str(work), "--table-jobs", "2", "--index-jobs", "2",
                         "--no-owner", "--no-acl", "--no-comments"], ctx.env, log_file)
            result["clone_seconds"] = time.perf_counter() - t_clone
            t_enrich = time.perf_counter()
            enrich(target, False, {})  # the seed's four statements, one after the other on one connection
            result["enrichment_seconds"] = time.perf_counter() - t_enrich
        result["total_seconds"] = time.perf_counter() - t0
        _cpu(result, m)
        result["check"] = verify(ctx, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ctx.drop_target(dbname)
    return result


# a small Airflow runner of our own: it needs the task instances' start and end dates, and only the repository layout

def airflow_env(home: Path, settings: dict, base: dict) -> dict:
    """devenv's isolated Airflow (SQLite in ``home``), without the seed's settings and database URLs of ``base``."""
    from devenv.airflow_runner import airflow_env as isolated_airflow_env

    base = {k: v for k, v in base.items() if k not in SEED_SETTINGS and not k.endswith("DATABASE_URL")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    return isolated_airflow_env(home, settings, base=base)


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def airflow_tasks(home: Path, dag_id: str) -> tuple[str | None, list[dict]]:
    """State and task instances (with start/end dates) of the latest run of ``dag_id``."""
    with sqlite3.connect(home / "airflow.db") as db:
        last = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                          (dag_id,)).fetchone()
        if not last:
            return None, []
        rows = db.execute("SELECT task_id, map_index, state, start_date, end_date FROM task_instance "
                          "WHERE dag_id = ? AND run_id = ? ORDER BY start_date", (dag_id, last[0])).fetchall()
    keys = ("task_id", "map_index", "state", "start_date", "end_date")
    return last[1], [dict(zip(keys, r)) for r in rows]


def _url(conn: PgConn, password: str) -> str:
    return f"postgres://{conn.user}:{password}@{conn.host}:{conn.port}/{conn.dbname}"


def run_project(ctx: Context, rep: int, cluster: BenchCluster, home: Path) -> dict:
    dbname = f"bench_project_{rep}"
    target = ctx.new_target(dbname)
    work = ctx.work / f"{dbname}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log_file = ctx.logs / f"{dbname}.log"
    settings = {
        **SEED_SETTINGS,
        "AIRFLOW_CONN_REPLICATION_SOURCE": _url(ctx.source, SOURCE_PASSWORD),  # env only, never argv
        "AIRFLOW_CONN_REPLICATION_TARGET": _url(target, TARGET_PASSWORD),
        "REPLICATION_WORK_DIR": str(work),
        "MAX_RETRY_COUNT": "0",
        "PG_BIN_DIR": find_bin_dir(None),
    }
    env = airflow_env(home, settings, ctx.env)
    result: dict = {"load_before": os.getloadavg()[0]}
    try:
        t0 = time.perf_counter()
        with measure({"pg": cluster}) as m:
            with open(log_file, "ab") as out:
                proc = subprocess.run([airflow_bin(), "dags", "test", "pg_replication"], env=env, stdout=out,
                                      stderr=subprocess.STDOUT, timeout=3600)
        result["process_seconds"] = time.perf_counter() - t0
        _cpu(result, m)
        state, tasks = airflow_tasks(home, "pg_replication")
        if proc.returncode != 0 or state != "success":
            failed = [t["task_id"] for t in tasks if t["state"] not in ("success", "skipped")]
            raise RuntimeError(f"airflow dags test: exit {proc.returncode}, run {state}, tasks not successful: "
                               f"{failed} (log {log_file})")
        result.update(airflow_span(tasks))  # total_seconds = dump start -> enrichment end
        result["check"] = verify(ctx, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ctx.drop_target(dbname)
    return result


# -- report ----------------------------------------------------------------------------------------

PHASES = {
    "seed": ("dump", "restore", "enrichment"),
    "pgcopydb": ("clone", "enrichment"),
    "project": ("dump", "restore", "compat_views", "enrichment"),
}
WHAT = {
    "seed": "seed's run() (node): pg_dump -Fc, pg_restore -j4 --use-list, its 4 indexes",
    "pgcopydb": "pgcopydb clone --table-jobs 2 --index-jobs 2 + 4 indexes",
    "project": "airflow dags test pg_replication: dump start -> enrichment end",
}


def render(args, meta: dict, seed: dict, methods: list[str], results: dict, uptime: dict, profile: str) -> str:
    ok = {m: [r for r in rs if r.get("check") == "ok"] for m, rs in results.items()}
    med = {m: median([r["total_seconds"] for r in rs]) for m, rs in ok.items()}
    lines = [f"## Full copy on the seed's data and code — scale {args.scale:g} ({meta['database_mb']:.0f} MB source), "
             f"{args.reps} reps, profile {profile}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}",
             "", f"seed commit {seed.get('commit', '?')[:12]} ({seed.get('subject', '')}), node {seed.get('node')}", ""]
    rows = []
    for m in methods:
        rs = ok[m]
        phases = ", ".join(f"{p} {median([r[f'{p}_seconds'] for r in rs if f'{p}_seconds' in r]):.1f}"
                           for p in PHASES[m] if any(f"{p}_seconds" in r for r in rs))
        ratio = med[m] / med["seed"] if ok.get("seed") and rs else float("nan")
        rows.append([m, WHAT[m], f"{len(rs)}/{len(results[m])}", med[m],
                     min((r["total_seconds"] for r in rs), default=float("nan")),
                     max((r["total_seconds"] for r in rs), default=float("nan")), ratio,
                     median([r["cpu_seconds"] for r in rs]), median([r["cpu_server_seconds"] for r in rs]), phases])
    lines.append(table(["method", "what", "ok/reps", "median s", "min s", "max s", "ratio to seed",
                        "median CPU s", "of which server", "median phases s"], rows))
    lines += ["", "CPU = the client process with its children (node/pg_dump/pg_restore, pgcopydb, or the whole "
              "`airflow dags test` process: parsing and every task) + the PostgreSQL server."]
    lines.append("")
    if ok.get("seed"):
        for m in ("project", "pgcopydb"):
            if ok.get(m):
                lines.append(f"{m}/seed = {med[m] / med['seed']:.2f}")
        if ok.get("project") and ok.get("pgcopydb"):
            lines.append(f"project/pgcopydb = {med['project'] / med['pgcopydb']:.2f}")
    for m in methods:
        for n, r in enumerate(results[m]):
            if r.get("check") != "ok":
                lines.append(f"{m} rep {n + 1}: {r.get('check') or r.get('error', '?')[:300]}")
    lines += ["", f"load before: {uptime['before']}", f"load after:  {uptime['after']}"]
    return "\n".join(lines)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-dir", default=os.environ.get("PGREPL_SEED_DIR"),
                        help="a git checkout (or bare clone) of 1024pix/pix-db-replication (default $PGREPL_SEED_DIR)")
    parser.add_argument("--seed-rev", default="HEAD", help="commit/branch/tag of the seed to run (default HEAD)")
    parser.add_argument("--refresh-seed", action="store_true", help="export the seed and run npm ci again")
    parser.add_argument("--scale", type=float, default=3.0, help="inflate_pix.sql scale (3 = ~1.8 GB); default 3")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each method (default 3)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {','.join(METHODS)}")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="prod",
                        help="server settings while measuring: prod = durable PostgreSQL defaults (default), "
                             "fast = fsync/synchronous_commit/full_page_writes off")
    parser.add_argument("--inflate-sql", type=Path, default=Path(os.environ.get("PGREPL_INFLATE_SQL", INFLATE_SQL)),
                        help=f"the inflating script (default {INFLATE_SQL.relative_to(ROOT)})")
    parser.add_argument("--regenerate", action="store_true", help="restore and inflate the kept source again")
    parser.add_argument("--prepare-only", action="store_true", help="only export the seed and build the source")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; choose among {','.join(METHODS)}")
    if "pgcopydb" in methods and not shutil.which("pgcopydb"):
        parser.error("--methods pgcopydb: pgcopydb is not installed (apt-get install pgcopydb)")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    work, logs = BENCH_DIR / "work", BENCH_DIR / "logs" / f"seed-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    bin_dir = find_bin_dir(None)
    env = client_env(write_passfile(work / "pgpass"), app_name="pgrepl-bench")
    env.pop("PGOPTIONS", None)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])  # the seed calls pg_dump/pg_restore/psql by name

    seed = prepare_seed(args.seed_dir, args.seed_rev, args.refresh_seed, logs)
    cluster, source, meta = open_source(args.scale, seed, PROFILES[args.profile], env, logs, args.inflate_sql,
                                        args.regenerate)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    try:
        tables, fks, _ = catalog_counts(source)
        log(f"source: scale {args.scale:g}, {meta['database_mb']:.0f} MB, {sum(tables.values())} rows in "
            f"{len(tables)} tables, {fks} FKs; profile {args.profile}; {os.cpu_count()} CPUs; port {cluster.port}")
        if args.prepare_only:
            return 0
        warm(cluster.data)
        ctx = Context(cluster, source, cluster, TARGET_ROLE, TARGET_PASSWORD, work, logs, 4, env, tables, fks)
        home = Path(tempfile.mkdtemp(prefix="airflow-", dir=work))
        if "project" in methods:
            log("airflow db migrate (temporary AIRFLOW_HOME) ...")
            migrate = subprocess.run([airflow_bin(), "db", "migrate"], env=airflow_env(home, {}, env),
                                     capture_output=True, text=True)
            if migrate.returncode != 0:
                raise RuntimeError(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}\n{migrate.stderr[-2000:]}")
        runners = {
            "seed": lambda rep: run_seed(ctx, rep, cluster),
            "pgcopydb": lambda rep: run_pgcopydb(ctx, rep, cluster),
            "project": lambda rep: run_project(ctx, rep, cluster, home),
        }
        uptime = {"before": _uptime()}
        log(f"uptime before: {uptime['before']}")
        for rep in range(args.reps):
            for name in rotation(methods, rep):
                log(f"rep {rep + 1}/{args.reps} {name} ...")
                try:
                    res = runners[name](rep)
                except Exception as exc:  # keep measuring the others; the table shows the failure
                    log(f"rep {rep + 1} {name} FAILED: {exc}")
                    res = {"error": str(exc)[:3000], "check": "error"}
                results[name].append(res)
                if "total_seconds" in res:
                    log(f"rep {rep + 1}/{args.reps} {name}: {res['total_seconds']:.1f} s "
                        f"(cpu {res.get('cpu_seconds', float('nan')):.1f} s, load {res['load_before']:.1f}) "
                        f"check {res.get('check')}")
        uptime["after"] = _uptime()
        log(f"uptime after: {uptime['after']}")
        report = render(args, meta, seed, methods, results, uptime, args.profile)
        print(report)
        out = BENCH_DIR / "results" / f"seed-{stamp}"
        write_json(out.with_suffix(".json"), {"args": vars(args), "profile": PROFILES[args.profile], "seed": seed,
                                              "source": meta, "uptime": uptime, "results": results})
        out.with_suffix(".md").write_text(report + "\n")
        shutil.rmtree(home, ignore_errors=True)
        log(f"results in {out}.json / .md; logs in {logs}")
    finally:
        cluster.stop()
    return 0 if all(r.get("check") == "ok" for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
