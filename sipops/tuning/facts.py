"""Controller side of the tune-tcp probe: one agent run per host answers the push engine's facts and
tune-tcp's own (sipops.host.tuneprobe), parsed into HostFacts and TuneFacts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sipops.remote.facts import HostFacts, facts_request, parse_facts
from sipops.remote.runner import Runner, call
from sipops.render import HostRender
from sipops.tuning.calc import SPECS, TuneFacts

# Every sysctl tune-tcp reads (whether or not it sets it on this host).
KEYS = [s.key for s in SPECS if s.kind == "sysctl"]
ENTRY = "sipops.host.tuneprobe:main"  # its bundle holds the push agent: one run answers both


@dataclass
class TuneProbe:
    """What one probe run found: tune-tcp's facts, the unit and process it read, the push facts."""

    facts: TuneFacts
    unit: dict[str, Any]  # name, load, active, nofile, main_pid ({} without systemd)
    process: dict[str, Any] | None  # pid, nofile_soft, nofile_hard, shm_mb of the running OpenSIPS
    push: HostFacts | None


def probe_request(rendered: HostRender, *, with_push: bool, root: str = "") -> dict[str, Any]:
    lay = rendered.layout
    unit_files = [f"/etc/systemd/system/{lay.unit}.d/sipops.conf", f"/etc/systemd/system/{lay.unit}"]
    return {
        "op": "tune",
        "root": root,
        "keys": KEYS,
        "unit": lay.unit,
        "user": lay.user,
        "process": "opensips",
        "cfg": lay.cfg_file,
        "unit_files": unit_files,
        "push": facts_request(rendered, content=False, root=root) if with_push else None,
    }


def run_probe(runner: Runner, request: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """One agent run with the tune probe; the decoded reply (RemoteError when there is none)."""
    return call(runner, request, timeout=timeout, entry=ENTRY)


def parse_probe(reply: dict[str, Any]) -> TuneProbe:
    unit = dict(reply.get("unit") or {})
    process = reply.get("process")
    limit = unit.get("nofile") if unit.get("load") == "loaded" else None
    facts = TuneFacts(
        mem_mb=int(reply.get("mem_mb") or 0),
        cpus=int(reply.get("cpus") or 1),
        container=reply.get("container"),
        sysctl=dict(reply.get("sysctl") or {}),
        writable={k: bool(v) for k, v in (reply.get("writable") or {}).items()},
        limit_nofile=limit,
        user_nofile=reply.get("user_nofile"),
        process_nofile=(process or {}).get("nofile_soft"),
        opensips={k: int(v) for k, v in (reply.get("opensips") or {}).items()},
    )
    push = parse_facts(reply["push"]) if reply.get("push") else None
    return TuneProbe(facts, unit, process, push)


def gather(runner: Runner, rendered: HostRender, *, with_push: bool = True, root: str = "") -> TuneProbe:
    return parse_probe(run_probe(runner, probe_request(rendered, with_push=with_push, root=root)))
