"""The one scrubber: configured secrets and credential-shaped text masked wherever text leaves.

Both packages use it: the adapters on every value a provider's answer becomes (``adapters.http``),
the gateway on its log lines (``gateway.logs``) and, as a last line, on problem bodies
(``gateway.web.problems``). It lives here, below both, because adapters never import the gateway.

Three things are masked:

- each configured secret (provider keys, callback secrets, the store password) wherever it occurs,
  also percent-encoded or JSON-escaped, since providers quote back the URLs and bodies they got;
- credential pairs in free text: ``Authorization: ...``, ``x-api-key: ...``, ``api_key=...``,
  ``token=...`` and ``Bearer``/``Basic`` credentials;
- a long key-like token (16+ characters with a digit) right after a key word: ``Invalid API key
  provided: sk_live_...``, the shape providers use when they name the key they refused;
- jobgate's own client keys (all but their public prefix) and stream tokens, wherever they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus

MASK: Final = "[REDACTED]"
_MASK_BYTES: Final = MASK.encode()

SENSITIVE_KEYS: Final = frozenset(
    {
        "api_key",
        "apikey",
        "key",
        "x_api_key",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "secret",
        "client_secret",
        "callback_secret",
        "webhook_secret",
        "password",
        "passwd",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
    }
)
"""Mapping keys (compared lower-cased, with ``-`` as ``_``) whose value is masked whatever it is."""

MIN_SECRET_LENGTH: Final = 6
"""Configured secrets shorter than this are not searched for inside strings: a two-letter
sandbox key would mask every occurrence of those letters. Real provider keys are far longer."""

_CREDENTIAL_PAIR: Final = re.compile(
    r"(?i)(?<![a-z0-9])"
    r"((?:x-)?api[-_ ]?key|access[-_]?token|token|secret|password|authorization|cookie)"
    r"(\"?'?\s*[:=]\s*\"?'?)"
    r"((?:bearer|basic)\s+)?[^\s\"',;&]+"
)
_BEARER: Final = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*")
_KEYLIKE_AFTER_KEY_WORD: Final = re.compile(
    r"(?i)(?<![a-z0-9])((?:x-)?api[-_ ]?key|access[-_ ]?key|secret[-_ ]?key|key|token|secret"
    r"|password|credentials?)(?![a-z0-9])"
    # Up to two short words between ("key provided: ...", "token was '...'").
    r"((?:[^a-z0-9_\-.~+/\n]{1,4}[a-z]{1,10}){0,2}[^a-z0-9_\-.~+/\n]{1,4})"
    r"(?=[a-z0-9_\-.~+/]*[0-9])[a-z0-9][a-z0-9_\-.~+/]{15,}=*"
)


# jobgate's own credentials: a client key keeps its public prefix (``jg_`` + 8), which is what
# operators match against ``jobgate keys list``; a stream token is masked whole.
_CLIENT_KEY: Final = re.compile(r"(?<![A-Za-z0-9_])(jg_[A-Za-z0-9_-]{8})[A-Za-z0-9_-]{35}")
_STREAM_TOKEN: Final = re.compile(r"(?<![A-Za-z0-9_])jgs_[A-Za-z0-9_\-.]{16,}")


def sensitive(key: object) -> bool:
    """Whether a mapping key names a credential, so that its value is masked whatever it is."""
    return isinstance(key, str) and key.lower().replace("-", "_") in SENSITIVE_KEYS


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every one of ``secrets`` and every credential-looking pattern masked."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _CREDENTIAL_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    if "jg" in text:
        text = _CLIENT_KEY.sub(lambda m: f"{m.group(1)}{MASK}", text)
        text = _STREAM_TOKEN.sub(MASK, text)
    return _KEYLIKE_AFTER_KEY_WORD.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


def redact_value(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """A copy of ``value`` with secrets masked; containers are walked, other objects checked
    through their ``repr`` (what a renderer would print) and replaced only if it leaks."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: MASK if sensitive(k) else redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item, secrets) for item in value]
    text = repr(value)
    masked = redact_text(text, secrets)
    return value if masked == text else masked


def _spellings(secret: str) -> set[str]:
    """The ways a secret comes back quoted: as sent, in a URL, inside a JSON string."""
    return {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}


class Scrubber:
    """:func:`redact_text` and :func:`redact_value` bound to one set of configured secrets."""

    __slots__ = ("_encoded", "secrets")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        found = {
            spelling
            for secret in secrets
            if secret and len(secret) >= MIN_SECRET_LENGTH
            for spelling in _spellings(secret)
        }
        # Longest first, so a secret that contains another is masked whole.
        self.secrets: tuple[str, ...] = tuple(sorted(found, key=len, reverse=True))
        self._encoded = tuple(secret.encode() for secret in self.secrets)

    def __repr__(self) -> str:
        return f"Scrubber({len(self.secrets)} spellings)"

    def mask_bytes(self, raw: bytes) -> bytes:
        """``raw`` with the secrets alone masked (no patterns: it may be a whole result). The mask
        holds no quote or backslash, so a JSON document stays valid."""
        for secret in self._encoded:
            if secret in raw:
                raw = raw.replace(secret, _MASK_BYTES)
        return raw

    def text(self, text: str) -> str:
        return redact_text(text, self.secrets)

    def optional(self, text: str | None) -> str | None:
        return None if text is None else redact_text(text, self.secrets)

    def value(self, value: Any) -> Any:
        return redact_value(value, self.secrets)
