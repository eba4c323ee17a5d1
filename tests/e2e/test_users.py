"""`sipops users` against a real OpenSIPS with registrar_auth: an account added through the CLI (password on
stdin) registers with digest auth from sipp, a wrong password is refused, a removed account no longer
registers, and `users list` never shows a secret.

Needs $SIPOPS_OPENSIPS_PREFIX (runs once per build); its own one-host lab, an attacker namespace for sipp.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sipops.cli.main import app
from sipops.lab.access import exec_argv
from sipops.lab.lifecycle import UpOptions, down, up
from sipops.lab.state import LabState
from sipops.users.model import hashes

from .conftest import lab_skip_reason

pytestmark = [pytest.mark.e2e, pytest.mark.needs_opensips]
NETWORK = IPv4Network("198.18.208.0/20")  # no other test lab's range
PASSWORD = "c0rrect-h0rse.9"

# A REGISTER answered with a challenge, sent again with the digest of the credentials; `final` is the
# answer the second REGISTER must get.
REGISTER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register-digest">
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{user}@[remote_ip]>;tag=[call_number]
To: <sip:{user}@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:{user}@[local_ip]:[local_port]>
Max-Forwards: 70
Expires: 60
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{user}@[remote_ip]>;tag=[call_number]
To: <sip:{user}@[remote_ip]>
Call-ID: [call_id]
CSeq: 2 REGISTER
Contact: <sip:{user}@[local_ip]:[local_port]>
[authentication username={user} password={password}]
Max-Forwards: 70
Expires: 60
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  {final}
</scenario>
"""
OK_200 = '<recv response="200"/>'
REFUSED = '<recv response="401" optional="true" next="end"/>\n  <recv response="403"/>\n  <label id="end"/>'


class UsersLab:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.yaml"

    @property
    def state(self) -> LabState:
        state = LabState.load(self.dir)
        assert state is not None
        return state

    def exec(self, name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        state = self.state
        argv = exec_argv(state, state.member(name), list(cmd))
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def register(self, tmp: Path, user: str, password: str, final: str) -> tuple[int, str]:
        """One REGISTER with digest auth from the attacker namespace; sipp's exit code and its errors."""
        sipp = shutil.which("sipp")
        if sipp is None:
            pytest.skip("sipp (Debian package sip-tester) is not installed")
        scenario = tmp / f"register-{user}.xml"
        scenario.write_text(REGISTER.format(user=user, password=password, final=final))
        errors = tmp / f"sipp-{user}-errors.log"
        h1 = self.state.member("h1").address
        res = self.exec("a1", sipp, h1, "-sf", str(scenario), "-m", "1", "-timeout", "10s", "-timeout_error",
                        "-nostdin", "-trace_err", "-error_file", str(errors), timeout=30)  # fmt: skip
        text = errors.read_text() if errors.exists() else ""
        return res.returncode, res.stdout[-1500:] + res.stderr[-1500:] + text[-1500:]


def sipops(*args: str | Path, stdin: str | None = None) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args], input=stdin)
    return res.exit_code, res.stdout + res.stderr


@pytest.fixture(scope="module")
def ulab(tmp_path_factory: pytest.TempPathFactory, opensips_prefix: Path) -> Iterator[UsersLab]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("userslab")
    opts = UpOptions(hosts=1, attackers=1, prefix="sipr", network=NETWORK, opensips_prefix=opensips_prefix)
    up(directory, opts, log=lambda _: None)
    try:
        lab = UsersLab(directory)
        data = yaml.safe_load(lab.inventory.read_text())
        data["hosts"]["h1"]["vars"] = {"registrar_auth": True}
        lab.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        code, out = sipops("install", "h1", "-i", lab.inventory)
        assert code == 0, out
        yield lab
    finally:
        down(directory, log=lambda _: None)


@pytest.fixture(scope="module")
def added(ulab: UsersLab) -> tuple[int, str]:
    return sipops("users", "add", "h1", "-u", "alice", "-i", ulab.inventory, "--password-stdin", stdin=PASSWORD + "\n")


def test_an_account_added_from_stdin_registers_with_digest_auth(
    ulab: UsersLab, added: tuple[int, str], tmp_path: Path
) -> None:
    code, out = added
    realm = ulab.state.member("h1").address
    assert code == 0 and f"h1: alice@{realm}: added" in out, out
    assert PASSWORD not in out
    rc, why = ulab.register(tmp_path, "alice", PASSWORD, OK_200)
    assert rc == 0, why


def test_the_database_holds_hashes_and_an_empty_password(ulab: UsersLab, added: tuple[int, str]) -> None:
    query = (
        "import sqlite3; c = sqlite3.connect('/var/lib/opensips/opensips.sqlite');"
        ' print(repr(c.execute("select username, domain, password, ha1, ha1_sha256, ha1_sha512t256'
        ' from subscriber").fetchall()))'
    )
    res = ulab.exec("h1", "python3", "-c", query)
    realm = ulab.state.member("h1").address
    assert res.stdout.strip() == repr([("alice", realm, "", *hashes("alice", realm, PASSWORD).values())]), res.stderr


def test_a_wrong_password_is_refused(ulab: UsersLab, added: tuple[int, str], tmp_path: Path) -> None:
    rc, why = ulab.register(tmp_path, "alice", PASSWORD + "x", REFUSED)
    assert rc == 0, why


def test_users_list_shows_the_user_and_realm_and_never_a_secret(ulab: UsersLab, added: tuple[int, str]) -> None:
    code, out = sipops("users", "list", "h1", "-i", ulab.inventory)
    realm = ulab.state.member("h1").address
    assert code == 0 and ["h1", "alice", realm] in [line.split() for line in out.splitlines()], out
    assert PASSWORD not in out and not any(h in out for h in hashes("alice", realm, PASSWORD).values())


def test_a_removed_account_no_longer_registers(ulab: UsersLab, added: tuple[int, str], tmp_path: Path) -> None:
    code, out = sipops("users", "remove", "h1", "-u", "alice", "-i", ulab.inventory)
    assert code == 0 and "alice@" in out and "removed" in out, out
    rc, why = ulab.register(tmp_path, "alice", PASSWORD, REFUSED)
    assert rc == 0, why
    code, out = sipops("users", "list", "h1", "-i", ulab.inventory)
    assert code == 0 and "alice" not in out, out
