"""The SIP OPTIONS client: message format, response matching, and real responders on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipops.host.sip import build_options, matches, options_ping, parse_response

DATA = Path(__file__).parent / "data" / "health"


def _free_port(kind: socket.SocketKind, family: socket.AddressFamily = socket.AF_INET) -> int:
    with socket.socket(family, kind) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reply(request: bytes, code: str = "200 OK", branch: str | None = None) -> bytes:
    """A response echoing the request's Via, From, To, Call-ID and CSeq (what a UAS does)."""
    head = request.split(b"\r\n\r\n")[0].decode().split("\r\n")
    keep = [h for h in head[1:] if h.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]
    if branch is not None:
        keep = [h.replace(h.split("branch=")[1].split(";")[0], branch) if h.startswith("Via") else h for h in keep]
    return ("\r\n".join([f"SIP/2.0 {code}", *keep, "Content-Length: 0", "", ""])).encode()


def test_request_has_via_branch_rport_from_tag_call_id_cseq_max_forwards_and_no_body() -> None:
    msg = build_options("udp", "192.0.2.1", 5060, ("192.0.2.9", 40000), branch="z9hG4bKabc", call_id="c1", tag="t1")
    text = msg.decode()
    assert text.startswith("OPTIONS sip:192.0.2.1:5060 SIP/2.0\r\n")
    assert "Via: SIP/2.0/UDP 192.0.2.9:40000;branch=z9hG4bKabc;rport\r\n" in text
    assert "From: <sip:sipops@192.0.2.9:40000>;tag=t1\r\n" in text
    for header in ("Call-ID: c1", "CSeq: 1 OPTIONS", "Max-Forwards: 70", "To: <sip:192.0.2.1:5060>"):
        assert f"\r\n{header}\r\n" in text
    assert text.endswith("Content-Length: 0\r\n\r\n")


def test_ipv6_request_uri_and_via_use_brackets_and_tcp_sets_transport() -> None:
    msg = build_options("tcp", "2001:db8::1", 5060, ("2001:db8::9", 4000), branch="z9hG4bKx", call_id="c", tag="t")
    text = msg.decode()
    assert text.startswith("OPTIONS sip:[2001:db8::1]:5060;transport=tcp SIP/2.0\r\n")
    assert "Via: SIP/2.0/TCP [2001:db8::9]:4000;branch=z9hG4bKx;rport" in text


def test_response_matches_only_its_own_branch_call_id_and_cseq() -> None:
    req = build_options("udp", "192.0.2.1", 5060, ("192.0.2.9", 4), branch="z9hG4bKa", call_id="c1", tag="t")
    ours = parse_response(_reply(req))
    other = parse_response(_reply(req, branch="z9hG4bKother"))
    assert ours is not None and other is not None
    assert matches(ours, "z9hG4bKa", "c1")
    assert not matches(other, "z9hG4bKa", "c1")
    assert not matches(ours, "z9hG4bKa", "another-call")
    assert not matches(ours, "z9hG4bKa", "c1", cseq=2)


def test_compact_headers_are_understood() -> None:
    raw = b"SIP/2.0 404 Not Found\r\nv: SIP/2.0/UDP h;branch=z9hG4bKq\r\ni: cid\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
    resp = parse_response(raw)
    assert resp is not None and resp.code == 404 and matches(resp, "z9hG4bKq", "cid")


def test_a_request_is_not_a_response() -> None:
    assert parse_response(b"OPTIONS sip:x SIP/2.0\r\n\r\n") is None


