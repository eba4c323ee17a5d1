"""The ban journal: SQLite state of every ban, the source of truth the kernel sets are re-asserted from.

One row per address (IP or CIDR): rule and evidence of the latest ban, since/until (epoch seconds),
count (bans so far, for the escalation ladder) and unbanned (an operator lifted it: it is not restored
at start nor re-asserted, so `sipops unban` survives restarts). Expired rows are kept for the count.
Written by the watcher and by `sipops ban/unban` at the same time: WAL mode, short transactions.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

Clock = Callable[[], float]
DEFAULT_PATH = Path("/var/lib/sipops/bans.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
    address   TEXT PRIMARY KEY,
    rule      TEXT NOT NULL,
    evidence  TEXT NOT NULL DEFAULT '',
    since     REAL NOT NULL,
    until     REAL NOT NULL,
    count     INTEGER NOT NULL DEFAULT 1,
    unbanned  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS bans_live ON bans (unbanned, until);
"""


def default_path() -> Path:
    """$SIPOPS_STATE_DIR/bans.sqlite, else /var/lib/sipops/bans.sqlite."""
    state = os.environ.get("SIPOPS_STATE_DIR")
    return Path(state) / "bans.sqlite" if state else DEFAULT_PATH


class BanRecord(NamedTuple):
    """One journal row. A NamedTuple, not a dataclass: a 10k-ban poll builds 10k of them (0.5 us each, not 1.6)."""

    address: str
    rule: str
    evidence: str
    since: float
    until: float
    count: int  # type: ignore[assignment]  # the column's name; it shadows tuple.count, which nothing calls
    unbanned: bool

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)

    def live(self, now: float) -> bool:
        return not self.unbanned and self.until > now

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "address": self.address,
            "rule": self.rule,
            "evidence": self.evidence,
            "since": self.since,
            "until": self.until,
            "remaining": round(self.remaining(now), 1),
            "count": self.count,
            "unbanned": self.unbanned,
            "live": self.live(now),
        }


class NewBan(NamedTuple):
    """What the watcher or the CLI wants banned; the journal decides the count (a NamedTuple, as BanRecord)."""

    address: str
    rule: str
    evidence: str
    seconds: int
    left: float | None = None  # already running (a meter's element found in the kernel): the time it has left


