"""Run the checks of one host, keep their state between runs, and alert on status changes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sipops.host.health import checks, checks_crowdsec, checks_mi, checks_relay
from sipops.host.health.config import HealthConfig
from sipops.host.health.model import CheckResult, Report, Status
from sipops.host.health.sources import Sources

CheckFn = Callable[[HealthConfig, Sources, dict[str, Any]], CheckResult]

REGISTRY: dict[str, CheckFn] = {
    "process": checks.check_process,
    "sockets": checks.check_sockets,
    "sip_options": checks.check_sip_options,
    "mi": checks_mi.check_mi,
    "shmem": checks_mi.check_shmem,
    "load": checks_mi.check_load,
    "tcp_conns": checks.check_tcp_conns,
    "fds": checks.check_fds,
    "log_errors": checks.check_log_errors,
    "disk": checks.check_disk,
    "watcher": checks.check_watcher,
    "bans": checks.check_bans,
    "gateways": checks_mi.check_gateways,
    "relays": checks_relay.check_relays,
    "crowdsec": checks_crowdsec.check_crowdsec,
}
LOCK_WAIT = 30.0  # seconds a run waits for an overlapping one (cron every minute)
ALERT_TIMEOUT = 60


class StateBusy(Exception):
    """Another run holds the state lock."""


def state_path(cfg: HealthConfig, name: str) -> Path:
    """One state file per consumer (cron, remote, manual runs): each has its own log cursor."""
    return Path(cfg.state_dir) / f"{name}.json"


@contextlib.contextmanager
def locked(path: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateBusy(f"another health run holds {lock.name}") from None
                time.sleep(0.2)
        yield


def load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write must not lose the log cursor."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_checks(
    cfg: HealthConfig, src: Sources, state: dict[str, Any], only: list[str] | None = None
) -> list[CheckResult]:
    """Run the enabled checks (or `only`), each isolated: a crashing check is UNKNOWN, not a crash."""
    names = list(only) if only else cfg.enabled()
    per_check = state.setdefault("checks", {})
    results: list[CheckResult] = []
    for name in names:
        own = per_check.setdefault(name, {})
        try:
            results.append(REGISTRY[name](cfg, src, own))
        except Exception as exc:
            results.append(CheckResult(name, Status.UNKNOWN, f"check failed: {type(exc).__name__}: {exc}"))
    return results


def changes(previous: dict[str, str], results: list[CheckResult]) -> list[str]:
    """`name: OLD -> NEW` for each check whose status differs from the last run (none known: OK)."""
    out = []
    for r in results:
        old = previous.get(r.name, "OK")
        if old != r.status.name:
            out.append(f"{r.name}: {old} -> {r.status.name}")
    return out


def run_alert(cmd: str, report: Report, text: str) -> str:
    """Run the alert command through /bin/sh with the report on stdin; returns what happened."""
    env = dict(os.environ)
    env.update(
        SIPOPS_HEALTH_HOST=report.host,
        SIPOPS_HEALTH_STATUS=report.status.name,
        SIPOPS_HEALTH_CHANGES="\n".join(report.changed),
    )
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", cmd], input=text, text=True, env=env, capture_output=True, timeout=ALERT_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return f"alert command timed out after {ALERT_TIMEOUT} s"
    except OSError as exc:
        return f"alert command could not start: {exc}"
    return "alert command ran" if proc.returncode == 0 else f"alert command exited {proc.returncode}"


def run_host(
    cfg: HealthConfig,
    src: Sources,
    *,
    state_name: str = "default",
    only: list[str] | None = None,
    alert_cmd: str | None = None,
    render_alert: Callable[[Report], str] | None = None,
) -> Report:
    """Checks with state: restarts and the log cursor continue from the last run of `state_name`."""
    path = state_path(cfg, state_name)
    try:
        with locked(path):
            state = load_state(path)
            results = run_checks(cfg, src, state, only)
            previous = state.get("statuses", {})
            report = Report(cfg.host, results, changes(previous, results), checked_at=src.now())
            previous.update({r.name: r.status.name for r in results})
            state["statuses"] = previous
            save_state(path, state)
    except StateBusy as exc:
        return Report(cfg.host, [CheckResult("state", Status.UNKNOWN, str(exc))])
    except OSError as exc:
        # No writable state dir (e.g. not root): still check, but nothing carries over.
        results = run_checks(cfg, src, {}, only)
        report = Report(cfg.host, results, checked_at=src.now())
        report.alert = f"state not kept ({exc.strerror or exc}: {path})"
        return report
    command = alert_cmd if alert_cmd is not None else cfg.alert_cmd
    if command and report.changed:
        report.alert = run_alert(command, report, render_alert(report) if render_alert else "")
    return report
