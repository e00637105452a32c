"""A real Airflow 3 deployment in a temporary ``AIRFLOW_HOME``, for tests that need the scheduler.

``airflow dags test`` runs tasks one by one in one process; it cannot show that mapped tasks run at
the same time, or that a DAG survives being run by separate processes. :class:`AirflowStack` starts
what ``airflow standalone`` starts (minus the triggerer and the UI): ``airflow api-server`` (the
execution API the task processes talk to), ``airflow scheduler`` with the ``LocalExecutor``
(``parallelism`` worker processes) and ``airflow dag-processor``, each as a subprocess of its own
process group, on a SQLite metadata database (Airflow 3's LocalExecutor accepts SQLite) or on any
SQLAlchemy URL given (e.g. ``postgresql+psycopg2://`` on a throwaway cluster).

Usage::

    with AirflowStack(tmp_path / "home", dags_folder, parallelism=4, extra_env={...}) as stack:
        stack.wait_for_dag("my_dag")
        run_id = stack.trigger("my_dag", conf={"x": 1})
        state = stack.wait_for_run("my_dag", run_id)
        assert state == "success", stack.failed_task_logs("my_dag", run_id)
        tis = stack.task_instances("my_dag", run_id, task_id="sleepy")
        assert max_concurrency([(ti.start, ti.end) for ti in tis]) >= 2

Every process is stopped on exit, including the task processes the executor forked (found by the
``AIRFLOW_HOME`` in their environment, so only this stack's processes are touched).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"

#: inherited variables that would make the stack read someone else's configuration
_INHERITED_PREFIXES = ("AIRFLOW__", "AIRFLOW_HOME", "AIRFLOW_CONFIG", "AIRFLOW_CONN_", "AIRFLOW_VAR_")


class StackError(RuntimeError):
    """The stack did not come up, or a run did not finish, in time; the message holds the log tails."""


def airflow_bin() -> str | None:
    """The ``airflow`` CLI of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "airflow"
    if beside.exists():
        return str(beside)
    return shutil.which("airflow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_datetime(value) -> datetime | None:
    """SQLite hands back text, PostgreSQL datetimes: both become aware datetimes."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _event(line: str) -> str:
    """One line of an Airflow 3 JSON task log as ``level: event``."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict):
        return line
    event = str(record.get("event", "")).strip()
    return f"{record.get('level', '')}: {event}" if event else ""


def max_concurrency(intervals) -> int:
    """The largest number of ``(start, end)`` intervals open at one instant (ends before starts on ties)."""
    events = []
    for start, end in intervals:
        if start is None or end is None:
            continue
        events.append((start, 1))
        events.append((end, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


@dataclass(frozen=True)
class TaskInstanceTimes:
    task_id: str
    map_index: int
    state: str | None
    start: datetime | None
    end: datetime | None
    hostname: str | None = None
    pid: int | None = None


class AirflowStack:
    """api-server + scheduler (LocalExecutor) + dag-processor in a temporary ``AIRFLOW_HOME``.

    :param home: an empty folder for ``AIRFLOW_HOME`` (logs, SQLite file, process output)
    :param dags_folder: the DAG files to load (absolute)
    :param parallelism: LocalExecutor worker processes (``[core] parallelism``)
    :param extra_env: more environment for every process (connections, pg-replication settings ...)
    :param sql_alchemy_conn: metadata database URL; a SQLite file in ``home`` by default
    """

    def __init__(self, home: Path, dags_folder: Path, parallelism: int = 4, extra_env: dict[str, str] | None = None,
                 sql_alchemy_conn: str | None = None) -> None:
        self.home = Path(home).resolve()
        self.dags_folder = Path(dags_folder).resolve()
        self.parallelism = parallelism
        self.extra_env = dict(extra_env or {})
        self.sql_alchemy_conn = sql_alchemy_conn or f"sqlite:///{self.home / 'airflow.db'}"
        self.port = free_port()
        self._secret = secrets.token_hex(16)  # JWT + API secret shared by the three processes
        self.processes: dict[str, subprocess.Popen] = {}
        self.start_timeout = 120.0
        self._warmup: threading.Thread | None = None
        self._warmup_error: BaseException | None = None
        self._engine = None
        binary = airflow_bin()
        if binary is None:
            raise StackError("the airflow CLI is not installed")
        self.airflow = binary

    # -- environment and commands -------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
        python_path = [str(PLUGINS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        secret = self._secret
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # only the runs a test triggers: unpausing a cron DAG would also start today's past slot, in a race
            # with the triggered run (max_active_runs=1), which then found yesterday's rows already copied
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__SECRET_KEY": secret,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret,
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # react quickly: this is a test, not a production scheduler
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run one ``airflow`` CLI command against this stack; raise with its output on failure."""
        result = subprocess.run([self.airflow, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                cwd=self.home)
        if result.returncode != 0:
            raise StackError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
        return result

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        """Start ``airflow <args>`` in its own process group; output appended to ``<home>/<name>.out``."""
        log = open(self.home / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen([self.airflow, *args], env={**self.env, **(env or {})}, stdout=log,
                                                stderr=subprocess.STDOUT, cwd=self.home, start_new_session=True)
        log.close()

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> "AirflowStack":
        """Migrate the metadata database and spawn the three processes (returns without waiting for them)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.start_timeout = timeout
        try:
            self._migrate(timeout)
            self._spawn("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                        "--apps", "execution")
            self._spawn("dag-processor", "dag-processor")
            self._spawn("scheduler", "scheduler", "--skip-serve-logs")
        except BaseException:
            self.stop()
            raise
        # The execution API answers its first request only after a long warm-up (~30 s on a busy
        # 2-core machine): start it now, in the background, while the DAG is parsed and triggered.
        self._warmup = threading.Thread(target=self._warm_up, name="api-warm-up", daemon=True)
        self._warmup.start()
        return self

    def _warm_up(self) -> None:
        try:
            self._wait_http(self.health_url, self.start_timeout)
        except Exception as exc:  # noqa: BLE001 - reported by wait_ready
            self._warmup_error = exc

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/execution/health"

    def wait_ready(self) -> None:
        """Block until the execution API answers (the tasks of a run need it)."""
        if self._warmup is not None:
            self._warmup.join(self.start_timeout + 5)
        if self._warmup_error is not None:
            raise self._warmup_error
        self._wait_http(self.health_url, 10)

    def _migrate(self, timeout: float) -> None:
        """``airflow db migrate``; a SQLite database is copied from the session's migrated template when the
        project's ``airflow_helpers`` offers one (a copy takes milliseconds, a migration tens of seconds)."""
        target = self.home / "airflow.db"
        if self.sql_alchemy_conn == f"sqlite:///{target}":
            try:
                from airflow_helpers import migrated_template
            except ImportError:
                migrated_template = None
            if migrated_template is not None:
                shutil.copyfile(migrated_template(timeout), target)
                return
        self.cli("db", "migrate", timeout=timeout)

    def _wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=max(2.0, deadline - time.monotonic())) as response:
                    if response.status < 500:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{url} did not answer within {timeout:.0f} s\n{self.log_tails()}")
            time.sleep(0.5)

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise StackError(f"airflow {name} exited with {process.returncode}\n{self.log_tails()}")

    def _own_pids(self) -> list[int]:
        """Every live process whose environment holds this stack's AIRFLOW_HOME (forked task runners included)."""
        marker = f"AIRFLOW_HOME={self.home}".encode()
        pids: list[int] = []
        if not Path("/proc").is_dir():
            return pids
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        """SIGTERM each process group, wait, then SIGKILL whatever of this stack is left."""
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        for pid in self._own_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if os.name == "posix" and Path("/proc").is_dir():
            deadline = time.monotonic() + 10
            while self._own_pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> "AirflowStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for name in self.processes:
            path = self.home / f"{name}.out"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            parts.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    # -- the metadata database ----------------------------------------------------------------
    def query(self, sql: str, **params) -> list[tuple]:
        from sqlalchemy import create_engine, text

        if self._engine is None:
            self._engine = create_engine(self.sql_alchemy_conn)
        with self._engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]

    def _poll(self, what: str, check, timeout: float, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                value = check()
            except Exception as exc:  # noqa: BLE001 - tables appear while the stack starts
                if "no such table" not in str(exc) and "does not exist" not in str(exc) and "locked" not in str(exc):
                    raise
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.log_tails()}")
            time.sleep(interval)

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Until the dag-processor has serialised ``dag_id`` (import errors are reported at once)."""

        def parsed():
            errors = self.query("SELECT filename, stacktrace FROM import_error")
            if errors:
                raise StackError(f"DAG import errors: {errors}")
            return self.query("SELECT dag_id FROM serialized_dag WHERE dag_id = :dag_id", dag_id=dag_id)

        self._poll(f"DAG {dag_id} to be parsed", parsed, timeout)

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None,
                logical_date: datetime | None = None) -> str:
        """``airflow dags trigger`` (the DAG is unpaused first if needed); returns the run id.

        :param logical_date: the run's logical date (``airflow tasks clear -s/-e`` select runs by it); none by default
        """
        run_id = run_id or f"harness__{int(time.time() * 1000)}"
        paused = self.query("SELECT is_paused FROM dag WHERE dag_id = :dag_id", dag_id=dag_id)
        if not paused or paused[0][0]:
            self.cli("dags", "unpause", dag_id)
        args = ["dags", "trigger", dag_id, "--run-id", run_id]
        if conf is not None:
            args += ["--conf", json.dumps(conf)]
        if logical_date is not None:
            args += ["--logical-date", logical_date.isoformat()]
        self.cli(*args)
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = :dag_id AND run_id = :run_id",
                          dag_id=dag_id, run_id=run_id)
        return rows[0][0] if rows else None

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 240) -> str:
        """Until the run is ``success`` or ``failed``; returns that state."""
        self.wait_ready()

        def finished():
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return self._poll(f"run {run_id} of {dag_id} to finish", finished, timeout)

    def task_instances(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[TaskInstanceTimes]:
        sql = ("SELECT task_id, map_index, state, start_date, end_date, hostname, pid FROM task_instance "
               "WHERE dag_id = :dag_id AND run_id = :run_id")
        params = {"dag_id": dag_id, "run_id": run_id}
        if task_id is not None:
            sql += " AND task_id = :task_id"
            params["task_id"] = task_id
        rows = self.query(sql + " ORDER BY task_id, map_index", **params)
        return [TaskInstanceTimes(r[0], r[1], r[2], _as_datetime(r[3]), _as_datetime(r[4]), r[5], r[6]) for r in rows]

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        """The text of every attempt's log file of one task instance (default log layout of Airflow 3)."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("attempt=*.log")))

    def failed_task_logs(self, dag_id: str, run_id: str, tail: int = 4000) -> str:
        """The end of each failed task instance's log: what a failing test should show."""
        parts = []
        for ti in self.task_instances(dag_id, run_id):
            if ti.state == "failed":
                lines = [_event(line) for line in self.task_log(dag_id, run_id, ti.task_id, ti.map_index).splitlines()]
                text = "\n".join(line for line in lines if line)
                parts.append(f"--- {ti.task_id}[{ti.map_index}] ---\n{text[-tail:]}")
        return "\n".join(parts)
