"""Standard Webhooks signatures (as Svix makes them), both ways: sign and verify. Pure: no I/O.

jobgate signs its own outbound webhooks with :func:`sign` (``gateway/webhooks.py``) and verifies
the pushes of providers that sign theirs (Pulse, through Svix) with :func:`verify`. The embedded
Pulse sandbox signs with the same functions, so the two ends share one definition of the scheme:

- the secret is ``whsec_`` + base64 of the HMAC key;
- ``webhook-signature`` is a space-separated list of ``v1,<base64 HMAC-SHA256>`` entries, each over
  ``"{webhook-id}.{webhook-timestamp}.{raw body}"``; one matching entry is enough, so a sender can
  sign with an old and a new secret while rotating;
- ``webhook-timestamp`` (Unix seconds) must lie within :data:`TOLERANCE` of the receiver's clock,
  either way, which bounds how long a captured delivery can be replayed. Within that window
  the receiver deduplicates by ``webhook-id`` (``gateway/callbacks.py``).

Svix also sends the same values as ``svix-id``, ``svix-timestamp`` and ``svix-signature``; either
spelling is read. The errors name what was wrong and never carry a signature or the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Final

SECRET_PREFIX: Final = "whsec_"
TOLERANCE: Final = 5 * 60
"""Seconds a ``webhook-timestamp`` may lie from the receiver's clock, in either direction."""
SIGNATURE_VERSION: Final = "v1"
ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"
_ALIASES: Final[Mapping[str, str]] = {
    ID_HEADER: "svix-id",
    TIMESTAMP_HEADER: "svix-timestamp",
    SIGNATURE_HEADER: "svix-signature",
}
MAX_SIGNATURES: Final = 32
"""Entries of a ``webhook-signature`` list that are tried; a longer list is refused, so a forged
header cannot make one request cost thousands of HMACs."""


# --------------------------------------------------------------------------------------------------
# Secrets and signing


def parse_secret(secret: str) -> bytes:
    """The signing key: the secret's base64 part, decoded (the ``whsec_`` prefix is optional)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is not a usable ``whsec_`` secret, or ``None`` when it is. The reason never
    quotes the secret: it ends up in an operator's error message."""
    if not secret.startswith(SECRET_PREFIX):
        return f"it must start with {SECRET_PREFIX}"
    try:
        key = parse_secret(secret)
    except (binascii.Error, ValueError):
        return f"the part after {SECRET_PREFIX} must be base64"
    if not key:
        return f"the part after {SECRET_PREFIX} is empty"
    return None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``: the ``webhook-signature`` value."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION}," + base64.b64encode(digest).decode()


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(key, msg_id, timestamp, body),
    }


# --------------------------------------------------------------------------------------------------
# Verifying


class VerificationError(Exception):
    """A delivery that cannot be trusted; ``str()`` says why, safe to show the sender."""

    reason = "unverified"


class MissingHeaders(VerificationError):
    reason = "missing_headers"


class InvalidTimestamp(VerificationError):
    """Not a number, or outside :data:`TOLERANCE` of now (too old: a replay; too new: a clock
    that cannot be trusted either)."""

    reason = "invalid_timestamp"


class InvalidSignature(VerificationError):
    reason = "invalid_signature"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Also a plain dict with any capitalisation (aiohttp's headers are case-insensitive already).
    for candidate in (name, _ALIASES[name]):
        value = headers.get(candidate)
        if value is None:
            value = next((v for k, v in headers.items() if k.lower() == candidate), None)
        if value:
            return value.strip()
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    *,
    tolerance: float = TOLERANCE,
) -> str:
    """The ``webhook-id`` of a delivery whose signature and timestamp hold; raises a
    :class:`VerificationError` otherwise. ``body`` is the raw bytes as received: any re-encoding
    (key order, spacing) breaks the signature, as it should."""
    msg_id = _header(headers, ID_HEADER)
    timestamp_text = _header(headers, TIMESTAMP_HEADER)
    signatures = _header(headers, SIGNATURE_HEADER)
    missing = [
        name
        for name, value in (
            (ID_HEADER, msg_id),
            (TIMESTAMP_HEADER, timestamp_text),
            (SIGNATURE_HEADER, signatures),
        )
        if value is None
    ]
    if msg_id is None or timestamp_text is None or signatures is None:
        raise MissingHeaders(f"missing header {', '.join(missing)}")
    if not (_encodable(msg_id) and signatures.isascii()):
        # Header bytes that are not UTF-8 reach us as surrogates, which cannot be encoded (nor
        # have been signed); a signature is base64, ASCII only.
        raise InvalidSignature(f"{ID_HEADER} or {SIGNATURE_HEADER} is not valid text")
    if not (timestamp_text.isascii() and timestamp_text.isdigit() and len(timestamp_text) <= 12):
        # Whole Unix seconds; twelve digits reach the year 33658, and a longer number would only
        # overflow the arithmetic below.
        raise InvalidTimestamp(f"{TIMESTAMP_HEADER} is not a whole number of seconds")
    timestamp = int(timestamp_text)
    if now - timestamp > tolerance:
        raise InvalidTimestamp(
            f"{TIMESTAMP_HEADER} is {now - timestamp:.0f} s old (tolerance {tolerance:g} s)"
        )
    if timestamp - now > tolerance:
        raise InvalidTimestamp(
            f"{TIMESTAMP_HEADER} is {timestamp - now:.0f} s in the future (tolerance "
            f"{tolerance:g} s)"
        )
    entries = signatures.split()
    if len(entries) > MAX_SIGNATURES:
        raise InvalidSignature(f"{SIGNATURE_HEADER} lists more than {MAX_SIGNATURES} signatures")
    expected = sign(key, msg_id, timestamp, body).encode()
    matched = False
    for entry in entries:
        version, _, _ = entry.partition(",")
        # Every v1 entry is compared, in constant time, and the loop does not stop at a match:
        # the time taken says nothing about which entry (or how much of one) was right.
        if version == SIGNATURE_VERSION and hmac.compare_digest(entry.encode(), expected):
            matched = True
    if not matched:
        raise InvalidSignature(f"no {SIGNATURE_VERSION} entry of {SIGNATURE_HEADER} matches")
    return msg_id
