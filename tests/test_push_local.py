"""`sipops diff/push/rollback --local` against a temporary root: the same agent and code path as SSH.

The test role (data/push/roles/common.yaml) validates with grep and its handlers append to
$SIPOPS_ROOT/handlers.log, so nothing outside the temporary root is touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sipops.remote.facts import parse_facts
from sipops.remote.runner import LocalRunner, call
from tests.conftest import Cli

DATA = Path(__file__).parent / "data" / "push"
BIG = "/var/tmp/sipops-test/big.dat"
FILES = ["/etc/sipops-test/app.conf", "/etc/sipops-test/plain.conf", "/etc/sipops-test/unit.conf"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="files are chowned to the role's owners (needs root)")


class Site:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "inv"
        shutil.copytree(DATA, self.dir)
        self.root = tmp / "root"
        self.root.mkdir()
        self.inventory = self.dir / "inventory.yaml"

    def vars(self, **values: object) -> None:
        self.inventory.write_text(json.dumps({"hosts": {"node1": {"address": "127.0.0.1", "vars": values}}}))

    def args(self, command: str, *extra: str) -> list[str]:
        return [command, "node1", "-i", str(self.inventory), "--local", "--root", str(self.root), *extra]

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()

    def hashes(self) -> dict[str, str]:
        return {p: hashlib.sha256((self.root / p.lstrip("/")).read_bytes()).hexdigest() for p in FILES}

    def handlers(self) -> list[str]:
        log = self.root / "handlers.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_first_push_changes_files_and_the_second_changes_nothing(site: Site, cli: Cli) -> None:
    code, out, _ = cli(*site.args("push"))
    assert code == 0, out
    assert "changed 4 file(s); ran daemon-reload, reload app" in out
    assert "greeting = hello" in site.read("/etc/sipops-test/app.conf")
    assert oct((site.root / "etc/sipops-test/plain.conf").stat().st_mode & 0o777) == "0o600"
    assert site.handlers() == ["daemon-reload", "reload app"]
    code, out, _ = cli(*site.args("push"))
    assert code == 0
    assert "node1: no changes (4 files unchanged)" in out
    assert "no changes on any host; no handler ran" in out
    assert site.handlers() == ["daemon-reload", "reload app"]


def test_a_change_runs_only_the_handlers_its_file_notifies(site: Site, cli: Cli) -> None:
    cli(*site.args("push"))
    (site.root / "handlers.log").unlink()
    site.vars(greeting="bonjour")  # app.conf, unit.conf and big.dat change
    code, out, _ = cli(*site.args("push"))
    assert code == 0, out
    assert site.handlers() == ["daemon-reload", "reload app"]
    assert "greeting = bonjour" in site.read("/etc/sipops-test/app.conf")


def test_an_invalid_file_is_refused_on_the_host_and_live_files_keep_their_hashes(site: Site, cli: Cli) -> None:
    cli(*site.args("push"))
    before = site.hashes()
    site.vars(greeting="changed", valid=False)
    code, out, _ = cli(*site.args("push"))
    assert code == 1
    assert "REFUSED: validator failed" in out and "live /etc/sipops-test/app.conf unchanged" in out
    assert site.hashes() == before
    assert site.handlers() == ["daemon-reload", "reload app"]
    assert not list((site.root / "var/lib/sipops/staging").iterdir())


def test_a_failing_handler_restores_the_previous_files_and_reruns_the_handlers(site: Site, cli: Cli) -> None:
    cli(*site.args("push"))
    before = site.hashes()
    site.vars(greeting="broken", handler_fails=True)
    code, out, _ = cli(*site.args("push"))
    assert code == 1
    assert "ROLLED BACK: handler 'reload app' failed; previous config restored" in out
    assert "app refused the new config" in out
    assert site.hashes() == before
    # push, failed push, handlers again after the restore
    assert site.handlers() == ["daemon-reload", "reload app"] * 3


def test_rollback_restores_the_latest_backup_and_can_itself_be_undone(site: Site, cli: Cli) -> None:
    cli(*site.args("push"))
    first = site.hashes()
    site.vars(greeting="second")
    cli(*site.args("push"))
    second = site.hashes()
    code, out, _ = cli(*site.args("rollback", "--list"))
    assert code == 0 and out.count("node1  20") == 2  # two backups (stamps), then the summary table
    code, out, _ = cli(*site.args("rollback"))
    assert code == 0, out
    assert site.hashes() == first
    assert site.read("/etc/sipops-test/app.conf").count("hello") == 1
    code, out, _ = cli(*site.args("rollback"))  # the rollback's own backup: back to the second push
    assert code == 0, out
    assert site.hashes() == second


def test_rollback_to_a_stamp_that_does_not_exist_names_the_ones_that_do(site: Site, cli: Cli) -> None:
    cli(*site.args("push"))
    code, out, _ = cli(*site.args("rollback", "--to", "20000101T000000.000Z-0000"))
    assert code == 1
    assert "no backup 20000101T000000.000Z-0000 on the host (latest: 20" in out


def test_a_second_push_waits_for_the_lock_then_fails_clearly(site: Site, cli: Cli) -> None:
    cli(*site.args("push"))
    site.vars(greeting="locked")
    lock = site.root / "var/lib/sipops/lock"
    with open(lock, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write("pid 4242 stamp test since now")
        fh.flush()
        t0 = time.monotonic()
        code, out, _ = cli(*site.args("push", "--lock-timeout", "1"))
    assert code == 1
    assert time.monotonic() - t0 >= 1
    assert "host is locked by pid 4242 stamp test" in out
    assert "greeting = hello" in site.read("/etc/sipops-test/app.conf")


def test_diff_masks_passwords_and_exit_code_says_changes_are_pending(site: Site, cli: Cli) -> None:
    code, out, _ = cli(*site.args("diff", "--exit-code"))
    assert code == 3
    assert "s3cretpw" not in out and "mysql://opensips:****@db.example.net" in out
    cli(*site.args("push"))
    site.vars(db_url="mysql://opensips:N3wSecret@db/opensips")
    code, out, _ = cli(*site.args("diff", "--exit-code", "--no-color"))
    assert code == 3
    assert "N3wSecret" not in out and "s3cretpw" not in out
    assert "-db_url = mysql://opensips:****@db.example.net/opensips" in out
    assert "+db_url = mysql://opensips:****@db/opensips" in out
    assert "\033[" not in out
    site.vars(db_url="mysql://opensips:s3cretpw@db.example.net/opensips")
    code, out, _ = cli(*site.args("diff", "--exit-code"))
    assert code == 0 and "4 unchanged" in out


def test_diff_colours_only_when_asked_off_a_terminal(site: Site, cli: Cli) -> None:
    _, out, _ = cli(*site.args("diff", "--color"))
    assert "\033[32m+greeting = hello\033[0m" in out


def test_local_needs_exactly_one_host(site: Site, cli: Cli) -> None:
    code, _, err = cli("push", "all", "node1", "-i", str(site.inventory), "--local", "--root", str(site.root))
    assert code == 0 or code == 2
    site.inventory.write_text(
        json.dumps({"hosts": {"node1": {"address": "127.0.0.1"}, "node2": {"address": "127.0.0.2"}}})
    )
    code, _, err = cli("push", "all", "-i", str(site.inventory), "--local", "--root", str(site.root))
    assert code == 2 and "name exactly one host" in err


def test_facts_report_hashes_modes_owners_and_absent_files(site: Site, cli: Cli) -> None:
    cli(*site.args("push"))
    req = {"op": "facts", "root": str(site.root), "files": [{"path": p} for p in [*FILES, "/etc/none"]]}
    req |= {"commands": ["sh", "no-such-validator"], "users": ["root", "nobody-here"], "groups": ["root"]}
    facts = parse_facts(call(LocalRunner(), req))
    app = facts.files["/etc/sipops-test/app.conf"]
    assert app is not None and app.sha256 == site.hashes()["/etc/sipops-test/app.conf"]
    assert (app.mode, app.owner, app.group) == ("0644", "root", "root")
    assert facts.files["/etc/sipops-test/plain.conf"] is not None
    assert facts.files["/etc/none"] is None
    assert facts.commands["sh"] and facts.commands["no-such-validator"] is None
    assert facts.users == {"root": True, "nobody-here": False}


def test_killing_the_push_mid_transfer_leaves_each_file_old_or_new(site: Site) -> None:
    """kill -9 of the controller at many points of a push with a 20 MB file: never a partial file."""
    cmd = [sys.executable, "-c", "from sipops.cli.main import run; run()"]
    subprocess.run([*cmd, *site.args("push")], check=True, capture_output=True)
    outcomes: list[str] = []
    for i in range(8):
        old = {p: (site.root / p.lstrip("/")).read_bytes() for p in [*FILES, BIG]}
        site.vars(greeting=f"round{i}", big_kb=20000)
        proc = subprocess.Popen([*cmd, *site.args("push")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.3 + 0.1 * i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait_unlocked(site.root / "var/lib/sipops/lock")
        for path, before in old.items():
            now = (site.root / path.lstrip("/")).read_bytes()
            if now == before:
                outcomes.append("old")
                continue
            outcomes.append("new")
            assert now.startswith(f"round{i}".encode()) or f"round{i}".encode() in now
            if path == BIG:
                assert len(now) == len(f"round{i}\n") + 20000 * 1024 + 1
        assert list(site.root.glob("etc/**/*.sipops-new")) == []
    assert "old" in outcomes or "new" in outcomes


def _wait_unlocked(lock: Path, timeout: float = 30) -> None:
    """The detached apply may still be finishing after the controller died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(lock) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(0.05)
    raise AssertionError("the lock was never released")


