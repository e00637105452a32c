"""``ResolvedConnectionS3Hook``: the amazon provider's ``S3Hook`` on a connection object already resolved."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper


class ResolvedConnectionS3Hook(S3Hook):
    """An ``S3Hook`` on ``connection``: the Airflow connection ``replication_s3``, or one built in memory from the
    seed's ``S3_*`` variables (:func:`pgrepl.s3_dump.settings_connection`).

    :param connection: an ``aws`` connection object (login/password = keys, extra ``endpoint_url``, ``region_name``)
    """

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        kwargs.setdefault("aws_conn_id", None)
        super().__init__(**kwargs)
        self._resolved_connection = connection

    @cached_property
    def conn_config(self) -> AwsConnectionWrapper:
        return AwsConnectionWrapper(conn=self._resolved_connection, region_name=self._region_name,
                                    botocore_config=self._config, verify=self._verify)
