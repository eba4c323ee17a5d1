"""The lab's inventory.yaml and known_hosts: how the rest of sipops (and the tests) reach lab hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sipops.lab.rootfs import CLIENT_KEY
from sipops.lab.state import LabState

INVENTORY_FILE = "inventory.yaml"
KNOWN_HOSTS = Path("ssh") / "known_hosts"


def known_hosts_text(keys: dict[str, str]) -> str:
    """`ADDRESS KEYTYPE BASE64` lines, one per host (port 22, so no [host]:port form)."""
    return "".join(f"{address} {key}\n" for address, key in sorted(keys.items()))


def host_roles(index: int, count: int) -> list[str]:
    """Roles of lab host `index` (1-based) in a lab of `count` hosts."""
    # TODO(lab-roles): h1/h2 get [registrar, proxy] and h3 [loadbalancer] with a `gateways` var
    # (pointing at h1/h2) once the loadbalancer role defines that variable's format.
    return ["proxy"]


def inventory_data(state: LabState) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "ssh": {"user": "root", "port": 22, "key": str(CLIENT_KEY), "known_hosts": str(KNOWN_HOSTS)},
    }
    if state.opensips_prefix:
        defaults["vars"] = {"opensips_install": "existing", "opensips_prefix": state.opensips_prefix}
    hosts = state.hosts()
    return {
        "defaults": defaults,
        "hosts": {m.name: {"address": m.address, "roles": host_roles(i, len(hosts))} for i, m in enumerate(hosts, 1)},
    }


def inventory_text(state: LabState) -> str:
    header = [
        f"# Written by `sipops lab up` in {state.dir.resolve()}; `sipops lab down` removes it.",
        "# Paths are relative to this file's folder.",
    ]
    if state.attackers():
        listed = ", ".join(f"{m.name} {m.address}" for m in state.attackers())
        header.append(f"# Attackers (not hosts; `sipops lab exec NAME -- CMD`): {listed}")
    body = yaml.safe_dump(inventory_data(state), sort_keys=False, default_flow_style=None)
    return "\n".join(header) + "\n" + body


def write_files(state: LabState, host_keys: dict[str, str]) -> Path:
    """Write ssh/known_hosts and inventory.yaml into the lab dir; returns the inventory path."""
    (state.dir / KNOWN_HOSTS).parent.mkdir(parents=True, exist_ok=True)
    (state.dir / KNOWN_HOSTS).write_text(known_hosts_text(host_keys))
    path = state.dir / INVENTORY_FILE
    path.write_text(inventory_text(state))
    return path
