"""Results of `sipops calltest`: one line per check as it finishes, a summary, or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from sipops.errors import ExitCode


@dataclass
class CheckResult:
    host: str
    check: str  # register, call, cancel, unknown-user, gateways, failover, callee, load
    transport: str
    status: str  # ok, FAILED, skipped
    detail: str  # one line: what was proven, or the step that broke and why
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "FAILED"


def ok(host: str, check: str, transport: str, detail: str, **data: Any) -> CheckResult:
    return CheckResult(host, check, transport, "ok", detail, data)


def failed(host: str, check: str, transport: str, detail: str, **data: Any) -> CheckResult:
    return CheckResult(host, check, transport, "FAILED", detail, data)


def skipped(host: str, check: str, transport: str, detail: str) -> CheckResult:
    return CheckResult(host, check, transport, "skipped", detail)


def line(r: CheckResult) -> str:
    return f"{r.host}: {r.check} ({r.transport}): {r.status}: {r.detail}"


def exit_code(results: list[CheckResult]) -> ExitCode:
    return ExitCode.FAILURE if any(r.failed for r in results) else ExitCode.OK


def summary(results: list[CheckResult]) -> list[str]:
    n_ok = sum(r.status == "ok" for r in results)
    n_failed = sum(r.failed for r in results)
    n_skipped = sum(r.status == "skipped" for r in results)
    lines = ["", f"calltest: {n_ok} ok, {n_failed} failed, {n_skipped} skipped"]
    lines += [f"  FAILED {r.host} {r.check} ({r.transport}): {r.detail}" for r in results if r.failed]
    return lines


def write_json(results: list[CheckResult], out: TextIO) -> None:
    doc = {"ok": not any(r.failed for r in results), "checks": [asdict(r) for r in results]}
    json.dump(doc, out, indent=2, sort_keys=False)
    out.write("\n")
