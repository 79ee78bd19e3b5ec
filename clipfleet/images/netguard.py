"""SSRF guard for image URLs: which addresses the fetcher may connect to.

Every address a host name resolves to is checked (one internal answer refuses the URL), and
`GuardedResolver` hands aiohttp exactly the addresses it checked, so there is no second DNS
lookup that a rebinding attacker could answer differently. Literal-IP hosts never reach a
resolver in aiohttp, so `AddressPolicy.check_url` checks them before each request (every
redirect hop included).

Refused by default: loopback, private (RFC 1918, ULA), carrier-grade NAT, link-local,
multicast, reserved, unspecified, documentation/benchmark ranges, cloud metadata endpoints, and
any of these embedded in IPv6 (IPv4-mapped, 6to4, Teredo, NAT64). An operator re-enables
internal sources with `fetch.allow_private_networks` (CIDRs) and `fetch.allowed_hosts` (names).
An allowed host name skips the internal-address checks but never the metadata check: a metadata
address (also embedded in IPv6) is reached only when listed exactly (/32, /128) in
`allow_private_networks`. Only the ports in `fetch.allowed_ports` (default 80, 443) are reached.
Every refusal of an address says the same thing and names the URL's host, never what it
resolved to nor what kind of address that is (no internal DNS oracle); the log has the kind.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from clipfleet.errors import ForbiddenUrlError, InvalidRequestError

logger = logging.getLogger("ray.serve")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")
# Instance-metadata services: refused even inside an allowed network unless listed exactly.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "169.254.0.23",  # Tencent Cloud
        "168.63.129.16",  # Azure WireServer (a public address: refused only as metadata)
        "169.254.170.23",  # AWS EKS Pod Identity
        "fd00:ec2::23",  # AWS EKS Pod Identity over IPv6
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# One answer for every refused address, whatever kind it is: a client that guesses internal
# names learns nothing from the refusal about what they resolve to (no DNS oracle).
REFUSED = (
    "the image url host {host!r} is not allowed: internal, reserved and cloud metadata "
    "addresses are refused (an operator can allow internal networks in "
    "fetch.allow_private_networks; a metadata address only by itself, as a /32 or /128)"
)
DEFAULT_PORTS = frozenset({80, 443})


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64)."""
    if address.version == 4:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_metadata(address: IPAddress) -> bool:
    """A cloud metadata endpoint, also when an IPv6 address carries it (IPv4-compatible
    ::a.b.c.d too: reserved, so refused anyway, but not to be reached through allowed_hosts)."""
    if address in METADATA_ADDRESSES:
        return True
    inner = embedded_ipv4(address)
    if inner is None and address.version == 6 and int(address) >> 32 == 0:
        inner = ipaddress.IPv4Address(int(address))
    return inner is not None and inner in METADATA_ADDRESSES


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address, or None when it is. The reason never
    repeats the address: refusals must not tell a client what an internal name resolves to."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = refusal_reason(inner)
        return f"an IPv6 address embedding {reason}" if reason else None
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    for name, hit in checks:
        if hit:
            return f"a {name} address"
    return None


def parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def legacy_ipv4(host: str) -> bool:
    """A host that C's inet_aton reads as an IPv4 address written other than as four decimal
    numbers (2130706433, 0x7f.1, 0177.0.0.1, 127.1): refused by this policy itself, not left
    to whichever resolver or client library sees it next."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return parse_address(host) is None


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses and host names the fetcher may reach."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    allowed_ports: frozenset[int] = DEFAULT_PORTS
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hosts = frozenset(host.lower().rstrip(".") for host in self.allowed_hosts)
        object.__setattr__(self, "_hosts", hosts)

    @classmethod
    def from_lists(
        cls, networks: Iterable[str], hosts: Iterable[str], ports: Iterable[int] = DEFAULT_PORTS
    ) -> AddressPolicy:
        nets = tuple(ipaddress.ip_network(net, strict=False) for net in networks)
        return cls(allow_networks=nets, allowed_hosts=tuple(hosts), allowed_ports=frozenset(ports))

    def host_allowed(self, host: str) -> bool:
        """Exact names, or `*.example.com` for every subdomain of example.com."""
        host = host.lower().rstrip(".")
        if host in self._hosts:
            return True
        labels = host.split(".")
        return any(f"*.{'.'.join(labels[i:])}" in self._hosts for i in range(1, len(labels)))

    def _network_allows(self, address: IPAddress) -> bool:
        # A metadata endpoint must be listed on its own, not swept in by a wide range.
        exact_only = is_metadata(address)
        return any(
            address in network and (not exact_only or network.num_addresses == 1)
            for network in self.allow_networks
        )

    def check_address(self, address: IPAddress, host: str, host_allowed: bool = False) -> None:
        """Refuse `address` unless it is public or allowed; `host_allowed`: the URL's host is in
        allowed_hosts, which lifts every check except the metadata one."""
        if self._network_allows(address):
            return
        if host_allowed:
            reason = "a cloud metadata address" if is_metadata(address) else None
        else:
            reason = refusal_reason(address)
        if reason is not None:
            logger.info("image url host %r refused: it points to %s", host, reason)
            raise ForbiddenUrlError(REFUSED.format(host=host))

    def check_url(self, url: URL) -> None:
        """Scheme, port and host checks for one hop; literal-IP hosts are checked here."""
        if url.scheme not in ALLOWED_SCHEMES or not url.host:
            raise InvalidRequestError("the image url must be an absolute http:// or https:// url")
        if url.port not in self.allowed_ports:
            raise ForbiddenUrlError(
                f"the image url port {url.port} is not allowed (allowed: "
                f"{sorted(self.allowed_ports)}; an operator can add ports in fetch.allowed_ports)"
            )
        if legacy_ipv4(url.host):
            raise ForbiddenUrlError(REFUSED.format(host=url.host))
        address = parse_address(url.host)
        if address is not None:
            self.check_address(address, url.host, self.host_allowed(url.host))

    def check_resolved(self, host: str, results: list[ResolveResult]) -> list[ResolveResult]:
        if not results:
            raise OSError(f"{host} did not resolve to any address")
        host_allowed = self.host_allowed(host)
        for result in results:
            address = parse_address(result["host"])
            if address is None:
                raise ForbiddenUrlError(f"the image url host {host!r} resolved to no IP address")
            self.check_address(address, host, host_allowed)
        return results


class GuardedResolver(AbstractResolver):
    """Resolve once, check every address, return only those: aiohttp connects to them."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        return self.policy.check_resolved(host, list(results))

    async def close(self) -> None:
        await self._inner.close()
