"""``UrlHttpHook``: the http provider's ``HttpHook`` on a full URL instead of an Airflow connection (webhooks)."""

from __future__ import annotations

from typing import Any

from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import Connection

#: connection id shown in the hook's logs; no such connection needs to exist
WEBHOOK_CONN_ID = "pgrepl_webhook"


class UrlHttpHook(HttpHook):
    """An ``HttpHook`` whose base URL is given, not read from an Airflow connection.

    :param base_url: ``scheme://host[:port]`` (see :func:`pgrepl.notify.split_url`)
    """

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        kwargs.setdefault("http_conn_id", WEBHOOK_CONN_ID)
        super().__init__(**kwargs)
        self._given_base_url = base_url

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]
        return Connection(conn_id=conn_id, conn_type="http", host=self._given_base_url)
