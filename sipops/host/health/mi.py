"""OpenSIPS MI over HTTP (mi_http, JSON-RPC 2.0) with urllib, and the replies the checks read.

Not the `opensips` package from PyPI: it is GPL-3.0 (sipops is MIT), its HTTP connector has no
timeout (a hung OpenSIPS would hang every cron run) and turns off TLS verification, and the
checks must run on hosts that have python3 and nothing else. Its HTTP client is these 20 lines.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

METHOD_NOT_FOUND = -32601


class MIError(Exception):
    """MI unreachable, or an error reply; `code` is the JSON-RPC error code when there was one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def mi_call(url: str, method: str, params: dict[str, Any] | None = None, timeout: float = 3.0) -> Any:
    """Run one MI command; returns the JSON-RPC `result`."""
    body = {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": secrets.randbelow(1 << 31)}
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            text = reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise MIError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise MIError(f"{url}: {reason}") from None
    except (TimeoutError, OSError) as exc:
        raise MIError(f"{url}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise MIError(f"{url}: reply is not JSON: {text[:80]!r}") from None
    if not isinstance(data, dict):
        raise MIError(f"{url}: reply is not a JSON-RPC object")
    error = data.get("error")
    if isinstance(error, dict):
        raise MIError(f"{method}: {error.get('message', 'error')}", error.get("code"))
    if "result" not in data:
        raise MIError(f"{method}: reply without a result")
    return data["result"]


@dataclass(frozen=True)
class Gateway:
    group: str  # "dispatcher set 1" / "lb group 1"
    uri: str
    up: bool
    state: str


def parse_ds_list(result: Any) -> list[Gateway]:
    """ds_list: PARTITIONS[].SETS[].Destinations[] with state Active / Inactive / Probing."""
    out: list[Gateway] = []
    partitions = result.get("PARTITIONS", []) if isinstance(result, dict) else []
    for part in partitions:
        prefix = "" if part.get("name", "default") == "default" else f"{part.get('name')}/"
        for ds_set in part.get("SETS", []) or []:
            for dst in ds_set.get("Destinations", []) or []:
                state = str(dst.get("state", "?"))
                out.append(Gateway(f"set {prefix}{ds_set.get('id')}", str(dst.get("URI")), state == "Active", state))
    return out


def parse_lb_list(result: Any) -> list[Gateway]:
    """lb_list: Destinations[] with enabled yes/no."""
    out: list[Gateway] = []
    dsts = result.get("Destinations", []) if isinstance(result, dict) else []
    for dst in dsts:
        enabled = str(dst.get("enabled", "?"))
        state = "enabled" if enabled == "yes" else "disabled"
        out.append(Gateway(f"group {dst.get('group')}", str(dst.get("uri")), enabled == "yes", state))
    return out
