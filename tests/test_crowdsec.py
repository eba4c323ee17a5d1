"""The LAPI client and the watcher's fleet link on the protocol's edge cases.

The LAPI here is a stand-in (LapiStandIn: a stdlib HTTP server speaking the few v1 endpoints the way
crowdsec 1.4.6 does); the real crowdsec from Debian is exercised by tests/e2e/test_crowdsec.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sipops.host.monitor.allow import Allowlist
from sipops.host.monitor.crowdsec import (
    Backoff,
    Decision,
    LapiAuthError,
    LapiClient,
    LapiError,
    LocalBan,
    go_duration,
    origin_of,
    parse_url,
)
from sipops.host.monitor.fleetlink import FleetLink, read_state


class LapiStandIn:
    """A test double of the LAPI's v1 login, alerts and decisions stream (not crowdsec)."""

    def __init__(self) -> None:
        self.machines = {"h1": "pw1"}
        self.keys = {"key1"}
        self.tokens: set[str] = set()
        self.alerts: list[dict[str, Any]] = []
        self.decisions: dict[int, dict[str, Any]] = {}
        self.pending_new: list[int] = []
        self.pending_deleted: list[dict[str, Any]] = []
        self.logins = 0
        self.last_id = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, value: str, duration: str = "3h59m58.5s", **kw: str) -> int:
        self.last_id += 1
        i = self.last_id
        d = {
            "id": i,
            "value": value,
            "scope": "Ip",
            "type": "ban",
            "duration": duration,
            "origin": "cscli",
            "scenario": "manual 'ban' from 'lapi'",
        }
        d.update(kw)
        self.decisions[i] = d
        self.pending_new.append(i)
        return i

    def delete(self, i: int) -> None:
        self.pending_deleted.append(self.decisions.pop(i))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        lapi = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/watchers/login":
                    if lapi.machines.get(body["machine_id"]) != body["password"]:
                        return self.reply(401, {"code": 401, "message": "incorrect Username or Password"})
                    lapi.logins += 1
                    token = f"jwt{lapi.logins}"
                    lapi.tokens.add(token)
                    return self.reply(200, {"code": 200, "expire": "2030-01-01T00:00:00Z", "token": token})
                if self.path == "/v1/alerts":
                    if self.headers.get("Authorization", "").removeprefix("Bearer ") not in lapi.tokens:
                        return self.reply(401, {"code": 401, "message": "Token is expired"})
                    for a in body:
                        lapi.alerts.append(a)
                        for d in a["decisions"]:
                            lapi.add(d["value"], d["duration"], origin=d["origin"], scenario=d["scenario"])
                    return self.reply(201, [str(len(lapi.alerts))])
                self.reply(404, {"message": "not found"})

            def do_GET(self) -> None:
                if not self.path.startswith("/v1/decisions/stream"):
                    return self.reply(404, {"message": "not found"})
                if self.headers.get("X-Api-Key") not in lapi.keys:
                    return self.reply(403, {"message": "access forbidden"})
                if "startup=true" in self.path:
                    new, deleted = list(lapi.decisions.values()), []
                else:
                    new = [lapi.decisions[i] for i in lapi.pending_new if i in lapi.decisions]
                    deleted = lapi.pending_deleted
                lapi.pending_new, lapi.pending_deleted = [], []
                self.reply(200, {"new": new or None, "deleted": deleted or None})

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lapi() -> Iterator[LapiStandIn]:
    server = LapiStandIn()
    yield server
    server.close()


def client(lapi: LapiStandIn, password: str = "pw1", key: str = "key1") -> LapiClient:
    return LapiClient(lapi.url, machine_id="h1", password=password, api_key=key, timeout=2)


def link(lapi: LapiStandIn, tmp_path: Path, allow: Allowlist | None = None, host: str = "h1") -> FleetLink:
    return FleetLink(client(lapi), host, allow or Allowlist(), directory=tmp_path)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("ftp://lapi:8080", "scheme"),
        ("http://:8080", "no host"),
        ("http://lapi:99999", "Port out of range"),
        ("http://u:p@lapi:8080", "credentials"),
        ("http://lapi:8080/v1", "server only"),
        ("lapi:8080", "scheme"),
    ],
)
def test_a_lapi_url_that_does_not_parse_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_url(text)


