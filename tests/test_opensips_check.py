"""The real OpenSIPS accepts what we render: `opensips -C` on every role combination, and the
gateway tables load into a running instance.

Needs an install at $SIPOPS_OPENSIPS_PREFIX (e.g. /opt/opensips-3.6); the cfg is rendered for it as
an `existing` install, so mpath points at its modules. Paths that must exist (db_text directory,
sqlite file) are created in a temp dir; sockets listen on loopback.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import opensips_builds
from tests.roles_cfg_helpers import COMBINATIONS, cfg_of, combo_name, render_all, write_combo_inventory

pytestmark = [pytest.mark.needs_opensips]


def _binary(prefix: Path) -> Path:
    return prefix / "sbin/opensips"


def _render(tmp_path: Path, prefix: Path, **per_role: Any) -> dict[str, Any]:
    (tmp_path / "dbtext").mkdir(exist_ok=True)
    common = {
        "opensips_version": opensips_builds.line(prefix),
        "opensips_install": "existing",
        "opensips_prefix": str(prefix),
        "sip_listen": "127.0.0.1",
        "db_url": f"sqlite://{tmp_path}/opensips.sqlite",
        "lb_dbtext_dir": str(tmp_path / "dbtext"),
    }
    (tmp_path / "opensips.sqlite").touch()
    return render_all(write_combo_inventory(tmp_path / "inventory.yaml", common, **per_role))


@pytest.mark.parametrize("roles", COMBINATIONS, ids=combo_name)
def test_opensips_accepts_the_cfg_of_every_role_combination(tmp_path, roles, opensips_prefix):
    rendered = _render(tmp_path, opensips_prefix, proxy={"advertised_address": "192.0.2.99"})[combo_name(roles)]
    cfg = tmp_path / "opensips.cfg"
    cfg.write_text(cfg_of(rendered))
    for f in rendered.files:  # the db_text tables, where the cfg says they are
        if "/dbtext/" in f.dest:
            Path(f.dest).write_bytes(f.content)
    argv = [str(_binary(opensips_prefix)), "-C", "-f", str(cfg)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "config file ok" in output, output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _mi(port: int, method: str) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/mi", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=2) as resp:
        return json.loads(resp.read())["result"]


@pytest.mark.parametrize("engine", ["dispatcher", "load_balancer"])
def test_the_rendered_gateway_tables_load_into_a_running_opensips(tmp_path, engine, opensips_prefix):
    mi_port, sip_port = _free_port(), _free_port()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else max(1024, min(65536, hard))
    rendered = _render(tmp_path, opensips_prefix, loadbalancer={"lb_engine": engine})["loa"]
    # Only what this sandbox needs: our own ports and FIFO, and no more files than we may open.
    text = cfg_of(rendered).replace('"port", 8888', f'"port", {mi_port}').replace(":5060", f":{sip_port}")
    text = text.replace("/run/opensips/opensips_fifo", str(tmp_path / "fifo"))
    text = re.sub(r"(?m)^open_files_limit = \d+", f"open_files_limit = {nofile}", text)
    cfg = tmp_path / "opensips.cfg"
    cfg.write_text(text)
    for f in rendered.files:
        if "/dbtext/" in f.dest:
            Path(f.dest).write_bytes(f.content)
    proc = subprocess.Popen(
        [str(_binary(opensips_prefix)), "-F", "-f", str(cfg), "-m", "64", "-M", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        listing: Any = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                listing = _mi(mi_port, "ds_list" if engine == "dispatcher" else "lb_list")
                break
            except OSError:
                time.sleep(0.2)
        assert listing is not None, f"OpenSIPS did not answer on MI (exit {proc.poll()})"
        text = json.dumps(listing)
        for address in ("192.0.2.21:5080", "192.0.2.22:5080", "192.0.2.40:5060"):
            assert f"sip:{address}" in text, text
        assert _mi(mi_port, "ds_reload" if engine == "dispatcher" else "lb_reload") == "OK"

        # A gateway's address changed, same number of rows: the role's handler makes it take effect.
        handler = rendered.handlers["reload gateways"].replace("127.0.0.1:8888", f"127.0.0.1:{mi_port}")
        table = next(f for f in rendered.files if f.dest.endswith(f"/dbtext/{engine}"))
        Path(table.dest).write_bytes(table.content.replace(b"192.0.2.22", b"192.0.2.23"))
        ran = subprocess.run(["sh", "-c", handler], capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        text = json.dumps(_mi(mi_port, "ds_list" if engine == "dispatcher" else "lb_list"))
        assert "sip:192.0.2.23:5080" in text and "192.0.2.22" not in text, text

        # A table OpenSIPS cannot load is a JSON-RPC error with HTTP 200: the handler fails.
        Path(table.dest).write_text("not a db_text table\n")
        ran = subprocess.run(["sh", "-c", handler], capture_output=True, text=True, timeout=30)
        assert ran.returncode != 0 and "MI " in ran.stderr and " failed: {" in ran.stderr, ran.stdout + ran.stderr
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
