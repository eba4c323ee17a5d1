"""`sipops cron install|remove HOST…`: run the checks every minute on each host (cron.d or a systemd timer).

Install writes /etc/sipops/health.json (thresholds, the alert command), the agent when the host has
no sipops (a zipapp run by python3), and either /etc/cron.d/sipops-health or the
sipops-health.service/.timer pair; the other form is removed so the checks never run twice.
Files are uploaded only when their sha256 differs, each through a temp file and a rename. They are
rendered by the push engine's templates, and the choices (timer, alert command, the command run) are
kept in tuned/<host>.yaml beside the inventory: a later `sipops push` renders the same files and
never brings the other form back. `remove` keeps health_cron: false there for the same reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shlex
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipops.health.bundle import zipapp_bytes
from sipops.inventory import Host, Inventory, save_overlay

AGENT_PATH = "/usr/local/lib/sipops/sipops-health.pyz"
CONFIG_PATH = "/etc/sipops/health.json"
CRON_PATH = "/etc/cron.d/sipops-health"
SERVICE_PATH = "/etc/systemd/system/sipops-health.service"
TIMER_PATH = "/etc/systemd/system/sipops-health.timer"
TIMER_UNIT = "sipops-health.timer"


class Runner(Protocol):
    def run(self, command: str, **kwargs: Any) -> Any: ...
    def put(self, local: Any, remote: str) -> Any: ...


@dataclass(frozen=True)
class FileToWrite:
    path: str
    content: bytes
    mode: str = "0644"


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


def render_files(inv: Inventory, host: Host, values: dict[str, Any]) -> list[FileToWrite]:
    """health.json and the schedule (cron entry, or service + timer) exactly as `sipops push` renders
    them once `values` are in the host's variables: the two commands never undo each other."""
    from sipops.render import render_host

    rendered = render_host(inv, dataclasses.replace(host, vars={**host.vars, **values}))
    wanted = (CONFIG_PATH, CRON_PATH, SERVICE_PATH, TIMER_PATH)
    return [FileToWrite(f.dest, f.content, f.mode) for f in rendered.files if f.dest in wanted]


def facts_command(paths: list[str], sipops_bin: str) -> str:
    """One round trip: sha256 of the files we manage, whether sipops is installed, where python3 is."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        f'for f in {quoted}; do [ -f "$f" ] && sha256sum "$f"; done; '
        f"[ -x {shlex.quote(sipops_bin)} ] && echo SIPOPS_BIN=yes; "
        "echo PYTHON3=$(command -v python3 || true)"
    )


def parse_facts(stdout: str) -> tuple[dict[str, str], bool, str]:
    """(path -> sha256, sipops installed, python3 path)."""
    sums: dict[str, str] = {}
    has_sipops, python = False, ""
    for line in stdout.splitlines():
        if line == "SIPOPS_BIN=yes":
            has_sipops = True
        elif line.startswith("PYTHON3="):
            python = line.split("=", 1)[1].strip()
        elif "  " in line:
            digest, path = line.split("  ", 1)
            sums[path] = digest
    return sums, has_sipops, python


def _sh(conn: Runner, command: str) -> None:
    result = conn.run(command, hide=True, warn=True, timeout=60)
    if result.exited != 0:
        lines = (result.stderr or result.stdout or "").strip().splitlines()
        raise RuntimeError(f"`{command.split(';')[0][:60]}` failed: {lines[-1] if lines else result.exited}")


def _upload(conn: Runner, f: FileToWrite) -> None:
    directory = f.path.rsplit("/", 1)[0]
    tmp = f"{f.path}.sipops-tmp"
    _sh(conn, f"mkdir -p {shlex.quote(directory)}")
    conn.put(io.BytesIO(f.content), tmp)
    tmp_q, path_q = shlex.quote(tmp), shlex.quote(f.path)
    _sh(conn, f"chmod {f.mode} {tmp_q} && chown root:root {tmp_q} && mv -f {tmp_q} {path_q}")


def install(conn: Runner, inv: Inventory, host: Host, *, timer: bool, alert_cmd: str | None) -> CronResult:
    """Make the checks run every minute on `host`; only files whose content differs are written."""
    sipops_bin = str(host.vars["sipops_bin"])
    managed = [CONFIG_PATH, CRON_PATH, SERVICE_PATH, TIMER_PATH, AGENT_PATH]
    facts = conn.run(facts_command(managed, sipops_bin), hide=True, warn=True, timeout=60)
    sums, has_sipops, python = parse_facts(facts.stdout)
    agent: FileToWrite | None = None
    command: str | None = None  # the default: <sipops_bin> health
    if not has_sipops and python:
        command = f"{python} {AGENT_PATH}"
        agent = FileToWrite(AGENT_PATH, zipapp_bytes(), "0755")
    elif not has_sipops:
        return CronResult(host.name, False, error=f"neither {sipops_bin} nor python3 on the host")
    values = schedule_vars(timer=timer, alert_cmd=alert_cmd, command=command)
    files = render_files(inv, host, values)
    files += [agent] if agent is not None else []
    changed = []
    for f in files:
        if sums.get(f.path) != hashlib.sha256(f.content).hexdigest():
            _upload(conn, f)
            changed.append(f.path)
    state_dir = str(host.vars["health_state_dir"])
    _sh(conn, f"mkdir -p {shlex.quote(state_dir)} {shlex.quote(str(host.vars['prometheus_textfile_dir']))}")
    if timer:
        if CRON_PATH in sums:
            _sh(conn, f"rm -f {CRON_PATH}")
            changed.append(f"removed {CRON_PATH}")
        if changed or SERVICE_PATH not in sums:
            _sh(conn, f"systemctl daemon-reload && systemctl enable --now {TIMER_UNIT}")
    elif SERVICE_PATH in sums or TIMER_PATH in sums:
        _sh(conn, f"systemctl disable --now {TIMER_UNIT} >/dev/null 2>&1; rm -f {SERVICE_PATH} {TIMER_PATH}; "
                  "systemctl daemon-reload")  # fmt: skip
        changed.append(f"removed {TIMER_UNIT}")
    save_overlay(inv.dir, host.name, values)
    return CronResult(host.name, True, changed)


def remove(conn: Runner, inv: Inventory, host: Host) -> CronResult:
    """Stop the scheduled checks: cron entry, timer and agent go; health.json and state stay."""
    facts = conn.run(facts_command([CRON_PATH, SERVICE_PATH, TIMER_PATH, AGENT_PATH], "/nonexistent"), hide=True,
                     warn=True, timeout=60)  # fmt: skip
    sums, _, _ = parse_facts(facts.stdout)
    changed = []
    if SERVICE_PATH in sums or TIMER_PATH in sums:
        _sh(conn, f"systemctl disable --now {TIMER_UNIT} >/dev/null 2>&1; rm -f {SERVICE_PATH} {TIMER_PATH}; "
                  "systemctl daemon-reload")  # fmt: skip
        changed.append(f"removed {TIMER_UNIT}")
    for path in (CRON_PATH, AGENT_PATH):
        if path in sums:
            _sh(conn, f"rm -f {path}")
            changed.append(f"removed {path}")
    save_overlay(inv.dir, host.name, {"health_cron": False})  # a later push does not bring them back
    return CronResult(host.name, True, changed)
