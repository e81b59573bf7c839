"""Serving the Pulse sandbox's large results: the ``is_url`` pointer and the two downloads.

A ``large`` job's result is about 6 MB of JSON, generated page by page and streamed in chunks with
a ``Content-Length`` computed up front. ``large_pointer`` gives either a presigned URL (signed with
``PulseJobs.sign``; reusable until ``X-Amz-Expires`` has passed, like S3) or the proxy URL
(single-use, with the API key, until ``PROXY_TTL_SECONDS`` has passed).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from functools import cache
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from aiohttp import web

from adapters.pulse.sandbox_errors import auth_error, error_response, not_found, s3_error
from adapters.pulse.sandbox_jobs import (
    JOBS_KEY,
    LARGE_PAGES,
    PRESIGNED_TTL_SECONDS,
    PROXY_TTL_SECONDS,
    Pointer,
    PulseJob,
    PulseJobs,
    extraction_meta,
    lookup,
    plan_info,
)
from adapters.simulator import SETTINGS_KEY, self_url

JSON = Any

_LARGE_LINE: Final = (
    "| Row | Account | Description of the line item as printed | Amount |\n"
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit; sed do eiusmod tempor.\n"
)
_LARGE_PAGE_BODY: Final = _LARGE_LINE * 340


def _large_page(number: int) -> bytes:
    """One page of the large markdown, JSON-escaped without its quotes."""
    text = f"## Page {number}\n\n{_LARGE_PAGE_BODY}\n"
    return orjson.dumps(text)[1:-1]


def _large_chunks(job: PulseJob) -> Iterator[bytes]:
    yield b'{"markdown":"'
    for number in range(1, LARGE_PAGES + 1):
        yield _large_page(number)
    yield b'",' + orjson.dumps(extraction_meta(job))[1:]


@cache
def _large_pages_length() -> int:
    return sum(len(_large_page(n)) for n in range(1, LARGE_PAGES + 1))


def _large_length(job: PulseJob) -> int:
    head = len(b'{"markdown":"')
    # The closing quote and comma replace the metadata object's opening brace: one byte more.
    return head + _large_pages_length() + 1 + len(orjson.dumps(extraction_meta(job)))


async def _stream_large(request: web.Request, job: PulseJob) -> web.StreamResponse:
    store = request.app[JOBS_KEY]
    store.served += 1
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = _large_length(job)
    await response.prepare(request)
    for number, chunk in enumerate(_large_chunks(job)):
        if number == LARGE_PAGES // 2 and store.stall is not None:
            store.stalled.set()
            await store.stall.wait()
        await response.write(chunk)
    await response.write_eof()
    return response


def _presigned_url(request: web.Request, store: PulseJobs, job: PulseJob) -> str:
    amz_date = job.wall(job.finished_at()).strftime("%Y%m%dT%H%M%SZ")
    expires = str(PRESIGNED_TTL_SECONDS)
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"SANDBOXKEY/{amz_date[:8]}/us-east-1/s3/aws4_request",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": expires,
        "X-Amz-SignedHeaders": "host",
        "X-Amz-Signature": store.sign(job.job_id, amz_date, expires),
    }
    return self_url(request, f"presigned/{job.job_id}") + "?" + urlencode(query)


def large_pointer(request: web.Request, store: PulseJobs, job: PulseJob) -> dict[str, JSON]:
    if job.pointer is Pointer.PROXY:
        url = self_url(request, f"large_results/{job.job_id}")
    else:
        url = _presigned_url(request, store, job)
    return {
        "is_url": True,
        "url": url,
        "extraction_id": job.extraction_id,
        "page_count": job.page_count,
        "plan_info": plan_info(job.page_count),
    }


async def large_result(request: web.Request) -> web.StreamResponse:
    if (denied := auth_error(request)) is not None:
        return denied
    job, job_id = lookup(request)
    if job is None:
        return not_found(job_id)
    settings = request.app[SETTINGS_KEY]
    now = settings.clock()
    status, _ = job.status_at(now, settings)
    if not job.large or status != "completed":
        return error_response(
            404, "NOT_FOUND", f"No large result for job {job_id}", {"status": status}
        )
    if now >= job.finished_at() + settings.scaled(PROXY_TTL_SECONDS):
        return error_response(410, "GONE", "The large-result URL has expired", {"job_id": job_id})
    if job.downloads > 0:
        return error_response(
            410, "GONE", "The large result was already downloaded (single-use)", {"job_id": job_id}
        )
    job.downloads += 1
    return await _stream_large(request, job)


async def presigned(request: web.Request) -> web.StreamResponse:
    """The presigned S3 stand-in: no auth header, only the signature in the query."""
    job_id = request.match_info["job_id"]
    query = request.query
    amz_date = query.get("X-Amz-Date", "")
    expires = query.get("X-Amz-Expires", "")
    signature = query.get("X-Amz-Signature", "")
    if not (amz_date and expires and signature):
        return s3_error(403, "AccessDenied", "Query-string authentication parameters are missing")
    store = request.app[JOBS_KEY]
    expected = store.sign(job_id, amz_date, expires)
    if not hmac.compare_digest(expected, signature):
        return s3_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    job = store.get(job_id)
    if job is None or not job.large:
        return s3_error(404, "NoSuchKey", "The specified key does not exist.")
    settings = request.app[SETTINGS_KEY]
    if not expires.isdigit() or settings.clock() >= job.finished_at() + settings.scaled(
        int(expires)
    ):
        return s3_error(403, "AccessDenied", "Request has expired")
    return await _stream_large(request, job)
