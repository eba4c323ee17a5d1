"""What OpenSIPS runs against what the inventory says: diff notes and push's forced reload."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

from sipops.remote.facts import HostFacts, RemoteFile
from sipops.remote.plan import plan_host
from sipops.render import HostRender, RenderedFile

HEALTH = {
    "mi_url": "http://127.0.0.1:8888/mi",
    "gateway_engine": "dispatcher",
    "gateways": [["set 1", "sip:198.18.0.11:5060"], ["set 1", "sip:198.18.0.12:5060"]],
}
HANDLERS = {"reload gateways": "for m in dbt_reload ds_reload; do :; done"}


def _file(dest: str, content: bytes, notify: tuple[str, ...] = ()) -> RenderedFile:
    return RenderedFile(dest, content, "0640", "root", "root", None, notify, "x.j2")


def _rendered() -> HostRender:
    files = [
        _file("/etc/sipops/health.json", json.dumps(HEALTH).encode()),
        _file("/etc/opensips/dbtext/dispatcher", b"rows\n", ("reload gateways",)),
    ]
    return HostRender(SimpleNamespace(name="lb1"), files, HANDLERS)  # type: ignore[arg-type]


def _facts(running: list[str]) -> HostFacts:
    same = {
        f.dest: RemoteFile(hashlib.sha256(f.content).hexdigest(), "0640", "root", "root") for f in _rendered().files
    }
    listing = {"PARTITIONS": [{"name": "default", "SETS": [{"id": 1, "Destinations": [
        {"URI": u, "state": "Active"} for u in running]}]}]}  # fmt: skip
    return HostFacts(os={}, init="systemd", files=same, mi={"result": listing})  # type: ignore[arg-type]


def test_runtime_sets_equal_to_the_inventory_need_nothing() -> None:
    plan = plan_host(_rendered(), _facts(["sip:198.18.0.11:5060", "sip:198.18.0.12:5060"]))
    assert not plan.pending and plan.notes == [] and plan.handlers == []


def test_runtime_drift_with_right_files_forces_the_reload_and_says_why() -> None:
    plan = plan_host(_rendered(), _facts(["sip:198.18.0.11:5060", "sip:198.18.0.99:5060"]))
    assert plan.pending and plan.changes == []
    assert plan.forced == plan.handlers == ["reload gateways"]
    assert plan.notes == [
        "runtime ds_list differs from the inventory: -set 1 sip:198.18.0.12:5060",
        "runtime ds_list differs from the inventory: +set 1 sip:198.18.0.99:5060",
    ]


def test_an_mi_that_does_not_answer_is_a_note_not_a_reload() -> None:
    facts = _facts([])
    facts.mi = {"error": "http://127.0.0.1:8888/mi: connection refused"}
    plan = plan_host(_rendered(), facts)
    assert not plan.pending
    assert plan.notes == ["runtime gateways not compared: http://127.0.0.1:8888/mi: connection refused"]
