"""A small SIP OPTIONS client over UDP and TCP, IPv4 and IPv6: is a SIP socket alive, and how fast.

Any final response (2xx-6xx) means the socket is alive: a proxy that answers 403 or 404 still
processes SIP. Provisional responses (1xx) are skipped. A response belongs to our request only when
its top Via branch, Call-ID and CSeq match what we sent. Standard library only: the module is
shipped to hosts that have no sipops (sipops.remote.ship; install's verify step runs probe_main).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import time
from dataclasses import dataclass

T1 = 0.5  # RFC 3261 timer T1: first UDP retransmission interval
T2 = 4.0  # RFC 3261 timer T2: cap of the retransmission interval
MAX_MESSAGE = 65535
_COMPACT = {"v": "via", "i": "call-id", "l": "content-length", "f": "from", "t": "to"}


@dataclass(frozen=True)
class OptionsResult:
    """The outcome of one OPTIONS probe: `alive` when a final response came back."""

    proto: str
    address: str
    port: int
    alive: bool
    code: int | None = None
    reason: str = ""
    rtt: float | None = None  # seconds from the first send to the final response
    error: str = ""
    refused: bool = False  # nothing listens there: TCP RST or ICMP port unreachable, at once

    @property
    def target(self) -> str:
        return f"{self.proto}:{hostport(self.address, self.port)}"

    def describe(self) -> str:
        if self.alive:
            assert self.rtt is not None
            return f"{self.target} {self.code} {self.reason} in {self.rtt * 1000:.1f} ms"
        return f"{self.target} {self.error}"


@dataclass(frozen=True)
class SipResponse:
    code: int
    reason: str
    headers: dict[str, list[str]]  # lower-case full names; values in order

    def first(self, name: str) -> str:
        values = self.headers.get(name, [])
        return values[0] if values else ""


def hostport(address: str, port: int) -> str:
    """`1.2.3.4:5060` or `[2001:db8::1]:5060`."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def new_token(nbytes: int = 8) -> str:
    return secrets.token_hex(nbytes)


