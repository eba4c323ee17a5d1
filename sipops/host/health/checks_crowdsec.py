"""The CrowdSec LAPI link of the watcher: up, or down since when and why (stdlib only, shipped in the bundle).

The watcher's link thread keeps its state in crowdsec.json in the watcher's state directory
(sipops.host.monitor.fleetlink); this check only reads that file, it never talks to the LAPI itself.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from typing import Any

from sipops.host.health.config import HealthConfig
from sipops.host.health.model import CheckResult, Metric, Status
from sipops.host.health.sources import Sources


def _state_file() -> str:
    return os.path.join(os.environ.get("SIPOPS_STATE_DIR") or "/var/lib/sipops", "crowdsec.json")


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def check_crowdsec(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """The LAPI link: OK when up; WARNING when down (with since when and the reason), or never connected."""
    path = _state_file()
    try:
        with open(path) as fh:
            data = json.load(fh)
        link = data["link"]
    except FileNotFoundError:
        return CheckResult(
            "crowdsec", Status.WARNING, f"LAPI {cfg.crowdsec}: the watcher has no link state yet ({path})"
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return CheckResult("crowdsec", Status.UNKNOWN, f"{path}: {exc}")
    up = link.get("up") is True
    since = float(link.get("since") or 0)
    waiting = int(link.get("outbox") or 0)
    applied = len(data.get("decisions") or {})
    metrics = [
        Metric("crowdsec_lapi_up", int(up), minimum=0, maximum=1, help="1 when the watcher reaches the CrowdSec LAPI"),
        Metric("crowdsec_decisions", applied, minimum=0, help="CrowdSec decisions applied to the ban sets"),
        Metric("crowdsec_outbox", waiting, minimum=0, help="bans waiting to reach the LAPI"),
    ]
    url = link.get("url") or cfg.crowdsec
    if up:
        return CheckResult("crowdsec", Status.OK, f"LAPI {url} up; {applied} decisions applied", metrics)
    # timezone.utc, not datetime.UTC: the health bundle runs on Python 3.9 hosts too.
    at = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if since else "?"  # noqa: UP017
    what = "refuses this host's credentials" if link.get("auth") else "down"
    why = str(link.get("error") or "never reached")
    return CheckResult(
        "crowdsec",
        Status.WARNING,
        f"LAPI {url} {what} since {at} ({_ago(time.time() - since)}): {why}; {waiting} bans waiting to be sent",
        metrics,
    )
