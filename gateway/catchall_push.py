"""CatchAll push: jobgate's one organisation webhook, found or created once per process.

CatchAll pushes a job's end to the webhooks named in its ``webhook_ids`` at submit; webhooks are
organisation-level objects made beforehand. jobgate keeps exactly one, identified by its fixed
name (``WEBHOOK_NAME``) and its url, ``{public_base_url}/v1/callbacks/catchall`` with no token in
it: the callback secret travels as the webhook's ``auth`` (``api_key``, header
``X-Jobgate-Callback-Token``), which CatchAll forwards as that header on every delivery. Two
gateways with different public URLs (staging and production on one account) keep a webhook each.

Registration (:func:`ensure_webhook`) lists every page of webhooks and reuses jobgate's; one that
is paused, sends another auth, or was set up with another secret is PATCHed back; none is created.
CatchAll never returns an auth secret in full, so "another secret" is told by a fingerprint kept
in a custom header of the webhook (``FINGERPRINT_HEADER``): a salted scrypt hash, which a reader of
the webhook's settings cannot turn back into the secret even when the secret is a weak one.

Crash safety: the webhook is found again by name and url, never by an id remembered somewhere. A
process that dies after CatchAll created the webhook and before it kept the id leaves a webhook the
next process (or this one's next attempt) finds and reuses: nothing leaks and nothing is created
twice. Two processes registering at the very same moment with no webhook yet can each create one;
both work, later processes reuse the first listed, and the other stays unused (delete it by hand).

:class:`CatchallPush` is the process's registrar: the first catchall submit registers, behind a
lock so that concurrent submits wait for one registration, and the id is kept. When registration
fails the job is submitted without push (and polled, see ``CallbackConfig.expects_push``), the
failure is logged once, and registration is tried again at a submit ``RETRY_AFTER`` seconds later.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Protocol, TypeVar, runtime_checkable

import structlog

from adapters.base import JSON, AdapterError, NotFound, RequestRejected
from adapters.catchall.adapter import Webhook, WebhookPage
from gateway.callbacks import CALLBACK_PATH, TOKEN_HEADER, webhook_room, with_webhook

log = structlog.get_logger("jobgate.catchall_push")

_T = TypeVar("_T")

PROVIDER: Final = "catchall"
WEBHOOK_NAME: Final = "jobgate"
FINGERPRINT_HEADER: Final = "X-Jobgate-Auth-Fingerprint"
MAX_PAGES: Final = 50
"""Pages of webhooks read at most (5,000 at 100 a page): a listing that never ends is an error."""
RETRY_AFTER: Final = 300.0
"""Seconds after a failed registration before a submit tries again (the submits between go
without push rather than each waiting for a failing provider)."""
REGISTER_TIMEOUT: Final = 30.0
"""Seconds one registration may take in all: it runs inside a submit's idempotency lease."""

_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_FINGERPRINT_PREFIX: Final = "scrypt1"


@runtime_checkable
class WebhookApi(Protocol):
    """The adapter's webhook calls (``CatchAllAdapter``): one upstream call each."""

    async def list_webhooks(self, *, page: int = 1) -> WebhookPage: ...

    async def create_webhook(self, spec: Mapping[str, JSON]) -> Webhook: ...

    async def update_webhook(self, webhook_id: str, changes: Mapping[str, JSON]) -> Webhook: ...


# --------------------------------------------------------------------------------------------------
# Pure parts


def webhook_url(public_base_url: str) -> str:
    """Where CatchAll delivers: the callback path, with no token (the token is the auth)."""
    return public_base_url.rstrip("/") + CALLBACK_PATH.format(provider=PROVIDER)


def fingerprint(secret: str, salt: bytes) -> str:
    """``scrypt1$<salt>$<hash>``: names the secret without revealing it (CPU-bound, ~50 ms)."""
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=24
    )
    encode = base64.urlsafe_b64encode
    return f"{_FINGERPRINT_PREFIX}${encode(salt).decode()}${encode(digest).decode()}"


