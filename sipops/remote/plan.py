"""Plan = rendered files − facts: per file create / change / unchanged, and the handlers that follow.

Pure: no connections. A plan also says why a host cannot be pushed to (problems), before anything
is sent: a validator or a service that does not exist there, an owner the host does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sipops.cfgchange import NOTHING, ROUTES, CfgChange, classify
from sipops.remote.facts import HostFacts, RemoteFile, handler_units, health_config, sha256, validator_command
from sipops.render import HostRender, RenderedFile, RetiredFile

CREATE, CHANGE, UNCHANGED, REMOVE = "create", "change", "unchanged", "remove"


@dataclass(frozen=True)
class FileChange:
    file: RenderedFile
    action: str  # create | change | unchanged
    before: RemoteFile | None
    content: bool = False  # the bytes differ
    mode: tuple[str, str] | None = None  # (live, wanted) when they differ
    owner: tuple[str, str] | None = None  # ("root:root", "root:opensips") when they differ
    retire: str | None = None  # remove: the command the host runs first ("" for none)
    # opensips.cfg: what kind of change it is (sipops.cfgchange) and the handlers that follow from it
    kind: CfgChange | None = None

    @property
    def dest(self) -> str:
        return self.file.dest

    @property
    def notify(self) -> tuple[str, ...]:
        """The handlers this change triggers: a routes-only cfg change its lighter ones, comments none."""
        if self.kind is None or self.file.notify_routes is None:
            return self.file.notify
        if self.kind.kind == ROUTES:
            return self.file.notify_routes
        return () if self.kind.kind == NOTHING else self.file.notify

    def describe(self) -> str:
        parts = []
        if self.action == REMOVE:
            size = f"{self.before.size} bytes" if self.before else "absent"
            return f"{size}; no longer rendered" + (f"; first: {self.retire}" if self.retire else "")
        if self.action == CREATE:
            parts.append(f"{len(self.file.content)} bytes")
        elif self.content:
            parts.append("content")
        if self.mode:
            parts.append(f"mode {self.mode[0]} -> {self.mode[1]}")
        if self.owner:
            parts.append(f"owner {self.owner[0]} -> {self.owner[1]}")
        if self.kind is not None:
            follow = ", ".join(self.notify) or "nothing to run"
            parts.append(f"{self.kind.reason}: {follow}")
        return ", ".join(parts)


@dataclass
class HostPlan:
    host: str
    files: list[FileChange]
    handlers: list[str]  # in the order they will run
    handler_commands: dict[str, str]
    problems: list[str] = field(default_factory=list)  # the host cannot be pushed to: why
    notes: list[str] = field(default_factory=list)  # worth knowing, not blocking
    # Handlers that run although their files are unchanged: what OpenSIPS runs differs from them.
    forced: list[str] = field(default_factory=list)

    @property
    def changes(self) -> list[FileChange]:
        return [c for c in self.files if c.action != UNCHANGED]

    @property
    def pending(self) -> bool:
        return bool(self.changes or self.forced)


def _normal_mode(mode: str) -> str:
    return f"{int(mode, 8):04o}"


def compare(f: RenderedFile, before: RemoteFile | None) -> FileChange:
    if before is None:
        return FileChange(f, CREATE, None, content=True)
    want_mode = _normal_mode(f.mode)
    content = before.sha256 != sha256(f.content)
    mode = (before.mode, want_mode) if before.mode != want_mode else None
    live_owner, want_owner = f"{before.owner}:{before.group}", f"{f.owner}:{f.group}"
    owner = (live_owner, want_owner) if live_owner != want_owner else None
    action = CHANGE if content or mode or owner else UNCHANGED
    return FileChange(f, action, before, content=content, mode=mode, owner=owner)


def _kind_of_change(c: FileChange) -> FileChange:
    """A changed cfg that declares lighter handlers, compared with its live bytes: routes, comments or more."""
    if c.action != CHANGE or not c.content or c.file.notify_routes is None or c.before is None:
        return c
    live = c.before.content
    if live is None:
        return c
    kind = classify(live.decode(errors="replace"), c.file.content.decode(errors="replace"))
    return replace(c, kind=kind)


def order_handlers(names: set[str], declared: dict[str, str]) -> list[str]:
    """Declaration order, except that systemd reloads its unit files before anything restarts."""
    ordered = [n for n in declared if n in names]
    return sorted(ordered, key=lambda n: 0 if "daemon-reload" in declared[n] else 1)


def plan_host(rendered: HostRender, facts: HostFacts) -> HostPlan:
    plan = plan_files(rendered.host.name, rendered.files, rendered.handlers, facts, rendered.retired)
    if facts.mi is not None:
        drifted, notes = runtime_gateway_drift(rendered, facts.mi)
        plan.notes += notes
        if drifted:
            # The tables on disk are right but OpenSIPS runs other sets (edited and reloaded by hand, a
            # reload that never happened): their reload handler runs although no file changes.
            tables = [f for f in rendered.files if "/dbtext/" in f.dest and f.notify]
            wanted = {n for f in tables for n in f.notify} - set(plan.handlers)
            plan.forced = order_handlers(wanted, rendered.handlers)
            plan.handlers += plan.forced
            plan.handler_commands.update({n: rendered.handlers[n] for n in plan.forced})
    return plan


def runtime_gateway_drift(rendered: HostRender, reply: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether the gateway sets OpenSIPS runs (the facts run's MI listing) differ from the inventory's,
    and the notes that say how (or why they could not be compared)."""
    from sipops.host.health.checks_mi import drift
    from sipops.host.health.mi import parse_ds_list, parse_lb_list

    cfg = health_config(rendered) or {}
    method = "ds_list" if cfg.get("gateway_engine") == "dispatcher" else "lb_list"
    if "error" in reply:
        return False, [f"runtime gateways not compared: {reply['error']}"]
    running = (parse_ds_list if method == "ds_list" else parse_lb_list)(reply.get("result"))
    expected = tuple((str(g), str(u)) for g, u in cfg.get("gateways") or [])
    differs = drift(running, expected)
    return bool(differs), [f"runtime {method} differs from the inventory: {d}" for d in differs]


