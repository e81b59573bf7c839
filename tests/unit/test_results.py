"""The pure SSRF checks of the result fetcher: address table, URL checks, key routing, policy.

Public addresses here are data for pure functions only; nothing in this module opens a socket.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from pydantic import ValidationError
from yarl import URL

from adapters.base import AdapterError, ResultExpired
from gateway.results import (
    FETCH_ERRORS,
    STANDARD_PORTS,
    CheckedURL,
    FetchPolicy,
    FetchTimeout,
    PointerFetchFailed,
    ResultTooLarge,
    UnsafeURL,
    check_address,
    check_url,
    key_goes_to,
)
from gateway.settings import ProviderSettings


def policy(
    *hosts: str,
    networks: tuple[IPv4Network | IPv6Network, ...] = (),
    ports: frozenset[int] = STANDARD_PORTS,
) -> FetchPolicy:
    return FetchPolicy(
        allowed_hosts=frozenset(hosts), allowed_networks=networks, allowed_ports=ports
    )


OPEN = policy("example.com")
SANDBOX = policy("127.0.0.1", networks=(IPv4Network("127.0.0.1/32"),), ports=frozenset({8700}))


# --------------------------------------------------------------------------------------------------
# check_address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.254", "benchmarking"),
        ("192.0.2.10", "documentation"),
        ("2001:db8::1", "documentation"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("64:ff9b::a9fe:a9fe", "NAT64 cloud metadata"),
        ("64:ff9b::7f00:1", "NAT64 loopback"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("2002:7f00:1::", "6to4 loopback"),
        ("2002:a9fe:a9fe::1", "6to4 cloud metadata"),
        ("::7f00:1", "IPv4-compatible"),
        ("2001:0:4136:e378::1", "Teredo"),
    ],
)
def test_forbidden_addresses_are_refused_with_a_reason(address: str, reason: str) -> None:
    result = check_address(address, OPEN)
    assert result is not None
    assert reason in result


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",  # just below CGNAT
        "100.128.0.0",  # just above CGNAT
        "172.15.255.255",  # just below 172.16/12
        "172.32.0.0",  # just above 172.16/12
        "198.17.255.255",  # just below benchmarking
        "198.20.0.0",  # just above benchmarking
        "2606:2800:220:1:248:1893:25c8:1946",
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822",
        "2002:5db8:d822::1",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert check_address(address, OPEN) is None


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("10.0.0.1", False),
        ("::1", False),
        # An IPv4 allowance does not cover other spellings of the same address.
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::", False),
        ("::7f00:1", False),
    ],
)
def test_an_allowance_is_narrow(address: str, allowed: bool) -> None:
    assert (check_address(address, SANDBOX) is None) is allowed


def test_a_mapped_address_is_allowed_only_when_listed_as_ipv6() -> None:
    mapped = policy(networks=(IPv6Network("::ffff:127.0.0.1/128"),))
    assert check_address("::ffff:127.0.0.1", mapped) is None
    assert check_address("127.0.0.1", mapped) == "loopback"
    assert check_address("::ffff:127.0.0.2", mapped) is not None


def test_a_wider_allowance_opens_its_whole_range_only() -> None:
    lan = policy(networks=(IPv4Network("10.1.0.0/16"),))
    assert check_address("10.1.2.3", lan) is None
    assert check_address("10.2.0.1", lan) == "private"


@pytest.mark.parametrize("network", ["169.254.0.0/16", "0.0.0.0/0", "fd00::/8", "::/0"])
def test_metadata_addresses_cannot_be_allowed(network: str) -> None:
    wide = policy(networks=(ip_network(network),))
    assert check_address("169.254.169.254", wide) == "cloud metadata"
    assert check_address("fd00:ec2::254", wide) == "cloud metadata"


# --------------------------------------------------------------------------------------------------
# check_url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/result",
        "file:///etc/passwd",
        "gopher://example.com:70/_x",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "ws://example.com/",
        "example.com/result",
        "/relative/only",
    ],
)
def test_only_http_and_https_schemes(url: str) -> None:
    with pytest.raises(UnsafeURL) as caught:
        check_url(url, OPEN)
    assert caught.value.code == "unsafe_result_url"


@pytest.mark.parametrize(
    "url",
    [
        "http://user@example.com/",
        "https://user:pass@example.com/",
        "https://:pass@example.com/",
        "http://example.com@169.254.169.254/",
    ],
)
def test_userinfo_is_refused(url: str) -> None:
    with pytest.raises(UnsafeURL, match="userinfo"):
        check_url(url, policy("example.com", "169.254.169.254"))


@pytest.mark.parametrize(
    "url", ["http:///path", "http://exa%6dple.com/", "http://exa mple.com/", "http://-x.com/"]
)
def test_malformed_hosts_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(url, policy("example.com", "*.com.example"))


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/r/1", True),
        ("https://API.Example.COM/r/1", True),
        ("https://api.example.com./r/1", True),
        ("https://api.example.com:443/r/1", True),
        ("https://example.com/", False),
        ("https://www.api.example.com/", False),
        ("https://api.example.com.evil.net/", False),
        ("https://evilapi.example.com/", False),
    ],
)
def test_exact_hosts_match_case_insensitively_and_nothing_else(url: str, allowed: bool) -> None:
    exact = policy("api.example.com")
    if allowed:
        assert check_url(url, exact).host == "api.example.com"
    else:
        with pytest.raises(UnsafeURL, match="not allowed"):
            check_url(url, exact)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://a.cdn.example.com/x", True),
        ("https://A.B.CDN.example.com/x", True),
        ("https://cdn.example.com/x", False),
        ("https://evilcdn.example.com/x", False),
        ("https://a.cdn.example.com.evil.net/x", False),
        ("https://cdn.example.com.a/x", False),
    ],
)
def test_wildcards_match_strict_subdomains_at_any_depth(url: str, allowed: bool) -> None:
    wild = policy("*.cdn.example.com")
    if allowed:
        check_url(url, wild)
    else:
        with pytest.raises(UnsafeURL, match="not allowed"):
            check_url(url, wild)


def test_internationalised_hosts_are_matched_in_punycode() -> None:
    assert check_url("https://münchen.example/x", policy("xn--mnchen-3ya.example")).host == (
        "xn--mnchen-3ya.example"
    )


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("http://10.0.0.1/", ("*.0.0.1",)),
        ("http://93.184.216.34/", ("example.com",)),
        ("http://[::ffff:127.0.0.1]/", ("127.0.0.1",)),
        ("http://[2606:2800:220:1::1]/", ("*.example.com",)),
    ],
)
def test_ip_literal_hosts_must_be_listed_literally(url: str, hosts: tuple[str, ...]) -> None:
    with pytest.raises(UnsafeURL, match="not allowed"):
        check_url(url, policy(*hosts))


@pytest.mark.parametrize(
    ("url", "entry"),
    [
        ("http://93.184.216.34/x", "93.184.216.34"),
        ("http://[2606:2800:220:1::1]/x", "[2606:2800:220:1::1]"),
        ("http://[2606:2800:220:1:0:0:0:1]/x", "2606:2800:220:1::1"),
    ],
)
def test_listed_public_ip_literals_pass(url: str, entry: str) -> None:
    checked = check_url(url, policy(entry))
    assert checked.ip is not None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.1/", "private"),
        ("http://127.0.0.1:8080/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped loopback"),
        ("http://[::ffff:169.254.169.254]/", "IPv4-mapped cloud metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 cloud metadata"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
    ],
)
def test_forbidden_ip_literals_are_refused_even_when_listed(url: str, reason: str) -> None:
    host = URL(url).host
    assert host is not None
    with pytest.raises(UnsafeURL, match="forbidden address") as caught:
        check_url(url, policy(host))
    assert reason in str(caught.value)


@pytest.mark.parametrize("host", ["127.1", "0x7f.1", "2130706433", "017700000001"])
def test_numeric_shorthands_are_names_left_to_resolution(host: str) -> None:
    checked = check_url(f"http://{host}/", policy(host))
    assert checked.ip is None
    assert checked.host == host


def test_the_loopback_allowance_admits_the_sandbox() -> None:
    checked = check_url("http://127.0.0.1:8700/large_results/abc", SANDBOX)
    assert checked == CheckedURL(
        url=checked.url, host="127.0.0.1", ip=ip_network("127.0.0.1/32")[0]
    )


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://example.com/x", True),
        ("https://example.com/x", True),
        ("http://example.com:443/x", True),
        ("https://example.com:80/x", True),
        ("http://example.com:22/x", False),
        ("https://example.com:8443/x", False),
        ("http://example.com:6379/x", False),
        ("http://example.com:0/x", False),
        ("http://93.184.216.34:25/x", False),
    ],
)
def test_ports_are_80_and_443_on_an_allowed_host(url: str, allowed: bool) -> None:
    standard = policy("example.com", "93.184.216.34")
    if allowed:
        check_url(url, standard)
    else:
        port = URL(url).port
        with pytest.raises(UnsafeURL, match=rf"result URL port {port} is not allowed"):
            check_url(url, standard)


def test_listed_ports_are_allowed_besides_the_standard_ones() -> None:
    extra = policy("example.com", ports=STANDARD_PORTS | {8443})
    assert check_url("https://example.com:8443/x", extra).host == "example.com"
    assert check_url("https://example.com/x", extra).host == "example.com"
    with pytest.raises(UnsafeURL, match="port 22 is not allowed"):
        check_url("http://example.com:22/x", extra)
    # A listed port replaces the standard ones when they are not listed with it.
    only = policy("example.com", ports=frozenset({8443}))
    with pytest.raises(UnsafeURL, match="port 443 is not allowed"):
        check_url("https://example.com/x", only)


def test_a_forbidden_address_is_named_before_its_port() -> None:
    with pytest.raises(UnsafeURL, match=r"forbidden address \(loopback\)"):
        check_url("http://127.0.0.1:22/", policy("127.0.0.1"))


def test_the_label_names_the_url_in_every_message() -> None:
    hook = FetchPolicy(allowed_hosts=frozenset({"hooks.test"}), label="callback_url")
    for url, message in [
        ("gopher://hooks.test/", "callback_url scheme 'gopher' is not http or https"),
        ("http://u:p@hooks.test/", "callback_url carries credentials"),
        ("http://evil.test/", "callback_url host evil.test is not allowed"),
        ("http://hooks.test:22/", "callback_url port 22 is not allowed"),
    ]:
        with pytest.raises(UnsafeURL) as caught:
            check_url(url, hook)
        assert caught.value.message.startswith(message), caught.value.message


def test_messages_name_the_host_but_not_the_path_or_query() -> None:
    with pytest.raises(UnsafeURL) as caught:
        check_url("https://evil.example/x?X-Amz-Signature=s3cr3t", OPEN)
    assert "evil.example" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


# --------------------------------------------------------------------------------------------------
# Where the key goes


@pytest.mark.parametrize(
    ("url", "provider", "first_scheme", "sends"),
    [
        ("https://api.pulse.test/large_results/1", "api.pulse.test", "https", True),
        ("https://API.pulse.test./large_results/1", "api.pulse.test", "https", True),
        ("https://api.pulse.test/large_results/1", "API.Pulse.Test", "https", True),
        ("http://api.pulse.test/large_results/1", "api.pulse.test", "http", True),
        ("http://api.pulse.test/large_results/1", "api.pulse.test", "https", False),
        ("https://bucket.s3.test/obj?sig=1", "api.pulse.test", "https", False),
        ("https://pulse.test/x", "api.pulse.test", "https", False),
        ("https://api.pulse.test.evil.net/x", "api.pulse.test", "https", False),
        ("https://api.pulse.test/x", None, "https", False),
    ],
)
def test_the_key_goes_only_to_the_providers_own_host(
    url: str, provider: str | None, first_scheme: str, sends: bool
) -> None:
    everything = policy("*.pulse.test", "pulse.test", "*.s3.test", "*.evil.net")
    target = check_url(url, everything)
    assert key_goes_to(target, provider, first_scheme=first_scheme) is sends


# --------------------------------------------------------------------------------------------------
# Policy and errors


def test_policy_normalises_hosts() -> None:
    normal = policy("API.Example.com.", "*.CDN.example.com", "[2606:2800:220:1:0:0:0:1]")
    assert normal.allowed_hosts == frozenset(
        {"api.example.com", "*.cdn.example.com", "2606:2800:220:1::1"}
    )


def test_policy_defaults() -> None:
    defaults = policy("example.com")
    assert defaults.max_redirects == 3
    assert defaults.max_bytes == 256 * 1024 * 1024
    assert defaults.chunk_size == 64 * 1024
    assert defaults.timeout == FetchTimeout()
    assert defaults.allowed_ports == {80, 443}
    assert defaults.label == "result URL"


@pytest.mark.parametrize("port", [0, 65536, -1, True, "80"])
def test_policy_refuses_bad_ports(port: object) -> None:
    with pytest.raises(ValueError, match="not a port number"):
        FetchPolicy(allowed_hosts=frozenset({"example.com"}), allowed_ports=frozenset({port}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "entry", ["*", "*.com", "a.*.example.com", "*.*.example.com", "*example.com", "ex ample.com"]
)
def test_policy_refuses_bad_host_patterns(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed host"):
        policy(entry)


def test_policy_refuses_a_bare_string_of_hosts() -> None:
    with pytest.raises(TypeError):
        FetchPolicy(allowed_hosts="example.com")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("max_redirects", "max_bytes", "chunk_size"), [(-1, 1, 1), (0, 0, 1), (0, 1, 0)]
)
def test_policy_refuses_bad_limits(max_redirects: int, max_bytes: int, chunk_size: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        FetchPolicy(
            allowed_hosts=frozenset({"example.com"}),
            max_redirects=max_redirects,
            max_bytes=max_bytes,
            chunk_size=chunk_size,
        )


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        FetchTimeout(connect=0)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnsafeURL, "unsafe_result_url"),
        (ResultTooLarge, "result_too_large"),
        (ResultExpired, "result_expired"),
        (PointerFetchFailed, "result_fetch_failed"),
    ],
)
def test_error_codes_are_stable(error: type[AdapterError], code: str) -> None:
    assert error.code == code
    assert error in FETCH_ERRORS


# --------------------------------------------------------------------------------------------------
# The ports a provider's pointers may name, from its settings


@pytest.mark.parametrize(
    ("base_url", "extra", "ports"),
    [
        ("https://api.runpulse.com", [], {80, 443}),
        ("http://127.0.0.1:8700/pulse", [], {80, 443, 8700}),
        ("https://api.example.com:8443/v1", [9000], {80, 443, 8443, 9000}),
    ],
)
def test_a_provider_allows_the_standard_ports_its_own_and_its_listed_ones(
    base_url: str, extra: list[int], ports: set[int]
) -> None:
    provider = ProviderSettings(base_url=base_url, result_ports=extra)
    assert provider.pointer_ports() == ports


@pytest.mark.parametrize("port", [0, 65536])
def test_result_ports_must_be_ports(port: int) -> None:
    with pytest.raises(ValidationError, match="result_ports"):
        ProviderSettings(base_url="https://api.example.com", result_ports=[port])
