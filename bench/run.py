"""Full-copy benchmark: the project's path against the seed's commands and pgcopydb, on the same data.

    make bench BENCH_ARGS="--scale 3 --reps 3 --methods a,b,c"
    .venv/bin/python bench/run.py --scale 0.1 --reps 1 --methods b,b-phases,b-best

Methods (see bench/README.md and bench/methods.py):
  a         pgrepl.fullcopy.run_full_copy, as the DAG runs it (dump -> restore with swap -> views -> enrichment)
  b         the seed: pg_dump -Fc, pg_restore --jobs J --no-owner --use-list (COMMENTs dropped), the 4 indexes
  b-<tok>   a variant of b (tokens: dir, Z<n>, mwm, sync, pmw<n>, tuned, nofk, j<n>, par, phases, best)
  c         pgcopydb clone --table-jobs J --index-jobs J + the 4 indexes (when pgcopydb is installed)

Every repetition copies into a fresh target database, dropped afterwards; repetitions interleave the methods
(rotating their order) so that load from other processes spreads evenly. Printed: medians, ratios to the
baseline (b when measured) and CPU seconds (client + source server + target server).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, FAST, PROD_LIKE, log, measure, median, table, warm, write_json  # noqa: E402
from generate import open_source  # noqa: E402
from methods import (  # noqa: E402
    Context, catalog_counts, full_copy_available, parse_variant, pgcopydb_path, run_dump_restore, run_pgcopydb,
    run_project,
)

from devenv.cluster import Cluster  # noqa: E402
from pgrepl.pgtools import client_env  # noqa: E402

TARGET_ROLE = "warehouse"
TARGET_PASSWORD = "bench-target-pw"
PHASES = ["dump", "predata", "data", "indexes", "fks", "enrichment"]


def describe_method(name: str) -> str:
    if name == "a":
        return "project: run_full_copy"
    if name == "c":
        return "pgcopydb clone"
    return parse_variant(name).describe()


def run_one(ctx: Context, name: str, rep: int) -> dict:
    if name == "a":
        return run_project(ctx, rep)
    if name == "c":
        return run_pgcopydb(ctx, rep)
    return run_dump_restore(ctx, parse_variant(name), rep)


def write_passfile(path: Path) -> str:
    lines = [f"127.0.0.1:*:*:pix_source:bench-source-pw", f"127.0.0.1:*:*:{TARGET_ROLE}:{TARGET_PASSWORD}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=3.0, help="source scale factor (1 = 2 M answers); default 3")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each method (default 3)")
    parser.add_argument("--methods", default="a,b,c", help="comma-separated methods (default a,b,c)")
    parser.add_argument("--jobs", type=int, default=4, help="parallel jobs for dump/restore/pgcopydb (default 4)")
    parser.add_argument("--target-profile", choices=("prod", "fast"), default="prod",
                        help="target server settings: prod = durable PostgreSQL defaults (default), "
                             "fast = fsync/synchronous_commit/full_page_writes off")
    parser.add_argument("--regenerate", action="store_true", help="regenerate the kept source first")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in methods:
        if name not in ("a", "c"):
            parse_variant(name)  # fail fast on a typo
    skipped = {}
    if "a" in methods and not full_copy_available():
        skipped["a"] = "pgrepl.fullcopy.run_full_copy not found"
    if "c" in methods and not pgcopydb_path():
        skipped["c"] = "pgcopydb not installed"
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    methods = [m for m in methods if m not in skipped]
    if not methods:
        log("nothing to run")
        return 1

    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = BENCH_DIR / "work"
    logs = BENCH_DIR / "logs" / stamp
    work.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    source = open_source(args.scale, force=args.regenerate)
    target_cluster = Cluster("bench-target", base_dir=str(BENCH_DIR),
                             settings=PROD_LIKE if args.target_profile == "prod" else FAST)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    try:
        target_cluster.start()
        env = client_env(write_passfile(work / "pgpass"))
        env.pop("PGOPTIONS", None)
        tables, fks, _ = catalog_counts(source.conn)
        ctx = Context(source.cluster, source.conn, target_cluster, TARGET_ROLE, TARGET_PASSWORD, work, logs,
                      args.jobs, env, tables, fks)
        log(f"source: scale {args.scale:g}, {source.meta['database_mb']:.0f} MB, {sum(tables.values())} rows "
            f"in {len(tables)} tables, {fks} FKs; target profile {args.target_profile}; jobs {args.jobs}; "
            f"{os.cpu_count()} CPUs")
        warm(source.cluster.data)
        with measure(ctx.clusters()) as counting:
            catalog_counts(source.conn)
        log(f"count(*) of every source table (what (a) runs beside its dump): {counting.wall:.1f} s, "
            f"{counting.cpu:.1f} CPU s")
        for rep in range(args.reps):
            order = methods[rep % len(methods):] + methods[:rep % len(methods)]
            for name in order:
                log(f"rep {rep + 1}/{args.reps} {name} ...")
                try:
                    res = run_one(ctx, name, rep)
                except Exception as exc:  # keep measuring the others; the table shows the failure
                    log(f"rep {rep + 1} {name} FAILED: {exc}")
                    res = {"error": str(exc)[:2000]}
                results[name].append(res)
                if "total_seconds" in res:
                    log(f"rep {rep + 1}/{args.reps} {name}: {res['total_seconds']:.1f} s "
                        f"(cpu {res.get('total_cpu', _sum_cpu(res)):.1f} s) check {res.get('check')}")
        report = render(args, source.meta, methods, results, skipped)
        report += (f"\n\ncount(*) of every source table, measured once (run_full_copy does it beside its dump): "
                   f"{counting.wall:.1f} s wall, {counting.cpu:.1f} CPU s")
        print(report)
        write_json(BENCH_DIR / "results" / f"{stamp}.json",
                   {"args": vars(args), "source": source.meta, "results": results, "skipped": skipped})
        (BENCH_DIR / "results" / f"{stamp}.md").write_text(report + "\n")
        log(f"results in {BENCH_DIR / 'results' / stamp}.json / .md; client logs in {logs}")
    finally:
        target_cluster.stop()
        source.cluster.stop()
    return 0 if all("error" not in r for rs in results.values() for r in rs) else 1


def _sum_cpu(res: dict) -> float:
    return sum(v for k, v in res.items() if k.endswith("_cpu") and k != "total_cpu")


def render(args, meta: dict, methods: list[str], results: dict[str, list[dict]], skipped: dict) -> str:
    ok = {m: [r for r in rs if "total_seconds" in r] for m, rs in results.items()}
    med = {m: median([r["total_seconds"] for r in rs]) for m, rs in ok.items()}
    base = "b" if "b" in methods else methods[0]
    lines = [
        f"## Full copy, scale {args.scale:g} ({meta['database_mb']:.0f} MB source), {args.reps} reps, jobs {args.jobs}, "
        f"target {args.target_profile}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ]
    rows = []
    for m in methods:
        rs = ok[m]
        phase_keys = [k for k in ("dump", "restore", "clone", "enrichment") if any(f"{k}_seconds" in r for r in rs)]
        phases = ", ".join(f"{k} {median([r[f'{k}_seconds'] for r in rs if f'{k}_seconds' in r]):.1f}"
                           for k in phase_keys)
        cpu = median([r.get("total_cpu", _sum_cpu(r)) for r in rs]) if rs else float("nan")
        checks = ",".join(sorted({r.get("check", "error")[:6] for r in results[m]}))
        rows.append([m, describe_method(m), f"{len(rs)}/{len(results[m])}", med[m],
                     min((r["total_seconds"] for r in rs), default=float("nan")),
                     max((r["total_seconds"] for r in rs), default=float("nan")),
                     med[m] / med[base] if rs and ok[base] else float("nan"), cpu, phases, checks])
    lines.append(table(["method", "what", "ok/reps", "median s", "min s", "max s", f"ratio to {base}",
                        "median CPU s", "median phases s", "check"], rows))
    for m, why in skipped.items():
        lines.append(f"\n{m}: skipped ({why})")

    for m in methods:
        rs = [r for r in ok[m] if "predata_seconds" in r]
        if not rs:
            continue
        lines += ["", f"### CPU per phase, {m} (medians; CPU = client + source server + target server)", ""]
        prow = []
        for p in PHASES:
            if not any(f"{p}_seconds" in r for r in rs):
                continue
            get = lambda key: median([r.get(key, 0.0) for r in rs])  # noqa: E731
            prow.append([p, get(f"{p}_seconds"), get(f"{p}_cpu_client"), get(f"{p}_cpu_source"),
                         get(f"{p}_cpu_target"), get(f"{p}_cpu"), get(f"{p}_cpu") / (os.cpu_count() or 1)])
        tot = [sum(r[i] for r in prow) for i in range(1, 7)]
        prow.append(["total", *tot])
        lines.append(table(["phase", "wall s", "CPU client", "CPU source", "CPU target", "CPU total",
                            f"floor s (CPU/{os.cpu_count()})"], prow))

    if base == "b" and ok.get("b"):
        lines.append("")
        if "a" in med and ok["a"]:
            ratio = med["a"] / med["b"]
            lines.append(f"target (a)/(b) <= 0.6: {ratio:.2f} -> {'MET' if ratio <= 0.6 else 'NOT MET'}")
        if "a" in med and "c" in med and ok["a"] and ok["c"]:
            lines.append(f"target (a) <= (c): {med['a']:.1f} s vs {med['c']:.1f} s -> "
                         f"{'MET' if med['a'] <= med['c'] else 'NOT MET'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
