"""The multi-node stack: docker-compose.yaml and the Dockerfile, checked by parsing (no Docker engine here).

What must hold for pg_replication to run on several Celery workers: the official Airflow 3 layout
(CeleryExecutor, metadata Postgres, Redis, api-server, scheduler, dag-processor, workers, triggerer,
init), the project mounted, the dump work directory on a volume every worker shares, the
connections wired, a warehouse owner that is not a superuser, and pg_dump at least as new as the servers.
Also the README's operations guide: every `airflow ...` command it gives parses with Airflow's own CLI.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker",
                    "airflow-triggerer", "airflow-init")
#: services that run tasks or parse DAGs (they all read REPLICATION_WORK_DIR)
TASK_RUNNERS = ("airflow-scheduler", "airflow-dag-processor", "airflow-worker", "airflow-triggerer")
LONG_RUNNING = ("postgres", "redis", "source-db", "warehouse-db", "minio", "airflow-apiserver",
                "airflow-scheduler", "airflow-dag-processor", "airflow-worker", "airflow-triggerer")
WORK_DIR = "/opt/airflow/pgrepl-work"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` substitution with an empty environment (defaults only); ``$$`` -> ``$``."""
    env = env or {}
    value = value.replace("$$", "\0")
    value = _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    return value.replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    with open(COMPOSE) as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def mounts_of(service: dict) -> dict[str, str]:
    """{container path: source} of the short-syntax volumes."""
    result = {}
    for entry in service.get("volumes") or []:
        source, target, *_ = interpolate(entry).split(":")
        result[target] = source
    return result


def image_major(image: str) -> int | None:
    match = re.fullmatch(r"postgres:(\d+)(?:[.\-].*)?", interpolate(image))
    return int(match.group(1)) if match else None


def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def dockerfile_pg_major(build_args: dict[str, str]) -> int:
    """Major of the postgresql-client the Dockerfile installs, with the compose build args applied."""
    text = dockerfile_text()
    args = dict(re.findall(r"^ARG\s+([A-Za-z_]+)=(\S+)", text, re.M))
    args.update({k: str(v) for k, v in build_args.items()})
    match = re.search(r"postgresql-client-(\$\{?[A-Za-z_]+\}?|\d+)", text)
    assert match, "the Dockerfile installs no postgresql-client-<major>"
    version = match.group(1)
    if version.startswith("$"):
        version = args[version.strip("${}")]
    return int(version)


# -- the official Airflow 3 layout ----------------------------------------------------------------

def test_every_service_is_there(services):
    expected = {"postgres", "redis", *AIRFLOW_SERVICES, "source-db", "warehouse-db", "minio", "minio-init"}
    assert expected <= set(services), f"missing: {sorted(expected - set(services))}"


def test_celery_executor_and_metadata_wiring(services):
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"]
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
        # Airflow 3: tasks talk to the execution API of the api-server, with tokens signed by a shared secret
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"


def test_airflow_commands_are_airflow_3(services):
    assert services["airflow-apiserver"]["command"] == "api-server"  # not `webserver` (gone in 3.x)
    assert services["airflow-scheduler"]["command"] == "scheduler"
    assert services["airflow-dag-processor"]["command"] == "dag-processor"
    assert services["airflow-worker"]["command"] == "celery worker"
    assert services["airflow-triggerer"]["command"] == "triggerer"
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    assert not any("webserver" in str(s.get("command", "")) for s in services.values())


def test_airflow_image_is_built_from_the_dockerfile(compose, services):
    common = compose["x-airflow-common"]
    assert common["build"]["context"] == "."
    for name in AIRFLOW_SERVICES:
        assert services[name]["build"]["context"] == ".", name
        assert interpolate(services[name]["image"]) == interpolate(common["image"])


def test_env_file_is_optional(services):
    for name in AIRFLOW_SERVICES:
        entries = services[name]["env_file"]
        assert {"path": ".env", "required": False} in entries, name


def test_project_folders_are_mounted(services):
    for name in AIRFLOW_SERVICES:
        mounts = mounts_of(services[name])
        for folder in ("dags", "plugins", "include"):
            assert mounts.get(f"/opt/airflow/{folder}") == f"./{folder}", f"{name} does not mount ./{folder}"
        env = env_of(services[name])
        # `pgrepl` imports in tasks (plugins folder) and in `airflow` CLI commands (PYTHONPATH)
        assert "/opt/airflow/plugins" in env.get("PYTHONPATH", "").split(":"), name


