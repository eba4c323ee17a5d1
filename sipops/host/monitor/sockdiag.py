"""Raw NETLINK_SOCK_DIAG for TCP: dumps filtered in the kernel, aggregated while reading; SOCK_DESTROY.

Standard library only (struct + socket), so it can be shipped to a host that has no sipops.
Speed comes from never decoding a socket in Python one at a time: each receive buffer is cut into
runs of equally sized messages that `struct.iter_unpack` decodes in C, and the counters are
updated with `Counter.update` over `itemgetter` keys, also in C. Keys stay raw (port in network
byte order, address bytes) until the caller converts the few distinct ones.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import compress, repeat
from itertools import count as naturals
from operator import itemgetter, ne
from typing import Any

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
INET_DIAG_REQ_BYTECODE = 1
BC_JMP = 1
BC_S_EQ = 11
ALL_STATES_MASK = 0xFFF  # TCP states 0..11; the kernel adds NEW_SYN_RECV when SYN_RECV (3) is asked for
LISTEN = 10
SYN_RECV = 3
NEW_SYN_RECV = 12
TIME_WAIT = 6
CLOSE = 7

_HDR = struct.Struct("=IHHII")
_LEN_TYPE = struct.Struct("=IH")
_REQ = struct.Struct("=BBBxI48s")
_NLA = struct.Struct("=HH")
_BC_OP = struct.Struct("=BBH")
_ERR = struct.Struct("=i")
_MSG_MIN = 16 + 72  # nlmsghdr + inet_diag_msg
_RECV_SIZE = 1 << 17  # the kernel fills at most ~32 KiB per dump message batch
_TIMEOUT = 10.0

RawKey = tuple[int, int, bytes]  # (local port in network byte order as read natively, state, remote address bytes)


class NetlinkRefused(OSError):
    """The kernel (or a sandbox) refused NETLINK_SOCK_DIAG: the caller falls back to /proc/net/tcp."""


class DestroyUnsupported(OSError):
    """SOCK_DESTROY is not available: the kernel lacks CONFIG_INET_DIAG_DESTROY (EOPNOTSUPP)."""


def states_mask(states: Iterable[int] | None) -> int:
    """Bit mask of TCP states for the request; None means every state."""
    if states is None:
        return ALL_STATES_MASK
    mask = 0
    for state in states:
        mask |= 1 << int(state)
    return mask


def port_bytecode(ports: Iterable[int]) -> bytes:
    """inet_diag bytecode accepting a socket whose local port is any of `ports`.

    Each test is `S_EQ port` (8 bytes) followed, except for the last, by a 4-byte JMP: a match
    falls through to the JMP, whose "no" branch jumps to the end (accept); a mismatch jumps over
    the JMP to the next test, and past the end (reject) after the last. The kernel's audit only
    accepts a "no" target that the chain of "yes" offsets also reaches: the JMP's yes=4 makes
    every test's start such a target (ss builds OR the same way).
    """
    uniq = sorted(set(ports))
    if not uniq:
        raise ValueError("port_bytecode needs at least one port")
    out = bytearray()
    for i, port in enumerate(uniq):
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
        last = i == len(uniq) - 1
        out += _BC_OP.pack(BC_S_EQ, 8, 8 + 4 if last else 12)
        out += _BC_OP.pack(0, 0, port)  # the operand: port in host byte order in the "no" field
        if not last:
            rest = (len(uniq) - i - 1) * 12 - 4  # bytes after this JMP
            out += _BC_OP.pack(BC_JMP, 4, rest + 4)
    return bytes(out)


def dump_request(family: int, mask: int, ports: Iterable[int] | None, seq: int = 1) -> bytes:
    """One SOCK_DIAG_BY_FAMILY dump request for TCP sockets of `family` in the states of `mask`."""
    port_list = sorted(set(ports)) if ports is not None else []
    sockid = bytes(48)
    attrs = b""
    if len(port_list) == 1:
        sockid = struct.pack("!H", port_list[0]) + bytes(46)  # the kernel filters on id.sport itself
    elif port_list:
        code = port_bytecode(port_list)
        attrs = _NLA.pack(4 + len(code), INET_DIAG_REQ_BYTECODE) + code
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, mask, sockid) + attrs
    return _HDR.pack(16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def open_socket() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket; NetlinkRefused when this environment does not allow one."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except OSError as exc:
        raise NetlinkRefused(exc.errno, f"NETLINK_SOCK_DIAG refused: {exc.strerror}") from exc
    sock.settimeout(_TIMEOUT)
    return sock


def _raise_nlerr(code: int, what: str) -> None:
    err = -code
    if err == errno.EOPNOTSUPP:
        raise DestroyUnsupported(err, f"{what}: not supported by this kernel (needs CONFIG_INET_DIAG_DESTROY)")
    if err in (errno.EPERM, errno.EACCES):
        raise PermissionError(err, f"{what}: {errno.errorcode.get(err, err)} (needs CAP_NET_ADMIN)")
    raise OSError(err, f"{what}: {errno.errorcode.get(err, err)}")


def _rows(
    buf: memoryview, n: int, formats: dict[int, struct.Struct], fmt_for: Callable[[int], struct.Struct]
) -> tuple[list[tuple[Any, ...]], bool]:
    """The decoded SOCK_DIAG_BY_FAMILY messages in buf[:n], and whether NLMSG_DONE was seen.

    Runs of equally sized messages (the usual case) are decoded by iter_unpack, and the first
    message of another size (TIME_WAIT and request sockets carry no attributes: shorter) is found
    by comparing the decoded headers, in C too. A buffer with many such breaks is walked message
    by message for offsets instead, decoded by unpack_from over them.
    """
    out: list[tuple[Any, ...]] = []
    fixed = formats.get(0)
    if fixed is None:
        fixed = formats[0] = fmt_for(_MSG_MIN)
    unpack = _LEN_TYPE.unpack_from
    off, breaks = 0, 0
    while off + 16 <= n and breaks < _MAX_BREAKS:
        ln, typ = unpack(buf, off)
        if typ == SOCK_DIAG_BY_FAMILY and ln >= _MSG_MIN and not ln & 3:
            k = (n - off) // ln
            st = formats.get(ln)
            if st is None:
                st = formats[ln] = fmt_for(ln)
            rows = list(st.iter_unpack(buf[off : off + k * ln]))
            good = (ln, typ)
            heads = list(map(_HEAD, rows))
            if heads.count(good) == k:
                out += rows
                off += k * ln
                continue
            i = next(compress(naturals(), map(ne, heads, repeat(good))))  # the first message of another kind
            out += rows[:i]
            off += i * ln
            breaks += 1
            continue
        if ln < 16:
            raise OSError(errno.EPROTO, "sock_diag: malformed netlink message")
        if typ == NLMSG_DONE:
            return out, True
        if typ == NLMSG_ERROR:
            (code,) = _ERR.unpack_from(buf, off + 16)
            if code:
                _raise_nlerr(code, "sock_diag dump")
        elif typ == SOCK_DIAG_BY_FAMILY and ln >= _MSG_MIN:
            out.append(fixed.unpack_from(buf, off))
        off += (ln + 3) & ~3
    offsets: list[int] = []
    append = offsets.append
    last, done = n - 16, False
    while off <= last:
        ln, typ = unpack(buf, off)
        if typ == SOCK_DIAG_BY_FAMILY and ln >= _MSG_MIN and not ln & 3:  # the usual message: fast loop
            append(off)
            off += ln
            continue
        if ln < 16:
            raise OSError(errno.EPROTO, "sock_diag: malformed netlink message")
        if typ == NLMSG_DONE:
            done = True
            break
        if typ == NLMSG_ERROR:
            (code,) = _ERR.unpack_from(buf, off + 16)
            if code:
                _raise_nlerr(code, "sock_diag dump")
        elif typ == SOCK_DIAG_BY_FAMILY and ln >= _MSG_MIN:
            append(off)
        off += (ln + 3) & ~3
    out += map(fixed.unpack_from, repeat(buf, len(offsets)), offsets)
    return out, done


_MAX_BREAKS = 6  # per receive buffer, before walking it instead
_HEAD = itemgetter(0, 1)


def _recv_rows(sock: socket.socket, fmt_for: Callable[[int], struct.Struct]) -> Iterator[list[tuple[Any, ...]]]:
    """Receive a dump to its NLMSG_DONE, yielding the decoded rows of each receive buffer."""
    buf = bytearray(_RECV_SIZE)
    view = memoryview(buf)
    formats: dict[int, struct.Struct] = {}
    for _ in range(10_000_000):  # bounded: a dump of ~1e9 sockets would end first
        n = sock.recv_into(buf)
        if n == 0:
            return
        rows, done = _rows(view, n, formats, fmt_for)
        if rows:
            yield rows
        if done:
            return
    raise OSError(errno.EPROTO, "sock_diag: dump did not end")


# Rows for counting: (len, type, state, sport, dst, cookie). The remote address is 4 bytes for
# IPv4 and 16 for IPv6, the cookie one native u64 (what the kernel compares on destroy).
def _count_fmt(family: int) -> Callable[[int], struct.Struct]:
    dst = "4s12x" if family == socket.AF_INET else "16s"
    return lambda size: struct.Struct(f"=IH10xxB2xH2x16x{dst}4xQ20x{size - _MSG_MIN}x")


_KEY = itemgetter(3, 2, 4)
_LEN = itemgetter(0)
_COOKIE = itemgetter(5)


@dataclass
class Tally:
    """Raw counters filled by `count`: keys are (sport as read natively, state, address bytes)."""

    counts: Counter[RawKey] = field(default_factory=Counter)
    new: Counter[RawKey] = field(default_factory=Counter)
    cookies: set[int] = field(default_factory=set)


def count(
    family: int,
    mask: int,
    ports: Iterable[int] | None,
    tally: Tally,
    *,
    known: AbstractSet[int] | None = None,
    cookies: bool = True,
    sock: socket.socket | None = None,
) -> None:
    """Dump TCP sockets of `family` into `tally`; sockets whose cookie is not in `known` count as new."""
    own = sock is None
    sk = open_socket() if sock is None else sock
    try:
        parts = split_mask(mask) if _MIXED.get((family, mask)) else [mask]
        for part in parts:
            sk.send(dump_request(family, part, ports))
            sizes = _count_into(sk, family, tally, known, cookies)
            if len(parts) == 1 and len(sizes) > 1 and len(split_mask(mask)) > 1:
                _MIXED[(family, mask)] = True  # the next scan splits
    except PermissionError as exc:
        raise NetlinkRefused(exc.errno, f"sock_diag dump refused: {exc.strerror}") from exc
    finally:
        if own:
            sk.close()


# (family, mask) whose last single dump mixed message sizes: a performance hint, never a result.
_MIXED: dict[tuple[int, int], bool] = {}
_MINI_MASK = 1 << TIME_WAIT | 1 << SYN_RECV | 1 << NEW_SYN_RECV


def split_mask(mask: int) -> list[int]:
    """Full sockets and mini sockets (TIME_WAIT, request) in separate dumps.

    Mini sockets carry no attributes, so mixed in one dump they break the buffers into messages
    of two sizes, which must be walked in Python; two dumps of one size each decode in C, for
    one more walk of the kernel's hash table (~15 ms at 100k sockets). `count` starts with one
    dump and splits from the next scan on once it has seen sizes mixed.
    """
    mini, full = mask & _MINI_MASK, mask & ~_MINI_MASK
    return [m for m in (full, mini) if m]


def _count_into(
    sk: socket.socket, family: int, tally: Tally, known: AbstractSet[int] | None, cookies: bool
) -> set[int]:
    """Count one dump into `tally`; returns the message sizes seen."""
    counts, new, seen = tally.counts, tally.new, tally.cookies
    sizes: set[int] = set()
    for rows in _recv_rows(sk, _count_fmt(family)):
        sizes.update(map(_LEN, rows))
        keys = list(map(_KEY, rows))
        counts.update(keys)
        if cookies:
            cks = list(map(_COOKIE, rows))
            seen.update(cks)
            if known is not None:
                fresh = set(cks).difference(known)
                if fresh:
                    new.update(compress(keys, map(fresh.__contains__, cks)))
    return sizes


@dataclass(frozen=True)
class RawSocket:
    """One socket as the kernel reported it, for the few that are looked at one by one."""

    family: int
    state: int
    sockid: bytes  # the 48-byte inet_diag_sockid, as SOCK_DESTROY wants it back
    rqueue: int
    wqueue: int
    inode: int

    @property
    def local_port(self) -> int:
        return int.from_bytes(self.sockid[0:2], "big")

    @property
    def local_address(self) -> bytes:
        return self.sockid[4:8] if self.family == socket.AF_INET else self.sockid[4:20]

    @property
    def remote_address(self) -> bytes:
        return self.sockid[20:24] if self.family == socket.AF_INET else self.sockid[20:36]


def _full_fmt(size: int) -> struct.Struct:
    return struct.Struct(f"=IH10xBB2x48s4xIIxxxxI{size - _MSG_MIN}x")


def sockets(
    family: int, mask: int, ports: Iterable[int] | None, sock: socket.socket | None = None
) -> Iterator[RawSocket]:
    """Every matching socket, decoded (listeners, destroy candidates: not for bulk counting)."""
    own = sock is None
    sk = open_socket() if sock is None else sock
    try:
        sk.send(dump_request(family, mask, ports))
        for rows in _recv_rows(sk, _full_fmt):
            for _ln, _typ, fam, state, sockid, rq, wq, inode in rows:
                yield RawSocket(fam, state, sockid, rq, wq, inode)
    except PermissionError as exc:
        raise NetlinkRefused(exc.errno, f"sock_diag dump refused: {exc.strerror}") from exc
    finally:
        if own:
            sk.close()


def destroy(targets: Iterable[RawSocket], batch: int = 256) -> int:
    """SOCK_DESTROY each socket (as `ss -K`); returns how many the kernel closed.

    Sockets already gone (ENOENT) are skipped; DestroyUnsupported without CONFIG_INET_DIAG_DESTROY;
    PermissionError without CAP_NET_ADMIN. Requests go in batches, one sendmsg per batch.
    """
    closed = 0
    with open_socket() as sk:
        pending: list[bytes] = []
        for raw in targets:
            body = _REQ.pack(raw.family, socket.IPPROTO_TCP, 0, ALL_STATES_MASK | 1 << 12, raw.sockid)
            pending.append(
                _HDR.pack(16 + len(body), SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, len(pending) + 1, 0) + body
            )
            if len(pending) >= batch:
                closed += _send_batch(sk, pending)
                pending = []
        if pending:
            closed += _send_batch(sk, pending)
    return closed


def _send_batch(sk: socket.socket, messages: list[bytes]) -> int:
    sk.send(b"".join(messages))
    acks = closed = 0
    buf = bytearray(1 << 16)
    for _ in range(len(messages) + 16):
        if acks >= len(messages):
            break
        n = sk.recv_into(buf)
        off = 0
        while off + 20 <= n:
            ln, typ = _LEN_TYPE.unpack_from(buf, off)
            if typ == NLMSG_ERROR:
                acks += 1
                (code,) = _ERR.unpack_from(buf, off + 16)
                if code == 0:
                    closed += 1
                elif -code not in (errno.ENOENT, errno.ESRCH):
                    _raise_nlerr(code, "sock_diag destroy")
            off += max((ln + 3) & ~3, 16)
    return closed
