"""Ban backends, fail2ban style: a recording executor holds the exact batch of each lifecycle phase."""

from __future__ import annotations

import pytest

from sipops.host.monitor.ban import (
    Ban,
    BanBackendError,
    IpsetBackend,
    NftBackend,
    format_duration,
    normalize,
    parse_duration,
)

T = "inet sipops"


class RecordingNft:
    """Records each nft batch (one transaction) instead of running it."""

    def __init__(self, fail: str | None = None) -> None:
        self.batches: list[str] = []
        self.fail = fail

    def run(self, batch: str) -> str:
        self.batches.append(batch)
        if self.fail and self.fail in batch:
            raise BanBackendError("nft: Error: Could not process rule: No such file or directory")
        return ""


def lines(rec: RecordingNft) -> list[str]:
    assert len(rec.batches) == 1, "one call, one batch"
    return rec.batches[0].splitlines()


def test_start_declares_table_and_sets_from_nftsets_and_plants_the_canary() -> None:
    rec = RecordingNft()
    NftBackend(rec).start()
    assert lines(rec) == [
        f"add table {T}",
        f"add set {T} allow4 {{ type ipv4_addr; flags interval; }}",
        f"add set {T} allow6 {{ type ipv6_addr; flags interval; }}",
        f"add set {T} ban4 {{ type ipv4_addr; flags dynamic, timeout; size 1048576; }}",
        f"add set {T} ban6 {{ type ipv6_addr; flags dynamic, timeout; size 1048576; }}",
        f"add set {T} banned_cidr4 {{ type ipv4_addr; flags interval, timeout; size 65536; }}",
        f"add set {T} banned_cidr6 {{ type ipv6_addr; flags interval, timeout; size 65536; }}",
        f"add set {T} grace {{ type inet_proto; flags timeout; size 4; }}",
        f'add element {T} ban4 {{ 0.0.0.1 timeout 2592000s comment "sipops-canary" }}',
    ]


def test_start_without_the_firewall_table_adds_the_watchers_own_drop_chain() -> None:
    rec = RecordingNft()
    NftBackend(rec, own_chain=True).start()
    got = lines(rec)
    assert f"add chain {T} watch {{ type filter hook input priority filter - 20; policy accept; }}" in got
    chain = [ln for ln in got if ln.startswith(f"add rule {T} watch")]
    assert chain == [
        f"add rule {T} watch ip saddr @allow4 return",
        f"add rule {T} watch ip6 saddr @allow6 return",
        f"add rule {T} watch ip saddr @ban4 counter drop",
        f"add rule {T} watch ip6 saddr @ban6 counter drop",
        f"add rule {T} watch ip saddr @banned_cidr4 counter drop",
        f"add rule {T} watch ip6 saddr @banned_cidr6 counter drop",
    ]


def test_ban_is_one_statement_per_set_with_timeout_and_rule_as_comment() -> None:
    rec = RecordingNft()
    NftBackend(rec).ban(
        [
            Ban("192.0.2.10", 600, "conn_flood"),
            Ban("2001:db8::5", 3600, "sip_scanner"),
            Ban("192.0.2.11", 600, "conn_rate"),
            Ban("203.0.113.0/24", 86400, "manual"),
            Ban("2001:db8:bad::/48", 60, 'weird "rule"; drop'),
        ]
    )
    assert lines(rec) == [
        f'add element {T} ban4 {{ 192.0.2.10 timeout 600s comment "conn_flood", '
        f'192.0.2.11 timeout 600s comment "conn_rate" }}',
        f'add element {T} ban6 {{ 2001:db8::5 timeout 3600s comment "sip_scanner" }}',
        f'add element {T} banned_cidr4 {{ 203.0.113.0/24 timeout 86400s comment "manual" }}',
        f'add element {T} banned_cidr6 {{ 2001:db8:bad::/48 timeout 60s comment "weird__rule___drop" }}',
    ]


