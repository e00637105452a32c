"""What every DAG of the package shares: owner, retries with exponential back-off, start date, time zone."""

from __future__ import annotations

from datetime import timedelta

import pendulum

from pgrepl.settings import DEFAULT_TIMEZONE, retries_or_default

#: first logical date of every DAG (catchup is off: only the next slot runs)
START_DATE = pendulum.datetime(2024, 1, 1, tz=DEFAULT_TIMEZONE)


def default_args(retry_delay: timedelta = timedelta(seconds=30)) -> dict:
    """``default_args`` of a DAG: ``MAX_RETRY_COUNT`` retries, exponential back-off up to 30 minutes."""
    return {
        "owner": "data-engineering",
        "retries": retries_or_default(),
        "retry_delay": retry_delay,
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    }
