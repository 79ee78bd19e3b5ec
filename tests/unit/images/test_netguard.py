"""SSRF guard: the address checker on literal IPs, the resolver on a fake DNS, and the fetcher
refusing loopback without the allow-list. No traffic goes to any non-loopback address: those are
refused before a connection is opened, and fake resolvers stand in for DNS."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlencode

import pytest
from aiohttp.abc import AbstractResolver
from yarl import URL

from clipfleet.config import FetchLimits
from clipfleet.errors import ClipfleetError
from clipfleet.images.fetch import ImageSource, UrlFetcher
from clipfleet.images.netguard import (
    AddressPolicy,
    ForbiddenUrlError,
    GuardedResolver,
    refusal_reason,
)
from tests.support.hostile import HostileServer
from tests.support.images import LOOPBACK_ALLOWED_PORTS, ImageServer
from tests.support.local_dag import loopback_fetch

REFUSED = [
    "127.0.0.1",
    "127.255.0.9",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254",  # cloud metadata
    "169.254.1.1",
    "100.100.100.200",  # Alibaba metadata
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS IMDSv6
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
    "::127.0.0.1",  # IPv4-compatible (deprecated)
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address):
    assert refusal_reason(ipaddress.ip_address(address)) is not None
    with pytest.raises(ForbiddenUrlError) as caught:
        AddressPolicy().check_address(ipaddress.ip_address(address), "h")
    assert caught.value.status == 403 and caught.value.type == "forbidden_url"


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_allow_list_networks_and_hosts():
    policy = AddressPolicy.from_lists(["10.0.0.0/8", "169.254.0.0/16"], ["imgs.internal", "*.corp"])
    policy.check_address(ipaddress.ip_address("10.9.8.7"), "h")
    with pytest.raises(ForbiddenUrlError):  # metadata needs an exact entry, not a wide range
        policy.check_address(ipaddress.ip_address("169.254.169.254"), "h")
    AddressPolicy.from_lists(["169.254.169.254/32"], []).check_address(
        ipaddress.ip_address("169.254.169.254"), "h"
    )
    assert policy.host_allowed("IMGS.internal.") and policy.host_allowed("a.b.corp")
    assert not policy.host_allowed("corp") and not policy.host_allowed("imgs.internal.evil")


class FakeResolver(AbstractResolver):
    """DNS without the network; counts lookups (a rebinding attacker answers differently on
    the second one, so there must not be one)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.calls.append(host)
        addresses = self.answers[host][min(len(self.calls), len(self.answers[host])) - 1]
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in addresses
        ]

    async def close(self):
        pass


async def test_resolver_checks_every_address_and_returns_only_checked_ones():
    fake = FakeResolver(
        {"mixed.test": [["93.184.216.34", "10.0.0.5"]], "public.test": [["93.184.216.34"]]}
    )
    guarded = GuardedResolver(AddressPolicy(), fake)
    with pytest.raises(ForbiddenUrlError):
        await guarded.resolve("mixed.test", 443)
    results = await guarded.resolve("public.test", 443)
    # unchanged: aiohttp connects to this address and keeps the name for SNI and Host
    assert [(r["host"], r["hostname"]) for r in results] == [("93.184.216.34", "public.test")]


@pytest.fixture
async def server():
    started = await ImageServer().start()
    yield started
    await started.stop()


async def _fetch_error(limits: FetchLimits, url: str, resolver=None) -> ClipfleetError:
    fetcher = UrlFetcher(limits, resolver=resolver)
    try:
        with pytest.raises(ClipfleetError) as caught:
            await fetcher.load(ImageSource(url=url))
        return caught.value
    finally:
        await fetcher.close()


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "10.0.0.1", "169.254.169.254"],
)
async def test_fetcher_refuses_internal_hosts_without_the_allow_list(server, host):
    port = server.base_url.rsplit(":", 1)[1]
    # the port is allowed: what refuses the URL is the address
    limits = FetchLimits(timeout_s=2, allowed_ports=LOOPBACK_ALLOWED_PORTS)
    error = await _fetch_error(limits, f"http://{host}:{port}/img.jpg")
    assert (error.status, error.type) == (403, "forbidden_url"), error.message


