"""The watcher's link to a CrowdSec LAPI: its own bans out, the fleet's decisions in (stdlib only).

The network runs in one background thread, so a LAPI that is down or slow never holds up a poll:
local detection and bans go on, the thread retries with backoff (1 s doubling to 10 s: the LAPI is a
service of the operator's own network, one request every 10 s while it is down costs nothing, and a LAPI
back after an hour must be caught up within seconds, not after a minute's backoff) and, once the
LAPI answers again, sends every ban queued meanwhile (the outbox is kept in a root-only file, so a
watcher restart loses none either) and catches up from the stream (a fresh `startup=true` pull after
any failure: deletions missed while down are then found by difference).

The watcher's thread calls take() once per poll: the decisions read since, turned into kernel work
(elements with the time they have left; addresses whose last decision went away) that the watcher
writes in the same batch as its own bans. The allowlist always wins: a decision on an allowlisted
address or a range overlapping one is logged and never applied (the firewall accepts the allowlist
before it looks at a ban set, too).

Files (root-only, in the state directory): crowdsec.json (the link's state and the applied decisions
with their origin, read by `sipops bans` and `sipops health`), crowdsec-outbox.json (bans not yet
accepted by the LAPI). Credentials: /etc/sipops/crowdsec.json, 0600, written by `sipops install/push`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipops.host.monitor.allow import Allowlist
from sipops.host.monitor.ban import Ban, normalize
from sipops.host.monitor.crowdsec import Backoff, Decision, LapiAuthError, LapiClient, LapiError, LocalBan, origin_of

CREDENTIALS = Path("/etc/sipops/crowdsec.json")
STATE_NAME = "crowdsec.json"
OUTBOX_NAME = "crowdsec-outbox.json"
OUTBOX_MAX = 100_000  # a LAPI gone for days must not grow the file without bound: oldest dropped
RETRY_CAP = 10.0  # seconds between attempts while the LAPI is down, at most (see above)


def state_dir() -> Path:
    return Path(os.environ.get("SIPOPS_STATE_DIR") or "/var/lib/sipops")


def load_credentials(path: Path = CREDENTIALS) -> dict[str, str] | None:
    """url, machine_id, password, api_key, host; None when this host has no LAPI configured."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_mode & 0o077:
        raise PermissionError(f"{path}: readable by others (mode {st.st_mode & 0o777:o}); it must be 0600")
    data = json.loads(path.read_text())
    return {k: str(data.get(k) or "") for k in ("url", "machine_id", "password", "api_key", "host")}


