"""Media relay role (rtpengine) and the proxy's media_relay: what is rendered, that the real OpenSIPS
accepts the cfg, the relay's config lint, the ng client, sizing, and bad input (one line, exit 2)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sipops import mediarelay
from sipops.cli.main import app
from sipops.host.health import ng
from sipops.host.health.checks_relay import check_relays
from sipops.host.health.config import HealthConfig
from sipops.host.health.model import Status
from tests import opensips_builds

PROXY = "px1"
RELAY = "rly1"


def inventory(tmp_path: Path, proxy: dict[str, Any] | None = None, relay: dict[str, Any] | None = None,
              **common: Any) -> Path:  # fmt: skip
    data = {
        "defaults": {"vars": common},
        "hosts": {
            PROXY: {
                "address": "192.0.2.10",
                "roles": ["registrar", "proxy"],
                "vars": {"media_relay": "rtpengine", "media_relays": [RELAY, "192.0.2.30"], **(proxy or {})},
            },
            RELAY: {"address": "192.0.2.20", "roles": ["mediarelay"], "vars": relay or {}},
        },
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def render(path: Path) -> tuple[int, str, Path]:
    out = path.parent / "out"
    res = CliRunner().invoke(app, ["render", "all", "-i", str(path), "-o", str(out)])
    return res.exit_code, res.stdout + res.stderr, out


def rendered(tmp_path: Path, **kw: Any) -> Path:
    code, text, out = render(inventory(tmp_path, **kw))
    assert code == 0, text
    return out


def test_the_relay_config_names_its_interface_ng_socket_range_and_userspace_forwarding(tmp_path):
    out = rendered(
        tmp_path, relay={"relay_advertise": "203.0.113.20", "relay_port_min": 20000, "relay_port_max": 20999}
    )
    conf = (out / RELAY / "etc/rtpengine/rtpengine.conf").read_text()
    for line in ("table = -1", "interface = default/192.0.2.20!203.0.113.20", "listen-ng = 192.0.2.20:2223",
                 "port-min = 20000", "port-max = 20999", "listen-cli = 127.0.0.1:9900", "timeout = 60"):  # fmt: skip
        assert f"\n{line}\n" in conf, line
    assert "\nrecording-" not in conf  # recording off: no recording-dir, no method
    assert "MANAGE_IPTABLES=no" in (out / RELAY / "etc/default/rtpengine-daemon").read_text()
    drop_in = (out / RELAY / "etc/systemd/system/rtpengine-daemon.service.d/sipops.conf").read_text()
    assert "LimitNOFILE=65536" in drop_in


def test_the_firewall_opens_the_rtp_range_to_all_and_ng_only_to_the_proxies(tmp_path):
    out = rendered(tmp_path, relay={"relay_ng_allow": ["198.51.100.0/24"]})
    nft = (out / RELAY / "etc/sipops/firewall.nft").read_text()
    assert "add rule inet sipops input udp dport 30000-40000 accept" in nft
    assert "ip saddr { 192.0.2.10, 198.51.100.0/24 } udp dport 2223 accept" in nft
    assert nft.index("udp dport 2223 accept") < nft.index("add rule inet sipops input udp dport 2223 counter drop")
    assert "30000-40000" not in (out / PROXY / "etc/sipops/firewall.nft").read_text()


def test_the_proxy_relays_media_at_every_point_of_a_call(tmp_path):
    cfg = (rendered(tmp_path) / PROXY / "etc/opensips/opensips.cfg").read_text()
    assert 'loadmodule "rtpengine.so"' in cfg and 'modparam("rtpengine", "db_table", "rtpengine")' in cfg
    relay_route = cfg[cfg.index("route[relay] {") :]
    relay_route = relay_route[: relay_route.index("\n}\n")]
    assert 't_on_reply("media_reply")' in relay_route and "route(media_offer)" in relay_route
    offer = cfg[cfg.index("route[media_offer]") :]
    assert 'isflagset("NAT") || isbflagset("NAT")' in offer  # nat-only by default
    assert 'add_rr_param(";mr=1")' in offer and "rtpengine_offer(" in offer and "sl_send_reply(503" in offer
    in_dialog = cfg[cfg.index("route[media_in_dialog]") :]
    assert 'is_method("BYE")' in in_dialog and "rtpengine_delete()" in in_dialog
    assert 'is_method("ACK") && has_body("application/sdp")' in in_dialog
    reply = cfg[cfg.index("onreply_route[media_reply]") :]
    assert "rtpengine_answer(" in reply and "fix_nated_contact()" in reply
    failure = cfg[cfg.index("failure_route[relay_failed]") :]
    assert failure.index("rtpengine_delete()") < failure.index("t_was_cancelled()")


def test_policy_all_relays_every_call(tmp_path):
    cfg = (rendered(tmp_path, proxy={"media_relay_policy": "all"}) / PROXY / "etc/opensips/opensips.cfg").read_text()
    offer = cfg[cfg.index("route[media_offer]") :]
    assert 'isbflagset("NAT")' not in offer[: offer.index("add_rr_param")]


def test_the_relay_set_is_a_db_text_table_reloaded_without_a_restart(tmp_path):
    out = rendered(tmp_path)
    base = out / PROXY / "etc/opensips/dbtext"
    rows = (base / "rtpengine").read_text().splitlines()
    assert rows == [
        "id(int,auto) socket(string) set_id(int) ",
        r"1:udp\:192.0.2.20\:2223:0",
        r"2:udp\:192.0.2.30\:2223:0",
    ]
    assert "rtpengine:1" in (base / "version").read_text()
    res = CliRunner().invoke(app, ["render", PROXY, "-i", str(tmp_path / "inventory.yaml"), "--list"])
    line = next(
        t for t in res.stdout.splitlines() if t.rstrip().endswith("dbtext/rtpengine") or "dbtext/rtpengine " in t
    )
    assert "reload media relays" in line or "notify" not in line


def test_health_config_lists_the_relays_of_the_proxy_and_the_relay_itself(tmp_path):
    out = rendered(tmp_path)
    proxy = yaml.safe_load((out / PROXY / "etc/sipops/health.json").read_text())
    assert proxy["relays"] == [[RELAY, "192.0.2.20", 2223], ["192.0.2.30", "192.0.2.30", 2223]]
    relay = yaml.safe_load((out / RELAY / "etc/sipops/health.json").read_text())
    assert relay["relays"] == [[RELAY, "192.0.2.20", 2223]]


def test_a_proxy_without_media_relay_renders_no_rtpengine(tmp_path):
    code, text, out = render(inventory(tmp_path, proxy={"media_relay": "none", "media_relays": []}))
    assert code == 0, text
    assert "rtpengine" not in (out / PROXY / "etc/opensips/opensips.cfg").read_text()
    assert not (out / PROXY / "etc/opensips/dbtext/rtpengine").exists()


@pytest.mark.parametrize(
    ("proxy", "relay", "where", "message"),
    [
        (
            {"media_relays": ["nosuchhost"]},
            {},
            "media_relays[0]",
            "'nosuchhost' is neither a host of the inventory nor an IP address",
        ),
        ({"media_relays": [PROXY]}, {}, "media_relays[0]", "without the mediarelay role"),
        ({"media_relays": []}, {}, "media_relays", "name at least one relay"),
        ({}, {"relay_ng_port": 30010}, "relay_ng_port", "RTP port range 30000-40000 overlaps relay_ng_port 30010"),
        ({}, {"relay_port_min": 40000, "relay_port_max": 30000}, "relay_port_min", "is above relay_port_max"),
        ({}, {"relay_port_min": 5000, "relay_port_max": 6000}, "relay_port_min", "overlaps sip_port 5060"),
        (
            {},
            {"relay_port_min": 30000, "relay_port_max": 30399, "relay_calls": 200},
            "relay_calls",
            "holds 100 calls (4 ports each), relay_calls asks for 200: widen it to at least 800 ports",
        ),
        ({}, {"relay_port_min": 30001}, "relay_port_min", "is odd"),
    ],
)
def test_bad_relay_input_is_one_line_naming_the_field_and_exit_2(tmp_path, proxy, relay, where, message):
    code, text, out = render(inventory(tmp_path, proxy=proxy, relay=relay))
    assert code == 2, text
    assert len(text.strip().splitlines()) == 1, text
    assert "inventory.yaml:" in text and where in text and message in text, text
    assert not out.exists()


def test_sizing_four_ports_per_call_and_fds_to_match():
    assert mediarelay.ports_for_calls(1000) == 4000
    assert mediarelay.calls_for_range(30000, 40000) == 2500
    assert mediarelay.fds_for_calls(1000) == 1024 + 8000


# The validator of rtpengine.conf runs on the relay host against the installed rtpengine (e2e); here the
# installed binary is replaced by this double, which lists options the way rtpengine's --help-all does.
RTPENGINE_HELP_DOUBLE = """#!/bin/sh
cat <<'EOF'
Usage:
  rtpengine [OPTION?] - next-generation media proxy
