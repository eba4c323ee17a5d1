"""Plan computation: each data file under data/plan/ is rendered files + canned facts + the expected plan."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipops.remote.facts import handler_units, parse_facts, validator_command
from sipops.remote.plan import plan_files
from sipops.render import RenderedFile

CASES = sorted((Path(__file__).parent / "data" / "plan").glob("*.yaml"))


def _sha(value: Any) -> Any:
    """`sha256-of:TEXT` in a data file stands for the hash of TEXT (so the cases stay readable)."""
    if isinstance(value, str) and value.startswith("sha256-of:"):
        return hashlib.sha256(value[len("sha256-of:") :].encode()).hexdigest()
    if isinstance(value, dict):
        return {k: _sha(v) for k, v in value.items()}
    return value


def _rendered(raw: dict[str, Any]) -> RenderedFile:
    return RenderedFile(
        dest=raw["dest"],
        content=raw["content"].encode(),
        mode=raw.get("mode", "0644"),
        owner=raw.get("owner", "root"),
        group=raw.get("group", "root"),
        validate=raw.get("validate"),
        notify=tuple(raw.get("notify", ())),
        src="test.j2",
    )


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_plan_matches_the_data_file(case: Path) -> None:
    data = yaml.safe_load(case.read_text())
    facts = parse_facts(_sha({"users": {}, "groups": {}, **data["facts"]}))
    plan = plan_files("h1", [_rendered(f) for f in data["files"]], data["handlers"], facts)
    expect = data["expect"]
    assert {c.dest: c.action for c in plan.files} == expect["actions"]
    assert plan.handlers == expect["handlers"]
    assert len(plan.problems) == len(expect["problems"]), plan.problems
    for wanted, got in zip(expect["problems"], plan.problems, strict=True):
        assert wanted in got
    assert plan.notes == expect.get("notes", [])
    for dest, text in expect.get("describe", {}).items():
        assert next(c for c in plan.files if c.dest == dest).describe() == text


def test_handler_units_reads_systemctl_commands() -> None:
    assert handler_units("systemctl daemon-reload") == []
    assert handler_units("systemctl restart opensips") == ["opensips.service"]
    assert handler_units("systemctl enable x && systemctl restart sipops-watch.service") == ["sipops-watch.service"]
    assert handler_units("systemctl --no-block reload rsyslog nginx") == ["rsyslog.service", "nginx.service"]
    assert handler_units("nft -f /etc/sipops/firewall.nft") == []


def test_validator_command_is_the_program_the_validator_runs() -> None:
    f = _rendered({"dest": "/x", "content": "", "validate": "LC_ALL=C /usr/sbin/opensips -C -f {path}"})
    assert validator_command(f) == "/usr/sbin/opensips"
    assert validator_command(_rendered({"dest": "/x", "content": ""})) is None


def test_every_restart_handler_clears_the_start_rate_limit_first() -> None:
    """Pushes in a row restart a unit more than 5 times in 10 s: systemd's default start limit would
    refuse the restart (and the rollback's), leaving the proxy stopped. Each handler resets it first."""
    from sipops.roles import RoleLibrary

    lib = RoleLibrary(None)
    handlers = {name: cmd for role in lib.available() for name, cmd in lib.load(role).handlers.items()}
    restarts = {name: cmd for name, cmd in handlers.items() if "systemctl restart" in cmd}
    assert restarts, handlers
    for name, cmd in restarts.items():
        for unit in handler_units(cmd):
            reset = cmd.find(f"systemctl reset-failed {unit.removesuffix('.service')}")
            assert 0 <= reset < cmd.find("systemctl restart"), (name, cmd)
