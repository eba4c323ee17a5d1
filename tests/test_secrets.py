"""Credentials never reach the terminal: DB URLs, password assignments, secret-named variables."""

from __future__ import annotations

import pytest

from sipops.secrets import MASK, mask_text, mask_value


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ('modparam("auth_db", "db_url", "mysql://opensips:s3cr3t@db1/opensips")', "s3cr3t"),
        ("db_url: mysql://u:p%40ss@h:3306/d", "p%40ss"),
        ("mysql://u:with@at@db1/x", "with@at"),
        ("password=abc123", "abc123"),
        ('db_password = "two words"', "two words"),
        ("secret: 'quoted'", "quoted"),
    ],
)
def test_secrets_are_masked(text: str, hidden: str) -> None:
    out = mask_text(text)
    assert hidden not in out and MASK in out


def test_text_without_secrets_is_unchanged() -> None:
    text = 'modparam("usrloc", "db_url", "sqlite:///var/lib/opensips/opensips.sqlite")\nsocket = udp:1.2.3.4:5060\n'
    assert mask_text(text) == text


def test_variables_are_masked_by_name_and_by_url() -> None:
    assert mask_value("db_password", "x") == MASK
    assert mask_value("db_url", "mysql://a:b@h/d") == f"mysql://a:{MASK}@h/d"
    assert mask_value("gateways", [{"name": "t", "auth_password": "p"}]) == [{"name": "t", "auth_password": MASK}]
    assert mask_value("log_keep", 14) == 14


def test_inventory_show_never_prints_the_db_password(cli, write_inventory) -> None:
    path = write_inventory(
        "hosts:\n  a:\n    address: 192.0.2.1\n    vars: {db_url: 'mysql://opensips:hunter2@db/opensips'}\n"
    )
    for extra in ([], ["--json"]):
        code, out, _ = cli("inventory", "show", "a", "-i", path, *extra)
        assert code == 0 and "hunter2" not in out and "mysql://opensips:" in out
