"""Ban backends and the watcher against the real kernel, inside throwaway network namespaces (root only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sipops.host.monitor import allow
from sipops.host.monitor.ban import Ban, IpsetBackend, LibNftExecutor, NftBackend, NftCliExecutor, _system_nftables
from sipops.host.monitor.journal import Journal
from sipops.host.monitor.scan import close_connections
from sipops.host.monitor.watch import WatchConfig, Watcher
from sipops.inventory import load_inventory
from sipops.monitor.watchdefaults import role_thresholds
from sipops.render import render_host
from tests.netns_helpers import entered, netns_pair, sh, skip_reason

REASON = skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
ROOT = Path(__file__).resolve().parents[1]


def elements(ns: str, set_name: str) -> dict[str, dict[str, object]]:
    data = json.loads(sh("nft", "-j", "list", "set", "inet", "sipops", set_name, ns=ns))
    out: dict[str, dict[str, object]] = {}
    for item in data["nftables"]:
        for e in item.get("set", {}).get("elem", []):
            elem = e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e}
            val = elem["val"]
            key = f"{val['prefix']['addr']}/{val['prefix']['len']}" if isinstance(val, dict) else str(val)
            out[key] = elem
    return out


@pytest.fixture(params=["nft", "libnftables"])
def kernel(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, NftBackend]]:
    """(victim ns, attacker ns, backend working in the victim's namespace) with each executor."""
    with netns_pair(request.param[:2]) as (victim, attacker):
        if request.param == "nft":
            yield victim, attacker, NftBackend(NftCliExecutor(prefix=["ip", "netns", "exec", victim]), own_chain=True)
        else:
            module = _system_nftables()
            if module is None:
                pytest.skip("python3-nftables (libnftables) is not installed")
            with entered(victim):
                executor = LibNftExecutor(module)  # its netlink socket belongs to the victim's namespace
            yield victim, attacker, NftBackend(executor, own_chain=True)


def connect(ns: str, address: str, count: int, hold: float = 30) -> subprocess.Popen[str]:
    """`count` TCP connections from namespace `ns` to address:5060, held open (bounded in time)."""
    code = (
        "import socket, sys, time\n"
        f"fam = socket.AF_INET6 if ':' in {address!r} else socket.AF_INET\n"
        "ss = []\n"
        f"for _ in range({count}):\n"
        "    s = socket.socket(fam); s.settimeout(2)\n"
        f"    s.connect(({address!r}, 5060)); ss.append(s)\n"
        "print(len(ss), flush=True)\n"
        f"time.sleep({hold})\n"
    )
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def reachable(ns: str, address: str) -> bool:
    code = f"import socket\ns = socket.create_connection(({address!r}, 5060), timeout=1)\ns.close()"
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True).returncode == 0


@contextmanager
def serving(ns: str) -> Iterator[None]:
    """A listener on 0.0.0.0:5060 and [::]:5060 in namespace `ns` that accepts and holds (at most 60 s)."""
    code = (
        "import socket, select, time\n"
        "ls = []\n"
        "for fam, addr in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):\n"
        "    s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "    if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
        "    s.bind((addr, 5060)); s.listen(1024); s.setblocking(False); ls.append(s)\n"
        "held = []\n"
        "end = time.time() + 60\n"
        "while time.time() < end:\n"
        "    r, _, _ = select.select(ls, [], [], 0.2)\n"
        "    for s in r:\n"
        "        try: held.append(s.accept()[0])\n"
        "        except OSError: pass\n"
    )
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code])
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def listener(kernel: tuple[str, str, NftBackend]) -> Iterator[None]:
    with serving(kernel[0]):
        yield


