"""Fetch, map, load: the whole learning-content step, without Airflow's task machinery."""

from __future__ import annotations

import logging
import time

from pgrepl.hooks.lcms import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, LcmsHook
from pgrepl.learning_content.loader import replace_tables
from pgrepl.learning_content.mapping import TABLES, check_declarations, map_payload
from pgrepl.pgtools import PgConn
from pgrepl.settings import LCMS_CONN_ID, LcmsSettings

log = logging.getLogger(__name__)


def sync_learning_content(
    lcms: LcmsSettings,
    target: PgConn,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = 3,
    retry_wait: float = 5.0,
    schema: str = "public",
    cascade: bool = False,
    lcms_conn_id: str = LCMS_CONN_ID,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict:
    """Replace the learning-content tables of ``target`` with the API's current content.

    Everything is fetched and checked before the database is touched, then all tables are swapped
    in one transaction; on any error every table keeps its previous content.

    :return: ``{"tables": {table: rows}, "seconds": elapsed}``
    :raises pgrepl.hooks.lcms.LcmsFetchError: the API failed (URL and status named)
    :raises pgrepl.learning_content.mapping.LearningContentError: the payload does not fit (table, record, field)
    :raises pgrepl.learning_content.loader.LearningContentLoadError: the database refused it (table named)
    """
    logger = logger or log
    started = time.monotonic()
    check_declarations(TABLES)
    hook = LcmsHook(lcms, timeout=timeout, retries=retries, retry_wait=retry_wait, lcms_conn_id=lcms_conn_id)
    payload = hook.fetch(endpoint)
    rows = map_payload(payload, TABLES)
    logger.info("learning content: %s", ", ".join(f"{name} {len(r)}" for name, r in rows.items()))
    with target.connect() as conn:
        counts = replace_tables(conn, rows, tables=TABLES, schema=schema, cascade=cascade, logger=logger)
    return {"tables": counts, "seconds": round(time.monotonic() - started, 3)}
