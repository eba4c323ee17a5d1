"""`sipops cron install|remove HOST…`: run the checks every minute on each host (cron.d or a systemd timer).

A thin wrapper over the push engine. The choices (timer, alert command, the command run) are kept in
tuned/<host>.yaml beside the inventory; the common role's health files - /etc/sipops/health.json,
/etc/cron.d/sipops-health or the sipops-health.service/.timer pair, the health zipapp on hosts without
sipops - then go through the push agent like every file sipops puts on a host: compared by hash,
backed up, swapped atomically, the form no longer wanted retired, its handlers run. A later
`sipops push` renders the same files and never brings the other form back; `remove` keeps
health_cron: false there for the same reason (health.json and the checks' state stay).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sipops.inventory import Host, Inventory, save_overlay
from sipops.remote.apply import PushOptions, RunnerFactory, push_host
from sipops.remote.runner import RemoteError, call
from sipops.render import HostRender, render_host

CONFIG_PATH = "/etc/sipops/health.json"
CRON_PATH = "/etc/cron.d/sipops-health"
SERVICE_PATH = "/etc/systemd/system/sipops-health.service"
TIMER_PATH = "/etc/systemd/system/sipops-health.timer"
# The common role's templates that make up the schedule (roles/common.yaml, templates/cron/).
TEMPLATES = frozenset(
    {
        "sipops/health.json.j2",
        "cron/sipops-health.j2",
        "cron/sipops-health.service.j2",
        "cron/sipops-health.timer.j2",
        "sipops:health.pyz",
    }
)


@dataclass
class CronResult:
    host: str
    ok: bool
    changed: list[str] = field(default_factory=list)
    error: str = ""


def schedule_vars(*, timer: bool, alert_cmd: str | None, command: str | None) -> dict[str, Any]:
    """What `cron install` keeps in tuned/<host>.yaml, so `sipops push` renders the same schedule."""
    values: dict[str, Any] = {"health_cron": True, "health_timer": timer, "health_command": command}
    if alert_cmd is not None:
        values["health_alert_cmd"] = alert_cmd
    return values


def schedule(inv: Inventory, host: Host, values: dict[str, Any]) -> HostRender:
    """The host's render once `values` are in its variables, cut to the schedule's files (and those of
    them it must not have any more): exactly what `sipops push` renders for them."""
    rendered = render_host(inv, dataclasses.replace(host, vars={**host.vars, **values}))
    files = [f for f in rendered.files if f.src in TEMPLATES]
    retired = [r for r in rendered.retired if r.src in TEMPLATES]
    return dataclasses.replace(rendered, files=files, retired=retired)


def command_for(runner_factory: RunnerFactory, host: Host, opts: PushOptions) -> str | None:
    """What the schedule runs: None (the default, `<sipops_bin> health`) when sipops is installed, else
    the host's python3 with the zipapp. One agent run answers (its facts op, asked for two commands);
    a host without python3 cannot run the agent: RemoteError says so."""
    sipops_bin = opts.root + str(host.vars["sipops_bin"])
    runner = runner_factory()
    try:
        req = {"op": "facts", "root": opts.root, "commands": [sipops_bin, "python3"]}
        found = call(runner, req, timeout=60).get("commands", {})
    finally:
        runner.close()
    return None if found.get(sipops_bin) else f"{found.get('python3') or 'python3'} {host.vars['health_zipapp']}"


def _push(
    runner_factory: RunnerFactory, inv: Inventory, host: Host, values: dict[str, Any], opts: PushOptions
) -> CronResult:
    rendered = schedule(inv, host, values)
    res = push_host(rendered, runner_factory, inv=inv, opts=opts, log=lambda _: None)
    if res.failed:
        return CronResult(host.name, False, error=" | ".join([res.reason or res.status, *res.details[-3:]]))
    gone = {r.dest for r in rendered.retired}
    save_overlay(inv.dir, host.name, values)  # only once the host has them
    return CronResult(host.name, True, [f"removed {p}" if p in gone else p for p in res.changed])


def install(
    runner_factory: RunnerFactory,
    inv: Inventory,
    host: Host,
    *,
    timer: bool,
    alert_cmd: str | None,
    opts: PushOptions | None = None,
) -> CronResult:
    """Make the checks run every minute on `host`; only files that differ are written."""
    opts = opts or PushOptions()
    try:
        command = command_for(runner_factory, host, opts)
    except RemoteError as exc:
        return CronResult(host.name, False, error=str(exc))
    return _push(runner_factory, inv, host, schedule_vars(timer=timer, alert_cmd=alert_cmd, command=command), opts)


def remove(runner_factory: RunnerFactory, inv: Inventory, host: Host, *, opts: PushOptions | None = None) -> CronResult:
    """Stop the scheduled checks: cron entry, timer and zipapp are retired; health.json and state stay."""
    return _push(runner_factory, inv, host, {"health_cron": False}, opts or PushOptions())
