"""Digest accounts on registrars (`sipops users`), and the Python API other commands use for theirs.

Accounts live in the subscriber table of the registrar's db_url (sqlite by default, MySQL when
db_url says mysql://), as OpenSIPS' auth_db reads them with calculate_ha1 0: the HA1s
(md5, and sha256 / sha512t256 where the table has those columns) of user:realm:password, the
password column empty. The realm is auth_realm, else the first of sip_domains, else the host's
address: what the rendered opensips.cfg challenges with (templates/opensips/roles/registrar.j2).

API (for `sipops calltest` and others; the host must have the registrar role and registrar_auth on):

    from sipops.users import add_accounts, remove_accounts, list_accounts

    add_accounts(inv, "h2", [("ct-alice", "s3cret"), ("ct-bob", "s3cret2")])  # insert or update
    list_accounts(inv, "h2")        # [("ct-alice", "198.18.0.3"), ...]: user and realm, never a hash
    remove_accounts(inv, "h2", ["ct-alice", "ct-bob"])  # users not there are fine

`inv` is a loaded sipops.inventory.Inventory, the host a name or a Host of it. Bad input (a user name
or password sipops refuses, a host that is no registrar, registrar_auth off) raises
sipops.errors.InputError before the host is touched; a host that cannot do it (unreachable,
database error) raises sipops.users.UsersError with the reason. Each call is one SSH round trip
(strict host keys; accept_new_host_key=True records an unknown key, as the CLI's option does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

# `sipops --help` imports this package (the users commands): what the functions run loads when they run.
if TYPE_CHECKING:
    from sipops.inventory import Host, Inventory
    from sipops.users.run import HostOutcome

__all__ = ["UsersError", "add_accounts", "list_accounts", "remove_accounts"]


class UsersError(Exception):
    """A host could not do what was asked (unreachable, database error, refused account); one line."""


def _one(inv: Inventory, host: Host | str, request_of: str, payload: object, accept_new_host_key: bool) -> HostOutcome:
    from sipops.remote.executor import Unreachable
    from sipops.remote.fleet import Target
    from sipops.users.model import account_request, list_request, registrar, remove_request
    from sipops.users.run import OUTCOMES, run_one

    h = inv.select([host])[0] if isinstance(host, str) else host
    reg = registrar(inv, h, writing=request_of == "set")
    if request_of == "set":
        assert isinstance(payload, list)
        request = account_request(reg, "set", payload)
    elif request_of == "remove":
        assert isinstance(payload, list)
        request = remove_request(reg, payload)
    else:
        request = list_request(reg)
    try:
        out = run_one(Target(inv, [h], accept_new_host_key=accept_new_host_key).runner(h), reg, request)
    except Unreachable as exc:
        raise UsersError(f"{h.name}: unreachable: {exc}") from None
    if out.error:
        raise UsersError(f"{h.name}: {out.error}")
    bad = [f"{u}: {OUTCOMES.get(o, (o, True))[0]}" for u, o in out.results if OUTCOMES.get(o, (o, True))[1]]
    if bad:
        raise UsersError(f"{h.name}: {'; '.join(bad)}")
    return out


def add_accounts(
    inv: Inventory, host: Host | str, accounts: Sequence[tuple[str, str]], *, accept_new_host_key: bool = False
) -> None:
    """Create (or give a new password to) each (user, password) on a registrar, in one transaction."""
    from sipops.users.model import check_password, check_user

    checked = [(check_user(u), check_password(p, "password")) for u, p in accounts]
    if checked:
        _one(inv, host, "set", checked, accept_new_host_key)


def remove_accounts(
    inv: Inventory, host: Host | str, users: Sequence[str], *, accept_new_host_key: bool = False
) -> None:
    """Remove the accounts of these users from a registrar (users not there are fine)."""
    from sipops.users.model import check_user

    names = [check_user(u) for u in users]
    if names:
        _one(inv, host, "remove", names, accept_new_host_key)


def list_accounts(inv: Inventory, host: Host | str, *, accept_new_host_key: bool = False) -> list[tuple[str, str]]:
    """(user, realm) of every account on a registrar."""
    return _one(inv, host, "list", None, accept_new_host_key).accounts
