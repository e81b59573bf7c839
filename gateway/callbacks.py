"""Inbound provider callbacks: a push that says "look at this job now", never the truth itself.

A provider that pushes (``capabilities.push``) posts to ``POST /v1/callbacks/{provider}``. Each
delivery is authenticated with the provider's own secret (``providers.NAME.callback_secret``), given
as ``?token=`` or in the ``X-Jobgate-Callback-Token`` header. The body is parsed only far enough to
name the upstream job; the job is then found by ``(provider, upstream_id)`` and polled at once, so
the upstream status call, not the callback body, decides the canonical state.

Bodies understood:

- ``extract``: what ``callbackUrl`` receives, ``{jobId, status, result}``
  (:meth:`ExtractAdapter.parse_callback`).
- ``catchall``: a webhook notification with ``job_id`` and ``status``, at the top level or under
  ``data`` (``{"event": "job.completed", "data": {"job_id": ..., "status": ...}}``); without a
  ``status``, the last dotted part of ``event`` stands in for it.

Deliveries are deduplicated in memory: the same provider, upstream id, status and body within
``DEDUPE_TTL`` seconds cause one refresh. The memory is bounded and lost on restart, which costs at
most one extra status poll per redelivered callback, since a callback only ever asks for a poll.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import quote

import orjson
import structlog

from adapters.base import JSON, MalformedResponse
from adapters.extract.adapter import ExtractAdapter
from gateway.errors import JobNotFound, ServiceError
from gateway.jobs import Job

if TYPE_CHECKING:
    from gateway.settings import Settings

log = structlog.get_logger("jobgate.callbacks")

TOKEN_PARAM: Final = "token"
TOKEN_HEADER: Final = "X-Jobgate-Callback-Token"
CALLBACK_PATH: Final = "/v1/callbacks/{provider}"

SUBMIT_FIELDS: Final[Mapping[str, str]] = {"extract": "callbackUrl"}
"""Providers whose submit body says where to push, and the field that says it. CatchAll's webhooks
are set up on CatchAll's side (``webhook_ids``), so jobgate cannot register one per job."""

DEDUPE_TTL: Final = 60.0
DEDUPE_SIZE: Final = 10_000
_LOGGED_ID_CHARS: Final = 200


class CallbackUnauthorized(ServiceError):
    status = 401
    code = "callback_unauthorized"
    title = "The callback token is missing or wrong"


class CallbacksNotEnabled(ServiceError):
    status = 404
    code = "callbacks_not_enabled"
    title = "This provider does not push callbacks here"


class InvalidCallback(ServiceError):
    status = 422
    code = "invalid_callback"
    title = "The callback body does not name a job"


# --------------------------------------------------------------------------------------------------
# Parsing: one function per provider, from the decoded body to (upstream id, native status)


@dataclass(frozen=True, slots=True)
class Notice:
    """What a callback says: this upstream job has (perhaps) reached this status."""

    provider: str
    upstream_id: str
    status: str | None
    digest: str
    """SHA-256 of the body in canonical form (sorted keys), so re-encodings dedupe too."""

    @property
    def key(self) -> str:
        return "\x00".join((self.provider, self.upstream_id, self.status or "", self.digest))


def parse_extract(body: JSON) -> tuple[str, str | None]:
    try:
        report = ExtractAdapter.parse_callback(body)
    except MalformedResponse as exc:
        raise InvalidCallback(str(exc)) from exc
    return report.upstream_id, report.native_status


def parse_catchall(body: JSON) -> tuple[str, str | None]:
    if not isinstance(body, dict):
        raise InvalidCallback("catchall callback: expected a JSON object")
    data = body.get("data")
    places = (data, body) if isinstance(data, dict) else (body,)
    job_id = _first_str(places, "job_id", "jobId")
    if job_id is None:
        raise InvalidCallback("catchall callback: missing field job_id (or data.job_id)")
    status = _first_str(places, "status")
    event = body.get("event")
    if status is None and isinstance(event, str) and event:
        status = event.rsplit(".", 1)[-1]
    return job_id, status


def _first_str(places: Iterable[Mapping[str, JSON]], *keys: str) -> str | None:
    for place in places:
        for key in keys:
            value = place.get(key)
            if isinstance(value, str) and value:
                return value
    return None


PARSERS: Final[Mapping[str, Callable[[JSON], tuple[str, str | None]]]] = {
    "extract": parse_extract,
    "catchall": parse_catchall,
}


def parse(provider: str, body: JSON) -> Notice:
    """The notice in ``body``; :class:`InvalidCallback` if it names no job."""
    parser = PARSERS.get(provider)
    if parser is None:
        raise CallbacksNotEnabled(f"callbacks are not enabled for {provider!r}")
    upstream_id, status = parser(body)
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return Notice(provider, upstream_id, status, digest)


# --------------------------------------------------------------------------------------------------
# Secrets and the URL a provider is told to push to


_SANDBOX_SECRETS: dict[str, str] = {}
"""Per-process secrets for the embedded sandbox, so that ``make run`` receives pushes untouched."""