def test_a_file_whose_when_turns_false_is_retired_its_command_run_first_and_rollback_brings_it_back(
    site: Site, cli: Cli
) -> None:
    extra = site.root / "etc/sipops-test/extra.conf"
    site.vars(extra=True)
    assert cli(*site.args("push"))[0] == 0 and extra.exists()
    (site.root / "handlers.log").unlink()
    site.vars(extra=False)
    code, out, _ = cli(*site.args("diff"))
    assert "node1: 1 to remove, 4 unchanged; handlers: daemon-reload" in out, out
    assert "  remove /etc/sipops-test/extra.conf (" in out and 'first: echo "retire extra"' in out
    assert "+++ /dev/null" in out
    code, out, _ = cli(*site.args("push"))
    assert code == 0, out
    assert not extra.exists()
    assert site.handlers() == ["retire extra", "daemon-reload"]  # its own command first; no restart
    assert "no changes" in cli(*site.args("push"))[1]  # absent as wanted: nothing more to do
    code, out, _ = cli(*site.args("rollback"))
    assert code == 0, out
    assert extra.exists()


def test_a_failing_retire_command_stops_the_push_and_the_file_stays(site: Site, cli: Cli) -> None:
    extra = site.root / "etc/sipops-test/extra.conf"
    site.vars(extra=True)
    assert cli(*site.args("push"))[0] == 0
    site.vars(extra=False, retire_fails=True)
    code, out, _ = cli(*site.args("push"))
    assert code == 1
    assert "retire command failed (4)" in out and "cannot stop it" in out
    assert extra.exists()
