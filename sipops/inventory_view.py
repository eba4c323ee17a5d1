"""`sipops inventory show HOST`: a host's merged variables (secrets masked) and where each came from."""

from __future__ import annotations

import json
from typing import TextIO

from sipops.errors import ExitCode, InputError
from sipops.inventory import load_inventory, resolve_inventory_path
from sipops.secrets import mask_value


def show_host(host: str, out: TextIO, *, inventory: str | None, as_json: bool) -> int:
    """Print HOST's variables as a table or JSON; InputError for an unknown host or a group."""
    inv = load_inventory(resolve_inventory_path(inventory))
    if host not in inv.hosts:
        inv.select([host])  # raises with a did-you-mean
        raise InputError(f"'{host}' is a group; name one host", file=inv.file, field="HOST")
    h = inv.hosts[host]
    if as_json:
        data = {
            "host": h.name,
            "address": h.address,
            "roles": [r.name for r in h.role_objs],
            "groups": h.groups,
            "vars": {k: {"value": mask_value(k, h.vars[k]), "from": str(h.origins[k])} for k in sorted(h.vars)},
        }
        out.write(json.dumps(data, indent=2, default=str) + "\n")
        return ExitCode.OK
    out.write(f"host {h.name}  address {h.address}  ssh {h.ssh.user}@{h.address}:{h.ssh.port}\n")
    out.write(f"roles: {', '.join(r.name for r in h.role_objs)}   groups: {', '.join(h.groups) or '-'}\n")
    width = max(len(k) for k in h.vars) if h.vars else 0
    for k in sorted(h.vars):
        value = json.dumps(mask_value(k, h.vars[k]), default=str)
        if len(value) > 70:
            value = value[:67] + "..."
        out.write(f"  {k:<{width}}  {value:<40}  <- {h.origins[k]}\n")
    return ExitCode.OK
