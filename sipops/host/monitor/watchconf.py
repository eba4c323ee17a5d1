"""The watcher's settings: /etc/sipops/watch.json, rendered from the common role's variables (their one
declaration, roles/common.yaml) by templates/sipops/watch.json.j2, read by `sipops watch --config`.

The file is one JSON object keyed by the role's variable names (VARS). `sipops watch` flags override single
keys for an ad-hoc run; without a file the role's defaults are the base (the CLI loads them). A bad file is
one line naming the file and the key (WatchConfigError), exit 2: the push validator runs the same check.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sipops.host.monitor.ban import MAX_TIMEOUT, parse_duration
from sipops.host.monitor.rules import Thresholds
from sipops.host.safefile import UnreadableFile, read_text

DEFAULT_PATH = "/etc/sipops/watch.json"

# role variable -> kind. "count": an int >= 1; "rate": a number > 0; "duration": nft time (10m) or seconds.
VARS: dict[str, str] = {
    "flood_max_conns_per_ip": "count",
    "flood_syn_per_sec": "rate",
    "flood_line_syn_per_sec": "rate",
    "ban_timeout": "duration",
    "tcp_max_connections": "count",
    "watch_syn_recv_per_ip": "count",
    "watch_syn_ban_timeout": "duration",
    "watch_ban_factor": "rate",
    "watch_ban_max": "duration",
    "watch_close_wait_alert": "count",
    "watch_scanner_ban_timeout": "duration",
    "watch_interval": "rate",
    "watch_ports": "ports",  # the ports to scan (the template resolves the role's "empty: SIP TCP ports")
    "watch_allow": "allow",  # every never-banned source (allowlist, ssh_allow, gateways, fleet, watch_allow)
    "log_file": "path?",  # the OpenSIPS log to follow (SIPOPS-SCANNER, pike)
}
OPTIONAL = {"watch_ports", "watch_allow", "log_file"}  # the others must be there


class WatchConfigError(Exception):
    """One line: where (file or flag), which key, what is wrong."""


@dataclass(frozen=True)
class WatchSettings:
    """What the watcher runs with (WatchConfig's part of it, plus what the CLI needs)."""

    thresholds: Thresholds
    ports: list[int] | None
    interval: float
    ban_factor: float
    ban_max: int
    scanner_ban_seconds: int
    pike_ban_seconds: int
    sip_log: str | None
    allow: list[str] = field(default_factory=list)


def _value(kind: str, value: Any) -> Any:
    """The checked value, or ValueError saying what it should be."""
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{value!r} is not a whole number of at least 1")
        return value
    if kind == "rate":
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or value != value:
            raise ValueError(f"{value!r} is not a number above 0")
        return float(value)
    if kind == "duration":
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"{value!r} is not a duration (e.g. 90s, 10m, 1h)")
        seconds = parse_duration(value)
        if not 1 <= seconds <= MAX_TIMEOUT:
            raise ValueError(f"{value!r} is not between 1s and 30d")
        return seconds
    if kind == "ports":
        if not isinstance(value, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in value
        ):
            raise ValueError(f"{value!r} is not a list of ports 1-65535")
        return sorted(set(value)) or None
    if kind == "allow":
        if not isinstance(value, list) or not all(isinstance(a, str) and a.strip() for a in value):
            raise ValueError(f"{value!r} is not a list of addresses, networks or host names")
        return list(value)
    if value is not None and not (isinstance(value, str) and value.startswith("/")):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


def settings(values: Mapping[str, Any], where: Mapping[str, str] | str) -> WatchSettings:
    """WatchSettings from role-variable values. where: the file's name, or per key where it came from (a
    flag, the file, the role's defaults; "*": any other key) for the error line."""

    def origin(key: str) -> str:
        return where if isinstance(where, str) else where.get(key, where.get("*", "watch settings"))

    unknown = sorted(set(values) - set(VARS))
    if unknown:
        raise WatchConfigError(f"{origin(unknown[0])}: unknown key {unknown[0]!r} (known: {', '.join(VARS)})")
    v: dict[str, Any] = {}
    for key, kind in VARS.items():
        if key not in values:
            if key in OPTIONAL:
                v[key] = None if key != "watch_allow" else []
                continue
            raise WatchConfigError(f"{origin(key)}: {key} is missing")
        try:
            v[key] = _value(kind, values[key])
        except ValueError as exc:
            raise WatchConfigError(f"{origin(key)}: {key}: {exc}") from None
    if v["flood_line_syn_per_sec"] <= v["flood_syn_per_sec"]:
        key = "flood_line_syn_per_sec"
        raise WatchConfigError(f"{origin(key)}: {key} must be above flood_syn_per_sec ({v['flood_syn_per_sec']:g})")
    if v["flood_max_conns_per_ip"] > v["tcp_max_connections"]:
        key = "flood_max_conns_per_ip"
        raise WatchConfigError(f"{origin(key)}: {key} is above tcp_max_connections ({v['tcp_max_connections']})")
    thresholds = Thresholds(
        max_conns_per_ip=v["flood_max_conns_per_ip"],
        new_per_sec=v["flood_syn_per_sec"],
        flood_per_sec=v["flood_line_syn_per_sec"],
        syn_recv_per_ip=v["watch_syn_recv_per_ip"],
        ban_seconds=v["ban_timeout"],
        syn_ban_seconds=v["watch_syn_ban_timeout"],
        tcp_max_connections=v["tcp_max_connections"],
        close_wait_alert=v["watch_close_wait_alert"],
    )
    return WatchSettings(
        thresholds=thresholds,
        ports=v["watch_ports"],
        interval=v["watch_interval"],
        ban_factor=v["watch_ban_factor"],
        ban_max=v["watch_ban_max"],
        scanner_ban_seconds=v["watch_scanner_ban_timeout"],
        pike_ban_seconds=v["ban_timeout"],
        sip_log=v["log_file"],
        allow=v["watch_allow"],
    )


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's object as is (keys checked by settings()); WatchConfigError for anything else."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise WatchConfigError(f"{path}: no such file") from None
    except UnreadableFile as exc:
        raise WatchConfigError(f"{path}{'' if exc.line is None else f':{exc.line}'}: {exc.message}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WatchConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise WatchConfigError(f"{path}: nested too deeply") from None
    if not isinstance(data, dict):
        raise WatchConfigError(f"{path}: not a JSON object of the watcher's settings")
    return data


def load(path: str | os.PathLike[str] = DEFAULT_PATH) -> WatchSettings:
    """read() + settings(): what `sipops watch --config PATH` runs with."""
    return settings(read(path), str(path))
