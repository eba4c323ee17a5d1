"""What the checks read from the host, behind one interface so tests can inject every input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from sipops.host.health import procfs
from sipops.host.health.config import HealthConfig
from sipops.host.health.mi import mi_call
from sipops.host.health.procfs import ProcInfo
from sipops.host.sip import OptionsResult, options_ping


class Sources(Protocol):
    def now(self) -> float: ...
    def processes(self) -> list[ProcInfo]: ...
    def pid_from_file(self) -> int | None: ...
    def listening(self) -> set[tuple[str, str, int]]: ...
    def tcp_connections(self, ports: set[int]) -> int: ...
    def options(self, proto: str, address: str, port: int, timeout: float) -> OptionsResult: ...
    def mi(self, method: str, params: dict[str, Any] | None = None) -> Any: ...
    def disk(self, path: str) -> tuple[int, int]: ...  # (total, available) bytes
    def service_state(self, unit: str) -> str: ...  # active | inactive | failed | not-found | ...
    def bans(self) -> tuple[int | None, str]: ...  # (live bans and notes, or None and why not)


class HostSources:
    """The real host: /proc, the MI over HTTP, SIP sockets, statvfs, systemctl."""

    def __init__(self, config: HealthConfig) -> None:
        self.config = config
        self._mi_cache: dict[str, Any] = {}
        self._procs: list[ProcInfo] | None = None

    def now(self) -> float:
        return time.time()

    def processes(self) -> list[ProcInfo]:
        if self._procs is None:
            self._procs = procfs.processes(self.config.process_name)
        return self._procs

    def pid_from_file(self) -> int | None:
        return procfs.read_pid_file(self.config.pid_file)

    def listening(self) -> set[tuple[str, str, int]]:
        return procfs.listening()

    def tcp_connections(self, ports: set[int]) -> int:
        return count_tcp(ports)

    def options(self, proto: str, address: str, port: int, timeout: float) -> OptionsResult:
        return options_ping(proto, address, port, timeout)

    def mi(self, method: str, params: dict[str, Any] | None = None) -> Any:
        # Several checks read get_statistics: one MI call per run and command.
        key = json.dumps([method, params], sort_keys=True)
        if key not in self._mi_cache:
            try:
                self._mi_cache[key] = mi_call(self.config.mi_url, method, params, self.config.mi_timeout_ms / 1000)
            except Exception as exc:
                self._mi_cache[key] = exc
        value = self._mi_cache[key]
        if isinstance(value, Exception):
            raise value
        return value

    def disk(self, path: str) -> tuple[int, int]:
        st = os.statvfs(path)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def service_state(self, unit: str) -> str:
        if shutil.which("systemctl") is None:
            return "no-systemctl"
        try:
            proc = subprocess.run(
                ["systemctl", "show", "--property=LoadState,ActiveState", unit],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"error: {exc}"
        props = dict(line.partition("=")[::2] for line in proc.stdout.splitlines())
        if props.get("LoadState") == "not-found":
            return "not-found"
        return props.get("ActiveState") or "unknown"

    def bans(self) -> tuple[int | None, str]:
        """Live bans from the watcher's journal through `sipops bans --json` on this host."""
        binary = self.config.sipops_bin
        if not Path(binary).is_file() or not os.access(binary, os.X_OK):
            return None, f"no ban journal here ({binary} is not installed)"
        try:
            proc = subprocess.run([binary, "bans", "--json"], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"`sipops bans --json` failed: {exc}"
        if proc.returncode != 0:
            return None, f"`sipops bans --json` exited {proc.returncode}: {proc.stderr.strip()[:120]}"
        return count_bans(proc.stdout)


def count_tcp(ports: set[int]) -> int:
    """Connections holding a descriptor on `ports`: the sock_diag scanner, else /proc/net/tcp."""
    try:
        # The scanner needs Python 3.10 (slotted dataclasses); older hosts read /proc instead.
        from sipops.host.monitor.scan import TcpState, scan
    except Exception:
        return procfs.tcp_connections(ports)
    held = [TcpState(int(code, 16)) for code in procfs.TCP_HELD]
    table = scan(ports, held, netstat=False, cookies=False)
    return sum(stats.total for port, stats in table.ports.items() if port in ports)


def _ban_notes(rows: list[dict[str, Any]]) -> str:
    """What the count holds besides the watcher's own bans (`sipops bans` lists the kernel sets too)."""
    meter = sum(1 for r in rows if r.get("origin") == "kernel meter")
    unjournaled = sum(1 for r in rows if r.get("origin") == "kernel")
    missing = sum(1 for r in rows if r.get("in_kernel") is False and r.get("live"))
    notes = [f"{meter} by the firewall's meter, not journaled yet"] if meter else []
    notes += [f"{unjournaled} in the kernel sets only"] if unjournaled else []
    notes += [f"{missing} journaled but not in the kernel"] if missing else []
    return "; ".join(notes)


def count_bans(text: str) -> tuple[int | None, str]:
    """The number of bans in `sipops bans --json` output: a list, or an object with `bans` or `count`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, "`sipops bans --json` printed no JSON"
    if isinstance(data, list):
        return len(data), _ban_notes([row for row in data if isinstance(row, dict)])
    if isinstance(data, dict):
        if isinstance(data.get("count"), int):
            return int(data["count"]), ""
        if isinstance(data.get("bans"), list):
            return len(data["bans"]), ""
    return None, "`sipops bans --json`: unexpected shape"
