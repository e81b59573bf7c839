"""Inbound provider callbacks: a push that says "look at this job now", never the truth itself.

A provider that pushes (``capabilities.push``) posts to ``POST /v1/callbacks/{provider}``. Each
delivery is authenticated with the provider's own secret (``providers.NAME.callback_secret``), given
as ``?token=`` or in the ``X-Jobgate-Callback-Token`` header. The body is parsed only far enough to
name the upstream job; the job is then found by ``(provider, upstream_id)`` and polled at once, so
the upstream status call, not the callback body, decides the canonical state.

Bodies understood:

- ``extract``: what ``callbackUrl`` receives, ``{jobId, status, result}``
  (:meth:`ExtractAdapter.parse_callback`).
- ``catchall``: what jobgate's CatchAll webhook receives (``gateway/catchall_push.py``), the SDK's
  ``WebhookPayload`` ``{latest_job_id, records_count, updated_at, records, ...}`` with no status;
  or a notification with ``job_id`` and ``status``, at the top level or under ``data``
  (``{"event": "job.completed", "data": {"job_id": ..., "status": ...}}``), where without a
  ``status`` the last dotted part of ``event`` stands in for it.
- ``pulse``: a Standard Webhooks event sent through Svix, ``{"type": "job.completed", "data":
  {"job_id": ..., "status": ...}}``; the id may be ``job_id``, ``jobId`` or ``id``, at the top level
  or under ``data``. Pulse's deliveries carry no token: they are authenticated by their signature
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``, see ``gateway/signatures.py``)
  under ``providers.pulse.callback_secret``, a ``whsec_`` secret, and a ``webhook-id`` this process
  saw within the signature's tolerance is answered as a duplicate without a second refresh (a
  replay sent to another replica costs one more status poll there, nothing else).

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
from gateway.signatures import TOLERANCE, VerificationError, parse_secret, verify
from gateway.signatures import generate_secret as generate_signing_secret
from gateway.states import FINISHED, JobState

if TYPE_CHECKING:
    from gateway.settings import Settings

log = structlog.get_logger("jobgate.callbacks")

TOKEN_PARAM: Final = "token"
TOKEN_HEADER: Final = "X-Jobgate-Callback-Token"
CALLBACK_PATH: Final = "/v1/callbacks/{provider}"

SUBMIT_FIELDS: Final[Mapping[str, str]] = {"extract": "callbackUrl"}
"""Providers whose submit body says where to push (a URL per job), and the field that says it."""

WEBHOOK_FIELDS: Final[Mapping[str, str]] = {"catchall": "webhook_ids"}
"""Providers that push to webhooks registered with them beforehand, and the submit field listing
a job's webhooks: jobgate adds its own (``gateway/catchall_push.py``) next to the client's."""
MAX_JOB_WEBHOOKS: Final = 5
"""The most ``webhook_ids`` a CatchAll job takes."""

SIGNED: Final = frozenset({"pulse"})
"""Providers whose pushes are authenticated by a Standard Webhooks signature, not by a token."""
REPLAY_TTL: Final = 2.0 * TOLERANCE
"""How long a ``webhook-id`` is remembered: a delivery stamped ``t`` verifies until ``t +
TOLERANCE`` and may first arrive at ``t - TOLERANCE``, so twice the tolerance covers every replay
that would still verify."""

DEDUPE_TTL: Final = 60.0
DEDUPE_SIZE: Final = 10_000
_LOGGED_ID_CHARS: Final = 200


class CallbackUnauthorized(ServiceError):
    status = 401
    code = "callback_unauthorized"
    title = "The callback token is missing or wrong"


class SignatureUnauthorized(CallbackUnauthorized):
    """A signing provider's delivery whose Standard Webhooks headers do not hold; ``reason`` is
    ``missing_headers``, ``invalid_timestamp`` or ``invalid_signature``."""

    title = "The callback signature is missing, wrong or stale"


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
    # ``latest_job_id``: a WebhookPayload, which names a plain job (or a monitor's latest run) so.
    job_id = _first_str(places, "job_id", "jobId", "latest_job_id")
    if job_id is None:
        raise InvalidCallback(
            "catchall callback: missing field latest_job_id or job_id (or data.job_id)"
        )
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


def parse_pulse(body: JSON) -> tuple[str, str | None]:
    if not isinstance(body, dict):
        raise InvalidCallback("pulse callback: expected a JSON object")
    data = body.get("data")
    places = (data, body) if isinstance(data, dict) else (body,)
    job_id = _first_str(places, "job_id", "jobId", "id")
    if job_id is None:
        raise InvalidCallback("pulse callback: missing field job_id (or data.job_id)")
    status = _first_str(places, "status")
    if status is None:
        # "job.cancelled" names the status Pulse itself spells "canceled"; only a hint anyway.
        event = _first_str((body,), "type", "event")
        status = event.rsplit(".", 1)[-1] if event is not None else None
    return job_id, status


PARSERS: Final[Mapping[str, Callable[[JSON], tuple[str, str | None]]]] = {
    "extract": parse_extract,
    "catchall": parse_catchall,
    "pulse": parse_pulse,
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
    this process's life (the sandbox learns it from the ``callbackUrl`` it is given, or for a
    signing provider from ``SandboxSettings.pulse_webhooks``). A signing provider's secret is a
    ``whsec_`` secret: the settings refuse any other as they load.
    """
    found: dict[str, str] = {}
    for name in pushing:
        configured = settings.providers[name].callback_secret
        if configured is not None and configured.get_secret_value():
            found[name] = configured.get_secret_value()
        elif settings.sandbox.embedded:
            made = generate_signing_secret() if name in SIGNED else secrets.token_urlsafe(24)
            found[name] = _SANDBOX_SECRETS.setdefault(name, made)
    return found


