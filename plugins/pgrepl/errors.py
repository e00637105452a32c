"""One error base for the package, and the one place that turns an error into Airflow's retry or no-retry.

Every error of pg-replication derives from :class:`PgreplError`, which says whether a later attempt can succeed
(``retryable``): a bad setting, a missing table, a constraint violation in the data or a poisoned dump will fail
the same way at every attempt, so they fail the task at once (:class:`AirflowFailException`); a lost connection,
a busy warehouse or an unreachable endpoint may pass, so Airflow retries them with back-off
(:class:`AirflowException`). Errors of the PostgreSQL driver are classified by their SQLSTATE (:func:`is_retryable`).

Operators and tasks wrap their work in :func:`airflow_errors` (the ``retry_on_failure`` switch of ``common.sql``'s
operators, decided in one place).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

#: SQLSTATE classes no retry can fix: data exception, integrity constraint violation (unique, foreign key, check,
#: not null), syntax error or access rule violation (undefined table/column, permission), invalid schema name,
#: feature not supported, with check option violation
PERMANENT_SQLSTATE_CLASSES = frozenset({"22", "23", "42", "3F", "0A", "44"})


class PgreplError(Exception):
    """Base of every error of pg-replication; the message names the setting, table or URL at fault.

    :param retryable: whether a later attempt can succeed (by default the class's ``retryable``)
    """

    retryable: bool = True

    def __init__(self, message: str = "", *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


def sqlstate_retryable(sqlstate: str | None) -> bool:
    """Whether a PostgreSQL error of this SQLSTATE may pass on a later attempt (no SQLSTATE: a connection
    problem, retryable)."""
    return not sqlstate or sqlstate[:2] not in PERMANENT_SQLSTATE_CLASSES


def is_retryable(exc: BaseException) -> bool:
    """:class:`PgreplError`: its flag; a psycopg error: by SQLSTATE; anything else: retryable."""
    if isinstance(exc, PgreplError):
        return exc.retryable
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None and type(exc).__module__.startswith("psycopg"):
        sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None)
    return sqlstate_retryable(sqlstate)


def to_airflow(exc: BaseException, prefix: str = ""):
    """The Airflow exception for ``exc``: :class:`AirflowException` (retried) or :class:`AirflowFailException`."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    message = f"{prefix}{exc}" if str(exc) else f"{prefix}{type(exc).__name__}"
    return AirflowException(message) if is_retryable(exc) else AirflowFailException(message)


@contextmanager
def airflow_errors(prefix: str = "", *, catch: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Run the body of a task; a :class:`PgreplError` (or one of ``catch``) becomes Airflow's retry or no-retry.

    Airflow's own exceptions (skip, fail) pass through untouched. The package's errors carry their whole story
    in the message, so their traceback is dropped; other errors keep theirs as the cause.

    :param prefix: put before the message, e.g. ``"learning content: "``
    :param catch: further exception types to convert (e.g. ``psycopg.Error``), classified by :func:`is_retryable`
    """
    from airflow.sdk.exceptions import AirflowException

    try:
        yield
    except AirflowException:
        raise
    except PgreplError as exc:
        raise to_airflow(exc, prefix) from None
    except catch as exc:  # type: ignore[misc]
        raise to_airflow(exc, prefix) from exc
