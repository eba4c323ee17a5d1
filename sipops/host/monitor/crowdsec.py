"""A CrowdSec Local API (LAPI) client, stdlib only: it runs on hosts inside the watcher.

Two identities, as the LAPI of Debian 12's crowdsec 1.4.6 serves them (API v1):
- agent (machine_id + password): POST /v1/watchers/login -> a JWT, then POST /v1/alerts with
  `Authorization: Bearer JWT`: each local ban is one alert carrying its decision, so every other
  host's stream (and `cscli decisions list`) sees it. A 401 on /v1/alerts logs in again once.
- bouncer (API key): GET /v1/decisions/stream?startup=true (every live decision), then without
  startup (deltas since this key's last pull) with `X-Api-Key`; {"new": [...], "deleted": [...]}.
  A decision's `duration` is the time it has LEFT, as a Go duration ("3h59m58.9s", "-2.1s" when
  expired); that is what goes to the kernel as the element's remaining time.

Decisions this host pushed itself come back in the stream; they carry `from HOST` in their scenario
(sipops/RULE from HOST; their origin is `crowdsec`, as any agent's), which is how `sipops bans` tells
this host's rules, another sipops host and CrowdSec's own scenarios or blocklists apart (origin_of).
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

API = "/v1"
USER_AGENT = "sipops-watch/1 (crowdsec-lapi-v1)"
# The decisions' origin: an agent's. `cscli decisions list` shows only crowdsec/cscli origins unless -a
# (1.4.x's include_capi filter), so sipops' decisions are told apart by their scenario instead.
ORIGIN = "crowdsec"
SCENARIO_PREFIX = "sipops/"
_GO_DURATION = re.compile(r"(-?)((?:\d+(?:\.\d+)?(?:h|ms|us|µs|ns|m|s))+)$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
Transport = Callable[[urllib.request.Request, float], tuple[int, bytes]]


class LapiError(Exception):
    """The LAPI could not be reached or answered with an error (one line, the URL's host named)."""


class LapiAuthError(LapiError):
    """The LAPI refused the credentials (retrying will not help until they are registered again)."""


def parse_url(text: str) -> str:
    """The LAPI base URL normalized (scheme://host[:port], no trailing slash); ValueError says why not."""
    raw = text.strip()
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"LAPI URL {raw!r}: scheme must be http or https")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"LAPI URL {raw!r}: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"LAPI URL {raw!r}: no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"LAPI URL {raw!r}: no credentials, query or fragment allowed")
    if parts.path not in ("", "/"):
        raise ValueError(f"LAPI URL {raw!r}: give the server only (the API path {API} is added)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def go_duration(text: str) -> float:
    """Seconds from a Go duration string ("4h0m0s", "59m58.123s", "-1.5s", "0s"); ValueError otherwise."""
    s = text.strip()
    if s in ("0", "0s"):
        return 0.0
    m = _GO_DURATION.match(s)
    if not m:
        raise ValueError(f"not a Go duration: {text!r}")
    total = sum(float(n) * _GO_UNITS[u] for n, u in _GO_PART.findall(m.group(2)))
    return -total if m.group(1) else total


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Decision:
    """One decision of the stream: `remaining` seconds left when it was read."""

    id: int
    value: str
    scope: str  # Ip, Range (others: Country, AS, ... are not applied to address sets)
    type: str  # ban (captcha and others mean nothing to a firewall)
    remaining: float
    origin: str  # crowdsec, cscli, CAPI, lists, sipops
    scenario: str

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Decision:
        """From the stream's JSON object; ValueError names the field that is wrong."""
        try:
            remaining = go_duration(str(raw.get("duration") or "0s"))
            return cls(
                int(raw["id"]),
                str(raw["value"]),
                str(raw.get("scope") or ""),
                str(raw.get("type") or ""),
                remaining,
                str(raw.get("origin") or ""),
                str(raw.get("scenario") or ""),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"decision without a valid {exc}") from None

    @property
    def address_scope(self) -> bool:
        return self.scope.lower() in ("ip", "range")


def origin_of(d: Decision, me: str) -> str:
    """Where a ban came from, as `sipops bans` shows it: this host, another sipops host, or CrowdSec."""
    host = _pushed_by(d.scenario)
    if host is not None:
        return "local" if host == me else f"fleet:{host}"
    if d.origin.lower() in ("capi", "lists"):
        return f"crowdsec-blocklist:{d.scenario}" if d.scenario else "crowdsec-blocklist"
    if d.origin == "cscli":
        return "crowdsec-manual"
    return f"crowdsec:{d.scenario}" if d.scenario else f"crowdsec:{d.origin or '?'}"


def _pushed_by(scenario: str) -> str | None:
    if not scenario.startswith(SCENARIO_PREFIX) or " from " not in scenario:
        return None
    return scenario.rsplit(" from ", 1)[1].strip() or None


def scenario_of(rule: str, host: str) -> str:
    """The decision's scenario for a ban of this host (`sipops/conn_flood from edge1`)."""
    return f"{SCENARIO_PREFIX}{rule} from {host}"


@dataclass(frozen=True)
class LocalBan:
    """A ban this host decided, as it is pushed: address (IP or CIDR), total seconds, rule, evidence."""

    address: str
    seconds: int
    rule: str
    evidence: str
    since: float

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "seconds": self.seconds,
            "rule": self.rule,
            "evidence": self.evidence,
            "since": self.since,
        }


