"""The OpenSIPS log filter, fail2ban style: every sample line carries the verdict it must give."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipops.host.monitor.siplog import PATTERNS, LogFollower, SipLogRules, match_line

SAMPLE = Path(__file__).parent / "data" / "monitor" / "opensips.log"


def _samples() -> list[tuple[int, str, str]]:
    """(line number, expected verdict, log line) from the sample file."""
    out = []
    expected: str | None = None
    for no, line in enumerate(SAMPLE.read_text().splitlines(), 1):
        if line.startswith("# verdict:"):
            expected = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            assert expected is not None, f"{SAMPLE.name}:{no}: log line without a '# verdict:' line before it"
            out.append((no, expected, line))
            expected = None
    return out


@pytest.mark.parametrize(("no", "expected", "line"), _samples(), ids=lambda x: str(x)[:40])
def test_each_sample_line_gives_its_expected_verdict(no: int, expected: str, line: str) -> None:
    v = match_line(line)
    got = "none" if v is None else f"{v.action} {v.rule} {v.address}"
    assert got == expected, f"opensips.log:{no}"


def test_every_pattern_has_a_ban_sample() -> None:
    rules = {expected.split()[1] for _, expected, _ in _samples() if expected != "none"}
    assert rules == set(PATTERNS)


def test_scanner_verdict_carries_the_user_agent_and_the_scanner_ban_time() -> None:
    line = 'Nov 28 10:45:11 edge1 opensips[1]: SIPOPS-SCANNER src=203.0.113.7 ua="friendly-scanner"'
    v = match_line(line, SipLogRules(scanner_ban_seconds=7200))
    assert v is not None
    assert (v.seconds, v.evidence) == (7200, 'ua="friendly-scanner"')


def test_follower_reads_only_new_complete_lines_and_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "opensips.log"
    log.write_text("Nov 28 10:00:00 h opensips[1]: SIPOPS-PIKE src=192.0.2.1\n")
    follower = LogFollower(str(log))
    assert follower.verdicts() == []  # starts at the end: history is not banned again
    with log.open("a") as f:
        f.write("Nov 28 10:00:01 h opensips[1]: SIPOPS-PIKE src=192.0.2.2\nNov 28 10:00:02 h opensips[1]: SIPOPS-PI")
    assert [v.address for v in follower.verdicts()] == ["192.0.2.2"]
    with log.open("a") as f:
        f.write("KE src=192.0.2.3\n")
    assert [v.address for v in follower.verdicts()] == ["192.0.2.3"]
    log.rename(tmp_path / "opensips.log.1")
    log.write_text("Nov 28 10:00:03 h opensips[1]: SIPOPS-PIKE src=192.0.2.4\n")
    assert [v.address for v in follower.verdicts()] == ["192.0.2.4"]


def test_the_proxy_roles_log_lines_are_what_the_filter_reads() -> None:
    """The xlog tags rendered into opensips.cfg, filled in as OpenSIPS would, give ban verdicts."""
    import re

    from sipops.inventory import load_inventory
    from sipops.render import render_host

    root = Path(__file__).resolve().parents[1]
    inv = load_inventory(root / "inventory.example.yaml")
    cfg = next(f for f in render_host(inv, inv.hosts["edge1"]).files if f.dest.endswith("opensips.cfg"))
    text = cfg.content.decode() if isinstance(cfg.content, bytes) else cfg.content
    formats = re.findall(r'xlog\("L_NOTICE", "(SIPOPS-[^\n]*?)\\n"\);', text)
    assert len(formats) == 2
    got = set()
    for fmt in formats:
        message = fmt.replace("$si", "203.0.113.7").replace("$(ua{s.escape.common})", "friendly-scanner")
        message = message.replace('\\"', '"')
        v = match_line(f"Nov 28 10:45:11 edge1 /usr/sbin/opensips[2211]: {message}")
        assert v is not None and v.address == "203.0.113.7", message
        got.add(v.rule)
    assert got == {"sip_scanner", "sip_pike"}


def test_follower_reads_a_log_created_after_it_started_from_its_first_line(tmp_path: Path) -> None:
    log = tmp_path / "opensips.log"
    follower = LogFollower(str(log))
    assert follower.verdicts() == []
    log.write_text("Nov 28 10:00:00 h opensips[1]: SIPOPS-PIKE src=192.0.2.9\n")
    assert [v.address for v in follower.verdicts()] == ["192.0.2.9"]
