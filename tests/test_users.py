"""`sipops users`: HA1s, the realm the cfg challenges with, the statements for MySQL, the host program on a
real sqlite file (run by the push engine's LocalRunner), and bad input (one line, exit 2, nothing changed)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sipops.cli.main import app
from sipops.errors import InputError
from sipops.host import users as hostprog
from sipops.inventory import Host, load_inventory
from sipops.remote import fleet
from sipops.remote.runner import LocalRunner
from sipops.render import environment, render_host
from sipops.users.model import hashes, realm_of, registrar, registrars
from tests.conftest import Cli
from tests.roles_cfg_helpers import cfg_of

# The columns auth_db reads, as in the subscriber table of OpenSIPS 3.4/3.6 (version 8) and of older
# releases without the SHA-2 columns.
SUBSCRIBER_V8 = """CREATE TABLE subscriber (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
 username CHAR(64) DEFAULT '' NOT NULL, domain CHAR(64) DEFAULT '' NOT NULL, password CHAR(25) DEFAULT '' NOT NULL,
 ha1 CHAR(64) DEFAULT '' NOT NULL, ha1_sha256 CHAR(64) DEFAULT '' NOT NULL, ha1_sha512t256 CHAR(64) DEFAULT '' NOT NULL,
 CONSTRAINT subscriber_account_idx UNIQUE (username, domain))"""
SUBSCRIBER_OLD = """CREATE TABLE subscriber (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
 username CHAR(64) DEFAULT '' NOT NULL, domain CHAR(64) DEFAULT '' NOT NULL, password CHAR(25) DEFAULT '' NOT NULL,
 ha1 CHAR(64) DEFAULT '' NOT NULL, CONSTRAINT subscriber_account_idx UNIQUE (username, domain))"""

INVENTORY = """
groups:
  site: {{members: [reg1, reg2, lb1]}}
hosts:
  reg1:
    address: 198.51.100.10
    roles: [registrar, proxy]
    vars: {{registrar_auth: true, db_url: "sqlite://{db}"}}
  reg2:
    address: 198.51.100.11
    roles: [registrar]
    vars: {{registrar_auth: true, sip_domains: [sip.example.net, voip.example.org], db_url: "sqlite://{db}"}}
  plain:
    address: 198.51.100.12
    roles: [registrar]
  my:
    address: 198.51.100.13
    roles: [registrar]
    vars: {{registrar_auth: true, auth_realm: realm.example.net, db_url: "mysql://opensips:p%40ss@db1:3307/opensips"}}
  txt:
    address: 198.51.100.14
    roles: [registrar]
    vars: {{registrar_auth: true, db_url: "text:///var/lib/opensips/db"}}
  lb1:
    address: 198.51.100.20
    roles: [loadbalancer]
"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "opensips.sqlite"
    con = sqlite3.connect(path)
    con.execute(SUBSCRIBER_V8)
    con.commit()
    con.close()
    return path


@pytest.fixture
def inventory(write_inventory: Callable[[str], Path], db: Path) -> Path:
    return write_inventory(INVENTORY.format(db=db))


