"""Push one host: facts, plan, then ONE agent run that stages, validates, backs up, renames,
runs the handlers and the health gate, and rolls back on failure. Rollback to a backup, too."""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sipops.inventory import Inventory
from sipops.remote.facts import gather, handler_units, opensips_cfg, sha256
from sipops.remote.plan import REMOVE, HostPlan, plan_host
from sipops.remote.runner import RemoteError, Runner, call
from sipops.render import HostRender

if TYPE_CHECKING:
    from sipops.remote.drain import Drainer

RunnerFactory = Callable[[], Runner]


@dataclass
class PushOptions:
    lock_timeout: float = 60
    gate_timeout: float = 20
    keep: int = 10
    root: str = ""  # tests only: every host path lives under this directory
    apply_timeout: float = 900
    drain: Drainer | None = None  # issue 19: drain behind load balancers around restarts (push only)


@dataclass
class HostResult:
    host: str
    status: str  # unchanged | changed | would change | failed | rolled back | refused
    changed: list[str] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    reason: str = ""
    details: list[str] = field(default_factory=list)  # what explains a failure (validator output, logs)
    stamp: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "rolled back", "refused")


def new_stamp() -> str:
    """Sortable and unique: UTC time plus a few random hex digits."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z-{secrets.token_hex(2)}"


def gate_spec(inv: Inventory | None, rendered: HostRender, timeout: float) -> dict[str, Any]:
    """What the health gate checks after the handlers: units they restart; SIP sockets for SIP services."""
    host = rendered.host
    sip_units = sorted({s if "." in s else s + ".service" for r in host.role_objs for s in r.services})
    sockets: list[dict[str, Any]] = []
    if inv is not None and sip_units:
        sockets = [
            {"proto": s["proto"], "address": s["address"], "port": int(s["port"])}
            for s in rendered.context["sip_sockets"]
            if s["proto"] in ("udp", "tcp")
        ]
    cfg = opensips_cfg(rendered)
    return {
        "units": {name: handler_units(cmd) for name, cmd in rendered.handlers.items()},
        "sip_units": sip_units,
        # The agent probes the sockets of the opensips.cfg on disk (the new one, or after a rollback the
        # restored one); "sockets" (the inventory's) stand in for a SIP service without an opensips.cfg.
        "cfg": cfg.dest if cfg is not None and sip_units else None,
        "sockets": sockets,
        "log_file": host.vars.get("log_file"),
        "timeout": timeout,
    }


def apply_request(plan: HostPlan, gate: dict[str, Any], opts: PushOptions, stamp: str) -> tuple[dict[str, Any], bytes]:
    """The agent request and the payload: every changed file's bytes back to back, in request order."""
    files, payload = [], bytearray()
    for c in plan.changes:
        f = c.file
        if c.action == REMOVE:
            files.append({"path": f.dest, "delete": True, "retire": c.retire or "", "notify": list(f.notify)})
            continue
        files.append(
            {
                "path": f.dest,
                "sha256": sha256(f.content),
                "size": len(f.content),
                "mode": f"{int(f.mode, 8):04o}",
                "owner": f.owner,
                "group": f.group,
                "validate": f.validate,
                "notify": list(c.notify),
            }
        )
        payload += f.content
    req = {
        "op": "apply",
        "kind": "push",
        "root": opts.root,
        "stamp": stamp,
        "files": files,
        "handlers": [{"name": n, "cmd": plan.handler_commands[n]} for n in plan.handlers],
        "force_handlers": plan.forced,
        "gate": gate,
        "lock_timeout": opts.lock_timeout,
        "keep": opts.keep,
    }
    return req, bytes(payload)


def run_apply(
    runner: Runner, reconnect: RunnerFactory | None, req: dict[str, Any], payload: bytes, timeout: float
) -> dict[str, Any]:
    """One agent run; if the connection drops after the transfer, reconnect and wait for the host's result."""
    try:
        return call(runner, req, payload, timeout=timeout)
    except RemoteError as exc:
        if reconnect is None or "connection lost" not in str(exc):
            raise
    again = reconnect()
    try:
        wait = {"op": "wait", "root": req["root"], "stamp": req["stamp"], "timeout": timeout}
        return call(again, wait, timeout=timeout + 30)
    finally:
        again.close()


def result_from_reply(host: str, reply: dict[str, Any], stamp: str) -> HostResult:
    ran = [h["name"] for h in reply.get("handlers", [])]
    if reply.get("ok"):
        changed = list(reply.get("changed", []))
        # Handlers alone (files right, what OpenSIPS ran was not) change the host too.
        done = bool(changed or ran)
        return HostResult(host, "changed" if done else "unchanged", changed, ran, stamp=stamp if changed else "")
    details: list[str] = []
    if reply.get("output"):
        details += str(reply["output"]).rstrip().splitlines()[-30:]
    for h in reply.get("handlers", []):
        if h.get("rc"):
            details += [f"handler {h['name']} (exit {h['rc']}):", *str(h["output"]).rstrip().splitlines()[-15:]]
    for c in reply.get("gate", []):
        if not c["ok"]:
            details.append(f"gate: {c['what']}: FAILED {c.get('detail', '')}".rstrip())
    for title, text in (reply.get("logs") or {}).items():
        details += [f"{title}:", *[f"  {line}" for line in str(text).rstrip().splitlines()]]
    status = "failed"
    reason = str(reply.get("error", "failed"))
    if reply.get("phase") in ("validate",):
        status = "refused"
        reason += f" (live {reply.get('file')} unchanged)"
    if reply.get("rolled_back"):
        status = "rolled back"
        back = reply.get("rollback_gate", [])
        serving = all(c["ok"] for c in back)
        if not back:
            reason += "; previous config restored"
        elif serving:
            reason += f"; previous config restored and healthy ({len(back)} gate checks passed)"
        else:
            reason += "; previous config restored but its health gate FAILED too"
        for h in reply.get("rollback_handlers", []):
            if h.get("rc"):
                reason += f"; handler '{h['name']}' failed again after the restore"
                details += [
                    f"after rollback, handler {h['name']} (exit {h['rc']}):",
                    *str(h["output"]).splitlines()[-5:],
                ]
        for c in back:
            if not c["ok"]:
                details.append(f"after rollback: {c['what']}: FAILED {c.get('detail', '')}".rstrip())
    return HostResult(host, status, [], ran, reason, details, stamp)