@pytest.fixture
def sipp_uas() -> Iterator[int]:
    """sipp answering OPTIONS with 200 on loopback, bounded by -m and stopped by pid."""
    if shutil.which("sipp") is None:
        pytest.skip("sipp is not installed (apt-get install sip-tester)")
    port = _free_port(socket.SOCK_DGRAM)
    argv = ["sipp", "-sf", str(DATA / "options_uas.xml"), "-i", "127.0.0.1", "-p", str(port), "-m", "3", "-nostdin"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp")
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    break  # sipp holds the port
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_udp_options_to_a_real_sipp_uas_is_alive_with_an_rtt(sipp_uas: int) -> None:
    result = options_ping("udp", "127.0.0.1", sipp_uas, timeout=3)
    assert result.alive, result.error
    assert result.code == 200 and result.rtt is not None and 0 < result.rtt < 3


def test_udp_options_to_a_closed_port_is_dead() -> None:
    port = _free_port(socket.SOCK_DGRAM)
    result = options_ping("udp", "127.0.0.1", port, timeout=1)
    assert not result.alive and result.error
    assert result.refused  # ICMP port unreachable: nothing listens (the push gate's "listening" check)
    tcp = options_ping("tcp", "127.0.0.1", _free_port(socket.SOCK_STREAM), timeout=1)
    assert not tcp.alive and tcp.refused


Replier = Callable[[bytes], bytes]


def _udp_responder(family: socket.AddressFamily, replies: list[list[Replier] | None]) -> tuple[int, threading.Thread]:
    """Answer the n-th datagram with the n-th list of replies (None: stay silent); bounded by len(replies)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]

    def serve() -> None:
        with sock:
            for _ in range(len(replies)):
                try:
                    data, peer = sock.recvfrom(65535)
                except TimeoutError:
                    return
                for reply in replies.pop(0) or []:
                    sock.sendto(reply(data), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_udp_skips_provisional_and_stray_replies_and_retransmits_after_a_loss() -> None:
    def stray(req: bytes) -> bytes:
        return _reply(req, branch="z9hG4bKnotours")

    def trying(req: bytes) -> bytes:
        return _reply(req, code="100 Trying")

    def final(req: bytes) -> bytes:
        return _reply(req, code="403 Forbidden")

    # First request lost (no answer): the client must retransmit (RFC 3261 timer E).
    port, thread = _udp_responder(socket.AF_INET, [None, [stray, trying, final]])
    result = options_ping("udp", "127.0.0.1", port, timeout=3)
    thread.join(5)
    assert result.alive and result.code == 403  # any final response means alive
    assert result.rtt is not None and result.rtt >= 0.4  # waited for the retransmission


def test_udp_over_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        port, thread = _udp_responder(socket.AF_INET6, [[_reply]])
    except OSError:
        pytest.skip("no IPv6 loopback here")
    result = options_ping("udp", "::1", port, timeout=2)
    thread.join(5)
    assert result.alive and result.target == f"udp:[::1]:{port}"


def test_udp_silence_is_a_timeout() -> None:
    port, thread = _udp_responder(socket.AF_INET, [None, None, None])
    del thread  # it ends by itself (bounded, 5 s socket timeout)
    started = time.monotonic()
    result = options_ping("udp", "127.0.0.1", port, timeout=1)
    assert not result.alive and "no answer in 1 s" in result.error
    assert not result.refused  # bound and silent: listening, not answering
    assert time.monotonic() - started < 2


def _tcp_responder(
    chunks_for: Callable[[bytes], list[bytes]], *, close_early: bool = False
) -> tuple[int, threading.Thread]:
    """A plain Python TCP responder (a stand-in for sipp's TCP mode): one connection, then it stops."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    port = server.getsockname()[1]

    def serve() -> None:
        with server:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65535)
                    if not chunk:
                        return
                    data += chunk
                if close_early:
                    return
                for piece in chunks_for(data):
                    conn.sendall(piece)
                    time.sleep(0.01)
                time.sleep(0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_tcp_reads_a_reply_split_across_segments_after_a_provisional_one() -> None:
    def chunks(req: bytes) -> list[bytes]:
        final = _reply(req, code="200 OK")
        return [b"\r\n\r\n", _reply(req, code="100 Trying"), final[:20], final[20:]]

    port, thread = _tcp_responder(chunks)
    result = options_ping("tcp", "127.0.0.1", port, timeout=3)
    thread.join(5)
    assert result.alive and result.code == 200 and result.rtt is not None


def test_tcp_connection_closed_without_answer_is_dead() -> None:
    port, thread = _tcp_responder(lambda req: [], close_early=True)
    result = options_ping("tcp", "127.0.0.1", port, timeout=2)
    thread.join(5)
    assert not result.alive and "closed" in result.error


def test_tcp_refused_is_dead() -> None:
    port = _free_port(socket.SOCK_STREAM)
    result = options_ping("tcp", "127.0.0.1", port, timeout=1)
    assert not result.alive and "refused" in result.error.lower()


def test_tls_is_not_probed() -> None:
    result = options_ping("tls", "127.0.0.1", 5061)
    assert not result.alive and "udp and tcp only" in result.error
