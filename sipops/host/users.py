"""`sipops users` on the registrar host (stdlib only): read and write the subscriber table of db_url.

Run by sipops.remote.runner.call(entry="sipops.host.users:main"), the request on stdin: no
secret (HA1s, the MySQL password) is ever in an argument list. sqlite goes through python3's sqlite3;
MySQL through the host's `mysql` client, fed statements built here (mysql_* below, unit-tested).

Accounts are keyed by user name alone, as auth_db looks them up (use_domain 0): one row per user, its
domain the realm its HA1s were computed with. The password column stays empty (calculate_ha1 0).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the host
if TYPE_CHECKING:
    from typing import IO, Any

    Json = dict[str, Any]

TABLE = "subscriber"
HASHES = ("ha1", "ha1_sha256", "ha1_sha512t256")  # auth_db's default column names, one per algorithm


class StoreError(Exception):
    """The database refused or is not there; the message is the host's reason (one line)."""


def main(req: Json, stream: IO[bytes], size: int) -> Json:
    try:
        out = run(req)
    except StoreError as exc:
        out = {"ok": False, "error": str(exc)}
    except Exception as exc:  # the controller shows the host's reason rather than a traceback
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


def run(req: Json) -> Json:
    db = req["db"]
    store: SqliteStore | MysqlStore = SqliteStore(db["path"]) if db["scheme"] == "sqlite" else MysqlStore(db)
    action = req["action"]
    if action == "list":
        return {"ok": True, "accounts": store.all()}
    columns = store.columns()
    missing = [c for c in ("username", "domain", "password", "ha1") if c not in columns]
    if missing:
        raise StoreError(f"table {TABLE} has no column {', '.join(missing)}: not an OpenSIPS subscriber table")
    names = [a["user"] for a in req.get("accounts", [])] or list(req.get("users", []))
    results, ops = decide(action, req.get("accounts", []), req.get("users", []), store.existing(names))
    if ops:
        store.write(ops, [c for c in HASHES if c in columns])
    return {"ok": True, "results": results}


def decide(
    action: str, accounts: list[Json], users: list[str], existing: dict[str, tuple[str, str]]
) -> tuple[list[list[str]], list[tuple[str, Json]]]:
    """Per user its outcome, and the writes: ("insert"|"update", account) or ("delete", {"user": name}).

    existing: user -> (domain, ha1) of the rows there now. add: a user already there with the same realm
    and HA1 is unchanged, with others it is refused (`passwd` changes a password); passwd: the user must
    exist; set (the Python API): insert or update; remove: a missing user is already gone.
    """
    results: list[list[str]] = []
    ops: list[tuple[str, Json]] = []
    if action == "remove":
        for user in users:
            if user in existing:
                results.append([user, "removed"])
                ops.append(("delete", {"user": user}))
            else:
                results.append([user, "absent"])
        return results, ops
    for acc in accounts:
        have = existing.get(acc["user"])
        same = have is not None and have == (acc["realm"], acc["ha1"])
        if have is None:
            if action == "passwd":
                results.append([acc["user"], "missing"])
            else:
                results.append([acc["user"], "added"])
                ops.append(("insert", acc))
        elif same:
            results.append([acc["user"], "unchanged"])
        elif action == "add":
            results.append([acc["user"], "exists"])
        else:
            results.append([acc["user"], "updated"])
            ops.append(("update", acc))
    return results, ops


