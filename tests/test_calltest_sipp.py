"""Reading what sipp wrote (files from real runs against OpenSIPS 3.6.8 in tests/data/calltest/), the
argument lists it is started with, and the nftables counters that count RTP per direction."""

from __future__ import annotations

import json
from pathlib import Path

from sipops.calltest.load import summarize, verdict
from sipops.calltest.media import PortCount, parse_counters, ruleset
from sipops.calltest.sipp import Place, SippSpec, parse_error_codes, percentile, read_output
from sipops.errors import ExitCode

DATA = Path(__file__).parent / "data" / "calltest"


def output(name: str, scenario: str = "uac"):  # type: ignore[no-untyped-def]
    return read_output(DATA / name, DATA / name / f"{scenario}.xml")


def test_a_load_run_reads_as_attempts_answers_and_setup_times() -> None:
    out = output("load-ok")
    assert (out.created, out.succeeded, out.failed, out.retransmissions) == (5, 5, 0, 0)
    assert out.setup_ms == [8.0] * 5
    assert not out.error_codes and not out.errors


def test_an_unexpected_reply_is_counted_by_its_code_and_explained() -> None:
    out = output("answered-500")
    assert (out.created, out.succeeded, out.failed) == (1, 0, 1)
    assert out.error_codes == {500: 1}
    assert "while expecting '100'" in out.errors[0]


def test_a_callee_counts_the_invites_and_probes_it_received() -> None:
    out = output("callee", "uas")
    assert out.received("INVITE") == 2 and out.received("OPTIONS") == 1
    assert out.received("BYE") == 2


def test_error_codes_rows_list_every_code(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("t;00:00:01;404,404,503,\nt;00:00:02;\n")
    assert parse_error_codes(tmp_path / "c.csv") == {404: 2, 503: 1}


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50.0, 95.0, 99.0)
    assert percentile([], 50) is None and percentile([7.0], 99) == 7.0


def test_a_client_is_bounded_by_calls_rate_and_time(tmp_path: Path) -> None:
    place = Place("a1", "198.18.1.1", ("ip", "netns", "exec", "lab-a1"))
    spec = SippSpec(tmp_path / "uac.xml", place, "tcp", 5070, media_port=30000, remote="198.18.0.2:5060",
                    calls=10, rate=2.5, limit=4, timeout=30)  # fmt: skip
    argv = place.argv(spec.argv("/usr/bin/sipp"))
    assert argv[:5] == ["ip", "netns", "exec", "lab-a1", "/usr/bin/sipp"]
    joined = " ".join(argv)
    for part in ("198.18.0.2:5060", "-t t1", "-i 198.18.1.1 -p 5070", "-m 10", "-r 2.5 -rp 1000", "-l 4",
                 "-timeout 30s", "-mi 198.18.1.1 -mp 30000", "-trace_stat", "-trace_rtt", "-trace_counts",
                 "-trace_error_codes", "-nostdin"):  # fmt: skip
        assert part in joined, part


def test_a_server_has_no_remote_and_no_call_count(tmp_path: Path) -> None:
    argv = SippSpec(tmp_path / "uas.xml", Place("local", "127.0.0.1"), "udp", 5060).argv("sipp")
    assert argv[1] == "-sf" and "-m" not in argv and "-t" in argv and argv[argv.index("-t") + 1] == "u1"


def test_the_ruleset_counts_audio_both_ways_and_each_dtmf_event() -> None:
    text = ruleset("t", [30000], "12#")
    assert "udp dport 30000 @th,73,7 8 counter name rx_30000" in text
    assert "udp sport 30000 @th,73,7 8 counter name tx_30000" in text
    assert "udp dport 30000 @th,73,7 96 @th,160,8 11 counter name dtmf_30000_11" in text  # '#' is event 11
    assert text.count("counter dtmf_30000_") == 3


def test_nft_json_counters_read_as_packets() -> None:
    doc = {"nftables": [{"metainfo": {}}, {"counter": {"name": "rx_30000", "packets": 236, "bytes": 1}},
                        {"counter": {"name": "tx_30000", "packets": 235, "bytes": 1}}]}  # fmt: skip
    assert parse_counters(json.dumps(doc)) == {"rx_30000": 236, "tx_30000": 235}


