"""Rules with an injectable clock: each verdict names its rule and the numbers behind it."""

from __future__ import annotations

from dataclasses import replace

from sipops.host.monitor import allow
from sipops.host.monitor.rules import ALERT, BAN, RuleEngine, Thresholds, escalate, spare_in_grace
from sipops.host.monitor.scan import ConnectionTable, TcpState

E, SR, TW, CW = TcpState.ESTABLISHED, TcpState.SYN_RECV, TcpState.TIME_WAIT, TcpState.CLOSE_WAIT


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


Counts = dict[tuple[int, TcpState, str], int]


def table(counts: Counts, new: dict[tuple[int, str], int] | None = None) -> ConnectionTable:
    return ConnectionTable(
        counts=counts, new=new or {}, cookies=frozenset(), netstat=None, source="netlink", fallback_reason=None,
        taken_at=0.0, elapsed=0.0,
    )  # fmt: skip


LIMITS = Thresholds(max_conns_per_ip=10, new_per_sec=5, flood_per_sec=50, syn_recv_per_ip=20, ban_seconds=600,
                    syn_ban_seconds=60, tcp_max_connections=100, port_alert_ratio=0.9, close_wait_alert=30)  # fmt: skip


def engine(clock: Clock, **kw: object) -> RuleEngine:
    return RuleEngine(LIMITS, allow=allow.build(host_addresses=[], env={}, **kw), clock=clock)  # type: ignore[arg-type]


def test_concurrent_connections_over_the_limit_ban_with_the_numbers() -> None:
    e = engine(Clock())
    v, near = e.evaluate(table({(5060, E, "192.0.2.1"): 11, (5060, E, "192.0.2.2"): 10, (5060, TW, "192.0.2.2"): 50}))
    assert (near.rule, near.action, near.address) == ("source_near_limit", ALERT, "192.0.2.2")  # 10 is not over 10
    assert (v.rule, v.action, v.address, v.port, v.value, v.threshold, v.seconds) == (
        "conn_flood",
        BAN,
        "192.0.2.1",
        5060,
        11,
        10,
        600,
    )
    assert v.evidence == "conns=11>10"


def test_new_connections_are_counted_against_a_burst_of_max_conns_plus_the_rate_between_polls() -> None:
    """The kernel's SYN meter's token bucket: max_conns_per_ip (10) at once, then new_per_sec (5/s)."""
    clock = Clock()
    e = engine(clock)
    assert e.evaluate(table({}, {(5060, "192.0.2.1"): 100})) == []  # first poll: no rate yet
    clock.t += 10
    assert [v.action for v in e.evaluate(table({}, {(5060, "192.0.2.1"): 60}))] == [ALERT]  # 60 = 10 + 5/s x 10 s
    clock.t += 2
    assert [v.action for v in e.evaluate(table({}, {(5060, "192.0.2.2"): 20}))] == [ALERT]  # a PBX: its burst, no ban
    clock.t += 2
    (v,) = e.evaluate(table({}, {(5060, "192.0.2.1"): 21}))
    assert (v.rule, v.action, v.value, v.threshold, v.graceable) == ("conn_rate", BAN, 21, 5, True)
    assert v.evidence == "new=21 in 2.0s>10+5/s"


def test_over_the_flood_line_is_a_ban_no_restart_grace_spares() -> None:
    clock = Clock()
    e = engine(clock)
    e.evaluate(table({}))
    clock.t += 1
    (v,) = e.evaluate(table({}, {(5060, "192.0.2.1"): 81}))  # over 3 x 10 (burst with retries) + 50/s
    assert (v.rule, v.action, v.threshold, v.graceable) == ("flood_line", BAN, 50, False)
    assert v.evidence == "new=81 in 1.0s>30+50/s (flood line)"
    assert spare_in_grace([v], 30) == [v]


def test_during_a_restart_grace_a_conn_rate_ban_becomes_an_alert_that_says_why() -> None:
    clock = Clock()
    e = engine(clock)
    e.evaluate(table({}))
    clock.t += 1
    verdicts = e.evaluate(table({(5060, SR, "192.0.2.9"): 21}, {(5060, "192.0.2.1"): 40}))
    assert [(v.rule, v.action) for v in verdicts] == [("conn_rate", BAN), ("syn_flood", BAN)]
    spared = spare_in_grace(verdicts, 42.4)
    assert [(v.rule, v.action) for v in spared] == [("conn_rate", ALERT), ("syn_flood", BAN)]  # SYN_RECV piling up
    assert spared[0].evidence.endswith("(restart grace, 42s left: only the flood line bans)")
    assert spare_in_grace(verdicts, 0) == verdicts


