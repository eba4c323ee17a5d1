"""Throwaway network namespaces for tests against the real kernel (root only), always deleted."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000


def skip_reason() -> str | None:
    """Why kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (creates network namespaces)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = f"sipops-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False).returncode != 0:
        return "cannot create a network namespace here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def sh(*argv: str, ns: str | None = None, check: bool = True, stdin: str | None = None) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    proc = subprocess.run(full, input=stdin, capture_output=True, text=True, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(full)}: {proc.stderr.strip()}")
    return proc.stdout


@contextmanager
def netns_pair(tag: str) -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth: victim 10.77.0.1 (+ fd77::1), attacker 10.77.0.2 (+ fd77::2)."""
    victim, attacker = f"sipops-v{tag}-{os.getpid()}", f"sipops-a{tag}-{os.getpid()}"
    try:
        for ns in (victim, attacker):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "add", "v0", "netns", victim, "type", "veth", "peer", "name", "v1", "netns", attacker)
        for ns, dev, last in ((victim, "v0", 1), (attacker, "v1", 2)):
            sh("ip", "addr", "add", f"10.77.0.{last}/24", "dev", dev, ns=ns)
            sh("ip", "addr", "add", f"fd77::{last}/64", "dev", dev, "nodad", ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        yield victim, attacker
    finally:
        for ns in (victim, attacker):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run this thread inside namespace `ns` (sock_diag scans, libnftables), then come back."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns}") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
