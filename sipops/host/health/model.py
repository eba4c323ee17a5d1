"""Check results: a status, a one-line message and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Status(IntEnum):
    """Nagios plugin return codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# How bad a status is when combining several (Icinga 2's order): UNKNOWN outranks WARNING,
# CRITICAL outranks everything.
_SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}


def worst(statuses: list[Status]) -> Status:
    """The most severe status; OK for none."""
    return max(statuses, key=lambda s: _SEVERITY[s], default=Status.OK)


def level(value: float, warning: float | None, critical: float | None, *, below: bool = False) -> Status:
    """Status of `value` against thresholds; `below`: low values are bad (e.g. free space)."""
    if below:
        if critical is not None and value <= critical:
            return Status.CRITICAL
        if warning is not None and value <= warning:
            return Status.WARNING
        return Status.OK
    if critical is not None and value >= critical:
        return Status.CRITICAL
    if warning is not None and value >= warning:
        return Status.WARNING
    return Status.OK


@dataclass(frozen=True)
class Metric:
    """One number: Nagios perfdata and a Prometheus sample.

    name: snake_case base name; unit: "s", "%", "B" or "" (a plain number).
    labels: e.g. {"socket": "udp:1.2.3.4:5060"}: distinct series in Prometheus, a suffix in Nagios.
    """

    name: str
    value: float
    unit: str = ""
    warning: float | None = None
    critical: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    help: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "warning": self.warning,
            "critical": self.critical,
            "min": self.minimum,
            "max": self.maximum,
            "labels": dict(self.labels),
            "help": self.help,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metric:
        return cls(
            data["name"],
            float(data["value"]),
            data.get("unit", ""),
            data.get("warning"),
            data.get("critical"),
            data.get("min"),
            data.get("max"),
            dict(data.get("labels") or {}),
            data.get("help", ""),
        )


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    message: str
    metrics: list[Metric] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.name,
            "code": int(self.status),
            "message": self.message,
            "metrics": [m.as_dict() for m in self.metrics],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(
            data["name"],
            Status[data["status"]],
            data["message"],
            [Metric.from_dict(m) for m in data.get("metrics", [])],
        )


@dataclass
class Report:
    """Every check of one host, and which checks changed status since the previous run."""

    host: str
    checks: list[CheckResult]
    changed: list[str] = field(default_factory=list)  # "name: OLD -> NEW"
    alert: str = ""  # what happened with the alert command, if one ran
    checked_at: float = 0.0  # epoch seconds

    @property
    def status(self) -> Status:
        return worst([c.status for c in self.checks]) if self.checks else Status.UNKNOWN

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "status": self.status.name,
            "code": int(self.status),
            "checks": [c.as_dict() for c in self.checks],
            "changed": list(self.changed),
            "alert": self.alert,
            "checked_at": self.checked_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        checks = [CheckResult.from_dict(c) for c in data.get("checks", [])]
        changed = list(data.get("changed", []))
        return cls(data["host"], checks, changed, data.get("alert", ""), float(data.get("checked_at", 0.0)))