def test_restore_gives_each_element_its_remaining_time() -> None:
    rec = RecordingNft()
    NftBackend(rec).restore([Ban("192.0.2.10", 3600, "conn_flood", remaining=1020), Ban("2001:db8::5", 600, "x")])
    assert lines(rec) == [
        f'add element {T} ban4 {{ 192.0.2.10 timeout 3600s expires 1020s comment "conn_flood" }}',
        f'add element {T} ban6 {{ 2001:db8::5 timeout 600s comment "x" }}',
    ]


def test_refresh_is_add_delete_add_in_one_transaction() -> None:
    rec = RecordingNft()
    NftBackend(rec).refresh([Ban("192.0.2.10", 14400, "conn_flood"), Ban("198.51.100.0/24", 600, "manual")])
    assert lines(rec) == [
        f"add element {T} ban4 {{ 192.0.2.10 timeout 1s }}",
        f"add element {T} banned_cidr4 {{ 198.51.100.0/24 timeout 1s }}",
        f"delete element {T} ban4 {{ 192.0.2.10 }}",
        f"delete element {T} banned_cidr4 {{ 198.51.100.0/24 }}",
        f'add element {T} ban4 {{ 192.0.2.10 timeout 14400s comment "conn_flood" }}',
        f'add element {T} banned_cidr4 {{ 198.51.100.0/24 timeout 600s comment "manual" }}',
    ]


def test_unban_adds_then_deletes_so_an_expired_element_cannot_fail_the_batch() -> None:
    rec = RecordingNft()
    NftBackend(rec).unban(["192.0.2.10", "2001:db8::5"])
    assert lines(rec) == [
        f"add element {T} ban4 {{ 192.0.2.10 timeout 1s }}",
        f"add element {T} ban6 {{ 2001:db8::5 timeout 1s }}",
        f"delete element {T} ban4 {{ 192.0.2.10 }}",
        f"delete element {T} ban6 {{ 2001:db8::5 }}",
    ]


def test_stop_leaves_bans_in_the_kernel_and_flush_empties_the_ban_sets() -> None:
    rec = RecordingNft()
    NftBackend(rec).stop()
    assert rec.batches == []
    NftBackend(rec).stop(flush=True)
    assert lines(rec) == [f"flush set {T} {s}" for s in ("ban4", "ban6", "banned_cidr4", "banned_cidr6")]


def test_ten_thousand_bans_are_one_batch_never_one_call_per_address() -> None:
    rec = RecordingNft()
    NftBackend(rec).ban([Ban(f"10.0.{i // 256}.{i % 256}", 600, "conn_flood") for i in range(10000)])
    assert len(rec.batches) == 1
    assert rec.batches[0].count("timeout 600s") == 10000
    assert all(ln.startswith(f"add element {T} ban4 {{") for ln in rec.batches[0].splitlines())


def test_nothing_to_do_runs_nothing() -> None:
    rec = RecordingNft()
    NftBackend(rec).ban([])
    NftBackend(rec).unban([])
    assert rec.batches == []


class CanaryNft(RecordingNft):
    """`create element` of the canary refused as nft refuses it while it exists."""

    def run(self, batch: str) -> str:
        self.batches.append(batch)
        raise BanBackendError("nft: Error: Could not process rule: File exists")


def test_intact_creates_the_canary_and_reads_file_exists_as_intact_without_listing_the_set() -> None:
    rec = CanaryNft()
    assert NftBackend(rec).intact() is True
    assert rec.batches == [f'create element {T} ban4 {{ 0.0.0.1 timeout 2592000s comment "sipops-canary" }}']
    assert NftBackend(RecordingNft()).intact() is False  # created: it was gone (and is planted again)
    assert NftBackend(RecordingNft(fail="create element")).intact() is False  # no table or set


