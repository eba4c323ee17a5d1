"""sipops' sipp scenarios as rendered per test: well-formed, RFC 3261 dialog handling on both ends."""

from __future__ import annotations

import itertools
import xml.dom.minidom
from pathlib import Path
from typing import Any

import pytest

from sipops.calltest.scenarios import environment, read_pcap, render, write_injection

UAC = dict(
    domain="198.51.100.10", to_user="bob", from_user="alice", from_domain="198.51.100.10", auth_user="",
    password="", audio="/usr/share/sip-tester/g711a.pcap", audio_ms=4800, dtmf="1234", dtmf_delay_ms=300,
    talk_ms=2600, expect=200, ring_ms=500, require_rr=True,
)  # fmt: skip


def rendered(tmp_path: Path, template: str, **params: Any) -> str:
    path = render(environment(None), template, tmp_path, **params)
    xml.dom.minidom.parse(str(path))  # sipp refuses a scenario that is not well-formed XML
    return path.read_text()


def message(text: str, method: str) -> str:
    """The CDATA of the first message that starts with `method`."""
    start = text.index(f"\n{method} ")
    return text[start : text.index("]]>", start)]


@pytest.mark.parametrize(
    ("mode", "auth", "rr"), list(itertools.product(["call", "cancel", "reject"], [False, True], [False, True]))
)
def test_every_caller_variant_is_well_formed_xml(tmp_path: Path, mode: str, auth: bool, rr: bool) -> None:
    rendered(tmp_path, "uac", **{**UAC, "mode": mode, "auth_user": "alice" if auth else "", "require_rr": rr})


def test_the_caller_sends_ack_and_bye_to_the_remote_target_through_the_route_set(tmp_path: Path) -> None:
    text = rendered(tmp_path, "uac", **{**UAC, "mode": "call"})
    assert '<recv response="200" rrs="true"' in text  # the 200's Record-Route set and Contact are kept
    for method in ("ACK", "BYE"):
        msg = message(text, method)
        assert msg.startswith(f"\n{method} [next_url] SIP/2.0"), msg  # Request-URI: the 200's Contact
        assert "\n[routes]\n" in msg  # Route: the Record-Route set, reversed by sipp for a UAC
        assert "[peer_tag_param]" in msg


def test_the_ack_of_the_2xx_repeats_the_invites_cseq_number(tmp_path: Path) -> None:
    text = rendered(tmp_path, "uac", **{**UAC, "mode": "call", "auth_user": "alice"})
    assert "CSeq: [$invite_cseq] ACK" in message(text, "ACK [next_url]")
    assert 'header="CSeq:" assign_to="invite_cseq"' in text


def test_a_challenged_invite_is_acked_on_its_own_branch_and_sent_again_with_credentials(tmp_path: Path) -> None:
    text = rendered(tmp_path, "uac", **{**UAC, "mode": "call", "auth_user": "alice", "password": "s3cret"})
    assert '<recv response="407" auth="true" optional="true" next="challenged"/>' in text
    ack = message(text, "ACK")
    assert "branch=z9hG4bK-[pid]-[call_number]-inv1" in ack and "CSeq: 1 ACK" in ack
    assert "[authentication username=alice password=s3cret]" in text
    assert "CSeq: 2 INVITE" in text


def test_the_route_set_is_required_only_when_asked(tmp_path: Path) -> None:
    assert 'header="Record-Route:" check_it="true"' in rendered(tmp_path, "uac", **{**UAC, "mode": "call"})
    text = rendered(tmp_path, "uac", **{**UAC, "mode": "call", "require_rr": False})
    assert "Record-Route" not in text.split("<scenario", 1)[1]


def test_cancel_names_the_invites_transaction_and_expects_487(tmp_path: Path) -> None:
    text = rendered(tmp_path, "uac", **{**UAC, "mode": "cancel"})
    cancel = message(text, "CANCEL")
    assert "branch=z9hG4bK-[pid]-[call_number]-inv1" in cancel and "CSeq: 1 CANCEL" in cancel
    assert '<recv response="487"' in text and '<recv response="180" rtd="setup"/>' in text


