"""The one URL redactor: hide what may be a secret in the URLs of a text before it reaches a log, an error or a
webhook body."""

from __future__ import annotations

import re

# user:password@ in a URL, with or without a scheme (a malformed URL is redacted too); the password runs up to
# the last "@" before the path
_PASSWORD = re.compile(r"((?:\b[a-z][a-z0-9+.-]*://)?[^\s/:@]*):[^\s/]*@", re.IGNORECASE)
# the values of a query string (?key=..., &token=...)
_QUERY_VALUE = re.compile(r"([?&][^=\s&#?]+=)[^&\s#]*")


def redact(text: str) -> str:
    """``text`` with every URL's password and query values replaced by ``***``.

    ``postgresql://u:pw@h/db`` -> ``postgresql://u:***@h/db``; ``https://h/x?token=abc`` -> ``https://h/x?token=***``.
    """
    return _QUERY_VALUE.sub(r"\1***", _PASSWORD.sub(r"\1:***@", text))
