"""One error base, one conversion to Airflow's retry (AirflowException) or no-retry (AirflowFailException)."""

from __future__ import annotations

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from pgrepl.errors import PgreplError, airflow_errors, is_retryable, to_airflow
from pgrepl.fullcopy import ClientCommandError, PreflightError, failure_retryable
from pgrepl.hooks.lcms import LcmsFetchError
from pgrepl.incremental import CopyMismatchError, SourceRewoundError
from pgrepl.learning_content.mapping import LearningContentError
from pgrepl.pgtools import PgToolError
from pgrepl.settings import SettingsError
from pgrepl.swap import SwapError, WarehouseBusy
from pgrepl.verify import VerificationError


@pytest.mark.parametrize("error, retryable", [
    (SettingsError("BACKUP_MODE: not valid JSON"), False),
    (PgToolError("PG_BIN_DIR: no pg_dump"), False),
    (PreflightError("BACKUP_MODE: the source has no table 'x'"), False),
    (PreflightError("source database unreachable", retryable=True), True),
    (SwapError("kept table depends on a replaced sequence"), False),
    (WarehouseBusy("advisory lock held"), True),
    (WarehouseBusy("another run holds the warehouse", retryable=False), False),
    (SourceRewoundError("target max(id) above the source's"), False),
    (CopyMismatchError("read 3 rows, wrote 2"), True),
    (LearningContentError("table skills: record x: field level"), False),
    (LcmsFetchError("HTTP 401"), False),
    (LcmsFetchError("HTTP 503 after 4 attempts", retryable=True), True),
    (VerificationError([]), False),
    (psycopg.errors.UniqueViolation("duplicate key"), False),
    (psycopg.errors.ForeignKeyViolation("violates foreign key"), False),
    (psycopg.errors.UndefinedTable("relation does not exist"), False),
    (psycopg.errors.SyntaxError("syntax error"), False),
    (psycopg.errors.AdminShutdown("terminating connection"), True),
    (psycopg.errors.DeadlockDetected("deadlock"), True),
    (psycopg.OperationalError("connection refused"), True),
    (OSError("disk full"), True),
])
def test_each_error_says_whether_a_retry_can_help(error, retryable):
    assert is_retryable(error) is retryable
    converted = to_airflow(error)
    assert isinstance(converted, AirflowException)
    assert isinstance(converted, AirflowFailException) is (not retryable)


def test_airflow_errors_converts_once_and_lets_airflow_exceptions_through():
    with pytest.raises(AirflowFailException, match="^learning content: LCMS_API_KEY: not set"):
        with airflow_errors("learning content: "):
            raise SettingsError("LCMS_API_KEY: not set while LCMS_API_URL is")
    with pytest.raises(AirflowException) as retried:
        with airflow_errors():
            raise PgreplError("warehouse busy")
    assert not isinstance(retried.value, AirflowFailException)
    with pytest.raises(AirflowSkipException):
        with airflow_errors():
            raise AirflowSkipException("not configured")
    with pytest.raises(ValueError):  # not the package's, not asked for: untouched
        with airflow_errors():
            raise ValueError("a bug")
    with pytest.raises(AirflowFailException, match="^SQL failed: duplicate key"):
        with airflow_errors("SQL failed: ", catch=(psycopg.Error,)):
            raise psycopg.errors.UniqueViolation("duplicate key")


def test_a_poisoned_restore_is_not_retried_a_lost_connection_is():
    assert failure_retryable([
        'pg_restore: error: COPY failed for table "refused": ERROR:  new row for relation "refused" violates check '
        'constraint "refused_v_check"',
    ]) is False
    assert failure_retryable(['pg_restore: error: could not execute query: ERROR:  relation "x" does not exist']) is False
    assert failure_retryable([
        "pg_restore: error: error returned by PQputCopyData: server closed the connection unexpectedly",
        "FATAL:  terminating connection due to administrator command",
    ]) is True
    assert failure_retryable([]) is True  # killed without a word (SIGKILL): try again
    assert ClientCommandError("pg_restore failed", retryable=False).retryable is False
