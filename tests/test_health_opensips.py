"""`needs_opensips`: every check against a real OpenSIPS with mi_http on loopback is OK, with MI values.

The cfg is rendered by sipops from a test inventory (opensips_install: existing at
$SIPOPS_OPENSIPS_PREFIX, sockets on 127.0.0.1 high ports); OpenSIPS runs in the foreground and is
stopped by its pid.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from sipops.health.remote import host_config
from sipops.host.health.main import run_local
from sipops.host.health.mi import MIError, mi_call
from sipops.host.health.model import Status
from sipops.inventory import load_inventory
from sipops.render import render_host
from tests import opensips_builds

pytestmark = [pytest.mark.needs_opensips]
prometheus_parser = pytest.importorskip("prometheus_client.parser")


def _free_port() -> int:
    # A port free for both TCP and UDP on loopback.
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


def test_every_check_is_ok_against_a_real_opensips_with_values_from_mi(tmp_path: Path, opensips_prefix: Path) -> None:
    sip_port, mi_port = _free_port(), _free_port()
    log = tmp_path / "opensips.log"
    log.write_text("")
    inventory = tmp_path / "inventory.yaml"
    host_vars = {
        "opensips_version": opensips_builds.line(opensips_prefix),
        "opensips_install": "existing",
        "opensips_prefix": str(opensips_prefix),
        "sip_listen": "127.0.0.1",
        "sip_port": sip_port,
        "mi_http_port": mi_port,
        "log_file": str(log),
        "health_watcher": False,
        "health_state_dir": str(tmp_path / "state"),
        "db_url": f"sqlite://{tmp_path}/opensips.sqlite",
    }
    inventory.write_text(yaml.safe_dump({"hosts": {"sip1": {"address": "127.0.0.1", "roles": ["registrar", "proxy"],
                                                            "vars": host_vars}}}))  # fmt: skip
    inv = load_inventory(inventory)
    rendered = render_host(inv, inv.hosts["sip1"])
    text = next(f.content.decode() for f in rendered.files if f.dest.endswith("/opensips.cfg"))
    # Only what this sandbox needs: our own FIFO and no more files than we may open.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else max(1024, min(65536, hard))
    text = text.replace("/run/opensips/opensips_fifo", str(tmp_path / "fifo"))
    text = re.sub(r"(?m)^open_files_limit = \d+", f"open_files_limit = {nofile}", text)
    cfg_file = tmp_path / "opensips.cfg"
    cfg_file.write_text(text)
    config = host_config(inv, inv.hosts["sip1"])
    pid_file = tmp_path / "opensips.pid"
    config = replace(config, pid_file=str(pid_file), open_files_limit=nofile)

    proc = subprocess.Popen(
        [f"{opensips_prefix}/sbin/opensips", "-F", "-f", str(cfg_file), "-m", "64", "-M", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pid_file.write_text(str(proc.pid))
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                mi_call(config.mi_url, "version", timeout=1)
                break
            except MIError:
                time.sleep(0.2)
        assert proc.poll() is None, f"OpenSIPS exited with {proc.returncode}"
        report, out = run_local(config, fmt="json", textfile=tmp_path / "prom", state_name="test")
        by_name = {c.name: c for c in report.checks}
        assert {n: c.status for n, c in by_name.items()} == {n: Status.OK for n in by_name}, out
        assert set(by_name) >= {"process", "sockets", "sip_options", "mi", "shmem", "load", "tcp_conns", "fds"}
        assert f"pid {proc.pid}" in by_name["process"].message

        # Shared memory and statistics come from MI: the same numbers as a direct get_statistics.
        stats = mi_call(config.mi_url, "get_statistics", {"statistics": ["shmem:", "usrloc:"]})
        shm = {m.name: m.value for m in by_name["shmem"].metrics}
        assert shm["shmem_total_bytes"] == stats["shmem:total_size"] == 64 * 2**20
        assert 0 < shm["shmem_used_bytes"] < shm["shmem_total_bytes"]
        assert {m.name: m.value for m in by_name["mi"].metrics}["registrations"] == stats["usrloc:registered_users"]
        rtts = [m for m in by_name["sip_options"].metrics if m.name == "sip_options_rtt"]
        assert {m.labels["socket"] for m in rtts} == {f"udp:127.0.0.1:{sip_port}", f"tcp:127.0.0.1:{sip_port}"}

        prom = (tmp_path / "prom" / "sipops.prom").read_text()
        families = {f.name: f for f in prometheus_parser.text_string_to_metric_families(prom)}
        assert families["sipops_shmem_total_bytes"].samples[0].value == 64 * 2**20
        assert json.loads(out)["status"] == "OK"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
