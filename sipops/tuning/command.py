"""The plain function behind `sipops tune-tcp`: arguments checked, hosts through the fleet executor, a
current -> target table per host, the push engine's result, the read-back, then the summary table."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TextIO

from sipops.errors import InputError
from sipops.inventory import load_inventory, resolve_inventory_path
from sipops.remote.apply import PushOptions
from sipops.remote.executor import FORKS, HostRun, printer, reach, run_hosts, summarize
from sipops.remote.fleet import Target, load_targets
from sipops.tuning.calc import HOST, TuneInputError, check_max_connections
from sipops.tuning.run import (
    CONTAINER_HOST,
    NOT_TAKEN,
    UNCHECKED,
    TuneResult,
    default_max_connections,
    summary,
    tune_host,
)

_ACTION_WORDS = {"set": "set", "ok": "ok", "keep": "keep", "lower": "LOWER", "host": "HOST"}


def table(result: TuneResult) -> list[str]:
    rows = [("KEY", "CURRENT", "TARGET", "ACTION", "REASON")]
    for t in result.targets:
        rows.append((t.key, t.current if t.current is not None else "-", t.target, _ACTION_WORDS[t.action], t.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]


def report(result: TuneResult, check: bool) -> list[str]:
    name = result.host
    lines: list[str] = []
    probe = result.probe
    if probe is not None:
        f = probe.facts
        where = f"container {f.container}" if f.container else "not a container"
        lines.append(f"{name}: {result.max_connections} connections; {f.cpus} cores, {f.mem_mb} MB RAM, {where}")
        lines += table(result)
    for note in result.notes:
        lines.append(f"{name}: note: {note}")
    if result.error:
        lines.append(f"{name}: FAILED: {result.error}")
        return lines
    if check:
        files = ", ".join(result.files) if result.files else "none"
        lines.append(f"{name}: --check: files that would change: {files}")
        if result.files:
            lines.append(f"{name}: --check: then: {', '.join(result.handlers) or 'no handler (no restart)'}")
        return lines
    push = result.push
    if push is not None:
        if push.failed:
            lines.append(f"{name}: {push.status.upper()}: {push.reason}")
            lines += [f"{name}:   | {d}" for d in push.details]
            return lines
        if push.status == "changed":
            ran = ", ".join(push.handlers) or "no handler"
            lines.append(f"{name}: pushed {', '.join(push.changed)}; ran {ran}; backup {push.stamp}")
        else:
            lines.append(f"{name}: files already tuned; nothing pushed")
    for r in result.readback:
        if r.verdict in (NOT_TAKEN, CONTAINER_HOST, UNCHECKED):
            live = r.live if r.live is not None else "-"
            extra = f" ({r.note})" if r.note else ""
            lines.append(f"{name}: {r.verdict}: {r.key} is {live}, wanted {r.want}{extra}")
    counts = summary(result)
    if result.readback:
        parts = [f"{counts.get(v, 0)} {v}" for v in ("ok", NOT_TAKEN, CONTAINER_HOST, UNCHECKED) if counts.get(v)]
        lines.append(f"{name}: read back: {', '.join(parts)}")
    host_keys = [t.key for t in result.targets if t.action == HOST]
    if host_keys and not result.readback:
        lines.append(f"{name}: {CONTAINER_HOST}: {', '.join(host_keys)}")
    return lines


def verdict(result: TuneResult) -> tuple[str, str]:
    """The host's row in the summary table."""
    if result.error:
        return "failed", result.error
    if result.push is not None and result.push.failed:
        return result.push.status, result.push.reason
    if result.failed:
        return "failed", "did not take: " + ", ".join(r.key for r in result.readback if r.verdict == NOT_TAKEN)
    if result.push is not None:
        return ("changed" if result.push.status == "changed" else "unchanged"), ""
    return ("would change" if result.files else "unchanged"), ""


def _local_inventory(inventory: str | None, targets: list[str]) -> tuple[str | None, list[str]]:
    """--local without HOST: the inventory's only host, or this machine with the roles' defaults."""
    if targets:
        return inventory, targets
    path = resolve_inventory_path(inventory)
    if path.exists():
        inv = load_inventory(path)
        if len(inv.hosts) != 1:
            raise InputError("--local: name the inventory host whose settings apply here", field="HOST")
        return inventory, list(inv.hosts)
    tmp = Path(tempfile.mkdtemp(prefix="sipops-tune-")) / "inventory.yaml"
    tmp.write_text("hosts:\n  localhost:\n    address: 127.0.0.1\n")
    return str(tmp), ["localhost"]


def select(
    targets: list[str],
    *,
    inventory: str | None,
    local: bool,
    accept_new: bool,
    max_connections: int | None,
    calls: int | None,
) -> Target:
    """The hosts and every argument checked before one is touched (InputError, exit 2)."""
    try:
        if max_connections is not None:
            check_max_connections(max_connections)
        hosts = list(targets)
        if local:
            inventory, hosts = _local_inventory(inventory, hosts)
        t = load_targets(inventory, hosts, local=local, accept_new=accept_new)
        for h in t.hosts:
            if max_connections is None:
                check_max_connections(default_max_connections(h))
            if calls is not None and "mediarelay" in h.roles:
                from sipops.mediarelay import check_calls

                check_calls(h, calls)
    except TuneInputError as exc:
        raise InputError(str(exc), field="--max-connections") from None
    return t


def tune_tcp(
    t: Target,
    out: TextIO,
    *,
    max_connections: int | None,
    allow_lower: bool,
    check: bool,
    opts: PushOptions,
    forks: int = FORKS,
    serial: int | None = None,
    calls: int | None = None,
) -> int:
    """Every host through the executor; each host's report as it finishes, then the summary table."""
    emit = printer(out)
    by_name = {h.name: h for h in t.hosts}

    def one(name: str) -> TuneResult:
        host = by_name[name]
        res = tune_host(
            t.inv, host, reach(t.runner(host)), max_connections=max_connections, allow_lower=allow_lower,
            check=check, opts=opts, log=lambda _: None, calls=calls,
        )  # fmt: skip
        emit("\n".join(report(res, check)))
        return res

    runs: list[HostRun[TuneResult]] = run_hosts(
        list(by_name), one, forks=forks, serial=serial, verdict=verdict, emit=emit
    )
    return summarize(runs, emit)
