"""The tune-tcp calculator: one YAML per case under tests/data/tune (facts and request in, expected
targets out), run by one parametrised test; plus how the targets become template variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sipops.tuning.calc import HOST, TuneFacts, TuneInputError, TuneRequest, calculate, template_vars

CASES = sorted((Path(__file__).parent / "data" / "tune").glob("*.yaml"))


def _facts(raw: dict[str, Any]) -> TuneFacts:
    return TuneFacts(
        mem_mb=raw["mem_mb"],
        cpus=raw["cpus"],
        container=raw.get("container"),
        sysctl={k: (None if v is None else str(v)) for k, v in (raw.get("sysctl") or {}).items()},
        writable=raw.get("writable") or {},
        limit_nofile=raw.get("limit_nofile"),
        user_nofile=raw.get("user_nofile"),
        process_nofile=raw.get("process_nofile"),
        opensips=raw.get("opensips") or {},
    )


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_the_calculator_gives_each_case_its_expected_targets(case: Path) -> None:
    data = yaml.safe_load(case.read_text())
    targets = {t.key: t for t in calculate(TuneRequest(**data["request"]), _facts(data["facts"]))}
    got = {key: [targets[key].target, targets[key].action] for key in data["expect"] if key in targets}
    assert got == data["expect"]
    for key in data.get("absent", []):
        assert key not in targets
    for key, words in (data.get("reasons") or {}).items():
        assert words in targets[key].reason, (key, targets[key].reason)
    for t in targets.values():  # every value says why
        assert t.reason


@pytest.mark.parametrize("bad", [0, -5, 4_000_001])
def test_a_connection_count_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(TuneInputError):
        calculate(TuneRequest(bad), TuneFacts(mem_mb=1024, cpus=1))


def test_targets_become_the_variables_the_templates_use() -> None:
    facts = TuneFacts(
        mem_mb=1024,
        cpus=2,
        container="systemd-nspawn",
        sysctl={
            "fs.file-max": "9223372036854775807",
            "fs.nr_open": "1048576",
            "net.core.somaxconn": "128",
            "net.core.netdev_max_backlog": None,
        },
    )
    targets = calculate(TuneRequest(2000), facts)
    out = template_vars(targets, {"vm.swappiness": 10, "net.core.netdev_max_backlog": 3000})
    assert out["somaxconn"] == 4096 and out["tcp_max_syn_backlog"] == 8192
    assert out["open_files_limit"] == 3072 and out["tcp_max_connections"] == 2000
    assert out["sysctl"]["net.ipv4.tcp_fin_timeout"] == "30"
    assert out["sysctl"]["vm.swappiness"] == 10  # the inventory's own keys stay
    # what the container cannot set is not written where `sysctl -p` would fail on it
    assert "net.core.netdev_max_backlog" not in out["sysctl"]
    assert not any(k.startswith("fs.") for k in out["sysctl"])
    assert {t.key for t in targets if t.action == HOST} == {"net.core.netdev_max_backlog"}
