"""Which addresses a self-hosted model endpoint may point at.

Refused always: link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254), where
a registered "model" could read instance credentials. Private ranges are allowed, because that is where
self-hosted models live; an optional allow-list narrows everything down to the operator's networks. The
check runs when a model is registered and again on every connection (so DNS cannot be changed under it):
GuardedResolver, which every upstream connection resolves its host with (sidecar.upstream.http), and
EndpointPolicy.address_refusal before a request is made. A connection refused either way fails with
ENDPOINT_NOT_ALLOWED saying why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict
from urllib.parse import urlsplit

from sidecar.errors import invalid_argument

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
BLOCKED_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
RESOLVE_TIMEOUT_SECONDS = 5.0

GetAddrInfo = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]


def parse_cidrs(text: str) -> tuple[IPNetwork, ...]:
    """'10.0.0.0/8, 192.168.0.0/16' -> networks; raises ValueError naming a bad entry."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not a CIDR network such as 10.0.0.0/8") from None
    return tuple(networks)


class EndpointPolicy:
    def __init__(self, allowed: Sequence[IPNetwork] = (), getaddrinfo: GetAddrInfo | None = None) -> None:
        self.allowed = tuple(allowed)
        self._getaddrinfo = getaddrinfo

    def refusal(self, address: str) -> str | None:
        """Why an IP address may not be contacted, or None when it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        for candidate in candidates:
            for network in BLOCKED_NETWORKS:
                if candidate.version == network.version and candidate in network:
                    return f"{address} is a link-local or cloud metadata address ({network})"
        if self.allowed and not any(c.version == n.version and c in n for c in candidates for n in self.allowed):
            return f"{address} is outside the allowed networks ({', '.join(str(n) for n in self.allowed)})"
        return None

    def address_refusal(self, url: str) -> str | None:
        """Why the endpoint may not be contacted when its host is an IP address, else None (names are checked by
        GuardedResolver when they are resolved for a connection)."""
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        return self.refusal(host)

    async def _resolve(self, host: str, port: int) -> list[str]:
        if self._getaddrinfo is not None:
            infos = await self._getaddrinfo(host, port)
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return sorted({str(info[4][0]) for info in infos})

    async def check(self, url: str, field: str) -> None:
        """Refuses an endpoint whose host is, or resolves to, an address it may not contact."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
                    addresses = await self._resolve(host, port)
            except (OSError, TimeoutError) as exc:
                # Not resolvable now (DNS may come later): nothing to refuse yet; every connection is checked.
                log.info("endpoint host %r does not resolve yet (%s); it is checked again on connection", host, exc)
                return
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                raise invalid_argument(field, f"endpoint {url[:200]!r} is refused: {reason}", "ENDPOINT_NOT_ALLOWED")


class EndpointRefused(OSError):
    """Every address a host resolves to is refused by the policy; `why` says why, address by address."""

    def __init__(self, host: str, why: str) -> None:
        super().__init__(f"{host} resolves only to addresses the sidecar may not contact: {why}")
        self.host = host
        self.why = why


class ResolvedAddress(TypedDict):
    hostname: str
    host: str  # the address
    port: int
    family: int
    proto: int
    flags: int


class SystemResolver:
    """The system's resolver (getaddrinfo in the event loop's thread pool), bounded by RESOLVE_TIMEOUT_SECONDS."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[ResolvedAddress]:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        results: dict[str, ResolvedAddress] = {}
        for info_family, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            results.setdefault(
                address,
                ResolvedAddress(hostname=host, host=address, port=port, family=info_family, proto=proto, flags=0),
            )
        return list(results.values())  # in the resolver's order, each address once

    async def close(self) -> None:
        pass


class GuardedResolver:
    """Resolves an upstream host for a connection and drops the addresses the policy refuses; raises
    EndpointRefused when none is left. An IP address is checked as it is, without a trip to the resolver."""

    def __init__(self, policy: EndpointPolicy) -> None:
        self._policy = policy
        self._inner = SystemResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[ResolvedAddress]:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            results = await self._inner.resolve(host, port, family)
        else:
            results = [ResolvedAddress(hostname=host, host=host, port=port, family=_family(ip), proto=0, flags=0)]
        refusals = {r["host"]: self._policy.refusal(r["host"]) for r in results}
        allowed = [r for r in results if refusals[r["host"]] is None]
        if not allowed:
            raise EndpointRefused(host, "; ".join(str(why) for why in dict.fromkeys(refusals.values())))
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET
