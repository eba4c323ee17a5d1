"""Drain around restarts (issue 19): which hosts a push drains, where, and the program shipped for it.

The MI steps themselves run against a real OpenSIPS in tests/e2e/test_drain.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sipops.inventory import Inventory, load_inventory
from sipops.remote import ship
from sipops.remote.drain import ENTRY, entries_for, restarts_opensips
from sipops.remote.facts import HostFacts, RemoteFile, sha256
from sipops.remote.plan import plan_files
from sipops.remote.runner import LocalRunner, call
from sipops.render import HostRender, render_host

EDGE = {"roles": ["registrar", "proxy"]}


def _inv(tmp_path: Path, lb_vars: dict[str, Any], **extra: dict[str, Any]) -> Inventory:
    hosts: dict[str, Any] = {
        "h1": {"address": "198.18.0.11", **EDGE},
        "h2": {"address": "198.18.0.12", **EDGE},
        "h3": {"address": "198.18.0.13", "roles": ["loadbalancer"], "vars": lb_vars},
        **extra,
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"hosts": hosts}))
    return load_inventory(path)


def _gw(name: str, address: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "address": address, **more}


def test_an_edge_node_is_found_as_a_destination_of_its_balancer_with_the_uri_it_runs(tmp_path: Path) -> None:
    inv = _inv(tmp_path, {"gateways": [_gw("e1", "198.18.0.11"), _gw("e2", "198.18.0.12", set=2)]})
    [e] = entries_for(inv, inv.hosts["h2"])
    assert (e.lb.name, e.engine, e.set, e.uri) == ("h3", "dispatcher", 2, "sip:198.18.0.12:5060")
    assert e.url == "http://127.0.0.1:8888/mi"
    # The URI is the one the balancer's table (and ds_list) holds: health.json renders the same macro.
    health = next(f for f in render_host(inv, inv.hosts["h3"]).files if f.dest.endswith("health.json"))
    assert '"sip:198.18.0.12:5060"' in health.content.decode()


def test_a_gateway_on_another_port_or_transport_is_not_the_node(tmp_path: Path) -> None:
    gws = [_gw("other-port", "198.18.0.11", port=5080), _gw("tls", "198.18.0.11", transport="tls")]
    inv = _inv(tmp_path, {"gateways": gws, "lb_engine": "load_balancer", "lb_ping_interval": 0})
    assert entries_for(inv, inv.hosts["h1"]) == []
    inv = _inv(tmp_path, {"gateways": [_gw("tcp", "198.18.0.11", transport="tcp")], "lb_ping_interval": 0})
    [e] = entries_for(inv, inv.hosts["h1"])
    assert e.uri == "sip:198.18.0.11:5060;transport=tcp"


def test_a_host_behind_no_balancer_and_the_balancer_itself_have_no_entries(tmp_path: Path) -> None:
    inv = _inv(tmp_path, {"gateways": [_gw("e1", "198.18.0.11")]})
    assert entries_for(inv, inv.hosts["h2"]) == [] and entries_for(inv, inv.hosts["h3"]) == []


def _plan(rendered: HostRender, live_cfg: bytes) -> Any:
    facts = HostFacts(os={}, init="systemd", files={})
    for f in rendered.files:
        live = live_cfg if f.dest.endswith("/opensips.cfg") else f.content
        facts.files[f.dest] = RemoteFile(sha256(live), f"{int(f.mode, 8):04o}", f.owner, f.group, content=live)
    return plan_files(rendered.host.name, rendered.files, rendered.handlers, facts)


def test_a_modparam_change_restarts_and_is_drained_a_route_change_is_not(tmp_path: Path) -> None:
    inv = _inv(tmp_path, {"gateways": [_gw("e1", "198.18.0.11")]})
    before = render_host(inv, inv.hosts["h1"])
    live = next(f.content for f in before.files if f.dest.endswith("/opensips.cfg"))
    assert not restarts_opensips(before, _plan(before, live))
    inv = _inv(tmp_path, {"gateways": [_gw("e1", "198.18.0.11")]}, h1={"address": "198.18.0.11", **EDGE, "vars": {
        "sip_fr_timeout": 7}})  # fmt: skip
    modparam = render_host(inv, inv.hosts["h1"])
    plan = _plan(modparam, live)
    assert "restart opensips" in plan.handlers and restarts_opensips(modparam, plan)
    # Live cfg that differs from the new one in a route block only: reloaded, nothing to drain.
    route_only = live.replace(b"sipops: OpenSIPS started", b"sipops: OpenSIPS (old) started")
    assert route_only != live
    plan = _plan(before, route_only)
    assert plan.handlers == ["reload routes"] and not restarts_opensips(before, plan)


def test_the_drain_steps_boot_through_the_one_boot_path_and_say_when_mi_does_not_answer() -> None:
    assert ship.bundle(ENTRY).modules == (
        "sipops",
        "sipops.host",
        "sipops.host.drain",
        "sipops.host.health",
        "sipops.host.health.mi",
    )
    # Port 9 on loopback: nothing listens, so OpenSIPS "does not answer" (connection refused).
    req = {"op": "wait_idle", "url": "http://127.0.0.1:9/mi", "timeout": 0}
    out = call(LocalRunner(), req, timeout=30, entry=ENTRY)
    assert out["ok"] is False and "127.0.0.1:9" in out["error"], out
    req = {"op": "lb_state", "url": "http://127.0.0.1:9/mi", "engine": "load_balancer", "items": []}
    out = call(LocalRunner(), req, timeout=30, entry=ENTRY)
    assert out["ok"] is False and "127.0.0.1:9" in out["error"], out