def alert_of(ban: LocalBan, host: str) -> dict[str, Any]:
    """One LAPI alert with its decision (every field 1.4.6's swagger marks required)."""
    scope = "Range" if "/" in ban.address else "Ip"
    scenario = scenario_of(ban.rule, host)
    at = iso(ban.since)
    source: dict[str, Any] = {"scope": scope, "value": ban.address}
    if scope == "Ip":
        source["ip"] = ban.address
    else:
        source["range"] = ban.address
    return {
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": "1",
        "message": f"{host}: {ban.rule} {ban.address}: {ban.evidence}"[:1024],
        "events_count": 1,
        "start_at": at,
        "stop_at": at,
        "capacity": 0,
        "leakspeed": "0s",
        "simulated": False,
        "events": [{"timestamp": at, "meta": [{"key": "evidence", "value": ban.evidence[:1024] or ban.rule}]}],
        "source": source,
        "labels": None,
        "decisions": [
            {
                "duration": f"{max(1, ban.seconds)}s",
                "origin": ORIGIN,
                "scenario": scenario,
                "scope": scope,
                "type": "ban",
                "value": ban.address,
            }
        ],
    }


def urllib_transport(request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are statuses, network errors raise OSError."""
    context = ssl.create_default_context() if request.full_url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return int(resp.status), resp.read(64 << 20)
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(65536)


class LapiClient:
    """Login, alerts and the decisions stream of one LAPI; every call is bounded by `timeout`."""

    def __init__(
        self,
        url: str,
        *,
        machine_id: str = "",
        password: str = "",
        api_key: str = "",
        timeout: float = 5.0,
        transport: Transport = urllib_transport,
    ) -> None:
        self.url = parse_url(url)
        self.machine_id = machine_id
        self.password = password
        self.api_key = api_key
        self.timeout = timeout
        self.transport = transport
        self.token: str | None = None
        self._where = urllib.parse.urlsplit(self.url).netloc

    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + API + path, data=data, method=method)
        req.add_header("User-Agent", USER_AGENT)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            status, raw = self.transport(req, self.timeout)
        except (OSError, ValueError) as exc:  # refused, timeout, DNS, TLS
            reason = getattr(exc, "reason", None) or exc
            raise LapiError(f"LAPI {self._where} unreachable: {reason}") from None
        if status in (401, 403):
            what = "machine credentials" if path.startswith(("/watchers", "/alerts")) else "bouncer API key"
            raise LapiAuthError(f"LAPI {self._where} refused the {what} ({status}{_message(raw)})")
        if not 200 <= status < 300:
            raise LapiError(f"LAPI {self._where}: {method} {API}{path} answered {status}{_message(raw)}")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise LapiError(f"LAPI {self._where}: {method} {API}{path} answered something that is not JSON") from None

    def login(self) -> str:
        """A fresh JWT for the machine credentials."""
        reply = self._request(
            "POST", "/watchers/login", {"machine_id": self.machine_id, "password": self.password, "scenarios": []}
        )
        token = reply.get("token") if isinstance(reply, dict) else None
        if not isinstance(token, str) or not token:
            raise LapiError(f"LAPI {self._where}: login answered without a token")
        self.token = token
        return token

    def push(self, bans: Sequence[LocalBan], host: str) -> list[str]:
        """Send the bans as alerts with their decisions in one POST; the LAPI's alert ids."""
        if not bans:
            return []
        body = [alert_of(b, host) for b in bans]
        for attempt in (0, 1):
            if self.token is None:
                self.login()
            try:
                reply = self._request("POST", "/alerts", body, {"Authorization": f"Bearer {self.token}"})
                return [str(i) for i in reply] if isinstance(reply, list) else []
            except LapiAuthError:
                self.token = None  # the JWT expired (1.4.6: 1 h): log in again, once
                if attempt:
                    raise
        return []

    def stream(self, startup: bool) -> tuple[list[Decision], list[Decision]]:
        """(new, deleted) decisions since this API key's last pull (all live ones with startup)."""
        reply = self._request(
            "GET", "/decisions/stream?startup=" + ("true" if startup else "false"), headers={"X-Api-Key": self.api_key}
        )
        if reply is None:
            return [], []
        if not isinstance(reply, dict):
            raise LapiError(f"LAPI {self._where}: the decisions stream is not an object")
        out: tuple[list[Decision], list[Decision]] = ([], [])
        for key, bucket in (("new", out[0]), ("deleted", out[1])):
            for raw in reply.get(key) or []:
                try:
                    bucket.append(Decision.of(raw))
                except ValueError:
                    continue  # one malformed decision must not stop the others
        return out


def _message(raw: bytes) -> str:
    try:
        msg = json.loads(raw).get("message")
    except (ValueError, AttributeError):
        return ""
    return f": {str(msg).splitlines()[0][:200]}" if msg else ""


class Backoff:
    """Delays between failed attempts: 1, 2, 4 ... `cap` seconds; reset on success."""

    def __init__(self, first: float = 1.0, cap: float = 60.0, monotonic: Callable[[], float] = time.monotonic):
        self.first, self.cap, self.monotonic = first, cap, monotonic
        self.delay = 0.0
        self.next_at = 0.0

    def ready(self) -> bool:
        return self.monotonic() >= self.next_at

    def failed(self) -> float:
        self.delay = self.first if self.delay == 0 else min(self.cap, self.delay * 2)
        self.next_at = self.monotonic() + self.delay
        return self.delay

    def ok(self) -> None:
        self.delay = 0.0
        self.next_at = 0.0
