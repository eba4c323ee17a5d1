"""`sipops health HOST…`: the checks run ON each host (python3 -, one SSH round trip), hosts in parallel.

The config is the host's health.json rendered from the inventory on the controller, so thresholds
are the same as the cron job's. Remote runs keep their own state on the host (`remote.json`), so
they never take the cron job's log lines or status changes away from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sipops.health.bundle import remote_script
from sipops.health.config import ConfigError, HealthConfig, config_from_dict
from sipops.health.model import CheckResult, Report, Status
from sipops.inventory import Host, Inventory

CONFIG_TEMPLATE = "sipops/health.json.j2"
MAX_PARALLEL = 16
REMOTE_TIMEOUT = 120


class Runner(Protocol):
    """What run_remote needs from a fabric.Connection: open() and the paramiko client."""

    client: Any

    def open(self) -> Any: ...


def host_config(inv: Inventory, host: Host, **overrides: Any) -> HealthConfig:
    """The host's health.json, rendered from the inventory as push would render it."""
    from sipops.render import context, environment

    ctx = context(inv, host)
    ctx.update(overrides)
    text = environment(inv).get_template(CONFIG_TEMPLATE).render(ctx)
    return config_from_dict(json.loads(text), f"{CONFIG_TEMPLATE} for {host.name}")


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


def run_remote(conn: Runner, cfg: HealthConfig, *, state_name: str = "remote", only: list[str] | None = None) -> Report:
    """Run the checks on the host behind `conn` (python3 needed there, nothing else)."""
    payload = {"config": cfg.as_dict(), "state_name": state_name, "only": only or []}
    # paramiko directly, not conn.run(in_stream=...): invoke feeds a non-terminal stream one byte
    # per 10 ms, which would take minutes for the ~30 kB script.
    conn.open()
    stdin, stdout, stderr = conn.client.exec_command("python3 -", timeout=REMOTE_TIMEOUT)
    stdin.write(remote_script(payload).encode())
    stdin.flush()
    stdin.channel.shutdown_write()
    out = stdout.read().decode("utf-8", "replace")
    err = stderr.read().decode("utf-8", "replace")
    exited = stdout.channel.recv_exit_status()
    if exited == 127:
        return _failed(cfg.host, "python3 not found on the host")
    if exited != 0:
        lines = err.strip().splitlines()
        return _failed(cfg.host, f"checks failed on the host: {lines[-1] if lines else exited}")
    return parse_reply(cfg.host, out)


def run_hosts(
    hosts: list[Host],
    config_for: Callable[[Host], HealthConfig],
    connect: Callable[[Host], Runner],
    *,
    only: list[str] | None = None,
    state_name: str = "remote",
) -> list[Report]:
    """Every host in parallel; a host that cannot be reached is UNKNOWN with the reason."""

    def one(host: Host) -> Report:
        try:
            cfg = config_for(host)
        except ConfigError as exc:
            return _failed(host.name, str(exc))
        try:
            conn = connect(host)
            try:
                return run_remote(conn, cfg, state_name=state_name, only=only)
            finally:
                close = getattr(conn, "close", None)
                if close is not None:
                    close()
        except Exception as exc:  # SSH, host keys, timeouts: the host's result, not a crash
            return _failed(host.name, describe_error(exc))

    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(hosts))) as pool:
        return list(pool.map(one, hosts))
