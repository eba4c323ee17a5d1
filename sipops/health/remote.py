"""`sipops health HOST…`: the checks run ON each host (python3 -, one SSH round trip); the hosts go through
the fleet executor (sipops.health.run.check_hosts).

The config is the host's health.json rendered from the inventory on the controller, so thresholds
are the same as the cron job's. Remote runs keep their own state on the host (`remote.json`), so
they never take the cron job's log lines or status changes away from it.
"""

from __future__ import annotations

import json

from sipops.health.bundle import remote_script
from sipops.host.health.config import HealthConfig, config_from_dict
from sipops.host.health.model import CheckResult, Report, Status
from sipops.inventory import Host, Inventory
from sipops.remote.runner import Runner

CONFIG_TEMPLATE = "sipops/health.json.j2"
REMOTE_TIMEOUT = 120


def host_config(inv: Inventory, host: Host) -> HealthConfig:
    """The host's health.json: the very file push renders (one render of the host, no second context)."""
    from sipops.remote.facts import health_config
    from sipops.render import render_host

    return config_from_dict(health_config(render_host(inv, host)) or {}, f"{CONFIG_TEMPLATE} for {host.name}")


def _failed(host: str, message: str) -> Report:
    return Report(host, [CheckResult("ssh", Status.UNKNOWN, message)])


def describe_error(exc: BaseException) -> str:
    """One line; invoke's ThreadException hides the real error in its threads."""
    inner = [w.value for w in getattr(exc, "exceptions", []) if getattr(w, "value", None) is not None]
    if inner:
        exc = inner[0]
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0] if text else type(exc).__name__


def parse_reply(host: str, stdout: str) -> Report:
    """The report from the agent's last JSON line; an UNKNOWN report when there is none."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "report" in data:
            report = Report.from_dict(data["report"])
            if data.get("error"):
                return _failed(host, str(data["error"]))
            report.host = host
            return report
        if isinstance(data, dict) and "error" in data:
            return _failed(host, str(data["error"]))
    return _failed(host, "no report from the checks on the host")


def run_remote(
    runner: Runner, cfg: HealthConfig, *, state_name: str = "remote", only: list[str] | None = None
) -> Report:
    """Run the checks on the host behind `runner` (python3 needed there, nothing else; sudo when not root)."""
    payload = {"config": cfg.as_dict(), "state_name": state_name, "only": only or []}
    out = runner.exec("python3 -", remote_script(payload).encode(), REMOTE_TIMEOUT)
    if out.rc == 127:
        return _failed(cfg.host, "python3 not found on the host")
    if out.rc != 0:
        lines = out.stderr.decode("utf-8", "replace").strip().splitlines()
        return _failed(cfg.host, f"checks failed on the host: {lines[-1] if lines else out.rc}")
    return parse_reply(cfg.host, out.stdout.decode("utf-8", "replace"))
