"""Fetching a provider's large-result pointer (``is_url``) without letting it become an SSRF.

Two layers:

- pure checks, no I/O: :func:`check_url` (scheme, userinfo, host syntax, host allow-list, the
  address of an IP-literal host, and the port) and :func:`check_address` (the forbidden-range
  table);
- :func:`vet_url`, which resolves a name itself and checks every address it gets; the answer pins
  the connection. :class:`ResultFetcher` then lets aiohttp connect only to those vetted addresses
  (a pinned resolver), so a DNS answer that changes between the check and the connect (rebinding)
  is never used. Redirects are followed by hand, and every hop goes through the same checks before
  any connection is made. The webhook client and the ``callback_url`` check at submit use the same
  two functions, so a target is judged by one set of rules wherever it comes from.

Decisions (see :func:`check_address`):

- An allowance in ``allowed_networks`` matches an address only in its own family, as resolved. An
  IPv4 allowance such as ``127.0.0.1/32`` does not cover ``::ffff:127.0.0.1`` or
  ``64:ff9b::7f00:1``: alternative spellings of one address are the classic way round SSRF
  filters, and no genuine pointer needs them. Such a form can still be allowed by listing it as an
  IPv6 network (``::ffff:127.0.0.1/128``).
- Cloud metadata addresses are refused even inside an allowance.
- ``*.example.com`` matches names strictly below ``example.com`` at any depth, never the apex and
  never an IP literal; IP-literal hosts must be listed literally.
- Ports are 80 and 443 unless a policy lists more (the sandbox's, a provider's own API port): an
  allowed host is not an allowed service, and ``host:22`` or ``host:6379`` is how an allowed name
  reaches something that was never meant to answer a URL.

Error messages name the host and the problem, never the path or query (presigned URLs carry their
signature there) and never the provider's key.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from types import MappingProxyType, TracebackType
from typing import Self

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.helpers import is_ip_address as _aiohttp_treats_as_ip
from yarl import URL

from adapters.base import AdapterError, ResultExpired

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
HostResolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``: the textual IP addresses a name resolves to."""
Pins = Mapping[str, tuple[IPAddress, ...]]
"""Vetted addresses by host name: the only ones a connection may use."""

STANDARD_PORTS = frozenset({80, 443})

MiB = 1024 * 1024
KiB = 1024

# --------------------------------------------------------------------------------------------------
# Errors. ``code`` is stable: the web layer exposes it in problem+json bodies and metric labels.


class UnsafeURL(AdapterError):
    code = "unsafe_result_url"


class ResultTooLarge(AdapterError):
    code = "result_too_large"


class PointerFetchFailed(AdapterError):
    code = "result_fetch_failed"


FETCH_ERRORS: tuple[type[AdapterError], ...] = (
    UnsafeURL,
    ResultTooLarge,
    ResultExpired,
    PointerFetchFailed,
)

# --------------------------------------------------------------------------------------------------
# Policy