def test_the_backend_adds_its_sets_on_top_of_the_rendered_firewall_and_keeps_live_bans_across_a_reload(
    tmp_path: Path,
) -> None:
    inv = load_inventory(ROOT / "inventory.example.yaml")
    res = render_host(inv, inv.hosts["edge1"])
    nft_file = next(f for f in res.files if f.dest == "/etc/sipops/firewall.nft")
    path = tmp_path / "firewall.nft"
    path.write_bytes(nft_file.content)
    with netns_pair("fw") as (victim, _):
        sh("nft", "-f", str(path), ns=victim)
        backend = NftBackend(NftCliExecutor(prefix=["ip", "netns", "exec", victim]))
        backend.start()
        backend.ban([Ban("203.0.113.5", 600, "conn_flood"), Ban("203.0.113.0/28", 600, "manual")])
        sh("nft", "-f", str(path), ns=victim)  # a firewall reload keeps the watcher's elements
        backend.start()
        assert "203.0.113.5" in elements(victim, "ban4")
        assert "203.0.113.0/28" in elements(victim, "banned_cidr4")
        assert "chain watch" not in sh("nft", "list", "table", "inet", "sipops", ns=victim)


def test_each_phase_changes_the_kernel_sets_as_recorded(kernel: tuple[str, str, NftBackend]) -> None:
    victim, _, backend = kernel
    backend.start()
    backend.ban([Ban("192.0.2.10", 600, "conn_flood"), Ban("2001:db8::5", 600, "sip_scanner"),
                 Ban("198.51.100.0/24", 600, "manual"), Ban("2001:db8:bad::/48", 600, "manual")])  # fmt: skip
    backend.restore([Ban("192.0.2.11", 3600, "conn_flood", remaining=100)])
    ban4 = elements(victim, "ban4")
    assert ban4["192.0.2.10"]["comment"] == "conn_flood"
    assert ban4["192.0.2.11"]["timeout"] == 3600 and int(ban4["192.0.2.11"]["expires"]) <= 100  # type: ignore[call-overload]
    assert "2001:db8::5" in elements(victim, "ban6")
    assert "2001:db8:bad::/48" in elements(victim, "banned_cidr6")
    backend.refresh([Ban("192.0.2.10", 7200, "conn_flood"), Ban("198.51.100.0/24", 60, "manual")])
    assert elements(victim, "ban4")["192.0.2.10"]["timeout"] == 7200
    assert elements(victim, "banned_cidr4")["198.51.100.0/24"]["timeout"] == 60
    backend.unban(["192.0.2.11", "192.0.2.250", "2001:db8:bad::/48"])  # .250 was never banned
    assert "192.0.2.11" not in elements(victim, "ban4")
    assert elements(victim, "banned_cidr6") == {}
    assert backend.intact()
    backend.stop(flush=True)
    assert not backend.intact()


def test_a_banned_source_is_dropped_its_connections_closed_and_the_ban_expires(
    kernel: tuple[str, str, NftBackend], listener: None
) -> None:
    victim, attacker, backend = kernel
    backend.start()
    held = connect(attacker, "10.77.0.1", 5)
    assert held.stdout is not None and held.stdout.readline().strip() == "5"
    try:
        backend.ban([Ban("10.77.0.2", 6, "conn_flood"), Ban("fd77::2", 6, "conn_flood")])
        with entered(victim):
            assert close_connections(["10.77.0.2"], [5060]) >= 5
        assert not reachable(attacker, "10.77.0.1")
        assert not reachable(attacker, "fd77::1")
        time.sleep(6)
        assert reachable(attacker, "10.77.0.1")
    finally:
        held.kill()
        held.wait()


