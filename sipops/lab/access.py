"""Getting into lab members: SSH argument lists for hosts, `ip netns exec` for attackers."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from sipops.lab.invfile import KNOWN_HOSTS
from sipops.lab.rootfs import CLIENT_KEY
from sipops.lab.state import LabState, Member


@dataclass(frozen=True)
class LabSSH:
    user: str
    port: int
    key: Path | None
    known_hosts: Path | None
    jump: str | None = None
    connect_timeout: int = 10
    agent: bool | None = None


@dataclass(frozen=True)
class LabHost:
    """A lab host as sipops.remote.transport.connect wants it (the same fields as the inventory's)."""

    name: str
    address: str
    ssh: LabSSH


def lab_host(state: LabState, member: Member) -> LabHost:
    directory = state.dir.resolve()
    return LabHost(member.name, member.address, LabSSH("root", 22, directory / CLIENT_KEY, directory / KNOWN_HOSTS))


def ssh_argv(state: LabState, member: Member, *, tty: bool = False) -> list[str]:
    """OpenSSH client arguments: the lab key only, the lab's known_hosts only, strict checking."""
    directory = state.dir.resolve()
    return [
        "ssh", "-F", "/dev/null",
        "-i", str(directory / CLIENT_KEY),
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={directory / KNOWN_HOSTS}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=10",
        "-t" if tty else "-T",
        f"root@{member.address}",
    ]  # fmt: skip


def exec_argv(state: LabState, member: Member, command: list[str]) -> list[str]:
    """Run `command` in an attacker's namespace, or on a host over SSH (quoted for its shell)."""
    if member.kind == "attacker":
        return ["ip", "netns", "exec", member.netns, *command]
    return [*ssh_argv(state, member), "--", shlex.join(command)]


def shell_argv(state: LabState, member: Member, shell: str = "/bin/bash") -> list[str]:
    if member.kind == "attacker":
        return ["ip", "netns", "exec", member.netns, shell]
    return ssh_argv(state, member, tty=True)
