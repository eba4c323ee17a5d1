"""Run an install phase's script on a host: one `sh -s` through the one Runner (sipops.remote.runner), results
per step."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from sipops.provision.steps import Step, StepResult, StepStream, StepWatch, parse, script
from sipops.remote.runner import OnOutput, Runner


def sh(runner: Runner, text: str, *, timeout: float, on_output: OnOutput | None = None) -> tuple[int, str]:
    """`text` as a shell script on the host (sudo when not root); exit status and output."""
    # $SSH_CLIENT is expanded by the login shell before sudo, which would drop it.
    out = runner.exec('env SIPOPS_SSH_CLIENT="$SSH_CLIENT" sh -s', text.encode(), timeout, on_output)
    return out.rc, (out.stdout + out.stderr).decode(errors="replace")


def run_steps(
    runner: Runner, steps: list[Step], *, check: bool, timeout: float = 1800, watch: StepWatch | None = None
) -> list[StepResult]:
    """The steps as one script in one round trip (their uploads: sipops.provision.install.run_phase).

    watch: told which step runs and what it prints while the script runs (live progress).
    """
    text = script(steps, check=check, env={"DEBIAN_FRONTEND": "noninteractive"})
    stream = StepStream(steps, watch) if watch is not None else None
    try:
        _, out = sh(runner, text, timeout=timeout, on_output=stream.feed if stream else None)
    finally:
        if stream is not None:
            stream.close()
    return parse(steps, out)


# One round trip, plain sh (python3 may be missing: the dependencies phase installs it).
FACTS_SCRIPT = r"""
echo "python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
echo "arch=$(uname -m)"
echo "has_nft=$(command -v nft >/dev/null 2>&1 && echo 1)"
echo "firewalld=$(systemctl is-active -q firewalld 2>/dev/null && echo 1)"
echo "systemd=$(test -d /run/systemd/system && echo 1)"
echo "container=$(systemd-detect-virt -c 2>/dev/null)"
echo "ssh_client=${SIPOPS_SSH_CLIENT%% *}"
echo "os_release_b64=$(base64 -w0 /etc/os-release 2>/dev/null)"
"""


@dataclass(frozen=True)
class InstallFacts:
    python: str | None
    arch: str
    os_release: str
    has_nft: bool
    firewalld: bool
    systemd: bool
    ssh_client: str  # the operator's source address as the host sees it (never to be locked out)
    container: str = ""  # systemd-nspawn, lxc, docker… ("" on a VM or bare metal)


def gather(runner: Runner) -> InstallFacts:
    _, out = sh(runner, FACTS_SCRIPT, timeout=60)
    data = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return InstallFacts(
        python=data.get("python") or None,
        arch=data.get("arch", ""),
        os_release=base64.b64decode(data.get("os_release_b64", "")).decode(errors="replace"),
        has_nft=data.get("has_nft") == "1",
        firewalld=data.get("firewalld") == "1",
        systemd=data.get("systemd") == "1",
        ssh_client=data.get("ssh_client", ""),
        container="" if data.get("container", "none") in ("", "none") else data["container"],
    )
