"""The structural lint of opensips.cfg: clean on what we render, precise on what is broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipops.lint import lint_cfg, socket_problem
from tests.conftest import EXAMPLE

GOOD = """\
socket = udp:192.0.2.1:5060
socket = tcp:[2001:db8::1]:5060 as sip.example.net:5060
loadmodule "proto_udp.so"
loadmodule "proto_tcp.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "sipmsgops.so"
modparam("tm", "fr_timeout", 5)

route {
	if (is_method("OPTIONS")) {   # a comment with route(nowhere) and a } brace
		sl_send_reply(200, "OK");
		exit;
	}
	$var(x) = $(ru{s.len});
	t_on_failure("failed");
	route(relay);
}

route[relay] {
	if (!t_relay())
		sl_reply_error();
}

failure_route[failed] {
	xlog("L_WARN", "failed: $T_reply_code\\n");
}
"""


def _errors(text: str) -> list[str]:
    return [str(e) for e in lint_cfg(text, "opensips.cfg", "3.6")]


def test_lint_passes_on_every_rendered_cfg_of_the_example_inventory(cli, tmp_path):
    code, _, err = cli("render", "all", "-i", EXAMPLE, "-o", tmp_path)
    assert code == 0, err
    cfgs = sorted(tmp_path.rglob("opensips.cfg"))
    assert len(cfgs) == 3
    for cfg in cfgs:
        text = cfg.read_text()
        version = text.split("# OpenSIPS ", 1)[1].split()[0]
        assert lint_cfg(text, str(cfg), version) == [], cfg


def test_lint_passes_on_a_hand_written_cfg():
    assert _errors(GOOD) == []


def test_lint_fails_on_an_unknown_function():
    bad = GOOD.replace('sl_send_reply(200, "OK");', 'sl_send_replay(200, "OK");')
    assert _errors(bad) == ["opensips.cfg:12: unknown function sl_send_replay()"]


def test_a_module_outside_the_table_is_allowed_and_left_to_opensips_c():
    """rtpengine (and acc, drouting, your own): loaded, configured and called without a lint error."""
    cfg = GOOD.replace('loadmodule "sipmsgops.so"', 'loadmodule "sipmsgops.so"\nloadmodule "rtpengine.so"')
    cfg = cfg.replace('modparam("tm"', 'modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:2223")\nmodparam("tm"')
    cfg = cfg.replace("\troute(relay);", "\trtpengine_manage();\n\troute(relay);")
    assert _errors(cfg) == []
    # what the table knows is still checked next to it
    assert _errors(cfg.replace('sl_send_reply(200, "OK");', 'lookup("location");')) == [
        "opensips.cfg:14: lookup() belongs to module registrar, which is not loaded"
    ]
    assert _errors(cfg.replace('modparam("tm", "fr_timeout"', 'modparam("tm", "fr_timout"')) == [
        "opensips.cfg:10: module 'tm' has no parameter 'fr_timout'"
    ]


def test_lint_fails_on_a_function_of_a_module_that_is_not_loaded():
    bad = GOOD.replace("\tt_on_failure", '\tlookup("location");\n\tt_on_failure')
    assert _errors(bad) == ["opensips.cfg:16: lookup() belongs to module registrar, which is not loaded"]


def test_lint_fails_on_a_wrong_number_of_arguments():
    bad = GOOD.replace('sl_send_reply(200, "OK")', "sl_send_reply(200)")
    assert _errors(bad) == ["opensips.cfg:12: sl_send_reply() of module sl takes 2 arguments, got 1"]


def test_lint_fails_on_a_missing_route():
    bad = GOOD.replace("route(relay);", "route(relay_out);")
    assert _errors(bad) == ["opensips.cfg:17: route[relay_out] is used but not defined"]


def test_lint_fails_on_a_missing_failure_route():
    bad = GOOD.replace('t_on_failure("failed")', 't_on_failure("fail")')
    assert _errors(bad) == ["opensips.cfg:16: failure_route[fail] is used but not defined"]


def test_lint_fails_on_a_duplicate_route():
    bad = GOOD + "\nroute[relay] {\n\texit;\n}\n"
    assert _errors(bad) == ["opensips.cfg:29: duplicate route[relay] (first defined at line 20)"]


def test_lint_fails_on_a_modparam_of_a_module_that_is_not_loaded():
    bad = GOOD.replace('modparam("tm", "fr_timeout", 5)', 'modparam("dispatcher", "ds_ping_interval", 10)')
    assert _errors(bad) == ["opensips.cfg:8: modparam for module 'dispatcher', which is not loaded"]


def test_lint_fails_on_a_parameter_the_module_does_not_have():
    bad = GOOD.replace('"fr_timeout"', '"fr_timout"')
    assert _errors(bad) == ["opensips.cfg:8: module 'tm' has no parameter 'fr_timout'"]


def test_lint_knows_parameters_of_one_release_only():
    text = GOOD.replace('"fr_timeout", 5', '"local_reply_route", "x"')
    assert lint_cfg(text, "f", "3.6") == []
    assert [str(e) for e in lint_cfg(text, "f", "3.4")] == [
        "f:8: parameter 'local_reply_route' of 'tm' exists in OpenSIPS 3.6 only"
    ]


def test_lint_fails_on_a_bad_socket():
    bad = GOOD.replace("socket = udp:192.0.2.1:5060", "socket = udp:192.0.2.1:99999")
    assert _errors(bad) == ["opensips.cfg:1: socket 'udp:192.0.2.1:99999': port 99999 is out of range 1-65535"]


def test_lint_fails_on_a_socket_whose_transport_is_not_loaded():
    bad = GOOD.replace('loadmodule "proto_udp.so"\n', "")
    assert _errors(bad) == ["opensips.cfg:1: socket 'udp:192.0.2.1:5060' needs loadmodule \"proto_udp.so\""]


@pytest.mark.parametrize(
    ("socket", "problem"),
    [
        ("udp:192.0.2.1", "missing port"),
        ("sip:192.0.2.1:5060", "expected proto:address:port"),
        ("udp:2001:db8::1:5060", "is not address:port (IPv6 goes in brackets)"),
        ("udp:[2001:db8::zz]:5060", "is not an IPv6 address"),
        ("udp:192.0.2.300:5060", "is not an IPv4 address"),
        ("udp:192.0.2.1:5060 as", "unexpected 'as'"),
    ],
)
def test_socket_problems_are_named(socket, problem):
    assert problem in (socket_problem(socket) or "")


def test_lint_fails_on_unbalanced_braces():
    bad = GOOD.replace("route[relay] {", "route[relay] {{")
    assert _errors(bad) == ["opensips.cfg:20: unbalanced braces: '{' is never closed"]
    assert _errors(GOOD + "}\n") == ["opensips.cfg:28: unbalanced braces: '}' closes nothing"]


def test_render_exits_2_naming_the_rendered_path_and_line_of_a_lint_error(cli, write_inventory, tmp_path):
    # A user's own template beside the inventory overrides the packaged one, and breaks it.
    inv = write_inventory("hosts:\n  a:\n    address: 192.0.2.1\n    roles: [proxy]\n")
    packaged = Path(__file__).resolve().parent.parent / "templates/opensips/roles/common.j2"
    override = tmp_path / "templates/opensips/roles/common.j2"
    override.parent.mkdir(parents=True)
    override.write_text(packaged.read_text().replace("sipmsg_validate()", "sipmsg_validat()"))
    out = tmp_path / "out"
    code, _, err = cli("render", "all", "-i", inv, "-o", out)
    assert code == 2
    cfg = out / "a/etc/opensips/opensips.cfg"
    assert err.startswith(f"sipops: error: {cfg}:")
    assert "unknown function sipmsg_validat()" in err
    line = int(err.split(f"{cfg}:")[1].split(":")[0])
    assert not cfg.exists()  # nothing written
    assert line > 0


# Every module of OpenSIPS 3.4 and 3.6, from the table generated out of the sources
# (tools/gen_opensips_exports.py -> sipops/data/opensips_exports.json).

MEDIA = (
    GOOD.replace(
        'loadmodule "sipmsgops.so"\n',
        'loadmodule "sipmsgops.so"\n'
        'loadmodule "rtpengine.so"\nloadmodule "acc.so"\nloadmodule "drouting.so"\n'
        'loadmodule "uac.so"\nloadmodule "dialplan.so"\nloadmodule "avpops.so"\n'
        'modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:2223")\n'
        'modparam("acc", "early_media", 1)\n'
        'modparam("drouting", "default_group", 1)\n'
        'modparam("uac", "restore_mode", "auto")\n'
        'modparam("dialplan", "table_name", "dialplan")\n'
        'modparam("avpops", "avp_table", "usr_preferences")\n',
    )
    .replace(
        "\troute(relay);",
        '\trtpengine_manage("replace-origin");\n'
        '\tdo_accounting("log", "missed");\n'
        '\tavp_db_load("$fu", "$avp(pref)");\n'
        '\tdp_translate(1, "$rU", $var(out));\n'
        '\tuac_replace_from("", "sip:anonymous@anonymous.invalid");\n'
        "\tif (!do_routing(0))\n\t\texit;\n"
        "\troute(relay);",
    )
    .replace('\txlog("L_WARN"', '\tif (use_next_gw())\n\t\tt_relay();\n\txlog("L_WARN"')
)


def _line(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def _errors34(text: str) -> list[str]:
    return [str(e) for e in lint_cfg(text, "opensips.cfg", "3.4")]  # avpops is 3.4 only (gone in 3.6)


def test_lint_passes_on_modules_of_the_generated_table_with_real_calls_and_modparams():
    assert _errors34(MEDIA) == []


def test_a_misspelled_function_fails_even_with_modules_outside_the_hand_table_loaded():
    bad = MEDIA.replace('rtpengine_manage("replace-origin")', 'rtpengine_manag("replace-origin")')
    assert _errors34(bad) == [f"opensips.cfg:{_line(bad, 'rtpengine_manag(')}: unknown function rtpengine_manag()"]


def test_a_wrong_argument_count_fails_on_a_module_of_the_generated_table():
    bad = MEDIA.replace('do_accounting("log", "missed")', "do_accounting()")
    assert _errors34(bad) == [
        f"opensips.cfg:{_line(bad, 'do_accounting(')}: do_accounting() of module acc takes 1 to 3 arguments, got 0"
    ]


def test_a_modparam_the_generated_module_does_not_have_fails():
    bad = MEDIA.replace('"rtpengine_sock"', '"rtpengine_socket"')
    assert _errors34(bad) == [
        f"opensips.cfg:{_line(bad, 'rtpengine_socket')}: module 'rtpengine' has no parameter 'rtpengine_socket'"
    ]


def test_a_function_of_a_module_of_the_generated_table_that_is_not_loaded_names_it():
    bad = GOOD.replace("\troute(relay);", "\tdo_routing(0);\n\troute(relay);")
    assert _errors(bad) == [
        f"opensips.cfg:{_line(bad, 'do_routing(')}: do_routing() belongs to module drouting, which is not loaded"
    ]


def test_a_module_in_neither_table_is_still_allowed():
    cfg = GOOD.replace('loadmodule "sipmsgops.so"', 'loadmodule "sipmsgops.so"\nloadmodule "/opt/acme/my_fraud.so"')
    cfg = cfg.replace('modparam("tm"', 'modparam("my_fraud", "threshold", 10)\nmodparam("tm"')
    cfg = cfg.replace("\troute(relay);", "\tfraud_check();\n\troute(relay);")
    assert _errors(cfg) == []


# Where the generated table and the hand-written one (authoritative for its modules) may disagree,
# with the reason. Empty: every disagreement the generator's cross-check found was resolved.
DOCUMENTED_DISAGREEMENTS: dict[tuple[str, str, str], str] = {}


def test_the_generated_table_agrees_with_the_hand_written_one():
    import json

    from sipops.lint import GENERATED_EXPORTS
    from sipops.opensips_exports import MODULES

    generated = json.loads(GENERATED_EXPORTS.read_text())
    assert generated["generated_from"] == {"3.4": "3.4.18", "3.6": "3.6.8"}
    found: list[tuple[str, str, str]] = []
    for module, hand in MODULES.items():
        assert module in generated["modules"], module
        gen = generated["modules"][module]
        gen_functions = {name: tuple(spec) for name, spec in gen["functions"].items()}
        for name in hand.functions.keys() | gen_functions.keys():
            if hand.functions.get(name) != gen_functions.get(name):
                found.append((module, "function", name))
        for name in hand.params.keys() | gen["params"].keys():
            if hand.params.get(name) != gen["params"].get(name):
                found.append((module, "param", name))
    assert sorted(found) == sorted(DOCUMENTED_DISAGREEMENTS)


def test_importing_the_lint_does_not_load_the_generated_table():
    import subprocess
    import sys

    code = (
        "import sipops.lint as lint\n"
        "from sipops.lint import check_rendered\n"
        "assert lint.all_modules.cache_info().currsize == 0, 'loaded on import'\n"
        "lint.lint_cfg('loadmodule \"rtpengine.so\"\\n')\n"
        "assert lint.all_modules.cache_info().currsize == 1, 'not loaded by a lint'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