class SqliteStore:
    def __init__(self, path: str) -> None:
        import sqlite3
        import urllib.parse

        if not os.path.isfile(path):
            raise StoreError(f"no database {path} (sipops install creates it when registrar_auth is on)")
        # mode=rw: never create an empty database beside the one OpenSIPS uses.
        uri = "file:" + urllib.parse.quote(path) + "?mode=rw"
        try:
            self.con = sqlite3.connect(uri, uri=True, timeout=10)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None
        self.path = path

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import sqlite3

        try:
            return list(self.con.execute(sql, args))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def columns(self) -> list[str]:
        cols = [str(r[1]) for r in self._query(f"PRAGMA table_info({TABLE})")]
        if not cols:
            raise StoreError(f"{self.path} has no {TABLE} table (sipops install creates it when registrar_auth is on)")
        return cols

    def all(self) -> list[list[str]]:
        self.columns()
        return [[str(u), str(d)] for u, d in self._query(f"SELECT username, domain FROM {TABLE} ORDER BY username")]

    def existing(self, users: list[str]) -> dict[str, tuple[str, str]]:
        if not users:
            return {}
        marks = ",".join("?" * len(users))
        rows = self._query(f"SELECT username, domain, ha1 FROM {TABLE} WHERE username IN ({marks})", tuple(users))
        return {str(u): (str(d), str(h)) for u, d, h in rows}

    def write(self, ops: list[tuple[str, Json]], hashes: list[str]) -> None:
        import sqlite3

        try:
            with self.con:  # one transaction: every account of the request or none
                for kind, acc in ops:
                    if kind == "delete":
                        self.con.execute(f"DELETE FROM {TABLE} WHERE username = ?", (acc["user"],))
                        continue
                    values = [acc["user"], acc["realm"], "", *(acc[h] for h in hashes)]
                    if kind == "insert":
                        cols = ", ".join(["username", "domain", "password", *hashes])
                        marks = ", ".join("?" * len(values))
                        self.con.execute(f"INSERT INTO {TABLE} ({cols}) VALUES ({marks})", values)
                    else:
                        sets = ", ".join(f"{c} = ?" for c in ["domain", "password", *hashes])
                        self.con.execute(f"UPDATE {TABLE} SET {sets} WHERE username = ?", [*values[1:], acc["user"]])
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None


def mysql_literal(value: str) -> str:
    """A MySQL string literal (backslash and quote escaped; the values are user names, realms, hex)."""
    if "\0" in value:
        raise StoreError("a NUL byte in a value")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def mysql_existing_sql(users: list[str]) -> str:
    names = ", ".join(mysql_literal(u) for u in users)
    return f"SELECT username, domain, ha1 FROM {TABLE} WHERE username IN ({names});\n"


def mysql_write_sql(ops: list[tuple[str, Json]], hashes: list[str]) -> str:
    """One transaction of INSERT/UPDATE/DELETE statements."""
    lines = ["START TRANSACTION;"]
    for kind, acc in ops:
        user = mysql_literal(acc["user"])
        if kind == "delete":
            lines.append(f"DELETE FROM {TABLE} WHERE username = {user};")
            continue
        values = [mysql_literal(acc["realm"]), "''", *(mysql_literal(acc[h]) for h in hashes)]
        if kind == "insert":
            cols = ", ".join(["username", "domain", "password", *hashes])
            lines.append(f"INSERT INTO {TABLE} ({cols}) VALUES ({user}, {', '.join(values)});")
        else:
            sets = ", ".join(f"{c} = {v}" for c, v in zip(["domain", "password", *hashes], values, strict=True))
            lines.append(f"UPDATE {TABLE} SET {sets} WHERE username = {user};")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def mysql_defaults(db: Json) -> str:
    """The client's option file: credentials in a 0600 file, never on the command line."""
    return f"[client]\nhost={db['host']}\nport={db['port']}\nuser={db['user']}\npassword={db['password']}\n"


class MysqlStore:
    def __init__(self, db: Json) -> None:
        self.db = db

    def _run(self, sql: str) -> list[list[str]]:
        import subprocess
        import tempfile

        fd, cnf = tempfile.mkstemp(prefix="sipops-users-", suffix=".cnf")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(mysql_defaults(self.db))
            argv = ["mysql", f"--defaults-extra-file={cnf}", "-N", "-B", self.db["database"]]
            try:
                proc = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60, check=False)
            except FileNotFoundError:
                raise StoreError("no mysql client on the host (Debian: default-mysql-client)") from None
        finally:
            os.unlink(cnf)
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()
            raise StoreError(f"mysql: {err[-1] if err else f'exit {proc.returncode}'}")
        return [line.split("\t") for line in proc.stdout.splitlines() if line]

    def columns(self) -> list[str]:
        return [r[0] for r in self._run(f"SHOW COLUMNS FROM {TABLE};\n")]

    def all(self) -> list[list[str]]:
        return [r[:2] for r in self._run(f"SELECT username, domain FROM {TABLE} ORDER BY username;\n")]

    def existing(self, users: list[str]) -> dict[str, tuple[str, str]]:
        if not users:
            return {}
        return {r[0]: (r[1], r[2]) for r in self._run(mysql_existing_sql(users)) if len(r) >= 3}

    def write(self, ops: list[tuple[str, Json]], hashes: list[str]) -> None:
        self._run(mysql_write_sql(ops, hashes))