def test_reject_expects_the_given_code_and_acks_it(tmp_path: Path) -> None:
    text = rendered(tmp_path, "uac", **{**UAC, "mode": "reject", "expect": 404})
    assert '<recv response="404" rtd="setup" next="rejected1"/>' in text
    assert "CSeq: 1 ACK" in message(text, "ACK")


def test_media_plays_audio_then_the_digits_after_it(tmp_path: Path) -> None:
    text = rendered(tmp_path, "uac", **{**UAC, "mode": "call"})
    assert text.index('play_pcap_audio="/usr/share/sip-tester/g711a.pcap"') < text.index('play_dtmf="1234"')
    assert '<pause milliseconds="5100"/>' in text  # audio_ms + dtmf_delay_ms: a new play stops the running one
    assert "m=audio [media_port] RTP/AVP 8 96" in text and "a=rtpmap:96 telephone-event/8000" in text


@pytest.mark.parametrize(("mode", "rr"), [("answer", True), ("answer", False), ("ring", False)])
def test_the_callee_copies_via_and_record_route_into_its_replies(tmp_path: Path, mode: str, rr: bool) -> None:
    text = rendered(tmp_path, "uas", mode=mode, user="bob", audio="", answer_after_ms=100, require_rr=rr)
    for reply in ("180 Ringing", "200 OK\n[last_Via:]\n[last_Record-Route:]" if mode == "answer" else "487"):
        start = text.index(f"SIP/2.0 {reply}")
        block = text[start : text.index("]]>", start)]
        assert "[last_Via:]" in block and "[last_Record-Route:]" in block


def test_the_callee_answers_options_so_probing_keeps_it_up(tmp_path: Path) -> None:
    text = rendered(tmp_path, "uas", mode="answer", user="gw1", audio="", answer_after_ms=0, require_rr=True)
    assert text.index('<recv request="OPTIONS" optional="true" next="options"/>') < text.index('request="INVITE"')
    options = text[text.index('<label id="options"/>') :]
    assert "SIP/2.0 200 OK" in options and "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS" in options


@pytest.mark.parametrize("expect", [200, 401, 403])
def test_register_takes_credentials_from_the_injection_file(tmp_path: Path, expect: int) -> None:
    text = rendered(tmp_path, "register", domain="198.51.100.10", expires=300, expect=expect)
    assert "Contact: <sip:[field0]@[field2];transport=[transport]>" in text
    assert "\n[field1]\n" in text  # sipp's [authentication ...] keyword, one per phone
    if expect == 200:
        assert 'header="Contact:" check_it="true"' in text  # the 200 lists the stored contact


def test_an_injection_file_is_sequential_rows(tmp_path: Path) -> None:
    path = write_injection(tmp_path / "p.csv", [("alice", "[authentication username=alice password=x]", "h:1")])
    assert path.read_text() == "SEQUENTIAL\nalice;[authentication username=alice password=x];h:1\n"


def test_a_scenario_beside_the_inventory_overrides_the_packaged_one(tmp_path: Path) -> None:
    (tmp_path / "templates" / "sipp").mkdir(parents=True)
    (tmp_path / "templates" / "sipp" / "uas.xml.j2").write_text("<scenario name='mine {{ user }}'/>\n")
    env = environment(tmp_path)
    assert render(env, "uas", tmp_path / "out", user="x").read_text() == "<scenario name='mine x'/>\n"
    assert "sipops-uac" in render(env, "uac", tmp_path / "out", **{**UAC, "mode": "call"}).read_text()


def test_a_pcap_is_counted_packet_by_packet(tmp_path: Path) -> None:
    import struct

    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    packets = b"".join(struct.pack("<IIII", 100 + i, 20000 * i, 4, 4) + b"abcd" for i in range(3))
    (tmp_path / "a.pcap").write_bytes(header + packets)
    info = read_pcap(tmp_path / "a.pcap")
    assert info.packets == 3 and info.seconds == pytest.approx(2.04)


def test_unregistering_expects_no_contact_back(tmp_path: Path) -> None:
    text = rendered(tmp_path, "register", domain="198.51.100.10", expires=0, expect=200)
    assert "Expires: 0" in text and 'header="Contact:"' not in text
