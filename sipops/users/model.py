"""What `sipops users` checks and computes on the controller: user names, the realm, the HA1s, the
registrar hosts of a selection and the database request each host gets. Nothing here connects."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from sipops.errors import InputError
from sipops.inventory import Host, Inventory

# SIP user names sipops accepts: RFC 3261 `unreserved` (letters, digits, - _ . ! ~ * ') without the quote,
# plus +; at most 64 characters (the subscriber table's username column). Escapes and the other
# user-unreserved characters (& = $ , ; ? /) are legal SIP but break phones, URIs and shells alike.
USER_RE = re.compile(r"^[A-Za-z0-9_.!~*+-]{1,64}$")
MAX_REALM = 64  # the subscriber table's domain column
MAX_PASSWORD = 256
SCHEMES = ("sqlite", "mysql")
LOOPBACK = ("localhost", "127.0.0.1", "::1")  # a database of each host's own, even when the URLs match


def check_user(name: str) -> str:
    if not USER_RE.match(name):
        shown = name if len(name) <= 70 and name.isprintable() else repr(name[:70])
        raise InputError(
            f"'{shown}' is not a SIP user name (1-64 of letters, digits and - _ . ! ~ * +)", field="--user"
        )
    return name


def check_password(password: str, where: str) -> str:
    """A usable password; the message never repeats it."""
    if not password:
        raise InputError("the password is empty", field=where)
    if len(password) > MAX_PASSWORD:
        raise InputError(f"the password is longer than {MAX_PASSWORD} characters", field=where)
    if any(c in password for c in "\r\n\0"):
        raise InputError("the password holds a line break or NUL byte", field=where)
    return password


def realm_of(host: Host) -> str:
    """The digest realm of a registrar, as templates/opensips/roles/registrar.j2 renders it: auth_realm,
    else the first of sip_domains, else the host's address."""
    v = host.vars
    domains = v.get("sip_domains") or []
    return str(v.get("auth_realm") or (domains[0] if domains else host.address))


def hashes(user: str, realm: str, password: str) -> dict[str, str]:
    """HA1 = H(user:realm:password) for each algorithm auth_db has a column for (RFC 2617 / 7616)."""
    secret = f"{user}:{realm}:{password}".encode()
    return {
        "ha1": hashlib.md5(secret, usedforsecurity=False).hexdigest(),
        "ha1_sha256": hashlib.sha256(secret).hexdigest(),
        "ha1_sha512t256": hashlib.new("sha512_256", secret).hexdigest(),
    }


@dataclass(frozen=True)
class Registrar:
    """A registrar host with what `sipops users` needs of it."""

    host: Host
    realm: str
    db: dict[str, Any]  # the host program's "db" request entry (the MySQL password included)
    where: str  # the database, for messages: its path, or mysql://user@host/db (no password)

    @property
    def name(self) -> str:
        return self.host.name


def registrar(inv: Inventory, host: Host, *, writing: bool) -> Registrar:
    """The host as a registrar; InputError (exit 2) when it is none, or when `writing` and registrar_auth is off."""
    from sipops.provision.services import parse_db_url

    if "registrar" not in host.roles:
        raise InputError(f"host {host.name} has no registrar role (roles: {', '.join(host.roles) or 'none'})",
                         file=inv.file, line=host.line, field="HOST")  # fmt: skip
    v = host.vars
    if writing and not v.get("registrar_auth"):
        origin = host.origins.get("registrar_auth")
        raise InputError(
            f"registrar_auth is off on {host.name}: its OpenSIPS would not use the account (refused;"
            " set registrar_auth: true and run sipops install)",
            file=origin.file if origin else inv.file,
            line=origin.line if origin else host.line,
            field="registrar_auth",
        )
    url = str(v["db_url"])
    db = parse_db_url(url)
    origin = host.origins.get("db_url")
    if db.scheme not in SCHEMES:
        raise InputError(
            f"{db.scheme}:// databases are not written by sipops users (sqlite or mysql; else use opensips-cli)",
            file=origin.file if origin else inv.file, line=origin.line if origin else None, field="db_url",
        )  # fmt: skip
    realm = realm_of(host)
    if len(realm) > MAX_REALM:
        raise InputError(
            f"realm '{realm[:70]}' of {host.name} is longer than {MAX_REALM} characters", field="auth_realm"
        )
    if db.scheme == "sqlite":
        return Registrar(host, realm, {"scheme": "sqlite", "path": db.path}, db.path)
    entry = {"scheme": "mysql", "host": db.host, "port": db.port, "user": db.user, "password": db.password,
             "database": db.database}  # fmt: skip
    return Registrar(host, realm, entry, f"mysql://{db.user}@{db.host}:{db.port}/{db.database}")


def registrars(inv: Inventory, patterns: list[str], *, writing: bool) -> list[Registrar]:
    """The registrar hosts of a selection. A host named on its own must be a registrar; groups and `all`
    contribute their registrars (none at all is bad input too)."""
    hosts = inv.select(patterns)
    named = set(patterns) & set(inv.hosts)
    picked = [h for h in hosts if h.name in named or "registrar" in h.roles]
    if not picked:
        raise InputError(f"no registrar among {', '.join(patterns)}", file=inv.file, field="HOST")
    regs = [registrar(inv, h, writing=writing) for h in picked]
    # Registrars sharing one MySQL server keep one row per user: with different realms, each write would
    # break the account for the others.
    shared: dict[str, Registrar] = {}
    for reg in regs:
        if reg.db["scheme"] != "mysql" or reg.db["host"] in LOOPBACK:
            continue
        other = shared.setdefault(reg.where, reg)
        if writing and other.realm != reg.realm:
            raise InputError(
                f"{other.name} and {reg.name} share {reg.where} but their realms differ ({other.realm},"
                f" {reg.realm}): set the same auth_realm for both",
                file=inv.file,
                field="auth_realm",
            )
    return regs


def account_request(reg: Registrar, action: str, accounts: list[tuple[str, str]]) -> dict[str, Any]:
    """The host program's request to write `accounts` (user, password): HA1s only, never a password."""
    rows = [{"user": u, "realm": reg.realm, **hashes(u, reg.realm, p)} for u, p in accounts]
    return {"op": "users", "action": action, "db": reg.db, "accounts": rows}


def remove_request(reg: Registrar, users: list[str]) -> dict[str, Any]:
    return {"op": "users", "action": "remove", "db": reg.db, "users": list(users)}


def list_request(reg: Registrar) -> dict[str, Any]:
    return {"op": "users", "action": "list", "db": reg.db}
