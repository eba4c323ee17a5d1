"""Formats (Prometheus parsed by prometheus_client, the Nagios plugin line), state and the alert command."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sipops.host.health.config import HealthConfig
from sipops.host.health.formats import (
    perfdata,
    render_json,
    render_nagios,
    render_prometheus,
    render_text,
    write_textfile,
)
from sipops.host.health.model import CheckResult, Metric, Report, Status, worst
from sipops.host.health.runner import run_host
from tests.health_helpers import CFG, MAIN, FakeSources, alive

prometheus_parser = pytest.importorskip("prometheus_client.parser")

RTT = Metric("sip_options_rtt", 0.0012, "s", 0.5, 2, 0, None, {"socket": "udp:[2001:db8::1]:5060"}, "OPTIONS rtt")
REPORT = Report(
    "sip1",
    [
        CheckResult("process", Status.OK, "opensips pid 1 up 1h", [Metric("uptime", 3600, "s", minimum=0)]),
        CheckResult("sip_options", Status.OK, "udp: 200 in 1.2 ms", [RTT]),
        CheckResult("shmem", Status.WARNING, "85% used", [Metric("shmem_used", 85.5, "%", 80, 95, 0, 100),
                                                          Metric("shmem_used_bytes", 1024, "B", minimum=0)]),
        CheckResult("mi", Status.OK, "a | b", [Metric("received_requests", 99, "c", minimum=0)]),
        CheckResult("bans", Status.UNKNOWN, "no ban journal here"),
    ],
    checked_at=1_800_000_000.0,
)  # fmt: skip

# monitoring-plugins guidelines: "SERVICE STATUS: text | 'label'=value[UOM];[warn];[crit];[min];[max] ..."
_VALUE = r"-?[0-9.]+"
_UOM = r"(?:s|ms|us|%|B|KB|MB|TB|c)?"
_LABEL = r"(?:'[^'=]+'|[^'= ]+)"
PERF = rf"{_LABEL}={_VALUE}{_UOM}(?:;(?:{_VALUE})?){{0,4}}"
NAGIOS_LINE = re.compile(rf"^SIPOPS (OK|WARNING|CRITICAL|UNKNOWN) - [^|]+(?: \| {PERF}(?: {PERF})*)?$")


def test_prometheus_output_parses_with_prometheus_client() -> None:
    text = render_prometheus([REPORT])
    families = {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}
    status = {s.labels["check"]: s.value for s in families["sipops_check_status"].samples}
    assert status == {"process": 0, "sip_options": 0, "shmem": 1, "mi": 0, "bans": 3}
    rtt = families["sipops_sip_options_rtt_seconds"].samples[0]
    assert rtt.value == 0.0012 and rtt.labels == {
        "host": "sip1",
        "check": "sip_options",
        "socket": "udp:[2001:db8::1]:5060",
    }
    assert families["sipops_shmem_used_percent"].samples[0].value == 85.5
    assert families["sipops_shmem_used_bytes"].samples[0].value == 1024
    assert families["sipops_received_requests"].type == "counter"
    assert families["sipops_host_status"].samples[0].value == 3  # UNKNOWN outranks WARNING
    assert families["sipops_health_last_run_timestamp_seconds"].samples[0].value == 1_800_000_000


def test_nagios_first_line_follows_the_plugin_format_and_exit_code_is_the_worst() -> None:
    lines = render_nagios([REPORT]).splitlines()
    assert NAGIOS_LINE.match(lines[0]), lines[0]
    assert lines[0].startswith("SIPOPS UNKNOWN - ")  # UNKNOWN outranks WARNING (Icinga 2 order)
    assert "'sip_options_rtt_udp:[2001:db8::1]:5060'=0.0012s;0.5;2;0" in lines[0]
    assert "shmem_used=85.5%;80;95;0;100" in lines[0]
    assert all("|" not in line for line in lines[1:])  # long output must not contain the perfdata pipe
    assert REPORT.status == Status.UNKNOWN


def test_nagios_all_ok_summary_and_critical_first() -> None:
    ok = Report("h", [CheckResult("disk", Status.OK, "fine", [Metric("log_disk_free", 50, "%", 15, 5, 0, 100)])])
    line = render_nagios([ok]).splitlines()[0]
    assert line == "SIPOPS OK - 1 checks OK | log_disk_free=50%;15;5;0;100"
    bad = Report("h", [CheckResult("a", Status.WARNING, "w"), CheckResult("b", Status.CRITICAL, "down")])
    assert render_nagios([bad]).splitlines()[0] == "SIPOPS CRITICAL - b: down (and 1 more problems)"


def test_perfdata_drops_trailing_empty_fields_and_quotes_odd_labels() -> None:
    assert perfdata(Metric("bans", 3)) == "bans=3"
    assert perfdata(Metric("x", 1, labels={"k": "a b"})) == "'x_a b'=1"


def test_worst_status_order() -> None:
    assert worst([Status.OK, Status.WARNING]) == Status.WARNING
    assert worst([Status.WARNING, Status.UNKNOWN]) == Status.UNKNOWN
    assert worst([Status.UNKNOWN, Status.CRITICAL]) == Status.CRITICAL


def test_json_and_text_carry_every_check() -> None:
    data = json.loads(render_json([REPORT]))
    assert data["code"] == 3 and [c["name"] for c in data["hosts"][0]["checks"]][:2] == ["process", "sip_options"]
    assert Report.from_dict(data["hosts"][0]).checks == REPORT.checks
    text = render_text([REPORT])
    assert len(text.splitlines()) == 5 and text.splitlines()[2].split()[:2] == ["shmem", "WARNING"]


def test_textfile_is_written_atomically_without_leftovers(tmp_path: Path) -> None:
    target = write_textfile(tmp_path / "textfile", "a 1\n")
    assert target.read_text() == "a 1\n" and target.name == "sipops.prom"
    write_textfile(tmp_path / "textfile", "a 2\n")
    assert [p.name for p in (tmp_path / "textfile").iterdir()] == ["sipops.prom"]
    assert target.read_text() == "a 2\n"


# runner: state between runs and the alert command


def _cfg(tmp_path: Path) -> HealthConfig:
    return replace(CFG, state_dir=str(tmp_path / "state"), checks=("process", "sip_options"))


def _src(up: bool) -> FakeSources:
    answers = {f"{s.proto}:{s.address}:{s.port}": alive(s) for s in CFG.sockets} if up else {}
    return FakeSources(procs=[MAIN], answers=answers)


def test_alert_command_fires_once_per_status_change(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    fired = tmp_path / "fired"
    cmd = f'{{ echo "$SIPOPS_HEALTH_STATUS $SIPOPS_HEALTH_CHANGES"; cat >/dev/null; }} >> {fired}'
    runs: list[Any] = []
    for up in (True, True, False, False, False, True, True):
        runs.append(run_host(cfg, _src(up), state_name="cron", alert_cmd=cmd, render_alert=render_text_one))
    assert [r.status for r in runs] == [Status.OK] * 2 + [Status.CRITICAL] * 3 + [Status.OK] * 2
    assert fired.read_text().splitlines() == ["CRITICAL sip_options: OK -> CRITICAL", "OK sip_options: CRITICAL -> OK"]
    assert runs[2].alert == "alert command ran" and runs[3].alert == ""


def render_text_one(report: Report) -> str:
    return render_text([report])


def test_state_names_keep_separate_cursors(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    run_host(cfg, _src(True), state_name="cron")
    run_host(cfg, _src(False), state_name="remote")
    # The cron state did not see the remote run's failure: its next failure is a change.
    assert run_host(cfg, _src(False), state_name="cron").changed == ["sip_options: OK -> CRITICAL"]


def test_a_crashing_check_is_unknown_not_a_crash(tmp_path: Path) -> None:
    class Broken(FakeSources):
        def processes(self) -> Any:
            raise RuntimeError("boom")

    report = run_host(_cfg(tmp_path), Broken(), state_name="x")
    assert report.checks[0].status == Status.UNKNOWN and "boom" in report.checks[0].message
