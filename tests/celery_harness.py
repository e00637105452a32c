"""The multi-node stack of docker-compose.yaml, run natively: CeleryExecutor, Redis, PostgreSQL metadata, workers.

:class:`CeleryStack` is :class:`scheduler_harness.AirflowStack` (api-server + scheduler + dag-processor in a
temporary ``AIRFLOW_HOME``) with the executor of ``docker-compose.yaml``: ``CeleryExecutor``, a Redis broker
(:class:`RedisServer`, Debian's ``redis-server`` on a free port) and a ``db+postgresql://`` result backend on the
PostgreSQL metadata database, plus ``airflow celery worker`` processes started, killed and restarted one by one.

Several workers on one machine stand for several hosts:

* each gets its own ``--celery-hostname`` and the name Airflow records on its task instances
  (``[core] hostname_callable`` reads ``PGREPL_STACK_WORKER``), so the metadata database says which worker ran what;
* each may get its own environment (e.g. its own ``REPLICATION_WORK_DIR``, a folder other workers cannot see);
* tasks are routed to queues by an Airflow cluster policy (``task_policy`` in ``$AIRFLOW_HOME/config/
  airflow_local_settings.py``) and the workers' ``--queues``: what a deployment does to pin a task to some workers
  without editing the DAG.

Usage::

    with RedisServer(tmp / "redis") as redis, CeleryStack(tmp / "home", dags, broker_url=redis.url,
            sql_alchemy_conn="postgresql+psycopg2://...", task_queues={"my_dag.big": "big"}) as stack:
        stack.start_worker("alpha", queues=["default"])
        stack.start_worker("beta", queues=["default", "big"])
        ...
        stack.kill_worker("beta")          # SIGKILL, as a host that dies
        stack.start_worker("beta", queues=["default", "big"])
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from scheduler_harness import AirflowStack, StackError, free_port

#: the Celery app of Airflow's CeleryExecutor (docker-compose.yaml's worker health check pings it too)
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"
#: what to install when the broker is missing (CI's .ci/run does it)
REDIS_HINT = "install Debian's redis-server (apt-get install redis-server; .ci/run does it)"


def redis_server_bin() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None)


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, nothing persisted; the Celery broker."""

    def __init__(self, folder: Path) -> None:
        binary = redis_server_bin()
        if binary is None:
            raise StackError(f"redis-server not found: {REDIS_HINT}")
        self.binary = binary
        self.folder = Path(folder)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 20) -> "RedisServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "redis.out", "wb")
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (self.folder / "redis.out").read_text(errors="replace")[-2000:]
                self.stop()
                raise StackError(f"redis-server did not answer PING on port {self.port}:\n{output}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_LOCAL_SETTINGS = '''\
"""Cluster policy of this test stack: route some tasks to named Celery queues (written by celery_harness)."""

TASK_QUEUES = {queues!r}


def task_policy(task):
    queue = TASK_QUEUES.get(f"{{task.dag_id}}.{{task.task_id}}")
    if queue:
        task.queue = queue
'''

_WORKER_IDENTITY = '''\
"""[core] hostname_callable of this test stack: each worker process stands for a host of its own."""
import os
import socket


def hostname() -> str:
    return os.environ.get("PGREPL_STACK_WORKER") or socket.getfqdn()
'''


class CeleryStack(AirflowStack):
    """api-server + scheduler (CeleryExecutor) + dag-processor; Celery workers by :meth:`start_worker`.

    :param broker_url: the Celery broker (``redis://``)
    :param sql_alchemy_conn: the metadata database: PostgreSQL (the result backend lives there too)
    :param task_queues: ``{"dag_id.task_id": queue}`` applied by a cluster policy at parse time
    """

    def __init__(self, home: Path, dags_folder: Path, *, broker_url: str, sql_alchemy_conn: str,
                 task_queues: dict[str, str] | None = None, extra_env: dict[str, str] | None = None) -> None:
        if not sql_alchemy_conn.startswith("postgresql"):
            raise StackError("the Celery stack needs a PostgreSQL metadata database (result backend)")
        super().__init__(home, dags_folder, parallelism=8, extra_env=extra_env, sql_alchemy_conn=sql_alchemy_conn)
        self.broker_url = broker_url
        self.task_queues = dict(task_queues or {})
        self.workers: dict[str, dict] = {}

    @property
    def config_dir(self) -> Path:
        return self.home / "config"

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        backend = "db+" + self.sql_alchemy_conn.replace("postgresql+psycopg2://", "postgresql://", 1)
        env.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": backend,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pgrepl_stack_identity.hostname",
            # a task whose worker died is failed after this many seconds without a heartbeat (default 300)
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "PYTHONPATH": os.pathsep.join([str(self.config_dir), env["PYTHONPATH"]]),
        })
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 180) -> "CeleryStack":
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(exist_ok=True)
        (self.config_dir / "airflow_local_settings.py").write_text(_LOCAL_SETTINGS.format(queues=self.task_queues))
        (self.config_dir / "pgrepl_stack_identity.py").write_text(_WORKER_IDENTITY)
        super().start(timeout)
        return self

    # -- workers ---------------------------------------------------------------------------------
    def start_worker(self, name: str, queues: list[str], env: dict[str, str] | None = None) -> None:
        """``airflow celery worker`` with one task slot, Celery node ``celery@<name>``, task instances recorded on
        host ``<name>``; ``env`` adds to (or overrides) the stack's environment for this worker only."""
        if name in self.processes and self.processes[name].poll() is None:
            raise StackError(f"worker {name} is already running")
        self.workers[name] = {"queues": list(queues), "env": dict(env or {})}
        self._spawn(name, *self.worker_command(name, queues), env={"PGREPL_STACK_WORKER": name, **(env or {})})

    def worker_command(self, name: str, queues: list[str]) -> list[str]:
        """The ``airflow`` arguments of a worker (log serving off: two workers on one machine, logs on one disk)."""
        return ["celery", "worker", "--celery-hostname", name, "--concurrency", "1", "--queues", ",".join(queues),
                "--skip-serve-logs", "--pid", str(self.home / f"{name}.pid")]

    def wait_for_workers(self, *names: str, timeout: float = 120) -> None:
        """Until each named worker answers a Celery ping (it consumes its queues)."""
        wanted = {f"celery@{name}" for name in names}

        def answering():
            result = subprocess.run(
                [str(Path(self.airflow).parent / "celery"), "--app", CELERY_APP, "inspect", "ping", "--timeout", "2"],
                env=self.env, capture_output=True, text=True, timeout=60, cwd=self.home)
            return wanted <= {word.rstrip(":") for word in result.stdout.split() if word.startswith("celery@")}

        self._poll(f"workers {sorted(names)} to answer", answering, timeout, interval=1)

    def kill_worker(self, name: str) -> int:
        """SIGKILL the worker's process group (Celery and the task supervisors it forked), as when its host dies.

        Processes in a group of their own survive: the task process itself (Airflow 3.3's supervisor puts it in a
        new process group), and so the client it runs (``bash``, ``pg_restore``), as a client would keep its
        connections until the network drops them. The task is failed by the scheduler all the same (its heartbeats
        stop); the ``rollback`` task ends its session before it cleans up. Returns the pid.
        """
        process = self.processes.pop(name)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
        return process.pid

    def stop_worker(self, name: str, timeout: float = 60) -> None:
        """SIGTERM (Celery's warm shutdown: the running task ends first) and wait."""
        process = self.processes.pop(name, None)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def clear(self, dag_id: str, task: str, logical_date, downstream: bool = True) -> None:
        """``airflow tasks clear`` of one task (and its downstream tasks) in the run at ``logical_date``: the README's
        restart command. Airflow 3.3's ``-t`` selects the task ids that *contain* ``task`` (not a regex)."""
        day = logical_date.isoformat()
        args = ["tasks", "clear", dag_id, "-t", task, "-s", day, "-e", day, "--yes"]
        if downstream:
            args.insert(5, "--downstream")
        self.cli(*args)


def own_processes(stack: AirflowStack, command: str) -> list[int]:
    """Pids of this stack's live processes (AIRFLOW_HOME in their environment) whose command name is ``command``."""
    found = []
    for pid in stack._own_pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == command:
                found.append(pid)
        except OSError:
            continue
    return found
