"""The phase script runs for real in sh: guards skip, changes report, a failure stops with its output."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sipops.provision.steps import Step, parse, script


def run(steps: list[Step], *, check: bool = False) -> tuple[int, list[tuple[str, str, str]]]:
    proc = subprocess.run(["sh", "-s"], input=script(steps, check=check), capture_output=True, text=True, timeout=30)
    return proc.returncode, [(r.name, r.status, r.output) for r in parse(steps, proc.stdout)]


def test_a_step_whose_guard_holds_does_nothing_and_reports_ok(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    marker.write_text("x")
    code, res = run([Step("make m", f"echo y > {marker}", unless=f"test -s {marker}")])
    assert code == 0 and res == [("make m", "ok", "")]
    assert marker.read_text() == "x"


def test_a_missing_thing_is_made_then_the_second_run_changes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    steps = [Step("make m", f"echo y > {marker}", unless=f"test -s {marker}")]
    assert run(steps) == (0, [("make m", "changed", "")])
    assert run(steps) == (0, [("make m", "ok", "")])


def test_check_mode_reports_what_would_run_and_changes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    code, res = run([Step("make m", f"echo y > {marker}", unless=f"test -s {marker}")], check=True)
    assert code == 0 and res == [("make m", "would", "")]
    assert not marker.exists()


def test_a_failure_stops_the_phase_and_carries_the_tail_of_its_output(tmp_path: Path) -> None:
    later = tmp_path / "later"
    steps = [
        Step("fails", "echo 'E: Unable to locate package opensips' >&2; exit 100"),
        Step("never", f"touch {later}"),
    ]
    code, res = run(steps)
    assert code == 1
    assert res[0][:2] == ("fails", "failed") and "Unable to locate package opensips" in res[0][2]
    assert res[1][:2] == ("never", "skipped")
    assert not later.exists()


def test_a_secret_step_never_shows_its_output() -> None:
    code, res = run([Step("db", "echo password=s3cret; exit 1", secret=True)])
    assert code == 1 and res == [("db", "failed", "")]


def test_a_verify_step_reports_ok_on_success_and_runs_in_check_mode() -> None:
    assert run([Step("probe", "true", verify=True)], check=True) == (0, [("probe", "ok", "")])
    code, res = run([Step("probe", "echo not there; false", verify=True)])
    assert code == 1 and res[0][1] == "failed" and "not there" in res[0][2]


def test_a_failure_carries_its_output_once_whatever_it_streamed_while_running() -> None:
    code, res = run([Step("fails", "echo 'E: Unable to locate package opensips'; sleep 0.3; exit 100")])
    assert code == 1 and res == [("fails", "failed", "E: Unable to locate package opensips")]


def test_a_step_cut_off_while_running_is_failed_with_the_last_lines_it_streamed() -> None:
    steps = [Step("build", "make"), Step("after", "true")]
    output = "@@sipops-step 0 run\n" + "".join(f"CC file{i}.o\n" for i in range(100))
    res = parse(steps, output)
    assert [(r.name, r.status) for r in res] == [("build", "failed"), ("after", "skipped")]
    assert res[0].output.splitlines() == [f"CC file{i}.o" for i in range(60, 100)]
