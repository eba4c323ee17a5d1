"""Config changes without losing calls (issue 19), proven under call load against a real OpenSIPS.

Its own lab (prefix sipj, 198.18.48.0/20; tests/e2e/drainlab.py): h1 and h2 registrar/proxy edge nodes,
h3 the load balancer with h1 and h2 as its gateways, the callee in attacker a1 registered on both edges.
`sipops calltest h3` load (20 calls/s, 1 s talk time) goes caller -> h3 -> h1|h2 -> callee while h1 is
pushed to:
- a route-only change: reloaded, same pid, not drained: 0 failed calls;
- with the drain: h1 set inactive on h3, its calls in setup waited for, restarted (new pid), put back
  active: 0 failed calls;
- with --no-drain: the same kind of change; the calls it costs are counted and reported as the baseline
  (h3 reaches the edges over TCP here; bench/drain.py measures UDP too);
- a push that fails at start: rolled back, h1 put back active, 0 failed calls;
- a drain that times out (--drain-timeout 0.3 under load) puts h1 back and does not restart it;
- a balancer whose OpenSIPS does not answer MI: h1 is neither drained nor restarted, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import lab_skip_reason
from .drainlab import DrainLab, figures, sipops, start, stop, under_load

pytestmark = [pytest.mark.e2e, pytest.mark.needs_opensips]
NETWORK = IPv4Network("198.18.48.0/20")  # no other test lab's range
REPORT: list[str] = []  # the figures of this module, printed at its end (the baseline)


@pytest.fixture(scope="module")
def dlab(tmp_path_factory: pytest.TempPathFactory, opensips_prefix: Path) -> Iterator[DrainLab]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("drainlab")
    dl = start(directory, prefix="sipj", network=NETWORK, opensips_prefix=opensips_prefix, transport="tcp")
    try:
        yield dl
    finally:
        stop(dl)
        print("\n".join(["", "issue 19 figures:", *REPORT]))
        REPORT.clear()


def _push_under_load(
    dl: DrainLab, *args: str, seconds: float = 18, hosts: tuple[str, ...] = ("h1",)
) -> tuple[int, str, dict[str, Any], float]:
    return under_load(dl, lambda: sipops("push", *hosts, "-i", dl.inventory, *args), seconds)


def _figures(label: str, doc: dict[str, Any], took: float) -> str:
    line = figures(label, doc, took)
    REPORT.append(line)
    return line


def test_a_route_only_push_under_load_reloads_without_restart_or_drain_and_loses_no_call(dlab: DrainLab) -> None:
    before = dlab.pid("h1")
    agents = ["friendly-scanner", "sipcli", "sipvicious", "drain-test-scanner"]
    dlab.set_vars(("h1",), proxy_scanner_agents=agents)
    code, out, doc, took = _push_under_load(dlab)
    line = _figures("route-only push (reload routes)", doc, took)
    assert code == 0 and "ran reload routes" in out and "drained" not in out, out
    assert dlab.pid("h1") == before, "h1 was restarted for a route-only change"
    assert doc["attempts"] > 0 and doc["failed"] == 0 and doc["answered"] == doc["attempts"], line


def test_a_modparam_push_behind_the_balancer_drains_restarts_and_loses_no_call(dlab: DrainLab) -> None:
    before = dlab.pid("h1")
    dlab.set_vars(("h1",), sip_fr_inv_timeout=61)
    code, out, doc, took = _push_under_load(dlab)
    line = _figures("modparam push with drain", doc, took)
    assert code == 0, out
    assert "h1: drained on h3 set 1 sip:" in out and "h1: put back active on h3" in out, out
    assert "h1: no call in setup after " in out, out
    REPORT.extend(f"  | {x}" for x in out.splitlines() if "drain" in x or "no call in setup" in x or "put back" in x)
    row = next(r for r in out.splitlines() if r.startswith("h1 "))  # the summary table's
    assert "changed" in row and "drained on h3 set 1" in row and "put back active" in row, out
    assert dlab.pid("h1") != before, "h1 was not restarted"
    assert set(dlab.states().values()) == {"Active"}
    assert doc["attempts"] > 0 and doc["failed"] == 0 and doc["answered"] == doc["attempts"], line


def _pushes(dl: DrainLab, values: list[int], *args: str) -> tuple[int, str]:
    """One modparam push per value, 5 s apart: several restarts under one load."""
    codes, outs = [], []
    for n, value in enumerate(values):
        if n:
            time.sleep(5)
        dl.set_vars(("h1",), sip_fr_inv_timeout=value)
        code, out = sipops("push", "h1", "-i", dl.inventory, *args)
        codes.append(code)
        outs.append(out)
    return max(codes), "\n".join(outs)


def test_the_same_pushes_without_drain_lose_calls_the_baseline(dlab: DrainLab) -> None:
    # Three restarts under one load without drain (the drained pushes of this module lose none). h3 reaches
    # the edges over TCP: a restart closes that connection, and what h3 sends on it meanwhile fails (477)
    # instead of being retransmitted as on UDP.
    before = dlab.pid("h1")
    code, out, baseline, took = under_load(dlab, lambda: _pushes(dlab, [73, 74, 75], "--no-drain"), seconds=28)
    line = _figures("3 modparam pushes without drain (baseline)", baseline, took)
    assert code == 0 and "drained" not in out, out
    assert dlab.pid("h1") != before, "h1 was not restarted"
    assert baseline["failed"] > 0, line


def test_a_push_that_fails_at_start_is_rolled_back_and_the_node_put_back_without_losing_calls(dlab: DrainLab) -> None:
    # More open files than the lab's hosts may have (they inherit this machine's hard limit): -C passes,
    # systemd cannot start OpenSIPS with it, push rolls back; h1 was drained the whole time.
    data = yaml.safe_load(dlab.inventory.read_text())
    limit = int(data["defaults"]["vars"].get("open_files_limit", 65536))
    before = dlab.pid("h1")
    dlab.set_vars(("h1",), open_files_limit=limit * 4)
    try:
        code, out, doc, took = _push_under_load(dlab)
    finally:
        dlab.set_vars(("h1",), open_files_limit=limit)
    line = _figures("modparam push that fails and rolls back, with drain", doc, took)
    assert code == 1 and "rolled back" in out and "previous config restored and healthy" in out, out
    assert "h1: drained on h3 set 1" in out and "h1: put back active on h3" in out, out
    assert dlab.pid("h1") != before  # restarted twice: the failed start, then the restored cfg
    assert set(dlab.states().values()) == {"Active"}
    assert doc["failed"] == 0 and doc["answered"] == doc["attempts"], line


def test_a_drain_that_times_out_puts_the_node_back_and_does_not_restart_it(dlab: DrainLab) -> None:
    before = dlab.pid("h1")
    dlab.set_vars(("h1",), sip_fr_inv_timeout=63)
    code, out, doc, took = _push_under_load(dlab, "--drain-timeout", "0.3", seconds=10)
    _figures("drain timed out (0.3 s)", doc, took)
    assert code == 1, out
    assert "drain timed out after" in out and "calls still in setup (" in out and "not restarted" in out, out
    assert "h1: put back active on h3" in out, out
    assert dlab.pid("h1") == before, "h1 was restarted although its drain timed out"
    assert set(dlab.states().values()) == {"Active"}
    assert doc["failed"] == 0, doc
    # The change is still pending: the next push (drained, no load) applies it.
    code, out = sipops("push", "h1", "-i", dlab.inventory)
    assert code == 0 and "drained on h3 set 1" in out, out
    assert dlab.pid("h1") != before


def test_a_balancer_that_does_not_answer_leaves_the_node_untouched_and_says_so(dlab: DrainLab) -> None:
    before = dlab.pid("h1")
    dlab.set_vars(("h1",), sip_fr_inv_timeout=64)
    dlab.exec("h3", "systemctl", "stop", "opensips")
    try:
        code, out = sipops("push", "h1", "-i", dlab.inventory)
    finally:
        dlab.exec("h3", "systemctl", "start", "opensips")
    assert code == 1, out
    assert "load balancer h3 unreachable or refused" in out and "h1 not drained, not restarted" in out, out
    assert dlab.pid("h1") == before
    dlab.wait_all_active()
    code, out = sipops("push", "h1", "-i", dlab.inventory)
    assert code == 0 and "drained on h3 set 1" in out, out


def test_a_serial_rollout_over_both_edges_drains_them_one_at_a_time_and_loses_no_call(dlab: DrainLab) -> None:
    pids = {h: dlab.pid(h) for h in ("h1", "h2")}
    dlab.set_vars(("h1", "h2"), sip_fr_inv_timeout=65)
    code, out, doc, took = _push_under_load(dlab, "--serial", "1", seconds=26, hosts=("h1", "h2"))
    line = _figures("serial rollout over h1 and h2 with drain", doc, took)
    assert code == 0, out
    for h in ("h1", "h2"):
        assert f"{h}: put back active on h3" in out and dlab.pid(h) != pids[h], out
    # One at a time: h1 was back before h2 left.
    assert out.index("h1: put back active on h3") < out.index("h2: drained on h3"), out
    assert doc["failed"] == 0 and doc["answered"] == doc["attempts"], line


def test_a_parallel_push_of_both_edges_drains_them_one_at_a_time_and_loses_no_call(dlab: DrainLab) -> None:
    # No --serial: both hosts run at once, but the balancer's lock lets one drain at a time, so h3 always
    # has an edge to send calls to.
    dlab.set_vars(("h1", "h2"), sip_fr_inv_timeout=66)
    code, out, doc, took = _push_under_load(dlab, seconds=26, hosts=("h1", "h2"))
    line = _figures("parallel push of h1 and h2 with drain", doc, took)
    assert code == 0, out
    first, second = sorted(("h1", "h2"), key=lambda h: out.index(f"{h}: drained on h3"))
    assert out.index(f"{first}: put back active on h3") < out.index(f"{second}: drained on h3"), out
    assert doc["failed"] == 0 and doc["answered"] == doc["attempts"], line
