"""The scanner against the real kernel: loopback sockets opened here, on ephemeral ports."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from sipops.host.monitor import sockdiag
from sipops.host.monitor.scan import (
    ConnectionTable,
    TcpState,
    close_connections,
    scan,
    table_from_dict,
    table_to_dict,
)


def _netlink_ok() -> bool:
    try:
        sockdiag.open_socket().close()
    except sockdiag.NetlinkRefused:
        return False
    return True


needs_netlink = pytest.mark.skipif(not _netlink_ok(), reason="NETLINK_SOCK_DIAG refused here")


class Loopback:
    """Listeners and connections on loopback, all closed at the end of the test."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.accepted: list[socket.socket] = []

    def listen(self, family: int = socket.AF_INET) -> tuple[socket.socket, int]:
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        lsn = self.stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        lsn.bind((host, 0))
        lsn.listen(128)
        return lsn, lsn.getsockname()[1]

    def connect(self, lsn: socket.socket, count: int, source: str | None = None) -> list[socket.socket]:
        assert count <= 100  # bounded
        clients = []
        for _ in range(count):
            cli = self.stack.enter_context(socket.socket(lsn.family, socket.SOCK_STREAM))
            cli.settimeout(5)
            if source:
                cli.bind((source, 0))
            cli.connect(lsn.getsockname()[:2])
            clients.append(cli)
            self.accepted.append(self.stack.enter_context(lsn.accept()[0]))
        return clients


@pytest.fixture
def loop() -> Iterator[Loopback]:
    with ExitStack() as stack:
        yield Loopback(stack)


def test_port_bytecode_accepts_any_listed_port_and_passes_the_kernel_audit() -> None:
    code = sockdiag.port_bytecode([5061, 5060, 5062])
    # S_EQ(8) JMP(4) S_EQ(8) JMP(4) S_EQ(8); the last "no" jumps 4 past the end (reject)
    ops = [struct.unpack_from("=BBH", code, off) for off in range(0, len(code), 4)]
    assert len(code) == 32
    assert ops[0] == (sockdiag.BC_S_EQ, 8, 12) and ops[1][2] == 5060
    assert ops[2] == (sockdiag.BC_JMP, 4, 24)
    assert ops[-2] == (sockdiag.BC_S_EQ, 8, 12) and ops[-1][2] == 5062


@needs_netlink
def test_counts_per_port_state_and_remote_ip(loop: Loopback) -> None:
    lsn, port = loop.listen()
    loop.connect(lsn, 3, source="127.0.0.2")
    loop.connect(lsn, 2, source="127.0.0.3")
    table = scan([port])
    assert table.source == "netlink" and not table.fallback
    assert table.counts == {(port, TcpState.ESTABLISHED, "127.0.0.2"): 3, (port, TcpState.ESTABLISHED, "127.0.0.3"): 2}
    stats = table.ports[port]
    assert (stats.total, stats.remote_ips, stats.states) == (5, 2, {TcpState.ESTABLISHED: 5})
    assert table.top(port, 1) == [("127.0.0.2", 3)]


@needs_netlink
def test_listeners_are_counted_only_when_asked(loop: Loopback) -> None:
    _lsn, port = loop.listen()
    assert scan([port]).counts == {}
    assert scan([port], [TcpState.LISTEN]).counts == {(port, TcpState.LISTEN, "0.0.0.0"): 1}


@needs_netlink
def test_ipv6_connections_over_loopback(loop: Loopback) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    lsn, port = loop.listen(socket.AF_INET6)
    loop.connect(lsn, 4)
    table = scan([port])
    assert table.counts == {(port, TcpState.ESTABLISHED, "::1"): 4}


@needs_netlink
def test_multi_port_filter_is_applied_in_the_kernel(loop: Loopback) -> None:
    lsn_a, a = loop.listen()
    lsn_b, b = loop.listen()
    lsn_c, c = loop.listen()
    loop.connect(lsn_a, 1)
    loop.connect(lsn_b, 2)
    loop.connect(lsn_c, 4)
    table = scan([a, c])
    assert {p: s.total for p, s in table.ports.items()} == {a: 1, c: 4}
    assert set(scan([a, b, c]).ports) == {a, b, c}


@needs_netlink
def test_state_filter(loop: Loopback) -> None:
    lsn, port = loop.listen()
    clients = loop.connect(lsn, 3)
    clients[0].close()  # the server's end goes to CLOSE_WAIT
    assert scan([port], [TcpState.CLOSE_WAIT]).counts == {(port, TcpState.CLOSE_WAIT, "127.0.0.1"): 1}
    assert scan([port], [TcpState.ESTABLISHED]).counts == {(port, TcpState.ESTABLISHED, "127.0.0.1"): 2}


@needs_netlink
def test_cookies_tell_new_connections_per_remote_ip(loop: Loopback) -> None:
    lsn, port = loop.listen()
    loop.connect(lsn, 2, source="127.0.0.2")
    first = scan([port])
    assert first.new == {}  # nothing to compare with on the first poll
    loop.connect(lsn, 3, source="127.0.0.3")
    loop.connect(lsn, 1, source="127.0.0.2")
    second = scan([port], known=first.cookies)
    assert second.new == {(port, "127.0.0.3"): 3, (port, "127.0.0.2"): 1}
    assert second.ports[port].new == 4
    assert scan([port], known=second.cookies).new == {}


