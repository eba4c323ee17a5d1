"""Run the scanner on a host that may not have sipops: its bundle goes through the one boot path
(sipops.remote.ship, entry sipops.host.monitor.report:main), the parameters in the request on stdin
(SSHRunner's raw channel takes stdin at full speed), the report back as the reply."""

from __future__ import annotations

from typing import Any

from sipops.remote.runner import RemoteError, Runner, call

ENTRY = "sipops.host.monitor.report:main"

__all__ = ["ENTRY", "RemoteError", "run_report"]


def run_report(runner: Runner, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Run the scanner on the host behind `runner` (python3 needed there, nothing else; sudo when not root)."""
    return call(runner, params, timeout=timeout, entry=ENTRY)
