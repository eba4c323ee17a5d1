"""The drain's MI steps (sipops/host/drain.py) against a real OpenSIPS load balancer on loopback, through
the same boot path a host runs them by: set a destination inactive and read it back, refuse to drain the
last active one of a set, put it back, count calls in setup."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipops.host.drain import listing
from sipops.host.health.mi import MIError, mi_call
from sipops.inventory import load_inventory
from sipops.remote.apply import HostResult
from sipops.remote.drain import ENTRY, Drainer, DrainOptions, entries_for
from sipops.remote.plan import HostPlan
from sipops.remote.runner import LocalRunner, RemoteError, call
from sipops.render import render_host
from tests import opensips_builds

pytestmark = pytest.mark.needs_opensips
GW1, GW2 = "sip:127.0.0.1:25091", "sip:127.0.0.1:25092"  # nothing listens there: the table is what counts


def _free_port() -> int:
    for _ in range(50):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@pytest.fixture(params=["dispatcher", "load_balancer"])
def balancer(request: pytest.FixtureRequest, tmp_path: Path, opensips_prefix: Path) -> Iterator[tuple[str, str]]:
    """An OpenSIPS rendered from an inventory's loadbalancer host, running on loopback: (engine, MI URL)."""
    engine = str(request.param)
    sip_port, mi_port = _free_port(), _free_port()
    dbtext = tmp_path / "dbtext"
    gws = [{"name": f"gw{n}", "address": "127.0.0.1", "port": 25090 + n, "probe": False} for n in (1, 2)]
    host_vars = {
        "opensips_version": opensips_builds.line(opensips_prefix),
        "opensips_install": "existing",
        "opensips_prefix": str(opensips_prefix),
        "sip_listen": "127.0.0.1",
        "sip_port": sip_port,
        "mi_http_port": mi_port,
        "lb_engine": engine,
        "lb_dbtext_dir": str(dbtext),
        "gateways": gws,
    }
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"hosts": {"lb": {"address": "127.0.0.1", "roles": ["loadbalancer"],
                                                          "vars": host_vars}}}))  # fmt: skip
    inv = load_inventory(inventory)
    rendered = render_host(inv, inv.hosts["lb"])
    dbtext.mkdir()
    for f in rendered.files:
        if f.dest.startswith(str(dbtext)):
            Path(f.dest).write_bytes(f.content)
    text = next(f.content.decode() for f in rendered.files if f.dest.endswith("/opensips.cfg"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else max(1024, min(65536, hard))
    text = text.replace("/run/opensips/opensips_fifo", str(tmp_path / "fifo"))
    text = re.sub(r"(?m)^open_files_limit = \d+", f"open_files_limit = {nofile}", text)
    (tmp_path / "opensips.cfg").write_text(text)
    argv = [f"{opensips_prefix}/sbin/opensips", "-F", "-f", str(tmp_path / "opensips.cfg"), "-m", "64", "-M", "8"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{mi_port}/mi"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                mi_call(url, "version", timeout=1)
                break
            except MIError:
                time.sleep(0.2)
        assert proc.poll() is None, f"OpenSIPS exited with {proc.returncode}"
        yield engine, url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _lb_state(engine: str, url: str, want: str, *uris: str) -> list[dict[str, Any]]:
    req = {"op": "lb_state", "url": url, "engine": engine, "items": [{"set": 1, "uri": u, "want": want} for u in uris]}
    out = call(LocalRunner(), req, timeout=30, entry=ENTRY)
    assert out["ok"], out
    return list(out["items"])


def test_a_destination_goes_inactive_and_back_and_the_last_active_one_is_never_drained(
    balancer: tuple[str, str],
) -> None:
    engine, url = balancer
    [row] = _lb_state(engine, url, "inactive", GW1)
    assert (row["before"], row["after"], row.get("skipped")) == ("active", "inactive", None), row
    # gw2 is now the only destination of set 1 that carries calls: draining it too would leave none.
    [row] = _lb_state(engine, url, "inactive", GW2)
    assert (row["skipped"], row["after"]) == ("the only active destination of set 1", "active"), row
    # Already inactive (drained, or disabled by an operator): not touched again.
    [row] = _lb_state(engine, url, "inactive", GW1)
    assert row["skipped"] == "already inactive", row
    [row] = _lb_state(engine, url, "active", GW1)
    assert (row["before"], row["after"]) == ("inactive", "active"), row
    [row] = _lb_state(engine, url, "inactive", "sip:127.0.0.1:25099")
    assert row["skipped"] == "not in the running sets", row


def test_an_idle_node_is_idle_at_once_with_its_counters(balancer: tuple[str, str]) -> None:
    engine, url = balancer
    out = call(LocalRunner(), {"op": "wait_idle", "url": url, "timeout": 5}, timeout=30, entry=ENTRY)
    assert out["ok"] and out["idle"] and out["counts"]["tm:inuse_transactions"] == 0, out
    if engine == "load_balancer":  # it needs the dialog module, whose counters are read too
        assert out["counts"]["dialog:early_dialogs"] == 0 and "dialog:active_dialogs" in out["counts"], out


def test_the_uris_the_drain_names_are_the_ones_the_balancer_runs(balancer: tuple[str, str], tmp_path: Path) -> None:
    engine, url = balancer
    data = yaml.safe_load((tmp_path / "inventory.yaml").read_text())
    edge = {"address": "127.0.0.1", "ssh": {"port": 2222}, "roles": ["registrar", "proxy"], "vars": {"sip_port": 25091}}
    data["hosts"]["gw1"] = edge
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(data))
    inv = load_inventory(tmp_path / "inventory.yaml")
    [e] = entries_for(inv, inv.hosts["gw1"])
    assert (e.engine, e.url, e.uri) == (engine, url, GW1)
    [row] = _lb_state(engine, url, "inactive", e.uri)
    assert row["after"] == "inactive", row


@pytest.mark.parametrize("outcome", ["changed", "rolled back", "raises"])
def test_the_node_is_drained_during_the_push_and_put_back_active_whatever_its_outcome(
    balancer: tuple[str, str], tmp_path: Path, outcome: str
) -> None:
    engine, url = balancer
    data = yaml.safe_load((tmp_path / "inventory.yaml").read_text())
    # The edge's own MI is the same OpenSIPS (idle): the wait finds no call in setup at once.
    mi_port = int(url.rsplit(":", 1)[1].split("/")[0])
    common = ("opensips_version", "opensips_install", "opensips_prefix", "sip_listen")
    edge_vars = {k: data["hosts"]["lb"]["vars"][k] for k in common} | {"sip_port": 25091, "mi_http_port": mi_port}
    data["hosts"]["gw1"] = {"address": "127.0.0.1", "ssh": {"port": 2222}, "roles": ["registrar", "proxy"],
                            "vars": edge_vars}  # fmt: skip
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(data))
    inv = load_inventory(tmp_path / "inventory.yaml")
    rendered = render_host(inv, inv.hosts["gw1"])
    plan = HostPlan("gw1", [], ["restart opensips"], {"restart opensips": "systemctl restart opensips"})
    seen: list[str] = []

    def apply() -> HostResult:  # stands in for the agent run: what the balancer says meanwhile
        seen.append(listing(url, engine)[(1, GW1)]["state"])
        if outcome == "raises":
            raise RemoteError("connection lost: reset by peer")
        return HostResult(
            "gw1", outcome, reason="gate failed; previous config restored" if outcome != "changed" else ""
        )

    lines: list[str] = []
    drainer = Drainer(inv, lambda host: LocalRunner, DrainOptions(timeout=5))
    result = drainer.around(rendered, plan, LocalRunner(), apply, lines.append)
    assert seen == ["inactive"], lines
    assert listing(url, engine)[(1, GW1)]["state"] == "active"
    assert result.status == ("failed" if outcome == "raises" else outcome), result
    assert "drained on lb set 1 (waited 0.0s), put back active" in result.reason, result.reason
    assert (
        "gw1: put back active on lb" in lines and "gw1: drained on lb set 1 sip:127.0.0.1:25091 (was active)" in lines
    )
    if outcome == "raises":
        assert result.reason.startswith("connection lost: reset by peer; drained"), result.reason
