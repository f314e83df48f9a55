"""Per-client rate limit for public endpoints: one token bucket per client address, in memory.

Each process keeps its own buckets, so with N replicas behind a load balancer a client can make
up to N times the configured rate; that is the accepted trade-off for needing no shared store.
The client is the peer address, or, when the peer is a trusted proxy, the address that proxy
(and any trusted proxy before it) saw, read from X-Forwarded-For right to left; entries a client
wrote itself are never believed. IPv6 clients are keyed by their /64 (one host owns a /64).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shared.errors import TooManyRequests

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPV6_CLIENT_PREFIX = 64
# Bounds memory under a flood of distinct addresses: idle buckets are full and dropped first,
# then the least recently seen.
DEFAULT_MAX_CLIENTS = 100_000
CLIENT_KEYS_REMEMBERED = 4096


def client_key(peer: str | None, forwarded_for: str | None, trusted_proxies: Iterable[IPNetwork]) -> str:
    """Who to count a request against (see the module docstring)."""
    trusted = tuple(trusted_proxies)
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    client = peer or "unknown"
    # Walk back from the peer: each trusted hop vouches for the address before it.
    while hops and _is_trusted(client, trusted):
        client = hops.pop()
    return _normalised(client)


def _is_trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _normalised(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # e.g. "unknown" or a name a trusted proxy wrote: still one key per value
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


class TokenBuckets:
    """`burst` requests at once, refilled at `per_minute` a minute; thread-safe."""

    def __init__(
        self,
        *,
        per_minute: int,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if per_minute < 1 or burst < 1 or max_clients < 1:
            raise ValueError("per_minute, burst and max_clients must be at least 1")
        self._per_second = per_minute / 60
        self._burst = float(burst)
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> int:
        """Takes a token for `key`: 0 when granted, else the whole seconds until one is there."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.pop(key, None) or _Bucket(self._burst, now)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated_at) * self._per_second)
            bucket.updated_at = now
            self._buckets[key] = bucket  # most recently seen last
            if len(self._buckets) > self._max_clients:
                self._evict(now)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0
            return max(1, math.ceil((1 - bucket.tokens) / self._per_second))

    def _evict(self, now: float) -> None:
        refill_time = self._burst / self._per_second
        for key in [key for key, b in self._buckets.items() if now - b.updated_at >= refill_time]:
            del self._buckets[key]  # full again: forgetting it changes nothing
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)


class ClientRateLimit:
    """Raises TooManyRequests (429, Retry-After) when a client is over its rate."""

    def __init__(self, buckets: TokenBuckets, trusted_proxies: Iterable[IPNetwork] = ()) -> None:
        self._buckets = buckets
        # Parsing addresses costs more than taking a token; the same clients come back.
        self._client_key = functools.lru_cache(maxsize=CLIENT_KEYS_REMEMBERED)(
            functools.partial(client_key, trusted_proxies=tuple(trusted_proxies))
        )

    def check(self, peer: str | None, forwarded_for: str | None) -> None:
        wait = self._buckets.take(self._client_key(peer, forwarded_for))
        if wait:
            raise TooManyRequests(
                f"Too many requests from your address; retry in {wait} seconds.",
                headers={"Retry-After": str(wait), "Cache-Control": "no-store"},
            )