async def test_rebinding_gets_no_second_lookup(server):
    """The checked answer is the one connected to: a later, internal answer is never asked."""
    port = int(server.base_url.rsplit(":", 1)[1])
    fake = FakeResolver({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    fetcher = UrlFetcher(loopback_fetch(), resolver=fake)
    try:
        pixels = await fetcher.load(ImageSource(url=f"http://rebind.test:{port}/img.jpg"))
        assert pixels.shape == (72, 96, 3) and fake.calls == ["rebind.test"]
    finally:
        await fetcher.close()


@pytest.fixture
async def hostile():
    started = await HostileServer().start()
    yield started
    await started.stop()


@pytest.mark.parametrize(
    ("location", "status"),
    [
        ("case/rgba_png", 200),  # relative Location, followed
        ("/redirect?to=/case/cmyk_jpeg", 200),  # two hops
        ("http://10.0.0.1/x.jpg", 403),  # each hop is checked before it is sent
        ("http://[::1]:9/x.jpg", 403),
        ("http://169.254.169.254/latest/meta-data/", 403),
        ("file:///etc/passwd", 502),
        ("/redirect?to=/redirect?to=/redirect?to=/case/rgba_png", 502),  # past max_redirects
    ],
)
async def test_redirects_are_followed_hop_by_hop(hostile, location, status):
    limits = loopback_fetch(max_redirects=3)
    url = f"{hostile.base_url}/redirect?{urlencode({'to': location})}"
    fetcher = UrlFetcher(limits)
    try:
        if status == 200:
            assert (await fetcher.load(ImageSource(url=url))).shape[2] == 3
        else:
            with pytest.raises(ClipfleetError) as caught:
                await fetcher.load(ImageSource(url=url))
            assert caught.value.status == status, caught.value.message
    finally:
        await fetcher.close()


METADATA = [
    *("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254"),
    "168.63.129.16",  # Azure WireServer: a public address
    *("169.254.170.23", "fd00:ec2::23"),  # EKS Pod Identity
    "::169.254.169.254",  # IPv4-compatible
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
]


@pytest.mark.parametrize("address", METADATA)
async def test_allowed_host_never_reaches_a_metadata_address(address):
    """allowed_hosts lifts the internal-address checks, not the metadata one."""
    fake = FakeResolver({"imgs.internal": [[address]]})
    policy = AddressPolicy.from_lists(["10.0.0.0/8"], ["imgs.internal", "*.internal"])
    with pytest.raises(ForbiddenUrlError) as caught:
        await GuardedResolver(policy, fake).resolve("imgs.internal", 80)
    assert "metadata" in caught.value.message and address not in caught.value.message
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(ForbiddenUrlError):  # a literal metadata host listed as a host name
        AddressPolicy.from_lists([], [literal]).check_url(URL(f"http://{literal}/"))
    exact = f"{address}/{128 if ':' in address else 32}"
    allowed = AddressPolicy.from_lists([exact], ["imgs.internal"])
    assert await GuardedResolver(allowed, fake).resolve("imgs.internal", 80)


async def test_every_refusal_says_the_same_whatever_the_address_is():
    """No DNS oracle: guessed internal names answer alike, whatever kind of address they have."""
    kinds = ["127.0.0.1", "10.0.0.7", "169.254.169.254", "fe80::1", "240.0.0.1", "64:ff9b::a00:1"]
    fake = FakeResolver({"guess.corp.test": [[address] for address in kinds]})
    messages = set()
    for _ in kinds:
        with pytest.raises(ForbiddenUrlError) as caught:
            await GuardedResolver(AddressPolicy(), fake).resolve("guess.corp.test", 80)
        messages.add(caught.value.message)
    for literal in ("127.0.0.1", "[::1]", "169.254.169.254"):
        with pytest.raises(ForbiddenUrlError) as caught:
            AddressPolicy().check_url(URL(f"http://{literal}/a.jpg"))
        messages.add(caught.value.message.replace(literal.strip("[]"), "guess.corp.test"))
    assert len(messages) == 1, messages


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f000001", "0x7f.1", "0177.0.0.1", "127.1", "017700000001", "0"]
)
def test_other_ipv4_spellings_are_refused_by_the_policy_itself(host):
    """Decimal, hex, octal and short forms never reach a resolver or aiohttp's own checks,
    even where the address they spell is allowed."""
    allowing = AddressPolicy.from_lists(["127.0.0.0/8", "0.0.0.0/8"], [host])
    with pytest.raises(ForbiddenUrlError):
        allowing.check_url(URL(f"http://{host}/a.jpg"))


async def test_allowed_host_still_reaches_private_addresses():
    fake = FakeResolver({"imgs.internal": [["10.1.2.3", "127.0.0.1"]]})
    policy = AddressPolicy.from_lists([], ["imgs.internal"])
    assert len(await GuardedResolver(policy, fake).resolve("imgs.internal", 80)) == 2


async def test_refusals_name_the_host_never_the_resolved_address():
    fake = FakeResolver({"db.corp.test": [["10.20.30.40"]], "v6.corp.test": [["::ffff:10.9.9.9"]]})
    guarded = GuardedResolver(AddressPolicy(), fake)
    for host, address in (("db.corp.test", "10.20.30.40"), ("v6.corp.test", "10.9.9.9")):
        with pytest.raises(ForbiddenUrlError) as caught:
            await guarded.resolve(host, 80)
        assert host in caught.value.message and address not in caught.value.message


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://example.com/a.jpg", True),
        ("https://example.com/a.jpg", True),
        ("http://example.com:443/a.jpg", True),
        ("http://example.com:8080/a.jpg", False),
        ("https://example.com:22/a.jpg", False),
        ("http://imgs.internal:6379/a.jpg", False),  # an allowed host is still port-checked
    ],
)
def test_only_allowed_ports(url, allowed):
    policy = AddressPolicy.from_lists([], ["imgs.internal"])
    if allowed:
        policy.check_url(URL(url))
    else:
        with pytest.raises(ForbiddenUrlError) as caught:
            policy.check_url(URL(url))
        assert "fetch.allowed_ports" in caught.value.message
    AddressPolicy.from_lists([], [], [8080, 6379]).check_url(URL("http://example.com:8080/"))