@dataclass(frozen=True, slots=True)
class FetchTimeout:
    """Seconds. ``total`` bounds the whole fetch, every redirect hop and the body included."""

    connect: float = 10.0
    total: float = 600.0

    def __post_init__(self) -> None:
        if self.connect <= 0 or self.total <= 0:
            raise ValueError("timeouts must be positive")


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def _normalise_host(host: str) -> str:
    """Lower case, no brackets, no trailing dot; IP literals in their compressed form."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ip_address(host).compressed
    except ValueError:
        pass
    # "example.com." and "example.com" are the same name to DNS; one spelling must not dodge a rule.
    return host[:-1] if host.endswith(".") else host


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _normalise_pattern(entry: str) -> str:
    pattern = _normalise_host(entry)
    wildcard = pattern.startswith("*.")
    name = pattern[2:] if wildcard else pattern
    if not wildcard and _is_ip(name):
        return pattern
    if not name.isascii() or len(name) > 253 or not _HOSTNAME.fullmatch(name):
        raise ValueError(
            f"allowed host {entry!r} is not a host name, an IP literal or a '*.' suffix pattern"
            " (internationalised names go in punycode)"
        )
    if wildcard and "." not in name:
        # "*.com" would open a whole top-level domain: almost certainly a mistake.
        raise ValueError(f"allowed host {entry!r}: a wildcard needs at least two labels after '*.'")
    return pattern


@dataclass(frozen=True)
class FetchPolicy:
    """Where a result pointer may lead, and how much may come back.

    ``allowed_hosts`` holds exact names, IP literals (matched literally) and ``*.example.com``
    patterns; entries are normalised (case, brackets, trailing dot) on construction.
    ``allowed_networks`` are explicit exceptions to the forbidden ranges, e.g. ``127.0.0.1/32`` for
    the sandbox profile. ``allowed_ports`` holds every port a URL may name, on any allowed host
    (a URL without one names its scheme's). ``label`` names the URL in error messages ("result
    URL", "callback_url"), which a client may read.
    """

    allowed_hosts: frozenset[str]
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_ports: frozenset[int] = STANDARD_PORTS
    max_redirects: int = 3
    max_bytes: int = 256 * MiB
    chunk_size: int = 64 * KiB
    timeout: FetchTimeout = field(default_factory=FetchTimeout)
    label: str = "result URL"

    def __post_init__(self) -> None:
        if isinstance(self.allowed_hosts, str):
            raise TypeError("allowed_hosts must be a collection of host names, not one string")
        # Frozen, so normalising means going round __setattr__ once, at construction.
        object.__setattr__(
            self, "allowed_hosts", frozenset(_normalise_pattern(h) for h in self.allowed_hosts)
        )
        object.__setattr__(self, "allowed_networks", tuple(self.allowed_networks))
        object.__setattr__(self, "allowed_ports", frozenset(self.allowed_ports))
        for port in self.allowed_ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"allowed port {port!r} is not a port number (1-65535)")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        if self.max_bytes <= 0 or self.chunk_size <= 0:
            raise ValueError("max_bytes and chunk_size must be positive")


# --------------------------------------------------------------------------------------------------
# The forbidden ranges, as data. The first matching row gives the reason.


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ip_network(net), reason) for net, reason in rows)


_METADATA = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)

_FORBIDDEN_V4 = _table(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)

_FORBIDDEN_V6 = _table(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)

_NAT64 = IPv6Network("64:ff9b::/96")


def _embedded_v4(ip: IPv6Address) -> tuple[IPv4Address, str] | None:
    """The IPv4 address an IPv6 address really leads to, if it embeds one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    return None


def _forbidden_v4(ip: IPv4Address) -> str | None:
    return next((reason for net, reason in _FORBIDDEN_V4 if ip in net), None)


def check_address(ip: IPAddress | str, policy: FetchPolicy) -> str | None:
    """Why connecting to ``ip`` is forbidden, or ``None`` when it is allowed. Pure.

    Order: metadata addresses are always refused; then an allowance for the address in its own
    family wins; then the forbidden tables; then, for IPv6 forms that embed an IPv4 address
    (mapped, NAT64, 6to4), the embedded address is judged by the IPv4 table, without allowances.
    """
    address = ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        # A zone only exists on link-local paths; judge the address itself.
        address = IPv6Address(int(address))
    if address in _METADATA:
        return "cloud metadata"
    if any(address.version == net.version and address in net for net in policy.allowed_networks):
        return None
    if isinstance(address, IPv4Address):
        return _forbidden_v4(address)
    reason = next((reason for net, reason in _FORBIDDEN_V6 if address in net), None)
    if reason is not None:
        return reason
    embedded = _embedded_v4(address)
    if embedded is not None:
        inner, form = embedded
        if inner in _METADATA:
            return f"{form} cloud metadata {inner}"
        inner_reason = _forbidden_v4(inner)
        if inner_reason is not None:
            return f"{form} {inner_reason} address {inner}"
    return None


# --------------------------------------------------------------------------------------------------
# URLs


@dataclass(frozen=True, slots=True)
class CheckedURL:
    """A URL that passed :func:`check_url`. ``ip`` is set when the host is an IP literal, which
    has then been checked too; otherwise the name still has to be resolved and its addresses
    checked before anything connects."""

    url: URL
    host: str
    ip: IPAddress | None


def _host_allowed(host: str, ip: IPAddress | None, patterns: frozenset[str]) -> bool:
    if ip is not None:
        return ip.compressed in patterns
    if host in patterns:
        return True
    return any(p.startswith("*.") and host.endswith(p[1:]) for p in patterns)


def check_url(url: str | URL, policy: FetchPolicy) -> CheckedURL:
    """Refuse (:class:`UnsafeURL`) what may not be fetched at all. Pure: no resolution, no I/O."""
    what = policy.label
    try:
        parsed = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError) as exc:
        raise UnsafeURL(f"{what} is malformed") from exc
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURL(f"{what} scheme {parsed.scheme!r} is not http or https")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise UnsafeURL(f"{what} carries credentials (userinfo)")
    raw_host = parsed.raw_host
    if not parsed.is_absolute() or not raw_host:
        raise UnsafeURL(f"{what} has no host")
    host = _normalise_host(raw_host)
    ip: IPAddress | None
    try:
        ip = ip_address(host)
    except ValueError:
        ip = None
        if not host.isascii() or len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise UnsafeURL(f"{what} host is malformed") from None
    if not _host_allowed(host, ip, policy.allowed_hosts):
        raise UnsafeURL(f"{what} host {host} is not allowed")
    if ip is not None:
        reason = check_address(ip, policy)
        if reason is not None:
            raise UnsafeURL(f"{what} host {host} is a forbidden address ({reason})")
    # After the address: a forbidden address is the graver reason, and the one worth naming.
    if parsed.port not in policy.allowed_ports:
        raise UnsafeURL(f"{what} port {parsed.port} is not allowed")
    return CheckedURL(url=parsed, host=host, ip=ip)


