"""The lab's inventory.yaml and known_hosts: how the rest of sipops (and the tests) reach lab hosts."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import yaml

from sipops.lab.rootfs import CLIENT_KEY
from sipops.lab.state import LabState

INVENTORY_FILE = "inventory.yaml"
OPEN_FILES_DEFAULT = 65536  # roles/common.yaml open_files_limit
KNOWN_HOSTS = Path("ssh") / "known_hosts"


def known_hosts_text(keys: dict[str, str]) -> str:
    """`ADDRESS KEYTYPE BASE64` lines, one per host (port 22, so no [host]:port form)."""
    return "".join(f"{address} {key}\n" for address, key in sorted(keys.items()))


def host_roles(index: int, count: int) -> list[str]:
    """Roles of lab host `index` (1-based) in a lab of `count` hosts: the last of three or more
    is a load balancer, the others registrar/proxy edge nodes (the field's usual fleet)."""
    if count >= 3 and index == count:
        return ["loadbalancer"]
    return ["registrar", "proxy"]


def _host_entry(index: int, hosts: list[Any]) -> dict[str, Any]:
    member = hosts[index - 1]
    roles = host_roles(index, len(hosts))
    entry: dict[str, Any] = {"address": member.address, "roles": roles}
    if roles == ["loadbalancer"]:
        # The edge nodes stand in for media servers: gateways the balancer probes and fails over between.
        entry["vars"] = {
            "gateways": [
                {"name": m.name, "address": m.address, "port": 5060, "set": 1, "kind": "media"} for m in hosts[:-1]
            ]
        }
    return entry


def inventory_data(state: LabState) -> dict[str, Any]:
    hosts = state.hosts()
    # This machine is the lab's operator: allowlisted (never banned, reaches MI) on every host.
    operator = state.naming.bridge_address
    lab_vars: dict[str, Any] = {"allowlist": [f"{operator}/32"]}
    # Hosts inherit this machine's hard RLIMIT_NOFILE and cannot raise it (nspawn drops CAP_SYS_RESOURCE):
    # OpenSIPS would refuse to start asking for more, so the lab inventory says what the lab can hold.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < OPEN_FILES_DEFAULT:
        lab_vars["open_files_limit"] = int(hard)
    defaults: dict[str, Any] = {
        "ssh": {"user": "root", "port": 22, "key": str(CLIENT_KEY), "known_hosts": str(KNOWN_HOSTS)},
        "vars": lab_vars,
    }
    if state.opensips_prefix:
        defaults["vars"].update(opensips_install="existing", opensips_prefix=state.opensips_prefix)
        if state.opensips_version:
            defaults["vars"]["opensips_version"] = state.opensips_version
    elif state.opensips_source:
        # `sipops install` uploads the tarball and builds OpenSIPS on each host (source install).
        defaults["vars"].update(
            opensips_install="source",
            opensips_source_url=state.opensips_source,
            opensips_version=state.opensips_version,
            opensips_release=state.opensips_release,
        )
    return {
        "defaults": defaults,
        "hosts": {m.name: _host_entry(i, hosts) for i, m in enumerate(hosts, 1)},
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