def test_allowed_ports_are_validated():
    assert FetchLimits().allowed_ports == (80, 443)
    for bad in ((), (0,), (70000,)):
        with pytest.raises(ValueError):
            FetchLimits(allowed_ports=bad)


async def test_fetcher_refuses_a_port_that_is_not_allowed(server):
    url = f"{server.base_url}/img.jpg"  # loopback allowed, but not this port
    error = await _fetch_error(FetchLimits(allow_private_networks=("127.0.0.1/32",)), url)
    assert (error.status, error.type) == (403, "forbidden_url") and "port" in error.message


@pytest.mark.parametrize(
    ("answer", "allowed_hosts"),
    [("10.0.0.7", ()), ("169.254.169.254", ("intranet.test",)), ("::1", ())],
)
async def test_redirect_to_a_name_that_resolves_internally_is_refused(
    hostile, answer, allowed_hosts
):
    """Hop 1 is the loopback server (allowed by address); it redirects to a name whose DNS
    answer is internal. The fake resolver answers; nothing is sent past loopback."""
    port = int(hostile.base_url.rsplit(":", 1)[1])
    fake = FakeResolver({"intranet.test": [[answer]]})
    target = f"http://intranet.test:{port}/case/rgba_png"
    url = f"{hostile.base_url}/redirect?{urlencode({'to': target})}"
    limits = loopback_fetch(allowed_hosts=allowed_hosts)
    error = await _fetch_error(limits, url, resolver=fake)
    assert (error.status, error.type) == (403, "forbidden_url"), error.message
    assert "intranet.test" in error.message and answer not in error.message
    assert fake.calls == ["intranet.test"]