def test_lapi_urls_are_normalized() -> None:
    assert parse_url(" http://198.18.0.2:8080/ ") == "http://198.18.0.2:8080"
    assert parse_url("https://[2001:db8::1]:8443") == "https://[2001:db8::1]:8443"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4h0m0s", 14400),
        ("3h59m58.5s", 14398.5),
        ("-1.5s", -1.5),
        ("0s", 0),
        ("150ms", 0.15),
        ("1m0.000001s", 60.000001),
    ],
)
def test_go_durations_of_the_stream_are_read(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


def test_origin_tells_this_host_another_sipops_host_and_crowdsec_apart() -> None:
    def d(origin: str, scenario: str) -> Decision:
        return Decision(1, "192.0.2.1", "Ip", "ban", 10, origin, scenario)

    assert origin_of(d("crowdsec", "sipops/sip_scanner from h1"), "h1") == "local"
    assert origin_of(d("crowdsec", "sipops/sip_scanner from h1"), "h2") == "fleet:h1"
    assert origin_of(d("CAPI", "crowdsecurity/ssh-bf"), "h2") == "crowdsec-blocklist:crowdsecurity/ssh-bf"
    assert origin_of(d("cscli", "manual"), "h2") == "crowdsec-manual"
    assert origin_of(d("crowdsec", "crowdsecurity/sip-bf"), "h2") == "crowdsec:crowdsecurity/sip-bf"


def test_an_expired_token_is_renewed_once_and_the_alert_carries_its_decision(lapi: LapiStandIn) -> None:
    c = client(lapi)
    c.token = "stale"
    c.push([LocalBan("192.0.2.7", 600, "sip_scanner", 'ua="friendly-scanner"', 1_700_000_000)], "h1")
    assert lapi.logins == 1
    (alert,) = lapi.alerts
    assert alert["source"] == {"scope": "Ip", "value": "192.0.2.7", "ip": "192.0.2.7"}
    assert alert["decisions"][0] == {
        "duration": "600s",
        "origin": "crowdsec",
        "scenario": "sipops/sip_scanner from h1",
        "scope": "Ip",
        "type": "ban",
        "value": "192.0.2.7",
    }


def test_wrong_machine_credentials_and_a_wrong_bouncer_key_say_which(lapi: LapiStandIn) -> None:
    with pytest.raises(LapiAuthError, match="refused the machine credentials"):
        client(lapi, password="nope").login()
    with pytest.raises(LapiAuthError, match="refused the bouncer API key"):
        client(lapi, key="nope").stream(startup=True)


def test_an_unreachable_lapi_is_one_line_naming_it() -> None:
    c = LapiClient("http://127.0.0.1:9", api_key="k", timeout=1)
    with pytest.raises(LapiError, match=r"LAPI 127\.0\.0\.1:9 unreachable") as info:
        c.stream(startup=True)
    assert "\n" not in str(info.value)


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    now = [0.0]
    b = Backoff(first=1, cap=8, monotonic=lambda: now[0])
    assert [b.failed() for _ in range(5)] == [1, 2, 4, 8, 8]
    assert not b.ready()
    now[0] = 100
    assert b.ready()
    b.ok()
    assert b.delay == 0


def test_decisions_become_elements_with_their_remaining_time_and_deletions_lift_them(
    lapi: LapiStandIn, tmp_path: Path
) -> None:
    fl = link(lapi, tmp_path, host="h2")
    i = lapi.add("192.0.2.10", "59m58s")
    lapi.add("198.51.100.0/24", "1h", scope="Range")
    lapi.add("FR", "1h", scope="Country")
    lapi.add("192.0.2.11", "1h", type="captcha")
    assert fl.sync_once()
    work = fl.take({})
    assert sorted((b.address, b.timeout) for b in work.add) == [("192.0.2.10", 3598), ("198.51.100.0/24", 3600)]
    assert {b.rule for b in work.add} == {"crowdsec-manual"}
    lapi.delete(i)
    assert fl.sync_once()
    work = fl.take({})
    assert work.add == [] and work.remove == ["192.0.2.10"]
    state = read_state(tmp_path)
    assert state is not None and list(state["decisions"]) == ["198.51.100.0/24"]
    assert state["link"]["up"] is True


def test_the_allowlist_always_wins_over_a_decision(lapi: LapiStandIn, tmp_path: Path) -> None:
    allow = Allowlist()
    allow.add("198.18.0.1", "operator")
    fl = link(lapi, tmp_path, allow)
    lapi.add("198.18.0.1")
    lapi.add("198.18.0.0/24", scope="Range")  # a range overlapping the operator
    lapi.add("203.0.113.5")
    fl.sync_once()
    work = fl.take({})
    assert [b.address for b in work.add] == ["203.0.113.5"]
    assert len(work.events) == 2 and all("allowlisted='operator'" in e for e in work.events)


def test_own_bans_come_back_unapplied_and_their_deletion_lifts_them_here_too(lapi: LapiStandIn, tmp_path: Path) -> None:
    fl = link(lapi, tmp_path, host="h1")
    fl.queue([LocalBan("192.0.2.20", 3600, "sip_scanner", "ua", 1_700_000_000)])
    assert fl.sync_once()
    assert fl.take({"192.0.2.20": 2e9}).add == []  # the journal has it already
    lapi.delete(1)
    fl.sync_once()
    work = fl.take({"192.0.2.20": 2e9})
    assert work.lifted_local == ["192.0.2.20"] and work.remove == ["192.0.2.20"]


def test_a_foreign_decision_lifted_keeps_this_hosts_own_live_ban(lapi: LapiStandIn, tmp_path: Path) -> None:
    fl = link(lapi, tmp_path, host="h2")
    lapi.add("192.0.2.30")
    fl.sync_once()
    fl.take({})
    lapi.delete(1)
    fl.sync_once()
    assert fl.take({"192.0.2.30": 2e9}).remove == []


def test_a_lapi_down_loses_nothing_bans_wait_in_the_outbox_and_deletions_are_caught_up(
    lapi: LapiStandIn, tmp_path: Path
) -> None:
    fl = link(lapi, tmp_path, host="h2")
    lapi.add("192.0.2.40")
    fl.sync_once()
    assert [b.address for b in fl.take({}).add] == ["192.0.2.40"]
    good = fl.client.url
    fl.client.url = "http://127.0.0.1:9"
    fl.queue([LocalBan("192.0.2.41", 60, "conn_flood", "n=500", 1_700_000_000)])
    assert not fl.sync_once()
    assert fl.status()["up"] is False and "unreachable" in fl.status()["error"]
    assert fl.backoff.delay == 1
    lapi.delete(1)
    lapi.pending_deleted.clear()  # the delta is lost to this bouncer: only a full pull can tell
    # A watcher restarted meanwhile still has the queued ban.
    fl2 = FleetLink(fl.client, "h2", Allowlist(), directory=tmp_path)
    fl2.applied = fl.applied
    fl2.client.url = good
    assert fl2.sync_once()
    assert [a["source"]["value"] for a in lapi.alerts] == ["192.0.2.41"]
    work = fl2.take({})
    assert work.remove == ["192.0.2.40"]


def test_the_watcher_writes_decisions_in_the_same_batch_as_its_own_bans_and_pushes_its_bans(
    lapi: LapiStandIn, tmp_path: Path
) -> None:
    from tests.test_watcher import FLOOD, Rig, table

    rig = Rig(tmp_path)
    fl = FleetLink(client(lapi), "h1", rig.watcher.allow, directory=tmp_path, clock=rig.clock)
    rig.watcher.fleet = fl
    rig.watcher.start()
    rig.nft.batches.clear()
    lapi.add("192.0.2.99", "10m0s", origin="crowdsec", scenario="sipops/sip_scanner from h2")
    lapi.add("198.51.100.31", "10m0s")  # a gateway of the allowlist: never applied
    fl.sync_once()
    rig.tables.append(table(FLOOD))
    result = rig.watcher.poll()
    assert [r.address for r in result.banned] == ["203.0.113.5"]
    (batch,) = rig.nft.batches  # one transaction: own ban and the fleet's decision
    assert "203.0.113.5 timeout 600s" in batch and '192.0.2.99 timeout 600s expires 600s comment "fleet:h2"' in batch
    assert "198.51.100.31" not in batch
    assert any("action=skip addr=198.51.100.31" in e for e in rig.events)
    fl.sync_once()  # pushes the watcher's ban
    assert [a["source"]["value"] for a in lapi.alerts] == ["203.0.113.5"]
    assert lapi.alerts[0]["decisions"][0]["scenario"] == "sipops/conn_flood from h1"
    # Deleted on the LAPI (cscli decisions delete): lifted here, journal included.
    own = next(i for i, d in lapi.decisions.items() if d["value"] == "203.0.113.5")
    lapi.delete(own)
    fl.sync_once()
    rig.nft.batches.clear()
    rig.tables.append(table({}))
    rig.watcher.poll()
    assert rig.journal.get("203.0.113.5") is not None and not rig.journal.live()
    assert any("delete element inet sipops ban4 { 203.0.113.5 }" in b for b in rig.nft.batches)
