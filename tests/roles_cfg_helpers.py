"""Render opensips.cfg (and the gateway tables) for every combination of the SIP roles."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml

from sipops.inventory import load_inventory
from sipops.lint import CFG_TEMPLATE
from sipops.render import HostRender, render_host

SIP_ROLES = ("registrar", "proxy", "loadbalancer")
COMBINATIONS: list[tuple[str, ...]] = [
    c for n in range(len(SIP_ROLES) + 1) for c in itertools.combinations(SIP_ROLES, n)
]

GATEWAYS: list[dict[str, Any]] = [
    {
        "name": "fs1",
        "address": "192.0.2.21",
        "port": 5080,
        "set": 1,
        "weight": 50,
        "kind": "media",
        "description": "FreeSWITCH 1",
    },
    {
        "name": "fs2",
        "address": "192.0.2.22",
        "port": 5080,
        "set": 1,
        "weight": 50,
        "kind": "media",
        "probe": False,
        "resources": "pstn=32",
    },
    {
        "name": "trunk",
        "address": "192.0.2.40",
        "port": 5060,
        "transport": "tcp",
        "set": 2,
        "kind": "trunk",
        "priority": 1,
        "description": "PSTN: trunk",
    },
]


def combo_name(roles: tuple[str, ...]) -> str:
    return "-".join(r[:3] for r in roles) or "base"


def write_combo_inventory(path: Path, common: dict[str, Any] | None = None, **per_role: Any) -> Path:
    """One host per role combination; `common` vars go to defaults, keyword vars to hosts with that role."""
    hosts: dict[str, Any] = {}
    for i, roles in enumerate(COMBINATIONS):
        hvars: dict[str, Any] = {}
        if "registrar" in roles:
            hvars.update(registrar_auth=True, auth_realm="sip.example.net")
        if "proxy" in roles and "loadbalancer" not in roles:
            hvars["proxy_outbound"] = "sip:192.0.2.20:5060"
        if "loadbalancer" in roles:
            hvars["gateways"] = GATEWAYS
        for role, values in per_role.items():
            if role in roles:
                hvars.update(values)
        hosts[combo_name(roles)] = {"address": f"127.0.0.{i + 1}", "roles": list(roles), "vars": hvars}
    path.write_text(yaml.safe_dump({"defaults": {"vars": common or {}}, "hosts": hosts}, sort_keys=False))
    return path


def render_all(inventory: Path) -> dict[str, HostRender]:
    inv = load_inventory(inventory)
    return {name: render_host(inv, host) for name, host in inv.hosts.items()}


def cfg_of(rendered: HostRender) -> str:
    return next(f.content.decode() for f in rendered.files if f.src == CFG_TEMPLATE)


def file_of(rendered: HostRender, suffix: str) -> str:
    return next(f.content.decode() for f in rendered.files if f.dest.endswith(suffix))
