"""`sipops install HOST`: every phase from a bare host to a running, checked OpenSIPS.

Each phase is one round trip (its steps run as one script on the host) and reports per step:
ok (nothing to do), changed, would (--check) or failed with the lines that explain it.
Every file sipops puts on the host goes through the push agent: managed files (opensips.cfg,
rsyslog, logrotate, limits, units, firewall) through the push engine, so they are validated on the
host and swapped atomically like any later change; the files steps work from (the wheelhouse, a
local release tarball, the apt source list) through its place op, just before their step.
"""

from __future__ import annotations

import dataclasses
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sipops.inventory import Host, Inventory, Origin
from sipops.paths import cache_dir
from sipops.provision import plan
from sipops.provision import wheelhouse as agent
from sipops.provision.osinfo import UnsupportedOS, detect, parse_os_release
from sipops.provision.runner import InstallFacts, gather, run_steps
from sipops.provision.steps import PhasePlan, Step, StepResult, StepWatch, q
from sipops.remote.place import Artifact, place
from sipops.remote.runner import OnOutput, Output, RemoteError, Runner
from sipops.remote.ship import argv_command
from sipops.render import HostRender, render_host


@dataclass
class PhaseReport:
    name: str
    results: list[StepResult] = field(default_factory=list)
    note: str = ""
    error: str = ""  # the phase could not run at all (facts, OS, wheelhouse…)

    @property
    def failed(self) -> bool:
        return bool(self.error) or any(r.status == "failed" for r in self.results)

    @property
    def changed(self) -> bool:
        return any(r.status in ("changed", "would") for r in self.results)


@dataclass
class InstallReport:
    host: str
    phases: list[PhaseReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.failed for p in self.phases)

    @property
    def changed(self) -> bool:
        return any(p.changed for p in self.phases)

    @property
    def reason(self) -> str:
        for p in self.phases:
            if p.error:
                return f"{p.name}: {p.error}"
            for r in p.results:
                if r.status == "failed":
                    return f"{p.name}: {r.name}"
        return ""


# The files phase: push the host's rendered files (validated, atomic); the push engine provides it.
# Arguments: the host's one render, check mode, and whether OpenSIPS is still to be installed (check mode only).
PushFiles = Callable[[HostRender, bool, bool], PhaseReport]


class _Lent:
    """Install's open connection lent to the push engine: its close() leaves it open for the later phases."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.name = runner.name

    def exec(self, command: str, stdin: bytes, timeout: float, on_output: OnOutput | None = None) -> Output:
        return self.runner.exec(command, stdin, timeout, on_output)

    def close(self) -> None:
        return None


def lent(runner: Runner, connect: Callable[[], Runner]) -> Callable[[], Runner]:
    """A runner factory for push_host: install's own connection first (one connection per host); called
    again (a reconnect after the connection dropped), a new one from `connect`."""
    used: list[bool] = []

    def factory() -> Runner:
        if used:
            return connect()
        used.append(True)
        return _Lent(runner)

    return factory


def with_operator_allowed(host: Host, facts: InstallFacts) -> Host:
    """The operator's own SSH source joins the allowlist: the firewall can never lock it out."""
    src = facts.ssh_client
    if not src:
        return host
    cidr = f"{src}/128" if ":" in src else f"{src}/32"
    allow = list(host.vars.get("allowlist") or [])
    if cidr in allow:
        return host
    new_vars = {**host.vars, "allowlist": [*allow, cidr]}
    origins = {**host.origins, "allowlist": Origin("sipops install (operator's SSH source added)", "-", 0)}
    return dataclasses.replace(host, vars=new_vars, origins=origins)


def verify_phase(host: Host, sockets: list[dict[str, object]]) -> PhasePlan:
    """Process up, every socket listening, SIP OPTIONS answered on each: run on the host."""
    log_file = str(host.vars["log_file"])
    started = f"sipops: OpenSIPS started on {host.name} "  # the cfg's startup_route writes it
    specs = [f"{s['proto']}:{s['address']}:{s['port']}" for s in sockets if s["proto"] in ("udp", "tcp")]
    targets = " ".join(q(t) for t in specs)
    probe = " ".join(q(a) for a in argv_command("sipops.host.sip:probe_main", specs))  # the one boot path
    return PhasePlan(
        "verify",
        steps=[
            Step(
                "opensips process up",
                "pgrep -x opensips >/dev/null || { echo 'no opensips process'; exit 1; }",
                verify=True,
            ),
            Step(f"SIP OPTIONS answered on {targets}", probe, verify=True),
            Step(
                f"OpenSIPS's own start line is in {log_file}",
                f"for i in $(seq 1 40); do grep -qF {q(started)} {q(log_file)} && exit 0; sleep 0.25; done;"
                f" echo 'not in {log_file}:'; tail -n 5 {q(log_file)}; exit 1",
                verify=True,
            ),
        ],
    )