def write_private(path: Path, data: Any) -> None:
    """Replace `path` atomically with JSON readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, separators=(",", ":"))
    os.replace(tmp, path)


@dataclass
class FleetWork:
    """What one poll hands the kernel: elements to (re)write with their remaining time, addresses to lift."""

    add: list[Ban] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    lifted_local: list[str] = field(default_factory=list)  # this host's own bans deleted on the LAPI
    events: list[str] = field(default_factory=list)


@dataclass
class _Applied:
    until: float
    origin: str
    scenario: str


class FleetLink:
    """One host's agent + bouncer link; see the module docstring."""

    def __init__(
        self,
        client: LapiClient,
        host: str,
        allow: Allowlist,
        *,
        directory: Path | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.host = host
        self.allow = allow
        self.dir = directory or state_dir()
        self.interval = interval
        self.clock = clock
        self.backoff = Backoff(cap=RETRY_CAP, monotonic=monotonic)
        self.monotonic = monotonic
        self._lock = threading.Lock()  # outbox, inbox, link
        self._applied_lock = threading.Lock()  # applied: written by take(), read by the thread's state saves
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outbox: list[LocalBan] = self._load_outbox()
        self._inbox: list[tuple[float, bool, list[Decision], list[Decision]]] = []
        self._startup = True  # the next pull is a full one
        self.applied: dict[str, dict[int, _Applied]] = {}
        self.link: dict[str, Any] = {"up": None, "since": self.clock(), "error": "", "url": client.url}
        self.pushed = 0

    # -- the watcher's side -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sipops-lapi", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def queue(self, bans: Iterable[LocalBan]) -> None:
        """Bans this host just made, to push (the thread is woken at once)."""
        new = list(bans)
        if not new:
            return
        with self._lock:
            self._outbox.extend(new)
            del self._outbox[:-OUTBOX_MAX]
            self._save_outbox()
            down = self.link["up"] is not True
        if down:  # health shows how many bans wait for the LAPI
            self._save_state()
        self._wake.set()

    def take(self, live: dict[str, float]) -> FleetWork:
        """Decisions read since the last call as kernel work; `live` maps this host's journal bans to until."""
        with self._lock:
            inbox, self._inbox = self._inbox, []
        work = FleetWork()
        if not inbox:
            return work
        with self._applied_lock:
            self._digest(inbox, live, work)
        self._save_state()
        return work

    def _digest(
        self, inbox: list[tuple[float, bool, list[Decision], list[Decision]]], live: dict[str, float], work: FleetWork
    ) -> None:
        now = self.clock()
        touched: set[str] = set()
        for read_at, full, new, deleted in inbox:
            if full:  # a startup pull lists every live decision: anything else is gone
                seen = {d.id for d in new}
                deleted = deleted + [
                    Decision(i, addr, "Ip", "ban", 0, a.origin, a.scenario)
                    for addr, ids in self.applied.items()
                    for i, a in ids.items()
                    if i not in seen
                ]
            for d in deleted:
                self._forget(d, work, touched)
            for d in new:
                self._learn(d, read_at, now, work, touched)
        for addr in touched:
            ids = self.applied.get(addr)
            if ids:
                until = max(a.until for a in ids.values())
                # An own ban (journal) outlasting the decision keeps its element as it is.
                if until > now and live.get(addr, 0) < until and not all(a.origin == "local" for a in ids.values()):
                    origin = next(iter(ids.values())).origin
                    left = max(1, round(until - now))
                    work.add.append(Ban(addr, left, origin, left))
            elif addr not in work.lifted_local and live.get(addr, 0) <= now:
                work.remove.append(addr)

    def _learn(self, d: Decision, read_at: float, now: float, work: FleetWork, touched: set[str]) -> None:
        if not d.address_scope or d.type.lower() != "ban":
            return
        try:
            addr = normalize(d.value)
        except ValueError:
            return
        why = self.allow.why(addr)
        if why is not None:
            work.events.append(f"action=skip addr={addr} decision={d.id} scenario={d.scenario!r} allowlisted={why!r}")
            return
        until = read_at + d.remaining
        if until <= now:
            return
        self.applied.setdefault(addr, {})[d.id] = _Applied(until, origin_of(d, self.host), d.scenario)
        touched.add(addr)

    def _forget(self, d: Decision, work: FleetWork, touched: set[str]) -> None:
        try:
            addr = normalize(d.value)
        except ValueError:
            return
        ids = self.applied.get(addr)
        if not ids or d.id not in ids:
            return
        gone = ids.pop(d.id)
        if not ids:
            del self.applied[addr]
        touched.add(addr)
        # This host's own ban deleted on the LAPI (`cscli decisions delete`) before it expired: lifted here too.
        if gone.origin == "local" and gone.until > self.clock() + 1 and addr not in self.applied:
            work.lifted_local.append(addr)
            work.remove.append(addr)

    def live_bans(self) -> list[Ban]:
        """Every applied decision still running, with its time left (re-asserted after a set wipe)."""
        now = self.clock()
        out = []
        with self._applied_lock:
            for addr, ids in self.applied.items():
                best = max(ids.values(), key=lambda a: a.until)
                if best.until > now + 1 and best.origin != "local":
                    left = round(best.until - now)
                    out.append(Ban(addr, left, best.origin, left))
        return out

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.link, outbox=len(self._outbox))

    # -- the network thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if self.backoff.ready():
                self.sync_once()
            wait = self.interval if self.backoff.delay == 0 else max(0.05, self.backoff.next_at - self.monotonic())
            self._wake.wait(wait)
            self._wake.clear()

    def sync_once(self) -> bool:
        """Push the outbox, then pull the stream; False (and backoff) on any failure."""
        with self._lock:
            pending = list(self._outbox)
        try:
            if pending:
                self.client.push(pending, self.host)
                with self._lock:
                    del self._outbox[: len(pending)]
                    self._save_outbox()
                    self.pushed += len(pending)
            full = self._startup
            new, deleted = self.client.stream(startup=full)
        except LapiError as exc:
            self.backoff.failed()
            self._startup = True  # catch up with a full pull: deletions may have been missed
            self._set_link(False, str(exc), auth=isinstance(exc, LapiAuthError))
            return False
        self.backoff.ok()
        self._startup = False
        with self._lock:
            self._inbox.append((self.clock(), full, new, deleted))
        self._set_link(True, "")
        return True

    def _set_link(self, up: bool, error: str, auth: bool = False) -> None:
        with self._lock:
            changed = self.link["up"] is not up or self.link.get("error") != error
            if self.link["up"] is not up:
                self.link["since"] = self.clock()
            self.link.update(up=up, error=error, auth=auth)
        if changed:  # not every second: with 10k decisions the file is ~1 MB
            self._save_state()

    # -- files --------------------------------------------------------------------------------------
    def _save_state(self) -> None:
        with self._applied_lock:
            decisions = {
                addr: {"origin": a.origin, "scenario": a.scenario, "until": a.until}
                for addr, ids in self.applied.items()
                for a in [max(ids.values(), key=lambda x: x.until)]
            }
        # A full disk must not stop the bans; health reads the file's time and says it is stale.
        with contextlib.suppress(OSError):
            write_private(self.dir / STATE_NAME, {"link": self.status(), "decisions": decisions})

    def _load_outbox(self) -> list[LocalBan]:
        try:
            rows = json.loads((self.dir / OUTBOX_NAME).read_text())
            return [LocalBan(**r) for r in rows][-OUTBOX_MAX:]
        except (OSError, ValueError, TypeError):
            return []

    def _save_outbox(self) -> None:
        with contextlib.suppress(OSError):
            write_private(self.dir / OUTBOX_NAME, [b.as_json() for b in self._outbox])


def read_state(directory: Path | None = None) -> dict[str, Any] | None:
    """The link's state file (for `sipops bans` and `sipops health`), or None when there is none."""
    try:
        data = json.loads(((directory or state_dir()) / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def from_credentials(allow: Allowlist, path: Path = CREDENTIALS) -> FleetLink | None:
    """The running link of this host when install/push stored its credentials, else None.

    Raises ValueError or OSError (one line) for credentials that cannot be used."""
    creds = load_credentials(path)
    if creds is None:
        return None
    client = LapiClient(
        creds["url"], machine_id=creds["machine_id"], password=creds["password"], api_key=creds["api_key"]
    )
    link = FleetLink(client, creds["host"] or socket.gethostname(), allow)
    link.start()
    return link
