"""What the agent reads of a cfg's sockets and of the host's addresses (the gate and the listen check)."""

from __future__ import annotations

from sipops.host.agent import _is_local, cfg_sockets, host_addresses
from sipops.remote.facts import listen_addresses
from sipops.render import HostRender, RenderedFile

CFG = """
# socket = udp:10.9.9.9:5060   (a comment: not a socket)
socket = udp:198.18.0.2:5060
socket=tcp:198.18.0.2:5061 as 203.0.113.5:5061  # advertised
socket = udp:[2001:db8::5]:5060
listen = udp:10.0.0.1
udp_workers = 4
"""


def test_cfg_sockets_reads_socket_and_listen_lines() -> None:
    assert cfg_sockets(CFG) == [
        {"proto": "udp", "address": "198.18.0.2", "port": 5060},
        {"proto": "tcp", "address": "198.18.0.2", "port": 5061},
        {"proto": "udp", "address": "2001:db8::5", "port": 5060},
        {"proto": "udp", "address": "10.0.0.1", "port": 5060},
    ]


def test_an_address_of_another_machine_is_not_local_and_loopback_is() -> None:
    assert _is_local("127.0.0.1")
    assert not _is_local("198.51.100.9")  # TEST-NET-2: bind() says EADDRNOTAVAIL; nothing is sent
    assert "127.0.0.1" in host_addresses()


def test_facts_ask_for_the_cfg_addresses_but_not_wildcards() -> None:
    cfg = RenderedFile(
        "/etc/opensips/opensips.cfg",
        b"socket = udp:0.0.0.0:5060\nsocket = tcp:198.18.0.2:5060\n",
        "0640",
        "root",
        "opensips",
        "/usr/sbin/opensips -C -f {path}",
        (),
        "x.j2",
    )
    assert listen_addresses(HostRender(None, [cfg], {})) == ["198.18.0.2"]  # type: ignore[arg-type]