def signed_endpoints(settings: Settings) -> list[tuple[str, str]]:
    """``(url, secret)`` for each enabled signing provider that pushes, when jobgate knows its own
    public URL: what an operator enters in the provider's webhook portal, and what the embedded
    sandbox is given so that ``make run`` receives those pushes untouched."""
    from adapters.registry import PROVIDERS  # the registry imports every adapter: import late

    base = settings.server.public_base_url
    if base is None:
        return []
    pushing = [
        name
        for name in sorted(SIGNED)
        if name in settings.providers
        and settings.providers[name].enabled
        and PROVIDERS[name].adapter.capabilities.push
    ]
    found = callback_secrets(settings, pushing)
    return [(endpoint_url(base, name), found[name]) for name in pushing if name in found]


def endpoint_url(public_base_url: str, provider: str) -> str:
    """The callback URL without a token, for providers that sign their deliveries instead."""
    return public_base_url.rstrip("/") + CALLBACK_PATH.format(provider=provider)


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


def webhook_room(provider: str, request: Mapping[str, JSON]) -> bool:
    """Whether ``request`` leaves room for jobgate's webhook next to the client's own ids.

    Not when the client names ``MAX_JOB_WEBHOOKS`` already (theirs are never dropped), nor when
    its field is not a list (the provider refuses that body anyway).
    """
    field = WEBHOOK_FIELDS.get(provider)
    if field is None:
        return False
    own = request.get(field)
    return own is None or (isinstance(own, list) and len(own) < MAX_JOB_WEBHOOKS)


def with_webhook(
    provider: str, request: Mapping[str, JSON], webhook_id: str | None
) -> Mapping[str, JSON]:
    """``request`` with ``webhook_id`` added to the client's webhook ids, where there is room."""
    field = WEBHOOK_FIELDS.get(provider)
    if webhook_id is None or field is None or not webhook_room(provider, request):
        return request
    own = request.get(field)
    ids: list[JSON] = list(own) if isinstance(own, list) else []
    if webhook_id in ids:
        return request
    return {**request, field: [*ids, webhook_id]}


def token_matches(given: str | None, secret: str) -> bool:
    if given is None:
        return False
    try:
        offered = given.encode()
    except UnicodeEncodeError:
        return False  # header bytes that are not UTF-8 reach us as surrogates: never the secret
    # Constant time in the secret's content: a timing probe learns nothing about its prefix.
    return hmac.compare_digest(offered, secret.encode())


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
        """Whether the provider will push this job's end to jobgate.

        A signing provider (pulse) pushes every job of the organisation to the endpoint its
        portal names, adopted ones too: its jobs expect a push whenever its signing secret is
        configured. The others push only the jobs whose submit asked them to (``job.push_asked``:
        extract's ``callbackUrl``, catchall's webhook in ``webhook_ids``), and only while
        callbacks are still configured here. A job whose client named its own target, or five
        webhooks of its own, or that was submitted while catchall's webhook could not be
        registered, did not ask, and is polled normally.
        """
        if job.provider in SIGNED:
            return job.provider in self.secrets
        return job.push_asked and self.url(job.provider) is not None


