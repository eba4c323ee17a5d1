"""Malformed or out-of-range arguments: one line naming the option, exit 2, before anything is touched.

The inventory's one host is on loopback, so a case that slipped through validation could not reach
another machine; every case here must stop at the arguments.
"""

from __future__ import annotations

from pathlib import Path

import pytest

INVENTORY = "hosts:\n  h1:\n    address: 127.0.0.1\n    roles: [proxy]\n"

# (arguments, what the error line must name); "{inv}" is the inventory path.
CASES: list[tuple[list[str], str]] = [
    (["push", "all", "--forks", "0"], "--forks"),
    (["push", "all", "--forks", "100000"], "--forks"),
    (["push", "all", "--forks", "many"], "--forks"),
    (["push", "all", "--lock-timeout", "nan"], "--lock-timeout"),
    (["push", "all", "--lock-timeout", "inf"], "--lock-timeout"),
    (["push", "all", "--lock-timeout", "-1"], "--lock-timeout"),
    (["push", "all", "--gate-timeout", "0"], "--gate-timeout"),
    (["push", "all", "--gate-timeout", "1e12"], "--gate-timeout"),
    (["push", "all", "--gate-timeout", "nan"], "--gate-timeout"),
    (["push", "all", "--serial", "0"], "--serial"),
    (["push", "all", "--keep", "0"], "--keep"),
    (["push", "all", "--keep", "100000"], "--keep"),
    (["diff", "all", "--forks", "-3"], "--forks"),
    (["rollback", "all", "--to", "../../etc"], "--to"),
    (["rollback", "all", "--to", "20261203T064400.000Z-zzzz"], "--to"),
    (["rollback", "all", "--lock-timeout", "nan"], "--lock-timeout"),
    (["install", "all", "--skip", "bogus"], "--skip"),
    (["install", "all", "--gate-timeout", "inf"], "--gate-timeout"),
    (["logs", "h1", "-n", "0"], "--lines"),
    (["logs", "h1", "-n", "1000000000000"], "--lines"),
    (["service", "bogus", "all"], "ACTION"),
    (["conns", "--port", "0"], "--port"),
    (["conns", "--port", "70000"], "--port"),
    (["conns", "--port", "http"], "--port"),
    (["conns", "--top", "-1"], "--top"),
    (["conns", "--top", "lots"], "--top"),
    (["conns", "--state", "nosuch"], "--state"),
    (["health", "--local", "--format", "xml"], "--format"),
    (["health", "--local", "--check", "nosuch"], "--check"),
    (["health", "--local", "--alert-cmd", "mail\nrm -rf /"], "--alert-cmd"),
    (["health", "--local", "--alert-cmd", "echo 'unbalanced"], "--alert-cmd"),
    (["health", "--local", "--state-dir", "relative/dir"], "--state-dir"),
    (["health", "h1", "--format", "xml"], "--format"),
    (["cron", "install", "all", "--alert-cmd", "a\nb"], "--alert-cmd"),
    (["cron", "install", "all", "--alert-cmd", ""], "--alert-cmd"),
    (["tune-tcp", "h1", "--max-connections", "0"], "--max-connections"),
    (["tune-tcp", "h1", "--max-connections", "-5"], "--max-connections"),
    (["tune-tcp", "h1", "--max-connections", "10000000000000"], "--max-connections"),
    (["tune-tcp", "h1", "--max-connections", "ten"], "--max-connections"),
    (["lab", "up", "--hosts", "0"], "--hosts"),
    (["lab", "up", "--hosts", "100000"], "--hosts"),
    (["lab", "up", "--attackers", "-1"], "--attackers"),
    (["render", "all", "--nosuch"], "--nosuch"),
    # checked before the kernel or the journal is touched
    (["ban", "192.0.2.1", "--for", "0s"], "--for"),
    (["ban", "192.0.2.1", "--for", "99999999d"], "--for"),
    (["ban", "192.0.2.1", "--for", "soon"], "--for"),
    (["watch", "--once", "--port", "0"], "--port"),
    (["watch", "--once", "--max-conns", "0"], "--max-conns"),
    (["watch", "--once", "--allow", "not a host"], "--allow"),
]


def _id(case: tuple[list[str], str]) -> str:
    args, _ = case
    return " ".join(args).replace("\n", "\\n")[:60]


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_a_bad_argument_is_one_line_naming_the_option_and_exit_2(cli, tmp_path: Path, case) -> None:
    args, option = case
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    local = ("conns", "lab", "ban", "watch")
    takes_inventory = args[0] not in local and not (args[0] == "health" and "--local" in args)
    code, out, err = cli(*args, *(["-i", inv] if takes_inventory else []))
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1, err
    assert option in lines[0], lines[0]
    assert not (tmp_path / "tuned").exists()


def test_render_to_a_file_instead_of_a_directory_is_one_line(cli, tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        code, _, err = cli("render", "all", "-i", inv, "-o", out)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err, err


@pytest.mark.parametrize("kind", ["random bytes", "directory"])
def test_a_ban_journal_that_is_not_one_is_one_line(cli, tmp_path: Path, kind: str) -> None:
    journal = tmp_path / "journal.db"
    if kind == "directory":
        journal.mkdir()
    else:
        journal.write_bytes(bytes(range(256)) * 4)
    code, out, err = cli("bans", "--journal", journal)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--journal" in err, (out, err)
