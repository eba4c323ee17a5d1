"""Run an install phase's script on a host: one upload batch, one `sh -s`, results per step."""

from __future__ import annotations

import base64
import io
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from sipops.provision.steps import Step, StepResult, parse, script


class Runner(Protocol):
    """Runs a shell script on one host and sends files to it."""

    name: str

    def sh(self, text: str, *, timeout: float, root: bool = True) -> tuple[int, str]: ...
    def put(self, local: str, remote: str) -> None: ...


@dataclass
class LocalRunner:
    """This machine (`--local`)."""

    name: str = "localhost"

    def sh(self, text: str, *, timeout: float, root: bool = True) -> tuple[int, str]:
        proc = subprocess.run(["sh", "-s"], input=text, capture_output=True, text=True, timeout=timeout, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    def put(self, local: str, remote: str) -> None:
        subprocess.run(["install", "-D", "-m", "0600", local, remote], check=True)


class SSHRunner:
    """A host over one Fabric connection (kept open for every phase), through sudo when not root."""

    def __init__(self, name: str, conn: object, *, sudo: bool) -> None:
        self.name = name
        self.conn = conn
        self.sudo = sudo

    def sh(self, text: str, *, timeout: float, root: bool = True) -> tuple[int, str]:
        cmd = "sudo -n sh -s" if self.sudo and root else "sh -s"
        res = self.conn.run(cmd, in_stream=io.StringIO(text), hide=True, warn=True, timeout=timeout)  # type: ignore[attr-defined]
        return int(res.exited), str(res.stdout) + str(res.stderr)

    def put(self, local: str, remote: str) -> None:
        parent = str(PurePosixPath(remote).parent)
        tmp = f"/tmp/sipops-upload-{PurePosixPath(remote).name}"
        self.conn.put(local, tmp)  # type: ignore[attr-defined]
        move = f"install -d -m 0755 {shlex.quote(parent)} && mv -f {shlex.quote(tmp)} {shlex.quote(remote)}"
        self.sh(move, timeout=60)


def run_steps(runner: Runner, steps: list[Step], *, check: bool, timeout: float = 1800) -> list[StepResult]:
    """Uploads first (skipped in check mode), then the phase script in one round trip."""
    if not check:
        for step in steps:
            if step.upload is not None:
                runner.put(*step.upload)
    _, out = runner.sh(script(steps, check=check, env={"DEBIAN_FRONTEND": "noninteractive"}), timeout=timeout)
    return parse(steps, out)


# One round trip, plain sh (python3 may be missing: the dependencies phase installs it).
FACTS_SCRIPT = r"""
echo "python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
echo "arch=$(uname -m)"
echo "has_nft=$(command -v nft >/dev/null 2>&1 && echo 1)"
echo "firewalld=$(systemctl is-active -q firewalld 2>/dev/null && echo 1)"
echo "systemd=$(test -d /run/systemd/system && echo 1)"
echo "ssh_client=${SSH_CLIENT%% *}"
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


def gather(runner: Runner) -> InstallFacts:
    # Not through sudo: sudo drops SSH_CLIENT, and none of this needs root.
    _, out = runner.sh(FACTS_SCRIPT, timeout=60, root=False)
    data = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return InstallFacts(
        python=data.get("python") or None,
        arch=data.get("arch", ""),
        os_release=base64.b64decode(data.get("os_release_b64", "")).decode(errors="replace"),
        has_nft=data.get("has_nft") == "1",
        firewalld=data.get("firewalld") == "1",
        systemd=data.get("systemd") == "1",
        ssh_client=data.get("ssh_client", ""),
    )
