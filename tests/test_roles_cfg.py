"""The SIP roles and the opensips.cfg they compose: every combination renders, lints, and routes sanely."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sipops.lint import lint_cfg
from tests.roles_cfg_helpers import (
    COMBINATIONS,
    GATEWAYS,
    cfg_of,
    combo_name,
    file_of,
    render_all,
    write_combo_inventory,
)


@pytest.fixture(scope="module")
def rendered36(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    path = tmp_path_factory.mktemp("inv36") / "inventory.yaml"
    return render_all(write_combo_inventory(path))  # type: ignore[return-value]


def _route(cfg: str, header: str) -> str:
    """The body of one route block, e.g. `route[relay]` or `route` (the main one)."""
    m = re.search(rf"(?m)^{re.escape(header)} \{{\n(.*?)^\}}", cfg, re.S)
    assert m, f"{header} not found"
    return m.group(1)


@pytest.mark.parametrize("version", ["3.4", "3.6"])
@pytest.mark.parametrize("roles", COMBINATIONS, ids=combo_name)
def test_every_role_combination_renders_a_cfg_that_passes_the_lint(tmp_path, roles, version):
    rendered = render_all(write_combo_inventory(tmp_path / "inventory.yaml", {"opensips_version": version}))
    cfg = cfg_of(rendered[combo_name(roles)])
    assert f"# OpenSIPS {version} configuration" in cfg
    assert lint_cfg(cfg, "opensips.cfg", version) == []


def test_proxy_follows_record_routes_for_in_dialog_requests(rendered36):
    cfg = cfg_of(rendered36["pro"])
    assert "if (has_totag()) {\n\t\troute(in_dialog);" in _route(cfg, "route")
    in_dialog = _route(cfg, "route[in_dialog]")
    assert "loose_route()" in in_dialog and 'is_method("ACK") && t_check_trans()' in in_dialog
    assert "record_route();" in _route(cfg, "route")


def test_proxy_answers_483_on_max_forwards_and_400_on_malformed_requests(rendered36):
    main = _route(cfg_of(rendered36["pro"]), "route")
    assert main.index("mf_process_maxfwd_header(70)") < main.index("483") < main.index("sipmsg_validate()")
    assert "400" in main


def test_cancel_is_relayed_only_when_it_matches_a_transaction(rendered36):
    main = _route(cfg_of(rendered36["pro"]), "route")
    assert 'if (is_method("CANCEL")) {\n\t\tif (t_check_trans())\n\t\t\tt_relay();\n\t\texit;' in main


def test_proxy_with_registrar_looks_up_location_and_proxy_alone_does_not(rendered36):
    assert 'lookup("location"' in cfg_of(rendered36["reg-pro"])
    alone = cfg_of(rendered36["pro"])
    assert "lookup(" not in alone
    assert '$du = "sip:192.0.2.20:5060";' in alone


def test_proxy_without_registrar_or_outbound_replies_404(tmp_path):
    inv = write_combo_inventory(tmp_path / "inventory.yaml", proxy={"proxy_outbound": None})
    main = _route(cfg_of(render_all(inv)["pro"]), "route")
    assert 'sl_send_reply(404, "Not Found");' in main


def test_registrar_saves_into_usrloc_in_memory_unless_persisted(tmp_path, rendered36):
    cfg = cfg_of(rendered36["reg"])
    assert 'save("location")' in _route(cfg, "route[register]")
    assert '"working_mode_preset", "single-instance-no-db"' in cfg
    inv = write_combo_inventory(tmp_path / "inventory.yaml", registrar={"registrar_persist": True})
    persisted = cfg_of(render_all(inv)["reg"])
    assert '"working_mode_preset", "single-instance-sql-write-back"' in persisted
    assert 'modparam("usrloc", "db_url", "sqlite:///var/lib/opensips/opensips.sqlite")' in persisted


def test_registrar_auth_challenges_register_against_the_subscriber_table(tmp_path, rendered36):
    cfg = cfg_of(rendered36["reg"])
    register = _route(cfg, "route[register]")
    assert 'www_authorize("sip.example.net", "subscriber")' in register
    assert 'www_challenge("sip.example.net", "auth")' in register
    assert 'loadmodule "auth_db.so"' in cfg and 'loadmodule "db_sqlite.so"' in cfg
    inv = write_combo_inventory(tmp_path / "inventory.yaml", registrar={"registrar_auth": False})
    plain = cfg_of(render_all(inv)["reg"])
    assert "www_authorize" not in plain and "auth_db" not in plain and "db_sqlite" not in plain


def test_registrar_alone_refuses_other_methods_with_405(rendered36):
    main = _route(cfg_of(rendered36["reg"]), "route")
    assert 'append_to_reply("Allow: REGISTER, OPTIONS\\r\\n");' in main and "405" in main
    assert "t_relay" not in cfg_of(rendered36["reg"])


def test_nated_registrations_are_fixed_flagged_and_pinged(rendered36):
    cfg = cfg_of(rendered36["reg-pro"])
    nat = _route(cfg, "route[nat_detect]")
    assert "force_rport();" in nat and "nat_uac_test(" in nat
    assert "fix_nated_register();" in nat and 'setbflag("SIP_PING");' in nat and "fix_nated_contact();" in nat
    assert 'modparam("nathelper", "natping_interval", 30)' in cfg
    assert 'modparam("nathelper", "sipping_bflag", "SIP_PING")' in cfg
    assert 'modparam("usrloc", "nat_bflag", "NAT")' in cfg
    assert 'modparam("registrar", "received_avp", "$avp(received)")' in cfg


def test_nat_pings_need_the_registrar_on_the_same_host(rendered36):
    cfg = cfg_of(rendered36["pro"])
    assert 'modparam("nathelper", "natping_interval", 0)' in cfg
    assert "fix_nated_register" not in cfg


def test_relay_reports_timeouts_and_server_errors_in_a_failure_route(rendered36):
    cfg = cfg_of(rendered36["pro"])
    assert 't_on_failure("relay_failed");' in _route(cfg, "route[relay]")
    assert 't_check_status("408|5[0-9][0-9]")' in _route(cfg, "failure_route[relay_failed]")


def test_dispatcher_table_has_one_row_per_gateway(rendered36):
    table = file_of(rendered36["loa"], "/dbtext/dispatcher").splitlines()
    assert table[0].endswith("attrs(string,null) description(string,null)")
    assert table[1:] == [
        r"1:1:sip\:192.0.2.21\:5080::0:1:50:0:name=fs1;kind=media:FreeSWITCH 1",
        r"2:1:sip\:192.0.2.22\:5080::0:0:50:0:name=fs2;kind=media:fs2",
        r"3:2:sip\:192.0.2.40\:5060;transport=tcp::0:1:1:1:name=trunk;kind=trunk:PSTN\: trunk",
    ]
    assert file_of(rendered36["loa"], "/dbtext/version") == "table_name(string) table_version(int)\ndispatcher:9\n"


def test_dispatcher_table_header_follows_the_release(tmp_path):
    inv = write_combo_inventory(tmp_path / "inventory.yaml", {"opensips_version": "3.4"})
    header = file_of(render_all(inv)["loa"], "/dbtext/dispatcher").splitlines()[0]
    assert header.endswith("weight(string) priority(int) attrs(string) description(string)")


def test_loadbalancer_reads_gateways_from_db_text_and_fails_over(rendered36):
    cfg = cfg_of(rendered36["loa"])
    assert 'modparam("dispatcher", "db_url", "text:///etc/opensips/dbtext")' in cfg
    assert 'modparam("dispatcher", "ds_ping_interval", 10)' in cfg
    to_gw = _route(cfg, "route[to_gateways]")
    assert "if (ds_is_in_list($si, 0, 1))\n\t\t$avp(gw_set) = 2;" in to_gw
    assert 'ds_select_dst($avp(gw_set), 4, "f")' in to_gw and 't_on_failure("gw_failover");' in to_gw
    failover = _route(cfg, "failure_route[gw_failover]")
    assert 't_check_status("408|5[0-9][0-9]")' in failover and "ds_next_dst()" in failover


def test_load_balancer_engine_uses_its_table_and_dialog(tmp_path):
    inv = write_combo_inventory(tmp_path / "inventory.yaml", loadbalancer={"lb_engine": "load_balancer"})
    host = render_all(inv)["loa"]
    cfg = cfg_of(host)
    assert 'loadmodule "dialog.so"' in cfg and 'loadmodule "load_balancer.so"' in cfg and "dispatcher" not in cfg
    assert 'lb_start($avp(gw_set), "pstn")' in cfg and "lb_next()" in cfg
    table = file_of(host, "/dbtext/load_balancer").splitlines()
    assert table[2] == r"2:1:sip\:192.0.2.22\:5080:pstn=32:1:name=fs2;kind=media:fs2"
    assert file_of(host, "/dbtext/version").endswith("load_balancer:3\n")
    assert not any(f.dest.endswith("/dbtext/dispatcher") for f in host.files)


def test_a_gateway_change_is_a_table_change_reloaded_over_mi_not_a_restart(tmp_path):
    before = render_all(write_combo_inventory(tmp_path / "a.yaml"))["loa"]
    changed = [dict(g, weight=10) if g["name"] == "fs1" else g for g in GATEWAYS]
    after = render_all(write_combo_inventory(tmp_path / "b.yaml", loadbalancer={"gateways": changed}))["loa"]
    old = {f.dest: f for f in before.files}
    differs = [f for f in after.files if old[f.dest].content != f.content]
    assert [f.dest for f in differs] == ["/etc/opensips/dbtext/dispatcher"]
    assert differs[0].notify == ("reload gateways",)
    handler = after.handlers["reload gateways"]
    # db_text caches its tables: dbt_reload before ds_reload, or OpenSIPS keeps the old rows
    assert "for m in dbt_reload ds_reload;" in handler
    assert "http://127.0.0.1:8888/mi" in handler


def test_all_three_roles_look_up_users_before_balancing_and_trust_gateways(rendered36):
    main = _route(cfg_of(rendered36["reg-pro-loa"]), "route")
    assert main.index('lookup("location"') < main.index("route(to_gateways);")
    assert "if (!ds_is_in_list($si, 0))\n\t\troute(auth_caller);" in main


def test_ipv6_sockets_are_bracketed_and_domains_become_aliases(write_inventory):
    inv = write_inventory(
        """
        hosts:
          v6:
            address: "2001:db8::5"
            roles: [registrar, proxy]
            vars: {sip_domains: [sip.example.net, voip.example.org], auth_realm: sip.example.net}
        """
    )
    cfg = cfg_of(render_all(inv)["v6"])
    assert "socket = udp:[2001:db8::5]:5060\n" in cfg
    assert 'alias = "sip.example.net"\nalias = "voip.example.org"\n' in cfg


def test_modules_and_packages_follow_the_role_variables(tmp_path):
    from sipops.inventory import load_inventory
    from sipops.render import context

    inv = load_inventory(write_combo_inventory(tmp_path / "inventory.yaml", {"db_url": "mysql://u:p@db/opensips"}))
    ctx = context(inv, inv.hosts["reg-pro"])
    assert ctx["modules"][-7:] == ["usrloc", "registrar", "auth", "auth_db", "db_mysql", "nathelper", "pike"]
    assert ctx["opensips_packages"] == ["opensips-http-modules", "opensips-auth-modules", "opensips-mysql-module"]


def test_rendering_the_cfg_is_deterministic(tmp_path):
    path = write_combo_inventory(Path(tmp_path) / "inventory.yaml")
    first = {n: [f.content for f in r.files] for n, r in render_all(path).items()}
    assert first == {n: [f.content for f in r.files] for n, r in render_all(path).items()}
