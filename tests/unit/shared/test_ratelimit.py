"""Token buckets per client (a fake clock) and who the client is behind proxies."""

from ipaddress import ip_network

import pytest

from shared.errors import TooManyRequests
from shared.ratelimit import ClientRateLimit, TokenBuckets, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def buckets(clock: Clock, per_minute: int = 60, burst: int = 3, max_clients: int = 100) -> TokenBuckets:
    return TokenBuckets(per_minute=per_minute, burst=burst, clock=clock, max_clients=max_clients)


def test_a_burst_then_the_rate_and_the_wait_until_the_next_token() -> None:
    clock = Clock()
    limiter = buckets(clock, per_minute=30, burst=3)  # a token every 2 s
    assert [limiter.take("a") for _ in range(4)] == [0, 0, 0, 2]
    clock.now += 1.5
    assert limiter.take("a") == 1  # half a token short: 0.5 s, rounded up to whole seconds
    clock.now += 0.5
    assert limiter.take("a") == 0
    assert limiter.take("a") == 2
    clock.now += 3600
    assert [limiter.take("a") for _ in range(4)] == [0, 0, 0, 2], "refills up to the burst, not beyond"


def test_clients_have_their_own_buckets() -> None:
    limiter = buckets(Clock(), burst=1)
    assert (limiter.take("a"), limiter.take("a")) == (0, 1)
    assert limiter.take("b") == 0


def test_memory_stays_bounded_and_active_clients_keep_their_count() -> None:
    clock = Clock()
    limiter = buckets(clock, per_minute=60, burst=2, max_clients=3)
    assert (limiter.take("busy"), limiter.take("busy")) == (0, 0)
    for n in range(50):  # a flood of new addresses
        limiter.take(f"other-{n}")
        limiter.take("busy")  # seen again each time: never the least recently seen
    assert len(limiter._buckets) <= 3
    assert limiter.take("busy") >= 1, "the busy client got a fresh bucket"
    clock.now += 10
    for n in range(3):
        limiter.take(f"late-{n}")
    assert "busy" not in limiter._buckets, "an idle, refilled bucket is dropped first"


TRUSTED = (ip_network("10.0.0.0/8"), ip_network("2001:db8:ffff::/48"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("192.0.2.1", None, "192.0.2.1"),
        ("192.0.2.1", "198.51.100.9", "192.0.2.1"),  # not a proxy of ours: its header is not believed
        ("10.1.1.1", "198.51.100.9", "198.51.100.9"),
        ("10.1.1.1", "203.0.113.5, 198.51.100.9", "198.51.100.9"),  # the left entry is the client's own claim
        ("10.1.1.1", "198.51.100.9, 10.2.2.2", "198.51.100.9"),  # two proxies of ours
        ("10.1.1.1", "10.3.3.3, 10.2.2.2", "10.3.3.3"),  # all ours: the first hop is the client
        ("10.1.1.1", " , ", "10.1.1.1"),
        ("10.1.1.1", "not-an-ip", "not-an-ip"),
        ("2001:db8::1234:5678", None, "2001:db8::/64"),  # an IPv6 host owns its /64
        ("2001:db8:ffff::1", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", None, "192.0.2.7"),
        (None, "198.51.100.9", "unknown"),
    ],
)
def test_client_key(peer: str | None, forwarded_for: str | None, client: str) -> None:
    assert client_key(peer, forwarded_for, TRUSTED) == client


def test_over_the_limit_is_429_with_retry_after() -> None:
    limit = ClientRateLimit(buckets(Clock(), per_minute=6, burst=1), TRUSTED)
    limit.check("192.0.2.1", None)
    with pytest.raises(TooManyRequests) as refused:
        limit.check("10.0.0.1", "192.0.2.1")
    assert (refused.value.status_code, refused.value.code) == (429, "rate_limited")
    assert refused.value.headers["Retry-After"] == "10"
    assert "10 seconds" in refused.value.message


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(per_minute=0, burst=1)
