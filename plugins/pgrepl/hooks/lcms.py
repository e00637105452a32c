"""A hook on the http provider's ``HttpHook`` for the learning-content API (LCMS).

``GET {url}/databases/airtable`` with ``Authorization: Bearer <key>`` and ``client: <app>``; a
3-minute timeout; a few retries with exponential back-off on 5xx answers, timeouts and refused
connections. The settings come from :func:`pgrepl.settings.load_lcms` (connection ``lcms_api`` or
``LCMS_API_URL`` / ``LCMS_API_KEY``): the hook builds its Airflow connection in memory from them, so
it works with environment variables alone, and the key travels only in the request header — never
in a log line, an exception message or the connection's URL.
"""

from __future__ import annotations

from typing import Any

import requests
import tenacity

from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import Connection
from pgrepl.errors import PgreplError
from pgrepl.redact import redact
from pgrepl.settings import LCMS_CONN_ID, LcmsSettings

DEFAULT_ENDPOINT = "databases/airtable"
DEFAULT_TIMEOUT = 180.0


class LcmsFetchError(PgreplError):
    """The learning content could not be fetched. ``retryable``: worth retrying the task later (5xx answers,
    timeouts, refused connections); an HTTP 4xx or a body that is not JSON is not."""

    retryable = False


class _ServerError(Exception):
    """A 5xx answer (retried)."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"HTTP {response.status_code} {response.reason}")
        self.response = response


_TRANSIENT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, _ServerError)


class LcmsHook(HttpHook):
    """Fetch the learning content.

    :param settings: URL, API key and client name (``load_lcms``)
    :param timeout: seconds for connect and read of one attempt (default 180)
    :param retries: extra attempts after a 5xx answer, a timeout or a refused connection
    :param retry_wait: first back-off in seconds; it doubles at each retry
    :param retry_max_wait: upper bound of one back-off
    :param lcms_conn_id: the connection the settings came from (named in logs)
    """

    hook_name = "Learning content API"
    default_conn_name = LCMS_CONN_ID

    def __init__(
        self,
        settings: LcmsSettings,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        retry_wait: float = 5.0,
        retry_max_wait: float = 60.0,
        lcms_conn_id: str = LCMS_CONN_ID,
    ) -> None:
        super().__init__(method="GET", http_conn_id=lcms_conn_id)
        self.settings = settings
        self.timeout = timeout
        self.retries = retries
        self.retry_wait = retry_wait
        self.retry_max_wait = retry_max_wait

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]
        """The API's base URL as an in-memory http connection: no login, so no Basic auth; no key."""
        return Connection(conn_id=conn_id, conn_type="http", host=self.settings.url)

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.settings.api_key}",
            "client": self.settings.app,
            "Accept": "application/json",
        }

    def _get_once(self, endpoint: str) -> requests.Response:
        response = self.run(
            endpoint=endpoint,
            headers=self._headers(),
            extra_options={"timeout": self.timeout, "check_response": False},
        )
        if response.status_code >= 500:
            raise _ServerError(response)
        return response

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.log.warning(
            "learning content: attempt %s of %s failed (%s); retrying in %.1f s",
            state.attempt_number, self.retries + 1, _describe(exc), state.next_action.sleep if state.next_action else 0,
        )

    def fetch(self, endpoint: str = DEFAULT_ENDPOINT) -> Any:
        """GET ``endpoint`` and return its JSON body.

        :raises LcmsFetchError: naming the URL and the status / cause; ``retryable`` is true when
            the retries ran out on 5xx answers, timeouts or connection failures.
        """
        url = redact(self.url_from_endpoint(endpoint))
        self.log.info("learning content: GET %s (client %s, timeout %s s)", url, self.settings.app, self.timeout)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.retry_wait, min=self.retry_wait, max=self.retry_max_wait),
            retry=tenacity.retry_if_exception_type(_TRANSIENT),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            response = retrying(self._get_once, endpoint)
        except _TRANSIENT as exc:
            raise LcmsFetchError(
                f"GET {url} failed after {self.retries + 1} attempt(s): {_describe(exc)}", retryable=True
            ) from None
        except requests.exceptions.RequestException as exc:
            raise LcmsFetchError(f"GET {url} failed: {_describe(exc)}") from None
        if response.status_code >= 300:
            hint = " (check the API key: connection lcms_api or LCMS_API_KEY)" if response.status_code in (401, 403) else ""
            hint = hint or (" (check the URL: connection lcms_api or LCMS_API_URL)" if response.status_code == 404 else "")
            raise LcmsFetchError(f"GET {url}: HTTP {response.status_code} {response.reason}{hint}")
        try:
            payload = response.json()
        except ValueError as exc:
            content_type = response.headers.get("Content-Type", "no Content-Type")
            raise LcmsFetchError(
                f"GET {url}: the body is not JSON ({content_type}, {len(response.content)} bytes: {exc})"
            ) from None
        self.log.info("learning content: received %s bytes from %s", len(response.content), url)
        return payload


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"connection failed ({type(exc).__name__})"
    return str(exc) or type(exc).__name__
