"""Install command plans, pyinfra-style: each case file holds the OS, the host's roles and vars,
and the exact steps (name + command) every phase must produce. Review a changed case like code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipops.inventory import load_inventory
from sipops.provision.osinfo import detect
from sipops.provision.plan import install_plan
from sipops.render import render_host

CASES = Path(__file__).parent / "cases"


def plan_for(case: dict[str, Any], tmp_path: Path) -> dict[str, list[list[str]]]:
    inv_file = tmp_path / "inventory.yaml"
    host = {"address": "192.0.2.10", "roles": case["roles"], "vars": case.get("vars", {})}
    inv_file.write_text(yaml.safe_dump({"hosts": {"h": host}}))
    inv = load_inventory(inv_file)
    osinfo = detect(case["os_release"])
    rendered = render_host(inv, inv.hosts["h"])
    phases = install_plan(rendered, osinfo, firewall=case.get("firewall", "nftables"), log_marker="probe-1")
    return {p.name: [[s.name, c] for s, c in zip(p.steps, p.commands(), strict=True)] for p in phases}


@pytest.mark.parametrize("path", sorted(CASES.glob("*.yaml")), ids=lambda p: p.stem)
def test_install_plan_matches_its_case_file(path: Path, tmp_path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    got = plan_for(case, tmp_path)
    if os.environ.get("SIPOPS_REGEN_CASES"):  # after a deliberate change: regenerate, then review the diff
        case["expect"] = got
        path.write_text(yaml.safe_dump(case, sort_keys=False, width=200))
    assert got == case["expect"]
