"""Booting lab hosts with systemd-nspawn, stopping them by pid, and waiting for their sshd."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from sipops.lab.net import NETNS_DIR
from sipops.lab.proc import LabError
from sipops.lab.state import LabState, Member

NSPAWN = "systemd-nspawn"
PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")


def nspawn_argv(state: LabState, member: Member) -> list[str]:
    return [
        NSPAWN,
        "-D", str(state.root(member.name)),
        "-M", member.netns,
        f"--hostname={member.name}",
        "--register=no",
        "--keep-unit",
        "--link-journal=no",
        "--console=read-only",
        f"--network-namespace-path={NETNS_DIR / member.netns}",
        "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
        "-b",
    ]  # fmt: skip


def console_log(state: LabState, member: Member) -> Path:
    """Where a host's console goes; outside its layer, so it survives `down` for a post-mortem."""
    return state.dir / "logs" / f"{member.name}.console.log"


CGROUP_FS = Path("/sys/fs/cgroup")


def cgroup_dirs(member: Member) -> list[Path]:
    """Per-host cgroups in the hierarchies systemd uses, under this process's own cgroup.

    Hosts started with --keep-unit would otherwise share one cgroup, and their systemds then
    create the same unit cgroups in it and trip over each other (units fail with 219/CGROUP).
    """
    if (CGROUP_FS / "cgroup.controllers").exists():
        roots = {"": CGROUP_FS}  # pure cgroup v2
    else:
        roots = {"name=systemd": CGROUP_FS / "systemd", "": CGROUP_FS / "unified"}
    dirs: list[Path] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        root = roots.get(controllers)
        if root is not None and root.is_dir():
            dirs.append(root / path.lstrip("/") / member.netns)
    return dirs


def _enter_cgroups(dirs: list[Path]) -> None:
    for directory in dirs:
        directory.mkdir(exist_ok=True)
        (directory / "cgroup.procs").write_text("0")  # 0 = the writing process (the child, pre-exec)


def remove_cgroups(dirs: list[Path]) -> None:
    """Remove a stopped host's cgroups, deepest first (its systemd may have left unit cgroups)."""
    for top in dirs:
        if not top.is_dir():
            continue
        for directory, _, _ in sorted(os.walk(top, topdown=False), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(directory)


def start(state: LabState, member: Member) -> None:
    """Boot the host in the background (its own session, so it outlives `lab up`); record its pid."""
    env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="network")
    cgroups = cgroup_dirs(member)
    console = console_log(state, member)
    console.parent.mkdir(parents=True, exist_ok=True)
    with open(console, "wb") as out:
        proc = subprocess.Popen(
            nspawn_argv(state, member),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: _enter_cgroups(cgroups),
        )
    member.pid, member.pid_started = proc.pid, _started(proc.pid)
    state.save()


def _started(pid: int) -> float | None:
    """When `pid` started (psutil's create_time), kept with the pid so a reused pid is never ours."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None


def _same_process(proc: psutil.Process, started: float | None) -> bool:
    return started is None or abs(proc.create_time() - started) <= 0.05


def _process(member: Member) -> psutil.Process | None:
    """The member's nspawn process if it is still the one we started (never a reused pid)."""
    if member.pid is None:
        return None
    try:
        proc = psutil.Process(member.pid)
        if not _same_process(proc, member.pid_started):
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(member.pid)
            return None
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if not cmdline or not cmdline[0].endswith(NSPAWN) or member.netns not in cmdline:
        return None
    return proc


def _reap(pid: int) -> None:
    # Only our own children can be reaped; others are left to the machine's PID 1.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_running(member: Member) -> bool:
    return _process(member) is not None


def orphans(state: LabState) -> list[psutil.Process]:
    """nspawn processes booting one of this lab's roots that the state has no pid for (crash leftovers)."""
    roots = {str(state.root(m.name)) for m in state.hosts()}
    known = {m.pid for m in state.hosts() if m.pid is not None}
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.pid in known or not cmd or not cmd[0].endswith(NSPAWN):
            continue
        for i, arg in enumerate(cmd[:-1]):
            if arg == "-D" and cmd[i + 1] in roots:
                found.append(proc)
                break
    return found


