"""``/v1/keys`` (an ``admin`` key manages its own tenant's keys) and ``/v1/stream-tokens``."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from gateway.errors import KeyNotFound
from gateway.web.handlers import json_response, parse, read_json
from gateway.web.models import KeyCreateBody
from gateway.web.state import COMPONENTS_KEY, principal_of


async def create_key(request: web.Request) -> web.Response:
    body = parse(KeyCreateBody, await read_json(request))
    access = request.app[COMPONENTS_KEY].require_access()
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    key, plaintext = await access.create(
        principal_of(request).tenant, body.scopes, name=body.name, expires_in=expires
    )
    return json_response(
        {**key.public(), "key": plaintext},
        status=201,
        headers={"Location": f"/v1/keys/{key.id}", "Cache-Control": "no-store"},
    )


async def list_keys(request: web.Request) -> web.Response:
    access = request.app[COMPONENTS_KEY].require_access()
    keys = await access.keys(principal_of(request).tenant)
    return json_response({"keys": [key.public() for key in keys]})


async def revoke_key(request: web.Request) -> web.Response:
    access = request.app[COMPONENTS_KEY].require_access()
    key_id = request.match_info["key_id"]
    if len(key_id) > 64:
        raise KeyNotFound(f"no usable key with the id {key_id[:64]}...")
    key = await access.revoke(key_id, principal_of(request).tenant)
    return json_response(key.public())


async def create_stream_token(request: web.Request) -> web.Response:
    access = request.app[COMPONENTS_KEY].require_access()
    token = access.stream_token(principal_of(request))
    body = {
        "token": token.token,
        "expires_at": token.expires_at.isoformat().replace("+00:00", "Z"),
        "tenant": token.tenant,
    }
    return json_response(body, status=201, headers={"Cache-Control": "no-store"})