def install_host(
    inv: Inventory,
    host: Host,
    runner: Runner,
    *,
    check: bool,
    push_files: PushFiles,
    skip: set[str] | None = None,
    log: Callable[[str], None] = print,
    watch: Callable[[str], StepWatch] | None = None,
) -> InstallReport:
    """Every phase in order on one host, stopping at the first that fails.

    watch: given a phase's name, what is told about its steps as they run (live progress).
    """
    report = InstallReport(host.name)

    def record(phase: PhaseReport) -> bool:
        report.phases.append(phase)
        log(format_phase(host.name, phase))
        return not phase.failed

    try:
        facts = gather(runner)
    except Exception as exc:  # unreachable, auth, host key: this host fails alone
        record(PhaseReport("facts", error=f"{type(exc).__name__}: {exc}"))
        return report
    try:
        osinfo = detect(parse_os_release(facts.os_release))
    except UnsupportedOS as exc:
        record(PhaseReport("os", error=str(exc)))
        return report
    if not facts.systemd:
        record(PhaseReport("os", error="systemd is not running on the host (sipops manages services with it)"))
        return report
    record(PhaseReport("os", note=f"{osinfo.pretty} ({osinfo.pkg}, firewall: {osinfo.firewall})"))
    host = with_operator_allowed(host, facts)
    rendered = render_host(inv, host)  # once: the phases, the files and the checks all read this render
    backend = plan.firewall_backend(osinfo, facts.has_nft, facts.firewalld)
    marker = f"sipops install probe {secrets.token_hex(6)}"
    container = bool(facts.container)
    phases = plan.install_plan(rendered, osinfo, firewall=backend, log_marker=marker, in_container=container)
    by_name = {p.name: p for p in phases}
    order = [
        "dependencies",
        "opensips",
        "directories",
        "sipops agent",
        "database",  # before files: their handlers restart OpenSIPS, which opens the database
        "files",
        "limits",
        "firewall",
        "logging",
        "service",
        "verify",
    ]
    ctx_sockets = rendered.context["sip_sockets"]
    skip = skip or set()
    for name in order:
        if name in skip:
            record(PhaseReport(name, note="skipped (--skip)"))
            continue
        if name == "sipops agent":
            try:
                cache = cache_dir("wheelhouse") or Path(tempfile.mkdtemp(prefix="sipops-wheelhouse-"))
                tar, stamp = agent.build_wheelhouse(cache, facts.python or "3", facts.arch)
            except agent.WheelhouseError as exc:
                if not record(PhaseReport(name, error=str(exc))):
                    return report
                continue
            phase: PhasePlan | None = agent.agent_phase(tar, stamp)
        elif name == "files":
            pending = check and any(p.name == "opensips" and p.changed for p in report.phases)
            if not record(push_files(rendered, check, pending)):
                return report
            continue
        elif name == "verify":
            if check:
                record(PhaseReport(name, note="skipped in --check"))
                continue
            phase = verify_phase(host, ctx_sockets)
        else:
            phase = by_name.get(name)
        if phase is None:
            continue
        watcher = watch(name) if watch is not None else None
        results = run_phase(runner, phase, check=check, watch=watcher)
        if not record(PhaseReport(name, results, phase.note)):
            return report
    return report


def run_phase(runner: Runner, phase: PhasePlan, *, check: bool, watch: StepWatch | None) -> list[StepResult]:
    """The phase's steps in order, one script per stretch: a step with an upload (a wheelhouse, a release
    tarball, the apt source list) starts a stretch, its file put by the push agent just before it, so its
    guard and the steps after it see the file and the steps before it do not. A placed file is a change."""
    stretches: list[list[Step]] = []
    for step in phase.steps:
        if step.upload is not None or not stretches:
            stretches.append([])
        stretches[-1].append(step)
    results: list[StepResult] = []
    for i, stretch in enumerate(stretches):
        first, up = stretch[0], stretch[0].upload
        try:
            placed = up is not None and not check and bool(place(runner, [Artifact(up.path, up.data())]))
        except (RemoteError, OSError) as exc:  # a local file unreadable, the host refusing it
            done = [StepResult(first.name, "failed", f"upload of {up.path if up else ''}: {exc}")]
            done += [StepResult(s.name, "skipped") for s in stretch[1:]]
        else:
            done = run_steps(runner, stretch, check=check, watch=watch)
            if placed and done[0].status == "ok":
                done[0] = StepResult(first.name, "changed")
        results += done
        if any(r.status == "failed" for r in done):
            results += [StepResult(s.name, "skipped") for later in stretches[i + 1 :] for s in later]
            break
    return results


def format_phase(host: str, phase: PhaseReport) -> str:
    lines = []
    if phase.error:
        lines.append(f"{host}: {phase.name}: FAILED: {phase.error}")
        return "\n".join(lines)
    counts: dict[str, int] = {}
    for r in phase.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to do"
    head = f"{host}: {phase.name}: {'FAILED' if phase.failed else summary}"
    if phase.note.startswith("skipped") and not phase.results:
        head = f"{host}: {phase.name}: {phase.note}"
    elif phase.note:
        head += f" ({phase.note})"
    lines.append(head)
    for r in phase.results:
        if r.status in ("changed", "would", "failed"):
            lines.append(f"    {r.status:<7} {r.name}")
        if r.status == "failed" and r.output:
            lines += [f"        | {line}" for line in r.output.splitlines()[-30:]]
    return "\n".join(lines)
