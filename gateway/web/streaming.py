"""Streaming a large-result pointer through to the client, chunk by chunk, never whole."""

from __future__ import annotations

from aiohttp import web

from adapters.base import ResultExpired
from gateway.errors import ResultExpiredError, ServiceError
from gateway.results import PointerFetchFailed, ResultTooLarge, UnsafeURL
from gateway.service import StreamResult
from gateway.web.state import COMPONENTS_KEY


class PointerRefused(ServiceError):
    status = 502
    code = "unsafe_result_url"
    title = "The provider's result pointer was refused"


class PointerTooLarge(ServiceError):
    status = 502
    code = "result_too_large"
    title = "The provider's result is larger than the configured cap"


class PointerFailed(ServiceError):
    status = 502
    code = "result_fetch_failed"
    title = "The provider's result could not be fetched"


async def stream_pointer(
    request: web.Request, answer: StreamResult, job_id: str, tenant: str
) -> web.StreamResponse:
    fetcher = request.app[COMPONENTS_KEY].fetchers[answer.provider]
    response: web.StreamResponse | None = None
    try:
        async with fetcher.open(
            answer.url, provider_host=answer.provider_host, key_header=answer.key_header
        ) as stream:
            response = web.StreamResponse(
                status=200, headers={"Content-Type": stream.content_type or "application/json"}
            )
            if stream.content_length is not None:
                response.content_length = stream.content_length
            await response.prepare(request)
            async for chunk in stream.iter_chunks():
                await response.write(chunk)
            await response.write_eof()
            return response
    except (UnsafeURL, ResultTooLarge, PointerFetchFailed) as error:
        if response is not None and response.prepared:
            # Headers are gone: the only honest signal left is to cut the connection short.
            raise ConnectionResetError(str(error)) from error
        mapped = {UnsafeURL: PointerRefused, ResultTooLarge: PointerTooLarge}
        raise mapped.get(type(error), PointerFailed)(str(error)) from error
    except ResultExpired as error:
        # The provider's copy is gone: the job says so, and with no copy here it is expired.
        await request.app[COMPONENTS_KEY].require_service().result_gone(job_id, tenant)
        raise ResultExpiredError(
            "the provider's large result has expired (HTTP 410); rerun the job to regenerate it"
        ) from error
