"""What the checks need to know about a host: sockets, paths, limits and thresholds.

On a host, `sipops health --local` reads /etc/sipops/health.json (rendered by push from
templates/sipops/health.json.j2), so it needs no inventory. From the controller, the same
template is rendered from the inventory and shipped with the checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/sipops/health.json")
DEFAULT_STATE_DIR = "/var/lib/sipops/health"

CHECKS = (
    "process",
    "sockets",
    "sip_options",
    "mi",
    "shmem",
    "load",
    "tcp_conns",
    "fds",
    "log_errors",
    "disk",
    "watcher",
    "bans",
    "gateways",
    "relays",
    "crowdsec",
)


class ConfigError(Exception):
    """The health configuration is unusable; the message names the file and the field."""


@dataclass(frozen=True)
class Socket:
    proto: str
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.proto}:{host}:{self.port}"


@dataclass(frozen=True)
class Thresholds:
    """Warning/critical levels; None means the level is not used. Percentages are 0-100."""

    options_timeout_ms: int = 2000
    options_rtt_warning_ms: int | None = 500
    shm_warning: int | None = 80
    shm_critical: int | None = 95
    load_warning: int | None = 80
    load_critical: int | None = 95
    tcp_conns_warning: int | None = 80  # percent of tcp_max_connections
    tcp_conns_critical: int | None = 95
    fds_warning: int | None = 80  # percent of the process's open-files limit
    fds_critical: int | None = 95
    disk_free_warning: int | None = 15  # percent free on the log partition
    disk_free_critical: int | None = 5
    log_errors_warning: int | None = 1  # new ERROR/CRIT lines since the last run
    log_errors_critical: int | None = 100
    bans_warning: int | None = 1000
    bans_critical: int | None = None


@dataclass(frozen=True)
class HealthConfig:
    host: str = "localhost"
    sockets: tuple[Socket, ...] = ()
    mi_url: str = "http://127.0.0.1:8888/mi"
    mi_timeout_ms: int = 3000
    log_file: str = "/var/log/opensips.log"
    pid_file: str = "/run/opensips/opensips.pid"
    process_name: str = "opensips"
    tcp_max_connections: int = 2048
    open_files_limit: int | None = None
    watcher_unit: str = "sipops-watch.service"
    sipops_bin: str = "/opt/sipops/bin/sipops"
    gateway_engine: str | None = None  # dispatcher | load_balancer | None (no gateway check)
    # What the inventory says OpenSIPS runs: (set/group, URI); None: not known (no drift check).
    gateways: tuple[tuple[str, str], ...] | None = None
    # Media relays (rtpengine ng sockets) this host uses or is: (name, address, port).
    relays: tuple[tuple[str, str, int], ...] = ()
    state_dir: str = DEFAULT_STATE_DIR
    textfile_dir: str | None = None
    alert_cmd: str | None = None
    checks: tuple[str, ...] = ()  # empty: every check that applies
    watcher: bool = True  # check sipops-watch and its bans
    crowdsec: str = ""  # the CrowdSec LAPI URL the watcher follows ("": none, no check)
    thresholds: Thresholds = field(default_factory=Thresholds)

    def enabled(self) -> list[str]:
        """Check names to run, in report order."""
        wanted = self.checks or CHECKS
        out = [c for c in CHECKS if c in wanted]
        if not self.checks:
            skip = {"gateways"} if self.gateway_engine is None else set()
            skip |= set() if self.relays else {"relays"}
            skip |= set() if self.watcher else {"watcher", "bans"}
            skip |= set() if self.crowdsec and self.watcher else {"crowdsec"}
            out = [c for c in out if c not in skip]
        return out

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["sockets"] = [{"proto": s.proto, "address": s.address, "port": s.port} for s in self.sockets]
        data["checks"] = list(self.checks)
        data["gateways"] = None if self.gateways is None else [list(g) for g in self.gateways]
        data["relays"] = [list(r) for r in self.relays]
        data["thresholds"] = {f.name: getattr(self.thresholds, f.name) for f in fields(Thresholds)}
        return data


def _int_or_none(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected a whole number or null, got {value!r}")
    return value


def _gateway(raw: Any, where: str) -> tuple[str, str]:
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) for x in raw)):
        raise ConfigError(f"{where}: expected [set or group, URI]")
    return raw[0], raw[1]


def config_from_dict(data: dict[str, Any], source: str = "health config") -> HealthConfig:
    """Validate a decoded health.json; unknown keys are errors (a typo must not silently use a default)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    known = {f.name for f in fields(HealthConfig)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{key}'")
    values = dict(data)
    sockets = []
    for i, raw in enumerate(values.pop("sockets", None) or []):
        try:
            sockets.append(Socket(str(raw["proto"]), str(raw["address"]), int(raw["port"])))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{source}: sockets[{i}]: expected proto, address and port") from None
    raw_gw = values.pop("gateways", None)
    if raw_gw is not None and not isinstance(raw_gw, list):
        raise ConfigError(f"{source}: gateways: expected a list")
    gateways = None
    if raw_gw is not None:
        gateways = tuple(_gateway(raw, f"{source}: gateways[{i}]") for i, raw in enumerate(raw_gw))
    relays = []
    for i, raw in enumerate(values.pop("relays", None) or []):
        if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[2], int) and not isinstance(raw[2], bool)):
            raise ConfigError(f"{source}: relays[{i}]: expected [name, address, port]")
        relays.append((str(raw[0]), str(raw[1]), raw[2]))
    raw_t = values.pop("thresholds", None) or {}
    names = {f.name for f in fields(Thresholds)}
    for key in raw_t:
        if key not in names:
            raise ConfigError(f"{source}: thresholds: unknown key '{key}'")
    levels: dict[str, Any] = {k: _int_or_none(v, f"{source}: thresholds.{k}") for k, v in raw_t.items()}
    if "options_timeout_ms" in levels and not levels["options_timeout_ms"]:
        raise ConfigError(f"{source}: thresholds.options_timeout_ms: expected a positive number of milliseconds")
    thresholds = Thresholds(**levels)
    checks = tuple(values.pop("checks", None) or ())
    for name in checks:
        if name not in CHECKS:
            raise ConfigError(f"{source}: checks: unknown check '{name}' (known: {', '.join(CHECKS)})")
    try:
        return HealthConfig(
            sockets=tuple(sockets),
            gateways=gateways,
            relays=tuple(relays),
            thresholds=thresholds,
            checks=checks,
            **values,
        )
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: Path = DEFAULT_CONFIG) -> HealthConfig:
    """Read health.json; a missing file gives the defaults (no sockets: the socket checks say so)."""
    from sipops.host.safefile import UnreadableFile, read_text

    try:
        text = read_text(path)  # size cap, regular file, UTF-8: sipops.host.safefile's rule
    except FileNotFoundError:
        return HealthConfig()
    except UnreadableFile as exc:
        raise ConfigError(f"{path}{'' if exc.line is None else f':{exc.line}'}: {exc.message}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise ConfigError(f"{path}: nested too deeply") from None
    try:
        return config_from_dict(data, str(path))
    except (TypeError, AttributeError, ValueError) as exc:
        # config_from_dict names the keys it knows to be wrong; this is for shapes it does not expect
        # (a number where a list goes...) in a file edited by hand: still one line, never a traceback.
        raise ConfigError(f"{path}: unexpected content ({exc})") from None