def build_options(
    proto: str, address: str, port: int, local: tuple[str, int], *, branch: str, call_id: str, tag: str, cseq: int = 1
) -> bytes:
    """An OPTIONS request to `sip:address:port` sent from `local` (address, port)."""
    transport = proto.upper()
    uri_params = ";transport=tcp" if proto == "tcp" else ""
    target = hostport(address, port)
    me = hostport(*local)
    lines = [
        f"OPTIONS sip:{target}{uri_params} SIP/2.0",
        f"Via: SIP/2.0/{transport} {me};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:sipops@{me}>;tag={tag}",
        f"To: <sip:{target}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} OPTIONS",
        f"Contact: <sip:sipops@{me}{uri_params}>",
        "Accept: application/sdp",
        "User-Agent: sipops-health",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def parse_response(data: bytes) -> SipResponse | None:
    """Parse the head of a SIP response; None when `data` is not one (e.g. a request)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "SIP/2.0" or not parts[1].isdigit():
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation line
            last = list(headers)[-1]
            headers[last][-1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        # Via and others may carry several comma-separated values in one header line.
        values = [v.strip() for v in value.split(",")] if key == "via" else [value.strip()]
        headers.setdefault(key, []).extend(values)
    return SipResponse(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)


def _via_branch(via: str) -> str:
    for param in via.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "branch":
            return value.strip()
    return ""


def matches(resp: SipResponse, branch: str, call_id: str, cseq: int = 1) -> bool:
    """True when `resp` answers our OPTIONS: same top-Via branch, Call-ID and CSeq."""
    cseq_parts = resp.first("cseq").split()
    return (
        _via_branch(resp.first("via")) == branch
        and resp.first("call-id") == call_id
        and len(cseq_parts) == 2
        and cseq_parts[0] == str(cseq)
        and cseq_parts[1].upper() == "OPTIONS"
    )


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _local(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]).split("%")[0], int(name[1])


def options_ping(proto: str, address: str, port: int, timeout: float = 2.0) -> OptionsResult:
    """Send one OPTIONS over `proto` (udp or tcp); alive on any final response, else the reason."""
    if proto not in ("udp", "tcp"):
        return OptionsResult(proto, address, port, False, error=f"{proto} is not probed (udp and tcp only)")
    try:
        family = _family(address)
    except ValueError:
        return OptionsResult(proto, address, port, False, error=f"{address!r} is not an IP address")
    try:
        if proto == "udp":
            return _ping_udp(family, address, port, timeout)
        return _ping_tcp(family, address, port, timeout)
    except OSError as exc:
        refused = isinstance(exc, ConnectionRefusedError)
        return OptionsResult(proto, address, port, False, error=exc.strerror or str(exc), refused=refused)


def _ping_udp(family: socket.AddressFamily, address: str, port: int, timeout: float) -> OptionsResult:
    branch, call_id, tag = "z9hG4bK" + new_token(), new_token(12), new_token(4)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((address, port))  # fixes the local address, and ICMP errors come back to us
        local = _local(sock)
        msg = build_options("udp", address, port, local, branch=branch, call_id=call_id, tag=tag)
        started = time.monotonic()
        deadline = started + timeout
        interval = T1
        next_send = started
        while True:
            now = time.monotonic()
            if now >= deadline:
                return OptionsResult("udp", address, port, False, error=f"no answer in {timeout:g} s")
            if now >= next_send:
                sock.send(msg)
                next_send = now + interval
                interval = min(interval * 2, T2)
            sock.settimeout(max(0.001, min(next_send, deadline) - now))
            try:
                data = sock.recv(MAX_MESSAGE)
            except (TimeoutError, socket.timeout):  # noqa: UP041 (distinct before Python 3.10)
                continue
            except ConnectionRefusedError:
                return OptionsResult("udp", address, port, False, error="port unreachable (ICMP)", refused=True)
            resp = parse_response(data)
            if resp is None or resp.code < 200 or not matches(resp, branch, call_id):
                continue  # provisional, stray or not ours: keep waiting
            rtt = time.monotonic() - started
            return OptionsResult("udp", address, port, True, resp.code, resp.reason, rtt)


def _split_messages(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete SIP messages at the start of a TCP stream buffer, and what is left over."""
    out: list[bytes] = []
    while True:
        buffer = buffer.lstrip(b"\r\n")  # CRLF keepalives between messages
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return out, buffer
        resp = parse_response(buffer[: end + 4])
        length = 0
        if resp is not None and resp.first("content-length").isdigit():
            length = int(resp.first("content-length"))
        total = end + 4 + length
        if len(buffer) < total:
            return out, buffer
        out.append(buffer[:total])
        buffer = buffer[total:]


def _ping_tcp(family: socket.AddressFamily, address: str, port: int, timeout: float) -> OptionsResult:
    branch, call_id, tag = "z9hG4bK" + new_token(), new_token(12), new_token(4)
    started = time.monotonic()
    deadline = started + timeout
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except (TimeoutError, socket.timeout):  # noqa: UP041 (distinct before Python 3.10)
            return OptionsResult("tcp", address, port, False, error=f"no TCP connection in {timeout:g} s")
        local = _local(sock)
        sock.sendall(build_options("tcp", address, port, local, branch=branch, call_id=call_id, tag=tag))
        buffer = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return OptionsResult("tcp", address, port, False, error=f"no answer in {timeout:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(MAX_MESSAGE)
            except (TimeoutError, socket.timeout):  # noqa: UP041 (distinct before Python 3.10)
                continue
            if not chunk:
                return OptionsResult("tcp", address, port, False, error="connection closed without an answer")
            messages, buffer = _split_messages(buffer + chunk)
            if len(buffer) > MAX_MESSAGE:
                return OptionsResult("tcp", address, port, False, error="oversized reply")
            for data in messages:
                resp = parse_response(data)
                if resp is not None and resp.code >= 200 and matches(resp, branch, call_id):
                    rtt = time.monotonic() - started
                    return OptionsResult("tcp", address, port, True, resp.code, resp.reason, rtt)


def probe_main(targets: list[str]) -> int:
    """Entry point of install's verify step (argv form of sipops.remote.ship): OPTIONS to each
    `proto:address:port`, one line each; 1 when one did not answer."""
    bad = 0
    for spec in targets:
        proto, _, rest = spec.partition(":")
        addr, _, port = rest.rpartition(":")
        res = options_ping(proto, addr.strip("[]"), int(port), timeout=3.0)
        print(res.describe())
        bad += not res.alive
    return 1 if bad else 0