def fingerprint_matches(secret: str, value: str | None) -> bool:
    """Whether ``value`` is a :func:`fingerprint` of ``secret`` (False for anything malformed)."""
    if value is None:
        return False
    prefix, _, rest = value.partition("$")
    salt_text, _, _ = rest.partition("$")
    if prefix != _FINGERPRINT_PREFIX or not salt_text:
        return False
    try:
        salt = base64.urlsafe_b64decode(salt_text.encode())
    except ValueError:
        return False
    return hmac.compare_digest(fingerprint(secret, salt).encode(), value.encode())


def webhook_spec(url: str, secret: str, proof: str) -> dict[str, JSON]:
    """The webhook jobgate wants: the create body, and the PATCH that puts a drifted one right."""
    return {
        "name": WEBHOOK_NAME,
        "url": url,
        "type": "generic",
        "delivery_mode": "full",
        "method": "POST",
        "headers": {FINGERPRINT_HEADER: proof},
        "auth": {"type": "api_key", "header": TOKEN_HEADER, "value": secret},
    }


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def choose(webhooks: Iterable[Webhook], url: str) -> Webhook | None:
    """jobgate's webhook for ``url`` among ``webhooks``: the first active one, else the first."""
    mine = [w for w in webhooks if w.name == WEBHOOK_NAME and _same_url(w.url, url)]
    return next((w for w in mine if w.is_active), mine[0] if mine else None)


def drifted(webhook: Webhook) -> bool:
    """Whether ``webhook`` would not deliver as jobgate needs, whatever its secret."""
    return (
        not webhook.is_active
        or webhook.auth_type != "api_key"
        or (webhook.auth_header or "").lower() != TOKEN_HEADER.lower()
        or (webhook.method or "POST").upper() != "POST"
        or (webhook.delivery_mode or "full") != "full"
    )


def names_our_webhook(message: str, ours: str, theirs: Iterable[str]) -> bool:
    """Whether a refused submit's ``message`` is about jobgate's webhook: it names our id, or it
    speaks of a webhook and names none of the client's (CatchAll's wording is not documented)."""
    if ours in message:
        return True
    return "webhook" in message.lower() and not any(t and t in message for t in theirs)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


# --------------------------------------------------------------------------------------------------
# Find or create


async def ensure_webhook(api: WebhookApi, url: str, secret: str) -> str:
    """The id of jobgate's webhook for ``url``, created or put right so that it sends ``secret``.

    Idempotent: called again (by this process or the next), it finds the same webhook.
    """
    found: list[Webhook] = []
    page = 1
    while True:
        listing = await api.list_webhooks(page=page)
        found.extend(listing.webhooks)
        if page >= listing.total_pages or not listing.webhooks:
            break
        if page >= MAX_PAGES:
            raise RuntimeError(f"catchall lists more than {MAX_PAGES} pages of webhooks")
        page += 1
    mine = choose(found, url)
    if mine is None:
        proof = await asyncio.to_thread(fingerprint, secret, os.urandom(16))
        created = await api.create_webhook(webhook_spec(url, secret, proof))
        log.info("catchall_push.webhook_created", webhook_id=created.id, url=url)
        return created.id
    current = _header(mine.headers, FINGERPRINT_HEADER)
    same_secret = await asyncio.to_thread(fingerprint_matches, secret, current)
    if drifted(mine) or not same_secret:
        proof = await asyncio.to_thread(fingerprint, secret, os.urandom(16))
        await api.update_webhook(mine.id, {**webhook_spec(url, secret, proof), "is_active": True})
        log.info(
            "catchall_push.webhook_updated",
            webhook_id=mine.id,
            url=url,
            secret_changed=not same_secret,
        )
    return mine.id


# --------------------------------------------------------------------------------------------------
# The process's registrar


