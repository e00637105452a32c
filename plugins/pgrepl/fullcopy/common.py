"""What every step of the full copy shares: the run's folders, the clients' environment, running a client script."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pgrepl.errors import PgreplError
from pgrepl.pgtools import PgConn, client_env, write_passfile
from pgrepl.settings import ReplicationSettings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]


class PreflightError(PgreplError, RuntimeError):
    """A check before touching anything failed; the message says which and why. No retry unless said so (an
    unreachable database may come back)."""

    retryable = False


class ClientCommandError(PgreplError, RuntimeError):
    """``pg_dump`` / ``pg_restore`` failed; the message holds the client's error lines. Retryable unless those lines
    say the data or the dump itself is refused (:func:`failure_retryable`)."""


#: words of a client's error line that no retry can change: the data or the dump is refused by the warehouse
PERMANENT_FAILURE_MARKERS = ("violates", "invalid input syntax", "out of range", "syntax error", "permission denied",
                             "does not exist", "already exists", "value too long", "invalid byte sequence")


def failure_retryable(lines: list[str]) -> bool:
    """False when the client's error lines show a failure every attempt would repeat (a constraint violation, a
    missing object, a poisoned dump); true otherwise (a lost connection, a killed process, a full disk)."""
    return not any(marker in line for line in lines for marker in PERMANENT_FAILURE_MARKERS)


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


def worker_hostname() -> str:
    """This worker's name as Airflow records it on task instances (``[core] hostname_callable``, the FQDN by
    default), so that a message naming where the dump ran matches the UI; the plain host name outside Airflow."""
    try:
        from airflow.sdk.api.client import get_hostname
    except ImportError:
        return socket.gethostname()
    return get_hostname()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
        lines = failure_lines(output)
        raise ClientCommandError(f"command failed ({result.returncode}): " + "\n".join(lines)
                                 + f"\n--- last output ---\n{output[-1500:]}", retryable=failure_retryable(lines))
