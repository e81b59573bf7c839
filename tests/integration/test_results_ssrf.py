"""The result fetcher over real sockets on 127.0.0.1: refusals happen before any connection, and
what is allowed streams through with the key only where it belongs.

Nothing here contacts any host but 127.0.0.1: names go through a fake resolver that never asks DNS,
forbidden targets are refused before a request starts (the trace proves it), and the only system
resolver test uses numeric forms that ``getaddrinfo`` parses without DNS.
"""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from adapters.base import ResultExpired
from gateway.results import (
    STANDARD_PORTS,
    FetchPolicy,
    FetchTimeout,
    HostResolver,
    PointerFetchFailed,
    ResultFetcher,
    ResultTooLarge,
    UnsafeURL,
    system_resolver,
)
from gateway.web.state import COMPONENTS_KEY
from tests.conftest import Serve
from tests.integration.conftest import StackFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

KEY = ("x-api-key", "sk_canary_do_not_leak")
LOOPBACK = (IPv4Network("127.0.0.1/32"),)
BLOB = random.Random(7).randbytes(5 * 1024 * 1024 + 123)


@dataclass
class FakeDNS:
    """Answers from a fixed table and records every question; unknown names fail like NXDOMAIN."""

    table: dict[str, list[str]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "not in the test table")
        return self.table[host]


