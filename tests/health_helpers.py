"""Test doubles for the health checks: FakeSources stands in for HostSources (every input injected)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sipops.host.health.config import HealthConfig, Socket
from sipops.host.health.mi import MIError
from sipops.host.health.procfs import ProcInfo
from sipops.host.sip import OptionsResult

UDP = Socket("udp", "192.0.2.10", 5060)
TCP = Socket("tcp", "192.0.2.10", 5060)
NOW = 1_800_000_000.0


@dataclass
class FakeSources:
    """Every input a check reads, set by the test; a test double of sipops.host.health.sources.HostSources."""

    procs: list[ProcInfo] = field(default_factory=list)
    pid_file: int | None = None
    bound: set[tuple[str, str, int]] = field(default_factory=set)
    tcp: int = 0
    answers: dict[str, OptionsResult] = field(default_factory=dict)
    mi_replies: dict[str, Any] = field(default_factory=dict)  # method -> result or MIError
    space: tuple[int, int] = (100 * 2**30, 50 * 2**30)
    unit_state: str = "active"
    ban_count: tuple[int | None, str] = (0, "")
    probed: list[tuple[str, str, int, float]] = field(default_factory=list)

    def now(self) -> float:
        return NOW

    def processes(self) -> list[ProcInfo]:
        return self.procs

    def pid_from_file(self) -> int | None:
        return self.pid_file

    def listening(self) -> set[tuple[str, str, int]]:
        return self.bound

    def tcp_connections(self, ports: set[int]) -> int:
        return self.tcp

    def options(self, proto: str, address: str, port: int, timeout: float) -> OptionsResult:
        self.probed.append((proto, address, port, timeout))
        key = f"{proto}:{address}:{port}"
        return self.answers.get(key, OptionsResult(proto, address, port, False, error=f"no answer in {timeout:g} s"))

    def mi(self, method: str, params: dict[str, Any] | None = None) -> Any:
        reply = self.mi_replies.get(method, MIError("http://127.0.0.1:8888/mi: Connection refused"))
        if isinstance(reply, Exception):
            raise reply
        return reply

    def disk(self, path: str) -> tuple[int, int]:
        return self.space

    def service_state(self, unit: str) -> str:
        return self.unit_state

    def bans(self) -> tuple[int | None, str]:
        return self.ban_count


CFG = HealthConfig(host="sip1", sockets=(UDP, TCP), tcp_max_connections=1000, open_files_limit=4096)
MAIN = ProcInfo(100, 1, NOW - 3600, 50, 65536)
WORKER = ProcInfo(101, 100, NOW - 3599, 900, 1000)


def alive(s: Socket, rtt: float = 0.002, code: int = 200) -> OptionsResult:
    return OptionsResult(s.proto, s.address, s.port, True, code, "OK", rtt)


def key(s: Socket) -> str:
    return f"{s.proto}:{s.address}:{s.port}"