class Journal:
    """The ban journal at `path` (created with its directory)."""

    def __init__(self, path: Path | str, clock: Clock = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=10, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def get(self, address: str) -> BanRecord | None:
        row = self.db.execute("SELECT * FROM bans WHERE address = ?", (address,)).fetchone()
        return _record(row) if row else None

    def counts(self, addresses: Iterable[str]) -> dict[str, BanRecord]:
        """Existing rows for these addresses (one query per 500)."""
        addrs = list(addresses)
        out: dict[str, BanRecord] = {}
        for i in range(0, len(addrs), 500):
            part = addrs[i : i + 500]
            marks = ",".join("?" * len(part))
            for row in self.db.execute(f"SELECT * FROM bans WHERE address IN ({marks})", part):
                out[row[0]] = _record(row)
        return out

    def record(
        self,
        bans: Sequence[NewBan],
        *,
        forgive_after: float = 86400.0,
        previous: Mapping[str, BanRecord] | None = None,
    ) -> list[BanRecord]:
        """Store bans in one transaction; `count` grows unless the last ban ended over `forgive_after` ago.

        An earlier manual unban is cleared by a new ban. previous: what counts() just returned for these
        addresses (the watcher reads it to escalate; reading it twice is a third of a 10k poll's journal time).
        """
        now = self.clock()
        if previous is None:
            previous = self.counts(b.address for b in bans)
        out = []
        get = previous.get
        for address, rule, evidence, seconds, left in bans:
            prev = get(address)
            count = 1
            if prev is not None and prev.until + forgive_after > now:
                count = prev.count + (0 if prev.live(now) else 1)
            until = now + (seconds if left is None else min(left, seconds))
            out.append(BanRecord(address, rule, evidence, until - seconds, until, count, False))
        with self._tx():
            # The records are the rows (unbanned is the 7th column): no second list of 10k tuples.
            self.db.executemany(
                "INSERT INTO bans (address, rule, evidence, since, until, count, unbanned) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT(address) DO UPDATE SET rule=excluded.rule, evidence=excluded.evidence, "
                "since=excluded.since, until=excluded.until, count=excluded.count, unbanned=0",
                out,
            )
        return out

    def unban(self, addresses: Iterable[str]) -> list[str]:
        """Mark bans lifted (kept for history); returns the addresses that were live."""
        now = self.clock()
        addrs = list(addresses)
        live = [a for a, r in self.counts(addrs).items() if r.live(now)]
        with self._tx():
            self.db.executemany(
                "UPDATE bans SET unbanned = 1, until = MIN(until, ?) WHERE address = ?", [(now, a) for a in addrs]
            )
        return live

    def live(self) -> list[BanRecord]:
        """Bans in force now (not lifted, not expired), oldest first."""
        now = self.clock()
        rows = self.db.execute("SELECT * FROM bans WHERE unbanned = 0 AND until > ? ORDER BY since", (now,))
        return [_record(r) for r in rows]

    def live_rows(self) -> list[tuple[str, str, float, float]]:
        """(address, rule, since, until) of live bans: what a restore needs, without building records."""
        query = "SELECT address, rule, since, until FROM bans WHERE unbanned = 0 AND until > ?"
        return self.db.execute(query, (self.clock(),)).fetchall()

    def live_until(self) -> dict[str, float]:
        """address -> until of the live bans (the watcher's map of what is banned), straight from the cursor."""
        query = "SELECT address, until FROM bans WHERE unbanned = 0 AND until > ?"
        return dict(self.db.execute(query, (self.clock(),)))

    def live_elements(self, element_sql: str, max_timeout: int, separator: str = ", ") -> list[tuple[str, str]]:
        """The live bans rendered by SQLite, by kind of address: (one address of the kind, its elements joined).

        element_sql: an SQL expression over the columns address, rule, t (the ban's total seconds, 1 to
        max_timeout) and l (seconds left, 1 to t). The kinds (IPv4 or IPv6, host or network) are what
        decides a kernel set. A restore of 100k bans is four queries and joins in C instead of 100k rows,
        tuples and strings in Python; one query per kind, not a GROUP BY: sorting 100k rendered rows into
        groups costs more than rendering them (0.24 s against 0.1, measured).
        """
        now = self.clock()
        out = []
        for kind in _ADDRESS_KINDS:
            query = (
                f"SELECT min(address), group_concat({element_sql}, ?) FROM ("
                " SELECT address, rule, t, max(1, min(t, CAST(round(until - ?) AS INTEGER))) AS l FROM ("
                "  SELECT address, rule, until, max(1, min(?, CAST(round(until - since) AS INTEGER))) AS t"
                f"  FROM bans WHERE unbanned = 0 AND until > ? AND {kind}))"
            )
            sample, elements = self.db.execute(query, (separator, now, max_timeout, now)).fetchone()
            if sample is not None:
                out.append((sample, elements))
        return out

    def live_rules(self) -> set[str]:
        """The rules of the live bans (a few names: what a restore checks before using them as comments)."""
        query = "SELECT DISTINCT rule FROM bans WHERE unbanned = 0 AND until > ?"
        return {row[0] for row in self.db.execute(query, (self.clock(),))}

    def all(self) -> list[BanRecord]:
        return [_record(r) for r in self.db.execute("SELECT * FROM bans ORDER BY since")]

    def version(self) -> int:
        """Changes made by OTHER connections bump this (PRAGMA data_version): cheap to poll every second."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def prune(self, older_than: float) -> int:
        """Forget rows whose ban ended more than `older_than` seconds ago."""
        cur = self.db.execute("DELETE FROM bans WHERE until < ?", (self.clock() - older_than,))
        return cur.rowcount

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


# IPv4 host, IPv6 host, IPv4 network, IPv6 network: one kernel set each (ban.set_for).
_ADDRESS_KINDS = (
    "instr(address, ':') = 0 AND instr(address, '/') = 0",
    "instr(address, ':') > 0 AND instr(address, '/') = 0",
    "instr(address, ':') = 0 AND instr(address, '/') > 0",
    "instr(address, ':') > 0 AND instr(address, '/') > 0",
)


def _record(row: tuple[str, str, str, float, float, int, int]) -> BanRecord:
    return BanRecord(row[0], row[1], row[2], float(row[3]), float(row[4]), int(row[5]), bool(row[6]))
