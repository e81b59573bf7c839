"""structlog configuration: JSON in production, console output in development, secrets masked.

One chain of plain-function processors serves both formats and stdlib logging (aiohttp's own
loggers). Redaction runs after exceptions are formatted into text and just before rendering, so
nothing reaches the output without passing it: sensitive keys are masked whatever their value, the
configured provider keys are masked wherever they appear inside a string, and ``Bearer``/``Basic``
credentials and ``api_key=...``-style pairs are masked in free text.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

if TYPE_CHECKING:
    from gateway.settings import Settings

MASK = "[REDACTED]"

SENSITIVE_KEYS = frozenset(
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
"""Keys (compared lower-cased, with ``-`` as ``_``) whose value is masked whatever it is."""

MIN_SECRET_LENGTH = 6
"""Configured secrets shorter than this are not searched for inside strings: a two-letter
sandbox key would mask every occurrence of those letters. Real provider keys are far longer."""

_CREDENTIAL_PAIR = re.compile(
    r"(?i)(?<![a-z0-9])"
    r"((?:x-)?api[-_]?key|access[-_]?token|token|secret|password|authorization|cookie)"
    r"(\"?'?\s*[:=]\s*\"?'?)"
    r"((?:bearer|basic)\s+)?[^\s\"',;&]+"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*")


def _sensitive(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in SENSITIVE_KEYS


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every configured secret and every credential-looking pattern masked."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _CREDENTIAL_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)


def redact_value(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """A copy of ``value`` with secrets masked; containers are walked, other objects checked
    through their ``repr`` (what the renderers would print) and replaced only if it leaks."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: MASK if _sensitive(k) else redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item, secrets) for item in value]
    text = repr(value)
    masked = redact_text(text, secrets)
    return value if masked == text else masked


def redactor(secrets: Iterable[str] = ()) -> Processor:
    """The redaction processor, masking ``secrets`` (provider keys) wherever they appear."""
    # Longest first, so a key that contains another key is masked whole.
    known = tuple(
        sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    )

    def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {
            key: MASK if _sensitive(key) else redact_value(value, known)
            for key, value in event_dict.items()
        }

    return redact


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the settings hold: provider keys and callback secrets."""
    found: list[str] = []
    for name, provider in settings.providers.items():
        try:
            key = settings.provider_key(name)
        except (ValueError, OSError):
            # A missing key stops the app at start-up with its own message; nothing to mask.
            key = None
        if key:
            found.append(key)
        if provider.callback_secret is not None:
            found.append(provider.callback_secret.get_secret_value())
    if settings.store.kind == "postgres":
        try:
            dsn = settings.store.postgres_dsn()
        except OSError:
            dsn = ""  # an unreadable dsn_file stops the store at start-up with its own message
        found.extend(secret for secret in (dsn, _password(dsn)) if secret)
    return found


def _password(dsn: str) -> str | None:
    try:
        return urlsplit(dsn).password
    except ValueError:
        return None  # a DSN that does not parse stops the store with its own (masked) message


def renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=stream.isatty())


def processors(
    fmt: str, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> list[Processor]:
    """The whole structlog chain, renderer last. Tracebacks become text before redaction (a pretty
    traceback with locals would print values that never passed the redactor)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor(secrets),
        renderer(fmt, stream or sys.stderr),
    ]


def stdlib_handler(
    fmt: str, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.Handler:
    """A handler that renders stdlib records (aiohttp's loggers) through the same chain."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor(secrets),
                renderer(fmt, out),
            ],
        )
    )
    return handler


def configure_logging(
    fmt: str = "console",
    level: str = "INFO",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    stdlib: bool = True,
    cache: bool = True,
) -> None:
    """Route structlog (and, with ``stdlib``, the root logger) through one processor chain.

    ``cache`` is for tests: a cached logger keeps the chain it first used, so a test that
    reconfigures and then restores the defaults must turn it off.
    """
    out = stream or sys.stderr
    secrets = tuple(secrets)
    structlog.configure(
        processors=processors(fmt, secrets, out),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    if stdlib:
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(stdlib_handler(fmt, secrets, out))
        root.setLevel(level.upper())