def key_goes_to(target: CheckedURL, provider_host: str | None, *, first_scheme: str) -> bool:
    """Whether the provider's key may accompany a request to ``target``. Pure.

    Only to the provider's own host, and never in clear text once the pointer started on https.
    """
    if provider_host is None or target.host != _normalise_host(provider_host):
        return False
    return not (first_scheme == "https" and target.url.scheme != "https")


# --------------------------------------------------------------------------------------------------
# Resolution


async def system_resolver(host: str, port: int) -> list[str]:
    """The default :data:`HostResolver`: the operating system's ``getaddrinfo``."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_checked(target: CheckedURL, policy: FetchPolicy, resolver: HostResolver) -> Pins:
    """Resolve a checked URL's name and check every address; the answer pins the connection to
    exactly these addresses. Raises :class:`UnsafeURL` for a forbidden answer and
    :class:`PointerFetchFailed` when there is no answer (worth trying again later)."""
    if target.ip is not None:
        # check_url has checked the literal, and aiohttp connects to literals without resolving.
        return MappingProxyType({})
    what = policy.label
    port = target.url.port or (443 if target.url.scheme == "https" else 80)
    try:
        # Part of connecting, so the connect timeout bounds it: a stalled resolver must not hold
        # a submit (or a delivery slot) for the OS's own, much longer, retry cycle.
        async with asyncio.timeout(policy.timeout.connect):
            answers = await resolver(target.host, port)
    except (OSError, TimeoutError) as exc:
        raise PointerFetchFailed(f"could not resolve the {what} host {target.host}") from exc
    if not answers:
        raise PointerFetchFailed(f"the {what} host {target.host} resolved to no address")
    vetted: list[IPAddress] = []
    for answer in answers:
        try:
            ip = ip_address(answer)
        except ValueError as exc:
            raise UnsafeURL(f"{what} host {target.host} resolved to something not an IP") from exc
        reason = check_address(ip, policy)
        if reason is not None:
            raise UnsafeURL(
                f"{what} host {target.host} resolves to {ip.compressed}, "
                f"a forbidden address ({reason})"
            )
        if ip not in vetted:
            vetted.append(ip)
    if _aiohttp_treats_as_ip(target.url.raw_host):
        # "127.1" or "2130706433": aiohttp would hand it to the OS to parse, bypassing the pin.
        raise UnsafeURL(f"{what} host {target.host} is a non-canonical IP literal")
    return MappingProxyType({target.host: tuple(vetted)})


async def vet_url(
    url: str | URL, policy: FetchPolicy, resolver: HostResolver
) -> tuple[CheckedURL, Pins]:
    """Every check a URL gets before anything connects to it: :func:`check_url`, then
    :func:`resolve_checked`. The one judgement shared by result pointers, webhook deliveries and
    the ``callback_url`` check at submit."""
    target = check_url(url, policy)
    return target, await resolve_checked(target, policy, resolver)


_PINS: ContextVar[Pins] = ContextVar("result_fetch_pins", default=MappingProxyType({}))
"""Vetted addresses for the request in flight. A context variable, so concurrent fetches through
one connector each see only their own pins (the connector resolves inside the caller's task or a
task created from it, which inherits the context)."""


class _PinnedResolver(AbstractResolver):
    """Answers only with addresses the fetcher has already vetted for this request; anything else
    is refused, so the connector can never reach an address that skipped the checks."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = _PINS.get().get(_normalise_host(host))
        if not addresses:
            raise OSError(f"{host} was not vetted for this fetch")
        results: list[ResolveResult] = []
        for ip in addresses:
            ip_family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            if family not in (socket.AF_UNSPEC, ip_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=ip.compressed,
                    port=port,
                    family=ip_family,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise OSError(f"{host} has no vetted address in the requested family")
        return results

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------------
# Streaming


class ResultStream:
    """An open, checked response. Iterate once with :meth:`iter_chunks`; the fetcher closes it."""

    def __init__(self, response: aiohttp.ClientResponse, host: str, policy: FetchPolicy) -> None:
        self._response = response
        self._host = host
        self._max_bytes = policy.max_bytes
        self._chunk_size = policy.chunk_size
        self._started = False
        self.received = 0
        self.status = response.status
        self.content_type: str | None = response.headers.get(aiohttp.hdrs.CONTENT_TYPE)
        encoding = response.headers.get(aiohttp.hdrs.CONTENT_ENCODING, "identity").lower()
        # aiohttp decodes compressed bodies, so a compressed length says nothing about our bytes.
        self.content_length = response.content_length if encoding == "identity" else None

    def iter_chunks(self) -> AsyncIterator[bytes]:
        if self._started:
            raise RuntimeError("a result stream can be iterated only once")
        self._started = True
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._response.content.read(self._chunk_size)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._response.close()
            raise PointerFetchFailed(
                f"the result stream from {self._host} broke off ({type(exc).__name__})"
            ) from exc
        if not chunk:
            raise StopAsyncIteration
        self.received += len(chunk)
        if self.received > self._max_bytes:
            # Decoded bytes are counted, so a compression bomb stops here too.
            self._response.close()
            raise ResultTooLarge(
                f"the result from {self._host} exceeds the {self._max_bytes}-byte limit"
            )
        return chunk


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class ResultFetcher:
    """Fetches result pointers under one :class:`FetchPolicy`. Owns its session and connector.

    ``resolver`` replaces the system resolver (tests use one that never touches DNS);
    ``trace_configs`` are handed to the session (metrics, and tests that count requests).
    """

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: HostResolver = system_resolver,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self.policy = policy
        self._resolve = resolver
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the result fetcher is closed")
        if self._session is None:
            # Built lazily: aiohttp wants a running loop, and the constructor may run without one.
            connector = aiohttp.TCPConnector(resolver=_PinnedResolver(), use_dns_cache=False)
            self._session = aiohttp.ClientSession(
                connector=connector,
                # A cookie set by one hop must not travel to another host.
                cookie_jar=aiohttp.DummyCookieJar(),
                # Proxy variables and .netrc would route or authenticate behind the checks' back.
                trust_env=False,
                trace_configs=self._trace_configs,
            )
        return self._session

    def open(
        self,
        url: str | URL,
        *,
        provider_host: str | None = None,
        key_header: tuple[str, str] | None = None,
    ) -> AbstractAsyncContextManager[ResultStream]:
        """Open ``url`` after every check, following redirects by hand; the context yields the
        stream and closes it on exit.

        ``key_header`` (name, value) is sent only to ``provider_host`` (see :func:`key_goes_to`).
        """
        if key_header is not None and provider_host is None:
            raise ValueError("a key header needs the provider's host")
        return self._open(url, provider_host, key_header)

    @asynccontextmanager
    async def _open(
        self,
        url: str | URL,
        provider_host: str | None,
        key_header: tuple[str, str] | None,
    ) -> AsyncIterator[ResultStream]:
        response, host = await self._follow(url, provider_host, key_header)
        try:
            yield ResultStream(response, host, self.policy)
        finally:
            # Releases a fully read connection to the pool and closes one that was not.
            response.release()

    async def _follow(
        self,
        url: str | URL,
        provider_host: str | None,
        key_header: tuple[str, str] | None,
    ) -> tuple[aiohttp.ClientResponse, str]:
        target = check_url(url, self.policy)
        first_scheme = target.url.scheme
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.timeout.total
        hops = 0
        while True:
            pins = await self._vet(target)
            headers: dict[str, str] = {}
            if key_header is not None and key_goes_to(
                target, provider_host, first_scheme=first_scheme
            ):
                headers[key_header[0]] = key_header[1]
            response = await self._request(target, pins, headers, deadline - loop.time())
            if response.status not in _REDIRECTS:
                break
            location = response.headers.get(aiohttp.hdrs.LOCATION)
            response.release()
            if location is None:
                raise PointerFetchFailed(
                    f"{target.host} answered {response.status} without a Location",
                    status=response.status,
                )
            if hops >= self.policy.max_redirects:
                raise UnsafeURL(
                    f"too many redirects (more than {self.policy.max_redirects}) "
                    f"fetching the result from {target.host}"
                )
            hops += 1
            try:
                next_url = target.url.join(URL(location))
            except (ValueError, TypeError) as exc:
                raise UnsafeURL(f"{target.host} redirected to a malformed URL") from exc
            target = check_url(next_url, self.policy)
        self._check_response(response, target.host)
        return response, target.host

    async def _vet(self, target: CheckedURL) -> Pins:
        return await resolve_checked(target, self.policy, self._resolve)

    async def _request(
        self,
        target: CheckedURL,
        pins: Pins,
        headers: Mapping[str, str],
        remaining: float,
    ) -> aiohttp.ClientResponse:
        if remaining <= 0:
            raise PointerFetchFailed(f"timed out fetching the result from {target.host}")
        timeout = aiohttp.ClientTimeout(
            total=remaining, connect=min(remaining, self.policy.timeout.connect)
        )
        token = _PINS.set(pins)
        try:
            return await self._client().get(
                target.url, headers=headers, allow_redirects=False, timeout=timeout
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception's own text may carry the URL's query (a presigned signature): name
            # only the host and the kind of failure.
            raise PointerFetchFailed(
                f"could not fetch the result from {target.host} ({type(exc).__name__})"
            ) from exc
        finally:
            _PINS.reset(token)

    def _check_response(self, response: aiohttp.ClientResponse, host: str) -> None:
        status = response.status
        if status == 410:
            response.release()
            raise ResultExpired(f"the result at {host} has expired (410)", status=410)
        if not 200 <= status < 300:
            response.release()
            raise PointerFetchFailed(
                f"fetching the result from {host} failed with status {status}", status=status
            )
        length = response.content_length
        if length is not None and length > self.policy.max_bytes:
            response.close()
            raise ResultTooLarge(
                f"the result from {host} is {length} bytes, over the {self.policy.max_bytes}-byte"
                " limit"
            )
