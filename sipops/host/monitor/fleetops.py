"""What `sipops ban --fleet` and `sipops bans` need from the CrowdSec link (stdlib only, runs on hosts).

ban --fleet: the ban goes to the LAPI as an alert with its decision (as the watcher's own bans do),
so every host following the LAPI applies it within a poll; this host bans it locally as well.
bans: the decisions the watcher applied from the LAPI, with where each came from (another sipops
host, a CrowdSec scenario, cscli, the community blocklist), read from the link's state file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sipops.host.monitor.crowdsec import LapiClient, LapiError, LocalBan
from sipops.host.monitor.fleetlink import CREDENTIALS, load_credentials, read_state


def push_manual(addresses: list[str], seconds: int, reason: str, path: Path = CREDENTIALS) -> str:
    """Send the bans to the LAPI; the line to show (an error names the LAPI and what failed)."""
    try:
        creds = load_credentials(path)
    except (OSError, ValueError) as exc:
        return f"sipops: error: --fleet: {path}: {exc}".splitlines()[0]
    if creds is None:
        return f"sipops: error: --fleet: this host has no CrowdSec LAPI ({path} is missing; sipops push registers it)"
    try:
        client = LapiClient(
            creds["url"], machine_id=creds["machine_id"], password=creds["password"], api_key=creds["api_key"]
        )
        now = time.time()
        client.push([LocalBan(a, seconds, "manual", reason, now) for a in addresses], creds["host"])
    except (LapiError, ValueError) as exc:
        return f"sipops: error: --fleet: {exc}"
    return f"sent to the fleet through the CrowdSec LAPI {client.url}: {', '.join(addresses)}"


def fleet_rows(now: float | None = None, directory: Path | None = None) -> list[dict[str, Any]]:
    """Live decisions applied from the LAPI: address, origin, scenario, seconds left."""
    state = read_state(directory) or {}
    now = time.time() if now is None else now
    rows = []
    for addr, d in sorted((state.get("decisions") or {}).items()):
        left = float(d.get("until") or 0) - now
        if left > 0 and d.get("origin") != "local":
            rows.append(
                {"address": addr, "origin": d.get("origin"), "scenario": d.get("scenario"), "left": round(left)}
            )
    return rows