def test_shared_work_dir_volume(compose, services):
    """dump and restore may run on different workers: the dump lives on one named volume mounted everywhere."""
    sources = set()
    for name in (*TASK_RUNNERS, "airflow-init", "airflow-apiserver"):
        mounts = mounts_of(services[name])
        assert WORK_DIR in mounts, f"{name} does not mount the work directory at {WORK_DIR}"
        sources.add(mounts[WORK_DIR])
        assert env_of(services[name])["REPLICATION_WORK_DIR"] == WORK_DIR, name
    assert len(sources) == 1, f"the work directory comes from several volumes: {sources}"
    (volume,) = sources
    assert not volume.startswith((".", "/")), "the work directory must be a named volume, not a bind mount"
    assert volume in compose["volumes"], f"volume {volume} is not declared"
    # several workers, so that the shared volume matters
    assert int(interpolate(str(services["airflow-worker"]["deploy"]["replicas"]))) >= 2
    # the init service makes it writable by the airflow user
    init_script = "\n".join(services["airflow-init"]["command"])
    assert WORK_DIR in init_script and "chown" in init_script


def test_the_native_celery_test_runs_what_compose_runs(services, tmp_path):
    """tests/test_celery_multinode.py runs this stack without Docker: same executor, broker, result backend,
    worker command and one work folder for every worker. A change on either side must be made on both."""
    from celery_harness import CELERY_APP, CeleryStack
    from test_celery_multinode import WORKERS, replication_env

    native = CeleryStack(tmp_path / "home", tmp_path / "dags", broker_url="redis://127.0.0.1:6390/0",
                         sql_alchemy_conn="postgresql+psycopg2://meta:pw@127.0.0.1:5433/meta",
                         extra_env=replication_env(tmp_path, "postgresql://s", "postgresql://t"))
    for env in (native.env, env_of(services["airflow-worker"])):
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        metadata, backend = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], env["AIRFLOW__CELERY__RESULT_BACKEND"]
        assert metadata.startswith("postgresql+psycopg2://") and backend.startswith("db+postgresql://")
        # Celery's results live in the metadata database
        assert backend.split("@", 1)[1] == metadata.split("@", 1)[1], (backend, metadata)
        assert env["REPLICATION_WORK_DIR"]
    # the workers: `airflow celery worker`, the same Celery app as the compose health check
    assert services["airflow-worker"]["command"].split() == native.worker_command("alpha", ["default"])[:2]
    assert CELERY_APP in " ".join(services["airflow-worker"]["healthcheck"]["test"])
    # two workers or more, each with one folder for the dump: the compose volume, the test's shared folder
    assert len(WORKERS) >= 2 and int(interpolate(str(services["airflow-worker"]["deploy"]["replicas"]))) >= 2
    assert native.env["REPLICATION_WORK_DIR"] == str(tmp_path / "shared-work")  # no worker of WORKERS overrides it
    # the image and the test venv install the same celery provider
    pins = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^apache-airflow-providers-celery==\S+", pins, re.M), "requirements.txt must pin the celery provider"


def test_logs_are_shared(services):
    sources = {mounts_of(services[name]).get("/opt/airflow/logs") for name in AIRFLOW_SERVICES}
    assert len(sources) == 1 and None not in sources


