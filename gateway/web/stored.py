"""Serving results from the vault: a file by ``sendfile`` with its SHA-256 as a strong ETag,
``Range`` (206) and ``If-None-Match`` (304); small stored answers as bytes; and a capture still
streaming, followed as it is written."""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from gateway.blobs import BlobError
from gateway.service import FollowResult, StoredBytes, StoredFile
from gateway.web.problems import BadInput

SOURCE_HEADER = "X-Jobgate-Result-Source"


def _etag(value: str) -> str:
    return f'"{value}"'


def _not_modified(request: web.Request, etag: str) -> bool:
    """Whether the client's ``If-None-Match`` names this ETag (weak comparison, RFC 9110)."""
    tags = request.if_none_match
    if not tags:
        return False
    return any(tag.value in ("*", etag) for tag in tags)


def _unchanged(etag: str) -> web.Response:
    return web.Response(status=304, headers={hdrs.ETAG: _etag(etag), SOURCE_HEADER: "jobgate"})


class _StoredFileResponse(web.FileResponse):
    """aiohttp's file response (``sendfile``, ``Range``) with the copy's SHA-256 as its ETag: the
    stock one derives a weak-ish tag from the file's mtime and size, which changes from one replica
    to another for the same bytes."""

    def __init__(self, answer: StoredFile, decided: web.Request) -> None:
        super().__init__(
            answer.path,
            headers={hdrs.CONTENT_TYPE: answer.content_type, SOURCE_HEADER: "jobgate"},
        )
        self._sha256 = answer.sha256
        self._decided = decided

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # aiohttp prepares with the request as it came; the ranges are read from the one whose
        # conditions were already decided on the copy's own tag (_on_our_tag).
        return await super().prepare(self._decided)

    @property
    def etag(self) -> None:
        return None

    @etag.setter
    def etag(self, value: object) -> None:
        # Whatever aiohttp computes, the header carries the content's own hash.
        self._headers[hdrs.ETAG] = _etag(self._sha256)


def _on_our_tag(request: web.Request, sha256: str) -> web.Request:
    """The request with ``If-Match`` and an entity-tag ``If-Range`` decided against the copy's own
    ETag, and taken out: aiohttp would compare them with its mtime-based tag (so ``If-Match``
    always failed) and reads ``If-Range`` only as a date (so a resumed download could splice two
    different copies together, say before and after a ``continue``)."""
    headers = request.headers.copy()
    if hdrs.IF_MATCH in headers:
        tags = request.if_match or ()
        # If-Match compares strongly (RFC 9110 13.1.1): a weak tag never matches.
        if not any(tag.value == "*" or (tag.value == sha256 and not tag.is_weak) for tag in tags):
            raise BadInput(
                "precondition_failed",
                "If-Match names no ETag of the current copy: the result changed",
                status=412,
            )
        del headers[hdrs.IF_MATCH]
    if_range = headers.get(hdrs.IF_RANGE, "").strip()
    if if_range.startswith(('"', "W/")):
        # An entity tag: the range is served only if it names this copy (strongly), else the whole.
        if if_range != _etag(sha256):
            headers.popall(hdrs.RANGE, None)
        del headers[hdrs.IF_RANGE]
    return request.clone(headers=headers)


async def serve_file(request: web.Request, answer: StoredFile) -> web.StreamResponse:
    decided = _on_our_tag(request, answer.sha256)  # If-Match first (RFC 9110 13.2.2), then:
    if _not_modified(request, answer.sha256):
        return _unchanged(answer.sha256)
    response = _StoredFileResponse(answer, decided)
    response.headers[hdrs.ETAG] = _etag(answer.sha256)
    return response


def serve_bytes(request: web.Request, answer: StoredBytes) -> web.Response:
    if _not_modified(request, answer.etag):
        return _unchanged(answer.etag)
    return web.Response(
        body=answer.body,
        content_type="application/json",
        headers={hdrs.ETAG: _etag(answer.etag), SOURCE_HEADER: "jobgate"},
    )


async def follow_capture(request: web.Request, answer: FollowResult) -> web.StreamResponse:
    """Stream a capture as it is written: the provider's bytes reach this reader and the vault
    from one fetch."""
    following = answer.following
    response = web.StreamResponse(
        status=200,
        headers={hdrs.CONTENT_TYPE: following.content_type, SOURCE_HEADER: "jobgate"},
    )
    if following.content_length is not None:
        response.content_length = following.content_length
    await response.prepare(request)
    try:
        async for chunk in following.writer.follow():
            await response.write(chunk)
    except BlobError as error:
        # Headers are gone: the only honest signal left is to cut the connection short.
        raise ConnectionResetError(str(error)) from error
    await response.write_eof()
    return response
