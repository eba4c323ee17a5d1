"""Allowlist lookups of single addresses: the inet_pton fast path answers as ipaddress would."""

from __future__ import annotations

import random
from ipaddress import ip_address

import pytest

from sipops.host.monitor.allow import Allowlist, build


def reference(allow: Allowlist, address: str) -> str | None:
    """The answer by ipaddress alone (what why() did before its fast path)."""
    if address in allow.exact:
        return allow.exact[address]
    try:
        ip = ip_address(address)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        return reference(allow, str(mapped))
    return next((why for net, why in allow.networks if net.version == ip.version and ip in net), None)


@pytest.fixture
def allow() -> Allowlist:
    a = build([("198.51.100.0/24", "trunks"), ("2001:db8::/32", "office"), ("192.0.2.7", "gateway")],
              host_addresses=["203.0.113.1"], env={})  # fmt: skip
    return a


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.5", "loopback"),
        ("198.51.100.200", "trunks"),
        ("198.51.101.1", None),
        ("192.0.2.7", "gateway"),
        ("203.0.113.1", "own address"),
        ("::1", "loopback"),
        ("2001:db8:1::9", "office"),
        ("2001:db9::1", None),
        ("::ffff:198.51.100.3", "trunks"),
        ("::ffff:10.0.0.1", None),
        ("fe80::1%eth0", None),
        ("not-an-address", None),
        ("1.2.3", None),
        ("010.0.0.1", None),
    ],
)
def test_a_single_address_is_matched_against_exact_entries_and_networks(
    allow: Allowlist, address: str, expected: str | None
) -> None:
    assert allow.why(address) == expected
    assert allow.why(address) == reference(allow, address)


def test_the_fast_path_agrees_with_ipaddress_on_random_addresses(allow: Allowlist) -> None:
    rng = random.Random(16)
    v4 = [f"{rng.choice([127, 198, 10, 192])}.{rng.choice([0, 51, 2])}.{rng.randrange(256)}.{rng.randrange(256)}"
          for _ in range(2000)]  # fmt: skip
    v6 = [f"2001:db{rng.choice('89')}::{rng.randrange(65536):x}" for _ in range(500)]
    for address in v4 + v6:
        assert allow.why(address) == reference(allow, address), address


def test_a_cidr_still_takes_the_overlap_check(allow: Allowlist) -> None:
    assert allow.why("198.51.0.0/16") == "trunks"
    assert allow.why("10.0.0.0/8") is None