def plan_files(
    host: str,
    files: list[RenderedFile],
    handlers: dict[str, str],
    facts: HostFacts,
    retired: Sequence[RetiredFile] = (),
) -> HostPlan:
    """Compare each rendered file with the host's copy; collect handlers and blocking problems."""
    changes = [compare(f, facts.files.get(f.dest)) for f in files]
    for r in retired:
        before = facts.files.get(r.dest)
        if before is not None and before.kind == "file":
            gone = RenderedFile(r.dest, b"", before.mode, before.owner, before.group, None, r.notify, r.src)
            changes.append(FileChange(gone, REMOVE, before, content=True, retire=r.command))
    problems: list[str] = []
    for c in changes:
        before = c.before
        if before is not None and before.kind != "file":
            problems.append(f"{c.dest} exists on the host but is {before.kind}; sipops manages regular files only")
    changes = [_kind_of_change(c) for c in changes]
    full = {n for c in changes if c.action != UNCHANGED and c.kind is None for n in c.file.notify}
    # A routes-only cfg change whose full handlers run anyway (another file restarts OpenSIPS): no reload too.
    changes = [replace(c, kind=None) if c.kind and set(c.file.notify) & full else c for c in changes]
    triggered = {n for c in changes if c.action != UNCHANGED for n in c.notify}
    ordered = order_handlers(triggered, handlers)
    plan = HostPlan(host, changes, ordered, {n: handlers[n] for n in ordered}, problems)
    _check_host_can_take(plan, facts)
    _sysctl_notes(plan, facts)
    return plan


def _check_host_can_take(plan: HostPlan, facts: HostFacts) -> None:
    problems = plan.problems
    for c in plan.changes:
        cmd = validator_command(c.file)
        if cmd and facts.commands.get(cmd) is None and cmd in facts.commands:
            what = f"{c.dest} is validated with '{cmd}', which is not on the host"
            if cmd.rsplit("/", 1)[-1] == "opensips":
                what += f" (OpenSIPS is not installed there: `sipops install {plan.host}` installs it first)"
            problems.append(what)
        if facts.users.get(c.file.owner) is False:
            problems.append(f"{c.dest}: owner '{c.file.owner}' does not exist on the host")
        if facts.groups.get(c.file.group) is False:
            problems.append(f"{c.dest}: group '{c.file.group}' does not exist on the host")
    for address in facts.listen_missing:
        mine = ", ".join(a for a in facts.addresses if a not in ("127.0.0.1", "::1")) or "none"
        problems.append(f"opensips.cfg listens on {address}, which is not an address of this host (it has: {mine})")
    pushed_units = {c.dest.rsplit("/", 1)[-1] for c in plan.files if "/systemd/system/" in c.dest}
    for name in plan.handlers:
        command = plan.handler_commands[name]
        if "systemctl" in command and facts.init != "systemd":
            problems.append(f"handler '{name}' needs systemd, but the host's init is {facts.init}")
            continue
        for unit in handler_units(command):
            known = facts.units.get(unit, {}).get("load", "loaded")
            if known == "not-found" and unit not in pushed_units:
                problems.append(f"handler '{name}' restarts {unit}, which does not exist on the host")


def _sysctl_notes(plan: HostPlan, facts: HostFacts) -> None:
    for c in plan.files:
        if not c.dest.startswith("/etc/sysctl.d/") or c.action != UNCHANGED:
            continue
        for line in c.file.content.decode(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            key, value = key.strip(), " ".join(value.split())
            if not sep or key.startswith(("#", ";")) or key not in facts.sysctl:
                continue
            live = facts.sysctl[key]
            if live is not None and live != value:
                plan.notes.append(f"sysctl {key} is {live} live, {c.dest} sets {value}")
