"""Reading a Pulse submission: ``multipart/form-data`` as the SDK sends it, JSON, or a form.

``read_submission`` returns the parsed fields (JSON-valued parts decoded) and the uploaded file's
name and size, or raises ``Rejected`` carrying the 400 or 413 answer. The largest upload is passed
in by the caller (``sandbox.MAX_UPLOAD_BYTES``, which tests lower).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import BodyPartReader, web

from adapters.pulse.sandbox_errors import error_response

JSON = Any

MAX_FIELD_BYTES: Final = 1024 * 1024
MAX_JSON_BODY_BYTES: Final = 8 * 1024 * 1024
JSON_FIELDS: Final = frozenset(
    {"schema", "structuredOutput", "figureProcessing", "extensions", "spreadsheet", "storage"}
)


class Rejected(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def bad_request(message: str, details: JSON = None) -> Rejected:
    return Rejected(error_response(400, "INVALID_REQUEST", message, details))


def _too_large(what: str, limit: int) -> Rejected:
    return Rejected(
        error_response(413, "PAYLOAD_TOO_LARGE", f"{what} exceeds {limit} bytes", {"limit": limit})
    )


@dataclass
class Submitted:
    fields: dict[str, JSON]
    filename: str | None = None
    file_bytes: int | None = None


async def _read_part(part: BodyPartReader, limit: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk():
        size += len(chunk)
        if size > limit:
            raise _too_large(what, limit)
        chunks.append(chunk)
    return part.decode(b"".join(chunks))


async def _drain_part(part: BodyPartReader, limit: int) -> int:
    """Read an uploaded file to its end without keeping it; its size in bytes."""
    size = 0
    while chunk := await part.read_chunk():
        size += len(chunk)
        if size > limit:
            raise _too_large("file", limit)
    return size


def _parse_json_field(name: str, value: JSON) -> JSON:
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"{name} must be valid JSON", {"field": name}) from exc


async def _read_multipart(request: web.Request, max_upload: int) -> Submitted:
    submitted = Submitted(fields={})
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise bad_request("every multipart part must be a named form field")
            if part.name == "file":
                submitted.filename = part.filename or "upload"
                submitted.file_bytes = await _drain_part(part, max_upload)
                continue
            raw = await _read_part(part, MAX_FIELD_BYTES, part.name)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise bad_request(f"{part.name} is not UTF-8", {"field": part.name}) from exc
            is_json = part.headers.get("Content-Type", "").startswith("application/json")
            if part.name in JSON_FIELDS or is_json:
                submitted.fields[part.name] = _parse_json_field(part.name, text)
            else:
                submitted.fields[part.name] = text
    except ValueError as exc:
        raise bad_request("malformed multipart body") from exc
    return submitted


async def read_submission(request: web.Request, *, max_upload: int) -> Submitted:
    """The submitted fields; a ``file`` part over ``max_upload`` bytes gets 413."""
    kind = request.content_type
    if kind == "multipart/form-data":
        return await _read_multipart(request, max_upload)
    if kind == "application/x-www-form-urlencoded":
        form = await request.post()
        fields: dict[str, JSON] = {k: v for k, v in form.items() if isinstance(v, str)}
        for name in JSON_FIELDS & fields.keys():
            fields[name] = _parse_json_field(name, fields[name])
        return Submitted(fields=fields)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large("request body", MAX_JSON_BODY_BYTES) from exc
    if not raw.strip():
        return Submitted(fields={})
    if kind != "application/json":
        raise bad_request("Content-Type must be multipart/form-data or application/json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request("request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    for name in JSON_FIELDS & body.keys():
        body[name] = _parse_json_field(name, body[name])
    return Submitted(fields=body)