@dataclass
class Probe:
    """What the fetcher's session did: every request it started and every connection it opened."""

    requests: list[URL] = field(default_factory=list)
    connections: int = 0

    def trace(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def on_request(
            _s: aiohttp.ClientSession, _c: SimpleNamespace, p: aiohttp.TraceRequestStartParams
        ) -> None:
            self.requests.append(p.url)

        async def on_connection(
            _s: aiohttp.ClientSession,
            _c: SimpleNamespace,
            _p: aiohttp.TraceConnectionCreateStartParams,
        ) -> None:
            self.connections += 1

        config.on_request_start.append(on_request)
        config.on_connection_create_start.append(on_connection)
        return config


@dataclass
class Upstream:
    """A small app on 127.0.0.1 that records every request it gets (path and headers)."""

    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    base: URL = field(default_factory=URL)

    @property
    def port(self) -> int:
        assert self.base.port is not None
        return self.base.port

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    def keys(self) -> list[str | None]:
        return [headers.get(KEY[0]) for _, headers in self.seen]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StartUpstream = Callable[[dict[str, Handler]], Awaitable[Upstream]]
MakeFetcher = Callable[..., tuple[ResultFetcher, Probe]]


@pytest.fixture
def served_ports() -> list[int]:
    """The ports of this test's upstreams: the fetchers allow them unless told otherwise."""
    return []


@pytest.fixture
def start_upstream(serve: Serve, served_ports: list[int]) -> StartUpstream:
    async def start(routes: dict[str, Handler]) -> Upstream:
        upstream = Upstream()

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            upstream.seen.append((request.path, {k.lower(): v for k, v in request.headers.items()}))
            return await handler(request)

        app = web.Application(middlewares=[record])
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        upstream.base = URL(await serve(app))
        served_ports.append(upstream.port)
        return upstream

    return start


@pytest.fixture
async def make_fetcher(served_ports: list[int]) -> AsyncIterator[MakeFetcher]:
    fetchers: list[ResultFetcher] = []

    def make(
        hosts: Sequence[str] = ("127.0.0.1",),
        networks: tuple[IPv4Network | IPv6Network, ...] = LOOPBACK,
        resolver: HostResolver | None = None,
        ports: Sequence[int] | None = None,
        **limits: int,
    ) -> tuple[ResultFetcher, Probe]:
        """``ports`` besides 80 and 443: by default those of the upstreams started so far."""
        probe = Probe()
        policy = FetchPolicy(
            allowed_hosts=frozenset(hosts),
            allowed_networks=networks,
            allowed_ports=STANDARD_PORTS | frozenset(served_ports if ports is None else ports),
            timeout=FetchTimeout(connect=5, total=20),
            **limits,
        )
        fetcher = ResultFetcher(
            policy, resolver=resolver or FakeDNS(), trace_configs=[probe.trace()]
        )
        fetchers.append(fetcher)
        return fetcher, probe

    yield make
    for fetcher in fetchers:
        await fetcher.close()


async def blob(_: web.Request) -> web.StreamResponse:
    return web.Response(body=BLOB, content_type="application/octet-stream")


async def small(_: web.Request) -> web.StreamResponse:
    return web.Response(body=b"result", content_type="application/json")


def redirect_to(location: str | Callable[[], str], status: int = 302) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        target = location if isinstance(location, str) else location()
        return web.Response(status=status, headers={"Location": target})

    return handler


async def drain(
    fetcher: ResultFetcher,
    url: str | URL,
    *,
    provider_host: str | None = None,
    key_header: tuple[str, str] | None = None,
) -> bytes:
    async with fetcher.open(url, provider_host=provider_host, key_header=key_header) as stream:
        return b"".join([chunk async for chunk in stream.iter_chunks()])


async def consume(fetcher: ResultFetcher, url: URL, sizes: list[int]) -> None:
    """Read a stream, noting each chunk's size as it arrives (kept if the stream aborts)."""
    async with fetcher.open(url) as stream:
        async for chunk in stream.iter_chunks():
            sizes.append(len(chunk))


def nothing_started(probe: Probe, *upstreams: Upstream) -> bool:
    return probe.requests == [] and probe.connections == 0 and all(not u.seen for u in upstreams)


# --------------------------------------------------------------------------------------------------
# Refused before any connection


async def test_a_pointer_to_the_metadata_address_is_refused(make_fetcher: MakeFetcher) -> None:
    dns = FakeDNS()
    fetcher, probe = make_fetcher(
        hosts=["169.254.169.254"], networks=(IPv4Network("169.254.0.0/16"),), resolver=dns
    )
    with pytest.raises(UnsafeURL, match="cloud metadata"):
        await drain(fetcher, "http://169.254.169.254/latest/meta-data/iam/")
    assert nothing_started(probe)
    assert dns.asked == []


async def test_a_mapped_loopback_literal_is_refused_without_its_own_allowance(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/blob": small})
    # Both spellings are listed as hosts, so the address rule, not the host list, is what refuses.
    fetcher, probe = make_fetcher(hosts=["127.0.0.1", "::ffff:127.0.0.1"])
    with pytest.raises(UnsafeURL, match="IPv4-mapped loopback"):
        await drain(fetcher, f"http://[::ffff:127.0.0.1]:{upstream.port}/blob")
    assert nothing_started(probe, upstream)

    # The same server is reachable under the spelling the allowance names.
    assert await drain(fetcher, upstream.base / "blob") == b"result"
    assert upstream.paths == ["/blob"]


@pytest.mark.parametrize("host", ["127.1", "0x7f.1", "2130706433"])
async def test_numeric_shorthands_are_refused_after_resolution(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream, host: str
) -> None:
    upstream = await start_upstream({"/blob": small})
    dns = FakeDNS({host: ["127.0.0.1"]})  # what the OS resolver makes of these spellings
    fetcher, probe = make_fetcher(hosts=[host], networks=(), resolver=dns)
    with pytest.raises(UnsafeURL, match=r"resolves to 127\.0\.0\.1, a forbidden address"):
        await drain(fetcher, f"http://{host}:{upstream.port}/blob")
    assert dns.asked == [host]
    assert nothing_started(probe, upstream)


@pytest.mark.parametrize("host", ["127.1", "2130706433"])
async def test_numeric_shorthands_are_refused_with_the_system_resolver(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream, host: str
) -> None:
    try:
        socket.inet_aton(host)
    except OSError:
        pytest.skip(f"this platform does not parse {host} as a number, and DNS is off limits")
    upstream = await start_upstream({"/blob": small})
    fetcher, probe = make_fetcher(hosts=[host], networks=(), resolver=system_resolver)
    with pytest.raises(UnsafeURL, match="loopback"):
        await drain(fetcher, f"http://{host}:{upstream.port}/blob")
    assert nothing_started(probe, upstream)


async def test_a_numeric_shorthand_is_refused_even_inside_an_allowance(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    # aiohttp would hand "127.1" to the OS to parse, bypassing the pinned addresses.
    upstream = await start_upstream({"/blob": small})
    dns = FakeDNS({"127.1": ["127.0.0.1"]})
    fetcher, probe = make_fetcher(hosts=["127.1"], resolver=dns)
    with pytest.raises(UnsafeURL, match="non-canonical"):
        await drain(fetcher, f"http://127.1:{upstream.port}/blob")
    assert nothing_started(probe, upstream)


async def test_every_resolved_address_is_checked(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/blob": small})
    dns = FakeDNS({"dual.test": ["127.0.0.1", "10.0.0.1"]})
    fetcher, probe = make_fetcher(hosts=["dual.test"], resolver=dns)
    with pytest.raises(UnsafeURL, match=r"10\.0\.0\.1, a forbidden address \(private\)"):
        await drain(fetcher, f"http://dual.test:{upstream.port}/blob")
    assert nothing_started(probe, upstream)


async def test_a_rebinding_answer_is_never_used(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/blob": small})
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return next(answers)

    fetcher, probe = make_fetcher(hosts=["rebind.test"], resolver=rebinding)
    url = f"http://rebind.test:{upstream.port}/blob"
    # One question per fetch: the connection uses the vetted answer, never a second lookup.
    assert await drain(fetcher, url) == b"result"
    assert asked == ["rebind.test"]
    with pytest.raises(UnsafeURL, match=r"10\.0\.0\.1, a forbidden address"):
        await drain(fetcher, url)
    assert asked == ["rebind.test", "rebind.test"]
    assert len(probe.requests) == 1
    assert upstream.paths == ["/blob"]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://10.0.0.1/x", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "IPv4-mapped cloud metadata"),
        ("http://internal.test/admin", "private"),
        ("http://loop.test/x", "loopback"),
    ],
)
async def test_a_redirect_to_a_forbidden_address_is_refused_before_connecting(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream, location: str, reason: str
) -> None:
    upstream = await start_upstream({"/r": redirect_to(location)})
    dns = FakeDNS({"internal.test": ["10.0.0.1"], "loop.test": ["127.0.0.2"]})
    hosts = ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::ffff:169.254.169.254"]
    fetcher, probe = make_fetcher(hosts=[*hosts, "internal.test", "loop.test"], resolver=dns)
    with pytest.raises(UnsafeURL, match="forbidden address") as caught:
        await drain(fetcher, upstream.base / "r")
    assert reason in str(caught.value)
    assert [url.host for url in probe.requests] == ["127.0.0.1"]
    assert probe.connections == 1
    assert upstream.paths == ["/r"]


async def test_a_host_off_the_allow_list_is_refused_before_resolution(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/blob": small})
    dns = FakeDNS({"localhost": ["127.0.0.1"]})
    fetcher, probe = make_fetcher(hosts=["127.0.0.1"], resolver=dns)
    with pytest.raises(UnsafeURL, match="localhost is not allowed"):
        await drain(fetcher, f"http://localhost:{upstream.port}/blob")
    assert dns.asked == []
    assert nothing_started(probe, upstream)


async def test_a_redirect_to_a_host_off_the_allow_list_is_refused(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    other = await start_upstream({"/blob": small})
    upstream = await start_upstream({"/r": redirect_to(lambda: f"http://localhost:{other.port}/")})
    dns = FakeDNS({"localhost": ["127.0.0.1"]})
    fetcher, probe = make_fetcher(hosts=["127.0.0.1"], resolver=dns)
    with pytest.raises(UnsafeURL, match="localhost is not allowed"):
        await drain(fetcher, upstream.base / "r")
    assert dns.asked == []
    assert len(probe.requests) == 1
    assert other.seen == []


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x", "http://user:pw@127.0.0.1/x"])
async def test_a_redirect_to_an_unsafe_form_is_refused(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream, location: str
) -> None:
    upstream = await start_upstream({"/r": redirect_to(location)})
    fetcher, probe = make_fetcher()
    with pytest.raises(UnsafeURL):
        await drain(fetcher, upstream.base / "r")
    assert len(probe.requests) == 1


# --------------------------------------------------------------------------------------------------
# Ports: an allowed host is not an allowed service


async def test_an_allowed_host_on_a_port_off_the_list_is_refused_before_connecting(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/blob": small})
    dns = FakeDNS({"results.test": ["127.0.0.1"]})
    fetcher, probe = make_fetcher(hosts=["127.0.0.1", "results.test"], resolver=dns, ports=[])
    for url in (
        "http://127.0.0.1:22/blob",
        upstream.base / "blob",
        f"http://results.test:{upstream.port}/blob",
    ):
        port = URL(url).port if isinstance(url, str) else url.port
        with pytest.raises(UnsafeURL, match=f"result URL port {port} is not allowed"):
            await drain(fetcher, url)
    assert dns.asked == []
    assert nothing_started(probe, upstream)

    # The same server, once its port is listed.
    allowed, _ = make_fetcher(hosts=["127.0.0.1", "results.test"], resolver=dns)
    assert await drain(allowed, f"http://results.test:{upstream.port}/blob") == b"result"
    assert await drain(allowed, upstream.base / "blob") == b"result"
    assert upstream.paths == ["/blob", "/blob"]


async def test_a_redirect_to_a_port_off_the_list_is_refused(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/r": redirect_to("http://127.0.0.1:22/")})
    fetcher, probe = make_fetcher()
    with pytest.raises(UnsafeURL, match="port 22 is not allowed"):
        await drain(fetcher, upstream.base / "r")
    assert [url.port for url in probe.requests] == [upstream.port]


async def test_the_gateway_allows_a_providers_own_port_and_its_listed_ones(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(provider_options={"result_ports": [9443]})
    sandbox_port = URL(stack.sandbox_url).port
    fetchers = stack.app[COMPONENTS_KEY].fetchers
    assert fetchers
    for fetcher in fetchers.values():
        assert fetcher.policy.allowed_ports == {80, 443, 9443, sandbox_port}
        with pytest.raises(UnsafeURL, match="port 22 is not allowed"):
            await drain(fetcher, "http://127.0.0.1:22/large_results/x")


# --------------------------------------------------------------------------------------------------
# Streaming


async def test_a_large_result_streams_in_chunks(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/large_results/abc": blob})
    fetcher, _ = make_fetcher()
    digest = hashlib.sha256()
    sizes: list[int] = []
    async with fetcher.open(upstream.base / "large_results" / "abc") as stream:
        assert stream.status == 200
        assert stream.content_type == "application/octet-stream"
        assert stream.content_length == len(BLOB)
        async for chunk in stream.iter_chunks():
            sizes.append(len(chunk))
            digest.update(chunk)
    assert sum(sizes) == len(BLOB) == stream.received
    assert digest.hexdigest() == hashlib.sha256(BLOB).hexdigest()
    assert len(sizes) > 10
    assert max(sizes) <= fetcher.policy.chunk_size


async def test_a_chunked_result_streams_and_a_name_is_pinned(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(BLOB), 100_000):
            await response.write(BLOB[start : start + 100_000])
        await response.write_eof()
        return response

    upstream = await start_upstream({"/c": chunked})
    dns = FakeDNS({"results.test": ["127.0.0.1"]})
    fetcher, probe = make_fetcher(hosts=["results.test"], resolver=dns)
    async with fetcher.open(f"http://results.test:{upstream.port}/c") as stream:
        assert stream.content_length is None
        body = b"".join([chunk async for chunk in stream.iter_chunks()])
    assert hashlib.sha256(body).digest() == hashlib.sha256(BLOB).digest()
    assert dns.asked == ["results.test"]
    assert upstream.seen[0][1]["host"] == f"results.test:{upstream.port}"
    assert probe.connections == 1


async def test_a_declared_length_over_the_cap_is_refused_before_reading(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/blob": blob})
    fetcher, _ = make_fetcher(max_bytes=1024 * 1024)
    with pytest.raises(ResultTooLarge, match="over the 1048576-byte limit") as caught:
        async with fetcher.open(upstream.base / "blob"):
            pytest.fail("the stream must not open")
    assert caught.value.code == "result_too_large"


@pytest.mark.parametrize(("size", "fits"), [(1024 * 1024, True), (1024 * 1024 + 1, False)])
async def test_a_chunked_body_over_the_cap_is_aborted_mid_stream(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream, size: int, fits: bool
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        payload = b"z" * size
        for start in range(0, size, 50_000):
            await response.write(payload[start : start + 50_000])
        await response.write_eof()
        return response

    upstream = await start_upstream({"/big": endless})
    fetcher, _ = make_fetcher(max_bytes=1024 * 1024)
    if fits:
        assert len(await drain(fetcher, upstream.base / "big")) == size
        return
    sizes: list[int] = []
    with pytest.raises(ResultTooLarge, match="exceeds the 1048576-byte limit"):
        await consume(fetcher, upstream.base / "big", sizes)
    assert 0 < sum(sizes) <= 1024 * 1024


async def test_a_stream_iterates_once(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/s": small})
    fetcher, _ = make_fetcher()
    async with fetcher.open(upstream.base / "s") as stream:
        stream.iter_chunks()
        with pytest.raises(RuntimeError, match="only once"):
            stream.iter_chunks()


# --------------------------------------------------------------------------------------------------
# The provider's key


@pytest.fixture
async def two_hosts(
    start_upstream: StartUpstream, make_fetcher: MakeFetcher
) -> tuple[Upstream, Upstream, ResultFetcher]:
    """``provider`` is reached as "localhost", ``other`` as "127.0.0.1": two distinct hosts."""
    other = await start_upstream({"/blob": small, "/fail": _fail})
    provider = await start_upstream(
        {
            "/large_results/1": small,
            "/here": redirect_to("/large_results/1"),
            "/away": redirect_to(lambda: str(other.base / "blob")),
            "/away-fail": redirect_to(lambda: str(other.base / "fail")),
        }
    )
    dns = FakeDNS({"localhost": ["127.0.0.1"]})
    fetcher, _ = make_fetcher(hosts=["localhost", "127.0.0.1"], resolver=dns)
    return provider, other, fetcher


async def _fail(_: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="boom")


def via_localhost(upstream: Upstream, path: str) -> str:
    return f"http://localhost:{upstream.port}{path}"


async def test_the_key_reaches_the_providers_own_host(
    two_hosts: tuple[Upstream, Upstream, ResultFetcher],
) -> None:
    provider, _, fetcher = two_hosts
    body = await drain(
        fetcher,
        via_localhost(provider, "/large_results/1"),
        provider_host="localhost",
        key_header=KEY,
    )
    assert body == b"result"
    assert provider.keys() == [KEY[1]]


async def test_the_key_survives_a_redirect_within_the_providers_host(
    two_hosts: tuple[Upstream, Upstream, ResultFetcher],
) -> None:
    provider, _, fetcher = two_hosts
    await drain(
        fetcher, via_localhost(provider, "/here"), provider_host="localhost", key_header=KEY
    )
    assert provider.paths == ["/here", "/large_results/1"]
    assert provider.keys() == [KEY[1], KEY[1]]


async def test_the_key_never_goes_to_another_host(
    two_hosts: tuple[Upstream, Upstream, ResultFetcher],
) -> None:
    _, other, fetcher = two_hosts
    assert other.base.host == "127.0.0.1"
    body = await drain(fetcher, other.base / "blob", provider_host="localhost", key_header=KEY)
    assert body == b"result"
    assert other.keys() == [None]


async def test_the_key_is_stripped_across_a_redirect_to_another_host(
    two_hosts: tuple[Upstream, Upstream, ResultFetcher],
) -> None:
    provider, other, fetcher = two_hosts
    body = await drain(
        fetcher, via_localhost(provider, "/away"), provider_host="localhost", key_header=KEY
    )
    assert body == b"result"
    assert provider.keys() == [KEY[1]]
    assert other.paths == ["/blob"]
    assert other.keys() == [None]
    assert all(KEY[1] not in value for _, headers in other.seen for value in headers.values())


async def test_errors_never_carry_the_key(
    two_hosts: tuple[Upstream, Upstream, ResultFetcher],
) -> None:
    provider, other, fetcher = two_hosts
    with pytest.raises(PointerFetchFailed) as caught:
        await drain(
            fetcher,
            via_localhost(provider, "/away-fail"),
            provider_host="localhost",
            key_header=KEY,
        )
    assert caught.value.status == 500
    assert KEY[1] not in str(caught.value)
    assert KEY[1] not in repr(caught.value.args)
    assert other.keys() == [None]


def test_a_key_without_a_provider_host_is_a_mistake() -> None:
    fetcher = ResultFetcher(FetchPolicy(allowed_hosts=frozenset({"127.0.0.1"})))
    with pytest.raises(ValueError, match="provider's host"):
        fetcher.open("http://127.0.0.1/", key_header=KEY)


# --------------------------------------------------------------------------------------------------
# Upstream answers


async def test_gone_means_expired(make_fetcher: MakeFetcher, start_upstream: StartUpstream) -> None:
    async def gone(_: web.Request) -> web.StreamResponse:
        return web.Response(status=410, text="expired")

    upstream = await start_upstream({"/g": gone})
    fetcher, _ = make_fetcher()
    with pytest.raises(ResultExpired) as caught:
        await drain(fetcher, upstream.base / "g")
    assert caught.value.code == "result_expired"
    assert caught.value.status == 410


@pytest.mark.parametrize("status", [500, 404, 403])
async def test_other_failures_carry_their_status(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream, status: int
) -> None:
    async def fail(_: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="no")

    upstream = await start_upstream({"/f": fail})
    fetcher, _ = make_fetcher()
    with pytest.raises(PointerFetchFailed, match=f"status {status}") as caught:
        await drain(fetcher, upstream.base / "f")
    assert caught.value.code == "result_fetch_failed"
    assert caught.value.status == status


async def test_a_redirect_loop_is_cut_off(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream({"/loop": redirect_to("/loop", status=307)})
    fetcher, probe = make_fetcher(max_redirects=3)
    with pytest.raises(UnsafeURL, match="too many redirects"):
        await drain(fetcher, upstream.base / "loop")
    assert upstream.paths == ["/loop"] * 4
    assert len(probe.requests) == 4


async def test_a_redirect_without_location_fails(
    make_fetcher: MakeFetcher, start_upstream: StartUpstream
) -> None:
    async def bare(_: web.Request) -> web.StreamResponse:
        return web.Response(status=302)

    upstream = await start_upstream({"/b": bare})
    fetcher, _ = make_fetcher()
    with pytest.raises(PointerFetchFailed, match="without a Location"):
        await drain(fetcher, upstream.base / "b")


async def test_a_refused_connection_fails(make_fetcher: MakeFetcher) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fetcher, _ = make_fetcher(ports=[port])
    with pytest.raises(PointerFetchFailed, match=r"could not fetch the result from 127\.0\.0\.1"):
        await drain(fetcher, f"http://127.0.0.1:{port}/x")


async def test_an_unresolvable_name_fails(make_fetcher: MakeFetcher) -> None:
    fetcher, probe = make_fetcher(hosts=["missing.test"])
    with pytest.raises(PointerFetchFailed, match="could not resolve"):
        await drain(fetcher, "http://missing.test/x")
    assert probe.requests == []


async def test_a_closed_fetcher_refuses_to_open(make_fetcher: MakeFetcher) -> None:
    fetcher, _ = make_fetcher()
    async with fetcher:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await drain(fetcher, "http://127.0.0.1/x")