def test_syn_recv_flood_gets_the_shorter_ban_and_says_it_is_spoofable() -> None:
    (v,) = engine(Clock()).evaluate(table({(5060, SR, "198.51.100.9"): 21}))
    assert (v.rule, v.action, v.seconds) == ("syn_flood", BAN, 60)
    assert "spoofable" in v.evidence


def test_an_allowlisted_gateway_is_never_banned_even_on_syn_evidence() -> None:
    e = engine(Clock(), configured=[("198.51.100.31", "gateway fs1")])
    verdicts = e.evaluate(table({(5060, SR, "198.51.100.31"): 500, (5060, E, "198.51.100.31"): 500}))
    about_it = [v for v in verdicts if v.address == "198.51.100.31"]
    assert {v.rule for v in about_it} == {"conn_flood", "syn_flood"}
    assert {(v.action, v.allowlisted) for v in about_it} == {(ALERT, "gateway fs1")}


def test_one_ban_per_address_the_longest_with_all_evidence() -> None:
    (v,) = engine(Clock()).evaluate(table({(5060, E, "192.0.2.1"): 11, (5060, SR, "192.0.2.1"): 21}))
    assert (v.rule, v.seconds) == ("conn_flood", 600)
    assert "syn_flood" in v.evidence


def test_port_near_tcp_max_connections_is_an_alert_not_a_ban_and_repeats_only_after_a_minute() -> None:
    clock = Clock()
    e = engine(clock)
    many = {(5060, E, f"10.0.0.{i}"): 1 for i in range(95)}
    (v,) = e.evaluate(table(many))
    assert (v.rule, v.action, v.address, v.value, v.threshold) == ("port_near_limit", ALERT, None, 95, 90.0)
    clock.t += 30
    assert e.evaluate(table(many)) == []
    clock.t += 31
    assert [v.rule for v in e.evaluate(table(many))] == ["port_near_limit"]


def test_close_wait_build_up_is_the_proxys_problem_an_alert() -> None:
    (v,) = engine(Clock()).evaluate(table({(5060, CW, "192.0.2.1"): 5, (5060, CW, "192.0.2.2"): 25}))
    assert (v.rule, v.action, v.value) == ("close_wait", ALERT, 30)
    assert "proxy" in v.evidence


def test_syn_cookies_sent_since_last_poll_is_an_alert() -> None:
    e = engine(Clock())
    assert e.syn_cookies(0) == []
    (v,) = e.syn_cookies(2743)
    assert (v.rule, v.action, v.value) == ("syn_cookies", ALERT, 2743)


def test_per_port_thresholds_override_the_default() -> None:
    e = RuleEngine(LIMITS, {5061: replace(LIMITS, max_conns_per_ip=50)}, clock=Clock())
    assert e.evaluate(table({(5061, E, "192.0.2.1"): 20})) == []
    assert len(e.evaluate(table({(5060, E, "192.0.2.1"): 20}))) == 1


def test_escalation_ladder_multiplies_repeat_bans_up_to_the_cap() -> None:
    assert [escalate(600, n, 4, 86400) for n in (1, 2, 3, 4, 5)] == [600, 2400, 9600, 38400, 86400]


def test_a_source_near_its_limit_is_an_alert_with_the_numbers_before_it_is_banned() -> None:
    clock = Clock()
    e = engine(clock, configured=[("192.0.2.9", "trunk")])
    found = e.evaluate(table({(5060, E, "192.0.2.1"): 8, (5060, E, "192.0.2.2"): 7, (5060, E, "192.0.2.9"): 10}))
    assert [(v.rule, v.action, v.address) for v in found] == [("source_near_limit", ALERT, "192.0.2.1")]
    assert found[0].evidence == ("conns=8 of max_conns_per_ip=10 (80%): allowlist it if it is a trunk or a NAT")
    clock.t += 1
    assert e.evaluate(table({(5060, E, "192.0.2.1"): 9})) == []  # alerts repeat at most every alert_every s
    clock.t += 1
    rate = e.evaluate(table({}, {(5060, "192.0.2.3"): 12}))
    assert [(v.rule, v.address, v.value) for v in rate] == [("source_near_limit", "192.0.2.3", 12)]
    assert rate[0].evidence.startswith("new=12 in 1.0s (burst 10 + 5/s) of conn_rate=15 (80%)")