def test_the_watcher_bans_a_flooder_and_spares_allowlisted_and_polite_clients(
    kernel: tuple[str, str, NftBackend], listener: None, tmp_path: Path
) -> None:
    victim, attacker, backend = kernel
    sh("ip", "addr", "add", "10.77.0.3/24", "dev", "v1", ns=attacker)  # a polite client
    sh("ip", "addr", "add", "10.77.0.4/24", "dev", "v1", ns=attacker)  # an allowlisted peer
    events: list[str] = []
    cfg = WatchConfig(ports=[5060], thresholds=role_thresholds(max_conns_per_ip=10, ban_seconds=60), ban=True)
    allowlist = allow.build([("10.77.0.4", "gateway")], host_addresses=[], env={})
    watcher = Watcher(cfg, Journal(tmp_path / "bans.sqlite"), backend, allowlist, events=events.append)
    code = (
        "import socket, sys, time\nss = []\n"
        "for src, n in (('10.77.0.2', 30), ('10.77.0.3', 2), ('10.77.0.4', 30)):\n"
        "    for _ in range(n):\n"
        "        s = socket.socket(); s.bind((src, 0)); s.settimeout(2); s.connect(('10.77.0.1', 5060)); ss.append(s)\n"
        "print(len(ss), flush=True); time.sleep(30)\n"
    )
    flood = subprocess.Popen(["ip", "netns", "exec", attacker, sys.executable, "-c", code], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "62"
        with entered(victim):
            watcher.start()
            started = time.monotonic()
            result = watcher.poll()
            took = time.monotonic() - started
        assert [r.address for r in result.banned] == ["10.77.0.2"]
        assert took < 2.0
        assert result.closed >= 30
        assert "10.77.0.2" in elements(victim, "ban4")
        assert [a.address for a in result.alerts if a.address] == ["10.77.0.4"]
        assert len(events) == 1 and events[0].startswith("action=ban addr=10.77.0.2 rule=conn_flood")
        sources = {"10.77.0.2": False, "10.77.0.3": True, "10.77.0.4": True}
        for src, ok in sources.items():
            probe = f"import socket\ns=socket.socket(); s.bind(({src!r},0)); s.settimeout(1)\n"
            probe += "s.connect(('10.77.0.1',5060))"
            rc = subprocess.run(["ip", "netns", "exec", attacker, sys.executable, "-c", probe], capture_output=True)
            assert (rc.returncode == 0) is ok, src
    finally:
        flood.kill()
        flood.wait()


@pytest.mark.skipif(shutil.which("ipset") is None or shutil.which("iptables") is None, reason="needs ipset, iptables")
def test_the_ipset_backend_drops_a_banned_source_with_one_rule() -> None:
    with netns_pair("ip") as (victim, attacker), serving(victim):
        backend = IpsetBackend(prefix=["ip", "netns", "exec", victim])
        backend.start()
        backend.start()  # idempotent: still one rule
        assert sh("iptables", "-S", "INPUT", ns=victim).count("sipops-block4") == 1
        backend.ban([Ban("10.77.0.2", 600, "conn_flood")])
        assert not reachable(attacker, "10.77.0.1")
        backend.unban(["10.77.0.2"])
        assert reachable(attacker, "10.77.0.1")
        assert backend.intact()


SYN_FLOOD = (
    "import socket, time\n"
    "end = time.monotonic() + 5\n"  # at most 400 SYNs in at most 5 s, well over the meter's 100/s
    "for _ in range(400):\n"
    "    if time.monotonic() > end: break\n"
    "    s = socket.socket(); s.setblocking(False)\n"
    "    try: s.connect(('10.77.0.1', 5060))\n"
    "    except OSError: pass\n"
    "    s.close()\n"
)


def test_a_syn_meter_ban_is_listed_journaled_by_the_watcher_and_unbanned_truthfully(tmp_path: Path) -> None:
    """The rendered firewall's meter bans a SYN flooder from the packet path; `sipops bans` shows it as
    syn_meter with its time left, the watcher journals it, `unban` says it took it out of the kernel."""
    inv = load_inventory(ROOT / "inventory.example.yaml")
    res = render_host(inv, inv.hosts["edge1"])
    nft_file = next(f for f in res.files if f.dest == "/etc/sipops/firewall.nft")
    path = tmp_path / "firewall.nft"
    path.write_bytes(nft_file.content)
    journal = tmp_path / "bans.sqlite"
    cli = ["ip", "netns", "exec"]
    sipops = str(Path(sys.executable).with_name("sipops"))  # the CLI of this venv
    with netns_pair("mt") as (victim, attacker), serving(victim):
        sh("nft", "-f", str(path), ns=victim)
        sh(sys.executable, "-c", SYN_FLOOD, ns=attacker)
        assert "10.77.0.2" in elements(victim, "ban4")  # the meter's doing, no comment
        listed = json.loads(sh(sipops, "bans", "--json", "--journal", str(journal), ns=victim))
        assert [(b["address"], b["rule"], b["origin"], b["in_kernel"]) for b in listed] == [
            ("10.77.0.2", "syn_meter", "kernel meter", True)
        ]
        assert 500 < listed[0]["remaining"] <= 600  # ban_timeout 10m of the example inventory
        text = sh(sipops, "bans", "--journal", str(journal), ns=victim)
        assert "10.77.0.2" in text and "syn_meter" in text and "kernel meter" in text
        # The watcher finds it on its first poll and journals it with the time it has left.
        backend = NftBackend(NftCliExecutor(prefix=[*cli, victim]))
        cfg = WatchConfig(ports=[5060], thresholds=role_thresholds(), ban=True)
        watcher = Watcher(cfg, Journal(journal), backend, allow.build([], host_addresses=[], env={}), events=[].append)
        with entered(victim):
            watcher.start()
            result = watcher.poll()
        assert [(r.address, r.rule) for r in result.banned] == [("10.77.0.2", "syn_meter")]
        rec = Journal(journal).get("10.77.0.2")
        assert rec is not None and rec.rule == "syn_meter" and 500 < rec.until - time.time() <= 600
        out = sh(sipops, "unban", "10.77.0.2", "--journal", str(journal), ns=victim)
        assert out.startswith("unbanned 10.77.0.2: removed from the kernel (nftables set ban4, rule syn_meter")
        assert "and the journal" in out
        assert "10.77.0.2" not in elements(victim, "ban4")
        again = sh(sipops, "unban", "10.77.0.2", "--journal", str(journal), ns=victim)
        assert again.strip() == "10.77.0.2 was not banned (neither in the kernel nor in the journal): nothing removed"


def test_a_meter_ban_the_watcher_journaled_comes_back_after_the_table_is_lost_with_its_time_left(
    tmp_path: Path,
) -> None:
    """A reboot in a namespace: the table goes, the firewall is loaded again, a new watcher restores."""
    inv = load_inventory(ROOT / "inventory.example.yaml")
    res = render_host(inv, inv.hosts["edge1"])
    path = tmp_path / "firewall.nft"
    path.write_bytes(next(f for f in res.files if f.dest == "/etc/sipops/firewall.nft").content)
    nobody = allow.build([], host_addresses=[], env={})
    with netns_pair("rb") as (victim, attacker), serving(victim):
        sh("nft", "-f", str(path), ns=victim)
        sh(sys.executable, "-c", SYN_FLOOD, ns=attacker)
        backend = NftBackend(NftCliExecutor(prefix=["ip", "netns", "exec", victim]))
        with entered(victim):
            cfg = WatchConfig(ports=[5060], thresholds=role_thresholds(), ban=True)
            watcher = Watcher(cfg, Journal(tmp_path / "j"), backend, nobody, events=[].append)
            watcher.start()
            assert [r.rule for r in watcher.poll().banned] == ["syn_meter"]
        before = elements(victim, "ban4")["10.77.0.2"]
        assert "comment" not in before  # the meter's own element
        time.sleep(2)
        sh("nft", "delete", "table", "inet", "sipops", ns=victim)  # the reboot
        sh("nft", "-f", str(path), ns=victim)
        with entered(victim):  # what sipops-watch does at boot
            Watcher(cfg, Journal(tmp_path / "j"), backend, nobody, events=[].append).start()
        after = elements(victim, "ban4")["10.77.0.2"]
        assert after["comment"] == "syn_meter" and after["timeout"] == 600
        assert int(str(after["expires"])) <= int(str(before["expires"])) - 1  # the time it had left, not afresh
        assert not reachable(attacker, "10.77.0.1")