class CallbackInbox:
    def __init__(
        self,
        config: CallbackConfig,
        store: UpstreamLookup,
        refresh: Callable[[str, str, bool], Awaitable[object]],
        *,
        deduper: Deduper | None = None,
        replays: Deduper | None = None,
        wall_clock: Callable[[], float] = time.time,
        status_tables: Mapping[str, Mapping[str, JobState]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.refresh = refresh
        """``refresh(job_id, tenant, final)``: poll the job now; ``final`` when the callback says
        the job ended (the poll that follows then does not fall back to the push safety net if
        the provider's status answer lags behind its own callback)."""
        self.status_tables = dict(status_tables or {})
        # "is None", not "or": an empty Deduper is falsy, and an injected one must be kept.
        self.deduper = Deduper() if deduper is None else deduper
        self.replays = Deduper(ttl=REPLAY_TTL) if replays is None else replays
        """``webhook-id``s of signed deliveries already accepted: a replay is a duplicate."""
        self.wall_clock = wall_clock
        """Unix seconds, for ``webhook-timestamp``: the sender's clock is a wall clock too."""
        self.refreshes = 0

    def says_ended(self, notice: Notice) -> bool:
        """Whether ``notice`` claims its job ended: a status the provider's table maps to a
        finished state, or none at all (CatchAll's webhook fires only at the end). A status the
        table does not know is taken as an end too: the poll that follows decides either way."""
        if notice.status is None:
            return True
        state = self.status_tables.get(notice.provider, {}).get(notice.status)
        return state is None or state in FINISHED

    def signs(self, provider: str) -> bool:
        """Whether ``provider``'s deliveries are authenticated by signature (:meth:`verify`)
        rather than by token (:meth:`authenticate`)."""
        return provider in SIGNED

    def check_enabled(self, provider: str) -> None:
        """Raise :class:`CallbacksNotEnabled` unless ``provider`` takes callbacks here."""
        self._secret(provider)

    def _secret(self, provider: str) -> str:
        secret = self.config.secrets.get(provider)
        if secret is None or provider not in PARSERS:
            raise CallbacksNotEnabled(
                f"callbacks are not enabled for {provider!r} (it does not push, or has no "
                "callback_secret)"
            )
        return secret

    def verify(self, provider: str, headers: Mapping[str, str], raw: bytes) -> str:
        """The ``webhook-id`` of a signed delivery of ``provider``; raises unless its signature,
        over the ``raw`` body exactly as received, and its timestamp hold."""
        secret = self._secret(provider)
        try:
            key = parse_secret(secret)
        except ValueError:
            # The settings refuse it as they load; only a hand-built configuration gets here.
            raise CallbacksNotEnabled(
                f"callbacks are not enabled for {provider!r} (its callback_secret is not a "
                "whsec_ secret)"
            ) from None
        try:
            return verify(key, headers, raw, self.wall_clock())
        except VerificationError as exc:
            # The reason names headers and seconds only: never a signature, never the secret.
            log.warning("callback.unauthorized", provider=provider, reason=exc.reason)
            raise SignatureUnauthorized(
                f"{provider} callbacks must carry a valid Standard Webhooks signature: {exc}",
                reason=exc.reason,
            ) from None

    def authenticate(self, provider: str, token: str | None) -> None:
        """Raise unless ``provider`` takes callbacks and ``token`` is its secret."""
        secret = self._secret(provider)
        if self.signs(provider):
            # Its secret signs; taken as a token it would travel in URLs and logs.
            raise SignatureUnauthorized(
                f"{provider} callbacks are authenticated by their Standard Webhooks signature, "
                "not by a token",
                reason="missing_headers",
            )
        if not token_matches(token, secret):
            log.warning("callback.unauthorized", provider=provider, token_given=token is not None)
            raise CallbackUnauthorized(
                # Not "?token= or ...": the problem scrubber would mask the word after the "=".
                f"give the callback token as the {TOKEN_PARAM} query parameter or in the "
                f"{TOKEN_HEADER} header"
            )

    async def receive(
        self, provider: str, body: JSON, *, message_id: str | None = None
    ) -> dict[str, bool]:
        """Ask for a poll of the job ``body`` names; the answer says only whether one matched.

        ``message_id`` is a verified delivery's ``webhook-id``: a replay of it is a duplicate, even
        when its body would not be one (any time within the signature's tolerance).
        """
        notice = parse(provider, body)
        replay_key = None if message_id is None else f"{provider}\x00{message_id}"
        fresh = replay_key is None or self.replays.first(replay_key)
        first = fresh and self.deduper.first(notice.key)
        handled = False
        try:
            # Any tenant's: the provider knows nothing of tenants.
            job = await self.store.get_by_upstream(provider, notice.upstream_id, None)
            if job is not None and first:
                await self.refresh(job.id, job.tenant, self.says_ended(notice))
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
                if replay_key is not None:
                    self.replays.forget(replay_key)
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