def test_a_load_summary_has_codes_percentiles_and_loss_per_direction() -> None:
    out = output("answered-500")
    media = {1: PortCount(audio_in=90, audio_out=100), 2: PortCount(audio_in=100, audio_out=100)}
    doc = summarize(out, media, 1, [2])
    assert doc["failures"] == {"500": 1} and doc["attempts"] == 1
    assert doc["rtp"]["loss_to_callee"] == 0.0 and doc["rtp"]["loss_to_caller"] == 0.1
    assert verdict(doc, 0.05) == ExitCode.FAILURE
    ok = summarize(output("load-ok"), {}, 1, [])
    assert ok["setup_ms"]["p99"] == 8.0 and "rtp" not in ok and verdict(ok, 0.05) == ExitCode.OK


def _session(tmp_path: Path, **opts: object):  # type: ignore[no-untyped-def]
    from sipops.calltest.plan import Options
    from sipops.calltest.scenarios import environment
    from sipops.calltest.session import Session

    return Session(environment(None), "sipp", tmp_path, Options(**opts), inv=None)  # type: ignore[arg-type]


def _outcome(caller: PortCount, callee: PortCount):  # type: ignore[no-untyped-def]
    from sipops.calltest.checks import CallOutcome
    from sipops.calltest.sipp import SippOutput

    return CallOutcome(SippOutput(), SippOutput(), {1: caller, 2: callee}, 1, 2)


def test_media_both_ways_with_every_digit_passes(tmp_path: Path) -> None:
    from sipops.calltest.checks import _media_verdict

    s = _session(tmp_path, audio=Path("a.pcap"))
    o = _outcome(PortCount(236, 236), PortCount(236, 236, {"1": 4, "2": 4}))
    assert _media_verdict(s, o, 1, "12", True) is None


def test_one_way_audio_fails_and_says_which_way(tmp_path: Path) -> None:
    from sipops.calltest.checks import _media_verdict

    s = _session(tmp_path, audio=Path("a.pcap"))
    to_callee_lost = _outcome(PortCount(audio_in=236, audio_out=236), PortCount(audio_in=0, audio_out=236))
    assert "one-way audio: the callee received none of the 236" in str(_media_verdict(s, to_callee_lost, 1, "", True))
    to_caller_lost = _outcome(PortCount(audio_in=0, audio_out=236), PortCount(audio_in=236, audio_out=236))
    assert "one-way audio: the caller received none" in str(_media_verdict(s, to_caller_lost, 1, "", True))
    silent = _outcome(PortCount(), PortCount())
    assert "the caller sent no RTP" in str(_media_verdict(s, silent, 1, "", True))


def test_loss_above_the_limit_and_missing_digits_fail(tmp_path: Path) -> None:
    from sipops.calltest.checks import _media_verdict

    s = _session(tmp_path, audio=Path("a.pcap"))
    lossy = _outcome(PortCount(236, 236), PortCount(200, 236))
    assert "RTP loss 15.3% caller->callee (200/236 packets)" in str(_media_verdict(s, lossy, 1, "", True))
    no_4 = _outcome(PortCount(236, 236), PortCount(236, 236, {"1": 4, "4": 0}))
    assert "did not receive digit(s) 4 of 14" in str(_media_verdict(s, no_4, 1, "14", True))


def test_a_load_source_outside_the_allowlist_is_noted(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from sipops.calltest.load import exposed
    from sipops.calltest.plan import Target

    host = SimpleNamespace(name="edge1", roles=["registrar", "proxy"], vars={"allowlist": ["198.18.0.1/32"]})
    t = Target(host, "198.18.0.2", 5060, ("udp",))  # type: ignore[arg-type]
    assert exposed(t, "198.18.0.1") is None
    assert "198.18.1.1 is not in edge1's allowlist: pike will throttle" in str(exposed(t, "198.18.1.1"))
    host.vars["proxy_pike"] = False
    assert exposed(t, "198.18.1.1") is None