@needs_netlink
def test_proc_fallback_gives_the_same_aggregates_and_says_so(loop: Loopback) -> None:
    lsn, port = loop.listen()
    lsn6, port6 = loop.listen(socket.AF_INET6)
    loop.connect(lsn, 3, source="127.0.0.2")
    loop.connect(lsn6, 2)
    loop.connect(lsn, 2)[0].close()
    states = list(TcpState)
    netlink, proc = scan([port, port6], states), scan([port, port6], states, force_proc=True)
    assert proc.fallback and proc.source == "proc" and proc.fallback_reason
    assert proc.counts == netlink.counts
    again = scan([port, port6], states, force_proc=True, known=proc.cookies)
    assert again.new == {}


def test_netlink_refused_falls_back_to_proc(loop: Loopback, monkeypatch: pytest.MonkeyPatch) -> None:
    lsn, port = loop.listen()
    loop.connect(lsn, 2)

    def refuse() -> socket.socket:
        raise sockdiag.NetlinkRefused(errno.EPERM, "NETLINK_SOCK_DIAG refused: Operation not permitted")

    monkeypatch.setattr(sockdiag, "open_socket", refuse)
    table = scan([port])
    assert table.fallback and "refused" in (table.fallback_reason or "")
    assert table.counts == {(port, TcpState.ESTABLISHED, "127.0.0.1"): 2}


@needs_netlink
def test_close_connections_closes_only_the_given_addresses(loop: Loopback) -> None:
    lsn, port = loop.listen()
    bad = loop.connect(lsn, 3, source="127.0.0.5")
    good = loop.connect(lsn, 2, source="127.0.0.6")
    try:
        closed = close_connections(["127.0.0.5"], [port])
    except sockdiag.DestroyUnsupported:
        pytest.skip("kernel without CONFIG_INET_DIAG_DESTROY")
    assert closed == 3
    assert scan([port]).by_ip(port, [TcpState.ESTABLISHED]) == {"127.0.0.6": 2}
    bad[0].settimeout(2)
    with pytest.raises(OSError):  # the attacker's end sees the abort
        bad[0].recv(1)
    good[0].sendall(b"x")  # the polite client keeps working


@needs_netlink
def test_close_connections_takes_cidrs_and_ignores_other_ports(loop: Loopback) -> None:
    lsn, port = loop.listen()
    other, other_port = loop.listen()
    loop.connect(lsn, 2, source="127.0.9.1")
    loop.connect(other, 2, source="127.0.9.2")
    try:
        closed = close_connections(["127.0.9.0/24"], [port])
    except sockdiag.DestroyUnsupported:
        pytest.skip("kernel without CONFIG_INET_DIAG_DESTROY")
    assert closed == 2
    assert scan([other_port]).ports[other_port].total == 2
    assert close_connections([], None) == 0


@needs_netlink
def test_table_round_trips_through_json_form(loop: Loopback) -> None:
    lsn, port = loop.listen()
    loop.connect(lsn, 2)
    table = scan([port])
    back = table_from_dict(table_to_dict(table))
    assert isinstance(back, ConnectionTable)
    assert (back.counts, back.ports, back.netstat) == (table.counts, table.ports, table.netstat)


def test_state_names_parse_like_ss() -> None:
    assert TcpState.parse("estab") is TcpState.ESTABLISHED
    assert TcpState.parse("SYN-RECV") is TcpState.SYN_RECV
    assert TcpState.parse("close_wait") is TcpState.CLOSE_WAIT
    assert TcpState.SYN_RECV.label == "SYN-RECV"
    with pytest.raises(ValueError, match="unknown TCP state 'bogus'"):
        TcpState.parse("bogus")


def test_netstat_counters_and_their_delta(tmp_path: Path) -> None:
    from sipops.host.monitor.scan import read_netstat

    path = f"{tmp_path}/netstat"
    with open(path, "w") as fh:
        fh.write("TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDoCookies TCPReqQFullDrop\n")
        fh.write("TcpExt: 2743 5 6 7 8\nIpExt: InNoRoutes\nIpExt: 0\n")
    later = read_netstat(path)
    assert later is not None
    assert (later.syncookies_sent, later.listen_overflows, later.req_qfull_do_cookies) == (2743, 5, 7)
    earlier = type(later)(syncookies_sent=2700, listen_overflows=5)
    assert later.delta(earlier).syncookies_sent == 43
    assert read_netstat(f"{tmp_path}/missing") is None


@needs_netlink
def test_time_wait_mixed_with_established_counts_the_same_in_one_dump_or_split(loop: Loopback) -> None:
    lsn, port = loop.listen()
    clients = loop.connect(lsn, 4)
    client_ports = [c.getsockname()[1] for c in clients]
    for cli, srv in zip(clients[:2], loop.accepted[:2], strict=True):
        cli.close()  # the client closes first, then the server: the client's end goes to TIME_WAIT
        srv.close()
    ports, states = [port, *client_ports], list(TcpState)
    sockdiag._MIXED.clear()
    single = scan(ports, states)  # one dump; its buffers mix full and TIME_WAIT sizes
    assert sockdiag._MIXED  # so the next scan splits
    split = scan(ports, states)
    assert single.counts == split.counts
    assert {s for (_p, s, _ip) in split.counts} >= {TcpState.TIME_WAIT, TcpState.ESTABLISHED}
    assert sum(n for (_p, s, _ip), n in split.counts.items() if s == TcpState.TIME_WAIT) == 2
