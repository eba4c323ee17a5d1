"""Reading processes and sockets from /proc (standard library only; no psutil on bare hosts).

TCP connection counts come from sipops.host.monitor.scan (sock_diag); `tcp_connections` here is its
fallback on hosts whose python3 cannot import the scanner (older than 3.10).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
# States whose sockets hold a file descriptor of the server: everything but LISTEN, SYN_SENT,
# TIME_WAIT and CLOSE (SYN_RECV is counted: it will become a connection).
TCP_HELD = {"01", "03", "04", "05", "08", "09", "0B"}


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    started: float  # epoch seconds
    fds: int | None  # None when /proc/PID/fd is not readable
    fd_limit: int | None  # soft RLIMIT_NOFILE


def _boot_time(proc: Path) -> float:
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _stat_fields(text: str) -> tuple[str, list[str]]:
    """comm and the fields after it of /proc/PID/stat (comm may contain spaces and parentheses)."""
    open_at, close_at = text.index("("), text.rindex(")")
    return text[open_at + 1 : close_at], text[close_at + 2 :].split()


def _fd_limit(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        return None
    return None


def processes(name: str, proc: Path = PROC) -> list[ProcInfo]:
    """Every process whose comm is `name`."""
    ticks = os.sysconf("SC_CLK_TCK")
    boot = _boot_time(proc)
    out: list[ProcInfo] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, rest = _stat_fields((entry / "stat").read_text())
        except (OSError, ValueError):
            continue  # gone meanwhile
        if comm != name or rest[0] == "Z":
            continue
        try:
            fds: int | None = len(os.listdir(entry / "fd"))
        except OSError:
            fds = None
        started = boot + int(rest[19]) / ticks
        out.append(ProcInfo(int(entry.name), int(rest[1]), started, fds, _fd_limit(entry / "limits")))
    return sorted(out, key=lambda p: p.pid)


def main_process(procs: list[ProcInfo], pid_from_file: int | None) -> ProcInfo | None:
    """The parent of the others: the pid file's process, else the one whose parent is not one of them."""
    by_pid = {p.pid: p for p in procs}
    if pid_from_file in by_pid:
        return by_pid[pid_from_file]
    roots = [p for p in procs if p.ppid not in by_pid]
    return min(roots, key=lambda p: p.started) if roots else None


def family(procs: list[ProcInfo], main: ProcInfo) -> list[ProcInfo]:
    """The main process and its children (OpenSIPS forks every worker from it): another instance's
    processes, or a second OpenSIPS on the machine, are not ours."""
    return [p for p in procs if p.pid == main.pid or p.ppid == main.pid]


def read_pid_file(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def decode_address(hex_addr: str) -> tuple[str, int]:
    """`0100007F:13C4` -> ("127.0.0.1", 5060); IPv6 words are little-endian 32-bit groups."""
    addr, port = hex_addr.split(":")
    raw = bytes.fromhex(addr)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), int(port, 16)
    return str(ip), int(port, 16)


def _rows(path: Path) -> list[list[str]]:
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    return [line.split() for line in lines if line.strip()]


def listening(proc: Path = PROC) -> set[tuple[str, str, int]]:
    """(proto, address, port) of listening TCP and bound UDP sockets in this network namespace."""
    out: set[tuple[str, str, int]] = set()
    for proto, state in (("tcp", TCP_LISTEN), ("udp", UDP_UNCONNECTED)):
        for suffix in ("", "6"):
            for row in _rows(proc / "net" / f"{proto}{suffix}"):
                if len(row) > 3 and row[3] == state:
                    address, port = decode_address(row[1])
                    out.add((proto, address, port))
    return out


def is_listening(found: set[tuple[str, str, int]], proto: str, address: str, port: int) -> bool:
    """A socket bound to the address itself or to the wildcard of its family counts."""
    wildcard = "::" if ":" in address else "0.0.0.0"
    norm = str(ipaddress.ip_address(address))
    return any((proto, a, port) in found for a in (norm, wildcard, "::"))


def tcp_connections(ports: set[int], proc: Path = PROC) -> int:
    """TCP connections on local `ports` that hold a descriptor (see TCP_HELD)."""
    count = 0
    for suffix in ("", "6"):
        for row in _rows(proc / "net" / f"tcp{suffix}"):
            if len(row) > 3 and row[3] in TCP_HELD:
                _, port = decode_address(row[1])
                count += port in ports
    return count
