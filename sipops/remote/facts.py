"""Facts: what a host has now, gathered in one round trip (one agent run) per host."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from sipops.host.agent import cfg_sockets
from sipops.remote.runner import Runner, call
from sipops.render import HostRender, RenderedFile

_SYSTEMCTL = re.compile(r"\bsystemctl\s+(?:--\S+\s+)*(restart|reload|reload-or-restart|try-restart|start)\s+([^;&|]+)")
_SYSCTL_LINE = re.compile(r"^\s*([a-z0-9_.]+)\s*=\s*(.*?)\s*$", re.I)


@dataclass(frozen=True)
class RemoteFile:
    sha256: str
    mode: str
    owner: str
    group: str
    size: int = 0
    content: bytes | None = None  # only when asked for (diff of a changed file)
    kind: str = "file"  # "file", or what else sits at the path


@dataclass
class HostFacts:
    os: dict[str, str]
    init: str
    files: dict[str, RemoteFile | None]  # None: absent
    sysctl: dict[str, str | None] = field(default_factory=dict)
    nofile: int | None = None  # open-files limit of the running OpenSIPS
    commands: dict[str, str | None] = field(default_factory=dict)  # validator command -> path or None
    opensips: dict[str, str] | None = None  # bin, version, prefix
    units: dict[str, dict[str, str]] = field(default_factory=dict)  # unit -> load, active
    users: dict[str, bool] = field(default_factory=dict)
    groups: dict[str, bool] = field(default_factory=dict)
    uid: int = 0
    mi: dict[str, Any] | None = None  # the MI reply asked for (diff: ds_list / lb_list): result or error
    listen_missing: list[str] = field(default_factory=list)  # cfg addresses the host cannot bind
    addresses: list[str] = field(default_factory=list)  # the host's own (sent when some are missing)

    @property
    def os_name(self) -> str:
        return self.os.get("PRETTY_NAME") or self.os.get("ID", "unknown OS")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validator_command(f: RenderedFile) -> str | None:
    """The program a file's validator runs (`rsyslogd`, `/usr/sbin/opensips`)."""
    if not f.validate:
        return None
    words = shlex.split(f.validate)
    while words and "=" in words[0] and not words[0].startswith("/"):  # VAR=x cmd
        words.pop(0)
    return words[0] if words else None


def handler_units(command: str) -> list[str]:
    """Units a handler (re)starts or reloads: what the health gate must find active afterwards."""
    units: list[str] = []
    for m in _SYSTEMCTL.finditer(command):
        for u in m.group(2).split():
            if u.startswith("-"):
                continue
            units.append(u if "." in u else u + ".service")
    return units


def sysctl_keys(rendered: HostRender) -> list[str]:
    """Kernel settings the managed sysctl.d files set."""
    keys: list[str] = []
    for f in rendered.files:
        if f.dest.startswith("/etc/sysctl.d/"):
            for line in f.content.decode(errors="replace").splitlines():
                m = _SYSCTL_LINE.match(line)
                if m and not line.lstrip().startswith(("#", ";")):
                    keys.append(m.group(1))
    return keys


def facts_request(rendered: HostRender, *, content: bool, root: str = "") -> dict[str, Any]:
    """The agent request; with content=True, files whose hash differs come back with their bytes."""
    files = [
        {
            "path": f.dest,
            "want_sha256": sha256(f.content),
            "want": [f"{int(f.mode, 8):04o}", f.owner, f.group],
            # a cfg that may only need its routes reloaded: its live bytes say which (sent only if they differ)
            "content": content or f.notify_routes is not None,
        }
        for f in rendered.files
    ]
    files += [{"path": r.dest, "retired": True, "content": content} for r in rendered.retired]
    units = sorted({u for cmd in rendered.handlers.values() for u in handler_units(cmd)})
    cmds = sorted({c for f in rendered.files if (c := validator_command(f))})
    return {
        "op": "facts",
        "root": root,
        "files": files,
        "sysctl": sysctl_keys(rendered),
        "commands": cmds,
        "units": units,
        "users": sorted({f.owner for f in rendered.files}),
        "groups": sorted({f.group for f in rendered.files}),
        "opensips_bin": rendered.host.vars.get("opensips_bin") or _opensips_bin(rendered),
        "listen": listen_addresses(rendered),
        # The gateway sets OpenSIPS runs, to compare with the inventory's (one local MI call on the host).
        "mi": gateway_query(rendered),
    }


def opensips_cfg(rendered: HostRender) -> RenderedFile | None:
    """The host's opensips.cfg: the file OpenSIPS validates."""
    for f in rendered.files:
        c = validator_command(f)
        if c and c.rsplit("/", 1)[-1] == "opensips":
            return f
    return None


def _opensips_bin(rendered: HostRender) -> str:
    cfg = opensips_cfg(rendered)
    return (cfg and validator_command(cfg)) or "opensips"


def health_config(rendered: HostRender) -> dict[str, Any] | None:
    """The host's rendered health.json (what the inventory says OpenSIPS runs), if it has one."""
    for f in rendered.files:
        if f.dest.endswith("/sipops/health.json"):
            data = json.loads(f.content)
            return data if isinstance(data, dict) else None
    return None


def gateway_query(rendered: HostRender) -> dict[str, str] | None:
    """The MI listing of the host's gateway sets (ds_list / lb_list), when it balances over gateways."""
    cfg = health_config(rendered)
    if not cfg or not cfg.get("gateway_engine"):
        return None
    return {"url": cfg["mi_url"], "method": "ds_list" if cfg["gateway_engine"] == "dispatcher" else "lb_list"}


def listen_addresses(rendered: HostRender) -> list[str]:
    """Addresses the rendered opensips.cfg binds (wildcards need no check)."""
    cfg = opensips_cfg(rendered)
    if cfg is None:
        return []
    found = {s["address"] for s in cfg_sockets(cfg.content.decode(errors="replace"))}
    return sorted(found - {"0.0.0.0", "::", "*"})


def parse_facts(reply: dict[str, Any]) -> HostFacts:
    """The agent's facts reply as HostFacts."""
    files: dict[str, RemoteFile | None] = {}
    for path, st in reply["files"].items():
        if st is None:
            files[path] = None
        elif "sha256" not in st:
            files[path] = RemoteFile("", "", "", "", kind=str(st.get("type", "other")))
        else:
            raw = st.get("content")
            files[path] = RemoteFile(
                st["sha256"],
                st["mode"],
                st["owner"],
                st["group"],
                int(st.get("size", 0)),
                bytes.fromhex(raw) if raw is not None else None,
            )
    return HostFacts(
        os=dict(reply.get("os", {})),
        init=str(reply.get("init", "unknown")),
        files=files,
        sysctl=dict(reply.get("sysctl", {})),
        nofile=reply.get("nofile"),
        commands=dict(reply.get("commands", {})),
        opensips=reply.get("opensips"),
        units=dict(reply.get("units", {})),
        users=dict(reply.get("users", {})),
        groups=dict(reply.get("groups", {})),
        uid=int(reply.get("uid", 0)),
        mi=reply.get("mi"),
        listen_missing=list(reply.get("listen_missing", [])),
        addresses=list(reply.get("addresses", [])),
    )


def gather(runner: Runner, rendered: HostRender, *, content: bool = False, root: str = "") -> HostFacts:
    """One agent run on the host: every fact the plan needs (and changed files' bytes for diff)."""
    return parse_facts(call(runner, facts_request(rendered, content=content, root=root), timeout=60))
