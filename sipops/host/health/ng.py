"""rtpengine's ng control protocol: a cookie, a space and a bencoded dictionary, over UDP.

Standard library only (runs on hosts). Used by the relay health check and the tests; a proxy's
OpenSIPS speaks the same protocol through its rtpengine module.
"""

from __future__ import annotations

import os
import socket
from typing import Any

Bencodable = Any  # int, str, bytes, list or dict of those


class NgError(Exception):
    """No answer, or an answer that is not an ng reply to our cookie."""


def encode(value: Bencodable) -> bytes:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(encode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(encode(k) + encode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Any:
    """A bencoded value; byte strings come back as str (ng replies are text)."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise NgError(f"{len(data) - end} bytes after the bencoded value")
    return value


def _decode(data: bytes, i: int, depth: int) -> tuple[Any, int]:
    if depth > 32 or i >= len(data):
        raise NgError("truncated or too deeply nested bencode")
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if c in (b"l", b"d"):
        items: list[Any] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i, depth + 1)
            items.append(item)
            if i >= len(data):
                raise NgError("unterminated list or dictionary")
        if c == b"l":
            return items, i + 1
        return {str(items[k]): items[k + 1] for k in range(0, len(items) - 1, 2)}, i + 1
    if c.isdigit():
        colon = data.index(b":", i)
        n = int(data[i:colon])
        raw = data[colon + 1 : colon + 1 + n]
        if len(raw) != n:
            raise NgError("truncated string")
        return raw.decode("utf-8", "replace"), colon + 1 + n
    raise NgError(f"not bencode at byte {i}")


def command(address: str, port: int, message: dict[str, Any], timeout: float = 1.0) -> dict[str, Any]:
    """Send one ng command and return the reply dictionary (NgError on no or a foreign answer)."""
    cookie = os.urandom(6).hex().encode()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            s.send(cookie + b" " + encode(message))
            while True:
                data = s.recv(65535)
                head, _, body = data.partition(b" ")
                if head == cookie:
                    break
        except (TimeoutError, socket.timeout):  # noqa: UP041 (distinct before Python 3.10)
            raise NgError(f"no answer from {address}:{port} within {timeout:g} s") from None
        except OSError as exc:
            raise NgError(f"{address}:{port}: {exc.strerror or exc}") from None
    try:
        reply = decode(body)
    except (ValueError, NgError) as exc:
        raise NgError(f"{address}:{port}: unreadable reply: {exc}") from None
    if not isinstance(reply, dict):
        raise NgError(f"{address}:{port}: reply is not a dictionary")
    return reply


def ping(address: str, port: int, timeout: float = 1.0) -> bool:
    return command(address, port, {"command": "ping"}, timeout).get("result") == "pong"
