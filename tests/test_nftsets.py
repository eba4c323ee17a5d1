"""The sets of table inet sipops are declared once (sipops/host/monitor/nftsets.py): the rendered firewall
and the ban backend both say exactly what it says, and nothing else declares a set."""

from __future__ import annotations

import re
from pathlib import Path

from sipops.host.monitor import nftsets
from sipops.host.monitor.ban import NftBackend
from sipops.inventory import load_inventory
from sipops.render import render_host

ROOT = Path(__file__).resolve().parents[1]


class RecordingNft:
    def __init__(self) -> None:
        self.batches: list[str] = []

    def run(self, batch: str) -> str:
        self.batches.append(batch)
        return ""


def _firewall() -> list[str]:
    inv = load_inventory(ROOT / "inventory.example.yaml")
    res = render_host(inv, inv.hosts["edge1"])
    return next(f for f in res.files if f.dest == "/etc/sipops/firewall.nft").content.decode().splitlines()


def test_the_firewall_declares_every_set_exactly_as_nftsets_and_no_other() -> None:
    declared = [ln for ln in _firewall() if ln.startswith("add set ")]
    assert declared == [s.declaration for s in nftsets.ALL_SETS]


def test_the_ban_backend_declares_the_watchers_sets_as_nftsets_and_the_firewall_do() -> None:
    rec = RecordingNft()
    NftBackend(rec).start()
    sets = [ln for ln in rec.batches[0].splitlines() if ln.startswith("add set ")]
    assert sets == [s.declaration for s in nftsets.WATCHER_SETS]
    assert set(sets) <= set(_firewall())


def test_no_other_module_or_template_spells_a_set_declaration() -> None:
    pattern = re.compile(r"add set (inet sipops|\{TABLE\}|\{T\})")
    offenders = [
        str(p.relative_to(ROOT))
        for base in ("sipops", "templates")
        for p in (ROOT / base).rglob("*")
        if p.is_file() and p.suffix in (".py", ".j2") and p.name != "nftsets.py" and pattern.search(p.read_text())
    ]
    assert offenders == []


def test_the_ban_sets_are_the_ones_the_meters_and_the_watcher_write() -> None:
    assert nftsets.BAN_SETS == ("ban4", "ban6", "banned_cidr4", "banned_cidr6")
    assert nftsets.GRACE in nftsets.WATCHER_SETS
