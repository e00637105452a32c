# The Airflow image of pg-replication: the official Airflow 3.3.2 image (Debian bookworm), plus
# pg_dump / pg_restore / psql of PostgreSQL ${PG_MAJOR} and the pinned requirements.txt.
#
#   docker build -t pg-replication-airflow:3.3.2 .          (docker compose build does the same)
#   docker build --build-arg PG_MAJOR=17 ...                 for PostgreSQL 17 servers
#
# pg_dump must be of a major version >= the source server's, and pg_restore is safest at the
# warehouse server's major: keep PG_MAJOR equal to the newest server you replicate
# (docker-compose.yaml passes the same value and runs postgres:${PG_MAJOR} servers).
FROM apache/airflow:3.3.2

ARG PG_MAJOR=16

USER root
# The base image already carries the PGDG apt repository (for its own postgresql-client); add it
# if a future base lacks it, then install the client of exactly PG_MAJOR. Last, the shared dump work
# directory (REPLICATION_WORK_DIR): an empty named volume mounted there inherits its owner.
RUN set -eux; \
    if ! grep -rqs "apt.postgresql.org" /etc/apt/sources.list /etc/apt/sources.list.d/; then \
        install -d -m 0755 /usr/share/postgresql-common/pgdg; \
        curl -fsSL --retry 3 https://www.postgresql.org/media/keys/ACCC4CF8.asc \
            -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc; \
        echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt $(. /etc/os-release && echo "${VERSION_CODENAME}")-pgdg main" \
            > /etc/apt/sources.list.d/pgdg.list; \
    fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/*; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_restore" --version; \
    install -d -o airflow -g 0 -m 2775 /opt/airflow/pgrepl-work

# pgrepl picks this folder first (PG_BIN_DIR); the base image may also hold a newer client
ENV PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin \
    REPLICATION_WORK_DIR=/opt/airflow/pgrepl-work

USER airflow
COPY requirements.txt /requirements.txt
# pin apache-airflow to the image's version so pip never up- or downgrades Airflow itself
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /requirements.txt
