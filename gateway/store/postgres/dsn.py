"""Connection strings: naming a server in messages without its password, and turning a failure
to reach it into :class:`~gateway.store.base.StoreUnavailable`.

A DSN is configuration and ends up in logs, health answers and tracebacks, so every message this
package writes names the server through :func:`redact_dsn`, and the reason it quotes from the
driver is scrubbed of the password too (a driver may echo what it was given).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

from gateway.store.base import StoreUnavailable

MASK: Final = "***"

# scheme://userinfo@hosts/db?params. The userinfo ends at the LAST "@" before the query: a raw
# password may itself hold "@", "/" or ":", and hosts and database names never hold "@".
_URI: Final = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>[^?]*)(?P<query>\?.*)?$")
_QUERY_SECRET: Final = re.compile(r"(?i)([?&](?:ssl)?password=)[^&]*")
# libpq's keyword form: password=secret or password='a secret with spaces'.
_KEYWORD_SECRET: Final = re.compile(r"(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_SCHEMA: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***`` (in the userinfo, the query or keywords)."""
    match = _URI.match(dsn.strip())
    if match is None:
        return _KEYWORD_SECRET.sub(lambda m: m.group(1) + MASK, dsn)
    rest = match["rest"]
    userinfo, at, hosts = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:{MASK}@{hosts}"
    query = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, match["query"] or "")
    return match["scheme"] + rest + query


def unavailable(dsn: str, exc: BaseException) -> StoreUnavailable:
    """The error to raise for ``exc`` met while connecting: one line naming the redacted DSN and
    the reason, no password in it."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    for secret in _passwords(dsn):
        reason = reason.replace(secret, MASK)
    reason = " ".join(reason.split())
    return StoreUnavailable(f"PostgreSQL at {redact_dsn(dsn)} is unavailable: {reason}")


def check_schema(schema: str) -> str:
    """``schema`` as PostgreSQL names it when unquoted (folded to lower case), if it is a plain
    identifier. Such a name needs quoting nowhere (``search_path``, ``CREATE SCHEMA``), which
    matters because identifiers cannot be bound as query parameters."""
    if not _SCHEMA.match(schema):
        raise ValueError(
            f"schema {schema!r} must be a plain identifier: letters, digits and _, at most 63"
        )
    return schema.lower()


def _passwords(dsn: str) -> list[str]:
    """Every form in which ``dsn``'s passwords could reappear in a driver's message."""
    found: list[str] = []
    match = _URI.match(dsn.strip())
    if match is not None:
        userinfo, at, _ = match["rest"].rpartition("@")
        if at and ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        found += [m.group(0).split("=", 1)[1] for m in _QUERY_SECRET.finditer(match["query"] or "")]
    else:
        found += [m.group(2).strip("'") for m in _KEYWORD_SECRET.finditer(dsn)]
    found += [unquote(secret) for secret in found]
    # Longest first, so that a password containing another is masked whole.
    return sorted({secret for secret in found if secret}, key=len, reverse=True)
