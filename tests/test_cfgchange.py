"""What kind of change an opensips.cfg is: routes only (reload), comments only (nothing), else restart."""

from __future__ import annotations

from pathlib import Path

import yaml

from sipops.cfgchange import NOTHING, RESTART, ROUTES, classify, split_cfg
from sipops.inventory import load_inventory
from sipops.remote.facts import HostFacts, RemoteFile, sha256
from sipops.remote.plan import plan_files
from sipops.render import render_host

LB = {"address": "198.18.0.9", "roles": ["registrar", "proxy", "loadbalancer"],
      "vars": {"gateways": [{"name": "a", "address": "198.18.0.11"}]}}  # fmt: skip


def _cfg(tmp_path: Path, **extra: object) -> tuple[str, object]:
    path = tmp_path / f"inv{len(list(tmp_path.iterdir()))}.yaml"
    host = {**LB, "vars": {**LB["vars"], **extra}}  # type: ignore[dict-item]
    path.write_text(yaml.safe_dump({"hosts": {"lb1": host}}))
    inv = load_inventory(path)
    rendered = render_host(inv, inv.hosts["lb1"])
    cfg = next(f for f in rendered.files if f.dest.endswith("/opensips.cfg"))
    return cfg.content.decode(), rendered


def test_every_route_block_of_a_rendered_cfg_is_found(tmp_path: Path) -> None:
    text, _ = _cfg(tmp_path)
    _, routes = split_cfg(text)
    assert {"route", "route[relay]", "failure_route[gw_failover]", "route[to_gateways]"} <= set(routes)


def test_a_failover_code_change_is_routes_only(tmp_path: Path) -> None:
    old, _ = _cfg(tmp_path)
    new, _ = _cfg(tmp_path, lb_failover_codes="408|50[0-9]")
    change = classify(old, new)
    assert (change.kind, change.reason) == (ROUTES, "failure_route[gw_failover] changed")


def test_a_modparam_change_needs_a_restart_and_names_the_line(tmp_path: Path) -> None:
    old, _ = _cfg(tmp_path)
    new, _ = _cfg(tmp_path, sip_fr_timeout=7)
    change = classify(old, new)
    assert change.kind == RESTART and change.reason == 'modparam("tm", "fr_timeout", 7) changed'


def test_comments_and_blank_lines_change_nothing_but_a_hash_in_a_string_is_code() -> None:
    base = 'loadmodule "tm.so"\nroute {\n\txlog("a # b\\n");\n}\n'
    assert classify(base, base.replace("route {", "# a comment\n\nroute {")).kind == NOTHING
    assert classify(base, base.replace("a # b", "a # c")).kind == ROUTES


def test_a_route_added_or_removed_is_routes_only_and_a_new_module_is_a_restart() -> None:
    base = 'loadmodule "tm.so"\nroute {\n\texit;\n}\n'
    added = base + "route[extra] {\n\texit;\n}\n"
    assert classify(base, added).reason == "route[extra] added"
    assert classify(added, base).reason == "route[extra] removed"
    assert classify(base, 'loadmodule "sl.so"\n' + base).kind == RESTART


def _facts_for(live: object) -> HostFacts:
    """The host as the `live` render left it."""
    files = {}
    for f in live.files:  # type: ignore[attr-defined]
        files[f.dest] = RemoteFile(sha256(f.content), f"{int(f.mode, 8):04o}", f.owner, f.group, 0, f.content)
    return HostFacts(os={}, init="systemd", files=files)


def test_the_plan_reloads_routes_instead_of_restarting_and_says_why(tmp_path: Path) -> None:
    _, old = _cfg(tmp_path)
    _, r = _cfg(tmp_path, lb_failover_codes="408|50[0-9]")
    plan = plan_files("lb1", r.files, r.handlers, _facts_for(old))  # type: ignore[attr-defined]
    assert plan.handlers == ["reload routes"]
    change = next(c for c in plan.changes if c.dest.endswith("/opensips.cfg"))
    assert "failure_route[gw_failover] changed: reload routes" in change.describe()


def test_the_plan_restarts_for_a_modparam(tmp_path: Path) -> None:
    _, old = _cfg(tmp_path)
    _, r = _cfg(tmp_path, sip_fr_timeout=7)
    plan = plan_files("lb1", r.files, r.handlers, _facts_for(old))  # type: ignore[attr-defined]
    assert plan.handlers == ["restart opensips"]


def test_a_routes_only_cfg_beside_a_unit_change_restarts_once(tmp_path: Path) -> None:
    _, old = _cfg(tmp_path)
    _, r = _cfg(tmp_path, lb_failover_codes="408|50[0-9]", pkg_mb=64)  # pkg_mb: the unit's -M
    plan = plan_files("lb1", r.files, r.handlers, _facts_for(old))  # type: ignore[attr-defined]
    assert "reload routes" not in plan.handlers and "restart opensips" in plan.handlers