def test_health_checks(services):
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    for name in ("postgres", "source-db", "warehouse-db"):
        test = services[name]["healthcheck"]["test"]
        assert "pg_isready" in test, name
        # over TCP: the entrypoint's init phase listens on the socket only, so healthy = initialised
        assert "-h" in test, name
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "/api/v2/version" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    assert "8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    assert env_of(services["airflow-scheduler"])["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_start_order(services):
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    worker = services["airflow-worker"]["depends_on"]
    assert worker["source-db"]["condition"] == "service_healthy"
    assert worker["warehouse-db"]["condition"] == "service_healthy"
    assert worker["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_init_migrates_and_creates_the_admin(services):
    init = services["airflow-init"]
    env = env_of(init)
    assert env["_AIRFLOW_DB_MIGRATE"] == "true"
    assert env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert env["_AIRFLOW_WWW_USER_USERNAME"] and env["_AIRFLOW_WWW_USER_PASSWORD"]
    assert init["user"] == "0:0"
    assert "/entrypoint airflow version" in "\n".join(init["command"])


# -- the databases and S3 ---------------------------------------------------------------------------

def test_connections_point_at_the_compose_databases(services):
    env = env_of(services["airflow-worker"])
    source = env["AIRFLOW_CONN_REPLICATION_SOURCE"]
    target = env["AIRFLOW_CONN_REPLICATION_TARGET"]
    assert re.fullmatch(r"postgresql://pix:[^@]+@source-db:5432/pix", source), source
    assert re.fullmatch(r"postgresql://warehouse:[^@]+@warehouse-db:5432/warehouse", target), target
    # the same passwords the database containers are given
    assert source.split(":")[2].split("@")[0] == env_of(services["source-db"])["POSTGRES_PASSWORD"]
    assert target.split(":")[2].split("@")[0] == env_of(services["warehouse-db"])["WAREHOUSE_DB_PASSWORD"]


def test_connections_parse_with_the_project_settings(services):
    from pgrepl.settings import load_replication

    env = env_of(services["airflow-worker"])
    settings = load_replication({
        "SOURCE_DATABASE_URL": env["AIRFLOW_CONN_REPLICATION_SOURCE"],
        "TARGET_DATABASE_URL": env["AIRFLOW_CONN_REPLICATION_TARGET"],
        "REPLICATION_WORK_DIR": env["REPLICATION_WORK_DIR"],
    })
    assert (settings.source.host, settings.source.dbname) == ("source-db", "pix")
    assert (settings.target.host, settings.target.user) == ("warehouse-db", "warehouse")
    assert settings.work_dir == WORK_DIR


def _config_content(compose: dict, service: dict) -> str:
    (config,) = service["configs"]
    assert config["target"].startswith("/docker-entrypoint-initdb.d/")
    return interpolate(compose["configs"][config["source"]]["content"])


def test_warehouse_owner_is_not_superuser(compose, services):
    service = services["warehouse-db"]
    env = env_of(service)
    # the container's superuser is someone else; `warehouse` is created by the init script
    assert env["POSTGRES_USER"] != "warehouse"
    script = _config_content(compose, service)
    create_role = re.search(r"CREATE ROLE warehouse\b[^;]*;", script)
    assert create_role, script
    assert "NOSUPERUSER" in create_role.group(0)
    assert re.search(r"(?<!NO)SUPERUSER", create_role.group(0)) is None
    assert "CREATE DATABASE warehouse OWNER warehouse" in script
    assert "-v ON_ERROR_STOP=1" in script


def test_source_is_loaded_with_the_sample(compose, services):
    service = services["source-db"]
    mounts = mounts_of(service)
    assert mounts["/pgrepl-sample"] == "./include/sql/sample"
    script = _config_content(compose, service)
    # schema, then the sizes data.sql reads, then the rows
    schema_at = script.index(r"\i /pgrepl-sample/schema.sql")
    data_at = script.index(r"\i /pgrepl-sample/data.sql")
    assert schema_at < data_at
    data_sql = (ROOT / "include/sql/sample/data.sql").read_text()
    needed = set(re.findall(r"current_setting\('(pgrepl\.[a-z_]+)'\)", data_sql))
    assert needed, "data.sql reads no pgrepl.* setting any more?"
    for guc in needed:
        at = script.find(f"SET {guc} = ")
        assert schema_at < at < data_at, f"{guc} is not SET before data.sql"
    # the sizes come from the container environment and have defaults
    env = env_of(service)
    for var in re.findall(r"SET pgrepl\.[a-z_]+ = \$\{([A-Z_]+)\}", script):
        assert env[var].isdigit(), var
    assert (ROOT / "include/sql/sample/schema.sql").is_file()


def test_init_scripts_are_valid_bash(compose, services):
    import subprocess

    for name in ("source-db", "warehouse-db"):
        script = _config_content(compose, services[name])
        assert script.startswith("#!/usr/bin/env bash\n")
        result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"
    init = services["airflow-init"]["command"]
    assert init[0] == "-c"
    result = subprocess.run(["bash", "-n"], input=interpolate(init[1]), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_s3_settings_point_at_minio(services):
    env = env_of(services["airflow-worker"])
    assert env["S3_ENDPOINT"] == "http://minio:9000"
    assert env["S3_SSL_ENABLED"] == "false"
    minio = env_of(services["minio"])
    assert env["S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
    assert env["S3_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    init = services["minio-init"]
    assert env_of(init)["S3_BUCKET_NAME"] == env["S3_BUCKET_NAME"]
    script = interpolate("\n".join(init["command"]))
    assert "mc mb --ignore-existing" in script and "http://minio:9000" in script

    from pgrepl.settings import load_s3

    s3 = load_s3(env)
    assert (s3.endpoint, s3.ssl_enabled, s3.bucket) == ("http://minio:9000", False, env["S3_BUCKET_NAME"])


# -- the image -----------------------------------------------------------------------------------------

def test_dockerfile_base_and_requirements():
    text = dockerfile_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["apache/airflow:3.3.2"]
    # requirements.txt installed as the airflow user, Airflow itself pinned to the image's version
    user_airflow = text.rindex("USER airflow")
    pip = re.search(r"^RUN pip install --no-cache-dir (.*)$", text, re.M)
    assert pip and pip.start() > user_airflow
    words = shlex.split(pip.group(1))
    assert "apache-airflow==${AIRFLOW_VERSION}" in words
    requirements = words[words.index("-r") + 1]
    assert re.search(rf"^COPY requirements.txt {re.escape(requirements)}$", text, re.M)
    # the requirements agree with the image
    assert "apache-airflow==3.3.2" in (ROOT / "requirements.txt").read_text().split()
    # apt as root, before switching back
    assert text.index("USER root") < text.index("apt-get install") < user_airflow


def test_pg_client_is_at_least_every_server(services):
    majors = {name: image_major(s["image"]) for name, s in services.items() if image_major(s.get("image", ""))}
    assert {"postgres", "source-db", "warehouse-db"} <= set(majors)
    build_args = services["airflow-worker"]["build"].get("args", {})
    client = dockerfile_pg_major(build_args)
    assert client >= max(majors.values()), f"pg_dump {client} is older than a server: {majors}"
    # without build args too (docker build . by hand)
    assert dockerfile_pg_major({}) >= max(majors.values())
    # the stack points pgrepl at that client, not at whatever newer one the base image has
    assert env_of(services["airflow-worker"])["PG_BIN_DIR"] == f"/usr/lib/postgresql/{client}/bin"


def test_interpolate_helper():
    assert interpolate("${A:-x}/${B}/$${C}") == "x//${C}"
    assert interpolate("${A:-x}", {"A": "y"}) == "y"


# -- the operations guide (README, between the ops markers) --------------------------------------------

_PARSE_SCRIPT = """
import json, sys
from airflow.cli.cli_parser import get_parser
parser = get_parser()
errors = []
for argv in json.loads(sys.stdin.read()):
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            errors.append(argv)
print(json.dumps(errors))
"""


def ops_guide() -> str:
    text = (ROOT / "README.md").read_text()
    begin, end = text.index("<!-- ops:begin -->"), text.index("<!-- ops:end -->")
    return text[begin:end]


def airflow_commands(guide: str) -> list[list[str]]:
    """Every ``airflow ...`` command of the guide's code (blocks and inline), as argv without ``airflow``."""
    snippets = [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", guide, re.S)]
    lines = [line for block in snippets for line in block.splitlines()]
    lines += re.findall(r"`([^`\n]*\bairflow [a-z][^`\n]*)`", guide)
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        at = next((i for i, w in enumerate(words) if w == "airflow" or w.endswith("/bin/airflow")), None)
        # `airflow ...`, `.venv/bin/airflow ...` or `docker compose exec <service> airflow ...`
        if at is None or not (at == 0 or (at >= 2 and words[at - 2] == "exec")):
            continue
        argv = words[at + 1:]
        # shell syntax after the command (`> file 2>&1 &`) is not the CLI's
        cut = next((i for i, w in enumerate(argv) if w in ("&", "&&", "|", ";", "2>&1") or w.startswith(">")), len(argv))
        commands.append(argv[:cut])
    return commands


def test_ops_guide_commands_parse_with_the_real_cli(tmp_path):
    """Every `airflow ...` line of the guide is accepted by Airflow's own argument parser (flags, choices)."""
    import json
    import os
    import subprocess
    import sys

    commands = airflow_commands(ops_guide())
    groups = {argv[0] for argv in commands}
    assert {"standalone", "dags", "tasks"} <= groups, groups
    assert any(argv[:2] == ["tasks", "clear"] and "--downstream" in argv for argv in commands)
    assert any(argv[:2] == ["dags", "trigger"] and "--conf" in argv for argv in commands)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}"})
    result = subprocess.run([sys.executable, "-c", _PARSE_SCRIPT], input=json.dumps(commands), env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [], result.stderr[-3000:]


def test_ops_guide_covers_the_seed_variables():
    guide = ops_guide()
    for name in ("SOURCE_DATABASE_URL", "DATABASE_URL", "TARGET_DATABASE_URL", "BACKUP_MODE", "RESTORE_FK_CONSTRAINTS",
                 "PG_RESTORE_JOBS", "SCHEDULE", "MAX_RETRY_COUNT", "LCMS_API_URL", "LCMS_API_KEY", "NOTIFICATIONS",
                 "DB_SCHEMA_EXPORTER_ENABLED", "S3_BUCKET_NAME", "SENTRY_DSN", "REDIS_URL", "PG_CLIENT_VERSION",
                 "AIRFLOW__SENTRY__SENTRY_ON", "AIRFLOW__SENTRY__SENTRY_DSN", "REPLICATION_WORK_DIR"):
        assert f"`{name}`" in guide or f"{name}=" in guide, name
    # the compose commands the guide gives name services that exist
    services = set(yaml.safe_load(COMPOSE.read_text())["services"])
    for service in re.findall(r"docker compose (?:up|exec)(?: -d)? ([a-z][a-z-]+)", guide):
        assert service in services, service
