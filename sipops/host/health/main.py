"""The checks on the host itself: `sipops health --local`, the cron job, and what SSH runs remotely.

Standard library only. On a host without sipops it runs as `python3 sipops-health.pyz ...`
(installed by `sipops cron install`) or through the one boot path (sipops.remote.ship, entry remote_entry)
for `sipops health HOST`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from sipops.host.health.config import CHECKS, DEFAULT_CONFIG, ConfigError, HealthConfig, config_from_dict, load_config
from sipops.host.health.formats import FORMATS, render, render_text, write_textfile
from sipops.host.health.model import Report, Status
from sipops.host.health.runner import run_host
from sipops.host.health.sources import HostSources


def run_local(
    cfg: HealthConfig,
    *,
    fmt: str = "text",
    textfile: Path | None = None,
    state_name: str = "default",
    alert_cmd: str | None = None,
    only: list[str] | None = None,
) -> tuple[Report, str]:
    """Run every check here; write the Prometheus textfile when asked; returns the report and its rendering."""
    report = run_host(
        cfg,
        HostSources(cfg),
        state_name=state_name,
        only=only,
        alert_cmd=alert_cmd,
        render_alert=lambda r: render_text([r]),
    )
    if textfile is not None:
        write_textfile(textfile, render("prometheus", [report]))
    return report, render(fmt, [report])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sipops-health", description="OpenSIPS health checks on this host.")
    p.add_argument("--local", action="store_true", help="accepted for compatibility with `sipops health --local`")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="health.json (default %(default)s)")
    p.add_argument("--format", choices=FORMATS, default="text")
    p.add_argument("--textfile", type=Path, help="also write DIR/sipops.prom for node_exporter (atomically)")
    p.add_argument("--quiet", action="store_true", help="print nothing (exit code and textfile only)")
    p.add_argument("--state-name", default="default", help="state kept between runs (cron uses 'cron')")
    p.add_argument("--state-dir", help="where state files live (default from the config)")
    p.add_argument("--alert-cmd", help="shell command run when a check changes status")
    p.add_argument("--check", action="append", choices=CHECKS, help="run only this check (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"sipops-health: {exc}", file=sys.stderr)
        return int(Status.UNKNOWN)
    if args.state_dir:
        cfg = replace(cfg, state_dir=args.state_dir)
    report, text = run_local(
        cfg, fmt=args.format, textfile=args.textfile, state_name=args.state_name, alert_cmd=args.alert_cmd,
        only=args.check,
    )  # fmt: skip
    if not args.quiet:
        sys.stdout.write(text)
    return int(report.status)


def remote_entry(payload: dict[str, Any], stream: Any = None, size: int = 0) -> dict[str, Any]:
    """Entry point of `sipops health HOST` (sipops.health.remote through sipops.remote.runner.call):
    config in, the report (as a dict) back."""
    try:
        cfg = config_from_dict(payload["config"], "shipped health config")
    except ConfigError as exc:
        report = Report(str(payload.get("config", {}).get("host", "?")), [])
        report.alert = str(exc)
        return {"report": report.as_dict(), "error": str(exc)}
    report = run_host(
        cfg,
        HostSources(cfg),
        state_name=payload.get("state_name", "remote"),
        only=payload.get("only") or None,
        alert_cmd=payload.get("alert_cmd"),
        render_alert=lambda r: render_text([r]),
    )
    return {"report": report.as_dict()}


if __name__ == "__main__":
    sys.exit(main())