Application Options:
  -t, --table=INT                   Kernel table to use
  -i, --interface=[NAME/]IP[!IP]    Local interface for RTP
  -n, --listen-ng=[IP46|HOSTNAME:]PORT  UDP port to listen on, NG protocol
  -c, --listen-cli=[IP46|HOSTNAME:]PORT UDP port to listen on, CLI
  -o, --timeout=SECS                RTP timeout
  -s, --silent-timeout=SECS         RTP timeout for muted
  -a, --final-timeout=SECS          Call timeout
  -d, --delete-delay=SECS           Delay for deleting a session
  -T, --tos=INT                     Default TOS value
  -m, --port-min=INT                Lowest port to use for RTP
  -M, --port-max=INT                Highest port to use for RTP
  --max-sessions=INT                Limit of maximum number of sessions
  -L, --log-level=INT               Mask log priorities above this level
  --log-facility=daemon|local0|...  Syslog facility
EOF
"""


@pytest.fixture()
def help_double(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "rtpengine").write_text(RTPENGINE_HELP_DOUBLE)
    (bindir / "rtpengine").chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def lint(conf: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rtpengine.conf"
    path.write_text(conf)
    argv = [sys.executable, "-c", mediarelay.LINT_PROGRAM, str(path)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)


def test_the_rendered_relay_config_passes_the_lint(tmp_path, help_double):
    conf = (rendered(tmp_path, relay={"relay_max_sessions": 900}) / RELAY / "etc/rtpengine/rtpengine.conf").read_text()
    res = lint(conf, help_double, tmp_path)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("timeout = 60", "timeuot = 60"), "timeuot: not an option of the installed rtpengine"),
        (("port-max = 40000", "port-max = 20000"), "not an ascending range"),
        (("interface = default/192.0.2.20", "interface = default/192.0.2.20!"), "expected [name/]IP[!advertised IP]"),
        (("[rtpengine]", "[rtpengin]"), "no [rtpengine] section"),
        (("listen-ng = 192.0.2.20:2223", "listen-ng = 192.0.2.20:ng"), "listen-ng"),
    ],
)
def test_the_lint_refuses_what_rtpengine_would_not_start_with(tmp_path, help_double, change, message):
    conf = (rendered(tmp_path) / RELAY / "etc/rtpengine/rtpengine.conf").read_text()
    assert change[0] in conf
    res = lint(conf.replace(change[0], change[1]), help_double, tmp_path)
    assert res.returncode != 0 and message in res.stderr, res.stderr


def test_opensips_accepts_the_proxy_cfg_with_media_relays(tmp_path, opensips_prefix):
    dbtext = tmp_path / "dbtext"
    (tmp_path / "opensips.sqlite").touch()
    for policy in ("nat-only", "all"):
        path = inventory(
            tmp_path,
            proxy={"media_relay_policy": policy, "sip_listen": "127.0.0.1"},
            opensips_version=opensips_builds.line(opensips_prefix),
            opensips_install="existing",
            opensips_prefix=str(opensips_prefix),
            db_url=f"sqlite://{tmp_path}/opensips.sqlite",
        )
        code, text, out = render(path)
        assert code == 0, text
        base = out / PROXY / str(opensips_prefix).lstrip("/") / "etc/opensips"
        dbtext.mkdir(exist_ok=True)
        for name in ("rtpengine", "version"):
            (dbtext / name).write_bytes((base / "dbtext" / name).read_bytes())
        cfg = (
            (base / "opensips.cfg")
            .read_text()
            .replace(f"text://{opensips_prefix}/etc/opensips/dbtext", f"text://{dbtext}")
        )
        (tmp_path / "opensips.cfg").write_text(cfg)
        argv = [str(opensips_prefix / "sbin/opensips"), "-C", "-f", str(tmp_path / "opensips.cfg")]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0 and "config file ok" in result.stdout + result.stderr, (
            result.stdout + result.stderr
        )


def test_bencode_round_trips_what_ng_speaks():
    msg = {"command": "offer", "call-id": "a@b", "flags": ["trust-address"], "n": 3}
    assert ng.decode(ng.encode(msg)) == msg
    assert ng.encode({"command": "ping"}) == b"d7:command4:pinge"
    with pytest.raises(ng.NgError):
        ng.decode(b"d7:command4:ping")


@pytest.fixture()
def ng_responder() -> Any:
    """A UDP socket on loopback answering ng pings and statistics as rtpengine 10.5 does (its layout)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            cookie, _, body = data.partition(b" ")
            cmd = ng.decode(body)["command"]
            reply: dict[str, Any] = {"result": "pong"} if cmd == "ping" else {
                "result": "ok",
                "statistics": {"currentstatistics": {"sessionsown": 7}, "totalstatistics": {"relayedpacketerrors": 0}},
            }  # fmt: skip
            sock.sendto(cookie + b" " + ng.encode(reply), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield sock.getsockname()[1]
    stop.set()
    t.join(2)
    sock.close()


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_the_relay_check_reports_up_sessions_down_and_all_down(ng_responder):
    up = ("up", "127.0.0.1", ng_responder)
    down = ("down", "127.0.0.1", _closed_udp_port())
    result = check_relays(HealthConfig(relays=(up,)), None, {})  # type: ignore[arg-type]
    assert result.status == Status.OK and "up up" in result.message and "7 sessions" in result.message
    assert {m.name for m in result.metrics} >= {"relay_up", "relay_sessions", "relay_rtt"}
    result = check_relays(HealthConfig(relays=(up, down)), None, {})  # type: ignore[arg-type]
    assert result.status == Status.WARNING and "1 of 2 media relays down" in result.message
    result = check_relays(HealthConfig(relays=(down,)), None, {})  # type: ignore[arg-type]
    assert result.status == Status.CRITICAL and "every media relay is down" in result.message
    assert "relays" not in HealthConfig().enabled() and "relays" in HealthConfig(relays=(up,)).enabled()


def _relay_only(tmp_path: Path, **relay: Any) -> Path:
    path = tmp_path / "relay.yaml"
    data = {"hosts": {RELAY: {"address": "192.0.2.20", "roles": ["mediarelay"], "vars": relay}}}
    path.write_text(yaml.safe_dump(data))
    return path


def test_tune_tcp_sizes_a_relay_for_its_calls_and_pushes_rtpengines_limit(monkeypatch, tmp_path):
    from tests.test_tune_cli import SYSCTL, FakeHost, _cli, _probe

    fake = FakeHost(_probe(SYSCTL), _probe(SYSCTL))
    args = (RELAY, "-i", str(_relay_only(tmp_path)), "--local", "--max-connections", "2000", "--calls", "2000")
    code, out = _cli(monkeypatch, fake, *args, "--check")
    assert code == 0, out
    assert (
        "media relay: 2000 calls need 8000 RTP ports; range 30000-40000 has 10001 (fits); rtpengine LimitNOFILE 65536"
        in out
    )
    assert "/etc/systemd/system/rtpengine-daemon.service.d/sipops.conf" in out


def test_tune_tcp_refuses_more_calls_than_the_relay_range_holds(tmp_path):
    inv = _relay_only(tmp_path, relay_port_max=30999)
    res = CliRunner().invoke(app, ["tune-tcp", RELAY, "-i", str(inv), "--local", "--calls", "300"])
    assert res.exit_code == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "relay.yaml:" in err and "relay_port_max" in err, err
    assert "--calls 300 needs 1200 RTP ports (4 per call); host rly1's range 30000-30999 holds 250 calls" in err


def test_the_relay_figures_show_in_every_health_format(ng_responder):
    from sipops.host.health.formats import render
    from sipops.host.health.model import Report

    up = ("rly1", "127.0.0.1", ng_responder)
    down = ("rly2", "127.0.0.1", _closed_udp_port())
    report = Report("px1", [check_relays(HealthConfig(relays=(up, down)), None, {})])  # type: ignore[arg-type]
    text, nagios = render("text", [report]), render("nagios", [report])
    assert "relays" in text and "1 of 2 media relays down" in text
    assert nagios.startswith("SIPOPS WARNING - relays: 1 of 2") and "relay_up" in nagios and "relay_sessions" in nagios
    prom = render("prometheus", [report])
    assert "relay_sessions" in prom and "relay_rtt" in prom
    doc = render("json", [report])
    assert '"relay_up"' in doc and '"rly2"' in doc