def callback_secrets(settings: Settings, pushing: Iterable[str]) -> dict[str, str]:
    """The secret of every provider in ``pushing`` that has one; the others take no callbacks.

    With the embedded sandbox on, a provider without a configured secret gets a random one for
    this process's life (the sandbox learns it from the ``callbackUrl`` it is given).
    """
    found: dict[str, str] = {}
    for name in pushing:
        configured = settings.providers[name].callback_secret
        if configured is not None and configured.get_secret_value():
            found[name] = configured.get_secret_value()
        elif settings.sandbox.embedded:
            found[name] = _SANDBOX_SECRETS.setdefault(name, secrets.token_urlsafe(24))
    return found


def callback_url(public_base_url: str, provider: str, secret: str) -> str:
    path = CALLBACK_PATH.format(provider=provider)
    return f"{public_base_url.rstrip('/')}{path}?{TOKEN_PARAM}={quote(secret, safe='')}"


def with_callback(
    provider: str, request: Mapping[str, JSON], url: str | None
) -> Mapping[str, JSON]:
    """``request`` asking the provider to push to ``url``, unless the client named its own target.

    A client's own ``callbackUrl`` wins: the provider takes one target, and taking the client's
    away would break the client, so such a job is only polled.
    """
    field = SUBMIT_FIELDS.get(provider)
    if url is None or field is None or field in request:
        return request
    return {**request, field: url}


def token_matches(given: str | None, secret: str) -> bool:
    if given is None:
        return False
    # Constant time in the secret's content: a timing probe learns nothing about its prefix.
    return hmac.compare_digest(given.encode(), secret.encode())


# --------------------------------------------------------------------------------------------------
# Dedupe


class Deduper:
    """A bounded memory of recent keys, oldest first; a key counts as new again after ``ttl``."""

    def __init__(
        self,
        *,
        ttl: float = DEDUPE_TTL,
        size: int = DEDUPE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or size < 1:
            raise ValueError("ttl must be positive and size at least 1")
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first(self, key: str) -> bool:
        """True (and remembered) if ``key`` was not seen within ``ttl``; False for a repeat."""
        now = self.clock()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = now
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)


# --------------------------------------------------------------------------------------------------
# The inbox: authenticate, parse, dedupe, find the job, ask for a poll


class UpstreamLookup(Protocol):
    async def get_by_upstream(
        self, provider: str, upstream_id: str, tenant: str | None = "default"
    ) -> Job | None: ...


@dataclass(frozen=True, slots=True)
class CallbackConfig:
    """Which providers take callbacks, with which secret, and where providers reach jobgate."""

    public_base_url: str | None
    secrets: Mapping[str, str]

    def url(self, provider: str) -> str | None:
        secret = self.secrets.get(provider)
        if self.public_base_url is None or secret is None:
            return None
        return callback_url(self.public_base_url, provider, secret)

    def expects_push(self, job: Job) -> bool:
        """Whether jobgate asked the provider to push this job's end to it (see ``with_callback``).

        Judged from today's configuration: a job submitted before callbacks were turned on is
        taken to expect one, and is then polled at the slower push cadence until it finishes.
        """
        field = SUBMIT_FIELDS.get(job.provider)
        return (
            field is not None
            and self.url(job.provider) is not None
            and isinstance(job.request, dict)
            and field not in job.request
        )


class CallbackInbox:
    def __init__(
        self,
        config: CallbackConfig,
        store: UpstreamLookup,
        refresh: Callable[[str, str], Awaitable[object]],
        *,
        deduper: Deduper | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.refresh = refresh
        self.deduper = deduper or Deduper()
        self.refreshes = 0

    def authenticate(self, provider: str, token: str | None) -> None:
        """Raise unless ``provider`` takes callbacks and ``token`` is its secret."""
        secret = self.config.secrets.get(provider)
        if secret is None or provider not in PARSERS:
            raise CallbacksNotEnabled(
                f"callbacks are not enabled for {provider!r} (it does not push, or has no "
                "callback_secret)"
            )
        if not token_matches(token, secret):
            log.warning("callback.unauthorized", provider=provider, token_given=token is not None)
            raise CallbackUnauthorized(
                # Not "?token= or ...": the problem scrubber would mask the word after the "=".
                f"give the callback token as the {TOKEN_PARAM} query parameter or in the "
                f"{TOKEN_HEADER} header"
            )

    async def receive(self, provider: str, body: JSON) -> dict[str, bool]:
        """Ask for a poll of the job ``body`` names; the answer says only whether one matched."""
        notice = parse(provider, body)
        first = self.deduper.first(notice.key)
        handled = False
        try:
            # Any tenant's: the provider knows nothing of tenants.
            job = await self.store.get_by_upstream(provider, notice.upstream_id, None)
            if job is not None and first:
                await self.refresh(job.id, job.tenant)
                self.refreshes += 1
            handled = True
        except JobNotFound:
            # Deleted between the lookup and the refresh: as if it had never been tracked.
            job = None
            handled = True
        finally:
            if first and not handled:
                # A failed refresh must not swallow the provider's retry of the same delivery.
                self.deduper.forget(notice.key)
        upstream_id = notice.upstream_id[:_LOGGED_ID_CHARS]
        if job is None:
            if first:
                log.warning(
                    "callback.unmatched",
                    provider=provider,
                    upstream_id=upstream_id,
                    status=notice.status,
                )
            return {"matched": False}
        log.info(
            "callback.received",
            provider=provider,
            job_id=job.id,
            upstream_id=upstream_id,
            status=notice.status,
            duplicate=not first,
        )
        return {"matched": True, "duplicate": not first}