def push_host(
    rendered: HostRender,
    runner_factory: RunnerFactory,
    *,
    inv: Inventory | None,
    opts: PushOptions,
    check: bool = False,
    log: Callable[[str], None] = print,
) -> HostResult:
    """facts -> plan -> one apply run. Any problem fails this host alone, with the reason."""
    name = rendered.host.name
    t0 = time.monotonic()
    runner: Runner | None = None
    try:
        runner = runner_factory()
        facts = gather(runner, rendered, root=opts.root)
        plan = plan_host(rendered, facts)
        if plan.problems:
            result = HostResult(name, "failed", reason="; ".join(plan.problems))
        elif not plan.pending:
            log(f"{name}: no changes ({len(plan.files)} files unchanged)")
            result = HostResult(name, "unchanged")
        elif check:
            result = HostResult(name, "would change", [c.dest for c in plan.changes], plan.handlers)
        else:
            # --- issue 19 hook: a restart behind a load balancer is drained first (sipops.remote.drain)
            apply = functools.partial(_apply, runner, runner_factory, plan, rendered, inv, opts, log)
            result = opts.drain.around(rendered, plan, runner, apply, log) if opts.drain else apply()
    except RemoteError as exc:
        result = HostResult(name, "failed", reason=str(exc))
    except Exception as exc:  # unreachable, auth, host key: this host fails alone
        result = HostResult(name, "failed", reason=f"{type(exc).__name__}: {exc}")
    finally:
        if runner is not None:
            runner.close()
    result.seconds = time.monotonic() - t0
    return result


def _apply(
    runner: Runner,
    runner_factory: RunnerFactory,
    plan: HostPlan,
    rendered: HostRender,
    inv: Inventory | None,
    opts: PushOptions,
    log: Callable[[str], None],
) -> HostResult:
    name = plan.host
    log(f"{name}: {len(plan.changes)} to change: {', '.join(c.dest for c in plan.changes)}")
    stamp = new_stamp()
    req, payload = apply_request(plan, gate_spec(inv, rendered, opts.gate_timeout), opts, stamp)
    reply = run_apply(runner, runner_factory, req, payload, opts.apply_timeout)
    return result_from_reply(name, reply, stamp)


def list_backups(runner: Runner, root: str = "") -> list[dict[str, Any]]:
    return list(call(runner, {"op": "backups", "root": root}, timeout=60)["backups"])


def rollback_host(
    runner_factory: RunnerFactory, host: str, *, to: str | None, opts: PushOptions, gate: dict[str, Any] | None = None
) -> HostResult:
    """Put a backup's files back (itself backed up first, so a rollback can be undone), then its handlers."""
    t0 = time.monotonic()
    runner = runner_factory()
    try:
        backups = list_backups(runner, opts.root)
        if not backups:
            return HostResult(host, "failed", reason="no backups on the host (nothing was pushed yet)")
        chosen = backups[-1] if to is None else next((b for b in backups if b["stamp"] == to), None)
        if chosen is None:
            known = ", ".join(b["stamp"] for b in backups[-5:])
            return HostResult(host, "failed", reason=f"no backup {to} on the host (latest: {known})")
        handlers = chosen.get("handlers", [])
        files = []
        for e in chosen["files"]:
            if e["existed"]:
                f = {k: e[k] for k in ("path", "sha256", "size", "mode", "owner", "group")}
                files.append({**f, "source": e["copy"], "notify": [h["name"] for h in handlers]})
            else:
                files.append({"path": e["path"], "delete": True, "notify": [h["name"] for h in handlers]})
        stamp = new_stamp()
        req = {
            "op": "apply",
            "kind": f"rollback to {chosen['stamp']}",
            "root": opts.root,
            "stamp": stamp,
            "files": files,
            "handlers": handlers,
            "gate": gate or chosen.get("gate") or {},
            "lock_timeout": opts.lock_timeout,
            "keep": opts.keep,
            "validate": False,
        }
        reply = run_apply(runner, runner_factory, req, b"", opts.apply_timeout)
        result = result_from_reply(host, reply, stamp)
        result.reason = result.reason or f"restored {chosen['stamp']}"
    except RemoteError as exc:
        result = HostResult(host, "failed", reason=str(exc))
    except Exception as exc:
        result = HostResult(host, "failed", reason=f"{type(exc).__name__}: {exc}")
    finally:
        runner.close()
    result.seconds = time.monotonic() - t0
    return result
