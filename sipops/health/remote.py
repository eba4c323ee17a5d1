"""`sipops health HOST…`: the checks run ON each host (one agent run, sipops.remote.ship); the hosts go through
the fleet executor (sipops.health.run.check_hosts).

The config is the host's health.json rendered from the inventory on the controller, so thresholds
are the same as the cron job's. Remote runs keep their own state on the host (`remote.json`), so
they never take the cron job's log lines or status changes away from it.
"""

from __future__ import annotations

from typing import Any

from sipops.host.health.config import HealthConfig, config_from_dict
from sipops.host.health.model import CheckResult, Report, Status
from sipops.inventory import Host, Inventory
from sipops.remote.runner import RemoteError, Runner, call

CONFIG_TEMPLATE = "sipops/health.json.j2"
REMOTE_TIMEOUT = 120
ENTRY = "sipops.host.health.main:remote_entry"


def host_config(inv: Inventory, host: Host) -> HealthConfig:
    """The host's health.json: the very file push renders (one render of the host, no second context)."""
    from sipops.remote.facts import health_config
    from sipops.render import render_host

    return config_from_dict(health_config(render_host(inv, host)) or {}, f"{CONFIG_TEMPLATE} for {host.name}")


def _failed(host: str, message: str) -> Report:
    return Report(host, [CheckResult("ssh", Status.UNKNOWN, message)])


def parse_reply(host: str, reply: dict[str, Any]) -> Report:
    """The report in the host's reply; an UNKNOWN report when it says it has none."""
    if reply.get("error"):
        return _failed(host, str(reply["error"]))
    if not isinstance(reply.get("report"), dict):
        return _failed(host, "no report from the checks on the host")
    report = Report.from_dict(reply["report"])
    report.host = host
    return report


def run_remote(
    runner: Runner, cfg: HealthConfig, *, state_name: str = "remote", only: list[str] | None = None
) -> Report:
    """Run the checks on the host behind `runner` (python3 needed there, nothing else; sudo when not root)."""
    payload = {"config": cfg.as_dict(), "state_name": state_name, "only": only or []}
    try:
        reply = call(runner, payload, timeout=REMOTE_TIMEOUT, entry=ENTRY)
    except RemoteError as exc:
        return _failed(cfg.host, str(exc))
    return parse_reply(cfg.host, reply)
