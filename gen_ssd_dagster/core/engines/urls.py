"""Secrets out of text that may reach a log, a store or a traceback: the one place that redacts.

A server URL can carry credentials two ways: `user:password@` before the host, and a query value
(`?api_key=...`, `&token=...`, `sig=...` of a signed URL). A server can also echo the API key back in
an error body. `redact` replaces each by `***`; the names, the host and the path stay readable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# `scheme://user:password@host`: from `://` to the last `@` before the path (a password may hold `@`)
_USERINFO = re.compile(r"(?<=://)[^/?#\s]+@")
# A query or fragment parameter whose name says it holds a secret (api_key, access_token,
# X-Amz-Signature, client_secret, ...): its value, up to the next `&`, `#`, quote or whitespace.
_SECRET_NAMES = r"[\w.-]*(?:key|token|secret|password|passwd|pwd|sig|signature|auth|credential|session)[\w.-]*"
_SECRET_PARAM = re.compile(rf"(?i)([?&#;]{_SECRET_NAMES}=)[^&#\s'\"<>]*")


def redact(text: object, secrets: Iterable[str | None] = ()) -> str:
    """`text` with URL credentials, secret-named query values and each of `secrets` replaced by `***`."""
    out = _SECRET_PARAM.sub(rf"\g<1>{MASK}", _USERINFO.sub(f"{MASK}@", str(text)))
    for secret in secrets:
        if secret:
            out = out.replace(secret, MASK)
    return out
