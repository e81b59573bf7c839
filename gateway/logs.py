"""structlog configuration: JSON in production, console output in development, secrets masked.

One chain of plain-function processors serves both formats and stdlib logging (aiohttp's own
loggers). Redaction runs after exceptions are formatted into text and just before rendering, so
nothing reaches the output without passing it: sensitive keys are masked whatever their value, the
configured provider keys are masked wherever they appear inside a string, and ``Bearer``/``Basic``
credentials and ``api_key=...``-style pairs are masked in free text. The masking is
``adapters.redact``'s, the same the adapters apply to provider text before the gateway sees it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO
from urllib.parse import unquote, urlsplit

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from adapters.redact import MASK, Scrubber, redact_text, sensitive

if TYPE_CHECKING:
    from gateway.settings import Settings

# The masking itself is ``adapters.redact``, shared with the adapters and the problem renderer;
# ``MASK`` and ``redact_text`` are named here too for the callers that know them from this module.
__all__ = [
    "MASK",
    "configure_logging",
    "processors",
    "redact_text",
    "redactor",
    "secrets_of",
    "stdlib_handler",
]


def redactor(secrets: Iterable[str] = ()) -> Processor:
    """The redaction processor, masking ``secrets`` (provider keys) wherever they appear."""
    scrub = Scrubber(secrets)

    def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {
            key: MASK if sensitive(key) else scrub.value(value) for key, value in event_dict.items()
        }

    return redact


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the settings hold: provider keys, callback secrets, the webhook signing
    secret, the auth secret and the store's DSN and password."""
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
    if settings.webhooks.secret is not None:
        found.append(settings.webhooks.secret.get_secret_value())
    try:
        auth_secret = settings.auth.secret_value()
    except OSError:
        auth_secret = None  # an unreadable secret_file stops start-up with its own message
    if auth_secret:
        found.append(auth_secret)
    if settings.store.kind == "postgres":
        try:
            dsn = settings.store.postgres_dsn()
        except OSError:
            dsn = ""  # an unreadable dsn_file stops the store at start-up with its own message
        password = _password(dsn)
        # A URL holds the password percent-encoded; a driver's error may quote it decoded.
        decoded = unquote(password) if password else None
        found.extend(secret for secret in (dsn, password, decoded) if secret)
    return list(dict.fromkeys(found))


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