class CatchallPush:
    """Adds jobgate's webhook to catchall submit bodies, registering it at the first need."""

    def __init__(
        self,
        api: WebhookApi | None,
        public_base_url: str,
        secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_after: float = RETRY_AFTER,
        timeout: float = REGISTER_TIMEOUT,
    ) -> None:
        self.api = api
        self.url = webhook_url(public_base_url)
        self.secret = secret
        self.clock = clock
        self.retry_after = retry_after
        self.timeout = timeout
        self.webhook_id: str | None = None
        self._lock = asyncio.Lock()
        self._failed_at: float | None = None
        self.registrations = 0
        """Registrations attempted (each one lists webhooks upstream): for tests and metrics."""

    async def with_webhook(self, request: Mapping[str, JSON]) -> Mapping[str, JSON]:
        """``request`` with jobgate's webhook in ``webhook_ids``, or unchanged when there is no
        room (the client names five) or no webhook (registration failed)."""
        if not webhook_room(PROVIDER, request):
            return request  # nothing to register for
        return with_webhook(PROVIDER, request, await self.ensure())

    async def submit(
        self, request: Mapping[str, JSON], send: Callable[[Mapping[str, JSON]], Awaitable[_T]]
    ) -> tuple[_T, bool]:
        """``send`` the client's ``request`` with jobgate's webhook added where it can be; say
        whether the body that was sent carried it (the job then expects a push).

        A webhook deleted upstream since it was registered makes the submit fail (400 in the
        sandbox, as for an unknown dataset; 404 is taken too), which creates no job: the id is
        forgotten and the request sent once more, with a webhook registered anew (or none). Any
        other refusal, one about the client's own ids included, is the client's to see.
        """
        body = await self.with_webhook(request)
        added = self.webhook_id if body is not request else None
        try:
            return await send(body), added is not None
        except (RequestRejected, NotFound) as error:
            own = request.get("webhook_ids")
            theirs = [i for i in own if isinstance(i, str)] if isinstance(own, list) else []
            if added is None or not names_our_webhook(error.message, added, theirs):
                raise
            log.warning("catchall_push.webhook_gone", webhook_id=added, status=error.status)
            self.forget(added)
            again = await self.with_webhook(request)
            return await send(again), again is not request

    def forget(self, webhook_id: str) -> None:
        """Drop ``webhook_id`` (gone upstream): the next submit registers again."""
        if self.webhook_id == webhook_id:
            self.webhook_id = None

    async def ensure(self) -> str | None:
        """The webhook's id, registering it first if this process has not; ``None`` when
        registration failed (now or less than ``retry_after`` seconds ago)."""
        if self.webhook_id is not None:
            return self.webhook_id
        async with self._lock:
            if self.webhook_id is not None:
                return self.webhook_id
            if self._failed_at is not None and self.clock() - self._failed_at < self.retry_after:
                return None
            if self.api is None:
                return None
            self.registrations += 1
            try:
                async with asyncio.timeout(self.timeout):
                    webhook_id = await ensure_webhook(self.api, self.url, self.secret)
            except (AdapterError, TimeoutError, RuntimeError) as exc:
                first = self._failed_at is None
                self._failed_at = self.clock()
                if first:
                    # Once per run of failures; the adapter has masked every secret in the text.
                    log.warning(
                        "catchall_push.registration_failed",
                        url=self.url,
                        error=getattr(exc, "code", type(exc).__name__),
                        detail=str(exc)[:300],
                        retry_after=self.retry_after,
                    )
                return None
            if self._failed_at is not None:
                log.info("catchall_push.registration_recovered", webhook_id=webhook_id)
            self._failed_at = None
            # Kept until a submit finds it gone (see ``submit``).
            self.webhook_id = webhook_id
            return webhook_id


def registrar(adapter: object, public_base_url: str, secret: str) -> CatchallPush:
    """A registrar over ``adapter`` when it makes webhook calls; else one that never pushes."""
    api = adapter if isinstance(adapter, WebhookApi) else None
    return CatchallPush(api, public_base_url, secret)


__all__ = [
    "FINGERPRINT_HEADER",
    "PROVIDER",
    "WEBHOOK_NAME",
    "CatchallPush",
    "WebhookApi",
    "choose",
    "drifted",
    "ensure_webhook",
    "fingerprint",
    "fingerprint_matches",
    "names_our_webhook",
    "registrar",
    "webhook_spec",
    "webhook_url",
]
