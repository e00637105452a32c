"""Airflow Assets of pg-replication, for downstream DAGs (``schedule=[WAREHOUSE_REFRESHED]``)."""

from __future__ import annotations

from airflow.sdk import Asset

#: updated by the nightly run once the warehouse is verified (outlet of the ``verify`` task)
WAREHOUSE_REFRESHED = Asset(name="warehouse_refreshed", uri="pgrepl://warehouse/refreshed", group="pg_replication")