class RecordingRunner:
    def __init__(self, rc: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.rc = rc or {}

    def __call__(self, argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
        self.calls.append((argv, stdin))
        return self.rc.get(" ".join(argv[:3]), 0), "", ""


def test_ipset_start_creates_sets_and_inserts_one_rule_per_family_only_when_missing() -> None:
    run = RecordingRunner(rc={"iptables -w -C": 1})
    IpsetBackend(run).start()
    (argv, stdin), *rules = run.calls
    assert argv == ["ipset", "-exist", "restore"]
    assert stdin is not None
    assert stdin.splitlines()[:6] == [
        "create sipops-ban4 hash:ip family inet timeout 0 maxelem 1048576 comment",
        "create sipops-ban6 hash:ip family inet6 timeout 0 maxelem 1048576 comment",
        "create sipops-net4 hash:net family inet timeout 0 maxelem 65536 comment",
        "create sipops-net6 hash:net family inet6 timeout 0 maxelem 65536 comment",
        "create sipops-block4 list:set size 8",
        "create sipops-block6 list:set size 8",
    ]
    rule4 = ["INPUT", "-m", "set", "--match-set", "sipops-block4", "src", "-j", "DROP"]
    rule6 = ["INPUT", "-m", "set", "--match-set", "sipops-block6", "src", "-j", "DROP"]
    assert [a for a, _ in rules] == [
        ["iptables", "-w", "-C", *rule4],
        ["iptables", "-w", "-I", *rule4],
        ["ip6tables", "-w", "-C", *rule6],  # present already: not inserted twice
    ]


def test_ipset_ban_restore_unban_are_one_restore_each() -> None:
    run = RecordingRunner()
    be = IpsetBackend(run)
    be.ban([Ban("192.0.2.10", 600, "conn_flood"), Ban("2001:db8::/64", 99999999, "manual")])
    be.restore([Ban("192.0.2.11", 600, "x", remaining=42)])
    be.unban(["192.0.2.10", "2001:db8::/64"])
    assert [stdin for _, stdin in run.calls] == [
        'add sipops-ban4 192.0.2.10 timeout 600 comment "conn_flood"\n'
        'add sipops-net6 2001:db8::/64 timeout 2147483 comment "manual"\n',
        'add sipops-ban4 192.0.2.11 timeout 42 comment "x"\n',
        "del sipops-ban4 192.0.2.10\ndel sipops-net6 2001:db8::/64\n",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.10", "192.0.2.10"),
        ("192.0.2.10/32", "192.0.2.10"),
        ("192.0.2.77/24", "192.0.2.0/24"),
        ("::ffff:192.0.2.10", "192.0.2.10"),
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:db8::1/48", "2001:db8::/48"),
    ],
)
def test_addresses_are_normalized_before_they_reach_a_batch(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize("bad", ["example.com", "192.0.2.300", "1.2.3.4 }; flush ruleset; {", ""])
def test_anything_but_an_address_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize(bad)


def test_durations_round_trip() -> None:
    assert [parse_duration(x) for x in ("90", "90s", "10m", "1h30m", "2d", "1w")] == [90, 90, 600, 5400, 172800, 604800]
    assert format_duration(5400) == "1h30m"
    with pytest.raises(ValueError):
        parse_duration("10 minutes")


class ChainsNft(RecordingNft):
    def run(self, batch: str) -> str:
        self.batches.append(batch)
        return (
            "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n"
            "table inet sipops {\n\tchain watch {\n\t\ttype filter hook input priority filter - 20; policy accept;\n"
            "\t}\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n"
        )


def test_has_chain_reads_the_chain_names_not_the_table() -> None:
    from sipops.host.monitor.ban import has_chain

    rec = ChainsNft()
    assert has_chain(rec) and has_chain(rec, "watch") and not has_chain(rec, "forward")
    assert rec.batches == ["list chains inet"] * 3
    assert not has_chain(RecordingNft(fail="list chains"))
