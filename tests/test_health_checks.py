"""Each check with injected inputs (FakeSources): statuses, messages and metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sipops.host.health import checks, checks_mi
from sipops.host.health.config import HealthConfig, Socket, Thresholds, config_from_dict
from sipops.host.health.mi import MIError
from sipops.host.health.model import Status
from sipops.host.health.procfs import ProcInfo, decode_address, is_listening
from sipops.host.health.sources import count_bans
from tests.health_helpers import CFG, MAIN, NOW, TCP, UDP, WORKER, FakeSources, alive, key

# process


def test_process_down_is_critical() -> None:
    r = checks.check_process(CFG, FakeSources(), {})
    assert r.status == Status.CRITICAL and "not running" in r.message


def test_process_up_reports_uptime_and_no_restart_on_first_sight() -> None:
    state: dict[str, Any] = {}
    r = checks.check_process(CFG, FakeSources(procs=[MAIN, WORKER]), state)
    assert r.status == Status.OK and "pid 100 up 1h 0m" in r.message
    metrics = {m.name: m.value for m in r.metrics}
    assert metrics == {"uptime": 3600, "restarts": 0, "processes": 2}


def test_a_new_main_process_since_the_last_run_is_a_restart_warning_once() -> None:
    state: dict[str, Any] = {}
    checks.check_process(CFG, FakeSources(procs=[MAIN]), state)
    restarted = ProcInfo(200, 1, NOW - 10, 20, 65536)
    r = checks.check_process(CFG, FakeSources(procs=[restarted]), state)
    assert r.status == Status.WARNING and "restarted" in r.message
    assert checks.check_process(CFG, FakeSources(procs=[restarted]), state).status == Status.OK
    assert state["restarts_total"] == 1


def test_coming_back_after_being_down_counts_as_a_restart() -> None:
    state: dict[str, Any] = {}
    checks.check_process(CFG, FakeSources(procs=[MAIN]), state)
    checks.check_process(CFG, FakeSources(), state)
    assert checks.check_process(CFG, FakeSources(procs=[MAIN]), state).status == Status.WARNING


def test_pid_file_names_the_main_process() -> None:
    r = checks.check_process(CFG, FakeSources(procs=[MAIN, WORKER], pid_file=101), {})
    assert "pid 101" in r.message


# sockets


def test_every_socket_listening_is_ok_and_wildcard_binds_count() -> None:
    src = FakeSources(bound={("udp", "192.0.2.10", 5060), ("tcp", "0.0.0.0", 5060)})
    r = checks.check_sockets(CFG, src, {})
    assert r.status == Status.OK
    assert [m.value for m in r.metrics] == [1, 1]


def test_a_socket_not_listening_is_critical_and_named() -> None:
    r = checks.check_sockets(CFG, FakeSources(bound={("udp", "192.0.2.10", 5060)}), {})
    assert r.status == Status.CRITICAL and "tcp:192.0.2.10:5060" in r.message


def test_no_sockets_configured_is_unknown() -> None:
    assert checks.check_sockets(HealthConfig(), FakeSources(), {}).status == Status.UNKNOWN


def test_procfs_decodes_ipv4_and_ipv6_and_mapped_addresses() -> None:
    assert decode_address("0100007F:13C4") == ("127.0.0.1", 5060)
    assert decode_address("00000000000000000000000001000000:13C4") == ("::1", 5060)
    assert decode_address("0000000000000000FFFF00000100007F:0050") == ("127.0.0.1", 80)
    assert is_listening({("tcp", "::", 5060)}, "tcp", "2001:db8::1", 5060)


# sip_options


def test_options_answered_on_every_socket_is_ok_with_rtt_metrics() -> None:
    src = FakeSources(answers={key(UDP): alive(UDP), key(TCP): alive(TCP, 0.004)})
    r = checks.check_sip_options(CFG, src, {})
    assert r.status == Status.OK
    rtts = {m.labels["socket"]: m.value for m in r.metrics if m.name == "sip_options_rtt"}
    assert rtts == {"udp:192.0.2.10:5060": 0.002, "tcp:192.0.2.10:5060": 0.004}
    assert {p[3] for p in src.probed} == {2.0}  # the configured timeout


def test_options_timeout_on_one_socket_is_critical() -> None:
    src = FakeSources(answers={key(UDP): alive(UDP)})
    r = checks.check_sip_options(CFG, src, {})
    assert r.status == Status.CRITICAL and r.message == "tcp:192.0.2.10:5060: no answer in 2 s"


def test_any_final_response_is_alive_and_slow_is_warning() -> None:
    src = FakeSources(answers={key(UDP): alive(UDP, 0.9, 404), key(TCP): alive(TCP)})
    r = checks.check_sip_options(CFG, src, {})
    assert r.status == Status.WARNING and "404 in 900.0 ms" in r.message


def test_wildcard_socket_is_probed_on_loopback_and_tls_is_not_probed() -> None:
    cfg = replace(CFG, sockets=(Socket("udp", "0.0.0.0", 5060), Socket("tls", "192.0.2.10", 5061)))
    src = FakeSources(answers={"udp:127.0.0.1:5060": alive(Socket("udp", "127.0.0.1", 5060))})
    assert checks.check_sip_options(cfg, src, {}).status == Status.OK
    assert [p[:3] for p in src.probed] == [("udp", "127.0.0.1", 5060)]


# MI, shmem, load, gateways

STATS = {
    "shmem:total_size": 268435456,
    "shmem:real_used_size": 214748365,
    "shmem:used_size": 200000000,
    "shmem:max_used_size": 220000000,
    "load:load": 12,
    "load:load1m": 85,
    "load:load10m": 40,
    "usrloc:registered_users": 1234,
    "dialog:active_dialogs": 56,
    "core:rcv_requests": 99,
}


def _mi(**extra: Any) -> FakeSources:
    return FakeSources(mi_replies={"version": {"Server": "OpenSIPS (3.6.8 (x86_64/linux))"}, "get_statistics": STATS,
                                   **extra})  # fmt: skip


def test_mi_reachable_reports_registrations_and_dialogs_from_statistics() -> None:
    r = checks_mi.check_mi(CFG, _mi(), {})
    assert r.status == Status.OK and "1234 registered users, 56 active dialogs" in r.message
    assert {m.name: m.value for m in r.metrics}["registrations"] == 1234


def test_mi_unreachable_is_critical_and_statistics_checks_unknown() -> None:
    src = FakeSources()
    assert checks_mi.check_mi(CFG, src, {}).status == Status.CRITICAL
    assert checks_mi.check_shmem(CFG, src, {}).status == Status.UNKNOWN
    assert checks_mi.check_load(CFG, src, {}).status == Status.UNKNOWN


def test_shmem_used_vs_total_against_thresholds() -> None:
    r = checks_mi.check_shmem(CFG, _mi(), {})
    assert r.status == Status.WARNING  # 80.0% of 256 MiB
    values = {m.name: m.value for m in r.metrics}
    assert values["shmem_used"] == 80.0 and values["shmem_total_bytes"] == 268435456
    crit = replace(CFG, thresholds=Thresholds(shm_warning=50, shm_critical=75))
    assert checks_mi.check_shmem(crit, _mi(), {}).status == Status.CRITICAL


def test_load_is_judged_on_the_one_minute_value() -> None:
    r = checks_mi.check_load(CFG, _mi(), {})
    assert r.status == Status.WARNING and "85% (1m)" in r.message
    assert {m.labels["window"] for m in r.metrics} == {"1s", "1m", "10m"}


DS_LIST = {
    "PARTITIONS": [
        {
            "name": "default",
            "SETS": [
                {"id": 1, "Destinations": [{"URI": "sip:10.0.0.1", "state": "Active"},
                                           {"URI": "sip:10.0.0.2", "state": "Inactive"}]},
                {"id": 2, "Destinations": [{"URI": "sip:10.0.0.9", "state": "Probing"}]},
            ],
        }
    ]
}  # fmt: skip


def test_dispatcher_set_with_every_destination_down_is_critical() -> None:
    cfg = replace(CFG, gateway_engine="dispatcher")
    r = checks_mi.check_gateways(cfg, _mi(ds_list=DS_LIST), {})
    assert r.status == Status.CRITICAL and "set 2" in r.message
    assert {m.name: m.value for m in r.metrics} == {"gateways": 3, "gateways_down": 2}


def test_load_balancer_destination_disabled_is_warning() -> None:
    cfg = replace(CFG, gateway_engine="load_balancer")
    lb = {"Destinations": [{"uri": "sip:10.0.0.1", "group": 1, "enabled": "yes"},
                           {"uri": "sip:10.0.0.2", "group": 1, "enabled": "no"}]}  # fmt: skip
    r = checks_mi.check_gateways(cfg, _mi(lb_list=lb), {})
    assert r.status == Status.WARNING and "sip:10.0.0.2" in r.message


def test_running_sets_that_differ_from_the_inventory_are_a_warning_naming_the_entries() -> None:
    lb = {"Destinations": [{"uri": "sip:10.0.0.1:5060", "group": 1, "enabled": "yes"},
                           {"uri": "sip:10.0.0.9:5060", "group": 1, "enabled": "yes"}]}  # fmt: skip
    expected = (("group 1", "sip:10.0.0.1:5060"), ("group 1", "sip:10.0.0.2:5060"))
    cfg = replace(CFG, gateway_engine="load_balancer", gateways=expected)
    r = checks_mi.check_gateways(cfg, _mi(lb_list=lb), {})
    assert r.status == Status.WARNING, r.message
    assert "-group 1 sip:10.0.0.2:5060" in r.message and "+group 1 sip:10.0.0.9:5060" in r.message
    assert {m.name: m.value for m in r.metrics}["gateways_drift"] == 2


def test_running_sets_equal_to_the_inventory_are_ok() -> None:
    lb = {"Destinations": [{"uri": "sip:10.0.0.1:5060", "group": 1, "enabled": "yes"}]}
    cfg = replace(CFG, gateway_engine="load_balancer", gateways=(("group 1", "sip:10.0.0.1:5060"),))
    r = checks_mi.check_gateways(cfg, _mi(lb_list=lb), {})
    assert r.status == Status.OK and {m.name: m.value for m in r.metrics}["gateways_drift"] == 0


def test_drift_is_added_to_a_critical_set_down() -> None:
    cfg = replace(CFG, gateway_engine="dispatcher", gateways=())
    r = checks_mi.check_gateways(cfg, _mi(ds_list=DS_LIST), {})
    assert r.status == Status.CRITICAL and "differs from the inventory" in r.message


def test_gateway_module_not_loaded_is_unknown() -> None:
    cfg = replace(CFG, gateway_engine="dispatcher")
    src = _mi(ds_list=MIError("ds_list: Method not found", -32601))
    r = checks_mi.check_gateways(cfg, src, {})
    assert r.status == Status.UNKNOWN and "not loaded" in r.message


# TCP, fds, disk


def test_tcp_connections_against_tcp_max_connections() -> None:
    assert checks.check_tcp_conns(CFG, FakeSources(tcp=100), {}).status == Status.OK
    assert checks.check_tcp_conns(CFG, FakeSources(tcp=850), {}).status == Status.WARNING
    r = checks.check_tcp_conns(CFG, FakeSources(tcp=990), {})
    assert r.status == Status.CRITICAL and "990 of tcp_max_connections 1000" in r.message


def test_udp_only_host_has_no_tcp_to_count() -> None:
    cfg = replace(CFG, sockets=(UDP,))
    assert checks.check_tcp_conns(cfg, FakeSources(tcp=5000), {}).status == Status.OK


def test_open_fds_of_the_fullest_process_against_its_limit() -> None:
    r = checks.check_fds(CFG, FakeSources(procs=[MAIN, WORKER]), {})
    assert r.status == Status.WARNING  # worker: 900 of 1000, and its limit is below open_files_limit
    assert "pid 101" in r.message and "below open_files_limit 4096" in r.message


def test_fds_unreadable_is_unknown() -> None:
    r = checks.check_fds(CFG, FakeSources(procs=[ProcInfo(1, 0, NOW, None, None)]), {})
    assert r.status == Status.UNKNOWN


def test_low_free_space_on_the_log_partition() -> None:
    assert checks.check_disk(CFG, FakeSources(space=(100, 50)), {}).status == Status.OK
    assert checks.check_disk(CFG, FakeSources(space=(100, 10)), {}).status == Status.WARNING
    assert checks.check_disk(CFG, FakeSources(space=(100, 4)), {}).status == Status.CRITICAL


# log


def test_log_errors_warn_once_then_ok(tmp_path: Path) -> None:
    log = tmp_path / "opensips.log"
    log.write_text("start\n")
    cfg = replace(CFG, log_file=str(log))
    state: dict[str, Any] = {}
    assert checks.check_log_errors(cfg, FakeSources(), state).status == Status.OK
    with open(log, "a") as f:
        f.write("Nov 28 sip1 opensips[7]: ERROR:tm:t_relay: no socket\n")
    r = checks.check_log_errors(cfg, FakeSources(), state)
    assert r.status == Status.WARNING and "1 new error lines" in r.message and "t_relay" in r.message
    assert checks.check_log_errors(cfg, FakeSources(), state).status == Status.OK


# watcher and bans


@pytest.mark.parametrize(
    ("state", "status"),
    [("active", Status.OK), ("failed", Status.CRITICAL), ("inactive", Status.WARNING),
     ("not-found", Status.WARNING), ("no-systemctl", Status.UNKNOWN)],
)  # fmt: skip
def test_watcher_service_state(state: str, status: Status) -> None:
    assert checks.check_watcher(CFG, FakeSources(unit_state=state), {}).status == status


def test_bans_count_and_unknown_without_a_journal() -> None:
    assert checks.check_bans(CFG, FakeSources(ban_count=(12, "")), {}).message == "12 live bans"
    assert checks.check_bans(CFG, FakeSources(ban_count=(5000, "")), {}).status == Status.WARNING
    r = checks.check_bans(CFG, FakeSources(ban_count=(None, "no ban journal here")), {})
    assert r.status == Status.UNKNOWN and r.message == "no ban journal here"


def test_count_bans_accepts_a_list_or_an_object() -> None:
    assert count_bans(json.dumps([{"ip": "192.0.2.1"}, {"ip": "192.0.2.2"}])) == (2, "")
    assert count_bans(json.dumps({"bans": [{"ip": "192.0.2.1"}]})) == (1, "")
    assert count_bans(json.dumps({"count": 7})) == (7, "")
    assert count_bans("not json")[0] is None


# config


def test_config_rejects_unknown_keys_and_checks() -> None:
    with pytest.raises(Exception, match="unknown key 'mi_ulr'"):
        config_from_dict({"mi_ulr": "x"})
    with pytest.raises(Exception, match="unknown check 'procss'"):
        config_from_dict({"checks": ["procss"]})


def test_enabled_checks_follow_gateways_and_watcher_settings() -> None:
    assert "gateways" not in HealthConfig().enabled()
    assert "gateways" in HealthConfig(gateway_engine="dispatcher").enabled()
    assert {"watcher", "bans"}.isdisjoint(HealthConfig(watcher=False).enabled())
    assert HealthConfig(checks=("disk", "process")).enabled() == ["process", "disk"]


def test_another_opensips_instance_is_not_counted_as_ours() -> None:
    foreign_main, foreign_worker = ProcInfo(500, 1, NOW - 10, 10, 100), ProcInfo(501, 500, NOW - 10, 99, 100)
    src = FakeSources(procs=[MAIN, WORKER, foreign_main, foreign_worker], pid_file=100)
    assert "2 processes" in checks.check_process(CFG, src, {}).message
    assert "pid 101" in checks.check_fds(CFG, src, {}).message  # not the foreign worker at 99%