@pytest.fixture
def runners(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts reached through LocalRunner (this machine runs the host program); the names of those reached."""
    reached: list[str] = []

    def runner(self: fleet.Target, host: Host) -> Callable[[], LocalRunner]:
        name = host.name
        reached.append(name)
        return lambda: LocalRunner(name)

    monkeypatch.setattr(fleet.Target, "runner", runner)
    return reached


def rows(db: Path) -> list[tuple[str, ...]]:
    con = sqlite3.connect(db)
    try:
        return list(con.execute("SELECT username, domain, password, ha1, ha1_sha256, ha1_sha512t256 FROM subscriber"))
    finally:
        con.close()


def test_ha1_is_md5_of_user_realm_password_as_rfc_2617_computes_it() -> None:
    h = hashes("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert h["ha1"] == "939e7578ed9e3c518a452acee763bce9"  # RFC 2617, 3.5
    assert h["ha1_sha256"] == hashlib.sha256(b"Mufasa:testrealm@host.com:Circle Of Life").hexdigest()
    assert len(h["ha1_sha512t256"]) == 64 and h["ha1_sha512t256"] != h["ha1_sha256"]


def test_the_realm_is_auth_realm_else_the_first_domain_else_the_address_as_the_cfg_challenges(
    inventory: Path,
) -> None:
    inv = load_inventory(inventory)
    assert realm_of(inv.hosts["reg1"]) == "198.51.100.10"
    assert realm_of(inv.hosts["reg2"]) == "sip.example.net"
    assert realm_of(inv.hosts["my"]) == "realm.example.net"
    env = environment(inv)
    for name in ("reg1", "reg2", "my"):
        cfg = cfg_of(render_host(inv, inv.hosts[name], env))
        realm = realm_of(inv.hosts[name])
        assert f'www_authorize("{realm}", "subscriber")' in cfg and f'www_challenge("{realm}", "auth")' in cfg
        assert 'modparam("auth_db", "calculate_ha1", 0)' in cfg
        assert 'modparam("auth_db", "password_column", "ha1")' in cfg
    reg1 = cfg_of(render_host(inv, inv.hosts["reg1"], env))
    assert 'proxy_authorize("198.51.100.10", "subscriber")' in reg1


def test_the_mysql_statements_write_hashes_and_an_empty_password_in_one_transaction() -> None:
    acc = {"user": "alice", "realm": "sip.example.net", "ha1": "a" * 32, "ha1_sha256": "b" * 64, "ha1_sha512t256": "c"}
    sql = hostprog.mysql_write_sql([("insert", acc), ("update", acc), ("delete", {"user": "bob"})], ["ha1"])
    assert sql == (
        "START TRANSACTION;\n"
        "INSERT INTO subscriber (username, domain, password, ha1) VALUES ('alice', 'sip.example.net', '', '"
        + "a"
        * 32
        + "');\n"
        "UPDATE subscriber SET domain = 'sip.example.net', password = '', ha1 = '"
        + "a"
        * 32
        + "' WHERE username = 'alice';\n"
        "DELETE FROM subscriber WHERE username = 'bob';\n"
        "COMMIT;\n"
    )
    all_three = hostprog.mysql_write_sql([("insert", acc)], list(hostprog.HASHES))
    assert "(username, domain, password, ha1, ha1_sha256, ha1_sha512t256) VALUES" in all_three
    assert hostprog.mysql_existing_sql(["a'b", "c\\d"]) == (
        "SELECT username, domain, ha1 FROM subscriber WHERE username IN ('a\\'b', 'c\\\\d');\n"
    )


def test_the_mysql_credentials_go_in_an_option_file_from_the_db_url(inventory: Path) -> None:
    inv = load_inventory(inventory)
    reg = registrar(inv, inv.hosts["my"], writing=True)
    assert reg.where == "mysql://opensips@db1:3307/opensips" and "p@ss" not in reg.where
    text = hostprog.mysql_defaults(reg.db)
    assert text == "[client]\nhost=db1\nport=3307\nuser=opensips\npassword=p@ss\n"


def test_add_refuses_another_password_passwd_needs_the_user_remove_is_idempotent() -> None:
    acc = {"user": "alice", "realm": "r", "ha1": "1"}
    assert hostprog.decide("add", [acc], [], {}) == ([["alice", "added"]], [("insert", acc)])
    assert hostprog.decide("add", [acc], [], {"alice": ("r", "1")}) == ([["alice", "unchanged"]], [])
    assert hostprog.decide("add", [acc], [], {"alice": ("r", "2")}) == ([["alice", "exists"]], [])
    assert hostprog.decide("passwd", [acc], [], {}) == ([["alice", "missing"]], [])
    assert hostprog.decide("passwd", [acc], [], {"alice": ("old", "1")})[1] == [("update", acc)]
    assert hostprog.decide("set", [acc], [], {"alice": ("r", "2")})[1] == [("update", acc)]
    assert hostprog.decide("remove", [], ["alice", "bob"], {"alice": ("r", "1")}) == (
        [["alice", "removed"], ["bob", "absent"]],
        [("delete", {"user": "alice"})],
    )


def test_users_add_stores_hashes_never_the_password_and_list_shows_no_secret(
    cli: Cli, inventory: Path, db: Path, runners: list[str]
) -> None:
    res = CliRunner().invoke(app, ["users", "add", "reg1", "-u", "alice", "-i", str(inventory), "--password-stdin"],
                             input="s3cret pw\n")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "reg1: alice@198.51.100.10: added" in res.stdout and "s3cret" not in res.output
    (row,) = rows(db)
    assert row[:3] == ("alice", "198.51.100.10", "")
    assert row[3:] == tuple(hashes("alice", "198.51.100.10", "s3cret pw").values())
    again = CliRunner().invoke(app, ["users", "add", "reg1", "-u", "alice", "-i", str(inventory), "--password-stdin"],
                               input="other\n")  # fmt: skip
    assert again.exit_code == 1 and "exists with another password: refused" in again.stdout
    assert rows(db) == [row]
    code, out, _ = cli("users", "list", "reg1", "-i", inventory)
    assert code == 0 and out.splitlines()[1].split() == ["reg1", "alice", "198.51.100.10"]
    assert not any(h in out for h in row[3:])


def test_passwd_from_a_file_rehashes_and_remove_deletes(cli: Cli, inventory: Path, db: Path, runners: list[str],
                                                        tmp_path: Path) -> None:  # fmt: skip
    secret = tmp_path / "pw"
    secret.write_text("first\n")
    assert cli("users", "add", "reg1", "-u", "bob", "-i", inventory, "--password-file", secret)[0] == 0
    secret.write_text("second\r\nignored\n")
    code, out, _ = cli("users", "passwd", "reg1", "-u", "bob", "-i", inventory, "--password-file", secret)
    assert code == 0 and "bob@198.51.100.10: password changed" in out
    assert rows(db)[0][3] == hashes("bob", "198.51.100.10", "second")["ha1"]
    code, out, _ = cli("users", "passwd", "reg1", "-u", "nobody", "-i", inventory, "--password-file", secret)
    assert code == 1 and "no such account" in out
    code, out, _ = cli("users", "remove", "reg1", "-u", "bob", "-u", "carol", "-i", inventory)
    assert code == 0 and "bob@198.51.100.10: removed" in out and "carol@198.51.100.10: not there" in out
    assert rows(db) == []


def test_the_prompt_is_hidden_and_asked_twice(inventory: Path, db: Path, runners: list[str]) -> None:
    res = CliRunner().invoke(app, ["users", "add", "reg2", "-u", "carol", "-i", str(inventory)], input="pw1\npw1\n")
    assert res.exit_code == 0, res.output
    assert "pw1" not in res.output and "Repeat for confirmation" in res.output
    assert rows(db)[0][:2] == ("carol", "sip.example.net")


def test_a_table_without_the_sha2_columns_gets_the_md5_ha1(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute(SUBSCRIBER_OLD)
    con.commit()
    con.close()
    acc = {"user": "dave", **hashes("dave", "r", "pw"), "realm": "r"}
    assert hostprog.run({"action": "set", "db": {"scheme": "sqlite", "path": str(path)}, "accounts": [acc]})["ok"]
    con = sqlite3.connect(path)
    assert list(con.execute("SELECT username, domain, password, ha1 FROM subscriber")) == [
        ("dave", "r", "", acc["ha1"])
    ]
    con.close()


def test_a_missing_database_or_table_is_the_hosts_failure_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "none.sqlite"
    with pytest.raises(hostprog.StoreError, match="sipops install creates it"):
        hostprog.run({"action": "list", "db": {"scheme": "sqlite", "path": str(missing)}})
    assert not missing.exists()
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(hostprog.StoreError, match="no subscriber table"):
        hostprog.run({"action": "list", "db": {"scheme": "sqlite", "path": str(empty)}})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "reg1", "-u", "al ice", "--password-stdin"], "--user: 'al ice' is not a SIP user name"),
        (["add", "reg1", "-u", "a" * 65, "--password-stdin"], "is not a SIP user name"),
        (["add", "nohost", "-u", "alice", "--password-stdin"], "HOST: no host or group named 'nohost'"),
        (["add", "lb1", "-u", "alice", "--password-stdin"], "host lb1 has no registrar role"),
        (["add", "plain", "-u", "alice", "--password-stdin"], "registrar_auth is off on plain"),
        (["passwd", "plain", "-u", "alice", "--password-stdin"], "registrar_auth is off on plain"),
        (["add", "txt", "-u", "alice", "--password-stdin"], "db_url: text:// databases are not written"),
        (["add", "reg1", "-u", "alice", "--password-stdin"], "--password-stdin: the password is empty"),
        (["add", "reg1", "-u", "alice", "--password-stdin", "--password-file", "x"], "not both"),
        (["add", "reg1", "-u", "alice", "--password-file", "/nonexistent/pw"], "/nonexistent/pw: --password-file"),
        (["remove", "lb1", "-u", "alice"], "host lb1 has no registrar role"),
        (["list", "lb1"], "host lb1 has no registrar role"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_host_is_reached(
    cli: Cli, inventory: Path, db: Path, runners: list[str], args: list[str], message: str
) -> None:
    code, out, err = cli("users", *args, "-i", inventory)
    assert code == 2, out + err
    assert err.count("\n") == 1 and message in err, err
    assert runners == [] and rows(db) == []


def test_a_group_or_all_takes_its_registrars_and_skips_the_others(inventory: Path) -> None:
    inv = load_inventory(inventory)
    assert [r.name for r in registrars(inv, ["site"], writing=True)] == ["reg1", "reg2"]
    with pytest.raises(InputError, match="registrar_auth is off on plain"):
        registrars(inv, ["all"], writing=True)
    with pytest.raises(InputError, match="host lb1 has no registrar role"):
        registrars(inv, ["lb1"], writing=False)


def test_the_python_api_sets_lists_and_removes_accounts_for_calltest(
    inventory: Path, db: Path, runners: list[str], tmp_path: Path
) -> None:
    from sipops.users import UsersError, add_accounts, list_accounts, remove_accounts

    inv = load_inventory(inventory)
    add_accounts(inv, "reg1", [("ct-a", "pw-a"), ("ct-b", "pw-b")])
    add_accounts(inv, inv.hosts["reg1"], [("ct-a", "pw-new")])  # a temporary account is replaced, not refused
    assert list_accounts(inv, "reg1") == [("ct-a", "198.51.100.10"), ("ct-b", "198.51.100.10")]
    assert rows(db)[0][3] == hashes("ct-a", "198.51.100.10", "pw-new")["ha1"]
    remove_accounts(inv, "reg1", ["ct-a", "ct-b", "ct-gone"])
    assert rows(db) == []
    with pytest.raises(InputError, match="registrar_auth is off on plain"):
        add_accounts(inv, "plain", [("ct-a", "pw")])
    db.unlink()
    with pytest.raises(UsersError, match=r"reg1: .*no database"):
        list_accounts(inv, "reg1")


def test_registrars_sharing_a_mysql_server_must_share_the_realm(write_inventory: Callable[[str], Path]) -> None:
    text = """
    hosts:
      e1: {address: 198.51.100.1, roles: [registrar], vars: {registrar_auth: true, db_url: "mysql://o:p@db9/opensips"}}
      e2: {address: 198.51.100.2, roles: [registrar], vars: {registrar_auth: true, db_url: "mysql://o:p@db9/opensips"}}
      e3: {address: 198.51.100.3, roles: [registrar], vars: {registrar_auth: true, db_url: "mysql://o:p@localhost/opensips"}}
      e4: {address: 198.51.100.4, roles: [registrar], vars: {registrar_auth: true, db_url: "mysql://o:p@localhost/opensips"}}
    """
    inv = load_inventory(write_inventory(text))
    with pytest.raises(InputError, match=r"e1 and e2 share mysql://o@db9:3306/opensips but their realms differ"):
        registrars(inv, ["e1", "e2"], writing=True)
    assert len(registrars(inv, ["e1", "e2"], writing=False)) == 2  # list and remove are fine
    assert len(registrars(inv, ["e3", "e4"], writing=True)) == 2  # each host's own server
