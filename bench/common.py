"""Shared plumbing of the benchmarks: kept clusters, CPU meters, timed commands, medians and tables.

Nothing here is imported by the product; ``bench/`` is a standalone harness that puts ``plugins/`` on
``sys.path`` itself (``make bench`` also sets ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _folder in (ROOT, ROOT / "plugins"):  # pgrepl, and devenv (throwaway clusters)
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from devenv.cluster import SUPERUSER, Cluster, free_port  # noqa: E402
from pgrepl.pgtools import PgConn, tool  # noqa: E402

#: git-ignored folder holding kept source clusters, work dirs and logs
BENCH_DIR = ROOT / ".bench"

#: the throwaway target server as a production server is configured (durable, PostgreSQL defaults)
PROD_LIKE = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_wal_size": "1GB",
    "shared_buffers": "128MB",
}
#: the same server with durability off (what the tests' clusters use)
FAST = {}

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- clusters --------------------------------------------------------------------------------------

class KeptCluster(Cluster):
    """A cluster whose data directory survives :meth:`stop` (for a generated source reused across runs).

    The first :meth:`start` runs ``initdb``; later ones restart the kept data directory on a new free port.
    """

    def __init__(self, name: str, root: Path, settings: dict | None = None) -> None:  # noqa: D107
        # no super().__init__: it would create a fresh temporary folder
        self.name = name
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = free_port()
        self.settings = settings or {}
        self.started = False
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, user=self.user)

    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def start(self) -> "KeptCluster":
        if not self.initialised:
            return super().start()
        self._run([tool("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "120",
                   "-o", f"-p {self.port} -k {self.root}", "start"])
        self.started = True
        return self

    def stop(self) -> None:
        """Clean shutdown (checkpoint), data directory kept."""
        if self.started:
            self._run([tool("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "300", "stop"])
            self.started = False

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# -- CPU accounting --------------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[int, list[str]] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[1]), rest  # ppid, fields from "state" on


def _postmaster(cluster: Cluster) -> int | None:
    try:
        return int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def server_children(cluster: Cluster) -> set[int]:
    pm = _postmaster(cluster)
    if pm is None:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st and st[0] == pm:
                found.add(int(entry))
    return found


def settle(clusters: dict[str, Cluster], before: dict[str, set[int]], timeout: float = 3.0) -> None:
    """Wait until the backends started since ``before`` have exited and been reaped (their CPU then counts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(not (server_children(c) - before[name]) for name, c in clusters.items()):
            return
        time.sleep(0.02)


def server_cpu_seconds(cluster: Cluster) -> float:
    """CPU seconds used so far by a whole PostgreSQL server.

    The postmaster reaps every backend, so its ``cutime``/``cstime`` hold the CPU of all finished backends
    (and parallel workers); live children are added from their own ``utime``/``stime``.
    """
    pm = _postmaster(cluster)
    own = _proc_stat(pm) if pm else None
    if own is None:
        return 0.0
    ticks = sum(int(x) for x in own[1][11:15])  # utime stime cutime cstime
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st and st[0] == pm:
            ticks += int(st[1][11]) + int(st[1][12]) + int(st[1][13]) + int(st[1][14])
    return ticks / CLK_TCK


def client_cpu_seconds() -> float:
    """CPU of this process plus every child it has waited for (pg_dump, pg_restore and their workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass
class Measure:
    wall: float = 0.0
    client_cpu: float = 0.0
    server_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.client_cpu + sum(self.server_cpu.values())


@contextmanager
def measure(clusters: dict[str, Cluster]):
    """``with measure({"source": s, "target": t}) as m:`` -> wall seconds and CPU seconds (client and servers)."""
    m = Measure()
    kids = {name: server_children(c) for name, c in clusters.items()}
    c0 = client_cpu_seconds()
    s0 = {name: server_cpu_seconds(c) for name, c in clusters.items()}
    t0 = time.perf_counter()
    try:
        yield m
    finally:
        m.wall = time.perf_counter() - t0
        settle(clusters, kids)
        m.client_cpu = client_cpu_seconds() - c0
        m.server_cpu = {name: server_cpu_seconds(c) - s0[name] for name, c in clusters.items()}


# -- commands --------------------------------------------------------------------------------------

def run_cmd(args: list[str], env: dict, log_file: Path | None = None, stdin=None, stdout=None) -> None:
    """Run a client command; on failure raise with the tail of its stderr."""
    err = open(log_file, "ab") if log_file else subprocess.PIPE
    try:
        proc = subprocess.run(args, env=env, stdin=stdin, stdout=stdout if stdout is not None else subprocess.DEVNULL,
                              stderr=err)
    finally:
        if log_file:
            err.close()
    if proc.returncode != 0:
        tail = Path(log_file).read_text(errors="replace")[-2000:] if log_file else (proc.stderr or b"").decode()[-2000:]
        raise RuntimeError(f"{Path(args[0]).name} exited with {proc.returncode}:\n{tail}")


def capture(args: list[str], env: dict) -> str:
    return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout


# -- statistics and tables -------------------------------------------------------------------------

def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(row)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


__all__ = [
    "BENCH_DIR", "FAST", "PROD_LIKE", "SUPERUSER", "KeptCluster", "Measure", "PgConn", "ROOT", "capture",
    "client_cpu_seconds", "log", "measure", "median", "run_cmd", "server_cpu_seconds", "table", "tool", "write_json",
]


def warm(path: Path) -> None:
    """Read a cluster's files once, so that the first repetition does not pay for a cold page cache."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                while handle.read(1 << 22):
                    pass