def stop(state: LabState, members: Iterable[Member], *, timeout: float = 30.0) -> None:
    """SIGTERM each host's nspawn (a clean poweroff), wait, SIGKILL stragglers; by pid only."""
    members = list(members)
    procs: list[psutil.Process] = [p for m in members if (p := _process(m)) is not None]
    procs += orphans(state)
    deadline = time.monotonic() + timeout
    alive = procs
    next_term = 0.0
    while alive and time.monotonic() < deadline:
        if time.monotonic() >= next_term:
            # Repeated: a host still booting has no handler for nspawn's SIGRTMIN+3 yet and drops it.
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGTERM)
            next_term = time.monotonic() + 1.0
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    for proc in alive:
        end = time.monotonic() + 10
        while _alive(proc) and time.monotonic() < end:
            time.sleep(0.1)
        if _alive(proc):
            raise LabError(f"systemd-nspawn pid {proc.pid} did not exit after SIGKILL")
    for member in members:
        member.pid = None
        member.pid_started = None
        shutil.rmtree(PROPAGATE_DIR / member.netns, ignore_errors=True)
        remove_cgroups(cgroup_dirs(member))
    state.save()


def _alive(proc: psutil.Process) -> bool:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(proc.pid)
            return False
        return True
    except psutil.NoSuchProcess:
        return False


def ssh_banner(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    """Whether an SSH server answers at address:port with its banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_ssh(state: LabState, members: list[Member], *, timeout: float = 60.0) -> None:
    """Wait until every host's sshd answers; LabError naming the slow ones (and their console log)."""
    waiting = list(members)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for member in list(waiting):
            if not is_running(member):
                log = console_log(state, member)
                raise LabError(f"host {member.name} stopped while booting (console: {log})")
            if ssh_banner(member.address):
                waiting.remove(member)
        if waiting:
            time.sleep(0.2)
    if waiting:
        names = ", ".join(m.name for m in waiting)
        raise LabError(f"sshd did not answer within {timeout:.0f}s on {names} (consoles: {state.dir / 'logs'})")


def wave_size(cpus: int | None = None) -> int:
    """Hosts booted at once: four per core. Thirty systemd boots at once on 2 cores starve each other's
    sshd past any fixed timeout; in waves every host gets the same time to come up."""
    return 4 * max(1, cpus or os.cpu_count() or 1)


def waves(members: list[Member], size: int) -> list[list[Member]]:
    return [members[i : i + size] for i in range(0, len(members), size)]


def boot(state: LabState, members: list[Member], *, timeout: float = 60.0, size: int | None = None) -> None:
    """Start the hosts a wave at a time, each wave's sshd answering (within timeout) before the next starts."""
    for group in waves(members, size or wave_size()):
        for member in group:
            start(state, member)
        wait_ssh(state, group, timeout=timeout)


def start_apt_proxy(state: LabState, mirror_hosts: list[str]) -> None:
    """The lab's package proxy on the bridge address (hosts reach this machine's mirror through it)."""
    log = state.dir / "logs" / "apt-proxy.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "sipops.lab.aptproxy", "--listen", str(state.naming.bridge_address)]
    for name in mirror_hosts:
        argv += ["--allow", name]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    state.apt_proxy_pid, state.apt_proxy_started = proc.pid, _started(proc.pid)
    state.save()


def stop_apt_proxy(state: LabState) -> None:
    """Stop the proxy by its recorded pid, only if that pid is still our proxy process."""
    if state.apt_proxy_pid is None:
        return
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        proc = psutil.Process(state.apt_proxy_pid)
        if _same_process(proc, state.apt_proxy_started) and "sipops.lab.aptproxy" in " ".join(proc.cmdline()):
            proc.terminate()
            try:
                proc.wait(5)
            except psutil.TimeoutExpired:
                proc.kill()
            _reap(proc.pid)
    state.apt_proxy_pid = None
    state.apt_proxy_started = None
    state.save()
